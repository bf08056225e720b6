"""How progress reads (npdc/progress.py): tqdm bars on a terminal, plain lines with the same
figures elsewhere; a command's stderr written to a file holds no carriage return and a bounded
number of lines per epoch; --quiet silences it; results and --json stay on stdout."""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tqdm import tqdm

from npdc import progress
from npdc.progress import LineProgress, notice_if_slow, output, progress_bar, say, shown
from npdc.runtime.program import COMPILING
from tests.conftest import write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_tqdm_bar_and_a_file_gets_lines(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    with output("info"):
        bar = progress_bar(range(3), desc="epoch 1/1", unit="batch")
        assert isinstance(bar, tqdm)
        list(bar)
    assert "\r" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with output("info"):
        bar = progress_bar(range(3), desc="epoch 1/1", unit="batch")
        assert isinstance(bar, LineProgress)
        for _ in bar:
            bar.set_postfix(loss="0.5000", acc="0.7500", lr="0.01")
    text = sys.stderr.getvalue()
    assert "\r" not in text and text.count("\n") == 1
    assert text.startswith("epoch 1/1: 3/3 [") and "batch/s, loss=0.5000, acc=0.7500, lr=0.01]" in text


def test_a_long_bar_also_writes_a_line_with_the_eta_every_interval(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    with output("info"):
        bar = progress_bar(total=4, desc="sensitivity", unit="eval")
        for _ in range(4):
            bar.update()
        bar.close()
        bar.close()  # a second close says nothing more
    lines = sys.stderr.getvalue().splitlines()
    assert len(lines) == 4  # three while running (with the ETA after '<'), one at the end
    assert [line.split("[")[0].strip() for line in lines] == ["sensitivity: 25% 1/4", "sensitivity: 50% 2/4",
                                                             "sensitivity: 75% 3/4", "sensitivity: 4/4"]
    assert all("<" in line for line in lines[:3]) and "<" not in lines[3]


def test_a_bar_stopped_early_says_nothing_and_quiet_hides_everything(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with output("info"):
        bar = progress_bar(total=5, desc="epoch 1/2")
        bar.update(2)
        bar.close()
    with output("warning"):
        list(progress_bar(range(3), desc="evaluate"))
        say("a message")
    assert sys.stderr.getvalue() == ""


def test_shown_is_what_the_api_progress_argument_does(monkeypatch):
    """Without any logging set-up, shown(True) puts messages on stderr and shown(False) none;
    either way the logger is as before afterwards."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    before = (progress.logger.level, progress.logger.disabled, list(progress.logger.handlers))
    with shown(False):
        say("hidden")
        list(progress_bar(range(2), desc="hidden bar"))
    with shown(True):
        say("shown")
    assert sys.stderr.getvalue() == "shown\n"
    assert (progress.logger.level, progress.logger.disabled, list(progress.logger.handlers)) == before


def test_a_wait_gets_its_notice_only_when_it_runs_long(monkeypatch):
    """notice_if_slow says its text once, after its delay, while the block still runs; a block
    that ends first says nothing, and no timer says it later."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with output("info"):
        with notice_if_slow("compiling", seconds=0.05):
            time.sleep(0.4)
        with notice_if_slow("quick", seconds=0.2):
            pass
        time.sleep(0.4)
    assert sys.stderr.getvalue() == "compiling\n"


# -- a command's stderr in a file ------------------------------------------------------------------
def _npdc(args, folder, stderr_file):
    with open(stderr_file, "w") as err:
        done = subprocess.run([sys.executable, "-m", "npdc", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=err, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done.returncode, done.stdout, Path(stderr_file).read_text()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("logs")
    write_tiny_dataset(folder / "d.npz", 192, 60)
    (folder / "s.toml").write_text("batch_size = 16\n[prune]\ntarget = 60\nepochs = 2\n"
                                   "[quantize]\nepochs = 1\nconv_bits = 5\n")
    return folder


def test_train_and_compress_logs_in_a_file_are_plain_lines(folder):
    """One line per epoch (with loss, accuracy and rate), one per evaluation and stage message,
    no carriage returns; the results stay on stdout."""
    code, out, log = _npdc(["train", "--arch", "resnet18", "--width", "2", "--data", str(folder / "d.npz"),
                            "--epochs", "3", "--batch-size", "16", "--out", str(folder / "m.h5"),
                            "--threads", "1"], folder, folder / "train.log")
    assert code == 0, log
    assert "\r" not in log and "wrote" in out
    epochs = [line for line in log.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("loss=" in line and "acc=" in line and "batch/s" in line for line in epochs)
    assert len(log.splitlines()) <= 3 + 2  # the epochs, and the test-split evaluation
    code, out, log = _npdc(["compress", str(folder / "m.h5"), "--data", str(folder / "d.npz"), "--config",
                            str(folder / "s.toml"), "--preset", "fast", "--report", str(folder / "rep"),
                            "--threads", "1"],
                           folder, folder / "compress.log")
    assert code == 0, log
    assert "\r" not in log and "x smaller" in out and "baseline accuracy" in log
    lines = [line for line in log.splitlines() if line != COMPILING]  # a cold Numba cache's notice
    assert sum(line.startswith("epoch ") for line in lines) == 3  # two of pruning, one of quantization
    assert len(lines) <= 12 and len(log) < 3000, log


def test_quiet_and_json_keep_stderr_empty_and_stdout_parseable(folder):
    write_tiny_dataset(folder / "e.npz", 64, 30)
    if not (folder / "m.h5").exists():  # the test before trains it, unless xdist ran it in the other process
        code, _, log = _npdc(["train", "--arch", "resnet18", "--width", "2", "--data", str(folder / "d.npz"),
                              "--epochs", "1", "--batch-size", "16", "--out", str(folder / "m.h5"),
                              "--threads", "1"], folder, folder / "train1.log")
        assert code == 0, log
    code, out, log = _npdc(["evaluate", str(folder / "m.h5"), "--data", str(folder / "e.npz"), "--quiet",
                            "--threads", "1"], folder, folder / "quiet.log")
    assert code == 0 and log == "" and "accuracy" in out
    code, out, log = _npdc(["evaluate", str(folder / "m.h5"), "--data", str(folder / "e.npz"), "--json",
                            "--log-level", "error", "--threads", "1"], folder, folder / "json.log")
    assert code == 0 and log == ""
    assert 0 <= json.loads(out.strip().splitlines()[-1])["accuracy"] <= 1
