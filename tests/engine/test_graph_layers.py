"""The layers general graphs need: dilated, grouped and large-kernel convolutions, ceil-mode
max-pooling, Clip (ReLU6), Concat and Dropout; forward against definitions, gradients against
finite differences in float64."""

import numpy as np
import pytest

from npdc.engine.gradcheck import check_layer
from npdc.engine.layers import AvgPool2d, Clip, Concat, Conv2d, Dropout, MaxPool2d
from tests.conftest import distinct_values, naive_conv2d


def _built(layer, in_shape):
    layer.build(in_shape, np.random.default_rng(0))
    return layer


def _dilate(W, d):
    o, c, k, _ = W.shape
    out = np.zeros((o, c, d * (k - 1) + 1, d * (k - 1) + 1))
    out[:, :, ::d, ::d] = W
    return out


CONV_CASES = [  # (in_shape, out, k, stride, pad, groups, dilation)
    ((3, 15, 15), 4, 7, 2, 3, 1, 1),   # an ImageNet stem
    ((6, 7, 7), 6, 3, 1, 1, 6, 1),     # depthwise
    ((6, 7, 7), 6, 3, 2, 1, 6, 1),     # depthwise, stride 2
    ((4, 9, 9), 4, 3, 1, 2, 2, 2),     # grouped and dilated
    ((2, 11, 11), 3, 3, 2, 3, 1, 3),   # dilation 3, stride 2
]


@pytest.mark.parametrize("in_shape, out, k, s, p, g, d", CONV_CASES)
def test_conv_forward_is_the_dilated_definition(in_shape, out, k, s, p, g, d):
    """A dilated conv is the ordinary conv of the kernel with d-1 zeros between its taps."""
    layer = _built(Conv2d(out, k, s, p, groups=g, bias=True, dilation=d), in_shape)
    layer.params["b"][:] = np.arange(out)
    x = np.random.default_rng(1).standard_normal((2,) + in_shape).astype(np.float32)
    y = layer.forward(x, train=False)
    want = naive_conv2d(x, _dilate(layer.params["W"], d), s, p, g) + np.arange(out)[:, None, None]
    assert y.shape[1:] == layer.out_shape
    np.testing.assert_allclose(y, want, atol=1e-4)


@pytest.mark.parametrize("in_shape, out, k, s, p, g, d", CONV_CASES)
def test_conv_gradcheck(in_shape, out, k, s, p, g, d):
    layer = _built(Conv2d(out, k, s, p, groups=g, bias=True, dilation=d), in_shape)
    x = np.random.default_rng(2).standard_normal((2,) + in_shape)
    errors, _ = check_layer(layer, x, max_entries=60)
    assert max(errors.values()) < 1e-6, errors


def test_dilation_that_does_not_fit_is_refused():
    with pytest.raises(ValueError):
        _built(Conv2d(2, 3, dilation=4), (1, 6, 6))


def _torch_ceil_max(x, k, s, p):
    """PyTorch's ceil_mode max pool by its definition: windows from -p in steps of s, the last
    one kept only if it starts inside the input or the left padding."""
    n, c, h, w = x.shape
    side = lambda m: [i for i in range(-p, m + p, s) if i + k > 0][: -(-(m + 2 * p - k) // s) + 1]
    ys = [[x[:, :, max(i, 0):i + k, max(j, 0):j + k].max(axis=(2, 3)) for j in side(w) if j < w + p]
          for i in side(h) if i < h + p]
    return np.stack([np.stack(r, -1) for r in ys], -2)


@pytest.mark.parametrize("in_shape, k, s, p", [((2, 8, 8), 3, 2, 0), ((2, 7, 6), 3, 2, 1),
                                               ((1, 13, 13), 3, 2, 0), ((1, 6, 6), 2, 2, 0)])
def test_ceil_mode_maxpool(in_shape, k, s, p):
    """Ceil mode keeps the last partial window (SqueezeNet's pools) and its gradient is right."""
    x = distinct_values((2,) + in_shape, np.random.default_rng(3), spread=0.01)
    layer = _built(MaxPool2d(k, s, p, ceil=True), in_shape)
    y = layer.forward(x, train=False)
    np.testing.assert_array_equal(y, _torch_ceil_max(x, k, s, p))
    errors, _ = check_layer(layer, x, kinks=True)
    assert errors["x"] < 1e-5


def test_ceil_mode_adds_a_window_only_when_the_floor_drops_one():
    assert _built(MaxPool2d(3, 2, ceil=True), (1, 8, 8)).out_shape == (1, 4, 4)
    assert _built(MaxPool2d(3, 2), (1, 8, 8)).out_shape == (1, 3, 3)
    assert _built(MaxPool2d(3, 2, ceil=True), (1, 7, 7)).out_shape == (1, 3, 3)


def test_ceil_mode_average_pool_is_refused():
    with pytest.raises(ValueError):
        _built(AvgPool2d(3, 2, ceil=True), (1, 8, 8))


def test_clip_is_relu6_and_its_gradient_passes_inside():
    layer = _built(Clip(0.0, 6.0), (3, 4, 4))
    x = np.random.default_rng(4).uniform(-3, 9, (2, 3, 4, 4))
    np.testing.assert_array_equal(layer.forward(x, False), np.minimum(np.maximum(x, 0), 6))
    errors, _ = check_layer(layer, x, kinks=True)
    assert errors["x"] < 1e-6
    with pytest.raises(ValueError):
        Clip(1.0, 1.0)


def test_concat_stacks_channels_and_splits_the_gradient():
    layer = _built(Concat(), [(2, 3, 3), (4, 3, 3), (1, 3, 3)])
    assert layer.out_shape == (7, 3, 3)
    r = np.random.default_rng(5)
    xs = [r.standard_normal((2, c, 3, 3)) for c in (2, 4, 1)]
    np.testing.assert_array_equal(layer.forward(xs, True), np.concatenate(xs, 1))
    dy = r.standard_normal((2, 7, 3, 3))
    dxs = layer.backward(dy)
    np.testing.assert_array_equal(np.concatenate(dxs, 1), dy)
    assert [d.shape[1] for d in dxs] == [2, 4, 1]
    with pytest.raises(ValueError):
        _built(Concat(), [(2, 3, 3), (2, 4, 3)])


def test_dropout_is_the_identity():
    layer = _built(Dropout(0.2), (5,))
    x = np.random.default_rng(6).standard_normal((3, 5))
    np.testing.assert_array_equal(layer.forward(x, True), x)
    np.testing.assert_array_equal(layer.backward(x), x)


def test_clip_in_float32_in_place_and_with_nan():
    """float32 stays float32; the in-place eval forward equals the copying one; NaN stays NaN
    and its gradient is zero, like np.clip's output and the mask lo < x < hi."""
    x = np.array([[-1.0, 0.0, 3.0, 6.0, 7.0, np.nan]], np.float32)
    layer = _built(Clip(0.0, 6.0), (6,))
    y = layer.forward(x, train=True)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.clip(x, 0, 6))
    np.testing.assert_array_equal(layer.forward_into(x.copy()), y)
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx, [[0, 0, 1, 0, 0, 0]])
