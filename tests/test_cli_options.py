"""Options of the command line that no other test runs, each run once on a tiny model and checked
for its effect: train --momentum --weight-decay --schedule step, sensitivity --split test --by
sparsity --budget, prune --hard-weight --tau, tune (the printed and stored timings, --no-cache)
and compress --preset."""

import json

import numpy as np
import pytest

from npdc.codec.model import load_compressed
from npdc.compress.prune import prunable_layers
from npdc.engine.conv_plan import net_plan
from npdc.engine.conv_select import cache_file
from npdc.engine.resnet import build_net
from npdc.engine.train import train_model
from npdc.io.modelfile import load_model, read_meta, save_model
from npdc.kernels.conv import PRIMITIVES
from tests.conftest import TINY_CIFAR, run_cli
from tests.test_cli_prune import _npz

SPEC = {"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2, "num_classes": 3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, untrained tiny resnet18 .h5, three-class 1x8x8 .npz): 96 train, 30 test images."""
    folder = tmp_path_factory.mktemp("cli_options")
    save_model(folder / "m.h5", build_net(SPEC, seed=0))
    return folder, folder / "m.h5", _npz(folder / "d.npz")


def _last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def _weights(path):
    return {k: v.copy() for k, v in load_model(path).params().items()}


def test_train_momentum_weight_decay_and_step_schedule(tiny, tmp_path, capsys):
    """The three options reach the optimizer: the written model is the library's train_model
    with the same hyper-parameters, not the one with the defaults, and the metadata says so."""
    _, _, data = tiny
    out = tmp_path / "t.h5"
    code, _, _ = run_cli(["train", "--arch", "resnet18", "--width", "2", "--data", data, "--out", str(out),
                          "--epochs", "2", "--batch-size", "32", "--threads", "1", "--momentum", "0.5",
                          "--weight-decay", "0.01", "--schedule", "step"], capsys)
    assert code == 0
    meta = read_meta(out)
    assert (meta["momentum"], meta["weight_decay"], meta["schedule"]) == (0.5, 0.01, "step")
    with np.load(data) as d:
        x, y = d["x_train"], d["y_train"]
    hyper = dict(batch_size=32, lr=0.1, augment_pad=None)
    ours, _ = train_model(SPEC, x, y, 2, progress=False, momentum=0.5, weight_decay=0.01, schedule="step", **hyper)
    default, _ = train_model(SPEC, x, y, 2, progress=False, **hyper)
    written = _weights(out)
    for path, p in ours.params().items():
        np.testing.assert_allclose(written[path], p, rtol=1e-5, atol=1e-6, err_msg=path)
    assert any(not np.allclose(written[k], p, rtol=1e-3, atol=1e-4) for k, p in default.params().items())


def test_sensitivity_on_the_test_split_by_sparsity_with_a_budget(tiny, tmp_path, capsys):
    """--split test: the baseline is the accuracy on the test split; --by sparsity: the swept
    values are sparsities (0 % leaves the layer as it was); --budget: the suggestion is the
    largest swept sparsity within the budget of the baseline, from the rows printed."""
    _, model, data = tiny
    code, out, _ = run_cli(["sensitivity", str(model), "--data", data, "--split", "test", "--by", "sparsity",
                            "--values", "0,50,95", "--budget", "0.1", "--layers", "conv1,fc6",
                            "--threads", "1", "--json"], capsys)
    assert code == 0
    r = _last_json(out)
    with np.load(data) as d:
        x, y = d["x_test"], d["y_test"]
    acc = float(np.mean(load_model(model).predict(x).argmax(1) == y))
    assert r["by"] == "sparsity" and r["budget"] == 0.1
    assert r["baseline"]["accuracy"] == pytest.approx(acc)
    for name, rows in r["layers"].items():
        assert [row["value"] for row in rows] == [0, 50, 95]
        assert rows[0]["accuracy"] == pytest.approx(acc)
        within = [row["value"] for row in rows if row["accuracy"] >= acc - 0.1]
        assert r["suggested"][name] == max(within), name
    assert "sparsity=50" in out


def test_prune_tau_and_hard_weight_change_the_retraining(tiny, tmp_path, capsys):
    """Same cut, same seed: --tau 1 and --hard-weight 1 each give other retrained weights than
    the defaults (tau 4, no label loss), and the same flags give the same weights again."""
    _, model, data = tiny

    def prune(name, *extra):
        out = tmp_path / name
        argv = ["prune", str(model), "--data", data, "--out", str(out), "--sparsity", "40", "--epochs", "1",
                "--batch-size", "32", "--threads", "1", *extra]
        assert run_cli(argv, capsys)[0] == 0
        return _weights(out)

    base, again = prune("a.h5"), prune("b.h5")
    tau, hard = prune("tau.h5", "--tau", "1"), prune("hard.h5", "--hard-weight", "1")
    assert all(np.array_equal(base[k], again[k]) for k in base)
    for other in (tau, hard):
        assert any(not np.allclose(base[k], other[k], rtol=1e-4, atol=1e-6) for k in base)
        assert all(np.array_equal(base[k] == 0, other[k] == 0) for k in base if k.endswith(".W"))


def _tune(path, capsys, *extra):
    """(printed rows {layer: ({primitive: ms}, plan)}, JSON report) of one tune run."""
    code, out, _ = run_cli(["tune", str(path), "--batch-size", "2", "--mode", "infer", "--threads", "1",
                            "--json", *extra], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    head = lines[1].split()
    rows = {}
    for line in lines[2:]:
        cells = line.split()
        if len(cells) != len(head) or cells[0] == "wrote":
            break
        rows[cells[0]] = ({p: float(c) for p, c in zip(head[1:-1], cells[1:-1]) if c != "-"}, cells[-1])
    return rows, _last_json(out)


def test_tune_plan_is_the_fastest_of_the_printed_and_stored_timings(tmp_path, capsys, monkeypatch):
    """The printed table, the JSON and the timing cache hold the same timings; each layer's plan
    (printed, in the JSON and written into the model) is the fastest of them (a chain of NCHW
    primitives: no layout costs), and every primitive named is a registered one."""
    monkeypatch.setenv("NPDC_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "m.h5"
    save_model(path, build_net(TINY_CIFAR))
    rows, report = _tune(path, capsys)
    stored = json.loads(cache_file().read_text())
    assert set(rows) == set(report["plan"]) == set(report["timings"])
    assert net_plan(load_model(path)) == report["plan"]
    for layer, (printed, plan) in rows.items():
        timings = report["timings"][layer]
        assert set(timings) <= set(PRIMITIVES) and plan == report["plan"][layer]
        assert timings in stored.values()
        assert printed == {p: round(1e3 * t, 2) for p, t in timings.items()}
        assert timings[plan] == min(timings.values()), layer


def test_tune_reads_the_cache_unless_no_cache(tmp_path, capsys, monkeypatch):
    """A tampered cache entry (the slowest primitive made the fastest) is what tune plans from;
    --no-cache times again and ignores it (and leaves the cache as it was)."""
    monkeypatch.setenv("NPDC_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "m.h5"
    save_model(path, build_net(TINY_CIFAR))
    _, first = _tune(path, capsys)
    stored = json.loads(cache_file().read_text())
    for timings in stored.values():
        timings[max(timings, key=timings.get)] = 1e-12
    cache_file().write_text(json.dumps(stored))
    _, cached = _tune(path, capsys)
    choices = [n for n, t in cached["timings"].items() if len(t) > 1]
    assert choices
    for n in choices:
        assert cached["timings"][n][cached["plan"][n]] == 1e-12 and cached["plan"][n] != first["plan"][n], n
    _, fresh = _tune(path, capsys, "--no-cache")
    assert all(t > 1e-9 for ts in fresh["timings"].values() for t in ts.values())
    assert json.loads(cache_file().read_text()) == stored


def test_compress_preset_full_reaches_the_quantizer(tiny, tmp_path, capsys):
    """--preset full under a config that only shortens the run: the schedule in report.json has
    the full preset's bits and prune lr, and the .npdc's codebooks are 5-bit (conv, 31 values
    with pruned weights) and 4-bit (fc, 15)."""
    _, model, data = tiny
    config = tmp_path / "short.toml"
    config.write_text("batch_size = 32\n[prune]\ntarget = 60\nepochs = 1\n[quantize]\nepochs = 0\n")
    code, _, _ = run_cli(["compress", str(model), "--data", data, "--config", str(config), "--preset", "full",
                          "--report", str(tmp_path / "rep"), "--threads", "1"], capsys)
    assert code == 0
    schedule = json.loads((tmp_path / "rep" / "report.json").read_text())["schedule"]
    assert schedule["quantize"]["conv_bits"] == 5 and schedule["quantize"]["fc_bits"] == 4
    assert schedule["prune"]["lr"] == 0.02 and schedule["prune"]["target"] == 60
    net, codes = load_compressed(tmp_path / "rep" / "m.npdc")
    for name in prunable_layers(net):
        q = codes[f"{name}.W"]
        pruned = bool((q.indices == 0).any())  # conv1 stays dense: 2^b values
        assert len(q.codebook) == (15 if name.startswith("fc") else 31) + (0 if pruned else 1), name
