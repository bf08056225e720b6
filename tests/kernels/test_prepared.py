"""Transformed weights kept between calls: reused only for the same array with the same values."""

import numpy as np

from npdc.kernels import prepared
from npdc.kernels.conv import conv2d_forward
from tests.conftest import naive_conv2d


def _counting():
    calls = []

    def make(W):
        calls.append(1)
        return W * 2
    return make, calls


def test_reused_for_the_same_values_made_again_after_an_in_place_change():
    prepared.forget()
    make, calls = _counting()
    W = np.arange(12, dtype=np.float32).reshape(3, 4)
    first = prepared.prepared("t", W, make)
    assert prepared.prepared("t", W, make) is first and len(calls) == 1
    W[1, 2] += 1  # an optimiser's step, in place
    again = prepared.prepared("t", W, make)
    assert len(calls) == 2 and again[1, 2] == 2 * W[1, 2]
    assert prepared.prepared("other kind", W, make) is not again and len(calls) == 3
    W[0, 0] = np.nan  # NaN never equals itself: made afresh every time, never served stale
    prepared.prepared("t", W, make), prepared.prepared("t", W, make)
    assert len(calls) == 5


def test_keeps_at_most_max_floats_least_recently_used_first(monkeypatch):
    prepared.forget()
    monkeypatch.setattr(prepared, "MAX_FLOATS", 3 * 2 * 10)  # three entries of 10 floats and a copy
    make, calls = _counting()
    arrays = [np.full(10, k, np.float32) for k in range(4)]
    for a in arrays[:3]:
        prepared.prepared("t", a, make)
    prepared.prepared("t", arrays[0], make)  # now the most recent
    prepared.prepared("t", arrays[3], make)  # evicts arrays[1]
    assert len(calls) == 4
    prepared.prepared("t", arrays[0], make), prepared.prepared("t", arrays[2], make)
    assert len(calls) == 4
    prepared.prepared("t", arrays[1], make)
    assert len(calls) == 5
    big = np.zeros(100, np.float32)  # larger than the bound: made, never kept
    prepared.prepared("t", big, make), prepared.prepared("t", big, make)
    assert len(calls) == 7


def test_winograd4_follows_weights_changed_in_place():
    prepared.forget()
    r = np.random.default_rng(5)
    x, W = r.standard_normal((2, 6, 9, 9), dtype=np.float32), r.standard_normal((20, 6, 3, 3), dtype=np.float32)
    first = conv2d_forward(x, W, 1, 1, 1, primitive="winograd4")
    np.testing.assert_array_equal(conv2d_forward(x, W, 1, 1, 1, primitive="winograd4"), first)
    W[3] *= -2
    y = conv2d_forward(x, W, 1, 1, 1, primitive="winograd4")
    np.testing.assert_allclose(y, naive_conv2d(x, W, 1, 1, 1), rtol=1e-4, atol=1e-4)
    assert not np.allclose(y, first)


def test_a_layer_runs_resnet50s_last_stage_as_winograd4_only_in_inference():
    """The inference forward takes winograd4 (its kernel transform kept), a training forward the
    GEMM (weights change every step); both compute the same convolution."""
    from npdc.engine.layers.conv import Conv2d
    layer = Conv2d(512, 3, padding=1)
    layer.build((512, 7, 7), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 512, 7, 7), dtype=np.float32)
    inferred = layer.forward(x, train=False)
    assert layer.ran == "winograd4"
    trained = layer.forward(x, train=True)
    assert layer.ran == "gemm"
    np.testing.assert_allclose(inferred, trained, rtol=1e-3, atol=1e-3 * np.abs(trained).max())


def test_timing_a_training_step_keeps_no_transform_from_the_run_before(monkeypatch):
    """conv_select's 'train' timings pay winograd4's kernel transform on every run, as training
    does; 'infer' timings reuse it, as inference does."""
    from npdc.engine import conv_select
    from npdc.kernels import conv_winograd4
    made = []
    real = conv_winograd4.transformed_kernels
    monkeypatch.setattr(conv_winograd4, "transformed_kernels", lambda W, **kw: made.append(1) or real(W, **kw))
    prepared.forget()
    x = np.ones((1, 8, 6, 6), np.float32)
    W = np.ones((8, 8, 3, 3), np.float32)
    conv_select.time_primitive("winograd4", x, W, 1, 1, 1, mode="infer", repeats=3)
    assert len(made) == 1
    conv_select.time_primitive("winograd4", x, W, 1, 1, 1, mode="train", repeats=3)
    assert len(made) == 1 + 4 * 2  # each of the 4 runs: the forward's and the data gradient's


def test_a_training_forward_neither_keeps_nor_reuses_transforms():
    """A layer's training forward (keep=False) transforms its kernels afresh and leaves nothing
    kept, even where an inference forward kept the transform of these very weights; its output
    is bit for bit the inference forward's."""
    from npdc.engine.layers.conv import Conv2d
    prepared.forget()
    layer = Conv2d(16, 3, padding=1)
    layer.build((8, 6, 6), np.random.default_rng(2))
    x = np.random.default_rng(3).standard_normal((2, 8, 6, 6), dtype=np.float32)
    trained = layer.forward(x, train=True)
    assert layer.ran == "winograd4" and not prepared._kept
    inferred = layer.forward(x, train=False)
    assert len(prepared._kept) == 1
    np.testing.assert_array_equal(inferred, trained)
    kept = next(iter(prepared._kept.values()))[1]
    kept[:] = 0  # a training forward that read the kept transform would now give zeros
    np.testing.assert_array_equal(layer.forward(x, train=True), trained)
    assert not np.array_equal(layer.forward(x, train=False), trained)
