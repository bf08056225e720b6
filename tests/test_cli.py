"""Tests for the command line (npdc.cli.main run in-process): help texts, the train → evaluate →
info path on a tiny dataset, the speed report, and user mistakes as one line plus exit code 2."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from npdc import __version__
from npdc.cli import build_parser, main
from tests.conftest import assert_one_line_error, run_cli
from npdc.io.modelfile import load_model, read_meta

SUBCOMMANDS = ["train", "evaluate", "info", "speed"]


def run(argv, capsys):
    return run_cli(argv, capsys)


def _npz(path, n_train=64, n_test=16, shape=(1, 8, 8), seed=0):
    """A tiny dataset: images whose class is their mean brightness (dark 0 / bright 1)."""
    r = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        if not n:
            continue
        y = np.arange(n) % 2
        x = np.clip(np.where(y[:, None, None, None], 170, 85) + r.normal(0, 30, (n, *shape)),
                    0, 255).astype(np.uint8)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once through the CLI: (exit code, model path, data path)."""
    folder = tmp_path_factory.mktemp("cli")
    data = _npz(folder / "toy.npz")
    model = folder / "toy-resnet18.h5"
    code = main(["train", "--arch", "resnet18", "--width", "2", "--epochs", "1",
                 "--batch-size", "16", "--threads", "1", "--data", data, "--out", str(model)])
    return code, model, data


# -- help ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_subcommand_help_exits_zero(sub, capsys):
    """`npdc SUB --help` prints a usage text for SUB and exits 0."""
    code, out, _ = run([sub, "--help"], capsys)
    assert code == 0
    assert out.startswith("usage:") and sub in out.splitlines()[0]


def test_primitive_help_names_every_registered_primitive(capsys):
    """The --primitive help is written out (the CLI imports no kernels to print help); it must
    name each primitive the registry has."""
    from npdc.kernels.conv import PRIMITIVES

    code, out, _ = run(["tune", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert all(name in text for name in PRIMITIVES)


def _undocumented(parser):
    """The options and positionals of `parser` whose help is missing, blank or suppressed."""
    return [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
            if not (a.help or "").strip() or a.help == argparse.SUPPRESS]


def test_every_subcommand_option_and_positional_has_help():
    """`--help` explains every argument: walking every subcommand of build_parser(), each one
    has a one-line summary in `npdc --help` and each of its options and positionals a non-empty
    help text, so an argument added without one fails here."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: (a.help or "").strip() for a in sub._choices_actions}
    assert sub.choices and set(summaries) == set(sub.choices)
    missing = {name: _undocumented(p) for name, p in sub.choices.items()}
    missing = {name: args for name, args in missing.items() if args}
    missing.update({name: ["(summary)"] for name, text in summaries.items() if not text})
    assert not missing, f"arguments without help: {missing}"


def test_help_check_finds_an_undocumented_argument():
    """The check above is not vacuous: an option or positional added without help is found."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    evaluate = sub.choices["evaluate"]
    assert _undocumented(evaluate) == []
    evaluate.add_argument("--undocumented")
    evaluate.add_argument("positional_undocumented", help="  ")
    assert _undocumented(evaluate) == ["--undocumented", "positional_undocumented"]


def test_top_level_help_lists_subcommands(capsys):
    """`npdc --help` names every subcommand."""
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert all(sub in out for sub in SUBCOMMANDS)


def test_module_entry_point_version():
    """`python -m npdc --version` works as a process and reports the package version."""
    run_ = subprocess.run([sys.executable, "-m", "npdc", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert run_.returncode == 0
    assert __version__ in run_.stdout


# -- train / evaluate / info ---------------------------------------------------------------------
def test_train_writes_a_model_file(trained):
    """train exits 0 and writes a loadable model with the requested width and its run record."""
    code, model, _ = trained
    assert code == 0
    net = load_model(model)
    assert net.spec["arch"] == "resnet18" and net.spec["width"] == 2
    assert net.in_shape == (1, 8, 8) and net.shapes[net.output] == (2,)
    meta = read_meta(model)
    assert meta["epochs"] == 1 and meta["batch_size"] == 16 and len(meta["history"]) == 1
    assert 0 <= meta["test_accuracy"] <= 1


def test_evaluate_json(trained, capsys):
    """evaluate --json ends with one JSON line whose figures match the model and the data."""
    _, model, data = trained
    code, out, _ = run(["evaluate", str(model), "--data", data, "--json", "--threads", "1"], capsys)
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert {"accuracy", "params", "size_bytes", "macs", "images_per_s"} <= set(report)
    net = load_model(model)
    with np.load(data) as d:
        x, y = d["x_test"], d["y_test"]
    assert report["accuracy"] == pytest.approx(np.mean(net.predict(x).argmax(axis=1) == y))
    assert report["params"] == net.num_params()
    assert report["size_bytes"] == 4 * net.num_params()
    assert report["macs"] == net.macs()
    assert report["images_per_s"] > 0


def test_info_table(trained, capsys):
    """info prints one table row per layer (fc5 among them) and the totals."""
    _, model, _ = trained
    code, out, _ = run(["info", str(model)], capsys)
    assert code == 0
    net = load_model(model)
    first_words = [line.split()[0] for line in out.splitlines() if line.strip()]
    for name, _, _ in net.nodes:
        assert name in first_words, name
    assert "fc5" in first_words
    assert f"{net.num_params():,} parameters" in out


def test_speed_json(capsys):
    """speed --json: positive rates, the settings asked for, and for every conv layer of the net
    (no other key) the primitive it ran, a real registry entry that accepts the layer's shape
    (the default choice, as no plan or --primitive was given); the printed lines agree."""
    from npdc.engine.conv_plan import conv_layers
    from npdc.engine.resnet import build_net
    from npdc.kernels.conv import PRIMITIVES, default_primitive

    code, out, _ = run(["speed", "--arch", "cifar-resnet20", "--input-shape", "3,8,8",
                        "--batch-size", "4", "--repeats", "1", "--json", "--threads", "1"], capsys)
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    for key in ("train_img_s", "infer_img_s", "b1_latency_ms"):
        assert isinstance(report[key], float) and report[key] > 0, key
    assert report["arch"] == "cifar-resnet20" and report["batch_size"] == 4 and report["threads"] == 1
    net = build_net({"arch": "cifar-resnet20", "input_shape": [3, 8, 8]})
    layers = dict(conv_layers(net))
    assert set(report["primitives"]) == set(layers)
    for name, primitive in report["primitives"].items():
        layer = layers[name]
        shape = ((4,) + layer.in_shape, layer.params["W"].shape, layer.stride, layer.padding, layer.groups)
        assert primitive in PRIMITIVES and PRIMITIVES[primitive].refuse(*shape) is None, name
        assert primitive == default_primitive(*shape), name
    assert f"train {report['train_img_s']:.1f} images/s" in out
    assert "conv primitives: " + ", ".join(f"{n} {p}" for n, p in report["primitives"].items()) in out


# -- user mistakes -------------------------------------------------------------------------------
def test_missing_model_file(tmp_path, capsys):
    """evaluate on a path with no file: exit 2, one line naming the path."""
    data = _npz(tmp_path / "d.npz", n_train=0)
    code, _, err = run(["evaluate", str(tmp_path / "absent.h5"), "--data", data], capsys)
    assert "absent.h5" in assert_one_line_error(code, err)


def test_info_on_non_model_file(tmp_path, capsys):
    """info on a file that is not a model: exit 2, one line."""
    bad = tmp_path / "m.h5"
    bad.write_bytes(b"\x00" * 100)
    code, _, err = run(["info", str(bad)], capsys)
    assert_one_line_error(code, err)


@pytest.mark.parametrize("sub", ["train", "speed"])
def test_unknown_architecture(sub, tmp_path, capsys):
    """An unknown --arch is one line naming it, exit 2."""
    argv = {"train": ["train", "--arch", "resnet9000", "--data", _npz(tmp_path / "d.npz"),
                      "--out", str(tmp_path / "m.h5")],
            "speed": ["speed", "--arch", "resnet9000"]}[sub]
    code, _, err = run(argv, capsys)
    assert "resnet9000" in assert_one_line_error(code, err)
    assert not (tmp_path / "m.h5").exists()


def test_dataset_without_test_split(trained, tmp_path, capsys):
    """evaluate on an .npz holding only x_train/y_train: exit 2, one line about the split."""
    _, model, _ = trained
    data = _npz(tmp_path / "trainonly.npz", n_test=0)
    code, _, err = run(["evaluate", str(model), "--data", data], capsys)
    assert "test" in assert_one_line_error(code, err)


def test_image_shape_mismatch(trained, tmp_path, capsys):
    """A 10x10 test set for an 8x8 model: exit 2, one line giving both shapes."""
    _, model, _ = trained
    data = _npz(tmp_path / "big.npz", n_train=0, shape=(1, 10, 10))
    code, _, err = run(["evaluate", str(model), "--data", data], capsys)
    line = assert_one_line_error(code, err)
    assert "10" in line and "8" in line


@pytest.mark.parametrize("argv", [
    [],
    ["train", "--arch", "resnet18"],
    ["evaluate"],
    ["speed"],
    ["info"],
    ["frobnicate"],
    ["train", "--arch", "resnet18", "--data", "x.npz", "--out", "m.h5", "--epochs", "many"],
])
def test_usage_errors_are_one_line(argv, capsys):
    """Missing required arguments, unknown subcommands and unparsable numbers: one line, 2."""
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err)


def test_width_only_for_resnet18(tmp_path, capsys):
    """--width with a CIFAR ResNet is refused in one line."""
    code, _, err = run(["train", "--arch", "cifar-resnet20", "--width", "4", "--data",
                        _npz(tmp_path / "d.npz"), "--out", str(tmp_path / "m.h5")], capsys)
    assert "--width" in assert_one_line_error(code, err)


def test_speed_non_numeric_input_shape(capsys):
    """--input-shape 3,x,8 is a user mistake: one line and exit 2, not a ValueError traceback."""
    code, _, err = run(["speed", "--arch", "cifar-resnet20", "--input-shape", "3,x,8",
                        "--threads", "1"], capsys)
    assert_one_line_error(code, err)


def test_speed_input_shape_of_wrong_length(capsys):
    """--input-shape with two numbers cannot build the net: one line and exit 2."""
    code, _, err = run(["speed", "--arch", "cifar-resnet20", "--input-shape", "3,8"], capsys)
    assert_one_line_error(code, err)


def test_train_batch_size_zero(tmp_path, capsys):
    """--batch-size 0 is a user mistake: one line and exit 2, not a ZeroDivisionError."""
    code, _, err = run(["train", "--arch", "resnet18", "--width", "2", "--epochs", "1",
                        "--batch-size", "0", "--threads", "1", "--data", _npz(tmp_path / "d.npz"),
                        "--out", str(tmp_path / "m.h5")], capsys)
    assert_one_line_error(code, err)
    assert not (tmp_path / "m.h5").exists()


def test_evaluate_batch_size_zero(trained, capsys):
    """evaluate --batch-size 0 is a user mistake: one line and exit 2, not a range() error."""
    _, model, data = trained
    code, _, err = run(["evaluate", str(model), "--data", data, "--batch-size", "0"], capsys)
    assert_one_line_error(code, err)


def test_labels_beyond_the_models_classes(trained, tmp_path, capsys):
    """A test set with labels 0..4 for a 2-class model does not fit the model: one line and
    exit 2 (like an image-shape mismatch), not an IndexError from the loss."""
    _, model, _ = trained
    path = tmp_path / "five.npz"
    r = np.random.default_rng(1)
    np.savez(path, x_test=r.integers(0, 256, (10, 1, 8, 8)).astype(np.uint8),
             y_test=np.arange(10) % 5)
    code, _, err = run(["evaluate", str(model), "--data", str(path)], capsys)
    assert_one_line_error(code, err)
