"""The sparse convolution of the runtime over shifted runs of its input (stride 1, a subsampled
1x1, or any stride for one image in bands), on the rows of npdc.kernels.sparse (column steps and
codebook indices, EIE's format), summed by the register passes of npdc.kernels.sparse_passes.

How a call is shared among threads, by its shape:
- a batch of enough images: runs of images holding about TASK_VALUES input values; a task pads
  its run and passes every row over it pass by pass, so a pass's inputs stay in the first-level
  cache across the rows (_rows_by_pass);
- one image, a plane of two to four chunks: two or four rows per pass, rows split among threads
  (_row_group);
- one image, a larger plane: bands of output rows, one per thread; a thread pads its own band
  of the input (with the rows its taps reach past the band) and runs every row over it
  (_band). A split by rows instead makes each thread read the whole input, half of it just
  written by the other core, and the padded copy made on one thread: at batch 1 that transfer
  cost as much as the arithmetic (docs/perf.md). With stride s > 1 a band is kept as its s x s
  phases (every s-th row and column from each offset), so that each tap is again a shifted run:
  of one phase (the polyphase split of npdc.kernels.conv_polyphase, applied to the band);
- anything else (a few images, planes under 16 positions): rows split among threads.
Every output is summed in its row's entry order, whatever the split or the thread count."""

import numba
import numpy as np

from npdc.kernels.fused import PRANGE_ONLY, finish_tile_at, pad_input, pad_plane
from npdc.kernels.sparse import check_rows, refuse_entry
from npdc.kernels.sparse_passes import (chunk_pass, decode_floats, decode_row, decoded,
                                        four_rows_sums, row_sums, tap_offsets, two_rows_sums)

TASK_VALUES = 1 << 16  # conv_sparse_s1's input images per batch task, in values (about 256 KB)
RUNS_PER_THREAD = 4  # fewer batch tasks than this per thread: conv_sparse_s1 splits by rows
BAND_ROWS = 4  # the fewest output rows of a band of one image (a band of one row is mostly halo)


def subsampled_1x1(w_shape, stride, pad):
    """Whether conv_sparse_s1 runs a layer of this weight shape, stride and pad by subsampling its
    input first: a 1x1 kernel, no padding, stride > 1."""
    return w_shape[2] == 1 and w_shape[3] == 1 and pad == 0 and stride > 1


def sparse_takes(w_shape, stride, pad, in_hw, out_hw, batch, threads):
    """Whether conv_sparse_s1 computes a layer (input and output planes in_hw, out_hw) at this
    batch: stride 1, a subsampled 1x1, or any stride for one image that runs in bands (each band
    split into the stride's phases)."""
    if stride == 1 or subsampled_1x1(w_shape, stride, pad):
        return True
    wq = plane_shape(in_hw[0], in_hw[1], pad, stride)[1]
    return batch == 1 and bool(in_bands(1, out_hw[0], out_hw[1], wq, threads, w_shape[2], w_shape[3],
                                        stride))


@numba.njit(cache=True)
def bands(ho, threads):
    """(bands, output rows per band) of one image of ho output rows: a band per thread, each of
    at least BAND_ROWS rows (one band when ho is less)."""
    count = max(1, min(threads, ho // BAND_ROWS))
    per = (ho + count - 1) // count
    return (ho + per - 1) // per, per


@numba.njit(cache=True)
def plane_shape(h, w, pad, stride):
    """(Hq, Wq) of the plane conv_sparse_s1 sums over: the input padded, then for stride > 1 one
    phase of it (every stride-th row and column: a 1x1 kernel without padding reads one phase;
    one image in bands keeps a band of each phase a tap reads)."""
    return (h + 2 * pad + stride - 1) // stride, (w + 2 * pad + stride - 1) // stride


@numba.njit(cache=True)
def in_bands(n_img, ho, wo, wq, threads, kh, kw, stride):
    """Whether conv_sparse_s1 runs a call in bands of output rows: one image and either a kernel
    that reads several phases (stride > 1, not 1x1), or more than one band of a plane of more
    than four chunks (smaller ones run in row groups)."""
    if n_img == 1 and min(stride, kh) * min(stride, kw) > 1:
        return True
    span = (ho - 1) * wq + wo
    return n_img == 1 and bands(ho, threads)[0] > 1 and not (16 <= span <= 64)


@numba.njit(cache=True)
def band_floats(c_in, ho, kh, kw, stride, wq, threads):
    """Values of one thread's band of the input (every phase a tap reads), in its row of
    conv_sparse_s1's decode_ws, before its decoded rows."""
    phases = min(stride, kh) * min(stride, kw)
    return c_in * phases * (bands(ho, threads)[1] + (kh - 1) // stride) * wq


@numba.njit(cache=True)
def band_offsets(c_in, kh, kw, stride, hb, wq):
    """Where column c*kh*kw + i*kw + j of a weight row starts in a band: tap (i, j) reads phase
    (i % stride, j % stride) of channel c, shifted by i // stride rows and j // stride columns;
    each phase of each channel is hb x wq values (tap_offsets' layout at stride 1). The taps'
    offsets within a channel are worked out once, not once per channel (each is two integer
    divisions)."""
    pa, pb = min(stride, kh), min(stride, kw)
    taps = np.empty(kh * kw, np.uint32)
    for i in range(kh):
        for j in range(kw):
            taps[i * kw + j] = ((i % stride * pb + j % stride) * hb + i // stride) * wq + j // stride
    lut = np.empty(c_in * kh * kw, np.uint32)
    for c in range(c_in):
        for t in range(kh * kw):
            lut[c * kh * kw + t] = taps[t] + c * pa * pb * hb * wq
    return lut


@numba.njit(cache=True)
def prepare_plane(x, n, c, pad, stride, xp):
    """xp[n, c] = x[n, c] padded (stride 1) or, for a 1x1 kernel without padding, every
    stride-th row and column of it."""
    if stride == 1:
        pad_plane(x, n, c, pad, xp)
        return
    for p in range((x.shape[2] - 1) // stride + 1):
        for q in range(xp.shape[3]):
            xp[n, c, p, q] = x[n, c, p * stride, q * stride]


@numba.njit(cache=True)
def prepare_input(x, pad, stride, xp):
    """prepare_plane for every plane, on the calling thread; nothing when xp is the input."""
    if pad > 0 or stride > 1:
        for t in range(x.shape[0] * x.shape[1]):
            prepare_plane(x, t // x.shape[1], t % x.shape[1], pad, stride, xp)


@numba.njit(cache=True)
def fill_band(x, p0, hb, pad, stride, pa, pb, wq, band):
    """band as (C, pa * pb phases, hb, wq) = rows p0 .. p0 + hb - 1 of phases (a, b) < (pa, pb)
    of image 0 of x padded by `pad`: phase (a, b) row r, column q is padded row
    (p0 + r) * stride + a, column q * stride + b; zeros outside the input."""
    h, w = x.shape[2], x.shape[3]
    k = 0
    for c in range(x.shape[1]):
        for a in range(pa):
            for b in range(pb):
                for r in range(hb):
                    src = (p0 + r) * stride + a - pad
                    if src < 0 or src >= h:
                        for q in range(wq):
                            band[k + q] = 0
                    elif stride == 1:
                        for q in range(pad):
                            band[k + q] = 0
                        for q in range(w):
                            band[k + pad + q] = x[0, c, src, q]
                        for q in range(pad + w, wq):
                            band[k + q] = 0
                    else:
                        for q in range(wq):
                            col = q * stride + b - pad
                            band[k + q] = x[0, c, src, col] if 0 <= col < w else 0
                    k += wq


@numba.njit(cache=True)
def _band(x, xf, x0, pad, stride, pa, pb, lut, rowptr, cols, vidx, table, p0, p1, hb, wq, y, scale,
          shift, act, slopes, res, res_mode, res_front, res_stride, acc, offs, vals):
    """Output rows p0 .. p1 - 1 of image 0 for every weight row. With pad or stride, the band is
    first copied from x into xf[x0:] (fill_band; lut's layout); else xf is the input itself and
    x0 its row p0. Returns the least decode_row result (negative: a bad entry)."""
    if pad > 0 or stride > 1:
        fill_band(x, p0, hb, pad, stride, pa, pb, wq, xf[x0:])
    span = (p1 - p0 - 1) * wq + y.shape[3]
    m = (span + 15) // 16
    for o in range(y.shape[1]):
        count = decode_row(rowptr, cols, vidx, table, lut, o, offs, vals)
        if count < 0:
            return count
        row_sums(xf, x0, offs, vals, 0, count, m, m, span, 0, acc, 0)
        finish_tile_at(acc, 0, wq, y, 0, o, p0, p1, scale, shift, act, slopes, res, res_mode,
                       res_front, res_stride)
    return 0


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
        count = m * (b - a)
        for i in range(0, count, 8):
            for o in range(o_out):
                chunk_pass(xf, a * image, offs, vals, rowptr[o], rowptr[o + 1], m, count, i, span,
                           image, acc, o * block)
        for o in range(o_out):
            for g in range(b - a):
                finish_tile_at(acc, o * block + g * span, wp, y, a + g, o, 0, ho, scale, shift,
                               act, slopes, res, res_mode, res_front, res_stride)


@numba.njit(cache=True)
def _rows_over_images(xf, lut, rowptr, cols, vidx, table, o0, o1, n_img, per, m, span, image, wp,
                      y, scale, shift, act, slopes, res, res_mode, res_front, res_stride, acc, offs,
                      vals):
    """Weight rows o0..o1-1 over every image of xf (padded, `image` values apart), `per` images
    at a time, each image's outputs through the tail into y. Returns the least decode_row result
    (negative: a bad entry, and nothing summed after it)."""
    ho = y.shape[2]
    for o in range(o0, o1):
        count = decode_row(rowptr, cols, vidx, table, lut, o, offs, vals)
        if count < 0:
            return count
        for a in range(0, n_img, per):
            b = min(n_img, a + per)
            row_sums(xf, a * image, offs, vals, 0, count, m, m * (b - a), span, image, acc, 0)
            for g in range(b - a):
                finish_tile_at(acc, g * span, wp, y, a + g, o, 0, ho, scale, shift, act, slopes,
                               res, res_mode, res_front, res_stride)
    return 0


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
        finish_tile_at(acc, r * span, wp, y, 0, o0 + r, 0, y.shape[2], scale, shift, act, slopes,
                       res, res_mode, res_front, res_stride)
    return count


@numba.njit(parallel=PRANGE_ONLY, cache=True)
def conv_sparse_s1(x, pad, stride, xp, rowptr, cols, vidx, table, kh, kw, scale, shift, act, slopes,
                   res, res_mode, res_front, res_stride, y, acc_ws, decode_ws):
    """Sparse convolution of x (N, C, H, W) into y with the fused tail. A batch, or one image not
    in bands (in_bands), runs over xp (N, C, Hp, Wp) (plane_shape), at stride 1 or as a 1x1
    kernel with pad 0: x padded here when pad > 0 (with pad 0 and stride 1, xp is x itself), or
    subsampled here. One image in bands, at any stride, does not touch xp: each thread copies its
    band into its row of decode_ws.

    With outputs laid out at row pitch Wp, tap (c, i, j) of every output is one contiguous run
    of the plane (of one phase of it) starting at (c, i, j) (band_offsets), so a weight row is a
    sum of shifted runs: its entries are decoded into (offset, weight) pairs, then summed over
    the outputs' 16-position chunks in vector registers (npdc.kernels.sparse_passes), shared
    among threads as the module says. acc_ws (threads, >= max(span, SPARSE_GROUP_FLOATS)) holds
    the sums of several images or rows per pass as far as it can. decode_ws (threads, any; the
    float type of x): where each thread decodes its rows (after its band, in bands), allocated
    here when it holds fewer than band_floats + decode_floats(longest row) (the runtime sizes it
    so: its tiled kernels' columns)."""
    n_img, c_in = x.shape[0], x.shape[1]
    hp, wp = plane_shape(x.shape[2], x.shape[3], pad, stride)
    o_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    span, image = (ho - 1) * wp + wo, c_in * hp * wp
    check_rows(rowptr, cols, vidx, o_out)  # the entries are checked as the tasks decode them
    threads = acc_ws.shape[0]  # one row per thread, as every workspace
    status = np.zeros(max(o_out, threads), np.int64)
    longest = 1
    for o in range(o_out):
        longest = max(longest, rowptr[o + 1] - rowptr[o])
    if image >= 1 << 32:
        raise ValueError("sparse layer: an image of 2**32 values or more")
    m = (span + 15) // 16
    copy = pad > 0 or stride > 1  # else the plane is x itself
    banded = in_bands(n_img, ho, wo, wp, threads, kh, kw, stride)
    grouped = (not banded and n_img == 1 and 16 <= span and m <= 4
               and (8 // m) * span <= acc_ws.shape[1])
    rows = (4 if m <= 2 else 2) if grouped else 1  # rows per register pass
    width = rows * longest
    if stride > 1 and (kh > 1 or kw > 1 or pad > 0) and not banded:
        raise ValueError("sparse layer: a strided kernel other than an unpadded 1x1 runs only "
                         "in bands")
    band = band_floats(c_in, ho, kh, kw, stride, wp, threads) if banded and copy else 0
    per = max(1, min(8 // m, acc_ws.shape[1] // span, n_img))
    run = per * max(1, TASK_VALUES // (per * image))
    runs = (n_img + run - 1) // run
    by_runs = runs >= RUNS_PER_THREAD * threads and span >= 16
    scratch = band + decode_floats(longest)
    if not by_runs and (decode_ws.shape[0] < threads or decode_ws.shape[1] < scratch):
        decode_ws = np.empty((threads, scratch), x.dtype)  # a batch decodes elsewhere
    if banded:
        n_bands, per_band = bands(ho, threads)
        hb = per_band + (kh - 1) // stride if copy else hp
        pa, pb = min(stride, kh), min(stride, kw)
        lut = band_offsets(c_in, kh, kw, stride, hb, wp)
        xin = x.reshape(x.size)
        for t in numba.prange(n_bands):
            ws = decode_ws[numba.get_thread_id()]
            p0, p1 = t * per_band, min(ho, (t + 1) * per_band)
            status[t] = _band(x, ws if copy else xin, 0 if copy else p0 * wp, pad, stride, pa, pb,
                              lut, rowptr, cols, vidx, table, p0, p1, hb, wp, y, scale, shift,
                              act, slopes, res, res_mode, res_front, res_stride,
                              acc_ws[numba.get_thread_id()], *decoded(ws[band:], width))
        refuse_entry(status.min())
        return
    xf = xp.reshape(n_img * image)
    if by_runs:
        # a batch: every row decoded once, in place of its entries (fillers as zero weights)
        lut = tap_offsets(c_in, kh, kw, hp, wp)
        offs, vals = np.empty(rowptr[o_out], np.uint32), np.empty(rowptr[o_out], xp.dtype)
        for o in numba.prange(o_out):
            status[o] = decode_row(rowptr, cols, vidx, table, lut, o, offs[rowptr[o]:],
                                   vals[rowptr[o]:])
        refuse_entry(status.min())
        need = o_out * per * span  # every row's sums of `per` images
        sums = acc_ws if acc_ws.shape[1] >= need else np.empty((threads, need), acc_ws.dtype)
        for r in numba.prange(runs):
            g0, g1 = r * run, min(n_img, (r + 1) * run)
            if copy:
                for t in range(g0 * c_in, g1 * c_in):
                    prepare_plane(x, t // c_in, t % c_in, pad, stride, xp)
            _rows_by_pass(xf, offs, vals, rowptr, g0, g1, per, m, span, image, wp, y, scale, shift,
                          act, slopes, res, res_mode, res_front, res_stride,
                          sums[numba.get_thread_id()])
    elif grouped:
        lut = tap_offsets(c_in, kh, kw, hp, wp)
        prepare_input(x, pad, stride, xp)
        for grp in numba.prange((o_out + rows - 1) // rows):
            tid = numba.get_thread_id()
            status[grp] = _row_group(xf, lut, rowptr, cols, vidx, table, grp * rows, rows, span, wp, y,
                                     scale, shift, act, slopes, res, res_mode, res_front, res_stride,
                                     acc_ws[tid], *decoded(decode_ws[tid], width))
    else:
        lut = tap_offsets(c_in, kh, kw, hp, wp)
        if pad > 0 and n_img > 1 and stride == 1:
            pad_input(x, pad, xp)
        else:
            prepare_input(x, pad, stride, xp)
        for t in numba.prange(threads):
            tid = numba.get_thread_id()
            status[t] = _rows_over_images(xf, lut, rowptr, cols, vidx, table, t * o_out // threads,
                                          (t + 1) * o_out // threads, n_img, per, m, span, image,
                                          wp, y, scale, shift, act, slopes, res, res_mode,
                                          res_front, res_stride, acc_ws[tid],
                                          *decoded(decode_ws[tid], width))
    refuse_entry(status.min())
