"""Timing of a training step and of inference on random data, after warm-up (compilation and
first-touch allocations are kept out of the figures; the median of several runs is reported)."""

import time

import numpy as np

from npdc.engine.losses import cross_entropy
from npdc.engine.optim import SGD


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure_speed(net, batch_size=128, repeats=5, seed=0):
    """{"train_img_s", "infer_img_s", "b1_latency_ms"} of `net` on random normalised input."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size,) + net.in_shape).astype(np.float32)
    y = rng.integers(0, net.shapes[net.output][0], batch_size)
    opt = SGD(net.params(), net.grads(), lr=1e-3)

    def train_step():
        net.zero_grad()
        _, d = cross_entropy(net.forward(x, train=True), y)
        net.backward(d)
        opt.step()

    def infer():
        net.forward(x)

    x1 = x[:1]

    def infer_one():
        net.forward(x1)

    for fn in (train_step, infer, infer_one):
        fn()
    train_s = _median_seconds(train_step, repeats)
    infer_s = _median_seconds(infer, repeats)
    b1_s = _median_seconds(infer_one, max(repeats, 20))
    return {"train_img_s": batch_size / train_s, "infer_img_s": batch_size / infer_s,
            "b1_latency_ms": b1_s * 1e3, "batch_size": batch_size}
