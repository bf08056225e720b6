"""Tests for ReLU and PReLU: forward values, per-channel slopes and gradients (with the kink at 0
skipped by the gradient checker)."""

import numpy as np
import pytest

from npdc.engine.gradcheck import check_layer
from npdc.engine.layers import PReLU, ReLU


def _built(layer, in_shape):
    layer.build(in_shape, np.random.default_rng(0))
    return layer


def test_relu_forward():
    """y = max(x, 0) elementwise, shape kept."""
    x = np.array([[-2.0, -0.0, 0.0, 0.5, 3.0]])
    layer = _built(ReLU(), (5,))
    np.testing.assert_array_equal(layer.forward(x, train=False), [[0, 0, 0, 0.5, 3.0]])


def test_relu_backward_passes_gradient_where_positive():
    """dx = dy where x > 0 and 0 elsewhere."""
    r = np.random.default_rng(1)
    x = r.standard_normal((2, 3, 4, 4))
    dy = r.standard_normal(x.shape)
    layer = _built(ReLU(), (3, 4, 4))
    layer.forward(x, train=True)
    np.testing.assert_array_equal(layer.backward(dy), np.where(x > 0, dy, 0))


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (4, 5)])
def test_relu_gradcheck(shape):
    """ReLU passes the shared gradient check away from its kink."""
    layer = _built(ReLU(), shape[1:])
    x = np.random.default_rng(2).standard_normal(shape)
    errors, _ = check_layer(layer, x, kinks=True)
    assert errors["x"] < 1e-5


def test_prelu_default_slope_and_custom_init():
    """One slope per channel, 0.25 by default (He et al. 2015) or as given."""
    assert np.allclose(_built(PReLU(), (3, 2, 2)).params["slope"], [0.25] * 3)
    layer = _built(PReLU(init=0.1), (4,))
    assert layer.params["slope"].shape == (4,)
    assert np.allclose(layer.params["slope"], 0.1)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (5, 3)])
def test_prelu_forward_per_channel(shape):
    """Negative inputs of channel c are multiplied by slope[c], positive ones pass."""
    r = np.random.default_rng(3)
    layer = _built(PReLU(), shape[1:])
    layer.params["slope"][...] = [0.1, -0.5, 2.0]
    x = r.standard_normal(shape).astype(np.float32)
    y = layer.forward(x, train=False)
    for c, a in enumerate([0.1, -0.5, 2.0]):
        xc = x[:, c]
        np.testing.assert_allclose(y[:, c], np.where(xc > 0, xc, np.float32(a) * xc), rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (5, 3)])
def test_prelu_gradcheck(shape):
    """dx and dslope agree with finite differences on 4-D and on 2-D inputs."""
    layer = _built(PReLU(), shape[1:])
    layer.params["slope"][...] = [0.2, -0.3, 0.7]
    x = np.random.default_rng(4).standard_normal(shape)
    errors, _ = check_layer(layer, x, kinks=True)
    assert set(errors) == {"x", "slope"}
    assert max(errors.values()) < 1e-5, errors


def test_prelu_slope_gradient_formula():
    """dslope[c] = sum over the negative inputs of channel c of dy * x."""
    r = np.random.default_rng(5)
    layer = _built(PReLU(), (2, 3, 3))
    layer.astype(np.float64)
    x = r.standard_normal((3, 2, 3, 3))
    dy = r.standard_normal(x.shape)
    layer.forward(x, train=True)
    layer.backward(dy)
    ref = [(dy[:, c] * x[:, c] * (x[:, c] < 0)).sum() for c in range(2)]
    np.testing.assert_allclose(layer.grads["slope"], ref, rtol=1e-12)


@pytest.mark.parametrize("layer", [ReLU(), PReLU()])
def test_nan_propagates(layer):
    """A NaN input stays NaN (as np.maximum and every framework's ReLU do): an activation that
    turned NaN into 0 would hide a diverged layer and let training carry on silently."""
    _built(layer, (2, 2, 2))
    x = np.ones((1, 2, 2, 2), np.float32)
    x[0, 1, 0, 1] = np.nan
    y = layer.forward(x, train=False)
    assert np.isnan(y[0, 1, 0, 1])
    assert np.isfinite(np.delete(y.ravel(), 5)).all()
