"""What running a model costs: peak memory of the naive float run and of a runtime, and latency.

M and m of the score come from here (`memory_figures`): M is the uncompressed model run naively at
batch 1 with direct convolutions (every activation kept), m a batch-1 runtime from the .npdc file;
both count the arrays held plus the tracemalloc peak of one forward pass.
"""

import resource
import time
import tracemalloc

import numpy as np

from npdc.kernels.conv import primitive_forced

MEMORY_METHOD = ("M: naive dense float32 inference of the uncompressed model at batch 1 (parameters, "
                 "buffers, input and every activation kept; npdc.runtime.measure.naive_peak_bytes); "
                 "m: the npdc runtime at batch 1 with {weights} weights (its arrays plus the "
                 "tracemalloc peak of one forward pass; npdc.runtime.measure.runtime_peak_bytes)")


def memory_figures(baseline, runtime):
    """(M, m, method): the naive float32 run of `baseline` against a batch-1 `runtime`."""
    return (naive_peak_bytes(baseline), runtime_peak_bytes(runtime),
            MEMORY_METHOD.format(weights=runtime.mode))


def _traced_peak(fn, passes=3):
    """Peak bytes tracemalloc sees allocated by fn() beyond what was allocated before: the least
    over a few passes, since tracemalloc also counts what other threads of the process (a
    progress bar's monitor, a finishing worker) allocate meanwhile, and fn's own need is the same
    every pass."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        peaks = []
        for _ in range(passes):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            fn()
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
        return min(peaks)
    finally:
        if started:
            tracemalloc.stop()


def runtime_peak_bytes(runtime, seed=0):
    """Peak bytes of the runtime's arrays during one batch-1 inference: what it holds (weights,
    arena, workspace, the coded payloads in stream mode) plus the tracemalloc peak of one
    forward pass (e.g. a streamed layer's decoding). A first untraced pass compiles kernels."""
    x = np.random.default_rng(seed).random((1,) + runtime.plan.in_shape).astype(np.float32)
    runtime.predict(x)
    peak = _traced_peak(lambda: runtime.predict(x))
    return runtime.static_bytes() + int(x.nbytes) + peak


def naive_peak_bytes(net, seed=0):
    """Memory of the uncompressed model run naively at batch 1: float32 parameters and buffers,
    the input, and the tracemalloc peak of a forward pass that keeps every activation. Convolutions
    run as direct loops, which allocate nothing but their output, so the baseline does not move
    when a faster primitive with scratch buffers becomes the engine's default."""
    x = np.random.default_rng(seed).standard_normal((1,) + tuple(net.in_shape)).astype(np.float32)
    names = [name for name, _, _ in net.nodes]
    with primitive_forced("direct"):
        net.forward(x, keep=names)
        peak = _traced_peak(lambda: net.forward(x, keep=names))
    static = sum(int(a.nbytes) for a in {**net.params(), **net.buffers()}.values())
    return static + int(x.nbytes) + peak


def peak_rss_bytes():
    """The process's peak resident set size so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def latency_ms(runtime, repeats=30):
    """Median batch-1 latency of predict on a random image, after a warm-up call."""
    x = np.random.default_rng(1).random((1,) + runtime.plan.in_shape).astype(np.float32)
    runtime.predict(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runtime.predict(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))
