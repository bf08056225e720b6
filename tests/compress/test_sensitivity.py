"""Tests for the per-layer sensitivity sweep (npdc.compress.sensitivity): the net is restored
bit for bit, the baseline and the s = 0 rows equal a plain evaluation, sparsities follow the
pruning rules, the suggestion picks the largest value within the budget, the table names every
layer."""

import math

import numpy as np
import pytest

from npdc.compress.prune import prunable_layers
from npdc.compress.sensitivity import format_table, suggest, sweep
from npdc.engine.resnet import build_net
from npdc.engine.train import evaluate

TINY = {"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2, "embedding": 4,
        "num_classes": 3}


@pytest.fixture(scope="module")
def problem():
    """A tiny net with non-trivial BN statistics and 48 labelled images."""
    net = build_net(TINY, seed=3)
    r = np.random.default_rng(0)
    for _, layer, _ in net.nodes:
        if "running_var" in layer.buffers:
            c = layer.buffers["running_var"].size
            layer.buffers["running_var"][...] = r.uniform(0.5, 2.0, c)
            layer.buffers["running_mean"][...] = r.normal(0, 0.5, c)
            layer.params["beta"][...] = r.normal(0, 0.5, c)
    x = r.integers(0, 256, (48, 1, 8, 8)).astype(np.uint8)
    y = r.integers(0, 3, 48)
    return net, x, y


def _std(W):
    w = np.asarray(W, np.float64).ravel()
    return math.sqrt(float(np.mean((w - w.mean()) ** 2)))


def test_sweep_by_s(problem):
    """Sweeping s: the net is bit-identical afterwards, the baseline is evaluate()'s result, the
    s = 0 row equals the baseline, every row's sparsity is the fraction with |w| < std * s and
    never decreases with s."""
    net, x, y = problem
    before = net.state_dict()
    values = (0.0, 0.5, 1.0, 2.0, 4.0)
    layers = ["conv1", "res3a_2a", "res5b_2b", "fc5", "fc6"]
    result = sweep(net, x, y, values, "s", layers, batch_size=16, progress=False)
    after = net.state_dict()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)

    baseline = evaluate(net, x, y, 16)
    assert result["baseline"] == baseline
    assert result["by"] == "s" and list(result["layers"]) == layers
    for name in layers:
        rows = result["layers"][name]
        assert [r["value"] for r in rows] == list(values)
        assert rows[0]["accuracy"] == baseline["accuracy"] and rows[0]["loss"] == baseline["loss"]
        assert rows[0]["sparsity"] == 0.0
        W = net.layers[name].params["W"].astype(np.float64)
        for r in rows:
            expected = float(np.mean(np.abs(W) < _std(W) * r["value"]))
            assert r["sparsity"] == pytest.approx(expected, abs=1e-12), (name, r["value"])
        sparsities = [r["sparsity"] for r in rows]
        assert all(b >= a for a, b in zip(sparsities, sparsities[1:]))
        assert sparsities[-1] > 0.9


def test_sweep_row_equals_evaluating_the_pruned_net(problem):
    """A row's accuracy and loss are those of the net with that one layer pruned (pruned here
    by hand on a copy of the weights)."""
    net, x, y = problem
    result = sweep(net, x, y, (1.5,), "s", ["res4a_2a"], batch_size=16, progress=False)
    W = net.layers["res4a_2a"].params["W"]
    original = W.copy()
    W[np.abs(original.astype(np.float64)) < _std(original) * 1.5] = 0.0
    try:
        pruned = evaluate(net, x, y, 16)
    finally:
        W[...] = original
    row = result["layers"]["res4a_2a"][0]
    assert row["accuracy"] == pruned["accuracy"] and row["loss"] == pytest.approx(pruned["loss"], rel=1e-12)


def test_sweep_by_sparsity_and_default_layers(problem):
    """by='sparsity' prunes floor(p% * n) weights per layer; without `layers` every prunable
    layer is swept; the net is unchanged."""
    net, x, y = problem
    before = net.state_dict()
    result = sweep(net, x, y, (0.0, 50.0, 90.0), "sparsity", batch_size=48, progress=False)
    assert list(result["layers"]) == prunable_layers(net)
    for name, rows in result["layers"].items():
        n = net.layers[name].params["W"].size
        for r, p in zip(rows, (0, 50, 90)):
            assert r["sparsity"] == pytest.approx(math.floor(p * n / 100) / n, abs=1e-12)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_sweep_filter_granularity_restores_net(problem):
    """A structured sweep also restores the weights; sparsities are whole filters for convs."""
    net, x, y = problem
    before = net.state_dict()
    result = sweep(net, x, y, (50.0,), "sparsity", ["res5a_2a", "fc6"], "filter", batch_size=48,
                   progress=False)
    O = net.layers["res5a_2a"].params["W"].shape[0]
    assert result["layers"]["res5a_2a"][0]["sparsity"] == pytest.approx((O // 2) / O)
    n6 = net.layers["fc6"].params["W"].size
    assert result["layers"]["fc6"][0]["sparsity"] == pytest.approx(math.floor(n6 / 2) / n6)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def _synthetic():
    return {"by": "s", "baseline": {"accuracy": 0.75, "loss": 0.5},
            "layers": {
                "conv1": [{"value": 0.5, "accuracy": 0.75}, {"value": 1.0, "accuracy": 0.625},
                          {"value": 1.5, "accuracy": 0.5}],
                "res2a_2a": [{"value": 0.5, "accuracy": 0.75}, {"value": 1.0, "accuracy": 0.75},
                             {"value": 1.5, "accuracy": 0.6875}],
                "fc5": [{"value": 0.5, "accuracy": 0.5}, {"value": 1.0, "accuracy": 0.25}],
                "fc6": [{"value": 0.5, "accuracy": 0.5}, {"value": 1.0, "accuracy": 0.75},
                        {"value": 2.0, "accuracy": 0.25}],
            }}


@pytest.mark.parametrize("budget, expected", [
    (0.0, {"conv1": 0.5, "res2a_2a": 1.0, "fc5": 0.0, "fc6": 1.0}),
    (0.0625, {"conv1": 0.5, "res2a_2a": 1.5, "fc5": 0.0, "fc6": 1.0}),
    (0.125, {"conv1": 1.0, "res2a_2a": 1.5, "fc5": 0.0, "fc6": 1.0}),
    (0.25, {"conv1": 1.5, "res2a_2a": 1.5, "fc5": 0.5, "fc6": 1.0}),
    (0.5, {"conv1": 1.5, "res2a_2a": 1.5, "fc5": 1.0, "fc6": 2.0}),
])
def test_suggest_picks_the_largest_value_within_budget(budget, expected):
    """Per layer the largest swept value whose accuracy >= baseline - budget; 0 when none."""
    assert suggest(_synthetic(), budget) == expected


def test_format_table_names_every_layer():
    """One row per layer with its accuracies, a header with the swept values, the baseline."""
    result = _synthetic()
    result["layers"]["fc5"].append({"value": 1.5, "accuracy": 0.125})
    result["layers"]["fc6"][2]["value"] = 1.5  # a sweep has the same values in every row
    text = format_table(result)
    lines = text.splitlines()
    assert len(lines) == 6
    for name in ("conv1", "res2a_2a", "fc5", "fc6"):
        row = [line for line in lines if line.split() and line.split()[0] == name]
        assert len(row) == 1, name
    assert "s=0.5" in lines[0] and "s=1.5" in lines[0]
    conv1 = next(line for line in lines if line.startswith("conv1"))
    assert conv1.split()[1:] == ["0.7500", "0.6250", "0.5000"]
    assert "0.7500" in lines[-1] and "baseline" in lines[-1]
