"""`evaluate MODEL.npdc` and `infer MODEL.npdc`: figures, predictions, one-line errors."""

import json

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, rel_err, run_cli
from tests.runtime.conftest import NETS, make_npdc, raw_images


@pytest.fixture
def model_and_data(tmp_path):
    net = make_npdc(tmp_path / "m.npdc", NETS["resnet18"])
    rng = np.random.default_rng(4)
    x = raw_images(net, 12)
    np.savez(tmp_path / "data.npz", x_test=x, y_test=rng.integers(0, 3, 12).astype(np.int64))
    np.savez(tmp_path / "images.npz", x=x[:, 0])  # N x H x W
    return tmp_path, net, x


@pytest.mark.parametrize("weights", ["dense", "stream", "sparse"])
def test_infer_writes_logits_and_classes(model_and_data, capsys, weights):
    d, net, x = model_and_data
    code, out, _ = run_cli(["infer", str(d / "m.npdc"), str(d / "images.npz"), "--out",
                            str(d / "pred.npz"), "--weights", weights, "--batch-size", "5"], capsys)
    assert code == 0 and "12 images" in out
    with np.load(d / "pred.npz") as f:
        ref = net.predict(x)
        assert rel_err(f["logits"], ref) < 1e-5
        np.testing.assert_array_equal(f["classes"], f["logits"].argmax(axis=1))


def test_evaluate_npdc_ends_with_the_figures_as_json(model_and_data, capsys):
    d, net, x = model_and_data
    code, out, _ = run_cli(["evaluate", str(d / "m.npdc"), "--data", str(d / "data.npz"), "--json"], capsys)
    assert code == 0
    r = json.loads(out.strip().splitlines()[-1])
    for key in ("accuracy", "size_bytes", "peak_memory_bytes", "baseline_peak_memory_bytes",
                "images_per_s", "latency_ms_b1", "score"):
        assert key in r
    with np.load(d / "data.npz") as f:
        assert r["accuracy"] == pytest.approx(float((net.predict(x).argmax(1) == f["y_test"]).mean()))
    assert r["size_bytes"] == (d / "m.npdc").stat().st_size
    assert 0 < r["peak_memory_bytes"] < r["baseline_peak_memory_bytes"]


@pytest.mark.parametrize("command", ["infer", "evaluate"])
def test_a_corrupt_file_is_one_line_and_exit_2(model_and_data, capsys, command):
    d, _, _ = model_and_data
    data = bytearray((d / "m.npdc").read_bytes())
    data[len(data) // 2] ^= 0x10
    (d / "bad.npdc").write_bytes(bytes(data))
    args = {"infer": ["infer", str(d / "bad.npdc"), str(d / "images.npz"), "--out", str(d / "p.npz")],
            "evaluate": ["evaluate", str(d / "bad.npdc"), "--data", str(d / "data.npz")]}[command]
    line = assert_one_line_error(*run_cli(args, capsys)[::2])
    assert "bad.npdc" in line and not (d / "p.npz").exists()


def test_infer_mistakes_are_one_line(model_and_data, capsys):
    d, _, _ = model_and_data
    np.savez(d / "wrong.npz", x=np.zeros((2, 1, 5, 5), np.uint8))
    for args in (["infer", str(d / "m.npdc"), str(d / "none.npz"), "--out", str(d / "p.npz")],
                 ["infer", str(d / "m.npdc"), str(d / "wrong.npz"), "--out", str(d / "p.npz")],
                 ["infer", str(d / "m.npdc"), str(d / "images.npz"), "--out", str(d / "p.npz"),
                  "--weights", "packed"]):
        assert_one_line_error(*run_cli(args, capsys)[::2])


def test_evaluate_npdc_with_dense_batches_names_the_primitives_and_obeys_primitive(model_and_data, capsys):
    d, net, x = model_and_data
    args = ["evaluate", str(d / "m.npdc"), "--data", str(d / "data.npz"), "--weights", "dense",
            "--batch-size", "4", "--json"]
    code, out, _ = run_cli(args + ["--walk", "python"], capsys)
    primitives = json.loads(out.strip().splitlines()[-1])["primitives"]
    assert code == 0 and "conv primitives: conv1 " in out
    assert set(primitives) == {n for n, layer, _ in net.nodes if type(layer).__name__ == "Conv2d"}
    code, out, _ = run_cli(args + ["--primitive", "im2col"], capsys)
    assert code == 0 and set(json.loads(out.strip().splitlines()[-1])["primitives"].values()) == {"im2col"}
    code, out, _ = run_cli(args[:4] + ["--json"], capsys)  # the defaults: sparse weights
    assert json.loads(out.strip().splitlines()[-1])["primitives"] == {}


@pytest.mark.parametrize("command", ["infer", "evaluate"])
def test_a_huge_batch_size_costs_no_more_than_the_images(model_and_data, capsys, command):
    """--batch-size 1000000 on 12 images: the runtime is built for the 12 images it runs, so
    the command allocates a few megabytes, not the 10+ GB a million-image arena would take."""
    import tracemalloc

    d, net, x = model_and_data
    argv = (["infer", str(d / "m.npdc"), str(d / "images.npz"), "--out", str(d / "p.npz")]
            if command == "infer" else ["evaluate", str(d / "m.npdc"), "--data", str(d / "data.npz")])
    tracemalloc.start()
    try:
        code, _, err = run_cli(argv + ["--batch-size", "1000000", "--weights", "dense"], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    assert peak < 64 << 20
