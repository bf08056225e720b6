"""Tests for the residual pieces: Add, ZeroPadShortcut (option A of He et al. 2016) and whole
basic blocks with identity, projection and zero-pad shortcuts, checked end to end."""

import numpy as np
import pytest

from npdc.engine.gradcheck import check_layer, check_module, check_net
from npdc.engine.layers import Add, ZeroPadShortcut
from npdc.engine.net import Net
from npdc.engine.resnet import _block, build_net
from tests.conftest import TINY_CIFAR, TINY_RESNET18, naive_conv2d


# -- Add ---------------------------------------------------------------------------------------
def test_add_forward_backward():
    """The sum of two inputs; both receive the incoming gradient unchanged."""
    layer = Add()
    assert layer.build([(2, 3, 3), (2, 3, 3)], None) == (2, 3, 3)
    r = np.random.default_rng(0)
    a, b, dy = (r.standard_normal((4, 2, 3, 3)) for _ in range(3))
    np.testing.assert_array_equal(layer.forward([a, b], train=True), a + b)
    da, db = layer.backward(dy)
    np.testing.assert_array_equal(da, dy)
    np.testing.assert_array_equal(db, dy)


def test_add_gradcheck():
    """Add passes the gradient check with respect to both inputs (stacked on a leading axis)."""
    layer = Add()
    layer.build([(3, 2, 2), (3, 2, 2)], None)
    x = np.random.default_rng(1).standard_normal((2, 2, 3, 2, 2))
    errors, _ = check_module(lambda s: layer.forward([s[0], s[1]], True),
                             lambda dy: np.stack(layer.backward(dy)), x, {})
    assert errors["x"] < 1e-5


def test_add_with_relu_sums_gradient_parts_in_its_mask_as_numpy_would():
    """Parts of a forked gradient, summed left to right and masked in one pass: the same bits as
    NumPy's sum masked afterwards, also when a part's type differs (summed first, then cast)."""
    r = np.random.default_rng(3)
    a, b = (r.standard_normal((4, 2, 3, 3)).astype(np.float32) for _ in range(2))
    parts = [r.standard_normal((4, 2, 3, 3)).astype(np.float32) for _ in range(3)]
    for given in (parts[:2], parts, [parts[0], parts[1].astype(np.float64)]):
        layer = Add()
        layer.build([(2, 3, 3), (2, 3, 3)], None)
        y = layer.forward([a, b], train=True, relu=True)
        total = given[0]
        for p in given[1:]:
            total = total + p
        want = np.where(y > 0, total, 0).astype(np.float32)
        da, db = layer.backward(list(given))
        np.testing.assert_array_equal(da, want)
        assert da is db and da.dtype == np.float32
        assert not any(np.shares_memory(da, p) for p in given)


def test_fused_fork_sums_leave_a_training_step_bit_identical(monkeypatch):
    """A residual net's weight gradients with Add summing its parts in the mask equal those with
    the parts summed first (the path of a layer that cannot)."""
    def grads():
        net = build_net(TINY_RESNET18, seed=4)
        x = np.random.default_rng(5).standard_normal((3,) + tuple(TINY_RESNET18["input_shape"]))
        y = net.forward(x.astype(np.float32), train=True)
        net.backward(np.random.default_rng(6).standard_normal(y.shape).astype(np.float32))
        return {k: v.copy() for k, v in net.grads().items()}

    import npdc.engine.layers.residual as residual
    calls, kernel = [], residual.relu_backward_sum
    monkeypatch.setattr(residual, "relu_backward_sum", lambda *a: (calls.append(1), kernel(*a)))
    fused = grads()
    assert len(calls) >= 3  # the net's forks did reach the fused mask
    monkeypatch.setattr(Add, "sums_gradient_parts", False)
    summed = grads()
    assert fused.keys() == summed.keys()
    for k in fused:
        np.testing.assert_array_equal(fused[k], summed[k], err_msg=k)


def test_add_rejects_mismatched_shapes():
    """A residual add of different shapes is a construction error."""
    with pytest.raises(ValueError):
        Add().build([(4, 3, 3), (8, 3, 3)], None)


# -- ZeroPadShortcut ---------------------------------------------------------------------------
@pytest.mark.parametrize("c, o, s, h, w", [(2, 4, 2, 5, 6), (3, 8, 2, 4, 4), (4, 4, 1, 3, 3),
                                           (3, 6, 3, 7, 5)])
def test_zero_pad_shortcut_layout(c, o, s, h, w):
    """Every s-th pixel of the input lands in channels front..front+C, front = (O - C) // 2,
    and all other channels are zero; spatial size is ceil(H / s)."""
    layer = ZeroPadShortcut(o, s)
    out_shape = layer.build((c, h, w), None)
    ho, wo = -(-h // s), -(-w // s)
    assert out_shape == (o, ho, wo)
    x = np.random.default_rng(2).standard_normal((2, c, h, w)) + 5.0  # no zeros in x
    y = layer.forward(x, train=False)
    front = (o - c) // 2
    expected = np.zeros((2, o, ho, wo))
    for p in range(ho):
        for q in range(wo):
            expected[:, front:front + c, p, q] = x[:, :, p * s, q * s]
    np.testing.assert_array_equal(y, expected)
    assert not y[:, :front].any() and not y[:, front + c:].any()


def test_zero_pad_shortcut_gradcheck():
    """The gradient of the kept pixels is the matching slice of dy; the rest get zero."""
    layer = ZeroPadShortcut(6, 2)
    layer.build((3, 5, 5), None)
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5))
    errors, _ = check_layer(layer, x)
    assert errors["x"] < 1e-5
    layer.forward(x, train=True)
    dx = layer.backward(np.ones((2, 6, 3, 3)))
    assert dx[:, :, ::2, ::2].all() and dx.sum() == 2 * 3 * 9


@pytest.mark.parametrize("front", [0, 1, 3])
def test_zero_pad_shortcut_places_the_input_after_front_zero_channels(front):
    """An ONNX Pad may add its zero channels unevenly: `front` of them come first."""
    layer = ZeroPadShortcut(5, 2, front=front)
    assert layer.build((2, 5, 4), None) == (5, 3, 2)
    x = np.random.default_rng(4).standard_normal((2, 2, 5, 4)) + 5.0
    y = layer.forward(x, train=False)
    np.testing.assert_array_equal(y[:, front:front + 2], x[:, :, ::2, ::2])
    assert not np.delete(y, [front, front + 1], axis=1).any()
    errors, _ = check_layer(layer, x)
    assert errors["x"] < 1e-5


def test_zero_pad_shortcut_front_must_fit():
    with pytest.raises(ValueError, match="front"):
        ZeroPadShortcut(4, 1, front=3).build((2, 3, 3), None)


def test_zero_pad_shortcut_cannot_shrink():
    """Fewer output channels than input channels is refused."""
    with pytest.raises(ValueError):
        ZeroPadShortcut(2, 1).build((4, 3, 3), None)


# -- whole basic blocks ------------------------------------------------------------------------
def _block_net(in_shape, out, stride, shortcut, seed=0):
    """A net holding one basic block built by the registry's own block builder."""
    rng = np.random.default_rng(seed)
    net = Net({"arch": "block"}, in_shape)
    _block(net, rng, "res9a", "input", out, stride, shortcut, "relu")
    # non-trivial affine parameters and running statistics everywhere
    r = np.random.default_rng(seed + 100)
    for path, p in {**net.params(), **net.buffers()}.items():
        if path.endswith(("gamma", "running_var")):
            p[...] = r.uniform(0.5, 1.5, p.shape)
        elif path.endswith(("beta", "running_mean")):
            p[...] = r.normal(0, 0.3, p.shape)
    return net


def _bn_eval(x, net, name):
    g, b = net.layers[name].params["gamma"], net.layers[name].params["beta"]
    m, v = net.layers[name].buffers["running_mean"], net.layers[name].buffers["running_var"]
    eps = net.layers[name].eps
    c = lambda a: np.asarray(a, np.float64)[None, :, None, None]  # noqa: E731
    return c(g) * (x - c(m)) / np.sqrt(c(v) + eps) + c(b)


@pytest.mark.parametrize("shortcut, c, out, stride", [
    ("identity", 3, 3, 1), ("projection", 2, 4, 2), ("zeropad", 2, 4, 2)])
def test_block_forward_matches_composition(shortcut, c, out, stride):
    """Eval-mode block = relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), computed here from
    the definitions (naive convolution, BN with running statistics, option-A padding)."""
    net = _block_net((c, 5, 5), out, stride, shortcut)
    x = np.random.default_rng(4).standard_normal((2, c, 5, 5)).astype(np.float32)
    W = {n: net.layers[n].params["W"] for n in net.layers if n.endswith(("_2a", "_2b", "_1"))}
    h = np.maximum(_bn_eval(naive_conv2d(x, W["res9a_2a"], stride, 1), net, "res9a_2a_bn"), 0)
    h = _bn_eval(naive_conv2d(h, W["res9a_2b"], 1, 1), net, "res9a_2b_bn")
    if shortcut == "identity":
        sc = x.astype(np.float64)
    elif shortcut == "projection":
        sc = _bn_eval(naive_conv2d(x, W["res9a_1"], stride, 0), net, "res9a_1_bn")
    else:
        sc = np.zeros_like(h)
        front = (out - c) // 2
        sc[:, front:front + c] = x[:, :, ::stride, ::stride]
    ref = np.maximum(h + sc, 0)
    y = net.forward(x)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shortcut, c, out, stride", [
    ("identity", 2, 2, 1), ("projection", 2, 4, 2), ("projection", 3, 3, 1), ("zeropad", 2, 4, 2)])
def test_block_gradcheck(shortcut, c, out, stride):
    """Gradients through both branches of a block (train-mode BN, ReLU kinks skipped), w.r.t.
    the input and every parameter, agree with finite differences."""
    net = _block_net((c, 4, 4), out, stride, shortcut, seed=5)
    x = np.random.default_rng(6).standard_normal((3, c, 4, 4))
    errors, _ = check_net(net, x, kinks=True, max_entries=16)
    assert max(errors.values()) < 1e-5, errors


def test_resnet18_blocks_use_projection_shortcuts():
    """In resnet18 the first block of a stage adds res?a_1_bn (1x1 projection) to the main
    branch; the second block adds the identity."""
    net = build_net(TINY_RESNET18)
    inputs = {name: ins for name, _, ins in net.nodes}
    for stage in (2, 3, 4, 5):
        assert inputs[f"res{stage}a"] == (f"res{stage}a_1_bn", f"res{stage}a_2b_bn")
        assert net.layers[f"res{stage}a_1"].k == 1
        assert inputs[f"res{stage}b"] == (f"res{stage}a_relu", f"res{stage}b_2b_bn")
        assert inputs[f"res{stage}a_1"] == inputs[f"res{stage}a_2a"]


def test_cifar_blocks_use_zero_pad_shortcuts():
    """In cifar-resnet20 the stage-changing blocks res3a and res4a pad with zeros; the others
    are identities."""
    net = build_net(TINY_CIFAR)
    inputs = {name: ins for name, _, ins in net.nodes}
    assert isinstance(net.layers["res3a_pad"], ZeroPadShortcut)
    assert inputs["res3a"] == ("res3a_pad", "res3a_2b_bn")
    assert inputs["res3a_pad"] == ("res2c_relu",)
    assert inputs["res4a"] == ("res4a_pad", "res4a_2b_bn")
    assert net.shapes["res3a_pad"] == (32, 3, 3)
    assert inputs["res2a"] == ("conv1_relu", "res2a_2b_bn")
    assert "res2a_pad" not in net.layers and "res3b_pad" not in net.layers
