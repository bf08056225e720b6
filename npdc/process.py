"""Process-wide settings that make npdc fast on a few cores: `tune_process()`.

Nothing here runs on import. The command line calls `tune_process()` first thing (unless
NPDC_NO_PROCESS_TUNING is set to something other than "" or "0"); a script or notebook that wants
the same speed calls `npdc.tune_process()` itself, before it imports numpy or anything that loads
it. A program that imports npdc as a library and never calls it keeps its process as it was.

Why: two thread pools share the cores, OpenBLAS (numpy's matmul) and Numba's OpenMP workers.
Both spin-wait after a call by default, and on a 2-core machine each pool's spinning steals the
cores the other needs (a 3x3 conv ran several times slower; docs/perf.md, Process settings). So
OpenBLAS's workers hardly spin and OpenMP's wait passively, except that GNU OpenMP's spin count is
set short rather than zero: a network runs hundreds of parallel loops in a row, and waking
sleeping workers for each one cost cifar-resnet20 much of its training speed and batch-1 latency.
These are environment variables that the libraries read when they load, hence "before numpy".

A training step allocates and frees a few hundred megabytes of tensors. glibc's malloc hands
large blocks back to the kernel when they are freed, so every step faulted fresh zeroed pages in
again (docs/perf.md has the count); with glibc, freed blocks are kept in the heap instead, unless
the user has tuned malloc through its own MALLOC_* variables. This one acts at any time.
"""

import ctypes
import os

OPT_OUT = "NPDC_NO_PROCESS_TUNING"


def tune_process():
    """Apply npdc's thread-waiting and malloc settings to this process (see the module docstring).

    Variables the user has set win. Call it before numpy is imported for the thread settings to
    take effect; calling it again does nothing more.
    """
    _tune_thread_pools()
    _keep_freed_blocks()


def opted_out():
    """Whether the environment asks the command line to leave the process as it is."""
    return os.environ.get(OPT_OUT, "") not in ("", "0")


def _tune_thread_pools():
    """Short spinning for OpenMP and OpenBLAS workers; the user's values win."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")  # a tenth of GNU OpenMP's default without a policy
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _keep_freed_blocks():
    """Serve blocks up to 1 GiB (or glibc's 32 MiB cap) from the heap and never trim it."""
    if any(name.startswith("MALLOC_") for name in os.environ):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc and a few others; not macOS
    if mallopt is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    # the trim threshold only after a larger mmap threshold is taken: setting either alone
    # turns off glibc's own threshold adjustment, which slowed training steps (docs/perf.md)
    if mallopt(m_mmap_threshold, 1 << 30) or mallopt(m_mmap_threshold, 32 << 20):
        mallopt(m_trim_threshold, 1 << 30)
