"""The engine's register-blocked direct 3x3 convolutions for inference: stride 1 from
npdc.kernels.conv_flat (the direct convolution of Zhang, Franchetti & Low 2018, "High Performance
Zero-Memory Overhead Direct Convolutions": eight output channels per register block) and stride 2
from npdc.kernels.conv_polyphase (the same blocks over the input's four polyphase components),
with the layer's tail (npdc.kernels.fused.Tail: folded batch norm, residual, activation) applied
to each accumulator tile while it is still in cache, and every buffer handed in, so a compiled
walk can run them.

Departures from the engine primitives, which stack a plane of several images per task and
allocate their planes and tiles on each call: here each plane holds one image, in scratch the
caller owns. One image is split over (block of eight output channels, tile of lines) pairs, so
every thread is busy at batch 1 (the engine would give the whole image to one task); a batch is
split over images, each thread stacking its images one at a time in its own plane. Each output
is summed by one task in one fixed order whatever the thread count or the tiling (tiles split
positions and output channels, never a sum), so the bits do not depend on either.
"""

import numba
import numpy as np

from npdc.kernels.blocked_io import fill_padded, finish_sums
from npdc.kernels.conv_flat import BLOCK, FEW, TILE, VECTOR, block_sums, fill_plane, row_chunks, rows_image
from npdc.kernels.conv_flat import LANES as CHUNK
from npdc.kernels.conv_polyphase import LANES, ROWS, fill_phases, taps_gemm
from npdc.kernels.fused import PRANGE_ONLY, finish_tail


@numba.njit(cache=True)
def flat_layout(h, w, pad):
    """(row pitch wp, lines per image period, plane floats per channel, lines per tile, floats per
    accumulator row) of one image's plane: conv_flat's layout with one image per plane."""
    wp, period = w + pad, h + pad
    per = max(1, TILE // wp)
    return wp, period, (period + pad) * wp + 2 + VECTOR, per, per * wp + VECTOR


@numba.njit(cache=True)
def few_rows(c, wo, batch):
    """Whether a batch's stride-1 layer of c input channels and rows wo wide runs _few_rows: as
    many channels as the engine's few-channel rows take, rows of at least one chunk."""
    return batch > 1 and c < FEW and wo >= CHUNK


def flat_scratch(c, h, w, pad, o=0, batch=1):
    """(plane floats, accumulator floats) one thread needs for a layer with c input channels of
    h x w padded by `pad` and o output channels, at a batch."""
    _, _, size, _, width = flat_layout(h, w, pad)
    hp, wp = h + 2 * pad, w + 2 * pad
    if few_rows(c, wp - 2, batch):
        return max(c * size, c * hp * wp + 16), max(BLOCK * width, o * (hp - 2) * (wp - 2))
    return c * size, BLOCK * width


@numba.njit(parallel=PRANGE_ONLY, cache=True)
def _few_rows(x, W9, pad, tail, y, planes, acc_ws):
    """conv_flat_fused for a batch of few input channels: each image padded into its thread's
    plane (C, H + 2 pad, W + 2 pad), summed by the engine's few-channel rows (conv_flat.rows_image:
    eight output channels by two 16-column chunks of an output row in registers, the sums of one
    position in the order flat's tiles sum them, so the same bits) into the thread's accumulator
    (O, Ho, Wo), then written through the tail. Why: with one to seven input channels a tap is one
    multiply-add per output, so flat's tiles (sums stored and reloaded per channel) and blocked's
    regrouping by channel cost more than the sums; a stem ran 1.6 times faster so (docs/perf.md)."""
    n, c, h, w = x.shape
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    blocks = W9.shape[0] // BLOCK
    W8 = np.empty((blocks, c, 9, BLOCK), W9.dtype)  # conv_flat.interleaved's layout, a few floats
    for b in range(blocks):
        for ch in range(c):
            for t in range(9):
                for q in range(BLOCK):
                    W8[b, ch, t, q] = W9[b * BLOCK + q, ch, t]
    starts, shift = row_chunks(wo), np.arange(3)  # the shifts as data: see conv_flat._rows_image_body
    hp, wp = h + 2 * pad, w + 2 * pad
    size, hw = c * hp * wp, ho * wo
    for i in numba.prange(n):
        tid = numba.get_thread_id()
        xp, acc = planes[tid * (size + 16):(tid + 1) * (size + 16)], acc_ws[tid]
        fill_padded(x, i, pad, xp)
        rows_image(xp[:size].reshape((c, hp, wp)), W8, starts, shift, acc[:o * hw].reshape((o, ho, wo)))
        finish_sums(acc, 1, hw, o, 0, hw, 0, tail, y, i)


@numba.njit(cache=True)
def _tile(xp, W9, ob, first, per, wp, width, tail, y, n, acc_row):
    """Output lines first .. first+per-1 (clipped) of channels ob .. ob+7 of image n, tail applied."""
    lines = min(per, y.shape[2] - first)
    acc = acc_row[:BLOCK * width].reshape((BLOCK, width))
    acc[:] = 0
    block_sums(xp, W9, ob, wp, first * wp, -(-lines * wp // VECTOR) * VECTOR, acc)
    for q in range(min(BLOCK, y.shape[1] - ob)):
        finish_tail(acc[q], wp, y, n, ob + q, first, first + lines, tail)


@numba.njit(parallel=PRANGE_ONLY, cache=True)
def conv_flat_fused(x, W9, pad, tail, y, planes, acc_ws):
    """y (N, O, Ho, Wo) = tail(the 3x3 stride-1 correlation of x (N, C, H, W) zero-padded by
    `pad` with W9 (O rounded up to a multiple of BLOCK, C, 9), zero kernels past O).
    planes: flat, >= C * plane floats for one image, times the threads when N > 1;
    acc_ws: (threads, >= BLOCK * accumulator row floats); flat_scratch gives both."""
    n, c, h, w = x.shape
    if few_rows(c, y.shape[3], n):
        _few_rows(x, W9, pad, tail, y, planes, acc_ws)
        return
    wp, period, size, per, width = flat_layout(h, w, pad)
    tiles = (y.shape[2] + per - 1) // per
    blocks = W9.shape[0] // BLOCK
    if n == 1:
        xp = planes[:c * size].reshape((c, size))
        xp[:] = 0
        fill_plane(x, 0, 1, pad, wp, period, xp)
        for t in numba.prange(blocks * tiles):
            _tile(xp, W9, (t // tiles) * BLOCK, (t % tiles) * per, per, wp, width, tail, y, 0,
                  acc_ws[numba.get_thread_id()])
    else:
        for i in numba.prange(n):
            tid = numba.get_thread_id()
            xp = planes[tid * c * size:(tid + 1) * c * size].reshape((c, size))
            xp[:] = 0
            fill_plane(x, i, 1, pad, wp, period, xp)
            for ob in range(0, blocks * BLOCK, BLOCK):
                for first in range(0, y.shape[2], per):
                    _tile(xp, W9, ob, first, per, wp, width, tail, y, i, acc_ws[tid])


@numba.njit(cache=True)
def phase_layout(ho, wo):
    """(phase row pitch wq, lines per image period, plane floats per channel and phase, lines per
    tile, floats per accumulator row): conv_polyphase's layout with one image per plane."""
    wq, period = wo + 1, ho + 1
    per = max(1, TILE // wq)
    return wq, period, period * wq + LANES + 2, per, per * wq + LANES


def phase_scratch(c, o, ho, wo):
    """(plane floats, accumulator floats) one thread needs for a stride-2 layer with c input
    channels, o output channels and an ho x wo output."""
    _, _, size, _, width = phase_layout(ho, wo)
    return 4 * c * size, -(-o // ROWS) * ROWS * width


@numba.njit(cache=True)
def _phase_tile(xp, Wb, b0, b1, first, per, wq, width, tail, y, n, acc_row):
    """Output lines first .. first+per-1 (clipped) of the channels of blocks b0 .. b1-1 of image n."""
    lines = min(per, y.shape[2] - first)
    acc = acc_row[:(b1 - b0) * ROWS * width].reshape(((b1 - b0) * ROWS, width))
    taps_gemm(xp, Wb[b0:b1], wq, first * wq, -(-lines * wq // LANES) * LANES, acc)
    for q in range(min((b1 - b0) * ROWS, y.shape[1] - b0 * ROWS)):
        finish_tail(acc[q], wq, y, n, b0 * ROWS + q, first, first + lines, tail)


@numba.njit(parallel=PRANGE_ONLY, cache=True)
def conv_polyphase_fused(x, Wb, pad, tail, y, planes, acc_ws):
    """y (N, O, Ho, Wo) = tail(the 3x3 stride-2 correlation of x (N, C, H, W) zero-padded by
    `pad` (0 or 1) with Wb (O/8 blocks, C, 9, 8): conv_flat.interleaved weights).
    planes: flat, >= the plane floats for one image, times the threads when N > 1; acc_ws:
    (threads, >= accumulator floats); phase_scratch gives both."""
    n, c = x.shape[0], x.shape[1]
    ho, wo = y.shape[2], y.shape[3]
    wq, period, size, per, width = phase_layout(ho, wo)
    tiles = (ho + per - 1) // per
    blocks = Wb.shape[0]
    if n == 1:
        xp = planes[:4 * c * size].reshape((4, c, size))
        xp[:] = 0
        fill_phases(x, 0, 1, pad, wq, period, xp)
        for t in numba.prange(blocks * tiles):
            b = t // tiles
            _phase_tile(xp, Wb, b, b + 1, (t % tiles) * per, per, wq, width, tail, y, 0,
                        acc_ws[numba.get_thread_id()])
    else:
        for i in numba.prange(n):
            tid = numba.get_thread_id()
            xp = planes[tid * 4 * c * size:(tid + 1) * 4 * c * size].reshape((4, c, size))
            xp[:] = 0
            fill_phases(x, i, 1, pad, wq, period, xp)
            for first in range(0, ho, per):
                _phase_tile(xp, Wb, 0, blocks, first, per, wq, width, tail, y, i, acc_ws[tid])
