"""torchvision-named checkpoints (tests/data/torch/torchvision, made by bench/make_torch_fixtures.py
with PyTorch): recognised from names and shapes, imported, and computing PyTorch's logits."""

from pathlib import Path

import numpy as np
import pytest

from npdc.errors import UserError
from npdc.io.torch_arch import recognise
from npdc.io.torch_import import import_checkpoint, state_to_net
from tests.conftest import run_cli

DATA = Path(__file__).resolve().parents[1] / "data" / "torch" / "torchvision"
FIXTURES = {"tv_resnet18_w2": ("tv-resnet18", {"width": 2}),
            "tv_resnet50_w2": ("tv-resnet50", {"width": 2}),
            "mobilenet_v2_w010": ("mobilenet_v2", {"width_mult": 0.1}),
            "squeezenet1_1_w8": ("squeezenet1_1", {"width": 8})}


@pytest.fixture(scope="module")
def expected():
    with np.load(DATA / "expected.npz") as f:
        return dict(f)


@pytest.mark.parametrize("name", sorted(FIXTURES))
@pytest.mark.parametrize("give_arch", [False, True])
def test_logits_equal_pytorchs(name, give_arch, expected):
    arch, sizes = FIXTURES[name]
    net = import_checkpoint(DATA / f"{name}.pt", arch if give_arch else None, expected[f"{name}.mean"],
                            expected[f"{name}.std"], (3, 32, 32))
    assert net.spec == {"arch": arch, "input_shape": [3, 32, 32], "num_classes": 10, **sizes}
    logits = net.predict(expected[f"{name}.x"])
    assert np.abs(logits - expected[f"{name}.logits"]).max() < 1e-4


def _state(arch, **spec):
    from npdc.engine.resnet import build_net
    from npdc.io.export import torch_names

    return torch_names(build_net({"arch": arch, **spec}))


@pytest.mark.parametrize("arch, spec", [
    ("tv-resnet34", {"width": 2}), ("tv-resnet101", {"width": 1}),
    ("mobilenet_v2", {"width_mult": 0.35}), ("mobilenet_v2", {"width_mult": 1.4}),
    ("squeezenet1_1", {"width": 12}), ("cifar-resnet32", {"width": 4}),
])
def test_depth_widths_and_multiplier_are_read_off_the_tensors(arch, spec):
    state = _state(arch, input_shape=[3, 32, 32], num_classes=7, **spec)
    assert recognise(state) == arch
    net = state_to_net(state, None, "ckpt", (3, 32, 32))
    assert net.spec["arch"] == arch and net.shapes[net.output] == (7,)
    assert all(net.spec.get(k) == v for k, v in spec.items()), net.spec


def test_an_unrecognised_checkpoint_names_its_first_tensor():
    state = {"encoder.stem.weight": np.zeros((4, 3, 5, 5), np.float32), "head.weight": np.zeros((2, 4))}
    with pytest.raises(UserError, match=r"ckpt: cannot tell the architecture: .* encoder\.stem\.weight "
                                        r"\(4, 3, 5, 5\)"):
        state_to_net(state, None, "ckpt")
    state = _state("tv-resnet18", input_shape=[3, 32, 32], width=2)
    state["layer2.2.conv1.weight"] = state["layer2.1.conv1.weight"]  # a third block: no ResNet has 2,3,2,2
    with pytest.raises(UserError, match="cannot tell the architecture"):
        state_to_net(state, None, "ckpt")


def test_a_tensor_of_the_wrong_shape_is_named(expected):
    state = _state("mobilenet_v2", input_shape=[3, 32, 32], width_mult=0.5)
    state["features.4.conv.1.0.weight"] = np.zeros((144, 1, 5, 5), np.float32)
    with pytest.raises(UserError, match=r"features\.4\.conv\.1\.0\.weight has shape \(144, 1, 5, 5\)"):
        state_to_net(state, None, "ckpt", (3, 32, 32))


def test_cli_imports_without_arch(tmp_path, capsys, expected):
    out = tmp_path / "m.h5"
    code, stdout, err = run_cli(["import", str(DATA / "squeezenet1_1_w8.pt"), "--out", str(out),
                                 "--input-shape", "3,32,32"], capsys)
    assert code == 0, err
    assert "squeezenet1_1" in stdout
    from npdc.io.modelfile import load_model
    net = load_model(out)
    net.mean, net.std = expected["squeezenet1_1_w8.mean"], expected["squeezenet1_1_w8.std"]
    assert np.abs(net.predict(expected["squeezenet1_1_w8.x"]) - expected["squeezenet1_1_w8.logits"]).max() < 1e-4
