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

The stride-1 convolution keeps a row's partial sums in vector registers, output positions in the
lanes, and streams the row's non-zeros through them once per block of positions, as the sparse
1x1 kernels of Elsen et al. 2020 ("Fast Sparse ConvNets") do; departures: a 3x3 (any kh x kw)
tap is a shifted run of the padded input, so the same loop serves every kernel size, and the
row's steps and indices are first decoded to (input offset, weight) pairs, once per task, since a
step decoded per block would cost a table look-up and a division per multiply-add.

The steps and indices come from a file, so `check_csr` runs before every use: a column that
steps out of its row or a bad index is a ValueError, never an out-of-bounds read.
"""

import numba
import numpy as np

from npdc.kernels.fused import finish_tile, im2col_rows, pad_input, pad_plane, pad_serial, tile_rows
from npdc.kernels.simd import fma16, ld16, prefer_512_bit_vectors, st16, straight_line_compiled


MAX_STEP = 255  # the largest column step one (uint8) entry holds
TASK_VALUES = 1 << 16  # conv_sparse_s1's input images per batch task, in values (about 256 KB)
RUNS_PER_THREAD = 4  # fewer batch tasks than this per thread: conv_sparse_s1 splits by rows


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


@numba.njit(cache=True)
def tap_offsets(c_in, kh, kw, hp, wp):
    """Where column c*kh*kw + i*kw + j of a weight row starts in one padded image (C, Hp, Wp)."""
    lut = np.empty(c_in * kh * kw, np.uint64)
    r = 0
    for c in range(c_in):
        for i in range(kh):
            for j in range(kw):
                lut[r] = c * hp * wp + i * wp + j
                r += 1
    return lut


@numba.njit(cache=True)
def decode_row(rowptr, cols, vidx, table, lut, o, offs, vals):
    """Row o's entries as (input offset, weight) pairs in offs/vals[:count] (a filler: weight 0,
    which adds nothing); returns count, or BAD_COLUMN / BAD_INDEX (check_row) at the first entry
    that points outside lut or table, before reading there. Unsigned indices and no branch on
    the fillers: this runs once per entry per call."""
    n_cols, n_values = np.uint64(lut.shape[0]), np.uint64(table.shape[0])
    c, k = np.uint64(0), np.uint64(0)
    for e in range(np.uint64(rowptr[o]), np.uint64(rowptr[o + 1])):
        c += np.uint64(cols[e])
        v = np.uint64(vidx[e])
        if c >= n_cols:
            return BAD_COLUMN
        if v >= n_values:
            return BAD_INDEX
        offs[k], vals[k] = lut[c], table[v]
        k += np.uint64(1)
    return np.int64(k)


def _rows8_body(xf, offs, vals, e0, e1, d0, d1, d2, d3, d4, d5, d6, d7, s0, s1, s2, s3, s4, s5, s6,
                s7, acc):
    """acc[s_v .. s_v+15] = sum over entries e0..e1-1 of vals[e] * xf[offs[e] + d_v ..], v < 8:
    eight 16-position chunks summed in registers, each entry's weight loaded once."""
    prefer_512_bit_vectors()
    acc[s0] = 0  # a zero of the float type; this chunk is written below anyway
    z = acc[s0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    for e in range(e0, e1):
        w, b = vals[e], offs[e]
        a0, a1 = fma16(a0, w, ld16(xf, b + d0)), fma16(a1, w, ld16(xf, b + d1))
        a2, a3 = fma16(a2, w, ld16(xf, b + d2)), fma16(a3, w, ld16(xf, b + d3))
        a4, a5 = fma16(a4, w, ld16(xf, b + d4)), fma16(a5, w, ld16(xf, b + d5))
        a6, a7 = fma16(a6, w, ld16(xf, b + d6)), fma16(a7, w, ld16(xf, b + d7))
    st16(acc, s0, a0)
    st16(acc, s1, a1)
    st16(acc, s2, a2)
    st16(acc, s3, a3)
    st16(acc, s4, a4)
    st16(acc, s5, a5)
    st16(acc, s6, a6)
    st16(acc, s7, a7)


def _rows4_body(xf, offs, vals, e0, e1, d0, d1, d2, d3, s0, s1, s2, s3, acc):
    """_rows8_body for four chunks."""
    prefer_512_bit_vectors()
    acc[s0] = 0  # a zero of the float type; this chunk is written below anyway
    z = acc[s0]
    a0 = a1 = a2 = a3 = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    for e in range(e0, e1):
        w, b = vals[e], offs[e]
        a0, a1 = fma16(a0, w, ld16(xf, b + d0)), fma16(a1, w, ld16(xf, b + d1))
        a2, a3 = fma16(a2, w, ld16(xf, b + d2)), fma16(a3, w, ld16(xf, b + d3))
    st16(acc, s0, a0)
    st16(acc, s1, a1)
    st16(acc, s2, a2)
    st16(acc, s3, a3)


rows8_sums = straight_line_compiled(_rows8_body, "F[::1], u8[::1], F[::1], i8, i8, " + "u8, " * 16 + "F[::1]")
rows4_sums = straight_line_compiled(_rows4_body, "F[::1], u8[::1], F[::1], i8, i8, " + "u8, " * 8 + "F[::1]")


@numba.njit(cache=True, inline="always")
def _chunk(i, m, span, image):
    """(input displacement, accumulator offset) of chunk i of a task: image i // m of the task,
    positions 16 k .. 16 k + 15 for k = i % m, the last chunk ending at the span's end."""
    g, k = i // m, min(16 * (i % m), span - 16)
    return numba.uint64(g * image + k), numba.uint64(g * span + k)


@numba.njit(cache=True)
def _row_sums(xf, offs, vals, e0, e1, m, count, span, image, acc):
    """acc (count // m images of `span` sums, then the rest) = one weight row over the task's
    count chunks of 16 positions: eight chunks at a time, then four (the last repeated to fill)."""
    last = count - 1
    i = 0
    while i < count:
        (d0, s0), (d1, s1) = _chunk(i, m, span, image), _chunk(min(i + 1, last), m, span, image)
        (d2, s2) = _chunk(min(i + 2, last), m, span, image)
        (d3, s3) = _chunk(min(i + 3, last), m, span, image)
        if count - i > 4:
            (d4, s4), (d5, s5) = _chunk(i + 4, m, span, image), _chunk(min(i + 5, last), m, span, image)
            (d6, s6) = _chunk(min(i + 6, last), m, span, image)
            (d7, s7) = _chunk(min(i + 7, last), m, span, image)
            rows8_sums(xf, offs, vals, e0, e1, d0, d1, d2, d3, d4, d5, d6, d7, s0, s1, s2, s3, s4, s5,
                       s6, s7, acc)
            i += 8
        else:
            rows4_sums(xf, offs, vals, e0, e1, d0, d1, d2, d3, s0, s1, s2, s3, acc)
            i += 4


@numba.njit(cache=True)
def _row_sums_short(xf, offs, vals, e0, e1, n_img, span, image, acc):
    """_row_sums for spans under 16 positions, one position at a time."""
    for g in range(n_img):
        for k in range(span):
            s = xf[0] * 0
            for e in range(e0, e1):
                s += vals[e] * xf[offs[e] + numba.uint64(g * image + k)]
            acc[g * span + k] = s


@numba.njit(cache=True)
def _rows_over_images(xf, lut, rowptr, cols, vidx, table, o, g0, g1, per, m, span, image, wp, y,
                      scale, shift, act, slopes, res, res_mode, res_front, res_stride, acc, offs, vals):
    """Weight row o over images g0..g1-1 of xf (padded, `image` values apart), `per` at a time,
    each image's outputs through the tail into y. Returns decode_row's count (negative: a bad
    entry, and nothing summed)."""
    count = decode_row(rowptr, cols, vidx, table, lut, o, offs, vals)
    if count < 0:
        return count
    ho = y.shape[2]
    for a in range(g0, g1, per):
        b = min(g1, a + per)
        src = xf[a * image:]
        if span >= 16:
            _row_sums(src, offs, vals, 0, count, m, m * (b - a), span, image, acc)
        else:
            _row_sums_short(src, offs, vals, 0, count, b - a, span, image, acc)
        for g in range(b - a):
            finish_tile(acc[g * span:], wp, y, a + g, o, 0, ho, scale, shift, act, slopes, res,
                        res_mode, res_front, res_stride)
    return count


@numba.njit(parallel=True, cache=True)
def conv_sparse_s1(x, pad, xp, rowptr, cols, vidx, table, kh, kw, scale, shift, act, slopes, res,
                   res_mode, res_front, res_stride, y, acc_ws):
    """Stride-1 sparse convolution over the padded input xp (N, C, Hp, Wp), padded here from x
    when pad > 0 (with pad 0, xp is the input and x is unused). With outputs laid out at row pitch
    Wp, tap (c, i, j) of every output is one contiguous run of xp starting at (c, i, j), so a
    weight row is a sum of shifted runs: its entries are decoded into (offset, weight) pairs, then
    summed over the outputs' 16-position chunks eight at a time in vector registers, several
    images per pass when a plane has fewer chunks (as far as acc_ws, (threads, >= max(span,
    SPARSE_GROUP_FLOATS)), holds). A batch is split into runs of images holding about
    TASK_VALUES input values: a task pads its run's images and passes every row over them while
    they are in its cache; one image, or too few runs, is split by rows instead. Every output is
    summed in its row's entry order, whatever the split or the thread."""
    n_img, c_in, hp, wp = xp.shape
    o_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    span, image = (ho - 1) * wp + wo, c_in * hp * wp
    check_rows(rowptr, cols, vidx, o_out)  # the entries are checked as the tasks decode them
    lut = tap_offsets(c_in, kh, kw, hp, wp)
    status = np.zeros(o_out, np.int64)
    longest = 1
    for o in range(o_out):
        longest = max(longest, rowptr[o + 1] - rowptr[o])
    threads = acc_ws.shape[0]  # one row per thread, as every workspace
    offs_ws, vals_ws = np.empty((threads, longest), np.uint64), np.empty((threads, longest), xp.dtype)
    m = (span + 15) // 16
    per = max(1, min(8 // m, acc_ws.shape[1] // span, n_img))
    run = per * max(1, TASK_VALUES // (per * image))
    runs = (n_img + run - 1) // run
    xf = xp.reshape(n_img * image)
    if runs >= RUNS_PER_THREAD * threads:
        for r in numba.prange(runs):
            g0, g1 = r * run, min(n_img, (r + 1) * run)
            tid = numba.get_thread_id()
            if pad > 0:
                for t in range(g0 * c_in, g1 * c_in):
                    pad_plane(x, t // c_in, t % c_in, pad, xp)
            for o in range(o_out):
                status[o] = _rows_over_images(xf, lut, rowptr, cols, vidx, table, o, g0, g1, per, m,
                                              span, image, wp, y, scale, shift, act, slopes, res,
                                              res_mode, res_front, res_stride, acc_ws[tid],
                                              offs_ws[tid], vals_ws[tid])
    else:
        if pad > 0 and n_img == 1:
            pad_serial(x, pad, xp)
        elif pad > 0:
            pad_input(x, pad, xp)
        for o in numba.prange(o_out):
            tid = numba.get_thread_id()
            status[o] = _rows_over_images(xf, lut, rowptr, cols, vidx, table, o, 0, n_img, per, m,
                                          span, image, wp, y, scale, shift, act, slopes, res,
                                          res_mode, res_front, res_stride, acc_ws[tid],
                                          offs_ws[tid], vals_ws[tid])
    refuse_entry(status.min())


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
