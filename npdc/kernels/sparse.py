"""Sparse convolution and linear kernels that work on the non-zeros and their codebook indices.

The weights of a layer are held as in EIE (Han et al. 2016, "EIE: Efficient Inference Engine on
Compressed Deep Neural Network"): only the surviving weights, each as a column and a small
codebook index, the shared values in a per-layer table (Han, Mao & Dally 2016, "Deep
Compression"), so a weight is a table look-up. The column of an entry is relative, as in both
papers: one byte holds its step from the previous entry's column in the row (from column 0 for
the first), and a step over MAX_STEP is taken through filler entries of MAX_STEP steps whose
value index is 0, the table's zero, which add nothing. Departures from EIE: rows are output
channels (compressed sparse rows, one thread per row) rather than columns split over processing
elements, since a CPU thread can gather inputs freely; steps are 8 bits, not 4 (half the fillers
at high sparsity, and the column still costs half of an absolute 16-bit one); the folded
batch-norm scale is applied once per output in the tail instead of being baked into the table,
so one table serves every channel.

The steps and indices come from a file, so `check_csr` runs before every use (the stride-1
convolution, npdc.kernels.sparse_s1, checks each entry as it decodes it): a column that steps out
of its row or a bad index is a ValueError, never an out-of-bounds read.
"""

import numba
import numpy as np

from npdc.kernels.fused import finish_tile, im2col_rows, tile_rows


MAX_STEP = 255  # the largest column step one (uint8) entry holds


@numba.njit(cache=True)
def check_rows(rowptr, cols, vidx, n_rows):
    """Raise ValueError unless rowptr (n_rows + 1) starts at 0 and is non-decreasing within cols
    (as long as vidx)."""
    if rowptr.shape[0] != n_rows + 1 or rowptr[0] != 0 or rowptr[n_rows] > cols.shape[0] \
            or cols.shape[0] != vidx.shape[0]:
        raise ValueError("sparse layer: row pointers do not match the entries")
    for r in range(n_rows):
        if rowptr[r + 1] < rowptr[r]:
            raise ValueError("sparse layer: row pointers decrease")


BAD_COLUMN, BAD_INDEX = -1, -2  # what check_row or decode_row returns for a bad entry


@numba.njit(cache=True)
def check_row(rowptr, cols, vidx, r, n_cols, table_size):
    """0, or BAD_COLUMN / BAD_INDEX at row r's first entry whose column (the running sum of the
    steps) is not < n_cols or whose value index is not < table_size."""
    c = 0
    for e in range(rowptr[r], rowptr[r + 1]):
        c += np.int64(cols[e])
        if cols[e] < 0 or c >= n_cols:
            return BAD_COLUMN
        if vidx[e] < 0 or vidx[e] >= table_size:
            return BAD_INDEX
    return 0


@numba.njit(cache=True)
def check_csr(rowptr, cols, vidx, n_rows, n_cols, table_size):
    """Raise ValueError unless the rows are well formed (check_rows), every column the steps
    reach in a row is < n_cols and every value index < table_size."""
    check_rows(rowptr, cols, vidx, n_rows)
    for r in range(n_rows):
        refuse_entry(check_row(rowptr, cols, vidx, r, n_cols, table_size))


@numba.njit(cache=True)
def refuse_entry(code):
    """Raise the ValueError of a BAD_COLUMN or BAD_INDEX code; any other code passes."""
    if code == BAD_COLUMN:
        raise ValueError("sparse layer: column out of range")
    if code == BAD_INDEX:
        raise ValueError("sparse layer: codebook index out of range")


@numba.njit(cache=True)
def csr_entries(indices, n_rows):
    """Entries (non-zeros and fillers) that csr_from_indices writes for these flat indices."""
    n_cols = indices.shape[0] // n_rows
    count = 0
    for r in range(n_rows):
        last = 0
        for c in range(n_cols):
            if indices[r * n_cols + c] != 0:
                count += 1 + (c - last - 1) // MAX_STEP if c > last else 1
                last = c
    return count


@numba.njit(cache=True)
def csr_from_indices(indices, n_rows, rowptr, cols, vidx):
    """Fill (rowptr, cols as column steps, vidx) from flat value indices (n_rows x n_cols,
    0 = zero weight); returns the number of entries, fillers included (csr_entries). The caller
    sized cols and vidx for them."""
    n_cols = indices.shape[0] // n_rows
    nnz = 0
    rowptr[0] = 0
    for r in range(n_rows):
        last = 0
        for c in range(n_cols):
            v = indices[r * n_cols + c]
            if v == 0:
                continue
            step = c - last
            while True:
                if nnz >= cols.shape[0]:
                    raise ValueError("sparse layer: more non-zeros than its buffer holds")
                if step <= MAX_STEP:
                    cols[nnz], vidx[nnz] = step, v
                    nnz += 1
                    break
                cols[nnz], vidx[nnz] = MAX_STEP, 0
                nnz += 1
                step -= MAX_STEP
            last = c
        rowptr[r + 1] = nnz
    return nnz


@numba.njit(parallel=True, cache=True)
def conv_sparse(x, rowptr, cols, vidx, table, kh, kw, stride, pad, scale, shift, act, slopes,
                res, res_mode, res_front, res_stride, y, col_ws, acc_ws):
    """x: (N, C, H, W) -> y: (N, O, Ho, Wo); row o holds the non-zeros of W[o] as steps to columns
    c*kh*kw + i*kw + j and indices into table. Tiles of output rows are lowered by im2col as in
    npdc.kernels.fused.conv_dense; each non-zero then adds table[v] times one column row, a long
    contiguous loop. Scratch and tail as in conv_dense."""
    n_img, c_in = x.shape[0], x.shape[1]
    o_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    rows = c_in * kh * kw
    check_csr(rowptr, cols, vidx, o_out, rows, table.shape[0])
    per = tile_rows(ho, wo, max(rows, o_out), col_ws.shape[1])
    tiles = (ho + per - 1) // per
    for t in numba.prange(n_img * tiles):
        n, p0 = t // tiles, (t % tiles) * per
        p1 = min(ho, p0 + per)
        width = (p1 - p0) * wo
        tid = numba.get_thread_id()
        col = col_ws[tid, :rows * width].reshape((rows, width))
        acc = acc_ws[tid, :width]
        im2col_rows(x[n], kh, kw, stride, pad, p0, p1, wo, col)
        for o in range(o_out):
            acc[:] = 0
            c = 0
            for e in range(rowptr[o], rowptr[o + 1]):
                c += np.int64(cols[e])
                w = table[vidx[e]]
                src = col[c]
                for k in range(width):
                    acc[k] += w * src[k]
            finish_tile(acc, wo, y, n, o, p0, p1, scale, shift, act, slopes, res, res_mode,
                        res_front, res_stride)


@numba.njit(parallel=True, cache=True, fastmath=True)
def linear_sparse(x, rowptr, cols, vidx, table, scale, shift, act, slopes, y):
    """x: (N, F) -> y: (N, O) = act(sum over row o's non-zeros of table[v] * x[:, col] * scale[o]
    + shift[o]), col the running sum of the row's steps."""
    check_csr(rowptr, cols, vidx, y.shape[1], x.shape[1], table.shape[0])
    for o in numba.prange(y.shape[1]):
        for n in range(x.shape[0]):
            xn = x[n]
            s = np.float32(0.0)
            c = 0
            for e in range(rowptr[o], rowptr[o + 1]):
                c += np.int64(cols[e])
                s += table[vidx[e]] * xn[c]
            v = s * scale[o] + shift[o]
            if act and v < 0:
                v *= slopes[o]
            y[n, o] = v
