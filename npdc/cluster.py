"""Executors that run npdc's independent jobs (`npdc.jobs.run_jobs`) on a Dask cluster, through
the `distributed` package (an optional extra, imported only when a cluster is asked for).

- `local_executor(workers)`: a cluster on this machine, a scheduler and N worker processes of
  one thread each (the nannies restart a worker that dies).
- `scheduler_executor(address)`: an existing cluster, reached at its scheduler (tcp://HOST:8786).

Data moves once: `map` scatters `shared` to every worker (broadcast) once per call, and each job
carries only its own few numbers and a reference to it. When the workers see the client's files
at the same paths, a caller may pass `npdc.jobs.Loaded(loader, *paths)` instead: only the paths
travel and each worker process loads the files itself, once.

The same answer as in-process: results come back in the order of the jobs, whatever order they
finish in, and every job runs with one Numba and one BLAS thread (the engine's kernels split work
over output elements, never a sum, so their results do not depend on the thread count).

Faults: Dask reruns the jobs of a worker that dies on the workers that remain (a job that kills
`distributed.scheduler.allowed-failures` + 1 workers is given up, as a UserError); when the dead
worker held the only copy of the shared data, Dask cancels the jobs that needed it, and `map`
scatters it again and resubmits them (up to RESCATTERS times). A scheduler
that cannot be reached, or goes away mid-run, is a one-line UserError; commands write their
outputs only after the jobs return, so nothing is written half-way.
"""

import logging
import socket
import sys
import threading
from concurrent.futures import CancelledError
from urllib.parse import urlsplit

from npdc.errors import UserError
from npdc.jobs import resolve
from npdc.threads import set_threads

INSTALL = 'install npdc[distributed]: pip install -e ".[distributed]"'
CONNECT_SECONDS = 10
RESCATTERS = 3  # times the shared data is scattered again after a worker took its only copy

_job_thread = threading.local()
_one_job_at_a_time = threading.Lock()


def _distributed():
    try:
        import distributed
    except ImportError:
        raise UserError(f"--workers and --scheduler need Dask's distributed; {INSTALL}") from None
    return distributed


def _run_job(fn, shared, job):
    """One job on a worker: one thread for Numba and BLAS (set once per worker thread: Numba's
    count is per thread), then fn on the shared value. A worker process runs one job at a time
    even when it has several threads: jobs may borrow the shared model (prune a layer, evaluate,
    restore), and each job keeps one core busy."""
    if not getattr(_job_thread, "single", False):
        set_threads(1)
        _job_thread.single = True
    with _one_job_at_a_time:
        return fn(resolve(shared), job)


class DaskExecutor:
    """map(fn, shared, jobs, progress) on a distributed.Client; closes the client (and the
    cluster it started, if any) on close() or at the end of a `with` block."""

    def __init__(self, client, cluster=None):
        self.client, self.cluster = client, cluster
        self.address = client.scheduler.address

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def dashboard(self):
        """The dashboard's address, or None when the scheduler serves none (no bokeh there)."""
        port = self.client.scheduler_info().get("services", {}).get("dashboard")
        if not port:
            return None
        host = urlsplit(self.address).hostname or "127.0.0.1"
        return f"http://{host}:{port}/status"

    def map(self, fn, shared, jobs, progress=None):
        distributed = _distributed()
        jobs, results = list(jobs), {}
        todo = list(range(len(jobs)))
        try:
            for _ in range(RESCATTERS + 1):
                todo = self._round(distributed, fn, shared, jobs, todo, results, progress)
                if not todo:
                    return [results[i] for i in range(len(jobs))]
        except (OSError, TimeoutError, CancelledError, distributed.comm.CommClosedError) as e:
            raise self._lost(e) from None
        raise self._lost(f"the shared data was lost with a worker {RESCATTERS + 1} times")

    def _round(self, distributed, fn, shared, jobs, todo, results, progress):
        """Run jobs[i] for i in todo, results[i] filled; returns the i whose jobs came back
        cancelled while the scheduler still answers: the only copy of the shared data was on a
        worker that died (a broadcast reaches only the workers there at that moment, and its
        replication is best-effort), so they are run again on data scattered again."""
        client, futures, error, cancelled = self.client, [], None, []
        try:
            [remote] = client.scatter([shared], broadcast=True, hash=False)
            futures = [client.submit(_run_job, fn, remote, jobs[i], pure=False) for i in todo]
            index = {future.key: i for future, i in zip(futures, todo)}
            for future in distributed.as_completed(futures):
                if future.status == "error":
                    error = future.exception()
                    break
                try:  # fetched now: a result left on a worker dies with it
                    results[index[future.key]] = future.result()
                except CancelledError:
                    if client.status != "running":
                        raise self._lost("its jobs were cancelled") from None
                    cancelled.append(index[future.key])
                    continue
                if progress is not None:
                    progress.update()
            if error is None:
                return sorted(cancelled)
        finally:
            try:
                client.cancel(futures)
            except Exception:  # the scheduler is gone; nothing to release
                pass
        if isinstance(error, distributed.KilledWorker):
            raise UserError(f"a job killed every worker that ran it (out of memory?): {error}")
        raise error

    def _lost(self, why):
        return UserError(f"lost the Dask scheduler at {self.address} mid-run ({why})")


def _quiet():
    """Dask logs at INFO and warns about ports; keep the terminal to npdc's lines."""
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def local_executor(workers, announce=True):
    """A Dask cluster on this machine: a scheduler and `workers` single-threaded worker
    processes on 127.0.0.1, its dashboard (when bokeh is installed) on a free port."""
    distributed = _distributed()
    _quiet()
    import dask

    # Dask's nannies set glibc's trim threshold for their workers, which turns off glibc's own
    # mmap threshold adjustment and npdc's malloc settings (npdc/__init__.py); leave it unset
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                           processes=True, host="127.0.0.1",
                                           dashboard_address="127.0.0.1:0",
                                           silence_logs=logging.CRITICAL)
    executor = DaskExecutor(distributed.Client(cluster), cluster)
    if announce:
        _announce(executor, f"a local Dask cluster of {workers} single-threaded workers")
    return executor


def scheduler_executor(address, announce=True, timeout=CONNECT_SECONDS):
    """A client of the Dask scheduler at `address` (tcp://HOST:PORT); a UserError when nothing
    answers there within `timeout` seconds."""
    distributed = _distributed()
    _quiet()
    host, port = _host_port(address)
    try:  # a plain connection first: a closed port answers at once, Dask would retry for 30 s
        socket.create_connection((host, port), timeout=timeout).close()
        client = distributed.Client(address if "://" in address else f"tcp://{address}",
                                    timeout=f"{timeout}s")
    except (OSError, TimeoutError) as e:
        raise UserError(f"cannot reach the Dask scheduler at {address}: "
                        f"{getattr(e, 'strerror', None) or e}") from None
    executor = DaskExecutor(client)
    if announce:
        workers = len(client.scheduler_info().get("workers", {}))
        _announce(executor, f"the Dask cluster at {address} ({workers} workers now)")
    return executor


def _host_port(address):
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None:
        raise UserError(f"--scheduler {address!r} is not tcp://HOST:PORT")
    return parts.hostname, port


def _announce(executor, what):
    link = executor.dashboard()
    print(f"running jobs on {what}" + (f"; dashboard {link}" if link else ""), file=sys.stderr)
