"""Tests for the Dask executors (npdc.cluster) on a real cluster: a scheduler and single-threaded
workers started as separate processes on 127.0.0.1. A sensitivity sweep and a sharded evaluation
give the in-process result bit for bit; a worker killed mid-sweep has its jobs rerun elsewhere
with the same result; a job's UserError arrives as itself; a closed scheduler port, a lost
scheduler and a missing `distributed` are one line and exit code 2 with nothing written."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from npdc.api import load_model  # noqa: E402
from npdc.cli import main  # noqa: E402
from npdc.cluster import INSTALL, scheduler_executor  # noqa: E402
from npdc.compress.sensitivity import sweep  # noqa: E402
from npdc.engine.resnet import build_net  # noqa: E402
from npdc.engine.train import evaluate  # noqa: E402
from npdc.errors import UserError  # noqa: E402
from npdc.io.job_inputs import model_and_images  # noqa: E402
from npdc.io.modelfile import save_model  # noqa: E402
from npdc.jobs import Loaded, run_jobs  # noqa: E402
from tests.conftest import assert_one_line_error, write_tiny_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"arch": "cifar-resnet20", "input_shape": [1, 8, 8], "num_classes": 3}
VALUES = (0.5, 1.5)  # 20 layers x 2 values + the baseline: 41 jobs


class Cluster:
    """`dask scheduler` and N `dask worker --nthreads 1 --no-nanny` processes (a killed worker
    stays dead), with this checkout's npdc on the workers' path."""

    def __init__(self, folder, workers):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        info = folder / "scheduler.json"
        cli = [sys.executable, "-m"]
        self.scheduler = subprocess.Popen(
            cli + ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                   "--no-dashboard", "--scheduler-file", str(info)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._worker_cli = (cli + ["distributed.cli.dask_worker", "--scheduler-file", str(info),
                                   "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                                   "--no-dashboard"], env)
        self.workers = []
        for _ in range(workers):
            self.add_worker()
        self.address = _address_in(info, deadline=time.time() + 60)
        with distributed.Client(self.address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=60)

    def add_worker(self):
        """Start one more worker process (it joins the scheduler on its own)."""
        cli, env = self._worker_cli
        self.workers.append(subprocess.Popen(cli, env=env, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))

    def close(self):
        for p in self.workers + [self.scheduler]:
            if p.poll() is None:
                p.kill()
            p.wait()


def _address_in(info, deadline):
    """The scheduler's address from its file, once the file is whole: the scheduler writes it
    in place, so it can be seen empty or cut short for a moment (it was, on a loaded machine)."""
    while True:
        try:
            return json.loads(info.read_text())["address"]
        except (OSError, ValueError, KeyError):
            if time.time() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"), workers=2)
    yield c
    c.close()


@pytest.fixture(scope="module")
def problem():
    """A small seeded net and 96 labelled 8x8 images."""
    net = build_net(SMALL, seed=1)
    r = np.random.default_rng(2)
    x = r.integers(0, 256, (96, 1, 8, 8)).astype(np.uint8)
    y = r.integers(0, 3, 96)
    return net, x, y


@pytest.fixture(scope="module")
def expected(problem):
    """The in-process sweep."""
    return sweep(*problem, VALUES, batch_size=32, progress=False)


def test_sweep_on_two_workers_is_the_in_process_sweep(cluster, problem, expected, capsys):
    """Every row, float for float, equals the in-process sweep; the net is unchanged."""
    net, x, y = problem
    before = net.state_dict()
    with scheduler_executor(cluster.address) as executor:
        got = sweep(net, x, y, VALUES, batch_size=32, progress=False, executor=executor)
    assert "(2 workers now)" in capsys.readouterr().err
    assert got == expected
    assert len(got["layers"]) == 20
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_sharded_evaluation_sums_counts_exactly(cluster, problem):
    """Shards of one and of three batches (the last one short) give the in-process accuracy and
    loss bit for bit."""
    net, x, y = problem
    expected = evaluate(net, x[:90], y[:90], 16)
    with scheduler_executor(cluster.address, announce=False) as executor:
        for shard_batches in (1, 3):
            got = evaluate(net, x[:90], y[:90], 16, executor=executor, shard_batches=shard_batches)
            assert got == expected


def test_job_user_error_arrives_as_itself(cluster, problem):
    """A job's UserError (a sparsity above 100 %) reaches the caller with its message."""
    net, x, y = problem
    with scheduler_executor(cluster.address, announce=False) as executor:
        with pytest.raises(UserError, match="150"):
            sweep(net, x, y, (150.0,), "sparsity", ["conv1"], batch_size=32, progress=False,
                  executor=executor)


class _KillAtFirstResult:
    """The Dask executor, with a progress hook that kills `victim` (a worker process) as soon as
    the first job is back, after checking that it has jobs in hand."""

    def __init__(self, executor, victim):
        self.executor, self.victim, self.had_jobs = executor, victim, None
        pids = executor.client.run(os.getpid)
        self.address = next(a for a, pid in pids.items() if pid == victim.pid)

    def map(self, fn, shared, jobs, progress):
        outer = self

        class Hook:
            def update(self, n=1):
                if outer.had_jobs is None:
                    outer.had_jobs = len(outer.executor.client.processing()[outer.address])
                    outer.victim.send_signal(signal.SIGKILL)
                progress.update(n)

        return self.executor.map(fn, shared, jobs, Hook())


def test_killed_worker_jobs_rerun_elsewhere(tmp_path, problem, expected):
    """SIGKILL one of two workers while it holds jobs: the sweep finishes on the other, equal to
    the in-process sweep."""
    net, x, y = problem
    c = Cluster(tmp_path, workers=2)
    try:
        with scheduler_executor(c.address, announce=False) as executor:
            killer = _KillAtFirstResult(executor, c.workers[1])
            got = sweep(net, x, y, VALUES, batch_size=32, progress=False, executor=killer)
            assert killer.had_jobs > 0
            assert c.workers[1].wait(timeout=30) == -signal.SIGKILL
            assert len(executor.client.scheduler_info()["workers"]) == 1
    finally:
        c.close()
    assert got == expected


def test_jobs_whose_shared_data_died_with_its_only_holder_run_again(tmp_path):
    """The only worker (so the only copy of the scattered data) is killed at the first result and
    a new one started: Dask cancels the jobs that needed the lost data; `map` scatters it again
    and they run on the new worker, results in the order of the jobs."""
    c = Cluster(tmp_path, workers=1)
    shared = np.arange(5.0)
    try:
        with scheduler_executor(c.address, announce=False) as executor:
            scatters = []
            scatter = executor.client.scatter
            executor.client.scatter = lambda *a, **k: scatters.append(1) or scatter(*a, **k)

            class Hook:
                def update(self, n=1):
                    if len(c.workers) == 1:
                        c.workers[0].send_signal(signal.SIGKILL)
                        assert c.workers[0].wait(timeout=30) == -signal.SIGKILL
                        c.add_worker()

            got = executor.map(_slow_sum, shared, list(range(30)), Hook())
    finally:
        c.close()
    assert got == [job + 10.0 for job in range(30)]
    assert len(scatters) >= 2


def _slow_sum(shared, job):
    time.sleep(0.05)
    return job + float(shared.sum())


def test_lost_scheduler_is_one_user_error(tmp_path, problem):
    """The scheduler killed mid-run: a UserError naming it, not a hang or a traceback."""
    net, x, y = problem
    c = Cluster(tmp_path, workers=1)
    try:
        executor = scheduler_executor(c.address, announce=False)

        class Hook:
            def update(self, n=1):
                if c.scheduler.poll() is None:
                    c.scheduler.send_signal(signal.SIGKILL)

        with pytest.raises(UserError, match="lost the Dask scheduler"):
            executor.map(_slow_identity, None, list(range(20)), Hook())
        executor.close()
    finally:
        c.close()


def _slow_identity(shared, job):
    time.sleep(0.05)
    return job


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    save_model(folder / "model.h5", build_net({**SMALL, "input_shape": [1, 8, 8]}, seed=0))
    return folder / "model.h5", write_tiny_dataset(folder / "tiny.npz")


def test_closed_scheduler_port_is_one_line_and_exit_2(files, tmp_path, capsys):
    model, data = files
    out = tmp_path / "sens.json"
    code = main(["sensitivity", str(model), "--data", str(data), "--val-size", "20",
                 "--scheduler", f"tcp://127.0.0.1:{_closed_port()}", "--out", str(out)])
    assert "cannot reach the Dask scheduler" in assert_one_line_error(code, capsys.readouterr().err)
    assert not out.exists()


def test_without_distributed_the_error_says_how_to_install(files, monkeypatch, capsys):
    model, data = files
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    code = main(["evaluate", str(model), "--data", str(data), "--workers", "2"])
    assert INSTALL in assert_one_line_error(code, capsys.readouterr().err)


def test_evaluate_npdc_on_a_cluster_is_refused(tmp_path, capsys):
    """A .npdc file is measured on the client: --workers with it is one line, exit 2."""
    code = main(["evaluate", str(tmp_path / "m.npdc"), "--data", "x", "--workers", "2"])
    assert "measured on this machine" in assert_one_line_error(code, capsys.readouterr().err)


def test_cli_local_cluster_matches_in_process(files, tmp_path, capsys):
    """`sensitivity --workers 2` writes the in-process sweep byte for byte, and prints the local
    cluster's dashboard."""
    model, data = files
    base = ["sensitivity", str(model), "--data", str(data), "--val-size", "60",
            "--values", "0.5,2", "--layers", "conv1,res3a_2a,fc"]
    outs = [tmp_path / f"{name}.json" for name in ("here", "cluster")]
    assert main(base + ["--out", str(outs[0])]) == 0
    assert main(base + ["--out", str(outs[1]), "--workers", "2"]) == 0
    assert "dashboard http://127.0.0.1:" in capsys.readouterr().err
    assert outs[1].read_bytes() == outs[0].read_bytes()


def test_shared_by_path_matches_scattered(cluster, files):
    """--share files: each worker reads the model and images from the paths (a Loaded recipe),
    and the sweep equals the in-process one on the arrays the client loaded."""
    model, data = files
    net, x, y = model_and_images(load_model, model, data, "train", 60)
    expected = sweep(net, x, y, (1.0,), "s", ["conv1", "fc"], batch_size=16, progress=False)
    recipe = Loaded(model_and_images, load_model, str(model), str(data), "train", 60)
    with scheduler_executor(cluster.address, announce=False) as executor:
        got = sweep(net, x, y, (1.0,), "s", ["conv1", "fc"], batch_size=16, progress=False,
                    executor=executor, shared=recipe)
    assert got == expected


def test_a_npdc_model_shared_by_path_is_decoded_on_the_workers(cluster, files, tmp_path, capsys):
    """`sensitivity FILE.npdc --share files` on a cluster: the workers decode the .npdc file
    themselves (a .h5 reader would refuse it) and the sweep is the in-process one."""
    from npdc.codec.model import save_compressed
    from npdc.compress.quantize import quantize_net

    model, data = files
    net = load_model(model)
    save_compressed(tmp_path / "m.npdc", net, quantize_net(net, {}, "kmeans", {}, default_bits=5))
    base = ["sensitivity", str(tmp_path / "m.npdc"), "--data", str(data), "--val-size", "60",
            "--values", "0.5,2", "--layers", "conv1,fc"]
    outs = [tmp_path / f"{name}.json" for name in ("here", "cluster")]
    assert main(base + ["--out", str(outs[0])]) == 0
    code = main(base + ["--out", str(outs[1]), "--scheduler", cluster.address, "--share", "files"])
    assert code == 0, capsys.readouterr().err
    assert outs[1].read_bytes() == outs[0].read_bytes()


def test_in_process_run_jobs_keeps_order():
    """The default executor returns fn(shared, job) in the order of the jobs."""
    assert run_jobs(_slow_identity, None, [3, 1, 2]) == [3, 1, 2]


@pytest.mark.parametrize("metric", ["accuracy", "verification"])
def test_a_searching_compress_on_two_workers_writes_the_in_process_file(cluster, tmp_path, capsys, metric):
    """The search's sweeps and bit-width candidates run as jobs on the cluster (the metric,
    with its validation pairs, goes to the workers); the file is the one the in-process run
    writes, byte for byte."""
    from npdc.engine.train import train_model
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import save_model
    from npdc.pipeline.run import run
    from npdc.pipeline.schedule import load_schedule
    from tests.conftest import write_tiny_dataset

    write_tiny_dataset(tmp_path / "d.npz", 160, 40)
    data = load_dataset(str(tmp_path / "d.npz"))
    net, _ = train_model({"arch": "resnet18", "input_shape": [1, 8, 8], "num_classes": 3, "width": 2},
                         data.x_train, data.y_train, 1, batch_size=16, progress=False)
    save_model(tmp_path / "m.h5", net)
    (tmp_path / "s.toml").write_text("batch_size = 16\n[search]\nlevels = [50.0, 90.0]\nbits = [3, 8]\n"
                                     "step_images = 32\nsensitivity_images = 24\nmax_steps = 2\n"
                                     f"metric = '{metric}'\nval_fraction = 0.2\n[quantize]\nepochs = 0\n")
    schedule = load_schedule(tmp_path / "s.toml")
    run(tmp_path / "m.h5", data, schedule, tmp_path / "a.npdc", tmp_path / "wa", progress=False,
        log=lambda *_: None)
    with scheduler_executor(cluster.address) as executor:
        run(tmp_path / "m.h5", data, schedule, tmp_path / "b.npdc", tmp_path / "wb", progress=False,
            log=lambda *_: None, executor=executor)
    assert "(2 workers now)" in capsys.readouterr().err  # the jobs went to the cluster
    assert (tmp_path / "a.npdc").read_bytes() == (tmp_path / "b.npdc").read_bytes()
