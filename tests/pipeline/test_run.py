"""The compress pipeline: validated TOML schedules, a full tiny run, resume after a finished stage."""

import json

import numpy as np
import pytest

from npdc.errors import UserError
from npdc.pipeline.run import Checkpoints, run
from npdc.pipeline.schedule import load_schedule
from tests.conftest import tiny_model_and_data


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
    net, data = tiny_model_and_data(folder, 192, 60)
    schedule = write(folder, "batch_size = 16\n[prune]\ntarget = 60\nepochs = 1\n"
                             "[quantize]\nepochs = 1\nconv_bits = 5\n")
    return folder, data, load_schedule(schedule, "fast")


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
    assert set(state["done"]) == {"baseline", "prune", "bits", "quantize", "encode", "verify"}


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
                            str(config), "--preset", "fast", "--report", str(folder / "rep"), "--threads", "1"],
                           capsys)
    assert code == 0, out
    report = json.loads((folder / "rep" / "report.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "size_before_bytes", "size_after_bytes", "ratio",
                "score", "layers"):
        assert key in report
    markdown = (folder / "rep" / "report.md").read_text()
    assert "fc5.W" in markdown
    spent = report["stage_seconds"]  # where the run's time went, stage by stage
    assert set(spent) == {"baseline", "prune", "bits", "quantize", "encode", "verify"}
    assert all(0 <= v < 60 * report["minutes"] + 1 for v in spent.values())
    line = next(t for t in markdown.splitlines() if t.startswith("- seconds per stage"))
    assert f"prune {spent['prune']:.0f}" in line and f"verify {spent['verify']:.0f}" in line
    z = report["accuracy_after"]
    assert report["accuracy_images"] == 60  # the tiny dataset's test split
    assert report["accuracy_after_se"] == pytest.approx((z * (1 - z) / 60) ** 0.5)
    code, out, _ = run_cli(["report", str(folder / "rep" / "m.npdc"), "--baseline", str(folder / "m.h5"),
                            "--data", str(folder / "d.npz"), "--json", "--threads", "1"], capsys)
    assert code == 0
    parsed = json.loads(out.strip().splitlines()[-1])
    assert parsed["score"]["score"] is not None and parsed["totals"]["ratio"] > 1
    bad = write(folder, "[prune]\nwhat = 1\n")
    code, _, err = run_cli(["compress", str(folder / "m.h5"), "--data", str(folder / "d.npz"), "--config",
                            str(bad), "--report", str(folder / "rep2")], capsys)
    assert "prune.what" in assert_one_line_error(code, err)


def _stages(**replace):
    """run.STAGES with some stage functions replaced by name."""
    from npdc.pipeline import run as run_module

    return tuple((name, replace.get(name, fn)) for name, fn in run_module.STAGES)


def _must_not_run(name):
    def refuse(_):
        raise AssertionError(f"the finished stage {name!r} ran again")
    return refuse


class Killed(Exception):
    pass


def _killed(_):
    raise Killed


def test_a_resumed_run_calls_no_finished_stage_again(tiny, monkeypatch):
    from npdc.pipeline import run as run_module

    folder, data, schedule = tiny
    out = folder / "resume.npdc"
    first = run(folder / "m.h5", data, schedule, out, folder / "wresume", progress=False, log=lambda *_: None)
    monkeypatch.setattr(run_module, "STAGES", _stages(**{n: _must_not_run(n) for n, _ in run_module.STAGES}))
    again = run(folder / "m.h5", data, schedule, out, folder / "wresume", progress=False, log=lambda *_: None)
    assert again.pop("minutes") >= 0 and first.pop("minutes") >= 0  # the clock goes on; the rest is settled
    assert again == first


@pytest.mark.parametrize("killed_at", ["quantize", "encode"])
def test_a_run_killed_after_a_stage_resumes_there_and_writes_the_same_bytes(tiny, monkeypatch, killed_at):
    """Killed while quantizing (after prune) or while encoding (after quantize): the next run does
    only the stages that had not finished and writes the file an uninterrupted run writes."""
    from npdc.pipeline import run as run_module

    folder, data, schedule = tiny
    whole = folder / "whole.npdc"
    if not whole.is_file():
        run(folder / "m.h5", data, schedule, whole, folder / "wwhole", progress=False, log=lambda *_: None)
    out, work = folder / f"k-{killed_at}.npdc", folder / f"wk-{killed_at}"
    real = dict(run_module.STAGES)
    monkeypatch.setattr(run_module, "STAGES", _stages(**{killed_at: _killed}))
    with pytest.raises(Killed):
        run(folder / "m.h5", data, schedule, out, work, progress=False, log=lambda *_: None)
    finished = list(json.loads((work / "state.json").read_text())["done"])
    names = [n for n, _ in run_module.STAGES]
    assert finished == names[:names.index(killed_at)]
    monkeypatch.setattr(run_module, "STAGES", _stages(**{n: _must_not_run(n) for n in finished},
                                                      **{n: real[n] for n in names if n not in finished}))
    run(folder / "m.h5", data, schedule, out, work, progress=False, log=lambda *_: None)
    assert out.read_bytes() == whole.read_bytes()


def test_the_file_holds_the_retrained_centroids(tiny):
    """After centroid retraining the .npdc decodes to exactly the quantized model's weights, and
    its codebooks are the trained ones, not those k-means started from."""
    from npdc.codec.model import load_compressed
    from npdc.compress.prune import masks_from_zeros
    from npdc.compress.quantize import quantize_net
    from npdc.io.modelfile import load_model
    from npdc.pipeline.run import load_quantized
    from npdc.pipeline.stages import layer_bits

    folder, data, schedule = tiny
    out = folder / "held.npdc"
    run(folder / "m.h5", data, schedule, out, folder / "wheld", progress=False, log=lambda *_: None)
    quantized_net = load_model(folder / "wheld" / "quantized.h5")
    decoded, stored = load_compressed(out)
    checkpoint = load_quantized(folder / "wheld" / "quantized.npz")
    assert set(stored) == set(checkpoint)
    for path, q in stored.items():
        np.testing.assert_array_equal(decoded.params()[path], quantized_net.params()[path])
        np.testing.assert_array_equal(q.indices, checkpoint[path].indices)
        np.testing.assert_array_equal(q.codebook, checkpoint[path].codebook)
    pruned = load_model(folder / "wheld" / "pruned.h5")
    before = quantize_net(pruned, layer_bits(pruned, schedule.quantize), schedule.quantize.method,
                          masks_from_zeros(pruned))
    moved = [p for p in stored if not np.array_equal(stored[p].codebook, before[p].codebook)]
    assert len(moved) == len(stored)  # every layer's centroids were retrained


def test_trained_codebook_reads_each_centroid_back_from_its_members():
    from npdc.compress.quantize import QuantizedLayer
    from npdc.pipeline.stages import trained_codebook

    mask = np.array([[True, False, True], [True, True, False]])
    q = QuantizedLayer.from_assign(np.array([0, 2, 0, 2]), np.array([1.0, 2.0, 3.0], np.float32), mask)
    W = np.array([[1.5, 0.0, 3.5], [1.5, 3.5, 0.0]], np.float32)
    np.testing.assert_array_equal(trained_codebook(W, q), [1.5, 2.0, 3.5])  # centroid 1 has no member


def test_the_quantize_checkpoint_round_trips(tmp_path):
    from npdc.compress.quantize import QuantizedLayer
    from npdc.pipeline.run import load_quantized, save_quantized

    layers = {"a.W": QuantizedLayer(np.array([0, 1, 2, 0]), np.array([0.5, -1.0], np.float32), True),
              "b.W": QuantizedLayer(np.array([1, 1, 2]), np.array([0.25, 4.0], np.float32), False)}
    save_quantized(tmp_path / "q.npz", layers)
    back = load_quantized(tmp_path / "q.npz")
    assert list(back) == list(layers)
    for p, q in layers.items():
        np.testing.assert_array_equal(back[p].indices, q.indices)
        np.testing.assert_array_equal(back[p].codebook, q.codebook)
        assert back[p].sparse == q.sparse and back[p].codebook.dtype == np.float32


def test_the_seed_recipe_cuts_exactly_at_std_times_s():
    """method = std, s = 1, layer_s = conv1=0,fc5=2x, no retraining: every layer keeps exactly the
    weights with |w| >= std(W) * s_layer (conv1 all, fc5 at twice the threshold)."""
    from npdc.engine.resnet import build_net
    from npdc.pipeline.schedule import PruneStage
    from npdc.pipeline.stages import prune_stage

    teacher = build_net({"arch": "resnet18", "input_shape": [1, 8, 8], "num_classes": 3, "width": 2}, seed=3)
    x = np.zeros((4, 1, 8, 8), np.uint8)
    stage = PruneStage(method="std", s=1.0, layer_s="conv1=0,fc5=2x", epochs=0)
    student, record = prune_stage(teacher, x, np.zeros(4, np.int64), stage, progress=False)
    for name, layer in teacher.layers.items():
        if "W" not in layer.params or name not in {r["layer"] for r in record["layers"]}:
            continue
        W = layer.params["W"].astype(np.float64)
        s = {"conv1": 0.0, "fc5": 2.0}.get(name, 1.0)
        expected = np.where(np.abs(W) >= np.std(W) * s, W, 0).astype(np.float32)
        np.testing.assert_array_equal(student.layers[name].params["W"], expected, err_msg=name)


def test_keep_leaves_a_layer_float_and_method_none_skips_pruning(tiny, tmp_path):
    """keep = [conv1]: the file stores conv1 as a float array, not a quantized layer; with
    method = none no weight is pruned."""
    from npdc.codec.model import load_compressed, read_model_file
    from npdc.io.modelfile import load_model

    folder, data, _ = tiny
    config = write(tmp_path, "batch_size = 16\nkeep = ['conv1']\n[prune]\nmethod = 'none'\n"
                             "[quantize]\nepochs = 0\n[encode]\nraw_dtype = 'float32'\n")
    out = tmp_path / "kept.npdc"
    run(folder / "m.h5", data, load_schedule(config, "fast"), out, tmp_path / "w", progress=False,
        log=lambda *_: None)
    stored = {layer.path for layer in read_model_file(out).layers}
    assert "conv1.W" not in stored and "fc5.W" in stored
    teacher, (decoded, codes) = load_model(folder / "m.h5"), load_compressed(out)
    np.testing.assert_array_equal(decoded.params()["conv1.W"], teacher.params()["conv1.W"])
    for path, q in codes.items():
        assert np.count_nonzero(q.indices == 0) == np.count_nonzero(teacher.params()[path] == 0)


@pytest.mark.parametrize("text, name", [("keep = ['convX']\n", "convX"),
                                        ("[quantize]\nlayer_bits = { fcZ = 4 }\n", "fcZ"),
                                        ("[prune]\nlayer_s = 'res9z=0'\n", "res9z")])
def test_unknown_layer_names_are_refused_before_any_stage(tiny, tmp_path, text, name):
    folder, data, _ = tiny
    with pytest.raises(UserError, match=name):
        run(folder / "m.h5", data, load_schedule(write(tmp_path, text), "fast"), tmp_path / "o.npdc", tmp_path / "w",
            progress=False, log=lambda *_: None)
    assert not (tmp_path / "w" / "state.json").exists() or "baseline" not in (tmp_path / "w" / "state.json").read_text()


def test_agp_refuses_per_layer_values_it_cannot_honour(tiny, tmp_path):
    folder, data, _ = tiny
    with pytest.raises(UserError, match="fc5"):
        run(folder / "m.h5", data, load_schedule(write(tmp_path, "[prune]\nlayer_s = 'fc5=2x'\n"), "fast"),
            tmp_path / "o.npdc", tmp_path / "w", progress=False, log=lambda *_: None)
