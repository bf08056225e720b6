"""A matrix product on Numba's threads: the rows of the result split in one block per thread,
each block one single-threaded BLAS call (scipy's, which npdc.kernels.conv keeps single-threaded).

Why not NumPy's matmul: that runs on OpenBLAS's own thread pool, and between Numba's parallel
kernels the hand-over between the two pools costs more than a small product itself. ResNet-50's
classifier (8 x 2048 by 2048 x 1000) took well under a millisecond alone but tens of
milliseconds inside the network on a loaded 2-core machine (docs/perf.md). Rows are independent,
so the split changes no sum: the result is BLAS's for any thread count.
"""

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _blocks(a, b, out, n_threads):
    m = a.shape[0]
    for t in numba.prange(n_threads):
        lo, hi = t * m // n_threads, (t + 1) * m // n_threads
        if hi > lo:
            np.dot(a[lo:hi], b, out[lo:hi])


def matmul(a, b):
    """a @ b for 2-D float arrays, in their common type; b may be a transposed view (C or F
    order), a is made C-contiguous (a copy when it is not)."""
    dtype = np.result_type(a, b)
    a = np.ascontiguousarray(a, dtype=dtype)
    if b.dtype != dtype or not (b.flags.c_contiguous or b.flags.f_contiguous):
        b = np.ascontiguousarray(b, dtype=dtype)
    out = np.empty((a.shape[0], b.shape[1]), dtype)
    _blocks(a, b, out, numba.get_num_threads())
    return out
