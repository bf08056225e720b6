"""Every subcommand of the command line, table-driven from `build_parser()` so that a subcommand or
an option added later is covered without editing this file: its --help, a missing input file as
one line and exit 2, and every documented option accepted by the parser with a valid value. Also
the one-line errors of `report` and `tune`, and `evaluate FILE.npdc --baseline M.h5`."""

import argparse
import json

import numpy as np
import pytest

from npdc.cli import build_parser
from tests.conftest import assert_one_line_error, run_cli

# a valid command-line value for each argument type the parser uses (by the type's name); a new
# type makes test_every_option_type_has_a_sample fail until a sample is added here
SAMPLES = {"int": "3", "float": "0.25", "finite_float": "0.25", "positive_int": "3", "non_negative_int": "0",
           "floats": "0.5,1", "shape": "1,8,8"}
# required string options whose value must name something that exists in npdc
KNOWN = {"arch": "resnet18"}


def subcommands():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


COMMANDS = subcommands()


def _arguments(parser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def _required_group(parser):
    groups = [g._group_actions for g in parser._mutually_exclusive_groups if g.required]
    return groups[0] if groups else []


def _value(action):
    """A valid value for an option that takes one (as the user would type it)."""
    if action.choices:
        return str(list(action.choices)[0])
    if action.type is None:
        return KNOWN.get(action.dest, "x")
    return SAMPLES[action.type.__name__]


def _parsed(action, text):
    if action.type is None or action.choices:
        return text
    return action.type(text)


def _base(name, parser, path=lambda action: "m.h5", instead=None):
    """The shortest valid argv of a subcommand: its positionals (from `path`), its required options
    and one option of a required exclusive group, leaving out the option `instead` (the test adds
    it) and the rest of its group."""
    argv = [name]
    for a in _arguments(parser):
        if not a.option_strings:
            argv.append(path(a))
        elif a.required and a is not instead:
            argv += [a.option_strings[0], path(a) if a.dest in ("data", "out") else _value(a)]
    group = _required_group(parser)
    if group and instead not in group:
        argv += [group[0].option_strings[0], _value(group[0])]
    return argv


OPTIONS = [(name, a) for name, p in COMMANDS.items() for a in _arguments(p) if a.option_strings]


def test_table_covers_the_known_subcommands():
    """The table is read off the parser: at least the thirteen subcommands of today."""
    assert {"train", "evaluate", "infer", "info", "sensitivity", "prune", "compress", "report",
            "decompress", "import", "export", "speed", "tune"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_names_the_subcommand_and_every_option(name, capsys):
    """SUB --help exits 0 with a usage line naming SUB, and documents each of its options."""
    code, out, _ = run_cli([name, "--help"], capsys)
    assert code == 0
    assert out.startswith("usage:") and name in out.splitlines()[0]
    for a in _arguments(COMMANDS[name]):
        for flag in a.option_strings:
            assert flag in out, flag


def test_every_option_type_has_a_sample():
    """Each option's type has a sample value above (else the parse test below cannot run it)."""
    types = {a.type.__name__ for _, a in OPTIONS if a.type is not None and not a.choices}
    assert types <= set(SAMPLES), types - set(SAMPLES)


@pytest.mark.parametrize("name,action", OPTIONS, ids=[f"{n}-{a.option_strings[-1]}" for n, a in OPTIONS])
def test_every_option_is_accepted(name, action):
    """Parse only: the subcommand's shortest argv plus this option with a valid value (every
    choice of a choice option) parses, and the value lands in args under the option's dest."""
    parser = build_parser()
    base = _base(name, COMMANDS[name], instead=action)
    for flag in action.option_strings:
        if action.nargs == 0:  # a flag: store_true
            assert getattr(parser.parse_args(base + [flag]), action.dest) is True
            continue
        for text in [str(c) for c in action.choices] if action.choices else [_value(action)]:
            args = parser.parse_args(base + [flag, text])
            assert getattr(args, action.dest) == _parsed(action, text), (base, flag, text)
            assert args.command == name and callable(args.func)


def _absent(tmp_path):
    """Where a positional or a --data would point: a file that does not exist, named by kind."""
    def path(action):
        kind = ".npdc" if ".npdc" in (action.help or "") else ".npz" if action.dest in ("input", "data") \
            else ".pt" if action.dest == "checkpoint" else ".h5"
        return str(tmp_path / "written.h5") if action.dest == "out" else str(tmp_path / f"absent-{action.dest}{kind}")
    return path


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_missing_input_file_is_one_line_and_exit_2(name, tmp_path, capsys, monkeypatch):
    """Every input the subcommand reads points at a file that does not exist: one line on stderr
    naming it, exit 2, no traceback, nothing written. A subcommand without a positional input is
    given its --model option."""
    monkeypatch.chdir(tmp_path)  # compress's default report folder lands here
    parser = COMMANDS[name]
    argv = _base(name, parser, _absent(tmp_path))
    if not any("absent" in w for w in argv):
        model = next(a for a in _arguments(parser) if a.dest == "model")
        argv += [model.option_strings[0], str(tmp_path / "absent-model.h5")]
    code, out, err = run_cli(argv + (["--threads", "1"] if "--threads" in parser.format_help() else []), capsys)
    assert "absent-" in assert_one_line_error(code, err), argv
    assert not (tmp_path / "written.h5").exists()
    assert not (tmp_path / "compressed").exists()


# -- report and tune ---------------------------------------------------------------------------
def test_report_on_a_file_that_is_not_npdc(tmp_path, capsys):
    """report on a file that is not a .npdc container: one line, exit 2."""
    bad = tmp_path / "m.npdc"
    bad.write_bytes(b"not a container at all" * 10)
    code, _, err = run_cli(["report", str(bad)], capsys)
    assert_one_line_error(code, err)


def test_report_on_a_model_file_instead_of_npdc(tmp_path, capsys):
    """report given an .h5 model (the usual mix-up): one line, exit 2."""
    from npdc.engine.resnet import build_net
    from npdc.io.modelfile import save_model
    from tests.runtime.conftest import NETS

    path = tmp_path / "m.h5"
    save_model(path, build_net(NETS["resnet18"]))
    code, _, err = run_cli(["report", str(path)], capsys)
    assert_one_line_error(code, err)


def test_report_missing_file(tmp_path, capsys):
    code, _, err = run_cli(["report", str(tmp_path / "gone.npdc")], capsys)
    assert "gone.npdc" in assert_one_line_error(code, err)


def test_tune_missing_model(tmp_path, capsys):
    code, _, err = run_cli(["tune", str(tmp_path / "gone.h5"), "--threads", "1"], capsys)
    assert "gone.h5" in assert_one_line_error(code, err)


# -- evaluate FILE.npdc --baseline ---------------------------------------------------------------
def test_evaluate_npdc_scores_against_the_baseline(tmp_path, capsys):
    """The test labels are the baseline's own predictions (its accuracy is 1), the .npdc file is
    another net: with --baseline the score's accuracy reference is the baseline, the compressed
    file falls short of it and A = 0 makes the score 0; without it the file is its own reference
    (A = 1) and the score is positive."""
    from npdc.engine.resnet import build_net
    from npdc.io.modelfile import save_model
    from npdc.score import score
    from tests.runtime.conftest import NETS, make_npdc, raw_images

    path = tmp_path / "m.npdc"
    net = make_npdc(path, NETS["resnet18"])
    baseline = build_net(NETS["resnet18"], seed=5)
    save_model(tmp_path / "b.h5", baseline)
    x = raw_images(net, 30)
    y = baseline.predict(x).argmax(1)
    np.savez(tmp_path / "d.npz", x_test=x, y_test=y)
    argv = ["evaluate", str(path), "--data", str(tmp_path / "d.npz"), "--json", "--threads", "1"]
    code, out, _ = run_cli(argv + ["--baseline", str(tmp_path / "b.h5")], capsys)
    assert code == 0
    r = json.loads(out.strip().splitlines()[-1])
    assert r["accuracy_reference"] == "baseline"
    assert r["accuracy"] < 1 - 0.008  # another net: it does not match the baseline's labels
    expected = score(r["size_before_bytes"], r["size_bytes"], r["baseline_peak_memory_bytes"],
                     r["peak_memory_bytes"], r["accuracy"], "relative", 1.0)["score"]
    assert r["score"] == expected == 0
    code, out, _ = run_cli(argv, capsys)
    own = json.loads(out.strip().splitlines()[-1])
    assert own["accuracy_reference"] == "self" and own["accuracy"] == r["accuracy"]
    assert own["score"] > 0
