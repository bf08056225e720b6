"""One knob for the thread count of the pools npdc uses: Numba's workers and OpenBLAS.

Two OpenBLAS copies are loaded: numpy's (matmul in Python code) and scipy's (np.dot inside Numba
kernels goes through scipy's BLAS). Kernels call BLAS from inside their own parallel loops, so
scipy's copy must stay single-threaded; numpy's follows the thread count. OpenBLAS has no Python
API; the wheels export `scipy_openblas_set_num_threads[64_]`, called through ctypes when there.
Elsewhere BLAS keeps its own setting (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS still apply).
"""

import ctypes
import glob
import os

import numba
import numpy as np

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")


def _openblas_setter(package):
    libs = glob.glob(os.path.join(os.path.dirname(package.__file__), os.pardir,
                                  f"{package.__name__}.libs", "*openblas*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            if hasattr(lib, name):
                return getattr(lib, name)
    return None


def set_threads(n):
    """Use n threads in Numba kernels and in BLAS; returns n."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    setter = _openblas_setter(np)
    if setter is not None:
        setter(ctypes.c_int(n))
    return n


def single_thread_numba_blas():
    """Make the BLAS that Numba's np.dot calls (scipy's) single-threaded."""
    import scipy

    setter = _openblas_setter(scipy)
    if setter is not None:
        setter(ctypes.c_int(1))
