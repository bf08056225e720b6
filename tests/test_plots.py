"""The search's figures: PNG files from a search record, and a one-line hint without matplotlib."""

import sys

import pytest

from npdc import plots
from npdc.errors import UserError
from npdc.report import search_lines

SEARCH = {
    "val_images": 600, "val_accuracy_before": 0.95, "val_accuracy_after": 0.948,
    "settings": {"max_drop": 0.3, "prune_share": 0.5, "margin": 0.25},
    "prune": {"curves": {"conv1": ([0.0, 0.5, 0.9], [0.95, 0.94, 0.6]),
                         "fc": ([0.0, 0.5, 0.9], [0.95, 0.95, 0.93])},
              "climb": {"stopped": "accuracy", "tried": [
                  {"target": 0.5, "sparsity": 0.5, "val_accuracy": 0.949, "drop_points": 0.1,
                   "passed": True, "seconds": 3.0},
                  {"target": 0.7, "sparsity": 0.7, "val_accuracy": 0.94, "drop_points": 1.0,
                   "passed": False, "seconds": 3.0}]}},
    "bits": {"chosen": 1, "candidates": [{}, {}, {}], "tried": [
        {"candidate": 1, "mean_bits": 4.5, "val_accuracy": 0.948, "drop_points": 0.2, "passed": True,
         "seconds": 1.0},
        {"candidate": 2, "mean_bits": 3.0, "val_accuracy": 0.93, "drop_points": 2.0, "passed": False,
         "seconds": 1.0}]},
    "layers": [{"layer": "conv1", "sparsity": 0.0, "s": 0.0, "bits": None},
               {"layer": "fc", "sparsity": 0.5, "s": 0.61, "bits": 4}],
}


def test_both_figures_are_png_files(tmp_path):
    assert plots.missing() is None
    figures = plots.search_figures(SEARCH, tmp_path)
    assert set(figures) == {"sensitivity.png", "candidates.png"}
    for name in figures:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_without_matplotlib_nothing_is_drawn_and_the_hint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert plots.missing() == plots.INSTALL and "\n" not in plots.INSTALL
    assert plots.search_figures(SEARCH, tmp_path) == {}
    assert not list(tmp_path.iterdir())
    with pytest.raises(UserError, match="npdc\\[plots\\]"):
        plots.sensitivity_figure(SEARCH["prune"]["curves"], 0.95, tmp_path / "s.png")


def test_the_search_section_lists_every_candidate_and_why_it_stopped():
    text = "\n".join(search_lines({**SEARCH, "figures": {"candidates.png": "the candidates"}}))
    assert "| fc | 50.00 % | 0.61 | 4 |" in text and "| conv1 | 0.00 % | 0.00 | float |" in text
    assert text.count("| yes |") == 2 and text.count("| no |") == 2
    assert "2 (chosen)" in text and "two steps lost more" in text and "![the candidates](candidates.png)" in text


def test_sensitivity_draws_its_curves(tmp_path, capsys):
    from tests.conftest import run_cli, write_tiny_dataset
    from npdc.engine.train import train_model
    from npdc.io.datasets import load_dataset
    from npdc.io.modelfile import save_model

    write_tiny_dataset(tmp_path / "d.npz", 64, 32)
    data = load_dataset(str(tmp_path / "d.npz"))
    net, _ = train_model({"arch": "resnet18", "input_shape": [1, 8, 8], "num_classes": 3, "width": 2},
                         data.x_train, data.y_train, 1, batch_size=16, progress=False)
    save_model(tmp_path / "m.h5", net)
    code, out, _ = run_cli(["sensitivity", str(tmp_path / "m.h5"), "--data", str(tmp_path / "d.npz"),
                            "--val-size", "32", "--values", "50,90", "--plot", str(tmp_path / "s.png")], capsys)
    assert code == 0 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
