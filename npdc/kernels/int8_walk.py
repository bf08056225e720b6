"""The compiled walk of an int8 plan: one @njit call runs a range of int8 steps, each one row of
int64 fields (a layer record) whose arrays are slices of three flat buffers, so that no Python
runs between layers (what batch-1 latency is made of once the kernels are fast).

The same interpreter design as npdc.kernels.walk for the float plan (a loop dispatching on an op
code, operands read from the record; Chen et al. 2018, "TVM", whose graph runtime executes such a
list of kernel calls with precomputed offsets). Each record calls the kernel of npdc.kernels.int8
that the per-step Python calls of npdc.runtime.int8 call, with the same arguments, so both give
the same bits. OP_HOST marks a step the caller runs in Python (a float layer between a
dequantize and a quantize): a walk never crosses one.

Record fields are the F_* column indices below. Arena offsets are in bytes, already multiplied
by the plan's batch and the ROOM bytes per value of npdc.runtime.int8_layout; shapes are per
image. `words` holds every layer's packed int8 weights (int32 words), `ints` each layer's
bias, m0 and shift (O4 each, in that order), its meta fields (META of them) and its tap
offsets, `reals` the last linear's dequantization factors. A conv with F_WORDS set runs
npdc.kernels.int8_words.conv_words: its geometry (N_GEO fields) is in `ints` at F_GEO, and
F_XN, F_RN, F_YN give the words per image of its input, residual and output where these are
kept as words (0: planar). A conv or linear whose GEMM skips zero weight words
(npdc.kernels.int8_sparse) has F_NROWPTR > 1 row pointers at F_ROWPTR and F_NNZ entries, their
offsets at F_EOFF in `ints` and their words at F_EW in `words` (a linear's F_ROWS: the batch its
entries' offsets are for). A conv or linear with output
channels in the lanes (npdc.kernels.int8_blocked) has its F_NLANES blocked weight words at
F_LANES in `words`.
"""

import numba
import numpy as np

from npdc.kernels.int8 import avg_pool_u8, conv_u8, linear_u8
from npdc.kernels.int8_blocked import conv_blocked_words, linear_blocked
from npdc.kernels.int8_sparse import linear_sparse_u8
from npdc.kernels.int8_words import N_GEO, conv_words

OP_HOST, OP_CONV, OP_LINEAR, OP_POOL = 0, 1, 2, 3
(F_OP, F_X, F_XC, F_XH, F_XW, F_Y, F_YC, F_YH, F_YW, F_RES, F_RC, F_RH, F_RW, F_W, F_WN, F_K4,
 F_KH, F_KW, F_STRIDE, F_PAD, F_BIAS, F_O4, F_META, F_OFFS, F_NOFFS, F_ROWS, F_LAST, F_DEQ,
 F_ZX, F_ZY, F_M0, F_SHIFT, F_WORDS, F_GEO, F_XN, F_RN, F_YN, F_ROWPTR, F_NROWPTR, F_EOFF, F_EW,
 F_NNZ, F_LANES, F_NLANES) = range(44)
N_FIELDS = 44
META = 9  # the meta fields conv_u8 and linear_u8 read


@numba.njit(cache=True)
def _view4(arena, off, n, c, h, w):
    return arena[off:off + n * c * h * w].reshape((n, c, h, w))


@numba.njit(cache=True)
def _words(arena, off, n, size):
    return arena[off:off + 4 * n * size].view(np.uint32).reshape((n, size))


@numba.njit(cache=True)
def _conv(r, n, arena, words, ints, cols, acc, no_res, no_words, vnni):
    o4, b = r[F_O4], r[F_BIAS]
    if r[F_WORDS] != 0:
        _conv_words(r, n, arena, words, ints, cols, acc, no_res, no_words, vnni)
        return
    x = _view4(arena, r[F_X], n, r[F_XC], r[F_XH], r[F_XW])
    y = _view4(arena, r[F_Y], n, r[F_YC], r[F_YH], r[F_YW])
    res = no_res
    if r[F_RES] >= 0:
        res = _view4(arena, r[F_RES], n, r[F_RC], r[F_RH], r[F_RW])
    conv_u8(x, words[r[F_W]:r[F_W] + r[F_WN]], r[F_K4], r[F_KH], r[F_KW], r[F_STRIDE], r[F_PAD],
            ints[b:b + o4], ints[b + o4:b + 2 * o4], ints[b + 2 * o4:b + 3 * o4],
            ints[r[F_META]:r[F_META] + META], res, y, cols, acc, r[F_ROWS],
            ints[r[F_OFFS]:r[F_OFFS] + r[F_NOFFS]], vnni)


@numba.njit(cache=True)
def _conv_words(r, n, arena, words, ints, cols, acc, no_res, no_words, vnni):
    """A conv reading or writing values kept as words (npdc.kernels.int8_words): each of its
    input, residual and output a words view (size F_XN, F_RN, F_YN per image) or planar."""
    x, xw, res, rw, y, yw = no_res, no_words, no_res, no_words, no_res, no_words
    if r[F_XN] > 0:
        xw = _words(arena, r[F_X], n, r[F_XN])
    else:
        x = _view4(arena, r[F_X], n, r[F_XC], r[F_XH], r[F_XW])
    if r[F_RN] > 0:
        rw = _words(arena, r[F_RES], n, r[F_RN])
    elif r[F_RES] >= 0:
        res = _view4(arena, r[F_RES], n, r[F_RC], r[F_RH], r[F_RW])
    if r[F_YN] > 0:
        yw = _words(arena, r[F_Y], n, r[F_YN])
    else:
        y = _view4(arena, r[F_Y], n, r[F_YC], r[F_YH], r[F_YW])
    o4, b = r[F_O4], r[F_BIAS]
    bias, m0, shift = ints[b:b + o4], ints[b + o4:b + 2 * o4], ints[b + 2 * o4:b + 3 * o4]
    meta, geo = ints[r[F_META]:r[F_META] + META], ints[r[F_GEO]:r[F_GEO] + N_GEO]
    if r[F_NLANES] > 0:
        conv_blocked_words(xw, words[r[F_LANES]:r[F_LANES] + r[F_NLANES]], r[F_K4], r[F_KH], r[F_KW], r[F_STRIDE],
                           r[F_PAD], bias, m0, shift, meta, res, rw, y, yw, geo, acc.shape[0], vnni)
        return
    conv_words(x, xw, words[r[F_W]:r[F_W] + r[F_WN]], r[F_K4], r[F_KH], r[F_KW], r[F_STRIDE], r[F_PAD],
               bias, m0, shift, meta, res, rw, y, yw, geo, cols, acc,
               r[F_ROWS], ints[r[F_OFFS]:r[F_OFFS] + r[F_NOFFS]], vnni, ints[r[F_ROWPTR]:r[F_ROWPTR] + r[F_NROWPTR]],
               ints[r[F_EOFF]:r[F_EOFF] + r[F_NNZ]], words[r[F_EW]:r[F_EW] + r[F_NNZ]])


@numba.njit(cache=True)
def _linear(r, n, arena, words, ints, reals, logits, no_logits, cols, acc, vnni):
    f, o = r[F_XC] * r[F_XH] * r[F_XW], r[F_YC] * r[F_YH] * r[F_YW]
    x = arena[r[F_X]:r[F_X] + n * f].reshape((n, f))
    o4, b = r[F_O4], r[F_BIAS]
    y, y_float, deq = arena[r[F_Y]:r[F_Y] + n * o].reshape((n, o)), no_logits, reals[:0]
    if r[F_LAST] != 0:
        y, y_float, deq = arena[:1].reshape((1, 1)), logits[:n], reals[r[F_DEQ]:r[F_DEQ] + o]
    bias, m0, shift = ints[b:b + o4], ints[b + o4:b + 2 * o4], ints[b + 2 * o4:b + 3 * o4]
    meta = ints[r[F_META]:r[F_META] + META]
    if r[F_NROWPTR] > 1:
        linear_sparse_u8(x, ints[r[F_ROWPTR]:r[F_ROWPTR] + r[F_NROWPTR]], ints[r[F_EOFF]:r[F_EOFF] + r[F_NNZ]],
                         words[r[F_EW]:r[F_EW] + r[F_NNZ]], r[F_ROWS], bias, m0, shift, meta, y, y_float, deq, cols[0],
                         acc.shape[0], vnni)
    elif r[F_NLANES] > 0:
        linear_blocked(x, words[r[F_LANES]:r[F_LANES] + r[F_NLANES]], r[F_K4], bias, m0, shift, meta, y, y_float, deq,
                       acc.shape[0], vnni)
    else:
        linear_u8(x, words[r[F_W]:r[F_W] + r[F_WN]], r[F_K4], bias, m0, shift, meta, y, y_float, deq, cols[0], acc[0],
                  vnni)


@numba.njit(cache=True)
def walk_int8(records, first, last, n, arena, words, ints, reals, logits, no_logits, cols, acc,
              no_res, no_words, vnni):
    """Run records[first:last] on the first n images already in the arena (uint8); logits
    (batch, classes) float32 receive the last linear's output; cols, acc: the (threads, size)
    workspaces of conv_u8."""
    for k in range(first, last):
        r = records[k]
        op = r[F_OP]
        if op == OP_CONV:
            _conv(r, n, arena, words, ints, cols, acc, no_res, no_words, vnni)
        elif op == OP_LINEAR:
            _linear(r, n, arena, words, ints, reals, logits, no_logits, cols, acc, vnni)
        elif op == OP_POOL:
            x = _view4(arena, r[F_X], n, r[F_XC], r[F_XH], r[F_XW])
            y = arena[r[F_Y]:r[F_Y] + n * r[F_YC]].reshape((n, r[F_YC]))
            avg_pool_u8(x, r[F_ZX], r[F_ZY], r[F_M0], r[F_SHIFT], y)
        else:
            raise ValueError("walk_int8: a host step cannot run compiled")
