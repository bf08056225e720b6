"""The stride-1 sparse convolution of the runtime, on the rows of npdc.kernels.sparse (column
steps and codebook indices, EIE's format).

It keeps a weight row's partial sums in vector registers, output positions in the lanes, and
streams the row's non-zeros through them once per block of positions, as the sparse 1x1 kernels
of Elsen et al. 2020 ("Fast Sparse ConvNets") do. Departures: a tap of any kh x kw kernel is a
shifted run of the padded input, so the same loop serves every kernel size; the row's steps and
indices are first decoded to (input offset, weight) pairs, once per task, since a step decoded
per block would cost a look-up per multiply-add; a plane too small to fill the registers takes
several images (a batch) or several rows (one image) per pass.

Each entry's column and index are checked as they are decoded (a bad one is a ValueError before
anything is read there), and the row pointers before any row is decoded.
"""

import numba
import numpy as np

from npdc.kernels.fused import finish_tile, pad_input, pad_plane
from npdc.kernels.simd import fma16, ld16, prefer_512_bit_vectors, st16, straight_line_compiled
from npdc.kernels.sparse import BAD_COLUMN, BAD_INDEX, check_rows, refuse_entry

TASK_VALUES = 1 << 16  # conv_sparse_s1's input images per batch task, in values (about 256 KB)
RUNS_PER_THREAD = 4  # fewer batch tasks than this per thread: conv_sparse_s1 splits by rows


def subsampled_1x1(w_shape, stride, pad):
    """Whether conv_sparse_s1 runs a layer of this weight shape, stride and pad by subsampling its
    input first: a 1x1 kernel, no padding, stride > 1."""
    return w_shape[2] == 1 and w_shape[3] == 1 and pad == 0 and stride > 1


@numba.njit(cache=True)
def prepare_plane(x, n, c, pad, stride, xp):
    """xp[n, c] = x[n, c] padded (stride 1) or, for a 1x1 kernel without padding, every
    stride-th row and column of it."""
    if stride == 1:
        pad_plane(x, n, c, pad, xp)
        return
    for p in range(xp.shape[2]):
        for q in range(xp.shape[3]):
            xp[n, c, p, q] = x[n, c, p * stride, q * stride]


@numba.njit(cache=True)
def prepare_input(x, pad, stride, xp):
    """prepare_plane for every plane, on the calling thread; nothing when xp is the input."""
    if pad > 0 or stride > 1:
        for t in range(x.shape[0] * x.shape[1]):
            prepare_plane(x, t // x.shape[1], t % x.shape[1], pad, stride, xp)


@numba.njit(cache=True)
def tap_offsets(c_in, kh, kw, hp, wp):
    """Where column c*kh*kw + i*kw + j of a weight row starts in one padded image (C, Hp, Wp)."""
    lut = np.empty(c_in * kh * kw, np.uint32)  # the caller bounds an image below 2**32 values
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


@numba.njit(cache=True, inline="always")
def _store8(acc, at, sums):
    """acc[at[v] .. at[v]+15] = sums[v] for the eight 16-tuples of a register pass."""
    st16(acc, at[0], sums[0])
    st16(acc, at[1], sums[1])
    st16(acc, at[2], sums[2])
    st16(acc, at[3], sums[3])
    st16(acc, at[4], sums[4])
    st16(acc, at[5], sums[5])
    st16(acc, at[6], sums[6])
    st16(acc, at[7], sums[7])


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
    _store8(acc, (s0, s1, s2, s3, s4, s5, s6, s7), (a0, a1, a2, a3, a4, a5, a6, a7))


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


rows8_sums = straight_line_compiled(_rows8_body, "F[::1], u4[::1], F[::1], i8, i8, " + "u8, " * 16 + "F[::1]")
rows4_sums = straight_line_compiled(_rows4_body, "F[::1], u4[::1], F[::1], i8, i8, " + "u8, " * 8 + "F[::1]")


def _four_rows_body(xf, offs, vals, count, L, d0, d1, s00, s01, s10, s11, s20, s21, s30, s31, acc):
    """Two chunks (displacements d0, d1) of four rows at once, row r's pairs at offs/vals[r * L:],
    each padded with zero weights to `count`: acc[s_rc ..] = row r's sums over chunk c."""
    prefer_512_bit_vectors()
    acc[s00] = 0  # a zero of the float type; this chunk is written below anyway
    z = acc[s00]
    a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    for e in range(count):
        w0, b0, w1, b1 = vals[e], offs[e], vals[L + e], offs[L + e]
        w2, b2, w3, b3 = vals[2 * L + e], offs[2 * L + e], vals[3 * L + e], offs[3 * L + e]
        a00, a01 = fma16(a00, w0, ld16(xf, b0 + d0)), fma16(a01, w0, ld16(xf, b0 + d1))
        a10, a11 = fma16(a10, w1, ld16(xf, b1 + d0)), fma16(a11, w1, ld16(xf, b1 + d1))
        a20, a21 = fma16(a20, w2, ld16(xf, b2 + d0)), fma16(a21, w2, ld16(xf, b2 + d1))
        a30, a31 = fma16(a30, w3, ld16(xf, b3 + d0)), fma16(a31, w3, ld16(xf, b3 + d1))
    _store8(acc, (s00, s01, s10, s11, s20, s21, s30, s31), (a00, a01, a10, a11, a20, a21, a30, a31))


def _two_rows_body(xf, offs, vals, count, L, d0, d1, d2, d3, s00, s01, s02, s03, s10, s11, s12, s13,
                   acc):
    """_four_rows_body for four chunks of two rows."""
    prefer_512_bit_vectors()
    acc[s00] = 0
    z = acc[s00]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    for e in range(count):
        w0, b0, w1, b1 = vals[e], offs[e], vals[L + e], offs[L + e]
        a00, a01 = fma16(a00, w0, ld16(xf, b0 + d0)), fma16(a01, w0, ld16(xf, b0 + d1))
        a02, a03 = fma16(a02, w0, ld16(xf, b0 + d2)), fma16(a03, w0, ld16(xf, b0 + d3))
        a10, a11 = fma16(a10, w1, ld16(xf, b1 + d0)), fma16(a11, w1, ld16(xf, b1 + d1))
        a12, a13 = fma16(a12, w1, ld16(xf, b1 + d2)), fma16(a13, w1, ld16(xf, b1 + d3))
    _store8(acc, (s00, s01, s02, s03, s10, s11, s12, s13), (a00, a01, a02, a03, a10, a11, a12, a13))


four_rows_sums = straight_line_compiled(_four_rows_body, "F[::1], u4[::1], F[::1], i8, i8, " + "u8, " * 10 + "F[::1]")
two_rows_sums = straight_line_compiled(_two_rows_body, "F[::1], u4[::1], F[::1], i8, i8, " + "u8, " * 12 + "F[::1]")


@numba.njit(cache=True, inline="always")
def _chunk(i, m, span, image):
    """(input displacement, accumulator offset) of chunk i of a task: image i // m of the task,
    positions 16 k .. 16 k + 15 for k = i % m, the last chunk ending at the span's end."""
    g, k = i // m, min(16 * (i % m), span - 16)
    return numba.uint64(g * image + k), numba.uint64(g * span + k)


@numba.njit(cache=True)
def _pass(xf, offs, vals, e0, e1, m, count, i, span, image, acc):
    """Chunks i .. i+7 of a task's count chunks of 16 positions (i .. i+3 when at most four are
    left; chunks past the last repeat it), summed over entries e0..e1-1 in one register pass."""
    last = count - 1
    (d0, s0), (d1, s1) = _chunk(i, m, span, image), _chunk(min(i + 1, last), m, span, image)
    (d2, s2) = _chunk(min(i + 2, last), m, span, image)
    (d3, s3) = _chunk(min(i + 3, last), m, span, image)
    if count - i > 4:
        (d4, s4), (d5, s5) = _chunk(i + 4, m, span, image), _chunk(min(i + 5, last), m, span, image)
        (d6, s6) = _chunk(min(i + 6, last), m, span, image)
        (d7, s7) = _chunk(min(i + 7, last), m, span, image)
        rows8_sums(xf, offs, vals, e0, e1, d0, d1, d2, d3, d4, d5, d6, d7, s0, s1, s2, s3, s4, s5, s6,
                   s7, acc)
    else:
        rows4_sums(xf, offs, vals, e0, e1, d0, d1, d2, d3, s0, s1, s2, s3, acc)


@numba.njit(cache=True)
def _row_sums(xf, offs, vals, e0, e1, m, count, span, image, acc):
    """acc (count // m images of `span` sums, then the rest) = one weight row over the task's
    count chunks of 16 positions, a pass of eight at a time."""
    for i in range(0, count, 8):
        _pass(xf, offs, vals, e0, e1, m, count, i, span, image, acc)


@numba.njit(cache=True)
def _rows_by_pass(xf, offs, vals, rowptr, g0, g1, per, m, span, image, wp, y, scale, shift, act,
                  slopes, res, res_mode, res_front, res_stride, acc):
    """Every weight row (row o's pairs at offs/vals[rowptr[o]:rowptr[o + 1]]) over images
    g0..g1-1, `per` at a time, each image's outputs through the tail into y; acc holds
    rows x per x span sums. Each pass of eight chunks runs every row before the next pass, so
    the inputs it reads stay in the first-level cache (a row at a time, they came from the
    second: about half the speed)."""
    o_out, ho, block = y.shape[1], y.shape[2], per * span
    for a in range(g0, g1, per):
        b = min(g1, a + per)
        src, count = xf[a * image:], m * (b - a)
        for i in range(0, count, 8):
            for o in range(o_out):
                _pass(src, offs, vals, rowptr[o], rowptr[o + 1], m, count, i, span, image,
                      acc[o * block:])
        for o in range(o_out):
            for g in range(b - a):
                finish_tile(acc[o * block + g * span:], wp, y, a + g, o, 0, ho, scale, shift, act,
                            slopes, res, res_mode, res_front, res_stride)


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


@numba.njit(cache=True)
def _row_group(xf, lut, rowptr, cols, vidx, table, o0, rows, span, wp, y, scale, shift, act, slopes,
               res, res_mode, res_front, res_stride, acc, offs, vals):
    """Rows o0 .. o0 + rows - 1 (4 rows of a plane of at most two chunks, or 2 of at most four;
    a row past the last is the last again) of image 0 in one register pass, each row's outputs
    through the tail into y. Returns the least decode_row result (negative: a bad entry)."""
    L, last = offs.shape[0] // rows, y.shape[1] - 1
    count = 0
    for r in range(rows):
        k = decode_row(rowptr, cols, vidx, table, lut, min(o0 + r, last), offs[r * L:], vals[r * L:])
        if k < 0:
            return k
        offs[r * L + k:(r + 1) * L] = 0  # zero weights at offset 0 up to the longest row
        vals[r * L + k:(r + 1) * L] = 0
        count = max(count, k)
    d = (numba.uint64(0), numba.uint64(min(16, span - 16)), numba.uint64(min(32, span - 16)),
         numba.uint64(min(48, span - 16)))
    if rows == 4:
        four_rows_sums(xf, offs, vals, count, L, d[0], d[1], d[0], d[1], numba.uint64(span) + d[0],
                       numba.uint64(span) + d[1], numba.uint64(2 * span) + d[0],
                       numba.uint64(2 * span) + d[1], numba.uint64(3 * span) + d[0],
                       numba.uint64(3 * span) + d[1], acc)
    else:
        two_rows_sums(xf, offs, vals, count, L, d[0], d[1], d[2], d[3], d[0], d[1], d[2], d[3],
                      numba.uint64(span) + d[0], numba.uint64(span) + d[1],
                      numba.uint64(span) + d[2], numba.uint64(span) + d[3], acc)
    for r in range(min(rows, last + 1 - o0)):
        finish_tile(acc[r * span:], wp, y, 0, o0 + r, 0, y.shape[2], scale, shift, act, slopes, res,
                    res_mode, res_front, res_stride)
    return count


@numba.njit(cache=True)
def decode_floats(longest):
    """Floats of decode scratch one thread needs for rows of at most `longest` entries: the
    offsets and the weights of four rows (the most a register pass takes)."""
    return 2 * 4 * max(longest, 1)


@numba.njit(cache=True, inline="always")
def _decoded(ws, width):
    """(offsets, weights) of `width` entries each in one thread's decode scratch ws (floats): the
    offsets as 32-bit unsigned integers over the first `width` floats, the weights after them."""
    return ws[:width].view(np.uint32)[:width], ws[width:2 * width]


@numba.njit(parallel=True, cache=True)
def conv_sparse_s1(x, pad, stride, xp, rowptr, cols, vidx, table, kh, kw, scale, shift, act, slopes,
                   res, res_mode, res_front, res_stride, y, acc_ws, decode_ws):
    """Stride-1 sparse convolution over the padded input xp (N, C, Hp, Wp), padded here from x
    when pad > 0 (with pad 0 and stride 1, xp is the input and x is unused); a 1x1 kernel with pad
    0 may have stride > 1: xp (N, C, Ho, Wo) is then x subsampled here (prepare_plane).

    With outputs laid out at row pitch Wp, tap (c, i, j) of every output is one contiguous run of
    xp starting at (c, i, j), so a weight row is a sum of shifted runs: its entries are decoded
    into (offset, weight) pairs, then summed over the outputs' 16-position chunks eight at a time
    in vector registers, several images per pass when a plane has fewer chunks (as far as
    acc_ws, (threads, >= max(span, SPARSE_GROUP_FLOATS)), holds). A batch is split into runs of
    images holding about TASK_VALUES input values: its rows decoded once, a task pads its run's
    images and passes every row over them pass by pass (_rows_by_pass). One image, or too few
    runs, is split by rows instead (two or four rows per pass on a plane of at most four chunks,
    _row_group). Every output is summed in its row's entry order, whatever the split or the
    thread. decode_ws (threads, any; the float type of xp): where each thread decodes its rows,
    allocated here when it holds fewer than decode_floats(longest row) (the runtime sizes it so:
    its tiled kernels' columns)."""
    n_img, c_in, hp, wp = xp.shape
    o_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    span, image = (ho - 1) * wp + wo, c_in * hp * wp
    check_rows(rowptr, cols, vidx, o_out)  # the entries are checked as the tasks decode them
    lut = tap_offsets(c_in, kh, kw, hp, wp)
    status = np.zeros(o_out, np.int64)
    longest = 1
    for o in range(o_out):
        longest = max(longest, rowptr[o + 1] - rowptr[o])
    if image >= 1 << 32:
        raise ValueError("sparse layer: an image of 2**32 values or more")
    threads = acc_ws.shape[0]  # one row per thread, as every workspace
    m = (span + 15) // 16
    grouped = n_img == 1 and 16 <= span and m <= 4 and (8 // m) * span <= acc_ws.shape[1]
    rows = (4 if m <= 2 else 2) if grouped else 1  # rows per register pass
    width = rows * longest
    per = max(1, min(8 // m, acc_ws.shape[1] // span, n_img))
    run = per * max(1, TASK_VALUES // (per * image))
    runs = (n_img + run - 1) // run
    by_runs = runs >= RUNS_PER_THREAD * threads and span >= 16
    if not by_runs and (decode_ws.shape[0] < threads or decode_ws.shape[1] < decode_floats(longest)):
        decode_ws = np.empty((threads, decode_floats(longest)), xp.dtype)  # a batch decodes elsewhere
    xf = xp.reshape(n_img * image)
    if by_runs:
        # a batch: every row decoded once, in place of its entries (fillers as zero weights)
        offs, vals = np.empty(rowptr[o_out], np.uint32), np.empty(rowptr[o_out], xp.dtype)
        for o in numba.prange(o_out):
            status[o] = decode_row(rowptr, cols, vidx, table, lut, o, offs[rowptr[o]:],
                                   vals[rowptr[o]:])
        refuse_entry(status.min())
        need = o_out * per * span  # every row's sums of `per` images
        sums = acc_ws if acc_ws.shape[1] >= need else np.empty((threads, need), acc_ws.dtype)
        for r in numba.prange(runs):
            g0, g1 = r * run, min(n_img, (r + 1) * run)
            if pad > 0 or stride > 1:
                for t in range(g0 * c_in, g1 * c_in):
                    prepare_plane(x, t // c_in, t % c_in, pad, stride, xp)
            _rows_by_pass(xf, offs, vals, rowptr, g0, g1, per, m, span, image, wp, y, scale, shift,
                          act, slopes, res, res_mode, res_front, res_stride,
                          sums[numba.get_thread_id()])
    elif grouped:
        prepare_input(x, pad, stride, xp)
        for grp in numba.prange((o_out + rows - 1) // rows):
            tid = numba.get_thread_id()
            status[grp] = _row_group(xf, lut, rowptr, cols, vidx, table, grp * rows, rows, span, wp, y,
                                     scale, shift, act, slopes, res, res_mode, res_front, res_stride,
                                     acc_ws[tid], *_decoded(decode_ws[tid], width))
    else:
        if pad > 0 and n_img > 1 and stride == 1:
            pad_input(x, pad, xp)
        else:
            prepare_input(x, pad, stride, xp)
        for o in numba.prange(o_out):
            tid = numba.get_thread_id()
            status[o] = _rows_over_images(xf, lut, rowptr, cols, vidx, table, o, 0, n_img, per, m,
                                          span, image, wp, y, scale, shift, act, slopes, res,
                                          res_mode, res_front, res_stride, acc_ws[tid],
                                          *_decoded(decode_ws[tid], width))
    refuse_entry(status.min())
