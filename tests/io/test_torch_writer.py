"""state_dicts written in PyTorch's zip format without PyTorch: read back by npdc's own reader,
aligned and deterministic, and `export --format torch` from .h5 and .npdc files (that torch.load
accepts them is checked in bench/test_torch_export.py, where PyTorch may be imported)."""

import zipfile

import numpy as np
import pytest

from npdc.engine.resnet import build_net
from npdc.errors import UserError
from npdc.io.export import torch_names
from npdc.io.torch_checkpoint import load_checkpoint
from npdc.io.torch_import import import_checkpoint
from npdc.io.torch_writer import ALIGN, save_torch_state
from tests.conftest import run_cli

STATE = {"a.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5,
         "a.bias": np.array([1e30, -0.0, np.float32(1) / 3], np.float32),
         "a.num_batches_tracked": np.zeros((), np.int64),
         "big": np.array([-(2 ** 40), 3, 2 ** 62], np.int64),
         "empty": np.zeros((0, 5), np.float32)}


def test_written_state_reads_back_exactly(tmp_path):
    save_torch_state(STATE, tmp_path / "s.pt")
    back = load_checkpoint(tmp_path / "s.pt")
    assert list(back) == list(STATE)
    for k, v in STATE.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_members_are_aligned_and_the_bytes_deterministic(tmp_path):
    save_torch_state(STATE, tmp_path / "a.pt")
    save_torch_state(STATE, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.pt") as z:
        names = z.namelist()
        assert names[:2] == ["archive/data.pkl", "archive/byteorder"] and names[-1] == "archive/version"
        raw = (tmp_path / "a.pt").read_bytes()
        for info in z.infolist():
            start = info.header_offset + 30 + len(info.filename) + len(info.extra)
            assert start % ALIGN == 0
            assert raw[start:start + info.file_size] == z.read(info)


def test_other_dtypes_are_refused(tmp_path):
    with pytest.raises(UserError, match="float64"):
        save_torch_state({"x": np.zeros(2)}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_torchvision_names_and_batch_norm_counters():
    net = build_net({"arch": "squeezenet1_1", "input_shape": [3, 32, 32], "width": 8})
    names = torch_names(net)
    assert "features.3.expand3x3.weight" in names and "classifier.1.bias" in names
    face = torch_names(build_net({"arch": "cifar-resnet20", "width": 4}))
    assert {"conv1.weight", "bn1.num_batches_tracked", "layer2.0.conv1.weight", "fc.weight"} <= set(face)


@pytest.mark.parametrize("source", ["h5", "npdc"])
def test_export_torch_from_model_and_compressed_files(tmp_path, capsys, source):
    from npdc.codec.model import save_compressed
    from npdc.compress.quantize import quantize_net
    from npdc.io.modelfile import save_model

    net = build_net({"arch": "mobilenet_v2", "input_shape": [3, 16, 16], "num_classes": 3, "width_mult": 0.1})
    path = tmp_path / f"m.{source}"
    if source == "h5":
        save_model(path, net)
    else:
        save_compressed(path, net, quantize_net(net, {}, default_bits=4))
    code, _, err = run_cli(["export", str(path), "--format", "torch", "--out", str(tmp_path / "m.pt")], capsys)
    assert code == 0, err
    back = import_checkpoint(tmp_path / "m.pt", None, input_shape=(3, 16, 16))
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16)).astype(np.uint8)
    np.testing.assert_array_equal(back.predict(x), net.predict(x))  # quantized weights when from .npdc
