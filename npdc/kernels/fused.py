"""Inference-only convolution and linear kernels with the layer tail fused in: per-channel scale
and shift (a folded batch norm, Ioffe & Szegedy 2015), an optional residual (identity, or the
option-A zero-padded subsample of He et al. 2016) and ReLU / PReLU, written once into the output.

The convolution is im2col + GEMM (Chellapilla et al. 2006) on tiles of output rows: the
(image, tile) pairs are shared among the threads, so a single image still keeps every thread
busy (the per-image split of npdc.kernels.conv leaves one thread idle at batch 1), and a column
tile is bounded by a float budget so it stays in cache and the workspace stays small. Every
buffer (columns, accumulators, outputs) is handed in; nothing is allocated per call.
"""

from typing import NamedTuple

import numba
import numpy as np

from numba.core.cpu import ParallelOptions

from npdc.threads import single_thread_numba_blas

single_thread_numba_blas()

# The parallel option of the runtime's per-layer kernels: only their prange loops run on the
# threads. With parallel=True Numba also turns whole-array statements outside them (xp[:] = 0,
# np.zeros, a.min()) into parallel loops of their own, each one more start of the thread pool,
# which at batch 1 costs more than the few hundred values it shares out. (An instance, not a
# dict: Numba empties a dict as it reads it, so a second compiled signature would get defaults.)
PRANGE_ONLY = ParallelOptions({"comprehension": False, "reduction": False, "inplace_binop": False,
                               "setitem": False, "numpy": False, "stencil": False, "fusion": False,
                               "prange": True})

RES_NONE, RES_IDENTITY, RES_ZEROPAD = 0, 1, 2
# sums a stride-1 kernel's task may hold: npdc.kernels.sparse_s1.conv_sparse_s1 fills eight 16-lane
# chunks with several images of a small plane
SPARSE_GROUP_FLOATS = 128


class Tail(NamedTuple):
    """The fused tail of a conv step, y = act(acc * scale + shift + residual), as one argument
    (Numba types a NamedTuple as a heterogeneous tuple; kernels read its fields by name): per
    output channel scale, shift (O,) float32; act with slopes (O,) (ReLU: zeros,
    PReLU: its slopes); res (N, C, H, W) read as res_mode says (RES_NONE: unused, RES_IDENTITY:
    added as it is, RES_ZEROPAD: channel o - res_front of every res_stride-th row and column).
    The fields are in the order finish_tile and the sparse kernels take them one by one."""
    scale: np.ndarray
    shift: np.ndarray
    act: bool
    slopes: np.ndarray
    res: np.ndarray
    res_mode: int
    res_front: int
    res_stride: int


@numba.njit(cache=True)
def tile_rows(ho, wo, rows, budget):
    """Output rows per tile so that a (rows x tile) block stays within budget floats; callers pass
    the larger of the column block's and the accumulator block's heights, so both fit."""
    return max(1, min(ho, budget // max(rows * wo, 1)))


@numba.njit(cache=True)
def im2col_rows(x, kh, kw, stride, pad, p0, p1, wo, cols):
    """Columns of output rows p0..p1-1 of one image x: (C, H, W) -> cols: (C*kh*kw, (p1-p0)*wo)."""
    h, w = x.shape[1], x.shape[2]
    for r in range(x.shape[0] * kh * kw):
        c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        for p in range(p0, p1):
            iy = p * stride - pad + i
            o = (p - p0) * wo
            if iy < 0 or iy >= h:
                for q in range(wo):
                    cols[r, o + q] = 0
                continue
            for q in range(wo):
                ix = q * stride - pad + j
                cols[r, o + q] = x[c, iy, ix] if ix >= 0 and ix < w else 0


@numba.njit(cache=True)
def finish_tile(acc, pitch, y, n, o, p0, p1, scale, shift, act, slopes, res, res_mode, res_front,
                res_stride):
    """finish_tile_at with the tile at the start of acc."""
    finish_tile_at(acc, 0, pitch, y, n, o, p0, p1, scale, shift, act, slopes, res, res_mode,
                   res_front, res_stride)


@numba.njit(cache=True)
def _finish_in_place(acc, a0, pitch, y, n, o, p0, p1, s, b, act, a):
    """finish_tile_at with y its own identity residual: a loop that reads y alone, which the
    compiler vectorises (with y and the residual as two arrays it cannot rule out that they
    overlap, and the loop stays scalar)."""
    for p in range(p0, p1):
        for q in range(y.shape[3]):
            v = acc[a0 + (p - p0) * pitch + q] * s + b
            v += y[n, o, p, q]
            if act and v < 0:
                v *= a
            y[n, o, p, q] = v


@numba.njit(cache=True)
def finish_tile_at(acc, a0, pitch, y, n, o, p0, p1, scale, shift, act, slopes, res, res_mode,
                   res_front, res_stride):
    """y[n, o, p0:p1] = act(acc * scale[o] + shift[o] + residual); acc: flat, row p at
    a0 + (p - p0) * pitch.
    An identity residual may be y itself: each element is read before it is overwritten."""
    wo = y.shape[3]
    s, b, a = scale[o], shift[o], slopes[o]
    if res_mode == RES_IDENTITY and res.ctypes.data == y.ctypes.data:
        _finish_in_place(acc, a0, pitch, y, n, o, p0, p1, s, b, act, a)
        return
    c = o - res_front
    use_pad = res_mode == RES_ZEROPAD and 0 <= c < res.shape[1]
    for p in range(p0, p1):
        for q in range(wo):
            v = acc[a0 + (p - p0) * pitch + q] * s + b
            if res_mode == RES_IDENTITY:
                v += res[n, o, p, q]
            elif use_pad:
                v += res[n, c, p * res_stride, q * res_stride]
            if act and v < 0:
                v *= a
            y[n, o, p, q] = v


@numba.njit(cache=True)
def finish_tail(acc, pitch, y, n, o, p0, p1, tail):
    """finish_tile with its tail given as one Tail."""
    finish_tile(acc, pitch, y, n, o, p0, p1, tail.scale, tail.shift, tail.act, tail.slopes,
                tail.res, tail.res_mode, tail.res_front, tail.res_stride)


@numba.njit(parallel=True, cache=True)
def conv_dense(x, W2, kh, kw, stride, pad, tail, y, cols, acc):
    """x: (N, C, H, W), W2: (O, C*kh*kw) -> y: (N, O, Ho, Wo) with the fused tail (a Tail), by
    im2col + GEMM on tiles of output rows, the (image, tile) pairs shared among threads.
    cols: (threads, budget floats for one column tile), acc: (threads, >= O * tile) scratch
    (scratch_sizes gives both)."""
    n_img = x.shape[0]
    o_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    rows = W2.shape[1]
    per = tile_rows(ho, wo, max(rows, o_out), cols.shape[1])
    tiles = (ho + per - 1) // per
    for t in numba.prange(n_img * tiles):
        n, p0 = t // tiles, (t % tiles) * per
        p1 = min(ho, p0 + per)
        width = (p1 - p0) * wo
        tid = numba.get_thread_id()
        col = cols[tid, :rows * width].reshape((rows, width))
        out = acc[tid, :o_out * width].reshape((o_out, width))
        im2col_rows(x[n], kh, kw, stride, pad, p0, p1, wo, col)
        np.dot(W2, col, out)
        for o in range(o_out):
            finish_tail(out[o], wo, y, n, o, p0, p1, tail)


@numba.njit(cache=True)
def pad_plane(x, n, c, pad, xp):
    """xp[n, c] = x[n, c] with `pad` zeros around it, each value of xp[n, c] written once."""
    h, w = x.shape[2], x.shape[3]
    for p in range(pad):
        for q in range(w + 2 * pad):
            xp[n, c, p, q] = 0
            xp[n, c, h + pad + p, q] = 0
    for p in range(h):
        for q in range(pad):
            xp[n, c, p + pad, q] = 0
            xp[n, c, p + pad, w + pad + q] = 0
        for q in range(w):
            xp[n, c, p + pad, q + pad] = x[n, c, p, q]


@numba.njit(cache=True)
def pad_serial(x, pad, xp):
    """xp: (N, C, H + 2 pad, W + 2 pad) = x zero-padded, on the calling thread: a conv kernel
    pads a single image itself rather than pay a second parallel launch."""
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            pad_plane(x, n, c, pad, xp)


@numba.njit(parallel=True, cache=True)
def pad_input(x, pad, xp):
    """As pad_serial, planes shared among threads (for batches)."""
    for t in numba.prange(x.shape[0] * x.shape[1]):
        pad_plane(x, t // x.shape[1], t % x.shape[1], pad, xp)


@numba.njit(parallel=True, cache=True)
def conv_dense_s1(x, pad, xp, W2, kh, kw, tail, y, acc_ws):
    """Stride-1 convolution of an already padded xp: (N, C, Hp, Wp) -> y. For tap (c, i, j) the
    inputs of all outputs, laid out with row pitch Wp, are one contiguous run of xp starting at
    (c, i, j): each weight is one long multiply-add loop, no lowering. Parallel over (image,
    output channel); acc_ws: (threads, >= (Ho - 1) * Wp + Wo). With pad > 0 the kernel first
    pads x into xp itself; with pad 0, xp is the (already padded) input and x is unused."""
    if pad > 0:
        pad_serial(x, pad, xp)
    n_img, c_in, hp, wp = xp.shape
    o_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    span, taps = (ho - 1) * wp + wo, kh * kw
    for t in numba.prange(n_img * o_out):
        n, o = t // o_out, t % o_out
        acc = acc_ws[numba.get_thread_id(), :span]
        acc[:] = 0
        xf = xp[n].reshape(c_in * hp * wp)
        for r in range(c_in * taps):
            w = W2[o, r]
            base = (r // taps) * hp * wp + ((r // kw) % kh) * wp + r % kw
            src = xf[base:base + span]  # a slice: indexing it by k vectorises, xf[base + k] did not
            for k in range(span):
                acc[k] += w * src[k]
        finish_tail(acc, wp, y, n, o, 0, ho, tail)


@numba.njit(parallel=True, cache=True)
def finish_planes(z, tail, y):
    """The tail (a Tail) over a whole conv output z (N, O, Ho, Wo) computed elsewhere, written
    into y (which may be the identity residual itself), parallel over planes."""
    n_img, n_out, plane = z.shape[0], z.shape[1], z.shape[2] * z.shape[3]
    flat = z.reshape(z.size)
    for t in numba.prange(n_img * n_out):
        n, o = t // n_out, t % n_out
        finish_tail(flat[t * plane:(t + 1) * plane], z.shape[3], y, n, o, 0, z.shape[2], tail)


def scratch_sizes(convs, budget):
    """(cols, acc) floats per thread for conv steps given as (rows, O, Ho, Wo, stride, Wp)
    tuples, Wp the padded input width; stride 1 means the long-run kernels (no columns), any
    other stride the tiled kernels. The tiled kernels size their tiles from the cols buffer
    they get, so acc is sized for that buffer, not for `budget`; tiles are bounded by the larger
    of the column and accumulator heights (tile_rows), so acc <= cols for them."""
    cols = acc = 1
    for rows, o, ho, wo, stride, wp in convs:
        if stride != 1:
            cols = max(cols, rows * wo * max(1, min(ho, budget // max(max(rows, o) * wo, 1))))
    for rows, o, ho, wo, stride, wp in convs:
        if stride == 1:
            acc = max(acc, (ho - 1) * wp + wo, SPARSE_GROUP_FLOATS)
        else:
            acc = max(acc, o * wo * max(1, min(ho, cols // max(max(rows, o) * wo, 1))))
    return cols, acc


@numba.njit(cache=True)
def finish_rows(acc, scale, shift, act, slopes, y):
    """y (N, O) = act(acc * scale + shift), per column."""
    for n in range(y.shape[0]):
        for o in range(y.shape[1]):
            v = acc[n, o] * scale[o] + shift[o]
            if act and v < 0:
                v *= slopes[o]
            y[n, o] = v


@numba.njit(parallel=True, cache=True, fastmath=True)
def linear_direct(x, W, scale, shift, act, slopes, y):
    """x: (N, F), W: (O, F) -> y: (N, O) = act((x W^T) * scale + shift), parallel over O."""
    for o in numba.prange(W.shape[0]):
        w = W[o]
        for n in range(x.shape[0]):
            xn = x[n]
            s = np.float32(0.0)
            for f in range(w.shape[0]):
                s += w[f] * xn[f]
            v = s * scale[o] + shift[o]
            if act and v < 0:
                v *= slopes[o]
            y[n, o] = v


@numba.njit(cache=True, fastmath=True)
def global_avg_pool(x, y):
    """x: (N, C, H, W) -> y: (N, C), the mean of each plane."""
    inv = np.float32(1.0 / (x.shape[2] * x.shape[3]))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            s = np.float32(0.0)
            for p in range(x.shape[2]):
                for q in range(x.shape[3]):
                    s += x[n, c, p, q]
            y[n, c] = s * inv
