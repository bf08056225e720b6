"""Tests for the pruning criteria (npdc.compress.prune): the threshold rule |w| >= std(W) * s
(Han et al. 2015) and percentage pruning at every granularity of Mao et al. 2017, per-layer
overrides, one global magnitude cut, the sparsity table, and masks that survive SGD with momentum
and weight decay (the optimizer alone and the whole training loop)."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdc.compress.prune import (apply_masks, filter_masks_complete, global_percentage_masks,
                                 layer_granularity, layer_s, masks_from_zeros, parse_layer_s,
                                 percentage_mask, percentage_masks, prunable_layers,
                                 sparsity_table, threshold_mask, threshold_masks)
from npdc.engine.optim import SGD
from npdc.engine.resnet import build_net
from npdc.engine.train import fit
from npdc.errors import UserError

TINY = {"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2, "embedding": 4,
        "num_classes": 3}
HYPO = settings(max_examples=40, deadline=None)
SHAPES_2D_4D = [(5, 7), (3, 11), (4, 3, 3, 3), (6, 2, 3, 3), (2, 5, 1, 1), (3, 4, 5, 2)]


# -- independent references ------------------------------------------------------------------
def _std(W):
    """Population standard deviation in float64, written out: sqrt(mean((w - mean)^2))."""
    w = np.asarray(W, np.float64).ravel()
    return math.sqrt(float(np.mean((w - w.mean()) ** 2)))


def _n_drop(n, percent):
    """floor(percent / 100 * n) in exact rational arithmetic."""
    return math.floor(Fraction(percent) * n / 100)


def _group_saliency(values, norm):
    a = np.abs(np.asarray(values, np.float64)).ravel()
    return float(a.mean()) if norm == "l1" else math.sqrt(float(np.mean(a * a)))


def _group_threshold_loop(W, granularity, norm, thr):
    """The group keep-mask by explicit loops over groups of a 4-D W."""
    W = np.asarray(W, np.float64)
    O, C, KH, _ = W.shape
    keep = np.zeros(W.shape, bool)
    for o in range(O):
        if granularity == "filter":
            keep[o] = _group_saliency(W[o], norm) >= thr
            continue
        for c in range(C):
            if granularity == "kernel":
                keep[o, c] = _group_saliency(W[o, c], norm) >= thr
                continue
            for i in range(KH):
                keep[o, c, i, :] = _group_saliency(W[o, c, i, :], norm) >= thr
    return keep


def _distinct_magnitudes(shape, rng):
    """Weights whose magnitudes are a permutation of 1..n with random signs (no ties)."""
    n = int(np.prod(shape))
    mag = (rng.permutation(n) + 1).astype(np.float32)
    return (mag * rng.choice([-1.0, 1.0], n)).astype(np.float32).reshape(shape)


def _tiny(seed=0):
    return build_net(TINY, seed=seed)


# -- threshold rule, element granularity -----------------------------------------------------
@HYPO
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES_2D_4D),
       s=st.floats(0.0, 3.0), scale=st.floats(1e-3, 1e3))
def test_threshold_element_keeps_exactly_weights_at_least_std_times_s(seed, shape, s, scale):
    """Element granularity keeps w iff |w| >= std(W) * s, nothing else."""
    W = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    keep = threshold_mask(W, s)
    assert keep.dtype == bool and keep.shape == W.shape
    np.testing.assert_array_equal(keep, np.abs(W.astype(np.float64)) >= _std(W) * s)


def test_threshold_s_zero_keeps_everything_even_zeros():
    """s = 0 keeps every weight, exact zeros included."""
    W = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    W[0, 0] = 0.0
    W[2] = 0.0
    for g in ("element", "vector", "kernel", "filter"):
        assert threshold_mask(W, 0.0, g).all(), g


def test_threshold_by_hand():
    """A worked example: W = [[3, -1], [0.5, -4]], threshold 1.1 = std(W) * s keeps 3 and -4."""
    W = np.array([[3.0, -1.0], [0.5, -4.0]], np.float32)
    mean = (3 - 1 + 0.5 - 4) / 4
    std = math.sqrt(((3 - mean) ** 2 + (-1 - mean) ** 2 + (0.5 - mean) ** 2 + (-4 - mean) ** 2) / 4)
    s = 1.1 / std  # threshold 1.1: keeps 3 and -4 only
    np.testing.assert_array_equal(threshold_mask(W, s), [[True, False], [False, True]])


# -- threshold rule, group granularities ----------------------------------------------------
@pytest.mark.parametrize("granularity", ["vector", "kernel", "filter"])
@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("s", [0.3, 0.8, 1.2])
def test_threshold_groups_follow_mean_or_rms_saliency(granularity, norm, s):
    """Groups (vector W[o,c,i,:], kernel W[o,c], filter W[o]) are kept or dropped whole: kept iff
    their mean |w| (l1) or RMS (l2) is >= std(W) * s."""
    r = np.random.default_rng(7)
    scale = r.uniform(0.05, 3.0, (6, 4, 3, 1))  # varied scales so every granularity gets a mix
    W = (r.standard_normal((6, 4, 3, 3)) * scale).astype(np.float32)
    keep = threshold_mask(W, s, granularity, norm)
    expected = _group_threshold_loop(W, granularity, norm, _std(W) * s)
    np.testing.assert_array_equal(keep, expected)


@pytest.mark.parametrize("granularity", ["vector", "kernel", "filter"])
def test_threshold_groups_give_a_mix(granularity):
    """At s = 1 the varied-scale weight has both kept and dropped groups (the tests above are
    not vacuous)."""
    r = np.random.default_rng(7)
    scale = r.uniform(0.05, 3.0, (6, 4, 3, 1)) * np.array([0.1, 0.3, 1, 2, 3, 5])[:, None, None, None]
    W = (r.standard_normal((6, 4, 3, 3)) * scale).astype(np.float32)
    keep = threshold_mask(W, 1.0, granularity)
    assert 0 < keep.mean() < 1


def test_linear_weight_filter_is_an_output_row_and_smaller_groups_are_elements():
    """A 2-D (O, F) weight: 'filter' groups are rows (mean |row| vs std * s); 'vector' and
    'kernel' groups are single weights."""
    r = np.random.default_rng(3)
    W = (r.standard_normal((8, 10)) * r.uniform(0.1, 3, (8, 1))).astype(np.float32)
    thr = _std(W) * 0.9
    rows = np.array([np.abs(W[o].astype(np.float64)).mean() >= thr for o in range(8)])
    np.testing.assert_array_equal(threshold_mask(W, 0.9, "filter"), np.repeat(rows[:, None], 10, 1))
    assert 0 < rows.mean() < 1
    for g in ("vector", "kernel"):
        np.testing.assert_array_equal(threshold_mask(W, 0.9, g), np.abs(W.astype(np.float64)) >= thr)


def test_layer_granularity_linear_layers_are_element_wise():
    """Structured granularities apply to convs only; fc5 and fc6 are always element-wise."""
    net = _tiny()
    for g in ("element", "vector", "kernel", "filter"):
        assert layer_granularity(net, "fc5", g) == "element"
        assert layer_granularity(net, "fc6", g) == "element"
        assert layer_granularity(net, "res3a_2a", g) == g
        assert layer_granularity(net, "conv1", g) == g


def test_threshold_masks_on_a_net_filter_granularity():
    """threshold_masks covers every conv and linear layer: convs by whole filters, linear layers
    element-wise with the same std * s rule."""
    net = _tiny(1)
    s = 0.7
    masks = threshold_masks(net, s, granularity="filter")
    convs = [n for n, layer, _ in net.nodes if type(layer).__name__ == "Conv2d"]
    linears = [n for n, layer, _ in net.nodes if type(layer).__name__ == "Linear"]
    assert set(masks) == {f"{n}.W" for n in convs + linears}
    for n in linears:
        W = net.layers[n].params["W"]
        np.testing.assert_array_equal(masks[f"{n}.W"], np.abs(W.astype(np.float64)) >= _std(W) * s)
    for n in convs:
        W = net.layers[n].params["W"]
        np.testing.assert_array_equal(masks[f"{n}.W"], _group_threshold_loop(W, "filter", "l1", _std(W) * s))


# -- percentage pruning -----------------------------------------------------------------------
@HYPO
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES_2D_4D),
       half_percent=st.integers(0, 200))
def test_percentage_element_drops_exactly_the_smallest(seed, shape, half_percent):
    """percentage_mask removes exactly floor(p% * n) weights, the smallest by magnitude."""
    percent = half_percent / 2
    W = _distinct_magnitudes(shape, np.random.default_rng(seed))
    keep = percentage_mask(W, percent)
    n_drop = _n_drop(W.size, percent)
    assert int((~keep).sum()) == n_drop
    # magnitudes are 1..n, so the n_drop smallest are exactly those <= n_drop
    np.testing.assert_array_equal(keep, np.abs(W) > n_drop)


@HYPO
@given(seed=st.integers(0, 2**32 - 1), granularity=st.sampled_from(["vector", "kernel", "filter"]),
       norm=st.sampled_from(["l1", "l2"]), half_percent=st.integers(0, 200))
def test_percentage_groups_drop_the_least_salient_whole_groups(seed, granularity, norm, half_percent):
    """With group granularity, floor(p% * groups) whole groups go, those of smallest saliency."""
    percent = half_percent / 2
    r = np.random.default_rng(seed)
    O, C, KH, KW = 5, 3, 3, 2
    group_shape = {"vector": (O, C, KH, 1), "kernel": (O, C, 1, 1), "filter": (O, 1, 1, 1)}[granularity]
    n_groups = int(np.prod(group_shape))
    level = (r.permutation(n_groups) + 1).reshape(group_shape)  # each group's |w|, no ties
    W = (level * r.choice([-1.0, 1.0], (O, C, KH, KW))).astype(np.float32)
    keep = percentage_mask(W, percent, granularity, norm)
    n_drop = _n_drop(n_groups, percent)
    expected = np.broadcast_to(level > n_drop, W.shape)
    np.testing.assert_array_equal(keep, expected)
    assert int((~keep).sum()) == n_drop * (W.size // n_groups)


def test_percentage_ties_still_drop_exactly_floor_by_position():
    """All-equal magnitudes: exactly floor(p% * n) go, the first ones in position order."""
    W = np.full((4, 5), 2.0, np.float32) * np.where(np.arange(20) % 3, 1, -1).reshape(4, 5)
    keep = percentage_mask(W, 37.5)
    n_drop = _n_drop(20, 37.5)
    assert n_drop == 7
    np.testing.assert_array_equal(keep.ravel(), np.arange(20) >= 7)


def test_percentage_bounds():
    """0 % keeps all, 100 % keeps none; outside [0, 100] is a UserError."""
    W = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    assert percentage_mask(W, 0).all()
    assert not percentage_mask(W, 100).any()
    for bad in (-1, 100.5, 250):
        with pytest.raises(UserError):
            percentage_mask(W, bad)


@pytest.mark.parametrize("percent", [-5, 150])
def test_percentage_masks_out_of_range_is_a_user_error(percent):
    """The net-level percentage is validated like percentage_mask's: 150 % is a mistake, not
    a request to prune every weight (only multiples from overrides are capped at 100 %)."""
    with pytest.raises(UserError):
        percentage_masks(_tiny(), percent)


def test_percentage_masks_with_overrides():
    """Per-layer overrides: conv1=0 stays dense, fc6=0.5x prunes half the percentage, fc5=2x is
    capped at 100 %; other layers get the global percentage."""
    net = _tiny(2)
    masks = percentage_masks(net, 60, {"conv1": (0.0, False), "fc6": (0.5, True), "fc5": (2.0, True)})
    assert masks["conv1.W"].all()
    assert int((~masks["fc6.W"]).sum()) == _n_drop(net.layers["fc6"].params["W"].size, 30)
    assert not masks["fc5.W"].any()
    for name in ("res2a_2a", "res4b_2b", "res5a_1"):
        W = net.layers[name].params["W"]
        keep = masks[f"{name}.W"]
        assert int((~keep).sum()) == _n_drop(W.size, 60)
        assert np.abs(W[~keep]).max() <= np.abs(W[keep]).min()


# -- overrides --------------------------------------------------------------------------------
def test_parse_layer_s_and_layer_s():
    """'conv1=0,fc5=2x' parses into absolute and multiple overrides; layer_s applies them."""
    ov = parse_layer_s("conv1=0,fc5=2x")
    assert ov == {"conv1": (0.0, False), "fc5": (2.0, True)}
    assert layer_s("conv1", 1.5, ov) == 0.0
    assert layer_s("fc5", 1.5, ov) == 3.0
    assert layer_s("res2a_2a", 1.5, ov) == 1.5
    assert parse_layer_s(" res3a_2a = 0.25 , fc6=1.5X ,") == {"res3a_2a": (0.25, False), "fc6": (1.5, True)}
    assert parse_layer_s("") == {} and parse_layer_s(None) == {}
    assert layer_s("fc6", 2.0, {"fc6": (1.5, True)}) == 3.0


@pytest.mark.parametrize("text", ["conv1", "=1", "conv1=abc", "conv1=-1", "conv1=", "conv1=x",
                                  "conv1=-2x", "conv1=1,fc5", "conv1=nan"])
def test_parse_layer_s_bad_overrides(text):
    """Anything not NAME=VALUE or NAME=Kx with a number >= 0 is a UserError."""
    with pytest.raises(UserError):
        parse_layer_s(text)


def test_unknown_layer_names_are_user_errors():
    """An override for a layer the net does not have is a UserError naming it."""
    net = _tiny()
    with pytest.raises(UserError, match="bogus"):
        threshold_masks(net, 1.0, {"bogus": (1.0, False)})
    with pytest.raises(UserError, match="bogus"):
        percentage_masks(net, 50, {"bogus": (1.0, False)})
    with pytest.raises(UserError, match="conv1_bn"):
        threshold_masks(net, 1.0, {"conv1_bn": (0.0, False)})  # not prunable


def test_global_exclude_of_unknown_layer_is_a_user_error():
    """global_percentage_masks with an excluded layer the net does not have: a UserError, like
    an unknown override, not a KeyError."""
    with pytest.raises(UserError, match="bogus"):
        global_percentage_masks(_tiny(), 50, exclude=["bogus"])


@pytest.mark.parametrize("percent", [-10, 150])
def test_global_percentage_out_of_range_is_a_user_error(percent):
    """Like percentage_mask, a global percentage outside [0, 100] is refused (a negative one
    must not silently prune most of the net, nor 150 % crash inside np.partition)."""
    with pytest.raises(UserError):
        global_percentage_masks(_tiny(), percent)


def test_unknown_granularity_and_norm_are_user_errors():
    W = np.ones((2, 2, 3, 3), np.float32)
    with pytest.raises(UserError, match="block"):
        threshold_mask(W, 1.0, "block")
    with pytest.raises(UserError):
        percentage_mask(W, 50, "row")
    with pytest.raises(UserError):
        threshold_masks(_tiny(), 1.0, granularity="channel")
    with pytest.raises(UserError):
        threshold_mask(W, 1.0, "filter", norm="l3")


def test_threshold_masks_with_overrides():
    """conv1=0 keeps conv1 dense; fc5=2x thresholds fc5 at std * 2s; the rest at std * s."""
    net = _tiny(3)
    s = 0.6
    masks = threshold_masks(net, s, parse_layer_s("conv1=0,fc5=2x"))
    assert masks["conv1.W"].all()
    W5 = net.layers["fc5"].params["W"]
    np.testing.assert_array_equal(masks["fc5.W"], np.abs(W5.astype(np.float64)) >= _std(W5) * 2 * s)
    W = net.layers["res3b_2a"].params["W"]
    np.testing.assert_array_equal(masks["res3b_2a.W"], np.abs(W.astype(np.float64)) >= _std(W) * s)
    assert not masks["fc5.W"].all() and not masks["res3b_2a.W"].all()


# -- global magnitude pruning -----------------------------------------------------------------
@pytest.mark.parametrize("percent", [0, 20, 70, 99.5])
def test_global_percentage_reaches_overall_sparsity_with_one_cut(percent):
    """One cut across layers: floor(p% * n) of the non-excluded weights go, the smallest ones
    over all layers; the excluded conv1 stays dense and does not count."""
    net = _tiny(4)
    names = [n for n in prunable_layers(net) if n != "conv1"]
    sizes = [net.layers[n].params["W"].size for n in names]
    # distinct magnitudes 1..n, growing with the layer's position, shuffled inside each layer
    r = np.random.default_rng(5)
    start = 0
    for n, size in zip(names, sizes):
        W = net.layers[n].params["W"]
        mags = r.permutation(np.arange(start + 1, start + size + 1))
        W[...] = (mags * np.sign(W.ravel() + 1e-30)).reshape(W.shape)
        start += size
    masks = global_percentage_masks(net, percent, exclude=["conv1"])
    assert masks["conv1.W"].all()
    n_drop = _n_drop(sum(sizes), percent)
    assert sum(int((~masks[f"{n}.W"]).sum()) for n in names) == n_drop
    for n in names:
        W = net.layers[n].params["W"]
        np.testing.assert_array_equal(masks[f"{n}.W"], np.abs(W) > n_drop)
    # the layers are pruned to different degrees (one cut, not one percentage per layer)
    if 0 < percent < 99:
        per_layer = {n: 1 - masks[f"{n}.W"].mean() for n in names}
        assert max(per_layer.values()) - min(per_layer.values()) > 0.05


def test_global_percentage_filter_granularity():
    """Global cut with filter granularity: conv filters go whole, fc layers element-wise, every
    dropped group is no more salient than any kept one, and the sparsity is p% within one
    group's size."""
    net = _tiny(6)
    masks = global_percentage_masks(net, 50, granularity="filter")
    dropped, kept, total, zeros, biggest = [], [], 0, 0, 1
    for n in prunable_layers(net):
        W = net.layers[n].params["W"].astype(np.float64)
        keep = masks[f"{n}.W"]
        total += W.size
        zeros += int((~keep).sum())
        if W.ndim == 4:
            biggest = max(biggest, W[0].size)
            for o in range(W.shape[0]):
                assert keep[o].all() or not keep[o].any()
                (kept if keep[o, 0, 0, 0] else dropped).append(np.abs(W[o]).mean())
        else:
            kept.extend(np.abs(W[keep]).tolist())
            dropped.extend(np.abs(W[~keep]).tolist())
    assert max(dropped) <= min(kept)
    assert abs(zeros - total / 2) <= biggest


# -- applying masks, sparsity table -------------------------------------------------------------
def test_apply_masks_zeroes_exactly_the_pruned_weights():
    net = _tiny(7)
    before = {k: v.copy() for k, v in net.params().items()}
    masks = percentage_masks(net, 40)
    apply_masks(net, masks)
    for path, W in net.params().items():
        if path in masks:
            assert (W[~masks[path]] == 0).all()
            np.testing.assert_array_equal(W[masks[path]], before[path][masks[path]])
        else:
            np.testing.assert_array_equal(W, before[path])
    np.testing.assert_array_equal(masks_from_zeros(net)["res2b_2b.W"], masks["res2b_2b.W"])


def test_sparsity_table_numbers():
    """Rows per prunable layer (weights, non-zeros, sparsity) from masks or from exact zeros,
    and the overall totals."""
    net = _tiny(8)
    W1 = net.layers["conv1"].params["W"]
    W1.ravel()[:5] = 0.0  # 5 exact zeros in conv1
    masks = {"fc6.W": np.zeros(net.layers["fc6"].params["W"].shape, bool)}
    masks["fc6.W"].ravel()[:3] = True
    rows, total = sparsity_table(net, masks)
    by = {r["layer"]: r for r in rows}
    assert [r["layer"] for r in rows] == prunable_layers(net)
    assert by["conv1"] == {"layer": "conv1", "weights": W1.size, "nonzero": W1.size - 5,
                           "sparsity": pytest.approx(5 / W1.size)}
    n6 = net.layers["fc6"].params["W"].size
    assert by["fc6"]["nonzero"] == 3 and by["fc6"]["sparsity"] == pytest.approx(1 - 3 / n6)
    n_all = sum(net.layers[n].params["W"].size for n in prunable_layers(net))
    nz_all = sum(int(np.count_nonzero(net.layers[n].params["W"])) for n in prunable_layers(net)
                 if n != "fc6") + 3
    assert total == {"weights": n_all, "nonzero": nz_all, "sparsity": pytest.approx(1 - nz_all / n_all)}
    _, dense = sparsity_table(net)
    assert dense["nonzero"] == n_all - 5


# -- masks under optimisation ---------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [False, True])
def test_masks_survive_sgd_with_momentum_and_weight_decay(nesterov):
    """Random gradients on every entry, momentum 0.9, weight decay: masked weights, their
    gradients and velocities are exactly 0 after every step; kept weights move."""
    r = np.random.default_rng(0)
    params = {"a.W": r.standard_normal((6, 5)), "a.b": r.standard_normal(6),
              "c.W": r.standard_normal((3, 2, 3, 3))}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    start = {k: v.copy() for k, v in params.items()}
    masks = {"a.W": r.random((6, 5)) < 0.5, "c.W": r.random((3, 2, 3, 3)) < 0.3}
    opt = SGD(params, grads, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.1, masks=masks)
    for _ in range(5):
        for k in grads:
            grads[k][...] = r.standard_normal(grads[k].shape) + 1.0
        opt.step()
        for path, keep in masks.items():
            assert (params[path][~keep] == 0).all()
            assert (opt.velocity[path][~keep] == 0).all()
            assert (grads[path][~keep] == 0).all()
    for path, keep in masks.items():
        assert (params[path][keep] != start[path][keep]).all()
    assert (params["a.b"] != start["a.b"]).all()


def test_masks_survive_fit_on_a_tiny_net():
    """Two epochs of fit (momentum, Nesterov, weight decay) with 60 % masks: pruned weights are
    exactly 0 afterwards, kept weights changed, unmasked parameters trained as usual."""
    net = _tiny(9)
    r = np.random.default_rng(1)
    x = r.integers(0, 256, (32, 1, 8, 8)).astype(np.uint8)
    y = r.integers(0, 3, 32)
    masks = percentage_masks(net, 60)
    start = {k: v.copy() for k, v in net.params().items()}
    fit(net, x, y, 2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, masks=masks,
        progress=False)
    params = net.params()
    changed, kept_total = 0, 0
    for path, keep in masks.items():
        assert (params[path][~keep] == 0).all(), path
        changed += int((params[path][keep] != start[path][keep]).sum())
        kept_total += int(keep.sum())
    assert changed > 0.9 * kept_total
    assert not np.array_equal(params["conv1_bn.gamma"], start["conv1_bn.gamma"])
    _, total = sparsity_table(net)
    assert total["nonzero"] == kept_total


def test_filter_masks_with_bn_survive_fit():
    """Filter masks completed with their BN entries: after training the dead channels' filters
    and BN gamma/beta are still exactly 0."""
    net = _tiny(10)
    r = np.random.default_rng(2)
    x = r.integers(0, 256, (32, 1, 8, 8)).astype(np.uint8)
    y = r.integers(0, 3, 32)
    masks = filter_masks_complete(net, percentage_masks(net, 50, granularity="filter"))
    assert "res3a_2a_bn.gamma" in masks and "res3a_2a_bn.beta" in masks
    fit(net, x, y, 1, batch_size=16, lr=0.05, masks=masks, progress=False)
    W = net.layers["res3a_2a"].params["W"]
    dead = ~W.reshape(W.shape[0], -1).any(axis=1)
    assert dead.sum() == W.shape[0] // 2
    assert (net.layers["res3a_2a_bn"].params["gamma"][dead] == 0).all()
    assert (net.layers["res3a_2a_bn"].params["beta"][dead] == 0).all()
    assert (net.layers["res3a_2a_bn"].params["gamma"][~dead] != 0).all()
