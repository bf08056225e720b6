"""Every convolution primitive through the conv-primitive test helper once, compiled with Numba's
bounds checking (NUMBA_BOUNDSCHECK=1), in a subprocess: Numba reads that variable when it is
imported, and a separate cache directory keeps the checked builds out of the normal cache.

The intrinsics transpose8 and deinterleave16 do work under bounds checking, but their vector
loads and stores are raw LLVM pointer arithmetic that Numba's checks never see. So the script
puts their bounds-checked twins (simd.transpose8_checked, simd.deinterleave16_checked) in their
place before any kernel module imports them: then the index arithmetic of winograd4's plane
fill and output rows and of polyphase's phase fill is checked too. The intrinsics themselves are
compared with the twins in test_simd.

Cost: the bounds-checked kernels compile from scratch (about 1.5-2 minutes of one core; most of
it the register-blocked SLP kernels, which build only the float type a call brings: float32 here).
So the subprocess starts as soon as the suite has collected this test (tests/conftest.py calls
`start`), and compiles on the second core while the rest of the suite runs on the first; the
test then only waits for its answer. It runs at the lowest scheduling priority (nice 19): the
suite's kernels run their parallel loops on both cores, and each loop waits for its slowest
thread, so a compiler at equal priority on the second core stalled every loop of the tests that
ran meanwhile (docs/perf.md, branch `suite11`); at nice 19 it takes only the time the suite
leaves idle, which is most of a core while the suite compiles or runs Python. Under xdist it
keeps the workers' priority: they keep both cores busy, so at nice 19 it would hardly run until
the worker given its test sat waiting for it. Under pytest-xdist the controller starts it (`share`)
while it compiles the normal kernels on the other core, before the workers start.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# one small case per primitive, with the shapes that reach each kernel's special paths
CASES = [
    ("flat", ((1, 2, 4, 18), (9, 2, 3, 3), 1, 1, 1)),  # few channels: the row path, chunks at 0 and 2
    ("flat", ((2, 9, 6, 7), (10, 9, 3, 3), 1, 1, 1)),  # the stacked-plane path, two blocks of outputs
    ("winograd4", ((2, 11, 10, 10), (13, 11, 3, 3), 1, 1, 1)),  # 8 x 8 transposes and their leftovers
    ("polyphase", ((2, 3, 17, 18), (9, 3, 3, 3), 2, 1, 1)),  # deinterleave16, the last run overlapping
    ("polyphase", ((1, 2, 16, 17), (3, 2, 3, 3), 2, 0, 1)),  # an odd row: its last pixel on its own
    ("winograd2", ((2, 6, 9, 7), (5, 6, 3, 3), 1, 1, 1)),
    ("kn2row", ((2, 3, 7, 7), (4, 3, 3, 3), 2, 1, 1)),
    ("fft", ((1, 4, 8, 8), (4, 2, 5, 5), 2, 2, 2)),
    ("direct", ((2, 4, 6, 6), (4, 1, 3, 3), 2, 1, 4)),
    ("im2col", ((2, 4, 5, 5), (6, 2, 3, 3), 1, 1, 2)),
    ("depthwise", ((2, 3, 7, 6), (3, 1, 3, 2), 2, 1, 3)),
    ("depthwise", ((2, 3, 7, 6), (3, 1, 3, 3), 1, 1, 3)),  # 3x3: the zero-bordered plane, one pass a line
    ("depthwise", ((1, 2, 8, 7), (2, 1, 3, 3), 2, 0, 2)),  # 3x3 stride 2, unpadded
    ("stem", ((1, 3, 12, 37), (9, 3, 7, 7), 2, 3, 1)),  # phase planes, a cut chunk pair, two blocks
    ("gemm", ((2, 3, 7, 6), (4, 3, 3, 3), 2, 1, 1)),
    ("gemm", ((2, 3, 5, 4), (4, 3, 1, 1), 1, 0, 1)),  # rows of outputs past the input's edge
]

SCRIPT = f'''
import numba
import numpy as np

assert numba.config.BOUNDSCHECK, "NUMBA_BOUNDSCHECK was not read"

from npdc.kernels import simd
simd.transpose8, simd.deinterleave16 = simd.transpose8_checked, simd.deinterleave16_checked
from npdc.kernels import conv_polyphase, conv_winograd4_transforms
assert conv_winograd4_transforms.transpose8 is simd.transpose8_checked
assert conv_polyphase.deinterleave16 is simd.deinterleave16_checked


@numba.njit
def past_the_end(a):
    return a[a.size]


try:
    past_the_end(np.zeros(3))
except IndexError:
    pass
else:
    raise SystemExit("an out-of-range read was not caught: bounds checking is off")

from tests.kernels.test_conv_primitives import _check_all_three
for name, case in {CASES!r}:
    _check_all_three(name, case, seed=1)
print("ok")
'''


# runs SCRIPT (argv[1]), its priority lowered by argv[3], and writes its exit status to argv[2]
# however it ends, so that a process that did not start it (an xdist worker; see `share`) can
# wait for its answer
RUNNER = """
import os, sys
if hasattr(os, "nice"):
    os.nice(int(sys.argv[3]))  # the suite's parallel loops first (see the module docstring)
status = 1
try:
    exec(compile(sys.argv[1], "bounds-checked helper", "exec"), {"__name__": "__main__"})
    status = 0
finally:
    with open(sys.argv[2], "w") as f:
        f.write(str(status))
"""
SHARED = "NPDC_BOUNDSCHECK_FOLDER"  # set by `share`: the folder of a run another process started
TIMEOUT = 900
_RUN = {}


def start(nice=19):
    """Start the bounds-checked subprocess (once), in a fresh cache directory: the checked
    builds compile from scratch and stay out of the normal cache. Its output and exit status go
    to files there (a pipe could fill up and stall it before anyone reads). It lowers its
    priority by `nice` (see the module docstring). Returns the folder."""
    if "process" not in _RUN:
        _RUN["folder"] = folder = tempfile.TemporaryDirectory(prefix="npdc-boundscheck-")
        env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=folder.name)
        env.pop(SHARED, None)
        with open(Path(folder.name) / "out", "w") as out, open(Path(folder.name) / "err", "w") as err:
            status = str(Path(folder.name) / "status")
            _RUN["process"] = subprocess.Popen(
                [sys.executable, "-c", RUNNER, SCRIPT, status, str(nice)], env=env,
                stdout=out, stderr=err, cwd=Path(__file__).resolve().parents[2])
    return Path(_RUN["folder"].name)


def share():
    """Start the run in this process (xdist's controller, before its workers exist) and name its
    folder in the environment they inherit: the worker given the test waits for this run
    instead of starting its own after the suite is under way."""
    os.environ[SHARED] = str(start(nice=0))


def stop():
    """End the subprocess if it still runs (the suite stopped before its test) and remove its folder."""
    process, folder = _RUN.pop("process", None), _RUN.pop("folder", None)
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
    if folder is not None:
        folder.cleanup()
        os.environ.pop(SHARED, None)


def _status(folder):
    """The run's exit status ("0" for success), waiting up to TIMEOUT seconds for it."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if (folder / "status").is_file() and (folder / "status").read_text():
            return (folder / "status").read_text()
        time.sleep(0.5)
    return f"no answer in {TIMEOUT} s"


def test_every_primitive_passes_the_helper_with_bounds_checking():
    """Forward, both gradients and the refusals of every primitive on a small case each, with
    every array index checked."""
    shared = os.environ.get(SHARED)
    folder = Path(shared) if shared else start()
    try:
        status = _status(folder)
        stdout, stderr = (folder / "out").read_text(), (folder / "err").read_text()
    finally:
        if not shared:
            stop()
    assert status == "0" and stdout.strip().endswith("ok"), status + stdout[-2000:] + stderr[-4000:]
