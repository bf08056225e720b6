"""npdc: NumPy Deep Compression, a framework-free toolkit that makes trained ResNets small.

Two thread pools share the cores here: OpenBLAS (numpy's matmul) and Numba's OpenMP workers.
Both spin-wait after a call by default, and on a 2-core machine each pool's spinning steals the
cores the other needs (a 3x3 conv ran several times slower; docs/perf.md, Process settings). So OpenBLAS's workers hardly spin
and OpenMP's wait passively, except that GNU OpenMP's spin count is set short rather than zero:
a network runs hundreds of parallel loops in a row, and waking sleeping workers for each one
cost cifar-resnet20 much of its training speed and batch-1 latency (docs/perf.md).
All of this is set before numpy or numba is loaded, unless the user has chosen otherwise.

A training step allocates and frees a few hundred megabytes of tensors. glibc's malloc hands
large blocks back to the kernel when they are freed, so every step faulted fresh zeroed pages in
again (docs/perf.md has the count); with glibc, freed
blocks are kept in the heap instead, unless the user has tuned malloc through its own variables.

These are process-wide settings made on import. A program that embeds npdc and wants none of
them sets NPDC_NO_PROCESS_TUNING=1 in the environment before importing it.
"""

import ctypes
import os


def _tune_thread_pools():
    """Short spinning for OpenMP and OpenBLAS workers (see above); the user's values win."""
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


if os.environ.get("NPDC_NO_PROCESS_TUNING", "") in ("", "0"):
    _tune_thread_pools()
    _keep_freed_blocks()

__version__ = "0.1.0"
