"""Imported ONNX models (PyTorch exports with batch norm folded into conv biases: an option-A CIFAR
ResNet, a reduced MobileNetV2 and ResNet-50) go through prune, compress --preset fast and the
runtime like the built-in nets, on a tiny 32x32 RGB dataset (seconds, not accuracy)."""

from pathlib import Path

import numpy as np
import pytest

from npdc.codec.model import load_compressed
from npdc.io.modelfile import load_model
from npdc.runtime.infer import load_runtime
from tests.conftest import rel_err, run_cli
from tests.test_cli_import import NORM, _rgb_npz

pytest.importorskip("onnx")

DATA = Path(__file__).resolve().parents[1] / "data" / "torch" / "torchvision"


@pytest.mark.parametrize("name", ["cifar_resnet8_w4", "mobilenet_v2_w010", "tv_resnet50_w2"])
def test_an_imported_onnx_model_prunes_compresses_and_runs(tmp_path, capsys, name):
    data, model = _rgb_npz(tmp_path / "rgb.npz"), tmp_path / "m.h5"
    code, out, err = run_cli(["import", str(DATA / f"{name}.onnx"), "--out", str(model), *NORM], capsys)
    assert code == 0, err
    pruned = tmp_path / "pruned.h5"
    code, out, err = run_cli(["prune", str(model), "--data", data, "--sparsity", "50", "--epochs", "1",
                              "--batch-size", "8", "--out", str(pruned), "--threads", "1"], capsys)
    assert code == 0, err
    net = load_model(pruned)
    convs = [layer.params["W"] for _, layer, _ in net.nodes if "W" in layer.params and layer.params["W"].ndim == 4]
    assert all("b" in layer.params for _, layer, _ in net.nodes if getattr(layer, "groups", None))  # folded BN
    assert sum((w == 0).sum() for w in convs) > 0.3 * sum(w.size for w in convs)
    config = tmp_path / "tiny.toml"
    config.write_text("batch_size = 8\n[prune]\ntarget = 50.0\nepochs = 1\ntrain_images = 8\nlayer_s = ''\n"
                      "[quantize]\nepochs = 1\ntrain_images = 8\n")
    npdc_file = tmp_path / "m.npdc"
    code, out, err = run_cli(["compress", str(model), "--data", data, "--config", str(config), "--preset",
                              "fast", "--out", str(npdc_file), "--threads", "1"], capsys)
    assert code == 0, err
    assert npdc_file.stat().st_size < model.stat().st_size
    decoded = load_compressed(npdc_file)[0]
    images = np.load(data)["x_test"]
    assert rel_err(load_runtime(npdc_file, "sparse", 4).predict(images), decoded.predict(images)) < 1e-5


def test_sensitivity_sweeps_an_imported_model_by_its_pytorch_names(tmp_path, capsys):
    data, model = _rgb_npz(tmp_path / "rgb.npz"), tmp_path / "m.h5"
    code, _, err = run_cli(["import", str(DATA / "cifar_resnet8_w4.onnx"), "--out", str(model), *NORM], capsys)
    assert code == 0, err
    code, out, err = run_cli(["sensitivity", str(model), "--data", data, "--values", "0,1", "--layers",
                              "layer2.0.conv1,linear", "--val-size", "8", "--threads", "1"], capsys)
    assert code == 0, err
    assert "layer2.0.conv1" in out and "linear" in out
