"""A compiled walk over a whole inference plan: one @njit call runs a range of steps, each given
as one row of int64 fields (a layer record), with every array a slice of a few flat buffers, so
no Python runs between layers.

This is the interpreter design of a bytecode virtual machine (a loop that dispatches on an op
code and reads its operands from a record) applied to a network, as inference engines compile a
graph into a flat list of kernel calls with precomputed buffer offsets (Chen et al. 2018, "TVM:
An Automated End-to-End Optimizing Compiler for Deep Learning", whose graph runtime executes
such a list). Departure: there is no code generation per network; the records select among the
fused kernels of npdc.kernels.fused and npdc.kernels.sparse, which are called here exactly as the
Python walk of npdc.runtime.infer calls them, so both walks give the same bits.

Record fields are the F_* column indices below; offsets into the arena are in floats and already
multiplied by the plan's batch, shapes are per image. OP_HOST marks a step the caller runs in
Python (a generic layer, an engine convolution primitive): a walk never crosses one.
"""

import numba
import numpy as np

from npdc.kernels.fused import (Tail, conv_dense, conv_dense_s1, finish_rows, global_avg_pool,
                               linear_direct, pad_input)
from npdc.kernels.fused_blocked import conv_blocked_fused, lanes_for
from npdc.kernels.fused_direct import conv_flat_fused, conv_polyphase_fused
from npdc.kernels.fused_pointwise import OUT as POINTWISE_OUT
from npdc.kernels.fused_pointwise import conv_pointwise_fused
from npdc.kernels.fused_winograd import conv_winograd_fused
from npdc.kernels.sparse import conv_sparse, linear_sparse
from npdc.kernels.sparse_s1 import conv_sparse_s1, in_bands, plane_shape

OP_HOST, OP_CONV_TILED, OP_CONV_RUNS, OP_LINEAR_ROWS, OP_LINEAR_GEMM, OP_POOL = 0, 1, 2, 3, 4, 5
# dense 3x3 only (npdc.kernels.fused_direct): stride 1, weights (O8, C, 9); stride 2, (O8/8, C, 9, 8)
OP_CONV_FLAT, OP_CONV_PHASES = 6, 7
# dense, any kernel and stride (npdc.kernels.fused_blocked): weights (O/L, C, kh*kw, L), L lanes_for(O)
OP_CONV_BLOCKED = 8
# dense 3x3 stride 1 (npdc.kernels.fused_winograd): weights the kernels' transform (grouped_kernels)
OP_CONV_WINOGRAD = 9
# dense 1x1 without padding (npdc.kernels.fused_pointwise): weights (O/OUT, C, OUT)
OP_CONV_POINTWISE = 10
OP_NAMES = {OP_HOST: "host", OP_CONV_TILED: "tiled", OP_CONV_RUNS: "runs", OP_LINEAR_ROWS: "rows",
            OP_LINEAR_GEMM: "gemm", OP_POOL: "pool", OP_CONV_FLAT: "flat", OP_CONV_PHASES: "phases",
            OP_CONV_BLOCKED: "blocked", OP_CONV_WINOGRAD: "winograd", OP_CONV_POINTWISE: "pointwise"}

(F_OP, F_SPARSE, F_X, F_XC, F_XH, F_XW, F_Y, F_YC, F_YH, F_YW, F_RES, F_RC, F_RH, F_RW, F_RMODE,
 F_RFRONT, F_RSTRIDE, F_KH, F_KW, F_STRIDE, F_PAD, F_W, F_SCALE, F_SHIFT, F_SLOPES, F_ACT,
 F_ROWPTR, F_NZ, F_NNZ, F_TABLE, F_TSIZE, F_ROWS, F_COLS) = range(33)
N_FIELDS = 33


@numba.njit(cache=True)
def _view4(arena, off, n, c, h, w):
    return arena[off:off + n * c * h * w].reshape((n, c, h, w))


@numba.njit(cache=True)
def _vec(buf, off, size):
    return buf[off:off + size]


@numba.njit(cache=True, fastmath=True)
def linear_gemm(x, W, scale, shift, act, slopes, y, rows):
    """y (N, O) = act((x W^T) * scale + shift) through one BLAS GEMM into rows (>= N x O)."""
    acc = rows[:x.shape[0] * W.shape[0]].reshape((x.shape[0], W.shape[0]))
    np.dot(x, W.T, acc)
    finish_rows(acc, scale, shift, act, slopes, y)


@numba.njit(cache=True)
def _conv(r, n, arena, weights, rowptr, nz_cols, nz_vidx, tables, cols_ws, acc_ws, padded, no_res):
    x = _view4(arena, r[F_X], n, r[F_XC], r[F_XH], r[F_XW])
    y = _view4(arena, r[F_Y], n, r[F_YC], r[F_YH], r[F_YW])
    res = no_res
    if r[F_RES] >= 0:
        res = _view4(arena, r[F_RES], n, r[F_RC], r[F_RH], r[F_RW])
    o = r[F_YC]
    scale, shift = _vec(weights, r[F_SCALE], o), _vec(weights, r[F_SHIFT], o)
    slopes, act = _vec(weights, r[F_SLOPES], o), r[F_ACT] != 0
    kh, kw, pad = r[F_KH], r[F_KW], r[F_PAD]
    tail = Tail(scale, shift, act, slopes, res, r[F_RMODE], r[F_RFRONT], r[F_RSTRIDE])
    if r[F_OP] == OP_CONV_BLOCKED:  # the plane in `padded`; rows: O rounded up to whole blocks
        Wb, lanes = weights[r[F_W]:r[F_W] + r[F_ROWS] * r[F_COLS]], lanes_for(o)
        conv_blocked_fused(x, Wb.reshape((r[F_ROWS] // lanes, r[F_XC], kh * kw, lanes)), kh, kw,
                           r[F_STRIDE], pad, tail, y, padded, acc_ws)
        return
    if r[F_OP] == OP_CONV_POINTWISE:  # rows: O rounded up to whole blocks; sums in acc_ws
        Wp = weights[r[F_W]:r[F_W] + r[F_ROWS] * r[F_COLS]]
        conv_pointwise_fused(x, Wp.reshape((r[F_ROWS] // POINTWISE_OUT, r[F_COLS], POINTWISE_OUT)),
                             r[F_STRIDE], tail, y, acc_ws)
        return
    if r[F_OP] == OP_CONV_WINOGRAD:  # rows: O16, cols: 36 * C8; its own workspace
        conv_winograd_fused(x, weights[r[F_W]:r[F_W] + r[F_ROWS] * r[F_COLS]], pad, tail, y,
                            acc_ws.shape[0])
        return
    if r[F_OP] == OP_CONV_FLAT or r[F_OP] == OP_CONV_PHASES:  # planes in `padded`; rows: O8
        W9 = weights[r[F_W]:r[F_W] + r[F_ROWS] * r[F_COLS]]
        if r[F_OP] == OP_CONV_FLAT:
            conv_flat_fused(x, W9.reshape((r[F_ROWS], r[F_XC], 9)), pad, tail, y, padded, acc_ws)
        else:
            conv_polyphase_fused(x, W9.reshape((r[F_ROWS] // 8, r[F_XC], 9, 8)), pad, tail, y,
                                 padded, acc_ws)
        return
    runs = r[F_OP] == OP_CONV_RUNS
    xp, inner = x, 0
    if runs and r[F_SPARSE] != 0 and (pad > 0 or r[F_STRIDE] > 1):  # the kernel pads or subsamples
        hp, wp = plane_shape(r[F_XH], r[F_XW], pad, r[F_STRIDE])
        if not in_bands(n, r[F_YH], r[F_YW], wp, acc_ws.shape[0], kh, kw, r[F_STRIDE]):  # else in cols_ws
            xp = padded[:n * r[F_XC] * hp * wp].reshape((n, r[F_XC], hp, wp))
        inner = pad
    elif runs and pad > 0:  # dense: one image, the kernel pads itself; else pad_input, in parallel
        hp, wp = r[F_XH] + 2 * pad, r[F_XW] + 2 * pad
        xp = padded[:n * r[F_XC] * hp * wp].reshape((n, r[F_XC], hp, wp))
        if n == 1:
            inner = pad
        else:
            pad_input(x, pad, xp)
    if r[F_SPARSE] == 0:
        W2 = weights[r[F_W]:r[F_W] + r[F_ROWS] * r[F_COLS]].reshape((r[F_ROWS], r[F_COLS]))
        if runs:
            conv_dense_s1(x, inner, xp, W2, kh, kw, tail, y, acc_ws)
        else:
            conv_dense(x, W2, kh, kw, r[F_STRIDE], pad, tail, y, cols_ws, acc_ws)
        return
    rp = rowptr[r[F_ROWPTR]:r[F_ROWPTR] + o + 1]
    cs, vs = nz_cols[r[F_NZ]:r[F_NZ] + r[F_NNZ]], nz_vidx[r[F_NZ]:r[F_NZ] + r[F_NNZ]]
    table = tables[r[F_TABLE]:r[F_TABLE] + r[F_TSIZE]]
    if runs:
        conv_sparse_s1(x, inner, r[F_STRIDE], xp, rp, cs, vs, table, kh, kw, scale, shift, act,
                       slopes, res, r[F_RMODE], r[F_RFRONT], r[F_RSTRIDE], y, acc_ws, cols_ws)
    else:
        conv_sparse(x, rp, cs, vs, table, kh, kw, r[F_STRIDE], pad, scale, shift, act, slopes,
                    res, r[F_RMODE], r[F_RFRONT], r[F_RSTRIDE], y, cols_ws, acc_ws)


@numba.njit(cache=True)
def _linear(r, n, arena, weights, rowptr, nz_cols, nz_vidx, tables, rows_ws):
    f, o = r[F_COLS], r[F_ROWS]
    x = arena[r[F_X]:r[F_X] + n * f].reshape((n, f))
    y = arena[r[F_Y]:r[F_Y] + n * o].reshape((n, o))
    scale, shift = _vec(weights, r[F_SCALE], o), _vec(weights, r[F_SHIFT], o)
    slopes, act = _vec(weights, r[F_SLOPES], o), r[F_ACT] != 0
    if r[F_SPARSE] != 0:
        rp = rowptr[r[F_ROWPTR]:r[F_ROWPTR] + o + 1]
        cs, vs = nz_cols[r[F_NZ]:r[F_NZ] + r[F_NNZ]], nz_vidx[r[F_NZ]:r[F_NZ] + r[F_NNZ]]
        linear_sparse(x, rp, cs, vs, tables[r[F_TABLE]:r[F_TABLE] + r[F_TSIZE]], scale, shift,
                      act, slopes, y)
        return
    W = weights[r[F_W]:r[F_W] + o * f].reshape((o, f))
    if r[F_OP] == OP_LINEAR_GEMM:
        linear_gemm(x, W, scale, shift, act, slopes, y, rows_ws)
    else:
        linear_direct(x, W, scale, shift, act, slopes, y)


@numba.njit(cache=True)
def walk(records, first, last, n, arena, weights, rowptr, nz_cols, nz_vidx, tables, cols_ws,
         acc_ws, padded, rows_ws, no_res, images, mean, std, x_at, out, out_at):
    """Run records[first:last] on the first n images of the arena. weights: float32 dense
    weights, tail scales, shifts and slopes; rowptr, nz_cols, nz_vidx, tables: the sparse
    layers' rows (each layer's row pointers start at 0); cols_ws .. no_res: scratch as the kernels
    take it.
    Around the steps, in the same call: the float32 images (N, C, H, W), minus each channel's
    mean, over its std, are written into the arena from offset x_at first (N = 0: the arena
    holds its input already), and out (flat) = as many floats of the arena from offset out_at
    after. The normalisation is npdc.runtime.infer.normalise_images' float32 arithmetic, so the
    bits are those of loading the images from Python. Why here: Python that runs right after a
    forward runs slowly (the forward has pushed the interpreter's code and data out of the
    caches), and the few NumPy calls around a batch-1 walk cost a fifth of it (docs/perf.md);
    a second compiled function around this one would compile every kernel's code again."""
    u = numba.uint64  # unsigned indices: with NumPy's wraparound these loops load and store by gather
    k = u(x_at)
    for i in range(u(images.shape[0])):
        for ch in range(u(images.shape[1])):
            m, s = mean[ch], std[ch]
            for p in range(u(images.shape[2])):
                for q in range(u(images.shape[3])):
                    arena[k] = (images[i, ch, p, q] - m) / s
                    k += u(1)
    for k in range(first, last):
        r = records[k]
        op = r[F_OP]
        if op == OP_CONV_TILED or op == OP_CONV_RUNS or op >= OP_CONV_FLAT:
            _conv(r, n, arena, weights, rowptr, nz_cols, nz_vidx, tables, cols_ws, acc_ws, padded,
                  no_res)
        elif op == OP_LINEAR_ROWS or op == OP_LINEAR_GEMM:
            _linear(r, n, arena, weights, rowptr, nz_cols, nz_vidx, tables, rows_ws)
        elif op == OP_POOL:
            x = _view4(arena, r[F_X], n, r[F_XC], r[F_XH], r[F_XW])
            y = arena[r[F_Y]:r[F_Y] + n * r[F_YC]].reshape((n, r[F_YC]))
            global_avg_pool(x, y)
        else:
            raise ValueError("walk: a host step cannot run compiled")
    for j in range(u(out.size)):
        out[j] = arena[u(out_at) + j]
