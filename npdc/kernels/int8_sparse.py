"""The int8 tile GEMM over a weight row's non-zero words only, for the low-density layers of a
pruned net: npdc.kernels.int8.gemm_tile's sums, the zero words skipped.

A packed weight word holds four int8 weights of one tap (four input channels), as vpdpbusd
multiplies them (npdc.kernels.vnni); a word of four zeros adds nothing to any position, so each
row lists its other words as entries (the word and where its column vectors start in the tile's
input, the tap offset of the word) and sums only those: at 5 % weight density about a fifth of a
row's words are left. As in npdc.kernels.sparse_s1 for floats (after Elsen et al. 2020, "Fast
Sparse ConvNets"), one row's partial sums stay in registers over up to eight runs of 16
positions while its entries stream through once per pass. Integer sums in a different order
are the same sums, so the output has the bits of the dense GEMM. A linear layer runs the same
passes over its packed input rows (`linear_sparse_u8`: the batch's images are the positions).
"""

import numba
import numpy as np

from npdc.kernels.int8_pack import GAP, GROUP, LANES, group_bytes, rows_pitch
from npdc.kernels.int8_requant import finish_linear
from npdc.kernels.vnni import (SPARSE_VECTORS, dot_row_sparse1, dot_row_sparse2, dot_row_sparse3, dot_row_sparse4,
                               dot_row_sparse5, dot_row_sparse6, dot_row_sparse7, dot_row_sparse8)


def sparse_entries(w, k4, offs):
    """(rowptr (O4 + 1,), offsets, words) int64, int64, int32 of the packed weights w (O4 x k4
    int32 words) whose taps start at offs (k4 byte offsets): row o's non-zero words are
    entries rowptr[o]..rowptr[o+1]-1, in k order, each with the offset of its column."""
    rows = np.asarray(w, np.int32).reshape(-1, k4)
    o_idx, k_idx = np.nonzero(rows)
    rowptr = np.zeros(rows.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(o_idx, minlength=rows.shape[0]), out=rowptr[1:])
    return rowptr, np.asarray(offs, np.int64)[k_idx], rows[o_idx, k_idx].astype(np.int32)


def word_density(w):
    """The share of a layer's packed weight words that are not zero (what the sparse GEMM runs)."""
    return float(np.count_nonzero(w)) / max(1, w.size)


@numba.njit(cache=True)
def row_sparse_portable(ew, e_off, e0, e1, cols, c_off, acc, a_off, vectors):
    """dot_row_sparseV in plain loops: acc[a_off + l] = sum over the entries of the 4-byte dot
    product of word ew[e] (4 int8) and the column bytes at cols[c_off + e_off[e] + 4l], l < 16 V."""
    wb = ew.view(np.int8)
    n = LANES * vectors
    for lane in range(n):
        acc[a_off + lane] = 0
    for e in range(e0, e1):
        w0, w1 = np.int32(wb[e * GROUP]), np.int32(wb[e * GROUP + 1])
        w2, w3 = np.int32(wb[e * GROUP + 2]), np.int32(wb[e * GROUP + 3])
        at = c_off + e_off[e]
        for lane in range(n):
            b = at + lane * GROUP
            acc[a_off + lane] += np.int32(w0 * np.int32(cols[b]) + w1 * np.int32(cols[b + 1])
                                          + w2 * np.int32(cols[b + 2]) + w3 * np.int32(cols[b + 3]))


@numba.njit(cache=True)
def _row_pass(ew, e_off, e0, e1, cols, c_off, acc, a_off, vectors):
    """dot_row_sparseV with V = vectors (1..SPARSE_VECTORS) chosen at run time."""
    if vectors == 8:
        dot_row_sparse8(ew, e_off, e0, e1, cols, c_off, acc, a_off)
    elif vectors == 7:
        dot_row_sparse7(ew, e_off, e0, e1, cols, c_off, acc, a_off)
    elif vectors == 6:
        dot_row_sparse6(ew, e_off, e0, e1, cols, c_off, acc, a_off)
    elif vectors == 5:
        dot_row_sparse5(ew, e_off, e0, e1, cols, c_off, acc, a_off)
    elif vectors == 4:
        dot_row_sparse4(ew, e_off, e0, e1, cols, c_off, acc, a_off)
    elif vectors == 3:
        dot_row_sparse3(ew, e_off, e0, e1, cols, c_off, acc, a_off)
    elif vectors == 2:
        dot_row_sparse2(ew, e_off, e0, e1, cols, c_off, acc, a_off)
    else:
        dot_row_sparse1(ew, e_off, e0, e1, cols, c_off, acc, a_off)


@numba.njit(cache=True)
def gemm_tile_sparse(rowptr, e_off, ew, cols, pitch, acc, vnni):
    """acc (O4 x pitch, flat) = gemm_tile's sums of a tile whose taps are read at offsets (the
    entries' e_off), from the entries of sparse_entries: each row in passes of equal runs of
    16 positions, at most SPARSE_VECTORS of them."""
    n_vec = pitch // LANES
    passes = (n_vec + SPARSE_VECTORS - 1) // SPARSE_VECTORS
    per = (n_vec + passes - 1) // passes
    for o in range(rowptr.size - 1):
        e0, e1 = rowptr[o], rowptr[o + 1]
        for v in range(0, n_vec, per):
            take = min(per, n_vec - v)
            if vnni:
                _row_pass(ew, e_off, e0, e1, cols, v * LANES * GROUP, acc, o * pitch + v * LANES, take)
            else:
                row_sparse_portable(ew, e_off, e0, e1, cols, v * LANES * GROUP, acc, o * pitch + v * LANES, take)


def linear_entries(w, k4, batch):
    """sparse_entries of a linear layer's packed weights w (O4 x k4 words) for linear_sparse_u8 at
    a batch: word k's column vectors start k * group_bytes(pitch) bytes into the packed rows."""
    return sparse_entries(w, k4, np.arange(k4, dtype=np.int64) * group_bytes(rows_pitch(batch)))


@numba.njit(cache=True, parallel=True)
def linear_sparse_u8(x, rowptr, e_off, ew, batch, bias, m0, shift, meta, y, y_float, dequant, cols, threads, vnni):
    """npdc.kernels.int8.linear_u8 over each output row's non-zero weight words only: x (N, F)
    uint8, F a multiple of 4, N <= batch, the entries those of linear_entries at `batch`; the
    same bits. The rows are packed in int8_pack.pack_rows' layout (four features to a word,
    rows_pitch(batch) positions per word), but by both threads and a whole word at a time, into
    cols (>= k4 * group_bytes(pitch) bytes); each output row is then one pass of at most
    SPARSE_VECTORS runs and its tail."""
    n_img, k4 = x.shape[0], x.shape[1] // GROUP
    pitch = rows_pitch(batch)
    step = group_bytes(pitch) // GROUP
    words, xw = cols[:k4 * group_bytes(pitch)].view(np.uint32), x.reshape(x.size).view(np.uint32)
    for g in numba.prange(k4):
        for p in range(pitch):
            words[g * step + p] = xw[p * k4 + g] if p < n_img else 0
    sums = np.zeros((threads, pitch + GAP // 4), np.int32)
    o_out = y_float.shape[1] if dequant.size else y.shape[1]
    n_vec = pitch // LANES
    for o in numba.prange(o_out):
        a = sums[numba.get_thread_id()]
        for v in range(0, n_vec, SPARSE_VECTORS):
            take = min(SPARSE_VECTORS, n_vec - v)
            if vnni:
                _row_pass(ew, e_off, rowptr[o], rowptr[o + 1], cols, v * LANES * GROUP, a, v * LANES, take)
            else:
                row_sparse_portable(ew, e_off, rowptr[o], rowptr[o + 1], cols, v * LANES * GROUP, a, v * LANES, take)
        for p in range(n_img):
            finish_linear(a[p], p, o, bias, m0, shift, meta, y, y_float, dequant)
