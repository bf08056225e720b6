"""Tests for MaxPool2d, AvgPool2d and GlobalAvgPool: forward against direct window loops,
padding semantics, tie-breaking and gradients."""

import numpy as np
import pytest

from npdc.engine.gradcheck import check_layer
from npdc.engine.layers import AvgPool2d, GlobalAvgPool, MaxPool2d
from tests.conftest import distinct_values, out_len


def _built(layer, in_shape):
    layer.build(in_shape, np.random.default_rng(0))
    return layer


def _naive_pool(x, k, stride, pad, reduce, fill):
    """Loop over output pixels; the padding takes the value `fill`."""
    n, c, h, w = x.shape
    ho, wo = out_len(h, k, stride, pad), out_len(w, k, stride, pad)
    xp = np.full((n, c, h + 2 * pad, w + 2 * pad), fill, dtype=np.float64)
    xp[:, :, pad:pad + h, pad:pad + w] = x
    y = np.empty((n, c, ho, wo))
    for p in range(ho):
        for q in range(wo):
            win = xp[:, :, p * stride:p * stride + k, q * stride:q * stride + k]
            y[:, :, p, q] = reduce(win.reshape(n, c, -1), axis=2)
    return y


POOL_CASES = [  # (in_shape, kernel, stride, pad)
    ((2, 6, 6), 2, 2, 0),
    ((2, 7, 7), 3, 2, 1),
    ((1, 5, 6), 3, 1, 1),
    ((3, 5, 5), 2, 1, 0),
]


@pytest.mark.parametrize("in_shape, k, s, p", POOL_CASES)
def test_maxpool_forward(in_shape, k, s, p):
    """Each output is the maximum of its window; padding never wins (it is -inf)."""
    r = np.random.default_rng(1)
    x = r.standard_normal((2,) + in_shape) - 10.0   # all negative: a zero pad would win
    layer = _built(MaxPool2d(k, s, p), in_shape)
    y = layer.forward(x, train=False)
    assert y.shape[1:] == layer.out_shape
    np.testing.assert_array_equal(y, _naive_pool(x, k, s, p, np.max, -np.inf))


@pytest.mark.parametrize("in_shape, k, s, p", POOL_CASES)
def test_maxpool_gradcheck(in_shape, k, s, p):
    """With distinct inputs the gradient goes to the window maxima (finite differences)."""
    x = distinct_values((2,) + in_shape, np.random.default_rng(2), spread=0.01)
    layer = _built(MaxPool2d(k, s, p), in_shape)
    errors, _ = check_layer(layer, x, kinks=True)
    assert errors["x"] < 1e-5


def test_maxpool_tie_goes_to_first_maximum():
    """On a constant input each window sends its whole gradient to its top-left element."""
    layer = _built(MaxPool2d(2), (1, 4, 4))
    x = np.ones((1, 1, 4, 4))
    layer.forward(x, train=True)
    dx = layer.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, 0, 0], expected[0, 0, 0, 2] = 1.0, 2.0
    expected[0, 0, 2, 0], expected[0, 0, 2, 2] = 3.0, 4.0
    np.testing.assert_array_equal(dx, expected)


def test_maxpool_overlapping_windows_accumulate():
    """A pixel that is the maximum of several overlapping windows receives all their gradients."""
    layer = _built(MaxPool2d(3, stride=1), (1, 4, 4))
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 2] = 5.0                      # inside all four 3x3 windows
    layer.forward(x, train=True)
    dy = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    dx = layer.backward(dy)
    assert dx[0, 0, 1, 2] == dy.sum()
    assert np.count_nonzero(dx) == 1


@pytest.mark.parametrize("in_shape, k, s, p", POOL_CASES)
def test_avgpool_forward_counts_padding_as_zero(in_shape, k, s, p):
    """Each output is the window sum divided by k*k, padded positions contributing zero."""
    x = np.random.default_rng(3).standard_normal((2,) + in_shape)
    layer = _built(AvgPool2d(k, s, p), in_shape)
    y = layer.forward(x, train=False)
    np.testing.assert_allclose(y, _naive_pool(x, k, s, p, np.mean, 0.0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("in_shape, k, s, p", POOL_CASES)
def test_avgpool_gradcheck(in_shape, k, s, p):
    """AvgPool2d (with padding where the case has it) passes the gradient check."""
    x = np.random.default_rng(4).standard_normal((2,) + in_shape)
    layer = _built(AvgPool2d(k, s, p), in_shape)
    errors, _ = check_layer(layer, x)
    assert errors["x"] < 1e-5


def test_default_stride_is_kernel_size():
    """Without a stride, windows tile the input without overlap."""
    assert _built(MaxPool2d(2), (1, 6, 6)).out_shape == (1, 3, 3)
    assert _built(AvgPool2d(3), (2, 9, 9)).out_shape == (2, 3, 3)


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("k, s, p, in_shape", [
    (3, 1, 2, (1, 5, 5)),     # padding more than half the window
    (4, 1, 0, (1, 3, 3)),     # window larger than the input
])
def test_pool_illegal_build(cls, k, s, p, in_shape):
    """Impossible pooling geometries are refused at build time."""
    with pytest.raises(ValueError):
        _built(cls(k, s, p), in_shape)


def test_global_avg_pool_forward_and_shape():
    """(N, C, H, W) -> (N, C) of feature-map means."""
    x = np.random.default_rng(5).standard_normal((3, 4, 5, 2))
    layer = _built(GlobalAvgPool(), (4, 5, 2))
    assert layer.out_shape == (4,)
    np.testing.assert_allclose(layer.forward(x, train=False), x.mean(axis=(2, 3)), rtol=1e-12)


def test_global_avg_pool_gradcheck():
    """Every pixel receives dy / (H*W)."""
    x = np.random.default_rng(6).standard_normal((2, 3, 3, 4))
    layer = _built(GlobalAvgPool(), (3, 3, 4))
    errors, _ = check_layer(layer, x)
    assert errors["x"] < 1e-5
    layer.forward(x, train=True)
    dx = layer.backward(np.ones((2, 3)))
    np.testing.assert_allclose(dx, np.full(x.shape, 1 / 12))


@pytest.mark.parametrize("in_shape, k, s, p", POOL_CASES + [((3, 12, 10), 3, 2, 1)])
@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_pool_float32_train_and_eval_agree(cls, in_shape, k, s, p):
    """float32 stays float32, and the training forward (which records the winning taps) returns
    the same values as the eval one, within float32 rounding of the reference."""
    x = np.random.default_rng(7).standard_normal((2,) + in_shape).astype(np.float32)
    layer = _built(cls(k, s, p), in_shape)
    y_eval, y_train = layer.forward(x, train=False), layer.forward(x, train=True)
    assert y_eval.dtype == y_train.dtype == np.float32
    np.testing.assert_array_equal(y_eval, y_train)
    reduce, fill = (np.max, -np.inf) if cls is MaxPool2d else (np.mean, 0.0)
    np.testing.assert_allclose(y_eval, _naive_pool(x, k, s, p, reduce, fill), rtol=1e-6, atol=1e-6)
    assert layer.backward(np.ones_like(y_train)).dtype == np.float32


def test_maxpool_nan_in_first_tap_propagates():
    """A NaN at a window's first tap is that window's output (never silently replaced)."""
    layer = _built(MaxPool2d(2), (1, 4, 4))
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 2, 2] = np.nan
    y = layer.forward(x, train=False)
    assert np.isnan(y[0, 0, 1, 1]) and np.count_nonzero(np.isnan(y)) == 1


@pytest.mark.parametrize("in_shape, k, s, p", [((1, 8, 8), 3, 2, 0), ((2, 9, 6), 3, 2, 1), ((1, 6, 7), 2, 2, 0)])
def test_ceil_maxpool_gradcheck(in_shape, k, s, p):
    """Ceil-mode windows that hang past the input still send their gradient to their maximum."""
    x = distinct_values((2,) + in_shape, np.random.default_rng(8), spread=0.01)
    layer = _built(MaxPool2d(k, s, p, ceil=True), in_shape)
    errors, _ = check_layer(layer, x, kinks=True)
    assert errors["x"] < 1e-5
