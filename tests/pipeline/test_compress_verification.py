"""compress --metric verification [--pairs PAIRS]: the search's budget on verification accuracy
of pairs drawn from the validation images, the test pairs only in the report (before and after,
the same figures `evaluate --pairs` gives), the metric named in the report, and the user's
mistakes refused in one line before any stage runs."""

import json

import pytest

from tests.conftest import assert_one_line_error, run_cli, tiny_model_and_data

SCHEDULE = ("batch_size = 16\n[search]\nmax_drop = 5.0\nval_fraction = 0.1\nlevels = [50.0, 90.0]\nbits = [3, 8]\n"
            "step_images = 48\nsensitivity_images = 24\nmax_steps = 2\n[quantize]\nepochs = 0\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vsearch")
    tiny_model_and_data(folder, 240, 60)
    (folder / "s.toml").write_text(SCHEDULE)
    return folder


def _args(folder, *extra):
    return ["compress", str(folder / "m.h5"), "--data", str(folder / "d.npz"), "--config", str(folder / "s.toml"),
            "--threads", "1", *extra]


def test_compress_by_verification_reports_the_test_pairs_before_and_after(tiny, capsys):
    import npdc

    folder = tiny
    code, _, _ = run_cli(["pairs", "--data", str(folder / "d.npz"), "--out", str(folder / "pairs.txt"),
                          "--pairs", "60"], capsys)
    assert code == 0
    code, out, err = run_cli(_args(folder, "--metric", "verification", "--pairs", str(folder / "pairs.txt"),
                                   "--report", str(folder / "rep")), capsys)
    assert code == 0, err
    report = json.loads((folder / "rep" / "report.json").read_text())
    search, v = report["search"], report["verification"]
    assert search["metric"] == "verification" and search["val_units"] == "pairs"
    assert search["settings"]["metric"] == "verification"
    assert report["score_accuracy"] == "verification" and v["pairs"] == 60 and v["embedding"] == "fc5_bn"
    for side in ("before", "after"):
        assert set(v[side]) >= {"verification_accuracy", "auc", "tar_at_far_1e-3", "verification_std"}
    assert report["accuracy_images"] == 60  # top-1 on the test images is still there, with its error
    # the classifier after the embedding is not searched (the metric cannot see it): widest bits
    assert all(c["fc6"] == 8 for c in search["bits"]["candidates"])
    assert {row["layer"]: row["bits"] for row in search["layers"]}["fc6"] == 8
    page = (folder / "rep" / "report.md").read_text()
    assert search["embedding"] == "fc5_bn" and "embedding fc5_bn) on 20 pairs of 24 validation images" in page
    assert "Decisions by verification accuracy" in page and "## Verification on the test pairs" in page
    assert "of which pruning may spend 60 % and 10 % is held back" in page  # shares of the budget
    assert "TAR at FAR 1e-3" in page and "top-1 accuracy (test images)" in page
    assert "verification accuracy on 60 test pairs" in out

    # the same figures as evaluate --pairs gives for each file
    for model, side in ((folder / "m.h5", "before"), (folder / "rep" / "m.npdc", "after")):
        code, out, _ = run_cli(["evaluate", str(model), "--data", str(folder / "d.npz"), "--pairs",
                                str(folder / "pairs.txt"), "--json"], capsys)
        assert code == 0
        figures = json.loads(out.strip().splitlines()[-1])
        for key in ("verification_accuracy", "auc", "tar_at_far_1e-3"):
            assert figures[key] == pytest.approx(v[side][key], abs=1e-12)

    # the API with the same schedule and metric resumes that run; without pairs, no test-pairs section
    result = npdc.compress(folder / "m.h5", folder / "d.npz", schedule=folder / "s.toml", metric="verification",
                           report=folder / "rep")
    assert "verification" not in result and result["score_accuracy"] == "top-1"
    assert result["search"]["val_accuracy_after"] == search["val_accuracy_after"]
    assert "## Verification on the test pairs" not in (folder / "rep" / "report.md").read_text()


@pytest.mark.parametrize("extra, says", [
    (["--embedding", "fc5"], "--embedding needs --pairs or --metric verification"),
    (["--metric", "verification", "--embedding", "fc9"], "no layer 'fc9'"),
    (["--metric", "verification", "--preset", "fast"], "searches nothing"),
    (["--pairs", "BAD"], "out of range"),
    (["--metric", "f1"], "invalid choice"),
])
def test_mistakes_are_one_line_before_any_stage(tiny, capsys, extra, says):
    folder = tiny
    bad = folder / "bad-pairs.txt"
    bad.write_text("npdc-pairs 1\n" + "".join(f"fold {f} same\n0 3\nfold {f} different\n0 1000\n"
                                             for f in range(1, 11)))
    extra = [str(bad) if e == "BAD" else e for e in extra]
    report = folder / f"bad-{len(extra)}-{extra[-1]}"
    code, _, err = run_cli(_args(folder, *extra, "--report", str(report)), capsys)
    assert says in assert_one_line_error(code, err)
    assert not list(report.glob(".work-*/state.json"))  # nothing ran


def test_a_schedule_names_an_unknown_metric_or_verification_without_a_search():
    from npdc.errors import UserError
    from npdc.pipeline.schedule import load_schedule

    assert load_schedule(None, "auto", {"search": {"metric": "verification"}}).search.metric == "verification"
    with pytest.raises(UserError, match="search.metric: accuracy or verification"):
        load_schedule(None, "auto", {"search": {"metric": "f1"}})
    with pytest.raises(UserError, match="searches nothing"):
        load_schedule(None, "full", {"search": {"metric": "verification"}})
    fixed_but_bits = {"prune": {"method": "agp"}, "search": {"metric": "verification"}}
    assert load_schedule(None, "auto", fixed_but_bits).search.metric == "verification"  # widths = auto searches
