"""Tests for SGD (momentum, Nesterov, weight decay on `.W` only), pruning masks that survive
momentum and decay, and the step and cosine learning-rate schedules."""

import math

import numpy as np
import pytest

from npdc.engine.optim import SCHEDULES, SGD, cosine_lr, step_lr


def _problem(seed=0):
    """Parameters of three kinds: a conv weight, a BN scale and a bias."""
    r = np.random.default_rng(seed)
    params = {"conv.W": r.standard_normal((2, 3)), "bn.gamma": r.standard_normal(3),
              "fc.b": r.standard_normal(2)}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    return params, grads, r


def _reference(params, grad_seq, lr, mu, nesterov, wd):
    """Plain SGD as in Sutskever et al. 2013 / PyTorch: g' = g + wd*p (W only),
    v = mu*v + g', step = g' + mu*v (Nesterov) or v; p -= lr*step."""
    p = {k: v.copy() for k, v in params.items()}
    vel = {k: np.zeros_like(v) for k, v in params.items()}
    for grads in grad_seq:
        for k in p:
            g = grads[k] + (wd * p[k] if k.endswith(".W") else 0.0)
            vel[k] = mu * vel[k] + g
            p[k] = p[k] - lr * ((g + mu * vel[k]) if nesterov else vel[k])
    return p


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("mu, wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-2), (0.5, 1e-3)])
def test_sgd_steps_match_hand_computed_updates(nesterov, mu, wd):
    """Three steps with fresh gradients give the textbook update for every parameter."""
    params, grads, r = _problem()
    start = {k: v.copy() for k, v in params.items()}
    opt = SGD(params, grads, lr=0.1, momentum=mu, nesterov=nesterov, weight_decay=wd)
    seq = []
    for _ in range(3):
        fresh = {k: r.standard_normal(v.shape) for k, v in params.items()}
        for k in grads:
            grads[k][...] = fresh[k]
        seq.append(fresh)
        opt.step()
    ref = _reference(start, seq, 0.1, mu, nesterov, wd)
    for k in params:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-12, atol=1e-14)


def test_single_plain_step_by_hand():
    """One step from zero velocity: p - lr * (g + wd * p) for W, p - lr * g otherwise."""
    params = {"a.W": np.array([1.0, -2.0]), "a.b": np.array([3.0])}
    grads = {"a.W": np.array([0.5, 0.5]), "a.b": np.array([1.0])}
    SGD(params, grads, lr=0.1, momentum=0.9, weight_decay=0.1).step()
    np.testing.assert_allclose(params["a.W"], [1.0 - 0.1 * (0.5 + 0.1), -2.0 - 0.1 * (0.5 - 0.2)])
    np.testing.assert_allclose(params["a.b"], [3.0 - 0.1 * 1.0])


def test_weight_decay_only_on_weights():
    """With zero gradients only `.W` parameters shrink; gamma and biases stay put."""
    params, grads, _ = _problem(1)
    start = {k: v.copy() for k, v in params.items()}
    opt = SGD(params, grads, lr=0.5, momentum=0.0, weight_decay=0.1)
    opt.step()
    np.testing.assert_allclose(params["conv.W"], start["conv.W"] * (1 - 0.5 * 0.1))
    np.testing.assert_array_equal(params["bn.gamma"], start["bn.gamma"])
    np.testing.assert_array_equal(params["fc.b"], start["fc.b"])


def test_updates_are_in_place():
    """The optimizer updates the arrays it was given (the net's own parameters)."""
    params, grads, _ = _problem()
    arrays = {k: id(v) for k, v in params.items()}
    grads["fc.b"][...] = 1.0
    SGD(params, grads, lr=0.1).step()
    assert {k: id(v) for k, v in params.items()} == arrays


def test_masks_keep_pruned_weights_at_zero():
    """Masked entries are zeroed at construction and stay exactly 0 in the weight, its
    gradient and its velocity through many momentum + weight-decay + Nesterov steps."""
    params, grads, r = _problem(2)
    mask = np.array([[True, False, True], [False, True, False]])
    opt = SGD(params, grads, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2,
              masks={"conv.W": mask})
    assert not params["conv.W"][~mask].any()
    for _ in range(50):
        for k in grads:
            grads[k][...] = r.standard_normal(grads[k].shape) + 1.0
        opt.step()
        assert np.all(params["conv.W"][~mask] == 0)
        assert np.all(grads["conv.W"][~mask] == 0)
        assert np.all(opt.velocity["conv.W"][~mask] == 0)
    assert np.all(params["conv.W"][mask] != 0)
    assert np.abs(opt.velocity["conv.W"][mask]).min() > 0


def test_mask_does_not_change_kept_entries():
    """Kept entries follow exactly the unmasked update."""
    params, grads, r = _problem(3)
    twin = {k: v.copy() for k, v in params.items()}
    twin_grads = {k: np.zeros_like(v) for k, v in twin.items()}
    mask = np.array([[True, True, False], [True, False, True]])
    a = SGD(params, grads, lr=0.1, momentum=0.9, masks={"conv.W": mask})
    b = SGD(twin, twin_grads, lr=0.1, momentum=0.9)
    for _ in range(5):
        g = r.standard_normal((2, 3))
        grads["conv.W"][...] = g
        twin_grads["conv.W"][...] = g
        a.step()
        b.step()
    np.testing.assert_allclose(params["conv.W"][mask], twin["conv.W"][mask], rtol=1e-12)


# -- schedules -----------------------------------------------------------------------------------
def test_step_schedule():
    """base until half-way, base/10 until three quarters, base/100 after."""
    assert step_lr(0.1, 0.0) == pytest.approx(0.1)
    assert step_lr(0.1, 0.49) == pytest.approx(0.1)
    assert step_lr(0.1, 0.5) == pytest.approx(0.01)
    assert step_lr(0.1, 0.6) == pytest.approx(0.01)
    assert step_lr(0.1, 0.75) == pytest.approx(0.001)
    assert step_lr(0.1, 1.0) == pytest.approx(0.001)
    assert step_lr(1.0, 0.5, milestones=(0.3,), gamma=0.5) == pytest.approx(0.5)


def test_cosine_schedule():
    """base at 0, the midpoint of base and floor at 1/2, floor at 1; clamped outside [0, 1]."""
    assert cosine_lr(0.1, 0.0) == pytest.approx(0.1)
    assert cosine_lr(0.1, 0.5) == pytest.approx(0.05)
    assert cosine_lr(0.1, 1.0) == pytest.approx(0.0, abs=1e-15)
    assert cosine_lr(0.1, 0.25) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert cosine_lr(0.2, 0.5, floor=0.02) == pytest.approx(0.11)
    assert cosine_lr(0.1, 1.5) == pytest.approx(0.0, abs=1e-15)
    assert cosine_lr(0.1, -0.5) == pytest.approx(0.1)
    values = [cosine_lr(1.0, t / 20) for t in range(21)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_schedule_registry():
    """The registry maps the CLI names to the functions."""
    assert SCHEDULES == {"step": step_lr, "cosine": cosine_lr}


@pytest.mark.parametrize("nesterov", [False, True])
def test_float32_steps_are_numpys_bits_on_both_builds(nesterov):
    """A float32 weight past the parallel threshold, a small one and a non-contiguous one: the
    fused update gives exactly the bits of NumPy's float32 operations in the same order."""
    from npdc.kernels.sgd import PARALLEL_FROM

    r = np.random.default_rng(3)
    base = r.standard_normal((PARALLEL_FROM + 5,)).astype(np.float32)
    params = {"big.W": base.copy(), "small.b": base[:7].copy(),
              "odd.W": np.asfortranarray(base[:12].reshape(3, 4))}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    mine = {k: v.copy() for k, v in params.items()}
    vel = {k: np.zeros_like(v) for k, v in params.items()}
    opt = SGD(params, grads, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-3)
    for _ in range(3):
        for k in grads:
            grads[k][...] = r.standard_normal(grads[k].shape).astype(np.float32)
            g = grads[k] + np.float32(1e-3) * mine[k] if k.endswith(".W") else grads[k]
            vel[k] = vel[k] * np.float32(0.9) + g
            mine[k] = mine[k] - np.float32(0.1) * (g + np.float32(0.9) * vel[k] if nesterov else vel[k])
        opt.step()
    for k in params:
        assert params[k].dtype == np.float32
        np.testing.assert_array_equal(params[k], mine[k])
        np.testing.assert_array_equal(opt.velocity[k], vel[k])
