"""Nets from node lists (arch "graph") and the torchvision architectures written as node lists:
parameter counts, gradients of a whole graph, the schema that refuses a bad spec before building,
what building costs, and model files that store and re-read such nets."""

import math

import numpy as np
import pytest

from npdc.engine.gradcheck import check_net
from npdc.engine.resnet import build_net, check_spec, spec_cost
from npdc.errors import UserError
from npdc.io.modelfile import load_model, save_model


def node(name, op, inputs, **settings):
    return {"name": name, "op": op, "inputs": list(inputs), **settings}


# every op, the forks of a DAG, an add without a ReLU after it, and a concat of three
NODES = [
    node("stem", "conv", ["input"], out=4, k=5, stride=2, pad=2),
    node("stem_bn", "bn", ["stem"]),
    node("stem_act", "clip", ["stem_bn"], lo=0.0, hi=6.0),
    node("dw", "conv", ["stem_act"], out=4, k=3, pad=2, dilation=2, groups=4),
    node("dw_act", "prelu", ["dw"]),
    node("sum", "add", ["dw_act", "stem_act"]),
    node("pool", "maxpool", ["sum"], k=3, stride=2, ceil=True),
    node("a", "conv", ["pool"], out=2, k=1, bias=True),
    node("b", "avgpool", ["pool"], k=3, stride=1, pad=1),
    node("b_act", "relu", ["b"]),
    node("cat", "concat", ["a", "b_act", "pool"]),
    node("gap", "gap", ["cat"]),
    node("drop", "dropout", ["gap"], p=0.3),
    node("fc", "linear", ["drop"], out=3),
]
SPEC = {"arch": "graph", "input_shape": [2, 11, 11], "nodes": NODES}


def test_a_graph_builds_in_the_order_of_its_nodes():
    net = build_net(SPEC)
    assert [n for n, _, _ in net.nodes] == [n["name"] for n in NODES]
    assert net.shapes["cat"] == (10, 3, 3) and net.shapes["fc"] == (3,)
    assert net.spec == SPEC


# the option-A shortcut as an ONNX Slice and Pad write it: every 2nd pixel, zero channels placed unevenly
SHORTCUT_SPEC = {"arch": "graph", "input_shape": [2, 7, 7], "nodes": [
    node("a", "conv", ["input"], out=5, k=3, stride=2, pad=1, bias=True),
    node("a_act", "relu", ["a"]),
    node("skip", "shortcut", ["input"], out=5, stride=2, front=3),
    node("sum", "add", ["a_act", "skip"]),
    node("gap", "gap", ["sum"]),
    node("fc", "linear", ["gap"], out=2),
]}


def test_a_shortcut_node_places_channels_and_passes_the_gradient_check():
    net = build_net(SHORTCUT_SPEC, seed=2)
    assert net.shapes["skip"] == (5, 4, 4) and net.layers["skip"].front == 3
    x = np.random.default_rng(1).standard_normal((2, 2, 7, 7))
    errors, _ = check_net(net, x, kinks=True, max_entries=40)
    assert max(errors.values()) < 1e-5, errors
    too_far = [dict(n, front=4) if n["name"] == "skip" else n for n in SHORTCUT_SPEC["nodes"]]
    with pytest.raises(UserError, match="'skip': shortcut cannot place 2 channels after 4"):
        check_spec({**SHORTCUT_SPEC, "nodes": too_far})


def test_a_whole_graph_passes_the_gradient_check():
    net = build_net(SPEC, seed=3)
    x = np.random.default_rng(0).standard_normal((3, 2, 11, 11))
    errors, _ = check_net(net, x, kinks=True, max_entries=40)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("arch, params", [("tv-resnet18", 11_689_512), ("tv-resnet34", 21_797_672),
                                          ("tv-resnet50", 25_557_032), ("tv-resnet101", 44_549_160),
                                          ("mobilenet_v2", 3_504_872), ("squeezenet1_1", 1_235_496)])
def test_torchvision_architectures_have_torchvision_parameter_counts(arch, params):
    """The counts torchvision's model documentation gives for its ImageNet models."""
    assert build_net({"arch": arch, "input_shape": [3, 32, 32]}).num_params() == params


def test_small_torchvision_nets_build_with_torchvision_names():
    net = build_net({"arch": "tv-resnet50", "input_shape": [3, 32, 32], "num_classes": 5, "width": 4})
    params = net.params()
    assert params["layer1.0.conv3.W"].shape == (16, 4, 1, 1)
    assert params["layer4.0.downsample.0.W"].shape == (128, 64, 1, 1)
    assert params["fc.W"].shape == (5, 128)
    mobile = build_net({"arch": "mobilenet_v2", "input_shape": [3, 32, 32], "width_mult": 0.5})
    assert mobile.params()["features.1.conv.0.0.W"].shape == (16, 1, 3, 3)  # depthwise, t = 1
    assert mobile.params()["features.2.conv.1.0.W"].shape == (48, 1, 3, 3)
    squeeze = build_net({"arch": "squeezenet1_1", "input_shape": [3, 32, 32], "width": 16})
    assert squeeze.params()["features.12.expand3x3.W"].shape == (64, 16, 3, 3)


def test_spec_cost_bounds_what_building_allocates():
    specs = [SPEC, {"arch": "tv-resnet18", "input_shape": [3, 32, 32], "width": 4},
             {"arch": "mobilenet_v2", "input_shape": [3, 32, 32], "width_mult": 0.25},
             {"arch": "squeezenet1_1", "input_shape": [3, 33, 33], "width": 8}]
    for spec in specs:
        net = build_net(spec)
        floats = net.num_params() + sum(b.size for b in net.buffers().values())
        activations = sum(math.prod(shape) for shape in net.shapes.values())
        assert 4 * floats <= spec_cost(spec) <= 4 * (floats + 2 * activations)


def _with(i, **change):
    nodes = [dict(n) for n in NODES]
    nodes[i] = {**nodes[i], **change}
    return {**SPEC, "nodes": nodes}


BAD = [
    (_with(3, inputs=["pool"]), "earlier nodes"),             # a forward reference: a cycle
    (_with(3, inputs=["dw"]), "earlier nodes"),               # itself
    (_with(3, name="stem"), "new name"),
    (_with(3, name="a/b"), "new name"),
    (_with(3, op="lambda"), "unknown op"),
    (_with(3, code="print(1)"), "no setting"),
    (_with(3, groups=3), "groups 3"),
    (_with(3, k=1.5), "k is not a whole number"),
    (_with(3, k=True), "k is not a whole number"),
    (_with(3, dilation=0), "dilation must be between"),
    (_with(0, out=1 << 40), "out must be between"),
    (_with(0, k=40), "does not fit"),
    (_with(5, inputs=["dw_act", "pool"]), "earlier nodes"),
    (_with(5, inputs=["dw_act", "input"]), "adds shapes"),
    (_with(10, inputs=["a"]), "two or more"),
    (_with(2, hi=-1.0), "lo < hi"),
    (_with(2, lo=float("nan")), "lo must be a number"),
    (_with(13, inputs=["cat"]), "flat input"),
    (_with(0, stride=None), "stride is not a whole number"),
    ({**SPEC, "nodes": "conv"}, "nodes is not a list"),
    ({**SPEC, "nodes": []}, "nodes must be a list"),
    ({**SPEC, "nodes": [None]}, "not an object"),
    ({"arch": "graph", "nodes": NODES}, "needs input_shape"),
    ({**SPEC, "input_shape": [2, 11, 1 << 30]}, "input_shape"),
    ({**SPEC, "nodes": [node(f"n{i}", "relu", ["input"]) for i in range(9000)]}, "nodes must be a list"),
    ({**SPEC, "channels": {"stem_bn": 2}}, "no conv"),
    ({"arch": "tv-resnet18", "width_mult": 2.0}, "no hyper-parameter"),
    ({"arch": "mobilenet_v2", "width_mult": -1}, "width_mult must be"),
    ({"arch": "squeezenet1_1", "width": 10}, "multiple of 4"),
    ({"arch": "squeezenet1_1", "input_shape": [3, 4, 4]}, "does not fit"),
]


@pytest.mark.parametrize("spec, words", BAD)
def test_a_bad_spec_is_one_user_error_before_anything_is_built(spec, words):
    with pytest.raises(UserError) as e:
        check_spec(spec)
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError):
        build_net(spec)


def test_filter_thinning_applies_to_graph_convs():
    spec = {**SPEC, "channels": {"a": 1}}
    net = build_net(spec)
    assert net.shapes["a"] == (1, 3, 3) and net.shapes["cat"] == (9, 3, 3)


@pytest.mark.parametrize("spec", [SPEC, {"arch": "mobilenet_v2", "input_shape": [3, 16, 16],
                                         "num_classes": 3, "width_mult": 0.1}])
def test_model_files_store_and_reread_graph_nets(tmp_path, spec):
    net = build_net(spec, seed=5)
    save_model(tmp_path / "m.h5", net)
    again = load_model(tmp_path / "m.h5")
    assert again.spec == net.spec
    x = np.random.default_rng(1).integers(0, 256, (2,) + net.in_shape).astype(np.uint8)
    np.testing.assert_array_equal(again.predict(x), net.predict(x))
