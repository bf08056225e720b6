"""Tests for the architecture registry: every name builds and runs, layer names and shapes follow
the documented layout, parameter and MAC counts match arithmetic done here from the architecture
definitions, bad specs are UserErrors, and whole tiny nets pass the gradient check."""

import numpy as np
import pytest

from npdc.engine.gradcheck import check_net
from npdc.engine.layers import Conv2d, Linear, PReLU, ReLU
from npdc.engine.resnet import ARCHITECTURES, build_net, cifar_resnet
from npdc.errors import UserError
from tests.conftest import TINY_RESNET18


def _conv_len(size, stride, k=3):
    """Spatial size after a k x k convolution with padding k // 2."""
    return (size + 2 * (k // 2) - k) // stride + 1


def cifar_counts(n, num_classes, in_shape):
    """(parameters, MACs per image) of cifar-resnet(6n+2), from the paper's layout: a 3x3 conv
    with 16 filters, three stages of n two-conv blocks at 16/32/64 channels (the first block of
    stages 3 and 4 strides by 2), BN (gamma, beta) after every conv, GAP and one linear layer."""
    c, h, w = in_shape
    params = c * 16 * 9 + 2 * 16
    macs = 16 * h * w * c * 9
    c_in = 16
    for stage, out in enumerate((16, 32, 64)):
        for b in range(n):
            stride = 2 if (stage > 0 and b == 0) else 1
            h, w = _conv_len(h, stride), _conv_len(w, stride)
            params += (c_in * out * 9 + 2 * out) + (out * out * 9 + 2 * out)
            macs += out * h * w * c_in * 9 + out * h * w * out * 9
            c_in = out
    params += 64 * num_classes + num_classes
    macs += 64 * num_classes
    return params, macs


def resnet18_counts(in_shape, width, embedding, num_classes, strides):
    """(parameters, MACs per image) of the face-style resnet18: conv1, four stages of two basic
    blocks (the first with a 1x1 projection), fc5 on the flattened map (no bias: fc5_bn right
    after it supplies the shift), fc5_bn, fc6 with bias."""
    c, h, w = in_shape
    h, w = _conv_len(h, strides[0]), _conv_len(w, strides[0])
    params, macs = c * width * 9 + 2 * width, width * h * w * c * 9
    c_in = width
    for stage, stride in enumerate(strides[1:]):
        out = width * 2 ** stage
        h, w = _conv_len(h, stride), _conv_len(w, stride)
        params += c_in * out * 9 + 2 * out          # resNa_2a
        params += c_in * out + 2 * out              # resNa_1 (1x1 projection)
        params += 3 * (out * out * 9 + 2 * out)     # resNa_2b, resNb_2a, resNb_2b
        macs += out * h * w * (c_in * 9 + c_in + 3 * out * 9)
        c_in = out
    features = c_in * h * w
    params += features * embedding + 2 * embedding + embedding * num_classes + num_classes
    macs += features * embedding + embedding * num_classes
    return params, macs


def test_cifar_resnet20_has_269722_parameters():
    """The published size of ResNet-20 (0.27M), recomputed here block by block."""
    expected, _ = cifar_counts(3, 10, (3, 32, 32))
    assert expected == 269722
    assert build_net({"arch": "cifar-resnet20"}).num_params() == expected


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_counts(depth):
    """Parameters and MACs of every registered CIFAR depth match the arithmetic."""
    n = (depth - 2) // 6
    net = build_net({"arch": f"cifar-resnet{depth}", "input_shape": [3, 8, 8], "num_classes": 7})
    params, macs = cifar_counts(n, 7, (3, 8, 8))
    assert net.num_params() == params
    assert net.macs() == macs


@pytest.mark.parametrize("spec", [
    dict(input_shape=[1, 6, 6], width=2, embedding=4, num_classes=3, strides=[1, 2, 1, 2, 1]),
    dict(input_shape=[1, 28, 28], width=16, embedding=512, num_classes=10, strides=[1, 1, 2, 2, 2]),
    dict(input_shape=[3, 9, 7], width=3, embedding=5, num_classes=2, strides=[2, 1, 2, 1, 1]),
])
def test_resnet18_counts(spec):
    """Parameters and MACs of resnet18 configurations match the arithmetic."""
    net = build_net({"arch": "resnet18", **spec})
    params, macs = resnet18_counts(spec["input_shape"], spec["width"], spec["embedding"],
                                   spec["num_classes"], spec["strides"])
    assert net.num_params() == params
    assert net.macs() == macs


# the ImageNet architectures at reduced width and input (a graph brings its own nodes: test_graph)
SMALL = {"squeezenet1_1": ({"width": 8}, 32), "mobilenet_v2": ({"width_mult": 0.1}, 32),
         **{f"tv-resnet{d}": ({"width": 2}, 32) for d in (18, 34, 50, 101)}}


@pytest.mark.parametrize("arch", sorted(set(ARCHITECTURES) - {"graph"}))
def test_every_architecture_builds_and_runs(arch):
    """Each registered name builds on a tiny input and maps (N, C, H, W) to (N, num_classes)
    finite logits in eval and train mode."""
    options, side = SMALL.get(arch, ({}, 8))
    shape = [1, side, side] if arch == "resnet18" else [3, side, side]
    net = build_net({"arch": arch, "input_shape": shape, "num_classes": 5, **options})
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    for train in (False, True):
        y = net.forward(x, train=train)
        assert y.shape == (2, 5)
        assert y.dtype == np.float32
        assert np.isfinite(y).all()
    assert net.spec["arch"] == arch


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_depth_is_6n_plus_2(depth):
    """Weighted layers (3x3 convs and the final linear layer) number 6n + 2, with n blocks per
    stage named resNa, resNb, ... and no 1x1 convolutions (option-A shortcuts)."""
    net = build_net({"arch": f"cifar-resnet{depth}", "input_shape": [3, 8, 8]})
    convs = [n for n, layer in net.layers.items() if isinstance(layer, Conv2d)]
    linears = [n for n, layer in net.layers.items() if isinstance(layer, Linear)]
    assert len(convs) + len(linears) == depth
    assert all(net.layers[n].k == 3 for n in convs)
    assert linears == ["fc"]
    n = (depth - 2) // 6
    letters = "abcdefghijklmnopqrstuvwxyz"
    for stage in (2, 3, 4):
        blocks = [name for name in net.layers if name.startswith(f"res{stage}")
                  and name[4:] in list(letters[:n])]
        assert blocks == [f"res{stage}{letters[b]}" for b in range(n)]
    assert f"res2{letters[n]}" not in net.layers


def test_cifar_depth_must_be_6n_plus_2():
    """A depth that is not 6n + 2 is a UserError."""
    with pytest.raises(UserError, match="6n\\+2"):
        cifar_resnet(np.random.default_rng(0), depth=21)


def test_cifar_stage_shapes():
    """16, 32, 64 channels; stages 3 and 4 halve the map; GAP gives (64,)."""
    net = build_net({"arch": "cifar-resnet20", "input_shape": [3, 16, 16]})
    assert net.shapes["res2c_relu"] == (16, 16, 16)
    assert net.shapes["res3c_relu"] == (32, 8, 8)
    assert net.shapes["res4c_relu"] == (64, 4, 4)
    assert net.shapes["pool"] == (64,)
    assert net.shapes["fc"] == (10,)


def test_resnet18_layer_names():
    """Caffe-style names of the face model: conv1, res{2..5}{a,b}_2{a,b}, res{2..5}a_1, fc5,
    fc6; the b blocks have no projection."""
    net = build_net(TINY_RESNET18)
    names = set(net.layers)
    expected = {"conv1", "fc5", "fc6"}
    for stage in (2, 3, 4, 5):
        expected |= {f"res{stage}a_1", f"res{stage}a_2a", f"res{stage}a_2b",
                     f"res{stage}b_2a", f"res{stage}b_2b"}
        assert f"res{stage}b_1" not in names
    assert expected <= names
    convs = sorted(n for n, layer in net.layers.items() if isinstance(layer, Conv2d))
    assert convs == sorted(expected - {"fc5", "fc6"})
    assert [n for n, _, _ in net.nodes][-4:] == ["flatten", "fc5", "fc5_bn", "fc6"]


def test_resnet18_widths_and_strides():
    """Stage widths w, 2w, 4w, 8w; strides applied per stage; fc5 outputs the embedding."""
    net = build_net({"arch": "resnet18", "input_shape": [1, 16, 16], "width": 3, "embedding": 6,
                     "num_classes": 4, "strides": [2, 1, 2, 2, 1]})
    assert net.shapes["conv1"] == (3, 8, 8)
    assert net.shapes["res2b_relu"] == (3, 8, 8)
    assert net.shapes["res3b_relu"] == (6, 4, 4)
    assert net.shapes["res4b_relu"] == (12, 2, 2)
    assert net.shapes["res5b_relu"] == (24, 2, 2)
    assert net.shapes["fc5"] == (6,)
    assert net.shapes["fc6"] == (4,)
    assert net.layers["res4a_1"].stride == 2 and net.layers["res4a_2a"].stride == 2


def test_prelu_activation():
    """activation='prelu' puts a PReLU (with slopes) wherever ReLU would be."""
    net = build_net({**TINY_RESNET18, "activation": "prelu"})
    assert isinstance(net.layers["conv1_relu"], PReLU)
    assert isinstance(net.layers["res3a_relu"], PReLU)
    assert "res3a_2a_relu.slope" in net.params()
    assert not any(isinstance(layer, ReLU) for layer in net.layers.values())


def test_same_seed_same_weights_different_seed_different():
    """build_net is deterministic in its seed."""
    a, b, c = (build_net(TINY_RESNET18, seed=s) for s in (4, 4, 5))
    for path, p in a.params().items():
        np.testing.assert_array_equal(p, b.params()[path])
    assert not np.array_equal(a.params()["conv1.W"], c.params()["conv1.W"])


def test_spec_rebuilds_the_same_architecture():
    """net.spec holds everything needed to rebuild the net (the model file relies on it)."""
    net = build_net(TINY_RESNET18, seed=3)
    again = build_net(net.spec, seed=3)
    assert [(n, type(layer), ins) for n, layer, ins in net.nodes] == \
        [(n, type(layer), ins) for n, layer, ins in again.nodes]
    assert again.shapes == net.shapes


@pytest.mark.parametrize("spec, match", [
    ({"arch": "resnet19"}, "resnet19"),
    ({}, "unknown architecture"),
    ({"arch": "resnet18", "strides": [1, 2]}, "5 strides"),
    ({"arch": "resnet18", "colour": "blue"}, "resnet18"),
    ({"arch": "cifar-resnet20", "input_shape": [3, 8]}, "cifar-resnet20"),
    ({"arch": "resnet18", "input_shape": [1, 0, 0]}, "resnet18"),
])
def test_bad_specs_are_user_errors(spec, match):
    """Unknown names, wrong hyper-parameters and impossible input shapes are UserErrors."""
    with pytest.raises(UserError, match=match):
        build_net(spec)


def _assert_small(errors):
    assert max(errors.values()) < 1e-5, {k: v for k, v in errors.items() if v >= 1e-5}


def test_tiny_resnet18_gradcheck(tiny_resnet18):
    """End-to-end gradients of a tiny resnet18 (projection shortcuts, fc5_bn on (N, C))."""
    x = np.random.default_rng(1).standard_normal((3, 1, 6, 6))
    errors, _ = check_net(tiny_resnet18, x, kinks=True, max_entries=8)
    assert len(errors) == len(tiny_resnet18.params()) + 1
    _assert_small(errors)


def test_tiny_cifar_resnet20_gradcheck(tiny_cifar):
    """End-to-end gradients of cifar-resnet20 on 6x6 inputs (zero-pad shortcuts, GAP)."""
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6))
    errors, _ = check_net(tiny_cifar, x, kinks=True, max_entries=8)
    _assert_small(errors)


def test_tiny_prelu_resnet18_gradcheck():
    """The PReLU variant passes the end-to-end gradient check, slopes included."""
    net = build_net({**TINY_RESNET18, "activation": "prelu"}, seed=6)
    x = np.random.default_rng(3).standard_normal((3, 1, 6, 6))
    errors, _ = check_net(net, x, kinks=True, max_entries=8)
    assert "res2a_relu.slope" in errors
    _assert_small(errors)
