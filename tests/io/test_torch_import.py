"""Tests for npdc.io.torch_import: imported CIFAR ResNets give PyTorch's logits; names and
shapes that do not fit are named in the error.

The reference logits were computed by torch in bench/make_torch_fixtures.py on the same uint8
images with the same normalisation, and stored in tests/data/torch/expected.npz."""

from pathlib import Path

import numpy as np
import pytest

from npdc.engine.resnet import build_net
from npdc.errors import UserError
from npdc.io.torch_import import find_state_dict, import_checkpoint, state_to_net, torch_candidates

DATA = Path(__file__).resolve().parents[1] / "data" / "torch"
NETWORKS = [  # fixture name, file, npdc architecture, the spec options the import must infer
    ("cifar_resnet20", "cifar_resnet20.pt", "cifar-resnet20", {}),
    ("cifar_resnet56_w8_legacy", "cifar_resnet56_w8_legacy.pth", "cifar-resnet56", {"width": 8}),
    ("cifar_resnet20_w8_projection", "cifar_resnet20_w8_projection.th", "cifar-resnet20",
     {"width": 8, "shortcut": "projection"}),
]


@pytest.fixture(scope="module")
def expected():
    with np.load(DATA / "expected.npz") as e:
        return {k: e[k] for k in e.files}


@pytest.mark.parametrize("name,file,arch,options", NETWORKS)
def test_imported_logits_match_pytorch(name, file, arch, options, expected):
    """npdc's logits for the stored images are PyTorch's within 1e-6 (float32; the README's claim,
    measured up to 1.2e-7), and the architecture
    options (width, shortcut kind) were read off the checkpoint."""
    net = import_checkpoint(DATA / file, arch, expected[f"{name}.mean"], expected[f"{name}.std"])
    assert {k: net.spec.get(k) for k in options} == options
    logits = net.predict(expected[f"{name}.x"])
    ref = expected[f"{name}.logits"]
    assert logits.shape == ref.shape
    assert np.abs(logits - ref).max() <= 1e-6
    assert (logits.argmax(1) == ref.argmax(1)).all()


def test_normalisation_matters(expected):
    """Without the normalisation the same weights give other logits (the match is not luck)."""
    net = import_checkpoint(DATA / "cifar_resnet20.pt", "cifar-resnet20")
    assert np.abs(net.predict(expected["cifar_resnet20.x"]) - expected["cifar_resnet20.logits"]).max() > 1e-2


def test_find_state_dict_unnests_and_strips_module_prefix():
    w = np.ones(2, np.float32)
    assert find_state_dict({"epoch": 3, "state_dict": {"module.fc.weight": w}}, "c") == {"fc.weight": w}
    assert find_state_dict({"model": {"net": {"conv1.weight": w}}}, "c") == {"conv1.weight": w}
    best = np.array(91.5)  # a training checkpoint's other tensor is not the state_dict
    assert find_state_dict({"best_acc": best, "net": {"fc.bias": w}, "optimizer": {}}, "c") == {"fc.bias": w}
    assert find_state_dict({"model": {"epoch": 1}, "fc.bias": w}, "c") == {"fc.bias": w}
    with pytest.raises(UserError, match="no state_dict found.*epoch"):
        find_state_dict({"epoch": 3}, "c")
    with pytest.raises(UserError, match="holds list"):
        find_state_dict([w], "c")


@pytest.mark.parametrize("path,names", [
    ("conv1.W", ["conv1.weight"]),
    ("conv1_bn.running_var", ["bn1.running_var"]),
    ("res2a_2a.W", ["layer1.0.conv1.weight"]),
    ("res3b_2b_bn.gamma", ["layer2.1.bn2.weight"]),
    ("res4a_1.W", ["layer3.0.downsample.0.weight", "layer3.0.shortcut.0.weight"]),
    ("res4a_1_bn.beta", ["layer3.0.downsample.1.bias", "layer3.0.shortcut.1.bias"]),
    ("res2ab_2a.W", ["layer1.27.conv1.weight"]),   # past z: aa is block 26, ab 27
    ("fc.b", ["fc.bias", "linear.bias", "classifier.bias"]),
    ("fc5_bn.running_mean", ["fc5_bn.running_mean"]),
])
def test_torch_candidates(path, names):
    assert torch_candidates(path) == names


def _torch_state(spec):
    """A PyTorch-named state for an npdc spec (the mapping run backwards, first candidates)."""
    net = build_net(spec, seed=3)
    state = {torch_candidates(p)[-1 if p.startswith("fc.") else 0]: v
             for p, v in {**net.params(), **net.buffers()}.items()}
    state.update({k.rsplit(".", 1)[0] + ".num_batches_tracked": np.array(5)
                  for k in list(state) if k.endswith("running_var")})
    return net, state


def test_state_round_trip_drops_num_batches_tracked():
    net, state = _torch_state({"arch": "cifar-resnet20", "num_classes": 7})
    back = state_to_net(state, "cifar-resnet20", "s")
    assert back.spec["num_classes"] == 7
    for path, value in {**net.params(), **net.buffers()}.items():
        np.testing.assert_array_equal(back.state_dict()[path], value)


def test_wrong_shape_names_the_first_offender():
    _, state = _torch_state({"arch": "cifar-resnet20"})
    state["layer2.0.conv2.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    with pytest.raises(UserError, match=r"layer2.0.conv2.weight has shape \(32, 32, 1, 1\), "
                                        r"cifar-resnet20 parameter res3a_2b.W needs \(32, 32, 3, 3\)"):
        state_to_net(state, "cifar-resnet20", "s")


def test_missing_and_unused_tensors_are_named():
    _, state = _torch_state({"arch": "cifar-resnet20"})
    with pytest.raises(UserError, match="no tensor for cifar-resnet32 parameter res2d_2a.W"):
        state_to_net(state, "cifar-resnet32", "s")
    state["layer1.0.conv1.bias"] = np.zeros(16, np.float32)
    with pytest.raises(UserError, match="tensor layer1.0.conv1.bias .16,. has no place"):
        state_to_net(state, "cifar-resnet20", "s")


def test_mean_std_checked(tmp_path):
    with pytest.raises(UserError, match="--mean needs 3 values"):
        import_checkpoint(DATA / "cifar_resnet20.pt", "cifar-resnet20", mean=[0.5])
    with pytest.raises(UserError, match="positive"):
        import_checkpoint(DATA / "cifar_resnet20.pt", "cifar-resnet20", std=[1, 0, 1])
