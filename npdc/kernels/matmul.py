"""A matrix product on Numba's threads: the rows of the result split in BLOCKS blocks, each one
single-threaded BLAS call (scipy's, which npdc.kernels.conv keeps single-threaded).

Why not NumPy's matmul: that runs on OpenBLAS's own thread pool, and between Numba's parallel
kernels the hand-over between the two pools costs more than a small product itself. ResNet-50's
classifier (8 x 2048 by 2048 x 1000) took well under a millisecond alone but tens of
milliseconds inside the network on a loaded 2-core machine (docs/perf.md). The split is fixed,
so the bits do not depend on the thread count.
"""

import numba
import numpy as np


BLOCKS = 2  # row blocks, fixed: BLAS may sum a 4-row block differently from an 8-row one, so a
# split that followed the thread count would change the result's bits with --threads


@numba.njit(parallel=True, cache=True)
def _blocks(a, b, out, blocks):
    m = a.shape[0]
    for t in numba.prange(blocks):
        lo, hi = t * m // blocks, (t + 1) * m // blocks
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
    _blocks(a, b, out, BLOCKS)
    return out
