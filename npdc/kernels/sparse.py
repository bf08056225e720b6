"""Sparse convolution and linear kernels that work on the non-zeros and their codebook indices.

The weights of a layer are held as in EIE (Han et al. 2016, "EIE: Efficient Inference Engine on
Compressed Deep Neural Network"): only the surviving weights, each as a column and a small
codebook index, the shared values in a per-layer table (Han, Mao & Dally 2016, "Deep
Compression"), so a weight is a table look-up. Departures from EIE: rows are output channels
(compressed sparse rows, one thread per row) rather than columns split over processing
elements, since a CPU thread can gather inputs freely; the column is absolute, not relative; the
folded batch-norm scale is applied once per output in the tail instead of being baked into the
table, so one table serves every channel.

The columns and indices come from a file, so `check_csr` runs before every use: a bad column or
index is a ValueError, never an out-of-bounds read.
"""

import numba
import numpy as np

from npdc.kernels.fused import add_tap, finish_plane


@numba.njit(cache=True)
def check_csr(rowptr, cols, vidx, n_rows, n_cols, table_size):
    """Raise ValueError unless rowptr (n_rows + 1) is non-decreasing within cols, every column
    is < n_cols and every value index < table_size."""
    if rowptr.shape[0] != n_rows + 1 or rowptr[0] != 0 or rowptr[n_rows] > cols.shape[0] \
            or cols.shape[0] != vidx.shape[0]:
        raise ValueError("sparse layer: row pointers do not match the entries")
    for r in range(n_rows):
        if rowptr[r + 1] < rowptr[r]:
            raise ValueError("sparse layer: row pointers decrease")
    for e in range(rowptr[n_rows]):
        if cols[e] < 0 or cols[e] >= n_cols:
            raise ValueError("sparse layer: column out of range")
        if vidx[e] < 0 or vidx[e] >= table_size:
            raise ValueError("sparse layer: codebook index out of range")


@numba.njit(cache=True)
def csr_from_indices(indices, n_rows, rowptr, cols, vidx):
    """Fill (rowptr, cols, vidx) from flat value indices (n_rows x n_cols, 0 = zero weight);
    returns the number of non-zeros. The caller sized cols and vidx for them."""
    n_cols = indices.shape[0] // n_rows
    nnz = 0
    rowptr[0] = 0
    for r in range(n_rows):
        for c in range(n_cols):
            v = indices[r * n_cols + c]
            if v != 0:
                if nnz >= cols.shape[0]:
                    raise ValueError("sparse layer: more non-zeros than its buffer holds")
                cols[nnz] = c
                vidx[nnz] = v
                nnz += 1
        rowptr[r + 1] = nnz
    return nnz


@numba.njit(parallel=True, cache=True)
def conv_sparse(x, rowptr, cols, vidx, table, kh, kw, stride, pad, scale, shift, act, slopes,
                res, res_mode, res_front, res_stride, y, acc):
    """x: (N, C, H, W) -> y: (N, O, Ho, Wo); row o holds the non-zeros of W[o] as columns
    c*kh*kw + i*kw + j and indices into table (index 0 may stand for 0.0). The tail is that of
    npdc.kernels.fused.conv_direct; acc: (threads, >= Ho*Wo) scratch."""
    n_img, c_in = x.shape[0], x.shape[1]
    o_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    taps = kh * kw
    check_csr(rowptr, cols, vidx, o_out, c_in * taps, table.shape[0])
    for t in numba.prange(n_img * o_out):
        n, o = t // o_out, t % o_out
        a = acc[numba.get_thread_id()]
        a[:ho * wo] = 0
        for e in range(rowptr[o], rowptr[o + 1]):
            r = np.int64(cols[e])
            tap = r % taps
            add_tap(a, x[n, r // taps], table[vidx[e]], tap // kw, tap % kw, stride, pad, ho, wo)
        finish_plane(a, y, n, o, scale, shift, act, slopes, res, res_mode, res_front, res_stride)


@numba.njit(parallel=True, cache=True, fastmath=True)
def linear_sparse(x, rowptr, cols, vidx, table, scale, shift, act, slopes, y):
    """x: (N, F) -> y: (N, O) = act(sum over row o's non-zeros of table[v] * x[:, col] * scale[o]
    + shift[o])."""
    check_csr(rowptr, cols, vidx, y.shape[1], x.shape[1], table.shape[0])
    for o in numba.prange(y.shape[1]):
        for n in range(x.shape[0]):
            xn = x[n]
            s = np.float32(0.0)
            for e in range(rowptr[o], rowptr[o + 1]):
                s += table[vidx[e]] * xn[cols[e]]
            v = s * scale[o] + shift[o]
            if act and v < 0:
                v *= slopes[o]
            y[n, o] = v
