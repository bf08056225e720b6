"""Hostile model files, generated (tests/hostile/files.py): each is refused with one line and exit
2, and the ones that ask for memory are refused before they get it.

Memory is measured in ONE subprocess that imports npdc and everything the commands load, records
ru_maxrss (the process's peak resident set, which is what an out-of-memory kill is about), then
runs every memory case through npdc.cli.main in a loop and reports how much the peak rose. The
rise, not the absolute peak, is bounded: importing NumPy, Numba and h5py alone costs 100-150 MB
and varies by machine, while the cases, unbounded, would each ask for gigabytes."""

import json
import math
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import assert_one_line_error, run_cli
from tests.hostile import files

ALL = [(cls, command, make) for cls, cases in files.CASES.items() for command, make in cases]
PEAK_RISE_LIMIT = 256 << 20


def test_the_cases_by_class():
    counts = {cls: len(cases) for cls, cases in files.CASES.items()}
    assert sum(counts.values()) == len(ALL) >= 30
    assert all(n >= 2 for n in counts.values()), counts


@pytest.mark.parametrize("cls, command, make", ALL, ids=[m.__name__ if not hasattr(m, "__closure__") or
                                                          m.__closure__ is None else f"{c}-{i}"
                                                          for i, (c, _, m) in enumerate(ALL)])
def test_a_hostile_file_is_one_line(tmp_path, capsys, cls, command, make):
    path = make(tmp_path)
    assert path.stat().st_size < 2 << 20
    argv = [command, str(path)] + (["--out", str(tmp_path / "out.h5")] if command == "decompress" else [])
    code, out, err = run_cli(argv, capsys)
    line = assert_one_line_error(code, err)
    assert path.name in line or str(path) in line, line
    assert not (tmp_path / "out.h5").exists()


def test_memory_cases_stay_small(tmp_path):
    """Every memory case in one subprocess; the peak RSS rises by less than PEAK_RISE_LIMIT."""
    script = textwrap.dedent(f"""
        import json, resource, sys
        from pathlib import Path
        sys.path.insert(0, {str(files.__file__.rsplit('/tests/', 1)[0])!r})
        import h5py, numpy
        import npdc.cli, npdc.codec.model, npdc.io.modelfile, npdc.compress.prune
        from tests.hostile import files
        folder = Path({str(tmp_path)!r})
        made = [(c, make(folder)) for cls in files.MEMORY_CLASSES for c, make in files.CASES[cls]]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        codes = []
        for command, path in made:
            extra = ["--out", str(folder / "out.h5")] if command == "decompress" else []
            codes.append(npdc.cli.main([command, str(path)] + extra))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"codes": codes, "before_kb": before, "after_kb": after}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["codes"] == [2] * sum(len(files.CASES[c]) for c in files.MEMORY_CLASSES)
    rise = (result["after_kb"] - result["before_kb"]) * 1024
    print(f"peak RSS {result['after_kb'] // 1024} MB, rise {rise >> 20} MB over {result['before_kb'] // 1024} MB")
    assert rise < PEAK_RISE_LIMIT, result


def test_a_valid_file_still_loads_and_optional_sections_are_skipped(tmp_path, capsys):
    from npdc.codec.model import load_compressed, read_model_file

    sections = files.valid_sections()
    plain = files.write_npdc(tmp_path / "plain.npdc", sections)
    noted = files.write_npdc(tmp_path / "noted.npdc", sections[:1] + [("note", b"made by a test")] + sections[1:]
                             + [("zzzz", b"\x00" * 5)])
    net, codes = load_compressed(noted)
    ref, ref_codes = load_compressed(plain)
    assert list(codes) == ["fc6.W"] and (codes["fc6.W"].indices == ref_codes["fc6.W"].indices).all()
    assert [layer.index for layer in read_model_file(noted).layers] == [2]
    code, _, err = run_cli(["decompress", str(noted), "--out", str(tmp_path / "n.h5")], capsys)
    assert code == 0, err
    upper = files.write_npdc(tmp_path / "upper.npdc", sections[:1] + [("NOTE", b"x")] + sections[1:])
    code, _, err = run_cli(["decompress", str(upper), "--out", str(tmp_path / "u.h5")], capsys)
    assert "NOTE" in assert_one_line_error(code, err)


def test_spec_cost_bounds_what_building_allocates():
    from npdc.engine.resnet import build_net, spec_cost

    for spec in (files.SPEC, {"arch": "cifar-resnet20", "width": 4}, {"arch": "cifar-resnet20", "num_classes": 7},
                 {"arch": "cifar-resnet32", "width": 4, "shortcut": "projection", "activation": "prelu"},
                 {"arch": "cifar-resnet32", "width": 8, "shortcut": "projection", "input_shape": [1, 16, 16]},
                 {"arch": "resnet18", "input_shape": [1, 12, 10], "width": 2, "embedding": 4, "num_classes": 3}):
        net = build_net(spec)
        floats = net.num_params() + sum(b.size for b in net.buffers().values())
        activations = sum(math.prod(shape) for shape in net.shapes.values())
        assert 4 * floats <= spec_cost(spec) <= 4 * (floats + activations)
