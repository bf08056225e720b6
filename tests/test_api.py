"""The public API (npdc/api.py, re-exported by the package): the README's example runs as written
on a tiny model using only public names; importing npdc is light; the API and the command line
give the same figures and the same one-line errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import npdc
from tests.conftest import run_cli, write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


def readme_example():
    """The first ```python block after the README's "## Python API" heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A folder with model.h5 (a width-2 resnet18 trained an epoch on 8x8 images) and data.npz."""
    from npdc.engine.train import train_model

    folder = tmp_path_factory.mktemp("api")
    write_tiny_dataset(folder / "data.npz", 192, 60)
    data = npdc.load_dataset(folder / "data.npz")
    net, _ = train_model({"arch": "resnet18", "input_shape": [1, 8, 8], "num_classes": 3, "width": 2},
                         data.x_train, data.y_train, 1, batch_size=16, progress=False)
    npdc.save_model(folder / "model.h5", net)
    return folder


def test_the_readme_example_runs_as_written(tiny):
    """Verbatim, in a fresh interpreter, in a folder holding model.h5 and data.npz; its stderr (the
    compress progress, not a terminal) is plain lines."""
    code = readme_example()
    names = set(re.findall(r"\bnpdc\.(\w+)", code))
    assert names <= set(npdc.__all__), names - set(npdc.__all__)
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + code],
                          cwd=tiny, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x smaller, accuracy" in done.stdout and "refused: " in done.stdout
    assert "no-such-model.h5" in done.stdout.splitlines()[-1]
    assert (tiny / "model.npdc").is_file() and (tiny / "dense.npz").is_file() and (tiny / "pruned.h5").is_file()
    report = json.loads((tiny / "run" / "report.json").read_text())
    assert report["file"] == "model.npdc" and report["ratio"] > 1
    assert "\r" not in done.stderr and "baseline accuracy" in done.stderr


def test_import_npdc_loads_nothing_heavy():
    """`import npdc` loads neither NumPy, Numba nor the API module; `--help` does not load Numba."""
    code = ("import sys, npdc\nprint(sorted(m for m in ('numpy', 'numba', 'npdc.api') if m in sys.modules))\n"
            "from npdc.cli import main\ntry:\n    main(['compress', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    assert (lines[0], lines[-1]) == ("[]", "False")


def test_api_names_that_are_also_submodules_stay_functions():
    """npdc.compress and npdc.evaluate are the API functions even after their namesake submodules
    load, and the submodules stay importable through them."""
    import npdc.compress.prune as prune_module  # noqa: F401  (loads the subpackage)
    import npdc.evaluate  # noqa: F401

    assert callable(npdc.compress) and npdc.compress.__wrapped__ is npdc.api.compress
    assert npdc.compress.prune is sys.modules["npdc.compress.prune"]
    assert npdc.evaluate.evaluate_compressed is sys.modules["npdc.evaluate"].evaluate_compressed
    from npdc import compress

    assert compress is npdc.compress
    with pytest.raises(AttributeError):
        npdc.no_such_name  # noqa: B018


def test_the_api_and_the_command_line_agree(tiny, capsys):
    """evaluate --json prints the figures npdc.evaluate returns (accuracy and loss exactly)."""
    code, out, _ = run_cli(["evaluate", str(tiny / "model.h5"), "--data", str(tiny / "data.npz"), "--json",
                            "--threads", "1"], capsys)
    assert code == 0
    printed = json.loads(out.strip().splitlines()[-1])
    returned = npdc.evaluate(tiny / "model.h5", tiny / "data.npz")
    assert (printed["accuracy"], printed["loss"]) == (returned["accuracy"], returned["loss"])


@pytest.mark.parametrize("call,argv", [
    (lambda t: npdc.evaluate(t / "absent.h5", t / "data.npz"), ["evaluate", "{t}/absent.h5", "--data", "{t}/data.npz"]),
    (lambda t: npdc.decompress(t / "model.h5", out=t / "model.h5"), ["decompress", "{t}/model.h5", "--out", "{t}/model.h5"]),
    (lambda t: npdc.export(t / "model.h5", t / "model.h5"), ["export", "{t}/model.h5", "--out", "{t}/model.h5"]),
])
def test_a_user_mistake_is_the_same_user_error_in_both(tiny, capsys, call, argv):
    with pytest.raises(npdc.UserError) as raised:
        call(tiny)
    code, _, err = run_cli([a.format(t=tiny) for a in argv], capsys)
    assert code == 2 and err.strip() == f"npdc {argv[0]}: error: {raised.value}"


def test_prune_needs_exactly_one_rule(tiny):
    with pytest.raises(npdc.UserError, match="exactly one"):
        npdc.prune(tiny / "model.h5", tiny / "data.npz", s=1.0, sparsity=50)
    with pytest.raises(npdc.UserError, match="target"):
        npdc.prune(tiny / "model.h5", tiny / "data.npz", schedule="agp")


def test_objects_in_objects_out(tiny):
    """A Net and an (images, labels) pair are accepted where a path and a dataset are."""
    model, data = npdc.load_model(tiny / "model.h5"), npdc.load_dataset(tiny / "data.npz")
    pair = npdc.evaluate(model, (data.x_test, data.y_test))
    assert pair["accuracy"] == npdc.evaluate(tiny / "model.h5", data)["accuracy"]
    with pytest.raises(npdc.UserError, match="not int"):
        npdc.evaluate(3, data)
