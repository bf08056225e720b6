"""Tests for BatchNorm2d: training-mode normalisation and running statistics, eval mode with
running statistics, the 2-D (N, C) case and gradients."""

import numpy as np
import pytest

from npdc.engine.gradcheck import check_layer
from npdc.engine.layers import BatchNorm2d


def _built(c, rest=(), seed=0, **hp):
    layer = BatchNorm2d(**hp)
    layer.build((c,) + tuple(rest), np.random.default_rng(seed))
    return layer


def _randomise(layer, seed):
    """Non-trivial gamma and beta so their gradients and effects are visible."""
    r = np.random.default_rng(seed)
    c = layer.params["gamma"].shape[0]
    layer.params["gamma"][...] = r.uniform(0.5, 2.0, c)
    layer.params["beta"][...] = r.standard_normal(c)


def _reference_train(x, gamma, beta, eps):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta with per-channel batch statistics."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    return gamma.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) \
        + beta.reshape(shape)


def test_build_initial_state():
    """gamma = 1, beta = 0, running mean 0 and running variance 1, one entry per channel."""
    layer = _built(3, (4, 4))
    np.testing.assert_array_equal(layer.params["gamma"], np.ones(3))
    np.testing.assert_array_equal(layer.params["beta"], np.zeros(3))
    np.testing.assert_array_equal(layer.buffers["running_mean"], np.zeros(3))
    np.testing.assert_array_equal(layer.buffers["running_var"], np.ones(3))
    assert layer.out_shape == (3, 4, 4)


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 3)])
def test_train_forward_matches_formula(shape):
    """Training mode normalises with the biased batch variance, then scales and shifts."""
    r = np.random.default_rng(1)
    layer = _built(shape[1], shape[2:])
    layer.astype(np.float64)
    _randomise(layer, 2)
    x = r.standard_normal(shape) * 3 + 1.5
    y = layer.forward(x, train=True)
    ref = _reference_train(x, layer.params["gamma"], layer.params["beta"], layer.eps)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("offset, spread, outlier", [(1e4, 1e-2, 0.0), (0.0, 1.0, 1e4), (-3e3, 0.5, 0.0)])
def test_train_statistics_survive_a_large_mean_or_an_outlier_first(offset, spread, outlier):
    """One pass sums x minus the channel's first value: a mean a million standard deviations from
    zero, or a first value far from all the others, must still give float64-exact statistics."""
    r = np.random.default_rng(4)
    x = (r.standard_normal((16, 3, 9, 9)) * spread + offset).astype(np.float32)
    x[0, :, 0, 0] += np.float32(outlier)
    layer = _built(3, (9, 9))
    y = layer.forward(x, train=True)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    np.testing.assert_allclose(layer.cache["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(1.0 / layer.cache["inv"] ** 2 - layer.eps, var, rtol=1e-9)
    ref = (x64 - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + layer.eps)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_train_forward_does_not_modify_input():
    """The layer must not normalise its input array in place (the residual fork reuses it)."""
    x = np.random.default_rng(3).standard_normal((2, 2, 3, 3)).astype(np.float32)
    before = x.copy()
    _built(2, (3, 3)).forward(x, train=True)
    np.testing.assert_array_equal(x, before)


def test_running_statistics_update():
    """running = 0.9 * running + 0.1 * batch statistic, with the unbiased batch variance."""
    r = np.random.default_rng(4)
    layer = _built(3, (2, 2))
    layer.astype(np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(3):
        x = r.standard_normal((5, 3, 2, 2)) * (step + 1) + step
        layer.forward(x, train=True)
        flat = x.transpose(1, 0, 2, 3).reshape(3, -1)
        rm = 0.9 * rm + 0.1 * flat.mean(axis=1)
        rv = 0.9 * rv + 0.1 * flat.var(axis=1, ddof=1)
        np.testing.assert_allclose(layer.buffers["running_mean"], rm, rtol=1e-12)
        np.testing.assert_allclose(layer.buffers["running_var"], rv, rtol=1e-12)


def test_custom_momentum():
    """The momentum hyper-parameter is the weight of the new batch statistic."""
    layer = _built(1, (1, 1), momentum=0.5)
    layer.astype(np.float64)
    x = np.array([1.0, 3.0, 5.0]).reshape(3, 1, 1, 1)
    layer.forward(x, train=True)
    assert layer.buffers["running_mean"][0] == pytest.approx(0.5 * 0 + 0.5 * 3.0)
    assert layer.buffers["running_var"][0] == pytest.approx(0.5 * 1 + 0.5 * 4.0)


@pytest.mark.parametrize("shape", [(3, 2, 4, 4), (5, 2)])
def test_eval_uses_running_statistics(shape):
    """Eval mode normalises with the stored statistics and leaves them unchanged."""
    r = np.random.default_rng(5)
    layer = _built(2, shape[2:])
    _randomise(layer, 6)
    layer.buffers["running_mean"][...] = [0.5, -1.0]
    layer.buffers["running_var"][...] = [4.0, 0.25]
    x = r.standard_normal(shape).astype(np.float32)
    y = layer.forward(x, train=False)
    cshape = (1, 2) + (1,) * (len(shape) - 2)
    g, b = (layer.params[k].astype(np.float64).reshape(cshape) for k in ("gamma", "beta"))
    ref = g * (x - np.array([0.5, -1.0]).reshape(cshape)) / np.sqrt(
        np.array([4.0, 0.25]).reshape(cshape) + layer.eps) + b
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(layer.buffers["running_mean"], [0.5, -1.0])
    np.testing.assert_array_equal(layer.buffers["running_var"], [4.0, 0.25])


def test_two_d_input_equals_one_by_one_maps():
    """(N, C) is normalised exactly like (N, C, 1, 1), forward and backward."""
    r = np.random.default_rng(7)
    x = r.standard_normal((6, 3))
    dy = r.standard_normal((6, 3))
    a, b = _built(3), _built(3, (1, 1))
    for layer in (a, b):
        layer.astype(np.float64)
        _randomise(layer, 8)
    ya = a.forward(x, train=True)
    yb = b.forward(x.reshape(6, 3, 1, 1), train=True)
    assert ya.shape == (6, 3)
    np.testing.assert_allclose(ya, yb.reshape(6, 3), rtol=1e-12)
    dxa, dxb = a.backward(dy), b.backward(dy.reshape(6, 3, 1, 1))
    assert dxa.shape == (6, 3)
    np.testing.assert_allclose(dxa, dxb.reshape(6, 3), rtol=1e-10)
    np.testing.assert_allclose(a.grads["gamma"], b.grads["gamma"], rtol=1e-12)


@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (2, 3, 1, 2), (5, 4)])
def test_gradcheck_train_mode(shape):
    """dx, dgamma and dbeta through batch statistics agree with finite differences."""
    layer = _built(shape[1], shape[2:])
    layer.astype(np.float64)
    _randomise(layer, 9)
    x = np.random.default_rng(10).standard_normal(shape) * 2 + 0.3
    errors, _ = check_layer(layer, x, train=True)
    assert set(errors) == {"x", "gamma", "beta"}
    assert max(errors.values()) < 1e-5, errors


def test_backward_of_affine_parameters():
    """dbeta is the sum of dy and dgamma the sum of dy * xhat, per channel."""
    r = np.random.default_rng(11)
    layer = _built(2, (3, 3))
    layer.astype(np.float64)
    x = r.standard_normal((4, 2, 3, 3))
    dy = r.standard_normal((4, 2, 3, 3))
    layer.forward(x, train=True)
    layer.backward(dy)
    xhat = _reference_train(x, np.ones(2), np.zeros(2), layer.eps)
    np.testing.assert_allclose(layer.grads["beta"], dy.sum(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(layer.grads["gamma"], (dy * xhat).sum(axis=(0, 2, 3)), rtol=1e-10)


@pytest.mark.parametrize("n", [3, 37])
@pytest.mark.parametrize("relu", [False, True])
def test_same_bits_with_one_or_two_threads(n, relu):
    """The sums are kept per fixed run of images (fewer images than runs: one each), so training
    rounds the same whatever --threads says, with and without an absorbed ReLU."""
    import numba

    from npdc.threads import set_threads

    r = np.random.default_rng(n)
    x = (r.standard_normal((n, 5, 7, 6)) * 2 + 1).astype(np.float32)
    dy = r.standard_normal(x.shape).astype(np.float32)
    runs, before = [], numba.get_num_threads()
    try:
        for threads in (1, 2):
            set_threads(threads)
            layer = _built(5, (7, 6))
            _randomise(layer, 1)
            y = layer.forward(x, train=True, relu=relu)
            runs.append((y, layer.backward(dy), layer.grads["gamma"].copy(), layer.grads["beta"].copy()))
    finally:
        set_threads(before)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    if relu:
        assert (runs[0][0] == 0).any() and (runs[0][0] >= 0).all()

