"""Process-wide settings (thread waiting, malloc's handling of freed tensors): applied by
`npdc.tune_process()` and by the command line, never by importing npdc. Each case runs in a fresh
interpreter, since the thread settings only act before numpy loads."""

import os
import subprocess
import sys

import pytest

ALLOC_CYCLE = """
import resource
import numpy as np

def cycle():
    a = np.empty(4 << 20, np.float32)  # 16 MiB, above glibc's default mmap threshold
    a[:] = 1
    del a

cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
TUNING = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "NPDC_NO_PROCESS_TUNING")
SHOW = "import os; print(*(os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')))"
glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


def _run(code, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GOMP_", "OMP_")) and
             k not in TUNING}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_importing_npdc_and_its_api_leaves_the_process_as_it_was():
    """The environment is unchanged by `import npdc`, by loading the whole API, and by touching
    its functions; freed blocks still go back to the kernel as glibc does by default."""
    code = ("import os; before = dict(os.environ)\nimport npdc, npdc.api\n"
            "npdc.compress, npdc.evaluate, npdc.load_model\nprint(dict(os.environ) == before)")
    assert _run(code) == "True"
    if sys.platform.startswith("linux"):
        assert int(_run("import npdc, npdc.api\n" + ALLOC_CYCLE)) > 200  # tuned: under 50


@glibc
def test_tune_process_keeps_a_freed_tensor_in_the_heap():
    assert int(_run("import npdc; npdc.tune_process()\n" + ALLOC_CYCLE)) < 50  # 4096 pages otherwise


def test_tune_process_sets_thread_waiting_and_the_users_own_choice_wins():
    code = "import npdc; npdc.tune_process()\n" + SHOW
    assert _run(code) == "30000 PASSIVE"
    assert _run(code, GOMP_SPINCOUNT="5", OMP_WAIT_POLICY="ACTIVE") == "5 ACTIVE"


def test_the_command_line_tunes_before_numpy_loads_unless_told_not_to():
    """`main` tunes the process first thing, and nothing it imports before that loads numpy;
    NPDC_NO_PROCESS_TUNING=1 leaves the process alone."""
    assert _run("import sys, npdc.cli; print('numpy' in sys.modules, 'numba' in sys.modules)") == "False False"
    code = "from npdc.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n" + SHOW
    assert _run(code).splitlines()[-1] == "30000 PASSIVE"
    assert _run(code, NPDC_NO_PROCESS_TUNING="1").splitlines()[-1] == "None None"
    if sys.platform.startswith("linux"):
        cycle = "from npdc.cli import main\nmain(['info', '/nonexistent.h5'])\n" + ALLOC_CYCLE
        assert int(_run(cycle)) < 50
        assert int(_run(cycle, NPDC_NO_PROCESS_TUNING="1")) > 200
