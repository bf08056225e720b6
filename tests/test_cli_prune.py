"""Tests for the pruning subcommands of the command line (npdc.cli.main run in-process): `prune`
by threshold, by percentage, gradually (AGP) and by filters, its JSON report and user mistakes;
`sensitivity` with a JSON file; `info` on a pruned model."""

import json
import math

import numpy as np
import pytest

from npdc.cli import main
from tests.conftest import assert_one_line_error, run_cli
from npdc.io.modelfile import load_model

LAYER_KINDS = ("Conv2d", "Linear")


def run(argv, capsys):
    return run_cli(argv, capsys)


def _npz(path, n_train=96, n_test=30, seed=0):
    """Three classes of 1x8x8 uint8 images told apart by brightness (50 / 128 / 205, noise 20)."""
    r = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = r.permutation(np.arange(n) % 3)
        base = np.array([50.0, 128.0, 205.0])[y][:, None, None, None]
        arrays[f"x_{split}"] = np.clip(base + r.normal(0, 20, (n, 1, 8, 8)), 0, 255).astype(np.uint8)
        arrays[f"y_{split}"] = y
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny resnet18 trained once through the CLI: (folder, model path, data path)."""
    folder = tmp_path_factory.mktemp("cli_prune")
    data = _npz(folder / "bright.npz")
    model = folder / "teacher.h5"
    code = main(["train", "--arch", "resnet18", "--width", "2", "--data", data, "--epochs", "1",
                 "--batch-size", "16", "--threads", "1", "--out", str(model)])
    assert code == 0
    return folder, model, data


def _prune(trained, tmp_path, *extra, name="pruned.h5"):
    _, model, data = trained
    out = tmp_path / name
    return [  # cheap retraining: one epoch of three batches
        "prune", str(model), "--data", data, "--out", str(out), "--epochs", "1",
        "--batch-size", "32", "--threads", "1", *extra], out


def _layers(net):
    return [(n, layer.params["W"]) for n, layer, _ in net.nodes if type(layer).__name__ in LAYER_KINDS]


def _std(W):
    w = np.asarray(W, np.float64).ravel()
    return math.sqrt(float(np.mean((w - w.mean()) ** 2)))


# -- prune ---------------------------------------------------------------------------------------
def test_prune_by_threshold(trained, tmp_path, capsys):
    """--s 0.8: in every layer exactly the teacher's weights with |w| < std(W) * 0.8 are zero in
    the written model; the printed overall sparsity matches."""
    argv, out = _prune(trained, tmp_path, "--s", "0.8")
    code, stdout, _ = run(argv, capsys)
    assert code == 0 and out.is_file()
    teacher, student = load_model(trained[1]), load_model(out)
    zeros = total = 0
    for (name, Wt), (_, Ws) in zip(_layers(teacher), _layers(student)):
        np.testing.assert_array_equal(Ws == 0, np.abs(Wt.astype(np.float64)) < _std(Wt) * 0.8,
                                      err_msg=name)
        zeros += int((Ws == 0).sum())
        total += Ws.size
    assert 0.2 < zeros / total < 0.8
    assert f"({100 * zeros / total:.2f}% sparse)" in stdout


def test_prune_by_percentage_with_dense_conv1_and_json(trained, tmp_path, capsys):
    """--sparsity 50 --layer-s conv1=0 --json: conv1 stays dense, every other layer loses
    floor(n / 2) weights; the last line is JSON with the sparsity and both accuracies."""
    argv, out = _prune(trained, tmp_path, "--sparsity", "50", "--layer-s", "conv1=0", "--json")
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    report = json.loads(stdout.strip().splitlines()[-1])
    assert {"sparsity", "accuracy_before", "accuracy_after"} <= set(report)
    student = load_model(out)
    zeros = total = 0
    for name, W in _layers(student):
        n_zero = int((W == 0).sum())
        assert n_zero == (0 if name == "conv1" else W.size // 2), name
        zeros += n_zero
        total += W.size
    assert report["sparsity"] == pytest.approx(zeros / total)
    with np.load(trained[2]) as d:
        x, y = d["x_test"], d["y_test"]
    for key, net in (("accuracy_before", load_model(trained[1])), ("accuracy_after", student)):
        assert report[key] == pytest.approx(float(np.mean(net.predict(x).argmax(axis=1) == y)))


def test_prune_agp_reaches_target(trained, tmp_path, capsys):
    """--schedule agp --target 60 (global scope): the written model is 60 % sparse overall
    (floor, up to ties of the cut) and the JSON says so."""
    argv, out = _prune(trained, tmp_path, "--schedule", "agp", "--target", "60", "--json")
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    report = json.loads(stdout.strip().splitlines()[-1])
    student = load_model(out)
    total = sum(W.size for _, W in _layers(student))
    zeros = sum(int((W == 0).sum()) for _, W in _layers(student))
    assert math.floor(0.6 * total) <= zeros <= math.floor(0.6 * total) + 3
    assert report["sparsity"] == pytest.approx(zeros / total)


def test_prune_agp_per_layer_scope_with_dense_conv1(trained, tmp_path, capsys):
    """--agp-scope layer with conv1=0: conv1 dense, every other layer at floor(0.6 n) zeros."""
    argv, out = _prune(trained, tmp_path, "--schedule", "agp", "--target", "60", "--agp-scope",
                       "layer", "--layer-s", "conv1=0")
    code, _, _ = run(argv, capsys)
    assert code == 0
    for name, W in _layers(load_model(out)):
        expected = 0 if name == "conv1" else math.floor(0.6 * W.size + 1e-9)
        assert int((W == 0).sum()) == expected, name


def test_prune_filters_makes_a_smaller_model(trained, tmp_path, capsys):
    """--granularity filter: fewer parameters, a smaller file, spec['channels'] set, the untied
    convs reported with their kept filters and the tied ones as skipped; info still loads it."""
    argv, out = _prune(trained, tmp_path, "--sparsity", "50", "--granularity", "filter")
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    teacher, student = load_model(trained[1]), load_model(out)
    assert student.num_params() < teacher.num_params()
    assert out.stat().st_size < trained[1].stat().st_size
    O = teacher.layers["res3a_2a"].params["W"].shape[0]
    assert student.spec["channels"]["res3a_2a"] == O - O // 2
    assert student.layers["res3a_2a"].params["W"].shape[0] == O - O // 2
    assert f"res3a_2a: {O - O // 2} of {O} filters kept" in stdout
    assert any(line.startswith("res3a_2b: skipped") for line in stdout.splitlines())
    code, info, _ = run(["info", str(out)], capsys)
    assert code == 0 and f"{student.num_params():,} parameters" in info


def test_prune_kd_on_fc5_unlabeled(trained, tmp_path, capsys):
    """--kd l2 --on fc5 --unlabeled retrains from the teacher's embedding alone: the same images
    with every label changed give the very same student, which did move from the pruned teacher
    (the retraining ran) except after fc5; with the labels used (--hard-weight 1, no
    --unlabeled) they matter, and fc6 is trained by them."""
    folder, model, data = trained
    with np.load(data) as d:
        arrays = dict(d)
    arrays["y_train"] = (arrays["y_train"] + 1) % 3
    np.savez(tmp_path / "relabeled.npz", **arrays)
    students = []
    for i, (path, extra) in enumerate([(data, ["--unlabeled"]), (str(tmp_path / "relabeled.npz"), ["--unlabeled"]),
                                       (data, ["--hard-weight", "1"]),
                                       (str(tmp_path / "relabeled.npz"), ["--hard-weight", "1"])]):
        out = tmp_path / f"s{i}.h5"
        code, _, _ = run(["prune", str(model), "--data", path, "--out", str(out), "--epochs", "1",
                          "--batch-size", "32", "--threads", "1", "--sparsity", "30", "--kd", "l2",
                          "--on", "fc5", *extra], capsys)
        assert code == 0
        students.append(load_model(out).params())
    unlabeled, relabeled, labeled, labeled_other = students
    assert all(np.array_equal(unlabeled[k], relabeled[k]) for k in unlabeled)
    assert any(not np.array_equal(labeled[k], labeled_other[k]) for k in labeled)
    teacher = load_model(model).params()
    moved = [k for k in unlabeled if k.endswith(".W") and
             not np.array_equal(unlabeled[k][unlabeled[k] != 0], teacher[k][unlabeled[k] != 0])]
    assert "fc5.W" in moved
    # the loss is on fc5's output: fc6, after it, gets no gradient (only weight decay, ~1e-5 here)
    kept = unlabeled["fc6.W"] != 0
    np.testing.assert_allclose(unlabeled["fc6.W"], teacher["fc6.W"] * kept, rtol=1e-4, atol=1e-7)
    assert not np.allclose(labeled["fc6.W"], teacher["fc6.W"] * (labeled["fc6.W"] != 0), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("extra, needle", [
    (["--schedule", "agp"], "--target"),
    (["--s", "1", "--layer-s", "bogus=1"], "bogus"),
    (["--s", "1", "--layer-s", "conv1=abc"], "abc"),
    (["--sparsity", "50", "--kd", "none", "--unlabeled"], "labels"),
    (["--schedule", "agp", "--target", "100"], "target"),
    (["--sparsity", "150"], "150"),
    (["--s", "1", "--on", "fc9"], "fc9"),
    (["--s", "-1"], "-1"),
])
def test_prune_user_mistakes(trained, tmp_path, capsys, extra, needle):
    """Each mistake is one line naming the problem, exit 2, and no model file is written."""
    argv, out = _prune(trained, tmp_path, *extra)
    code, _, err = run(argv, capsys)
    assert needle in assert_one_line_error(code, err)
    assert not out.exists()


def test_prune_rule_is_required(trained, tmp_path, capsys):
    """Without --s, --sparsity or --schedule argparse refuses in one line."""
    argv, out = _prune(trained, tmp_path)
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err)
    assert not out.exists()


# -- sensitivity ---------------------------------------------------------------------------------
def test_sensitivity_writes_json(trained, tmp_path, capsys):
    """sensitivity --out F.json: baseline, layers (the ones asked for, one row per value) and
    suggested; the baseline is the accuracy on the last --val-size training images."""
    _, model, data = trained
    path = tmp_path / "sens.json"
    code, stdout, _ = run(["sensitivity", str(model), "--data", data, "--layers", "conv1,fc6",
                           "--values", "0,1,3", "--val-size", "40", "--threads", "1",
                           "--out", str(path)], capsys)
    assert code == 0
    result = json.loads(path.read_text())
    assert {"baseline", "layers", "suggested"} <= set(result)
    assert set(result["layers"]) == {"conv1", "fc6"} == set(result["suggested"])
    assert [r["value"] for r in result["layers"]["fc6"]] == [0, 1, 3]
    with np.load(data) as d:
        x, y = d["x_train"][-40:], d["y_train"][-40:]
    net = load_model(model)
    acc = float(np.mean(net.predict(x).argmax(axis=1) == y))
    assert result["baseline"]["accuracy"] == pytest.approx(acc)
    assert result["layers"]["conv1"][0]["accuracy"] == pytest.approx(acc)
    assert result["suggested"]["conv1"] in (0, 1, 3)
    assert "conv1" in stdout and "fc6" in stdout and "suggested" in stdout


def test_sensitivity_unknown_layer(trained, capsys):
    _, model, data = trained
    code, _, err = run(["sensitivity", str(model), "--data", data, "--layers", "conv1,nope"], capsys)
    assert "nope" in assert_one_line_error(code, err)


# -- info ----------------------------------------------------------------------------------------
def test_info_on_pruned_model(trained, tmp_path, capsys):
    """info on a pruned model: a sparsity column with per-layer percentages and the overall
    sparse percentage of the conv/linear weights."""
    argv, out = _prune(trained, tmp_path, "--sparsity", "50", "--layer-s", "conv1=0")
    assert run(argv, capsys)[0] == 0
    code, stdout, _ = run(["info", str(out)], capsys)
    assert code == 0
    lines = stdout.splitlines()
    assert "sparsity" in lines[0].split()
    net = load_model(out)
    zeros = sum(int((W == 0).sum()) for _, W in _layers(net))
    total = sum(W.size for _, W in _layers(net))
    assert f"({100 * zeros / total:.1f}% sparse)" in stdout
    fc5 = next(line for line in lines if line.split() and line.split()[0] == "fc5")
    assert "50.0%" in fc5
    conv1 = next(line for line in lines if line.split() and line.split()[0] == "conv1")
    assert "0.0%" in conv1
