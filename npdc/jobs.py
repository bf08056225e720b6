"""One way to run independent jobs: `run_jobs(fn, shared, jobs, executor)` returns
[fn(shared, job) for job in jobs], in the order of `jobs`, whatever order they finish in.

`shared` is what every job reads (a model, a dataset); it is handed to each executor once per
call, not once per job, so a job itself is a few numbers. A job may borrow it (prune a layer,
evaluate, put the layer back) but leaves it as it found it: an executor runs one job at a time
per process. `fn` is a module-level function so that an executor in other processes can find it
by name.

`shared` may also be a `Loaded(loader, *args)` recipe: then each process that runs jobs calls
loader(*args) itself, once, and the jobs get what it returns. With paths as the arguments, that
moves only the paths to a cluster whose workers share the client's filesystem.

The executor here is the in-process one; the Dask executors (npdc.cluster) provide the same
`map(fn, shared, jobs, progress)`.
"""

import threading

from npdc.progress import progress_bar


class Loaded:
    """`shared` as a recipe, loader(*args), run at most once per process for the same recipe
    (the last one is kept: a long-lived worker does not pile up old models)."""

    _last = (None, None)
    _lock = threading.Lock()

    def __init__(self, loader, *args):
        self.loader, self.args = loader, args

    def key(self):
        return (self.loader.__module__, self.loader.__qualname__, repr(self.args))

    def load(self):
        with Loaded._lock:
            key, value = Loaded._last
            if key != self.key():
                Loaded._last = (None, None)  # free the old value before loading the new one
                value = self.loader(*self.args)
                Loaded._last = (self.key(), value)
            return value


def resolve(shared):
    """What the jobs see: the loaded value of a `Loaded` recipe, else `shared` itself."""
    return shared.load() if isinstance(shared, Loaded) else shared


class InProcess:
    """Run the jobs one after another in this process (the default)."""

    def map(self, fn, shared, jobs, progress=None):
        shared = resolve(shared)
        results = []
        for job in jobs:
            results.append(fn(shared, job))
            if progress is not None:
                progress.update()
        return results


def run_jobs(fn, shared, jobs, executor=None, progress=False, desc="jobs"):
    """[fn(shared, job) for job in jobs] on `executor` (in-process when None), in order; one
    progress bar over finished jobs when `progress`."""
    jobs = list(jobs)
    executor = executor or InProcess()
    bar = progress_bar(total=len(jobs), desc=desc, unit="job", enabled=progress)
    try:
        results = executor.map(fn, shared, jobs, bar)
    finally:
        bar.close()
    if len(results) != len(jobs):
        raise RuntimeError(f"the executor returned {len(results)} results for {len(jobs)} jobs")
    return results
