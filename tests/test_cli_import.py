"""CLI tests for `import` and `export`, and for running sensitivity, prune and compress on an
imported PyTorch model with a tiny 32x32 RGB dataset (seconds, not accuracy)."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from npdc.io.modelfile import load_model, read_meta
from tests.conftest import assert_one_line_error, run_cli
from tests.io.torch_fakes import payloads, write_zip

DATA = Path(__file__).resolve().parent / "data" / "torch"
CHECKPOINT = str(DATA / "cifar_resnet20_w8_projection.th")
NORM = ["--mean", "0.4914,0.4822,0.4465", "--std", "0.2470,0.2435,0.2616"]


def _rgb_npz(path, n_train=16, n_test=8, seed=0):
    r = np.random.default_rng(seed)
    arrays = {f"x_{s}": r.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
              for s, n in (("train", n_train), ("test", n_test))}
    arrays.update({f"y_{s}": np.arange(n) % 10 for s, n in (("train", n_train), ("test", n_test))})
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("import")
    model = folder / "r20.h5"
    return folder, model, _rgb_npz(folder / "rgb.npz")


def test_import_writes_a_model_with_pytorch_logits(imported, capsys):
    """import maps the checkpoint onto the architecture, stores the normalisation, records its
    source, and the model gives PyTorch's logits; --data prints the test accuracy."""
    folder, model, data = imported
    code, out, _ = run_cli(["import", CHECKPOINT, "--arch", "cifar-resnet20", "--out", str(model),
                            *NORM, "--data", data, "--threads", "1"], capsys)
    assert code == 0, out
    assert "test accuracy" in out and f"wrote {model}" in out
    net = load_model(model)
    assert net.spec["width"] == 8 and net.spec["shortcut"] == "projection"
    np.testing.assert_allclose(net.mean, [0.4914, 0.4822, 0.4465], rtol=1e-6)
    meta = read_meta(model)
    assert meta["imported_from"] == CHECKPOINT and 0 <= meta["test_accuracy"] <= 1
    with np.load(DATA / "expected.npz") as e:
        x, ref = e["cifar_resnet20_w8_projection.x"], e["cifar_resnet20_w8_projection.logits"]
    assert np.abs(net.predict(x) - ref).max() <= 1e-4


def test_export_npz_holds_every_path(imported, capsys, tmp_path):
    """export writes one plain array per state path, equal to the model's, loadable without pickle."""
    _, model, _ = imported
    out_file = tmp_path / "r20.npz"
    code, out, _ = run_cli(["export", str(model), "--format", "npz", "--out", str(out_file)], capsys)
    assert code == 0 and out_file.is_file()
    state = load_model(model).state_dict()
    with np.load(out_file, allow_pickle=False) as arrays:
        assert set(arrays.files) == set(state)
        assert "res2a_2a.W" in arrays.files and "res3a_1_bn.running_var" in arrays.files
        for key, value in state.items():
            np.testing.assert_array_equal(arrays[key], value)
    assert [p.name for p in tmp_path.iterdir()] == ["r20.npz"]  # no temporary left behind


def test_sensitivity_prune_compress_run_on_the_imported_model(imported, capsys):
    """The whole pipeline accepts an imported model: a sweep, a pruning run and compress."""
    folder, model, data = imported
    code, out, _ = run_cli(["sensitivity", str(model), "--data", data, "--values", "0,1",
                            "--layers", "res2a_2a,fc", "--val-size", "8", "--threads", "1"], capsys)
    assert code == 0 and "res2a_2a" in out
    pruned = folder / "pruned.h5"
    code, out, _ = run_cli(["prune", str(model), "--data", data, "--sparsity", "50", "--epochs", "1",
                            "--batch-size", "8", "--out", str(pruned), "--threads", "1"], capsys)
    assert code == 0 and pruned.is_file()
    config = folder / "tiny.toml"
    config.write_text("batch_size = 8\n[prune]\ntarget = 50.0\nepochs = 1\ntrain_images = 8\n"
                      "[quantize]\nepochs = 1\ntrain_images = 8\n")
    npdc_file = folder / "r20.npdc"
    code, out, _ = run_cli(["compress", str(model), "--data", data, "--config", str(config), "--preset", "fast",
                            "--out", str(npdc_file), "--report", str(folder / "report"),
                            "--threads", "1"], capsys)
    assert code == 0, out
    assert npdc_file.is_file() and (folder / "report" / "report.json").is_file()
    assert npdc_file.stat().st_size < model.stat().st_size


@pytest.mark.parametrize("sub", ["import", "export"])
def test_help(sub, capsys):
    code, out, _ = run_cli([sub, "--help"], capsys)
    assert code == 0 and out.startswith("usage:") and sub in out.splitlines()[0]


@pytest.mark.parametrize("argv,fragment", [
    (["import", "absent.pt", "--arch", "cifar-resnet20", "--out", "x.h5"], "no checkpoint file"),
    (["import", CHECKPOINT, "--arch", "cifar-resnet56", "--out", "x.h5"], "res2d_2a.W"),
    (["import", CHECKPOINT, "--arch", "resnet99", "--out", "x.h5"], "unknown architecture"),
    (["import", CHECKPOINT, "--arch", "cifar-resnet20", "--out", "x.h5", "--mean", "0.5"], "--mean needs 3"),
    (["export", "absent.h5", "--out", "x.npz"], "no model file"),
    (["export", "absent.h5", "--format", "tflite", "--out", "x.npz"], "invalid choice"),
])
def test_user_mistakes_are_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(argv, capsys)
    assert fragment in assert_one_line_error(code, err)
    assert not (tmp_path / "x.h5").exists()


def test_hostile_checkpoint_is_one_line_and_not_run(capsys, tmp_path):
    """A checkpoint that would run a command: one line naming the global, nothing run or written."""
    marker = tmp_path / "marker"
    path = write_zip(tmp_path / "evil.pt", pickle.dumps({"state_dict": payloads(marker)["os.system"]}, protocol=2))
    code, _, err = run_cli(["import", str(path), "--arch", "cifar-resnet20", "--out", str(tmp_path / "m.h5")], capsys)
    line = assert_one_line_error(code, err)
    assert "refused to load global" in line and "system" in line
    assert not marker.exists() and not (tmp_path / "m.h5").exists()
