"""A matrix product on Numba's threads: the rows of the result split in BLOCKS blocks, each one
single-threaded BLAS call (scipy's, which npdc.kernels.conv keeps single-threaded).

Why not NumPy's matmul: that runs on OpenBLAS's own thread pool, and between Numba's parallel
kernels the hand-over between the two pools costs more than a small product itself. ResNet-50's
classifier (8 x 2048 by 2048 x 1000) took well under a millisecond alone but tens of
milliseconds inside the network on a loaded 2-core machine (docs/perf.md). The split is fixed,
so the bits do not depend on the thread count.

A transposed view as the left factor (a data gradient's W^T) is copied a tile at a time: NumPy's
copy of a transposed view walks the source a column at a time, one cache line per element, and
took longer than the product itself on ResNet-50's 2048 x 512 weights (docs/perf.md).
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


TILE = 64  # a TILE x TILE float32 tile (16 KiB) and its transpose both fit in L1


@numba.njit(parallel=True, cache=True)
def _transpose_tiles(a, out):
    m, n = a.shape
    tiles_down, tiles_across = (m + TILE - 1) // TILE, (n + TILE - 1) // TILE
    for tile in numba.prange(tiles_down * tiles_across):
        i0, j0 = (tile // tiles_across) * TILE, (tile % tiles_across) * TILE
        i1, j1 = min(i0 + TILE, m), min(j0 + TILE, n)
        for j in range(j0, j1):
            for i in range(i0, i1):
                out[j, i] = a[i, j]


def transposed(a):
    """A C-contiguous copy of the 2-D array a.T (the same values, in any thread count)."""
    out = np.empty((a.shape[1], a.shape[0]), a.dtype)
    _transpose_tiles(np.ascontiguousarray(a), out)
    return out


def matmul(a, b, out=None):
    """a @ b for 2-D float arrays, in their common type; b may be a transposed view (C or F
    order), a is made C-contiguous (a copy when it is not). With `out` (a layer's gradient array)
    the product is written there and returned: straight from BLAS when out is C-contiguous in
    the product's type and shape, else copied in."""
    dtype = np.result_type(a, b)
    if a.ndim == 2 and a.dtype == dtype and a.T.flags.c_contiguous and not a.flags.c_contiguous:
        a = transposed(a.T)
    a = np.ascontiguousarray(a, dtype=dtype)
    if b.dtype != dtype or not (b.flags.c_contiguous or b.flags.f_contiguous):
        b = np.ascontiguousarray(b, dtype=dtype)
    shape = (a.shape[0], b.shape[1])
    if out is not None and not (out.dtype == dtype and out.shape == shape and out.flags.c_contiguous):
        out[...] = matmul(a, b)  # another type or layout: through a product of its own
        return out
    if out is None:
        out = np.empty(shape, dtype)
    _blocks(a, b, out, BLOCKS)
    return out
