"""The compress pipeline: validated TOML schedules, a full tiny run, resume after a finished stage."""

import json

import numpy as np
import pytest

from npdc.pipeline.run import Checkpoints, run
from npdc.pipeline.schedule import load_schedule
from npdc.engine.train import train_model
from npdc.errors import UserError
from npdc.io.datasets import load_dataset
from npdc.io.modelfile import save_model


def write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_presets_differ_and_file_overrides_preset(tmp_path):
    fast, full = load_schedule(preset="fast"), load_schedule(preset="full")
    assert fast.prune.target != full.prune.target
    s = load_schedule(write(tmp_path, "[prune]\ntarget = 55\n[quantize]\nconv_bits = 5\n"), "full")
    assert s.prune.target == 55.0 and isinstance(s.prune.target, float)
    assert s.quantize.conv_bits == 5 and s.prune.epochs == full.prune.epochs


@pytest.mark.parametrize("text,needle", [
    ("[prune]\ntargte = 50\n", "prune.targte"),
    ("bogus = 1\n", "'bogus'"),
    ("[prune]\nepochs = 1.5\n", "prune.epochs must be int"),
    ("[prune]\nepochs = true\n", "prune.epochs must be int"),
    ("[prune]\ntarget = 100\n", "prune.target"),
    ("[quantize]\nmethod = 'magic'\n", "quantize.method"),
    ("[quantize]\nlayer_bits = {fc5 = 40}\n", "bits"),
    ("prune = 3\n", "[prune] must be a table"),
    ("[prune\n", "not valid TOML"),
])
def test_bad_schedules_are_user_errors_naming_the_problem(tmp_path, text, needle):
    with pytest.raises(UserError) as e:
        load_schedule(write(tmp_path, text))
    assert needle in str(e.value)


def test_missing_schedule_file_and_unknown_preset(tmp_path):
    with pytest.raises(UserError, match="no schedule file"):
        load_schedule(tmp_path / "none.toml")
    with pytest.raises(UserError, match="preset"):
        load_schedule(preset="huge")


def test_checkpoints_forget_a_different_schedule(tmp_path):
    ck = Checkpoints(tmp_path, "aaaa")
    ck.mark("baseline", {"accuracy": 0.5})
    assert Checkpoints(tmp_path, "aaaa").done == {"baseline": {"accuracy": 0.5}}
    assert Checkpoints(tmp_path, "bbbb").done == {}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 192), ("test", 60)):
        y = np.arange(n) % 3
        arrays[f"x_{split}"] = np.clip(y[:, None, None, None] * 80 + 40 + rng.normal(0, 15, (n, 1, 8, 8)),
                                       0, 255).astype(np.uint8)
        arrays[f"y_{split}"] = y
    np.savez(folder / "d.npz", **arrays)
    data = load_dataset(str(folder / "d.npz"))
    net, _ = train_model({"arch": "resnet18", "input_shape": [1, 8, 8], "num_classes": 3, "width": 2},
                         data.x_train, data.y_train, 2, batch_size=16, progress=False)
    save_model(folder / "m.h5", net)
    schedule = write(folder, "batch_size = 16\n[prune]\ntarget = 60\nepochs = 1\n"
                             "[quantize]\nepochs = 1\nconv_bits = 5\n")
    return folder, data, load_schedule(schedule)


def test_a_tiny_run_compresses_and_verifies(tiny):
    folder, data, schedule = tiny
    out = folder / "m.npdc"
    result = run(folder / "m.h5", data, schedule, out, folder / "work", progress=False, log=lambda *_: None)
    assert out.is_file() and result["size_after_bytes"] == out.stat().st_size
    assert result["ratio"] == pytest.approx(result["size_before_bytes"] / result["size_after_bytes"])
    assert result["ratio"] > 2
    from npdc.codec.model import load_compressed

    net, codes = load_compressed(out)
    zeros = sum(int((net.params()[p] == 0).sum()) for p in codes)
    weights = sum(net.params()[p].size for p in codes)
    assert zeros / weights >= 0.55  # 60 % target with conv1 dense
    state = json.loads((folder / "work" / "state.json").read_text())
    assert set(state["done"]) == {"baseline", "prune", "quantize", "encode", "verify"}


def test_rerun_resumes_without_redoing_finished_stages(tiny):
    folder, data, schedule = tiny
    out = folder / "r.npdc"
    run(folder / "m.h5", data, schedule, out, folder / "work2", progress=False, log=lambda *_: None)
    first = out.read_bytes()
    (folder / "work2" / "pruned.h5").unlink()  # a redone prune or quantize stage would need it
    again = run(folder / "m.h5", data, schedule, out, folder / "work2", progress=False, log=lambda *_: None)
    assert out.read_bytes() == first and again["accuracy_after"] >= 0


def test_same_seed_same_bytes(tiny):
    folder, data, schedule = tiny
    outs = []
    for name in ("s1", "s2"):
        run(folder / "m.h5", data, schedule, folder / f"{name}.npdc", folder / f"w{name}", progress=False,
            log=lambda *_: None)
        outs.append((folder / f"{name}.npdc").read_bytes())
    assert outs[0] == outs[1]


def test_compress_and_report_commands(tiny, capsys):
    from tests.conftest import assert_one_line_error, run_cli

    folder, _, _ = tiny
    config = write(folder, "batch_size = 16\n[prune]\ntarget = 60\nepochs = 1\n[quantize]\nepochs = 0\n")
    code, out, _ = run_cli(["compress", str(folder / "m.h5"), "--data", str(folder / "d.npz"), "--config",
                            str(config), "--report", str(folder / "rep"), "--threads", "1"], capsys)
    assert code == 0, out
    report = json.loads((folder / "rep" / "report.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "size_before_bytes", "size_after_bytes", "ratio",
                "score", "layers"):
        assert key in report
    assert "fc5.W" in (folder / "rep" / "report.md").read_text()
    code, out, _ = run_cli(["report", str(folder / "rep" / "m.npdc"), "--baseline", str(folder / "m.h5"),
                            "--data", str(folder / "d.npz"), "--json", "--threads", "1"], capsys)
    assert code == 0
    parsed = json.loads(out.strip().splitlines()[-1])
    assert parsed["score"]["score"] is not None and parsed["totals"]["ratio"] > 1
    bad = write(folder, "[prune]\nwhat = 1\n")
    code, _, err = run_cli(["compress", str(folder / "m.h5"), "--data", str(folder / "d.npz"), "--config",
                            str(bad), "--report", str(folder / "rep2")], capsys)
    assert "prune.what" in assert_one_line_error(code, err)
