"""Convolution forward and backward at the layer shapes of cifar-resnet20 and the shipped model,
for every primitive that accepts the shape (the primitive x layer table), plus the default choice
gated against numpy's matmul. Compilation happens in an untimed first call."""

import numpy as np
import pytest

from bench.conftest import alternating_best, best_seconds, gate
from npdc.kernels.conv import PRIMITIVES, conv2d_backward, conv2d_forward, legal_primitives

BATCH = 128
# (C, H, O, k, stride): every distinct conv shape of cifar-resnet20, then of the shipped resnet18
SHAPES = [(3, 32, 16, 3, 1), (16, 32, 16, 3, 1), (16, 32, 32, 3, 2), (32, 16, 32, 3, 1), (32, 16, 64, 3, 2),
          (64, 8, 64, 3, 1),
          (1, 28, 16, 3, 1), (16, 28, 16, 3, 1), (16, 28, 32, 3, 2), (32, 14, 32, 3, 1),
          (32, 14, 64, 3, 2), (64, 7, 64, 3, 1), (64, 7, 128, 3, 2), (128, 4, 128, 3, 1),
          (16, 28, 32, 1, 2), (64, 7, 128, 1, 2)]
FORWARD_FLOOR = 0.10  # conv forward GFLOP/s over numpy's 1024^3 matmul GFLOP/s, same run
MATMUL = 1024


def _ids(s):
    return "c{}h{}o{}k{}s{}".format(*s)


def _data(c, h, o, k, stride):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, c, h, h), dtype=np.float32)
    W = rng.standard_normal((o, c, k, k), dtype=np.float32)
    return x, W, k // 2


@pytest.fixture(scope="module")
def matmul():
    a = np.random.default_rng(0).standard_normal((MATMUL, MATMUL), dtype=np.float32)
    return lambda: a @ a


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_conv_forward(benchmark, shape, matmul):
    """The gate's ratio comes from conv and matmul timed in alternation (best of 7 each, each timed
    on the second of two calls in a row): this machine's speed drifts, and a yardstick timed once
    at the start had moved the ratios of a whole run by 1.5x."""
    x, W, pad = _data(*shape)
    stride = shape[4]
    y = conv2d_forward(x, W, stride, pad)  # compile outside the timing
    flops = 2 * y.size * W[0].size
    benchmark(conv2d_forward, x, W, stride, pad)
    benchmark.extra_info["gflops"] = round(flops / benchmark.stats.stats.min / 1e9, 1)
    if shape[3] == 3:
        conv_s, matmul_s = alternating_best(lambda: conv2d_forward(x, W, stride, pad), matmul, rounds=7, runs=2)
        benchmark.extra_info["matmul_gflops"] = round(2 * MATMUL**3 / matmul_s / 1e9, 1)
        gate(benchmark, "vs_matmul", (flops / conv_s) / (2 * MATMUL**3 / matmul_s), FORWARD_FLOOR)


CASES = [(s, p) for s in SHAPES for p in PRIMITIVES
         if p in legal_primitives((BATCH, s[0], s[1], s[1]), (s[2], s[0], s[3], s[3]), s[4], s[3] // 2, 1)
         and not (p == "direct" and s[0] * s[2] > 256)]  # direct is for tiny layers; minutes otherwise


@pytest.mark.parametrize("shape,primitive", CASES, ids=[f"{_ids(s)}-{p}" for s, p in CASES])
def test_primitive_train_pass(benchmark, shape, primitive):
    """Forward + both backwards of one primitive: what `npdc tune --mode train` compares."""
    x, W, pad = _data(*shape)
    stride = shape[4]

    def step():
        y = conv2d_forward(x, W, stride, pad, primitive=primitive)
        conv2d_backward(x, W, y, stride, pad, primitive=primitive)

    step()
    benchmark.pedantic(step, rounds=3, warmup_rounds=0)
    y = conv2d_forward(x, W, stride, pad, primitive=primitive)
    benchmark.extra_info["gflops"] = round(6 * y.size * W[0].size / benchmark.stats.stats.min / 1e9, 1)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_conv_backward(benchmark, shape):
    x, W, pad = _data(*shape)
    stride = shape[4]
    dy = np.ones_like(conv2d_forward(x, W, stride, pad))
    conv2d_backward(x, W, dy, stride, pad)
    benchmark(conv2d_backward, x, W, dy, stride, pad)
    benchmark.extra_info["gflops"] = round(4 * dy.size * W[0].size / benchmark.stats.stats.min / 1e9, 1)


def test_matmul_yardstick(benchmark, matmul):
    """numpy's float32 matmul at 1024^3, for reading the tables above."""
    best_seconds(matmul, 1)
    benchmark(matmul)
    benchmark.extra_info["gflops"] = round(2 * MATMUL**3 / benchmark.stats.stats.min / 1e9, 1)
