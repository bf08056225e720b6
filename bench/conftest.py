"""Benchmarks: speed and memory, measured with pytest-benchmark, never asserted in tests/.

Run with `python -m pytest bench/ --benchmark-only`. Cases that compare two things measured in
the same run (a kernel against numpy's matmul, npdc against PyTorch when it is installed) fail
when the ratio falls below the floor written beside the case. Every case warms up first, so
Numba compilation is never timed.

A gate (a case marked `gate`) that cannot run, PyTorch's when torch is not installed, is skipped;
the terminal summary then names every skipped gate and why, so a run without the comparisons
never reads as a pass of them (`pip install -e ".[bench]"` installs them).
"""

import time

import npdc

npdc.tune_process()  # the benches run as the command line does: set before numpy loads

import pytest  # noqa: E402

from npdc.engine.conv_select import best_seconds  # noqa: F401  (the benches' timer)
from npdc.threads import set_threads

THREADS = 2


def pytest_configure(config):
    config.addinivalue_line("markers", "gate: the case fails when its same-run ratio drops below a floor")


def pytest_terminal_summary(terminalreporter):
    """One block naming the gates that were skipped (their floors were not checked) and why."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "gate" in getattr(r, "keywords", {})]
    if not skipped:
        return
    terminalreporter.write_sep("=", f"{len(skipped)} bench gate(s) skipped: their floors were NOT checked",
                               yellow=True)
    for r in skipped:
        reason = r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)
        terminalreporter.write_line(f"GATE SKIPPED {r.nodeid}: {reason.removeprefix('Skipped: ')}")


@pytest.fixture(autouse=True, scope="session")
def _threads():
    set_threads(THREADS)


def gate(benchmark, name, ratio, floor):
    """Record a same-run ratio and fail below its floor."""
    benchmark.extra_info[name] = round(ratio, 3)
    benchmark.extra_info[f"{name}_floor"] = floor
    assert ratio >= floor, f"{name} = {ratio:.3f} is below its floor {floor}"


def alternating_best(ours, theirs, rounds=5, runs=1):
    """(best seconds of ours, of theirs), one call of each per round after a warm-up call each:
    this machine's speed drifts over seconds, and alternating lets a slow spell hit both. With
    runs > 1 each round calls each function that many times in a row and times the last, so each
    is timed warm (its thread pool awake, its data in cache), as a kernel runs among the others of
    a network: a Numba convolution of 0.7-2 ms timed right after OpenBLAS's 7 ms matmul ran about
    1.2x slower (measured, best of 21: the pools' hand-over and the caches), a cost that barely
    shows on the matmul's own time."""
    ours(), theirs()
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for k, fn in enumerate((ours, theirs)):
            for _ in range(runs - 1):
                fn()
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def versus(benchmark, name, ours, theirs, floor, batch):
    """Time ours with pytest-benchmark, then the ratio of images/s from alternating calls."""
    benchmark.pedantic(ours, rounds=5, warmup_rounds=1)
    mine, torch_s = alternating_best(ours, theirs)
    benchmark.extra_info.update(npdc_img_s=round(batch / mine, 1), torch_img_s=round(batch / torch_s, 1))
    gate(benchmark, name, torch_s / mine, floor)
