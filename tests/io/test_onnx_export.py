"""`export --format onnx`: ONNX Runtime (used here only to check exported files) given the same
pixels computes npdc's logits, for every architecture family and a graph of every op, from .h5
and .npdc files; without the onnx package, one line saying what to install."""

import numpy as np
import pytest

from npdc.engine.resnet import build_net
from npdc.errors import UserError
from npdc.io import onnx_export
from tests.conftest import run_cli
from tests.engine.test_graph import SPEC
from tests.runtime.conftest import randomise_bn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SPECS = {
    "tv-resnet50": {"arch": "tv-resnet50", "input_shape": [3, 32, 32], "num_classes": 5, "width": 2},
    "mobilenet_v2": {"arch": "mobilenet_v2", "input_shape": [3, 32, 32], "num_classes": 5, "width_mult": 0.1},
    "squeezenet1_1": {"arch": "squeezenet1_1", "input_shape": [3, 32, 32], "num_classes": 5, "width": 8},
    "cifar-resnet20": {"arch": "cifar-resnet20", "input_shape": [3, 16, 16], "num_classes": 4, "width": 4},
    "resnet18-prelu": {"arch": "resnet18", "input_shape": [1, 12, 12], "width": 2, "embedding": 4,
                       "num_classes": 3, "activation": "prelu"},
    "graph": SPEC,
}


def _ort_logits(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images"
    return session.run(None, {"images": x.astype(np.float32) / 255})[0]


def _net(spec):
    net = build_net(spec, seed=1)
    randomise_bn(net, np.random.default_rng(0))
    rng = np.random.default_rng(3)
    net.mean = rng.uniform(0.2, 0.6, net.in_shape[0]).astype(np.float32)
    net.std = rng.uniform(0.2, 0.5, net.in_shape[0]).astype(np.float32)
    return net


@pytest.mark.parametrize("name", sorted(SPECS))
def test_onnx_runtime_computes_npdcs_logits(tmp_path, name):
    net = _net(SPECS[name])
    onnx_export.export_onnx(net, tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    assert model.opset_import[0].version >= 13
    x = np.random.default_rng(2).integers(0, 256, (3,) + net.in_shape).astype(np.uint8)
    assert np.abs(_ort_logits(tmp_path / "m.onnx", x) - net.predict(x)).max() <= 1e-4


def test_export_cli_from_a_compressed_file(tmp_path, capsys):
    from npdc.codec.model import load_compressed, save_compressed
    from npdc.compress.quantize import quantize_net

    net = _net(SPECS["mobilenet_v2"])
    save_compressed(tmp_path / "m.npdc", net, quantize_net(net, {}, default_bits=4))
    code, _, err = run_cli(["export", str(tmp_path / "m.npdc"), "--format", "onnx", "--out",
                            str(tmp_path / "m.onnx")], capsys)
    assert code == 0, err
    decoded = load_compressed(tmp_path / "m.npdc")[0]
    x = np.random.default_rng(4).integers(0, 256, (2, 3, 32, 32)).astype(np.uint8)
    assert np.abs(_ort_logits(tmp_path / "m.onnx", x) - decoded.predict(x)).max() <= 1e-4


def test_without_the_onnx_package_it_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "onnx", None)
    with pytest.raises(UserError, match=r'install npdc\[onnx\]: pip install -e "\.\[onnx\]"'):
        onnx_export.export_onnx(build_net(SPEC), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
