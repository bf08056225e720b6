"""Careless command lines: outputs onto inputs, outputs that cannot be written, numbers that are
not finite, a dataset that does not fit, an empty test split. Each is one line and exit 2,
checked before any long work; and the pieces behind them (stale temporaries, progress bars, a
non-finite loss) in isolation."""

import os
import time

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_cli
from tests.hostile import files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny model (.h5), its .npdc, and a tiny dataset (.npz) that fits it."""
    from npdc.codec.container import pack_container
    from npdc.io.modelfile import save_model

    folder = tmp_path_factory.mktemp("inputs")
    save_model(folder / "m.h5", files.tiny_net(), {})
    (folder / "c.npdc").write_bytes(pack_container(files.valid_sections()))
    rng = np.random.default_rng(0)
    arrays = {f"x_{s}": rng.integers(0, 255, (n, 1, 8, 8), dtype=np.uint8) for s, n in (("train", 32), ("test", 8))}
    arrays.update(y_train=np.arange(32) % 3, y_test=np.arange(8) % 3)
    np.savez(folder / "d.npz", **arrays)
    np.savez(folder / "images.npz", x=arrays["x_test"])
    np.savez(folder / "empty.npz", x_train=arrays["x_train"], y_train=arrays["y_train"],
             x_test=arrays["x_test"][:0], y_test=arrays["y_test"][:0])
    np.savez(folder / "wide.npz", **{k: (np.zeros((len(v), 1, 9, 9), np.uint8) if k.startswith("x") else v)
                                     for k, v in arrays.items()})
    return folder


def _refused(capsys, argv, needle):
    code, _, err = run_cli(argv, capsys)
    line = assert_one_line_error(code, err)
    assert needle in line, line
    return line


ONTO_INPUT = [  # (argv with M = model.h5, C = .npdc, D = dataset, I = images; the output last)
    ["compress", "M", "--data", "D", "--out", "M"],
    ["decompress", "C", "--out", "C"],
    ["prune", "M", "--data", "D", "--s", "1", "--out", "M"],
    ["train", "--arch", "resnet18", "--data", "D", "--out", "D"],
    ["export", "M", "--out", "M"],
    ["infer", "C", "I", "--out", "I"],
    ["import", "M", "--arch", "resnet18", "--out", "M"],
    ["sensitivity", "M", "--data", "D", "--out", "D"],
]


def _argv(folder, template, link=None):
    names = {"M": "m.h5", "C": "c.npdc", "D": "d.npz", "I": "images.npz"}
    argv = [str(folder / names[a]) if a in names else a for a in template]
    if link is not None:
        argv[-1] = str(link)
    return argv


@pytest.mark.parametrize("template", ONTO_INPUT, ids=[t[0] for t in ONTO_INPUT])
def test_an_output_onto_an_input_is_refused(inputs, capsys, template):
    before = {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()}
    _refused(capsys, _argv(inputs, template), "refusing to write over an input")
    assert {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("kind", ["hard link", "symlink"])
def test_links_to_an_input_are_the_input(inputs, tmp_path, capsys, kind):
    link = tmp_path / "alias.h5"
    (os.link if kind == "hard link" else os.symlink)(inputs / "m.h5", link)
    before = (inputs / "m.h5").read_bytes()
    _refused(capsys, _argv(inputs, ["export", "M", "--out", "M"], link), "refusing to write over an input")
    _refused(capsys, _argv(inputs, ["compress", "M", "--data", "D", "--out", "M"], link), "over an input")
    assert (inputs / "m.h5").read_bytes() == before


def test_outputs_that_cannot_be_files(inputs, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("x")
    _refused(capsys, _argv(inputs, ["export", "M", "--out", "M"], tmp_path / "folder"), "is a directory")
    _refused(capsys, _argv(inputs, ["decompress", "C", "--out", "C"], tmp_path / "plain" / "m.h5"), "is a file")
    _refused(capsys, _argv(inputs, ["compress", "M", "--data", "D", "--report", str(tmp_path / "plain")]),
             "is a file, not a folder")
    if os.geteuid() != 0:  # root may write anywhere, so only others can see the refusal
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _refused(capsys, _argv(inputs, ["export", "M", "--out", "M"], locked / "m.npz"), "permission denied")


NOT_FINITE = [
    ["train", "--arch", "resnet18", "--data", "D", "--out", "x.h5", "--lr", "nan"],
    ["train", "--arch", "resnet18", "--data", "D", "--out", "x.h5", "--momentum", "inf"],
    ["train", "--arch", "resnet18", "--data", "D", "--out", "x.h5", "--weight-decay", "-inf"],
    ["train", "--arch", "resnet18", "--data", "D", "--out", "x.h5", "--val-fraction", "nan"],
    ["sensitivity", "M", "--data", "D", "--values", "0.5,nan"],
    ["sensitivity", "M", "--data", "D", "--budget", "inf"],
    ["prune", "M", "--data", "D", "--s", "1", "--out", "x.h5", "--tau", "nan"],
    ["prune", "M", "--data", "D", "--s", "1", "--out", "x.h5", "--lr", "inf"],
    ["prune", "M", "--data", "D", "--s", "nan", "--out", "x.h5"],
    ["import", "M", "--arch", "resnet18", "--out", "x.h5", "--mean", "inf"],
]
NEGATIVE = [
    ["train", "--arch", "resnet18", "--data", "D", "--out", "x.h5", "--augment-pad", "-3"],
    ["train", "--arch", "resnet18", "--data", "D", "--out", "x.h5", "--seed", "-1"],
    ["prune", "M", "--data", "D", "--s", "1", "--out", "x.h5", "--seed", "-1"],
]


@pytest.mark.parametrize("template", NOT_FINITE + NEGATIVE, ids=lambda t: "-".join(t[0:1] + t[-2:]))
def test_numbers_must_be_finite_and_signs_right(inputs, tmp_path, capsys, template):
    argv = _argv(inputs, template)
    argv = [str(tmp_path / a) if a == "x.h5" else a for a in argv]
    _refused(capsys, argv, "error")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("config, needle", [
    ("seed = -1\n", "seed must be >= 0"),
    (None, "a directory"),
    (b"\xff\xfe[prune]\n", "not valid TOML"),
    ("[quantize]\nlayer_bits = {nope = 4}\n", "nope"),
])
def test_bad_schedule_files(inputs, tmp_path, capsys, config, needle):
    path = tmp_path / "s.toml"
    if config is None:
        path.mkdir()
    elif isinstance(config, bytes):
        path.write_bytes(config)
    else:
        path.write_text(config)
    _refused(capsys, _argv(inputs, ["compress", "M", "--data", "D", "--config", str(path),
                                    "--report", str(tmp_path / "r")]), needle)
    assert not (tmp_path / "r" / "report.json").exists()


def test_datasets_that_do_not_fit(inputs, capsys):
    _refused(capsys, _argv(inputs, ["evaluate", "M", "--data", str(inputs / "empty.npz")]), "no images")
    _refused(capsys, _argv(inputs, ["evaluate", "C", "--data", str(inputs / "empty.npz")]), "no images")
    _refused(capsys, _argv(inputs, ["report", "C", "--data", str(inputs / "wide.npz")]), "expects")
    _refused(capsys, _argv(inputs, ["compress", "M", "--data", str(inputs / "wide.npz"),
                                    "--report", str(inputs / "never")]), "expects")
    assert not (inputs / "never" / "report.json").exists()


def test_training_stops_at_a_non_finite_loss_and_keeps_the_model(inputs, tmp_path, capsys, monkeypatch):
    import npdc.engine.train as train

    def exploding(net, x, y):  # a loss that overflowed, as a learning rate too high makes it
        return np.zeros((len(x), 3), np.float32), {"loss": float("nan")}

    out = tmp_path / "kept.h5"
    out.write_bytes((inputs / "m.h5").read_bytes())
    monkeypatch.setattr(train, "cross_entropy_objective", exploding)
    code, _, err = run_cli(_argv(inputs, ["train", "--arch", "resnet18", "--data", "D", "--epochs", "1",
                                          "--width", "2", "--out", "x"], out), capsys)
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]  # the bar's lines come before
    assert len(errors) == 1 and errors[0].startswith("npdc train: error: training stopped at epoch 1, step 1")
    assert "not finite" in errors[0] and err.splitlines()[-1] == errors[0]
    assert out.read_bytes() == (inputs / "m.h5").read_bytes()


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    from npdc.atomic import STALE_SECONDS, write_text

    target = tmp_path / "report.json"
    dead = tmp_path / ".report.json.999999999.abcd.tmp"  # no such process
    old = tmp_path / f".report.json.{os.getppid()}.efgh.tmp"  # a live pid, but an hour old
    live = tmp_path / f".report.json.{os.getppid()}.ijkl.tmp"  # a live writer's, fresh
    other = tmp_path / ".other.json.999999999.mnop.tmp"  # another target's
    for p in (dead, old, live, other):
        p.write_text("half")
    stamp = time.time() - STALE_SECONDS - 60
    os.utime(old, (stamp, stamp))
    write_text(target, "{}")
    assert target.read_text() == "{}"
    assert not dead.exists() and not old.exists()
    assert live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])


def test_an_error_after_a_progress_bar_starts_on_its_own_line():
    import io

    from tqdm import tqdm

    from npdc.cli import _close_progress_bars

    screen = io.StringIO()
    bar = tqdm(total=10, file=screen, leave=True)
    bar.update(3)
    _close_progress_bars()
    assert bar not in getattr(tqdm, "_instances", set())
    assert screen.getvalue().endswith("\n")
