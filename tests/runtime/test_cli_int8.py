"""`evaluate FILE.npdc --precision int8` and `infer … --precision int8`: calibrated on the data's
training images, the predictions those of the integer runtime, mistakes one line."""

import json

import numpy as np
import pytest

from npdc.codec.model import load_compressed
from npdc.runtime.calibrate import calibration_scales
from npdc.runtime.int8 import Int8Runtime
from tests.conftest import assert_one_line_error, run_cli
from tests.runtime.conftest import NETS, make_npdc, raw_images


@pytest.fixture
def model_and_data(tmp_path):
    net = make_npdc(tmp_path / "m.npdc", NETS["cifar-resnet20"])
    rng = np.random.default_rng(4)
    x, x_train = raw_images(net, 10), raw_images(net, 40, seed=9)
    np.savez(tmp_path / "data.npz", x_test=x, y_test=rng.integers(0, 4, 10).astype(np.int64),
             x_train=x_train, y_train=rng.integers(0, 4, 40).astype(np.int64))
    np.savez(tmp_path / "test_only.npz", x_test=x, y_test=rng.integers(0, 4, 10).astype(np.int64))
    np.savez(tmp_path / "images.npz", x=x)
    return tmp_path, net, x, x_train


def test_infer_int8_writes_the_integer_runtimes_logits(model_and_data, capsys):
    d, net, x, x_train = model_and_data
    code, out, _ = run_cli(["infer", str(d / "m.npdc"), str(d / "images.npz"), "--out", str(d / "p.npz"),
                            "--precision", "int8", "--data", str(d / "data.npz"), "--calibration", "20"],
                           capsys)
    assert code == 0 and "10 images" in out
    decoded, _ = load_compressed(d / "m.npdc")
    expected = Int8Runtime(decoded, calibration_scales(decoded, x_train, 20), batch=10).predict(x)
    with np.load(d / "p.npz") as f:
        assert np.array_equal(f["logits"], expected)
        float_logits = net.predict(x)
        assert np.abs(f["logits"] - float_logits).max() <= 0.1 * np.abs(float_logits).max()


def test_evaluate_int8_reports_its_precision_and_kernels(model_and_data, capsys):
    d, _, _, _ = model_and_data
    code, out, _ = run_cli(["evaluate", str(d / "m.npdc"), "--data", str(d / "data.npz"), "--precision",
                            "int8", "--calibration-method", "percentile", "--json"], capsys)
    assert code == 0 and "(int8)" in out and "integer-only int8" in out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["precision"] == "int8" and r["sparse_layers"] == []
    assert all(k.startswith("int8-") for k in r["kernels"].values())
    assert 0 < r["peak_memory_bytes"] < r["baseline_peak_memory_bytes"]


@pytest.mark.parametrize("args,message", [
    (["infer", "{d}/m.npdc", "{d}/images.npz", "--out", "{d}/p.npz", "--precision", "int8"], "give --data"),
    (["evaluate", "{d}/m.npdc", "--data", "{d}/test_only.npz", "--precision", "int8"], "train split"),
    (["evaluate", "{d}/m.npdc", "--data", "{d}/data.npz", "--precision", "int8", "--calibration", "0"],
     "calibration"),
])
def test_int8_mistakes_are_one_line(model_and_data, capsys, args, message):
    d = model_and_data[0]
    line = assert_one_line_error(*run_cli([a.format(d=d) for a in args], capsys)[::2])
    assert message in line
