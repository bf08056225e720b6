"""Tests for physical filter removal (npdc.compress.thin): after filter pruning (with the BN
entries of dead channels masked) the thinned net is smaller, records its widths in
spec['channels'], computes exactly what the masked net computes, reports the convs tied by a
residual add as skipped, and survives a save/load round trip through the model file."""

import numpy as np
import pytest

from npdc.compress.prune import apply_masks, filter_masks_complete, percentage_masks, sparsity_table
from npdc.compress.thin import thin_filters
from npdc.engine.resnet import build_net
from npdc.io.modelfile import load_model, save_model

SPECS = {
    "resnet18": {"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2, "embedding": 4,
                 "num_classes": 3},
    "cifar-resnet20": {"arch": "cifar-resnet20", "input_shape": [3, 8, 8], "num_classes": 3},
}


def _conv_names(net):
    return [n for n, layer, _ in net.nodes if type(layer).__name__ == "Conv2d"]


def _tied(arch, name):
    """Convs whose output channels reach a residual add: the second conv of a block, the
    projection shortcut, and in the CIFAR nets also conv1 (identity shortcut of res2a)."""
    return name.endswith("_2b") or name.endswith("_1") or (arch.startswith("cifar") and name == "conv1")


def _randomise_bn(net, seed):
    """Random gamma, beta and running statistics, so a dead channel that were not masked in BN
    would show up as a constant offset in the outputs."""
    r = np.random.default_rng(seed)
    for _, layer, _ in net.nodes:
        if "running_var" in layer.buffers:
            c = layer.buffers["running_var"].size
            layer.params["gamma"][...] = r.uniform(0.5, 1.5, c)
            layer.params["beta"][...] = r.normal(0, 1.0, c)
            layer.buffers["running_mean"][...] = r.normal(0, 1.0, c)
            layer.buffers["running_var"][...] = r.uniform(0.5, 2.0, c)


def _filter_pruned(arch, seed=0, percent=50):
    net = build_net(SPECS[arch], seed=seed)
    _randomise_bn(net, seed + 1)
    masks = filter_masks_complete(net, percentage_masks(net, percent, granularity="filter"))
    apply_masks(net, masks)
    return net, masks


def _outputs(net, seed=0, n=5):
    x = np.random.default_rng(seed).standard_normal((n, *net.in_shape)).astype(np.float32)
    return net.forward(x)


def _rel(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("arch", list(SPECS))
def test_thinned_net_matches_masked_net(arch):
    """Eval-mode outputs of the thinned net equal the masked original's within 1e-5 relative,
    with fewer parameters and spec['channels'] giving each thinned conv's width."""
    net, masks = _filter_pruned(arch)
    thinned, report = thin_filters(net)
    ref = _outputs(net)
    assert np.abs(ref).max() > 0.1
    assert _rel(_outputs(thinned), ref) < 1e-5
    assert thinned.num_params() < net.num_params()
    channels = thinned.spec["channels"]
    thinned_convs = [n for n in _conv_names(net) if not _tied(arch, n)]
    assert sorted(channels) == sorted(thinned_convs)
    for name in thinned_convs:
        O = net.layers[name].params["W"].shape[0]
        kept = O - O // 2  # 50 % of the filters by floor
        assert channels[name] == kept
        assert report[name] == (kept, O)
        assert thinned.layers[name].params["W"].shape[0] == kept
        for key in ("gamma", "beta"):
            assert thinned.layers[f"{name}_bn"].params[key].shape == (kept,)
        for key in ("running_mean", "running_var"):
            assert thinned.layers[f"{name}_bn"].buffers[key].shape == (kept,)


@pytest.mark.parametrize("arch", list(SPECS))
def test_tied_convs_are_reported_as_skipped(arch):
    """Every conv feeding a residual add is reported as skipped and keeps its shape (its zero
    filters stay as zeros)."""
    net, _ = _filter_pruned(arch, seed=2)
    thinned, report = thin_filters(net)
    tied = [n for n in _conv_names(net) if _tied(arch, n)]
    assert tied
    for name in tied:
        assert isinstance(report[name], str) and report[name].startswith("skipped"), name
        W = thinned.layers[name].params["W"]
        assert W.shape[0] == net.layers[name].params["W"].shape[0]
        dead = ~W.reshape(W.shape[0], -1).any(axis=1)
        assert dead.sum() == W.shape[0] // 2
    assert "fc6" not in report and "fc5" not in report and "fc" not in report


@pytest.mark.parametrize("arch", list(SPECS))
def test_kept_weights_are_moved_not_changed(arch):
    """The surviving filters, their BN entries and the matching input channels of the next conv
    are the original values, in the original order."""
    net, _ = _filter_pruned(arch, seed=3)
    thinned, _ = thin_filters(net)
    W = net.layers["res3a_2a"].params["W"]
    alive = W.reshape(W.shape[0], -1).any(axis=1)
    np.testing.assert_array_equal(thinned.layers["res3a_2a"].params["W"], W[alive])
    np.testing.assert_array_equal(thinned.layers["res3a_2a_bn"].buffers["running_var"],
                                  net.layers["res3a_2a_bn"].buffers["running_var"][alive])
    np.testing.assert_array_equal(thinned.layers["res3a_2b"].params["W"],
                                  net.layers["res3a_2b"].params["W"][:, alive])
    # the thinned net's parameter count, from the shapes written out here: a thinned conv keeps
    # its live filters (and BN entries); a conv reading it keeps the matching input channels
    def alive_count(name):
        Wn = net.layers[name].params["W"]
        return int(Wn.reshape(Wn.shape[0], -1).any(axis=1).sum())

    thinned_convs = [n for n in _conv_names(net) if not _tied(arch, n)]
    producer = {f"{n[:-3]}_2b": n for n in thinned_convs if n.endswith("_2a")}
    if "conv1" in thinned_convs:
        producer.update({"res2a_2a": "conv1", "res2a_1": "conv1"})
    expected = net.num_params()
    for name in _conv_names(net):
        O, C, kh, kw = net.layers[name].params["W"].shape
        out = alive_count(name) if name in thinned_convs else O
        inp = alive_count(producer[name]) if name in producer else C
        expected -= O * C * kh * kw - out * inp * kh * kw + 2 * (O - out)
    assert thinned.num_params() == expected


@pytest.mark.parametrize("arch", list(SPECS))
def test_thinned_net_survives_save_and_load(arch, tmp_path):
    """save -> load through npdc.io.modelfile: the spec with channels rebuilds the thinned net,
    which computes the same outputs."""
    net, _ = _filter_pruned(arch, seed=4)
    thinned, _ = thin_filters(net)
    path = tmp_path / "thin.h5"
    save_model(path, thinned, {"note": "thinned"})
    loaded = load_model(path)
    assert loaded.spec == thinned.spec and loaded.spec["channels"] == thinned.spec["channels"]
    assert loaded.num_params() == thinned.num_params()
    np.testing.assert_array_equal(_outputs(loaded), _outputs(thinned))
    assert _rel(_outputs(loaded), _outputs(net)) < 1e-5


def test_no_dead_filters_nothing_changes():
    """Element-wise zeros remove no filter: an empty report, no 'channels', same size."""
    net = build_net(SPECS["resnet18"], seed=5)
    apply_masks(net, percentage_masks(net, 20))
    for name in _conv_names(net):
        W = net.layers[name].params["W"]
        assert W.reshape(W.shape[0], -1).any(axis=1).all(), name  # no filter happens to die
    thinned, report = thin_filters(net)
    assert report == {}
    assert "channels" not in thinned.spec
    assert thinned.num_params() == net.num_params()
    np.testing.assert_array_equal(_outputs(thinned), _outputs(net))
    assert sparsity_table(thinned)[1] == sparsity_table(net)[1]


def test_thinning_twice_and_an_all_dead_conv():
    """A conv with every filter dead keeps one (zero) channel; thinning a thinned net again
    changes nothing more and still matches the masked original."""
    net, masks = _filter_pruned("resnet18", seed=6)
    name = "res4b_2a"
    masks[f"{name}.W"][...] = False
    masks.update(filter_masks_complete(net, {f"{name}.W": masks[f"{name}.W"]}))
    apply_masks(net, masks)
    thinned, report = thin_filters(net)
    assert report[name] == (1, net.layers[name].params["W"].shape[0])
    assert not thinned.layers[name].params["W"].any()
    again, report2 = thin_filters(thinned)
    assert again.spec["channels"] == thinned.spec["channels"]
    assert all(isinstance(v, str) for v in report2.values() if v != (1, 1))
    ref = _outputs(net)
    assert _rel(_outputs(thinned), ref) < 1e-5 and _rel(_outputs(again), ref) < 1e-5
