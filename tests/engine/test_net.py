"""Tests for Net: parameter paths, state_dict round trips and their error messages, kept
intermediate outputs and extra gradients, preprocessing, prediction and the summary figures."""

import numpy as np
import pytest

from npdc.engine.gradcheck import check_module, check_net
from npdc.engine.layers import (BatchNorm2d, Conv2d, GlobalAvgPool, Linear, MaxPool2d, ReLU)
from npdc.engine.net import Net
from npdc.engine.resnet import build_net
from npdc.errors import UserError
from tests.conftest import TINY_RESNET18


def _small_net(seed=0):
    """conv(groups 2, stride 2) -> bn -> relu -> maxpool -> gap -> fc, on (4, 9, 9) inputs."""
    rng = np.random.default_rng(seed)
    net = Net({"arch": "small"}, (4, 9, 9))
    net.add("conv", Conv2d(6, 3, stride=2, padding=1, groups=2), rng=rng)
    net.add("conv_bn", BatchNorm2d(), rng=rng)
    net.add("relu", ReLU(), rng=rng)
    net.add("pool", MaxPool2d(2, 1), rng=rng)
    net.add("gap", GlobalAvgPool(), rng=rng)
    net.add("fc", Linear(3), rng=rng)
    return net


# -- paths ---------------------------------------------------------------------------------------
def test_parameter_and_buffer_paths(tiny_resnet18):
    """Parameters and buffers are addressed as `layer.key`; state_dict adds the normalisation."""
    params, buffers = tiny_resnet18.params(), tiny_resnet18.buffers()
    for path in ("conv1.W", "res2a_2a.W", "res2a_1.W", "res5b_2b_bn.gamma", "fc5.W", "fc6.W",
                 "fc6.b", "fc5_bn.beta"):
        assert path in params, path
    for path in ("res2a_2a_bn.running_mean", "res2a_2a_bn.running_var", "fc5_bn.running_var"):
        assert path in buffers, path
    assert not set(params) & set(buffers)
    assert set(tiny_resnet18.grads()) == set(params)
    for path, g in tiny_resnet18.grads().items():
        assert g.shape == params[path].shape
    state = tiny_resnet18.state_dict()
    assert set(state) == set(params) | set(buffers) | {"input.mean", "input.std"}
    assert state["input.mean"].shape == (1,)


def test_params_are_live_views(tiny_resnet18):
    """params() returns the layer's own arrays (optimizers update them in place)."""
    tiny_resnet18.params()["fc6.b"][...] = 7.0
    np.testing.assert_array_equal(tiny_resnet18.layers["fc6"].params["b"], 7.0)


def test_state_dict_holds_copies(tiny_resnet18):
    """Mutating a state dict does not touch the net."""
    state = tiny_resnet18.state_dict()
    state["fc5.W"][...] = 123.0
    assert not np.any(tiny_resnet18.params()["fc5.W"] == 123.0)


# -- state_dict round trip -----------------------------------------------------------------------
def test_state_dict_round_trip_is_bit_identical():
    """A differently initialised net that loads another's state computes identical outputs."""
    a, b = build_net(TINY_RESNET18, seed=1), build_net(TINY_RESNET18, seed=2)
    r = np.random.default_rng(3)
    for path, buf in a.buffers().items():     # non-default running statistics
        var = path.endswith("var")
        buf[...] = r.uniform(0.5, 2.0, buf.shape) if var else r.normal(size=buf.shape)
    a.mean, a.std = np.array([0.3], np.float32), np.array([0.2], np.float32)
    x = r.integers(0, 256, (5, 1, 6, 6)).astype(np.uint8)
    assert not np.array_equal(a.predict(x), b.predict(x))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b.predict(x), a.predict(x))
    np.testing.assert_array_equal(b.mean, a.mean)
    for path, arr in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[path], arr)


def test_load_state_dict_resets_gradients(tiny_resnet18):
    """After a load the gradients are zero and shaped like the parameters."""
    tiny_resnet18.grads()["fc6.W"][...] = 1.0
    tiny_resnet18.load_state_dict(tiny_resnet18.state_dict())
    assert all(not g.any() for g in tiny_resnet18.grads().values())


@pytest.mark.parametrize("path", ["res2a_2a.W", "res2a_2a_bn.running_mean", "input.std"])
def test_load_state_dict_missing_entry(tiny_resnet18, path):
    """A missing entry is a UserError naming its path."""
    state = tiny_resnet18.state_dict()
    del state[path]
    with pytest.raises(UserError, match=path.replace(".", r"\.")):
        tiny_resnet18.load_state_dict(state)


def test_load_state_dict_unexpected_entry(tiny_resnet18):
    """An entry the architecture does not have is a UserError naming it."""
    state = tiny_resnet18.state_dict()
    state["res9z_2a.W"] = np.zeros((2, 2, 3, 3), np.float32)
    with pytest.raises(UserError, match=r"res9z_2a\.W"):
        tiny_resnet18.load_state_dict(state)


@pytest.mark.parametrize("path", ["fc5.W", "res3a_1_bn.running_var", "input.mean"])
def test_load_state_dict_wrong_shape(tiny_resnet18, path):
    """A mis-shaped entry is a UserError naming the path and leaves the net unchanged."""
    before = tiny_resnet18.state_dict()
    state = tiny_resnet18.state_dict()
    state[path] = np.zeros(state[path].shape + (2,), np.float32)
    with pytest.raises(UserError, match=path.replace(".", r"\.")):
        tiny_resnet18.load_state_dict(state)
    for k, v in tiny_resnet18.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


# -- forward with kept nodes and backward with extra gradients ----------------------------------
def test_keep_returns_embedding(tiny_resnet18):
    """keep=("fc5",) also returns the fc5 embedding: flatten output times fc5.W^T (plus fc5.b
    if the layer has a bias), and the logits are unchanged by keeping."""
    x = np.random.default_rng(4).standard_normal((3, 1, 6, 6)).astype(np.float32)
    y_plain = tiny_resnet18.forward(x)
    y, kept = tiny_resnet18.forward(x, keep=("flatten", "fc5"))
    np.testing.assert_array_equal(y, y_plain)
    assert y.shape == (3, 3)
    assert kept["fc5"].shape == (3, 4)
    W = tiny_resnet18.params()["fc5.W"]
    b = tiny_resnet18.params().get("fc5.b", 0.0)
    np.testing.assert_allclose(kept["fc5"], kept["flatten"] @ W.T.astype(np.float64) + b,
                               rtol=1e-5, atol=1e-6)
    assert kept["flatten"].shape == (3, tiny_resnet18.shapes["flatten"][0])


def test_backward_with_extra_gradient_at_kept_node(tiny_resnet18):
    """The gradient of <logits, r> + <fc5, s> (extra gradient s injected at fc5) is correct."""
    net = tiny_resnet18.astype(np.float64)
    k = net.shapes[net.output][0]

    def forward(x):
        y, kept = net.forward(x, train=True, keep=("fc5",))
        return np.concatenate([y, kept["fc5"]], axis=1)

    def backward(d):
        return net.backward(d[:, :k], extra={"fc5": d[:, k:]}, input_grad=True)

    x = np.random.default_rng(5).standard_normal((3, 1, 6, 6))
    grads = net.grads()
    params = {p: (a, grads[p]) for p, a in net.params().items()
              if p.startswith(("fc5", "fc6", "res5b_2b", "conv1."))}
    errors, _ = check_module(forward, backward, x, params, kinks=True, max_entries=10)
    assert max(errors.values()) < 1e-5, errors


def test_extra_gradient_changes_only_upstream_grads(tiny_resnet18):
    """An extra gradient at fc5 leaves fc6's gradient unchanged but changes fc5's."""
    net = tiny_resnet18
    x = np.random.default_rng(6).standard_normal((2, 1, 6, 6)).astype(np.float32)
    dy = np.ones((2, 3), np.float32)
    grads = {}
    for extra in (None, {"fc5": np.ones((2, 4), np.float32)}):
        net.zero_grad()
        net.forward(x, train=True, keep=("fc5",))
        net.backward(dy, extra=extra)
        grads[extra is None] = {p: g.copy() for p, g in net.grads().items()}
    np.testing.assert_array_equal(grads[True]["fc6.W"], grads[False]["fc6.W"])
    assert not np.allclose(grads[True]["fc5.W"], grads[False]["fc5.W"])


def test_gradcheck_detects_a_wrong_backward():
    """Guard for every gradient test: scaling one layer's dx by 1.001 is caught."""
    net = _small_net().astype(np.float64)
    layer = net.layers["conv_bn"]
    original = layer.backward
    layer.backward = lambda dy: original(dy) * 1.001
    x = np.random.default_rng(7).standard_normal((3, 4, 9, 9))
    errors, _ = check_net(net, x, kinks=True, max_entries=8)
    assert errors["x"] > 1e-4 and errors["conv.W"] > 1e-4


def test_small_net_gradcheck():
    """A hand-assembled conv-bn-relu-maxpool-gap-fc chain passes the gradient check."""
    net = _small_net(seed=1)
    x = np.random.default_rng(8).standard_normal((3, 4, 9, 9))
    errors, _ = check_net(net, x, kinks=True, max_entries=12)
    assert max(errors.values()) < 1e-5, errors


# -- construction, preprocessing, prediction -----------------------------------------------------
def test_duplicate_name_rejected():
    """Two nodes may not share a name."""
    net = _small_net()
    with pytest.raises(ValueError):
        net.add("relu", ReLU())


def test_preprocess_and_predict():
    """predict() scales uint8 to [0, 1], normalises per channel and batches the forward pass."""
    net = _small_net(seed=2)
    net.mean = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    net.std = np.array([0.5, 1.0, 2.0, 0.25], np.float32)
    x = np.random.default_rng(9).integers(0, 256, (7, 4, 9, 9)).astype(np.uint8)
    ref_in = (x / 255.0 - net.mean.astype(np.float64)[:, None, None]) / net.std[:, None, None]
    pre = net.preprocess(x)
    assert pre.dtype == np.float32
    np.testing.assert_allclose(pre, ref_in, rtol=1e-5, atol=1e-6)
    logits = net.predict(x, batch_size=3)
    assert logits.shape == (7, 3)
    np.testing.assert_allclose(logits, net.forward(pre), rtol=1e-5, atol=1e-6)
    assert net.predict(x[:0]).shape == (0, 3)


def test_astype_float64_propagates():
    """After astype(float64) parameters, buffers and outputs are float64 (for gradient checks)."""
    net = _small_net().astype(np.float64)
    assert all(p.dtype == np.float64 for p in net.params().values())
    assert all(b.dtype == np.float64 for b in net.buffers().values())
    assert net.forward(np.zeros((1, 4, 9, 9))).dtype == np.float64


# -- summary -------------------------------------------------------------------------------------
def test_summary_rows_params_and_macs():
    """One row per node with output shape, parameter count and MACs; conv MACs are
    O * Ho * Wo * C/groups * k * k, computed here by hand."""
    net = _small_net()
    rows = net.summary()
    assert [r["name"] for r in rows] == ["conv", "conv_bn", "relu", "pool", "gap", "fc"]
    by = {r["name"]: r for r in rows}
    ho = (9 + 2 * 1 - 3) // 2 + 1                      # 5
    assert by["conv"]["shape"] == (6, ho, ho)
    assert by["pool"]["shape"] == (6, ho - 1, ho - 1)
    assert by["gap"]["shape"] == (6,)
    assert by["conv"]["macs"] == 6 * ho * ho * (4 // 2) * 3 * 3 == 2700
    assert by["fc"]["macs"] == 6 * 3
    assert by["conv"]["params"] == 6 * 2 * 3 * 3
    assert by["conv_bn"]["params"] == 2 * 6
    assert by["fc"]["params"] == 6 * 3 + 3
    assert by["relu"]["params"] == by["pool"]["params"] == 0
    assert net.num_params() == 108 + 12 + 21
    assert net.macs() == 2700 + 18
    assert "Conv3x3/2" in by["conv"]["kind"]


def test_inference_in_place_only_over_outputs_nobody_reads_again():
    """Eval mode lets batch norm, ReLU and the residual add write over dead inputs: the logits
    equal those of a run that keeps every intermediate (so none is overwritten), and the caller's
    input is untouched. In the second net `flat` is a view of `conv` that is still read when the
    ReLU reads `conv` for the last time; overwriting `conv` there would change the sum."""
    from npdc.engine.layers import Add, Flatten

    rng = np.random.default_rng(4)
    net = build_net({"arch": "cifar-resnet20", "input_shape": [3, 8, 8]})
    for _, layer, _ in net.nodes:
        if isinstance(layer, BatchNorm2d):
            layer.buffers["running_mean"] = rng.standard_normal(layer.buffers["running_mean"].shape).astype(np.float32)
            layer.buffers["running_var"] = (0.5 + rng.random(layer.buffers["running_var"].shape)).astype(np.float32)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    before = x.copy()
    every = tuple(name for name, _, _ in net.nodes[:-1])
    kept_all, _ = net.forward(x, keep=every)
    np.testing.assert_array_equal(net.forward(x), kept_all)
    np.testing.assert_array_equal(x, before)

    small = Net({}, (2, 3, 3))
    small.add("conv", Conv2d(2, 2, 3, padding=1), rng=rng)
    small.add("flat", Flatten(), inputs="conv")
    small.add("relu", ReLU(), inputs="conv")
    small.add("relu_flat", Flatten(), inputs="relu")
    small.add("sum", Add(), inputs=("flat", "relu_flat"))
    z = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    conv = small.forward(z, keep=("conv",))[1]["conv"]
    expected = conv.reshape(2, -1) + np.maximum(conv, 0).reshape(2, -1)
    np.testing.assert_allclose(small.forward(z), expected, rtol=1e-6)

    first = Net({}, (2, 3, 3))
    first.add("relu", ReLU())
    z_before = z.copy()
    np.testing.assert_array_equal(first.forward(z), np.maximum(z_before, 0))
    np.testing.assert_array_equal(z, z_before)


# -- ReLU applied by the layer before it -----------------------------------------------------------
def test_training_with_absorbed_relus_matches_separate_relus():
    """Every ReLU of cifar-resnet20 follows a batch norm or a residual add that applies it in its
    own pass; keeping those inputs turns that off. Outputs are the same bits and the gradients
    agree (the masked sums may vectorise differently)."""
    from npdc.engine.losses import cross_entropy

    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    runs = []
    for fused in (True, False):
        net = build_net({"arch": "cifar-resnet20", "input_shape": [3, 8, 8]}, seed=2)
        relus = [name for name, layer, _ in net.nodes if isinstance(layer, ReLU)]
        keep = () if fused else tuple(inputs[0] for name, _, inputs in net.nodes if name in relus)
        out = net.forward(x, train=True, keep=keep)
        logits = out[0] if keep else out
        assert len(net._absorbed) == (len(relus) if fused else 0) == (19 if fused else 0)
        net.zero_grad()
        net.backward(cross_entropy(logits, labels)[1])
        runs.append((logits, {k: g.copy() for k, g in net.grads().items()}))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for k, g in runs[0][1].items():
        np.testing.assert_allclose(g, runs[1][1][k], rtol=1e-4, atol=1e-6 * np.abs(runs[1][1][k]).max())


def test_gradcheck_through_absorbed_relus():
    """Batch norm -> ReLU and residual add -> ReLU pairs, both absorbed, in float64."""
    from npdc.engine.layers import Add

    rng = np.random.default_rng(9)
    net = Net({}, (2, 5, 5))
    net.add("conv1", Conv2d(3, 3, padding=1), rng=rng)
    net.add("bn1", BatchNorm2d(), rng=rng)
    net.add("relu1", ReLU(), rng=rng)
    net.add("conv2", Conv2d(3, 3, padding=1), rng=rng)
    net.add("bn2", BatchNorm2d(), rng=rng)
    net.add("sum", Add(), inputs=("bn2", "relu1"), rng=rng)
    net.add("relu2", ReLU(), rng=rng)
    net.add("gap", GlobalAvgPool(), rng=rng)
    net.add("fc", Linear(4), rng=rng)
    net.astype(np.float64)
    for name in ("bn1", "bn2"):
        net.layers[name].params["beta"][:] = rng.standard_normal(3) * 0.3
    x = rng.standard_normal((3, 2, 5, 5))
    net.forward(x, train=True)
    assert net._absorbed == {"relu1": "bn1", "relu2": "sum"}
    errors, _ = check_net(net, x, kinks=True, max_entries=12)
    assert max(errors.values()) < 1e-5, errors



def test_backward_skips_the_input_gradient_unless_asked(tiny_resnet18):
    """Without input_grad the first convolution computes its weight gradient only: the same
    parameter gradients, and None for the input."""
    net = tiny_resnet18.astype(np.float64)
    x = np.random.default_rng(8).standard_normal((3, 1, 6, 6))
    runs = []
    for want in (True, False):
        net.zero_grad()
        y = net.forward(x, train=True)
        dx = net.backward(np.ones_like(y), input_grad=want)
        runs.append((dx, {k: g.copy() for k, g in net.grads().items()}))
    (dx, with_dx), (none, without) = runs
    assert dx.shape == x.shape and np.abs(dx).max() > 0 and none is None
    for k in with_dx:
        np.testing.assert_array_equal(with_dx[k], without[k])
