"""Tests for Linear and Flatten: shapes, initialisation, forward formula and gradients."""

import numpy as np
import pytest

from npdc.engine.gradcheck import check_layer
from npdc.engine.layers import Flatten, Linear


def _built(layer, in_shape, seed=0):
    layer.build(in_shape, np.random.default_rng(seed))
    return layer


def test_linear_build_and_init():
    """W: (O, F) uniform in +-1/sqrt(F), b: (O,) zero."""
    layer = _built(Linear(50), (400,))
    W = layer.params["W"]
    assert W.shape == (50, 400) and layer.params["b"].shape == (50,)
    assert layer.out_shape == (50,)
    bound = 1 / np.sqrt(400)
    assert np.abs(W).max() <= bound * (1 + 1e-6)      # float32 rounding
    assert np.abs(W).max() > 0.95 * bound            # really spread over the interval
    assert abs(W.astype(np.float64).std() - bound / np.sqrt(3)) < 0.05 * bound
    np.testing.assert_array_equal(layer.params["b"], 0)


def test_linear_forward():
    """y = x W^T + b."""
    r = np.random.default_rng(1)
    layer = _built(Linear(3), (5,))
    layer.astype(np.float64)
    layer.params["b"][...] = [1.0, -2.0, 0.5]
    x = r.standard_normal((4, 5))
    W = layer.params["W"]
    ref = np.array([[sum(x[n, f] * W[o, f] for f in range(5)) + layer.params["b"][o]
                     for o in range(3)] for n in range(4)])
    np.testing.assert_allclose(layer.forward(x, train=False), ref, rtol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(bias):
    """dx, dW (and db) agree with finite differences."""
    layer = _built(Linear(4, bias=bias), (6,))
    if bias:
        layer.params["b"][...] = np.arange(4) - 1.5
    x = np.random.default_rng(2).standard_normal((3, 6))
    errors, _ = check_layer(layer, x)
    assert set(errors) == ({"x", "W", "b"} if bias else {"x", "W"})
    assert max(errors.values()) < 1e-5, errors


def test_linear_macs():
    """One multiply-accumulate per weight."""
    assert _built(Linear(7), (11,)).macs() == 77


def test_flatten_forward_backward():
    """(N, C, H, W) -> (N, C*H*W) in C order, and back."""
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2)
    layer = _built(Flatten(), (3, 2, 2))
    assert layer.out_shape == (12,)
    y = layer.forward(x, train=True)
    np.testing.assert_array_equal(y, np.stack([x[0].ravel(), x[1].ravel()]))
    dx = layer.backward(np.arange(24.0).reshape(2, 12))
    np.testing.assert_array_equal(dx, np.arange(24.0).reshape(2, 3, 2, 2))


def test_flatten_gradcheck():
    """Flatten is a pure reshape and passes the gradient check."""
    layer = _built(Flatten(), (2, 3, 2))
    x = np.random.default_rng(3).standard_normal((2, 2, 3, 2))
    errors, _ = check_layer(layer, x)
    assert errors["x"] < 1e-5
