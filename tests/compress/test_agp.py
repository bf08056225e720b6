"""Tests for gradual pruning (npdc.compress.agp): the Zhu & Gupta 2017 schedule
s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 and the GradualPruner hook — its pruning steps,
its final sparsity (per layer and global), masks that only grow, excluded layers kept dense, and
its use inside npdc.engine.train.fit."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdc.compress.agp import GradualPruner, agp_sparsity
from npdc.compress.prune import prunable_layers
from npdc.engine.resnet import build_net
from npdc.engine.train import fit
from npdc.errors import UserError

TINY = {"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2, "embedding": 4,
        "num_classes": 3}
HYPO = settings(max_examples=60, deadline=None)


def _formula(t, s_i, s_f, t0, n, dt):
    """Zhu & Gupta's cubic, written out for a pruning step t in {t0, ..., t0 + n dt}."""
    return s_f + (s_i - s_f) * (1.0 - (t - t0) / (n * dt)) ** 3


def _n_drop(size, fraction):
    return math.floor(Fraction(fraction) * size)


def _data(n=32, seed=0):
    r = np.random.default_rng(seed)
    return r.integers(0, 256, (n, 1, 8, 8)).astype(np.uint8), r.integers(0, 3, n)


# -- the schedule --------------------------------------------------------------------------------
def test_schedule_endpoints():
    """s_i before and at t0 (exactly: the schedule must not dip below s_i at its first step);
    s_f exactly at t0 + n dt and ever after."""
    s_i, s_f, t0, n, dt = 0.1, 0.8, 30, 7, 5
    for t in (0, 10, 29, 30):
        assert agp_sparsity(t, s_i, s_f, t0, n, dt) == s_i
    for t in (t0 + n * dt, t0 + n * dt + 1, t0 + 10 * n * dt):
        assert agp_sparsity(t, s_i, s_f, t0, n, dt) == s_f


def test_schedule_worked_values():
    """s_i = 0, s_f = 0.8, n = 4: at the steps 0.8 * (1 - (1 - k/4)^3) = 0, 0.4625, 0.7, 0.7875, 0.8."""
    got = [agp_sparsity(10 + 3 * k, 0.0, 0.8, 10, 4, 3) for k in range(5)]
    np.testing.assert_allclose(got, [0.0, 0.4625, 0.7, 0.7875, 0.8], rtol=1e-12, atol=1e-15)


@HYPO
@given(s_i=st.floats(0.0, 0.9), gap=st.floats(0.0, 0.09), t0=st.integers(0, 50),
       n=st.integers(1, 30), dt=st.integers(1, 20))
def test_schedule_formula_and_monotone(s_i, gap, t0, n, dt):
    """At every pruning step the value is the cubic formula; over all steps it never decreases
    and stays within [s_i, s_f]."""
    s_f = s_i + gap
    for k in range(n + 1):
        t = t0 + k * dt
        assert agp_sparsity(t, s_i, s_f, t0, n, dt) == pytest.approx(_formula(t, s_i, s_f, t0, n, dt),
                                                                   rel=1e-12, abs=1e-15)
    values = [agp_sparsity(t, s_i, s_f, t0, n, dt) for t in range(t0, t0 + n * dt + 2 * dt + 1)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[0] == pytest.approx(s_i, rel=1e-12, abs=1e-15) and values[-1] == s_f
    assert max(values) == s_f


# -- GradualPruner ---------------------------------------------------------------------------------
@pytest.mark.parametrize("total_steps, start", [(40, 0), (1000, 0), (7, 0), (200, 50), (1, 0)])
def test_pruning_steps_end_at_the_target_inside_training(total_steps, start):
    """The last pruning step t_last = start + n * interval lies within training, its scheduled
    sparsity is the target, and no later step prunes."""
    p = GradualPruner(build_net(TINY), 0.75, total_steps, start=start)
    last = p.start + p.n * p.interval
    assert start < last <= max(total_steps, start + 1)
    assert p.is_pruning_step(last)
    assert p.sparsity_at(last) == 0.75
    steps = [t for t in range(0, total_steps + 3 * p.interval + 1) if p.is_pruning_step(t)]
    assert steps[-1] == last and steps[0] == start
    assert all(b - a == p.interval for a, b in zip(steps, steps[1:]))
    assert not any(p.is_pruning_step(t) for t in range(start))


@pytest.mark.parametrize("per_layer", [True, False])
def test_last_pruning_step_yields_the_target(per_layer):
    """masks_at the last step: per layer every non-excluded layer loses floor(0.75 * size)
    weights; globally the non-excluded weights together do; conv1 (excluded) stays dense."""
    net = build_net(TINY, seed=1)
    p = GradualPruner(net, 0.75, 100, per_layer=per_layer, exclude=("conv1",))
    masks = p.masks_at(p.start + p.n * p.interval)
    assert masks["conv1.W"].all()
    names = [n for n in prunable_layers(net) if n != "conv1"]
    if per_layer:
        for n in names:
            assert int((~masks[f"{n}.W"]).sum()) == _n_drop(masks[f"{n}.W"].size, 0.75), n
    else:
        size = sum(masks[f"{n}.W"].size for n in names)
        dropped = sum(int((~masks[f"{n}.W"]).sum()) for n in names)
        assert dropped == _n_drop(size, 0.75)
        kept = np.concatenate([np.abs(net.layers[n].params["W"][masks[f"{n}.W"]]) for n in names])
        gone = np.concatenate([np.abs(net.layers[n].params["W"][~masks[f"{n}.W"]]) for n in names])
        assert gone.max() <= kept.min()


def test_invalid_targets_are_user_errors():
    net = build_net(TINY)
    for target, initial in ((1.0, 0.0), (1.5, 0.0), (0.5, 0.6), (0.5, -0.1)):
        with pytest.raises(UserError):
            GradualPruner(net, target, 100, initial=initial)


class _Recorder:
    """Wraps a GradualPruner as fit's hook and keeps a copy of the masks after each pruning step."""

    def __init__(self, pruner):
        self.pruner, self.history = pruner, []

    def __call__(self, t, optimizer):
        self.pruner(t, optimizer)
        if self.pruner.is_pruning_step(t):
            self.history.append((t, {k: v.copy() for k, v in optimizer.masks.items()},
                                 {k: v.copy() for k, v in optimizer.params.items()}))


@pytest.mark.parametrize("per_layer", [True, False])
def test_fit_with_gradual_pruner(per_layer):
    """fit(..., hook=pruner) over 16 steps: masks only grow from one pruning step to the next,
    the sparsity follows the schedule, ends at the target, pruned weights are exactly 0, the
    excluded conv1 stays dense."""
    net = build_net(TINY, seed=2)
    x, y = _data(64, 3)
    epochs, batch = 2, 8
    total = epochs * 64 // batch
    pruner = GradualPruner(net, 0.5, total, per_layer=per_layer, exclude=("conv1",))
    rec = _Recorder(pruner)
    fit(net, x, y, epochs, batch_size=batch, lr=0.02, hook=rec, progress=False)
    assert len(rec.history) >= 3
    names = [n for n in prunable_layers(net) if n != "conv1"]
    size = sum(net.layers[n].params["W"].size for n in names)
    previous = None
    for t, masks, params in rec.history:
        assert masks["conv1.W"].all()
        dropped = sum(int((~masks[f"{n}.W"]).sum()) for n in names)
        # the schedule's sparsity, up to per-layer flooring (and ties of the global cut)
        assert abs(dropped / size - pruner.sparsity_at(t)) <= len(names) / size + 1e-12
        for path, keep in masks.items():
            assert (params[path][~keep] == 0).all()
            if previous is not None:
                assert not (keep & ~previous[path]).any(), f"{path} regrew at step {t}"
        previous = masks
    final = rec.history[-1][1]
    assert rec.history[-1][0] == pruner.start + pruner.n * pruner.interval
    if per_layer:
        for n in names:
            assert int((~final[f"{n}.W"]).sum()) == _n_drop(final[f"{n}.W"].size, 0.5)
    else:
        # one cut across layers: exactly floor(0.5 n), unless trained float32 weights tie at it
        assert 0 <= sum(int((~final[f"{n}.W"]).sum()) for n in names) - _n_drop(size, 0.5) <= 2
    for path, keep in final.items():
        W = net.params()[path]
        assert (W[~keep] == 0).all()
    assert np.count_nonzero(net.layers["conv1"].params["W"]) == net.layers["conv1"].params["W"].size


def test_gradual_filter_granularity_masks_bn_too():
    """With filter granularity the pruner's masks drop whole conv filters and mask the matching
    BN gamma/beta; fc layers are pruned element-wise."""
    net = build_net(TINY, seed=4)
    p = GradualPruner(net, 0.5, 50, granularity="filter")
    masks = p.masks_at(p.start + p.n * p.interval)
    W = masks["res4a_2a.W"]
    alive = W.reshape(W.shape[0], -1).any(axis=1)
    assert all(W[o].all() == alive[o] for o in range(W.shape[0]))
    assert alive.sum() == W.shape[0] - W.shape[0] // 2
    np.testing.assert_array_equal(masks["res4a_2a_bn.gamma"], alive)
    np.testing.assert_array_equal(masks["res4a_2a_bn.beta"], alive)
    assert int((~masks["fc6.W"]).sum()) == _n_drop(masks["fc6.W"].size, 0.5)
