"""Tests for pairs files (npdc.io.pairs): written and read back unchanged, and every kind of bad
file refused in one line naming the line, from the library and from the command line (exit 2)."""

import numpy as np
import pytest

from npdc.engine.verification import make_pairs
from npdc.errors import UserError
from npdc.io.pairs import format_pairs, read_pairs, write_pairs
from tests.conftest import assert_one_line_error, run_cli, write_tiny_dataset

LABELS = np.arange(60) % 3  # the test split of write_tiny_dataset


def test_written_pairs_read_back_unchanged(tmp_path):
    pairs = make_pairs(LABELS, 40, seed=2)
    write_pairs(tmp_path / "p.txt", pairs, "a comment\nover two lines")
    text = (tmp_path / "p.txt").read_text()
    assert text.startswith("npdc-pairs 1\n# a comment\n# over two lines\nfold 1 same\n")
    back = read_pairs(tmp_path / "p.txt", 60, LABELS)
    for a, b in zip(pairs, back):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_sections_in_any_order_blank_lines_and_comments(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# made by hand\n\nnpdc-pairs 1\nfold 2 different\n0 1\nfold 1 different\n"
                    "4 5\n  # indented comment\nfold 2 same\n3 6\nfold 1 same\n0 3\n1 4\n")
    pairs = read_pairs(path, 60, LABELS)
    assert pairs.folds == 2 and len(pairs.same) == 5
    assert sorted(zip(pairs.fold.tolist(), pairs.same.tolist(), pairs.first.tolist())) == \
        [(0, False, 4), (0, True, 0), (0, True, 1), (1, False, 0), (1, True, 3)]


GOOD = "npdc-pairs 1\nfold 1 same\n0 3\nfold 1 different\n0 1\nfold 2 same\n1 4\nfold 2 different\n2 4\n"
BAD = {
    "index out of range": (GOOD.replace("2 4", "2 60"), "line 9: image 60 is out of range"),
    "three fields": (GOOD.replace("1 4", "1 4 1"), "line 7: expected a pair, two image indices"),
    "one field": (GOOD.replace("1 4", "14"), "line 7: expected a pair"),
    "a fold without both kinds": (GOOD.replace("fold 2 different\n2 4\n", ""), "fold 2 has no different"),
    "an empty section": (GOOD.replace("2 4\n", ""), "fold 2 has no different"),
    "a last fold without pairs": (GOOD + "fold 3 same\nfold 3 different\n", "fold 3 has no pairs"),
    "a gap in the folds": (GOOD.replace("fold 2", "fold 3"), "fold 2 is missing"),
    "fold 0": (GOOD.replace("fold 1 same", "fold 0 same"), "line 2: expected 'fold K same'"),
    "an unknown kind": (GOOD.replace("fold 1 different", "fold 1 other"), "line 4: expected"),
    "a repeated section": (GOOD + "fold 1 same\n3 0\n", "line 10: a second 'fold 1 same'"),
    "a negative index": (GOOD.replace("0 3", "-1 3"), "line 3: expected a pair"),
    "a float index": (GOOD.replace("0 3", "0 3.0"), "line 3: expected a pair"),
    "other scripts' digits": (GOOD.replace("0 3", "0 \u0663"), "line 3: expected a pair"),
    "a huge index": (GOOD.replace("0 3", "0 " + "9" * 400), "line 3: expected a pair"),
    "a pair before any section": (GOOD.replace("fold 1 same\n", ""), "line 2: a pair before any"),
    "an image with itself": (GOOD.replace("0 3", "3 3"), "line 3: pairs image 3 with itself"),
    "labels that disagree": (GOOD.replace("0 3", "0 4"), "line 3: a same pair of images labelled 0 and 1"),
    "no magic": (GOOD.replace("npdc-pairs 1\n", ""), "not a pairs file"),
    "another version": (GOOD.replace("npdc-pairs 1", "npdc-pairs 2"), "version 2 is not one"),
    "no pairs": ("npdc-pairs 1\n", "holds no pairs"),
    "empty": ("", "empty"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_pairs_files_are_refused_naming_the_line(name, tmp_path):
    text, words = BAD[name]
    path = tmp_path / "p.txt"
    path.write_text(text)
    with pytest.raises(UserError, match=words) as info:
        read_pairs(path, 60, LABELS)
    assert "\n" not in str(info.value)


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"npdc-pairs 1\n\xff\xfe\x00\x01")
    with pytest.raises(UserError, match="not a text file"):
        read_pairs(path)


def test_without_the_split_only_the_file_is_checked(tmp_path):
    """Indices are checked once the split is known: without it a large index reads."""
    path = tmp_path / "p.txt"
    path.write_text(GOOD.replace("2 4", "2 6000"))
    assert read_pairs(path).second.max() == 6000


def test_a_file_over_its_budget_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setenv("NPDC_ALLOC_FLOOR", "1000")
    monkeypatch.setenv("NPDC_ALLOC_RATIO", "2")
    path = tmp_path / "p.txt"
    path.write_text(format_pairs(make_pairs(LABELS, 40, seed=0)))
    with pytest.raises(UserError, match="NPDC_ALLOC"):
        read_pairs(path)


# -- from the command line --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["index out of range", "three fields", "a fold without both kinds"])
def test_evaluate_with_a_bad_pairs_file_is_one_line_and_exit_2(name, tmp_path, capsys):
    from npdc.engine.resnet import build_net
    from npdc.io.modelfile import save_model

    data = write_tiny_dataset(tmp_path / "d.npz")
    save_model(tmp_path / "m.h5", build_net({"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2,
                                              "embedding": 4, "num_classes": 3}, seed=0))
    (tmp_path / "p.txt").write_text(BAD[name][0])
    code, _, err = run_cli(["evaluate", str(tmp_path / "m.h5"), "--data", str(data), "--pairs",
                            str(tmp_path / "p.txt"), "--threads", "1"], capsys)
    assert BAD[name][1].split(": ")[-1] in assert_one_line_error(code, err)


def test_pairs_command_writes_a_file_evaluate_reads(tmp_path, capsys):
    """`npdc pairs` on the tiny dataset, then `evaluate --pairs --json` gives the protocol's keys;
    the same seed writes the same bytes."""
    import json

    from npdc.engine.resnet import build_net
    from npdc.io.modelfile import save_model

    data = write_tiny_dataset(tmp_path / "d.npz")
    argv = ["pairs", "--data", str(data), "--pairs", "40", "--seed", "3"]
    assert run_cli(argv + ["--out", str(tmp_path / "p.txt")], capsys)[0] == 0
    assert run_cli(argv + ["--out", str(tmp_path / "q.txt")], capsys)[0] == 0
    assert (tmp_path / "p.txt").read_bytes() == (tmp_path / "q.txt").read_bytes()
    save_model(tmp_path / "m.h5", build_net({"arch": "resnet18", "input_shape": [1, 8, 8], "width": 2,
                                              "embedding": 4, "num_classes": 3}, seed=0))
    code, out, _ = run_cli(["evaluate", str(tmp_path / "m.h5"), "--data", str(data), "--pairs",
                            str(tmp_path / "p.txt"), "--embedding", "fc5", "--json", "--threads", "1"],
                           capsys)
    assert code == 0
    r = json.loads(out.strip().splitlines()[-1])
    for key in ("verification_accuracy", "verification_std", "auc", "tar_at_far_1e-3", "threshold"):
        assert 0 <= r[key] <= 1 or key == "threshold", key
    assert r["embedding"] == "fc5" and r["pairs"] == 40 and r["folds"] == 10
    code, _, err = run_cli(argv + ["--pairs", "30", "--out", str(tmp_path / "r.txt")], capsys)
    assert "multiple of 20" in assert_one_line_error(code, err)
