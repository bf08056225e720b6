"""Tests for the Conv2d layer: build shapes and initialisation, forward against a naive float64
convolution, gradients by finite differences, gradient accumulation and MACs."""

import numpy as np
import pytest

from npdc.engine.gradcheck import check_layer
from npdc.engine.layers import Conv2d
from tests.conftest import naive_conv2d


def _built(in_shape, seed=0, **hp):
    layer = Conv2d(**hp)
    layer.build(in_shape, np.random.default_rng(seed))
    return layer


@pytest.mark.parametrize("in_shape, hp, out_shape", [
    ((3, 8, 8), dict(out_channels=5, kernel_size=3, padding=1), (5, 8, 8)),
    ((3, 8, 7), dict(out_channels=4, kernel_size=3, stride=2, padding=1), (4, 4, 4)),
    ((4, 5, 5), dict(out_channels=6, kernel_size=3, groups=2), (6, 3, 3)),
    ((2, 9, 9), dict(out_channels=2, kernel_size=1, stride=2), (2, 5, 5)),
])
def test_build_shapes(in_shape, hp, out_shape):
    """build() returns (O, Ho, Wo) by the window formula and W is (O, C/groups, k, k)."""
    layer = _built(in_shape, **hp)
    assert layer.out_shape == out_shape
    groups = hp.get("groups", 1)
    k = hp["kernel_size"]
    assert layer.params["W"].shape == (hp["out_channels"], in_shape[0] // groups, k, k)
    assert layer.params["W"].dtype == np.float32
    assert set(layer.grads) == set(layer.params)


def test_he_initialisation_scale():
    """W ~ N(0, 2 / fan_in) (He et al. 2015), fan_in = C/groups * k * k."""
    layer = _built((32, 5, 5), out_channels=64, kernel_size=3)
    W = layer.params["W"].astype(np.float64)
    expected = np.sqrt(2.0 / (32 * 9))
    assert abs(W.std() / expected - 1) < 0.05
    assert abs(W.mean()) < 0.05 * expected


def test_bias_flag():
    """A bias exists (zero-initialised) only when asked for."""
    assert "b" not in _built((2, 4, 4), out_channels=3, kernel_size=3).params
    b = _built((2, 4, 4), out_channels=3, kernel_size=3, bias=True).params["b"]
    np.testing.assert_array_equal(b, np.zeros(3, np.float32))


@pytest.mark.parametrize("hp", [
    dict(out_channels=4, kernel_size=3, stride=2, padding=1, bias=True),
    dict(out_channels=6, kernel_size=3, padding=1, groups=3),
    dict(out_channels=3, kernel_size=3, padding=1, groups=3),   # depthwise
    dict(out_channels=5, kernel_size=1),                        # pointwise
])
def test_forward_matches_naive(hp):
    """Forward equals the direct definition of a convolution (plus bias)."""
    r = np.random.default_rng(4)
    layer = _built((3, 7, 6), seed=1, **hp)
    layer.astype(np.float64)
    if hp.get("bias"):
        layer.params["b"][...] = r.standard_normal(hp["out_channels"])
    x = r.standard_normal((2, 3, 7, 6))
    y = layer.forward(x, train=False)
    ref = naive_conv2d(x, layer.params["W"], layer.stride, layer.padding, layer.groups)
    if hp.get("bias"):
        ref = ref + layer.params["b"][None, :, None, None]
    assert y.shape == (2,) + layer.out_shape
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("in_shape, hp", [
    ((3, 6, 6), dict(out_channels=4, kernel_size=3, stride=2, padding=1, bias=True)),
    ((3, 5, 5), dict(out_channels=2, kernel_size=3, padding=0, bias=True)),
    ((4, 5, 5), dict(out_channels=6, kernel_size=3, padding=1, groups=2)),
    ((4, 6, 6), dict(out_channels=4, kernel_size=3, stride=2, padding=1, groups=4)),  # depthwise
    ((4, 4, 4), dict(out_channels=3, kernel_size=1, bias=True)),                       # 1x1
    ((4, 5, 5), dict(out_channels=3, kernel_size=1, stride=2)),                        # 1x1 strided
])
def test_gradcheck(in_shape, hp):
    """dx, dW and db agree with central differences in float64 (max error < 1e-5)."""
    layer = _built(in_shape, seed=2, **hp)
    x = np.random.default_rng(5).standard_normal((2,) + in_shape)
    errors, _ = check_layer(layer, x)
    assert set(errors) == {"x"} | set(layer.params)
    assert max(errors.values()) < 1e-5, errors


def test_backward_accumulates_into_grads():
    """backward() adds to grads (the Caffe convention), so two passes double them."""
    r = np.random.default_rng(6)
    layer = _built((2, 5, 5), out_channels=3, kernel_size=3, padding=1, bias=True)
    x = r.standard_normal((2, 2, 5, 5)).astype(np.float32)
    dy = r.standard_normal((2, 3, 5, 5)).astype(np.float32)
    layer.forward(x, train=True)
    layer.backward(dy)
    once = {k: g.copy() for k, g in layer.grads.items()}
    assert np.abs(once["W"]).max() > 0
    np.testing.assert_allclose(once["b"], dy.sum(axis=(0, 2, 3)), rtol=1e-5)
    layer.forward(x, train=True)
    layer.backward(dy)
    for k in once:
        np.testing.assert_allclose(layer.grads[k], 2 * once[k], rtol=1e-5, atol=1e-6)
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values())


def test_eval_forward_keeps_nothing():
    """An inference forward leaves the cache empty (no activations held in memory)."""
    layer = _built((2, 5, 5), out_channels=3, kernel_size=3)
    layer.forward(np.ones((1, 2, 5, 5), np.float32), train=False)
    assert layer.cache == {}


@pytest.mark.parametrize("in_shape, hp", [
    ((4, 9, 9), dict(out_channels=6, kernel_size=3, stride=2, padding=1, groups=2)),
    ((3, 8, 8), dict(out_channels=16, kernel_size=3, padding=1)),
    ((8, 6, 6), dict(out_channels=16, kernel_size=1, stride=2)),
])
def test_macs_by_hand(in_shape, hp):
    """MACs per image = O * Ho * Wo * (C / groups) * k * k."""
    layer = _built(in_shape, **hp)
    c, h, w = in_shape
    k, s, p, g = hp["kernel_size"], hp.get("stride", 1), hp.get("padding", 0), hp.get("groups", 1)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    assert layer.macs() == hp["out_channels"] * ho * wo * (c // g) * k * k


@pytest.mark.parametrize("in_shape, hp", [
    ((3, 6, 6), dict(out_channels=4, kernel_size=3, groups=2)),   # 3 channels in 2 groups
    ((4, 6, 6), dict(out_channels=3, kernel_size=3, groups=2)),   # 3 outputs in 2 groups
    ((2, 2, 2), dict(out_channels=2, kernel_size=5)),             # kernel larger than input
])
def test_illegal_build_raises(in_shape, hp):
    """An impossible convolution is refused when the layer is built."""
    with pytest.raises(ValueError):
        _built(in_shape, **hp)
