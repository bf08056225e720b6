"""What importing npdc sets up for the process: thread waiting and malloc's handling of freed
tensors. Each case runs in a fresh interpreter, since the settings only act before numpy loads."""

import os
import subprocess
import sys

import pytest

ALLOC_CYCLE = """
import resource
import npdc
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


def _run(code, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GOMP_", "OMP_"))}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_tensor_is_reused_without_faulting_in_fresh_pages():
    assert int(_run(ALLOC_CYCLE)) < 50  # 4096 pages of 4 KiB if the block went back to the kernel


def test_thread_waiting_defaults_and_the_users_own_choice():
    show = "import os, npdc; print(os.environ['GOMP_SPINCOUNT'], os.environ['OMP_WAIT_POLICY'])"
    assert _run(show) == "30000 PASSIVE"
    assert _run(show, GOMP_SPINCOUNT="5", OMP_WAIT_POLICY="ACTIVE") == "5 ACTIVE"


def test_an_embedding_program_can_refuse_the_process_settings():
    """NPDC_NO_PROCESS_TUNING=1: no thread variables set, and freed blocks go back as glibc likes."""
    show = "import os, npdc; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    assert _run(show, NPDC_NO_PROCESS_TUNING="1") == "None None"
    if sys.platform.startswith("linux"):
        assert int(_run(ALLOC_CYCLE, NPDC_NO_PROCESS_TUNING="1")) > 200  # tuned: under 50
