"""`[encode] int8 = true`: `compress` calibrates int8 inference on the training images and the
file it writes carries the scales, which `evaluate --precision int8` then uses without data of
its own training split."""

import json

import numpy as np

from npdc.codec.model import load_compressed, stored_scales
from npdc.runtime.calibrate import calibration_scales
from tests.conftest import run_cli, tiny_model_and_data


def test_compress_stores_int8_scales_that_evaluate_uses(tmp_path, capsys):
    net, data = tiny_model_and_data(tmp_path, 96, 30, epochs=1)
    config = tmp_path / "s.toml"
    config.write_text("batch_size = 16\n[prune]\ntarget = 50\nepochs = 0\n[quantize]\nepochs = 0\n"
                      "[encode]\nint8 = true\nint8_images = 40\n")
    code, out, _ = run_cli(["compress", str(tmp_path / "m.h5"), "--data", str(tmp_path / "d.npz"), "--config",
                            str(config), "--preset", "fast", "--out", str(tmp_path / "m.npdc"), "--report",
                            str(tmp_path / "rep"), "--threads", "1"], capsys)
    assert code == 0, out
    decoded, _ = load_compressed(tmp_path / "m.npdc")
    scales = stored_scales(tmp_path / "m.npdc", decoded)
    assert scales == calibration_scales(decoded, data.x_train, 40)
    with np.load(tmp_path / "d.npz") as f:  # a test split alone: nothing to calibrate on
        np.savez(tmp_path / "test.npz", x_test=f["x_test"], y_test=f["y_test"])
    code, out, _ = run_cli(["evaluate", str(tmp_path / "m.npdc"), "--data", str(tmp_path / "test.npz"),
                            "--precision", "int8", "--json"], capsys)
    assert code == 0, out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["int8_scales"] == "file" and r["precision"] == "int8"
