"""The register-blocked direct 3x3 stride-1 convolution of npdc.kernels.conv_flat (the direct
convolution of Zhang, Franchetti & Low 2018, "High Performance Zero-Memory Overhead Direct
Convolutions": eight output channels per register block) for inference, with the layer's tail
(npdc.kernels.fused.Tail: folded batch norm, residual, activation) applied to each accumulator
tile while it is still in cache, and every buffer handed in, so a compiled walk can run it.

Departures from the engine primitive, which stacks a plane of several images per task and
allocates its planes and tiles on each call: here each plane holds one image, in scratch the
caller owns. One image is split over (block of eight output channels, tile of lines) pairs, so
every thread is busy at batch 1 (the engine would give the whole image to one task); a batch is
split over images, each thread stacking its images one at a time in its own plane. Each output
is summed by one task in one fixed order whatever the thread count, so the bits do not depend on
it.
"""

import numba

from npdc.kernels.conv_flat import BLOCK, TILE, VECTOR, block_sums, fill_plane
from npdc.kernels.fused import finish_tail


@numba.njit(cache=True)
def flat_layout(h, w, pad):
    """(row pitch wp, lines per image period, plane floats per channel, lines per tile, floats per
    accumulator row) of one image's plane: conv_flat's layout with one image per plane."""
    wp, period = w + pad, h + pad
    per = max(1, TILE // wp)
    return wp, period, (period + pad) * wp + 2 + VECTOR, per, per * wp + VECTOR


def flat_scratch(c, h, w, pad):
    """(plane floats, accumulator floats) one thread needs for a layer with c input channels of
    h x w padded by `pad`."""
    _, _, size, _, width = flat_layout(h, w, pad)
    return c * size, BLOCK * width


@numba.njit(cache=True)
def _tile(xp, W9, ob, first, per, wp, width, tail, y, n, acc_row):
    """Output lines first .. first+per-1 (clipped) of channels ob .. ob+7 of image n, tail applied."""
    lines = min(per, y.shape[2] - first)
    acc = acc_row[:BLOCK * width].reshape((BLOCK, width))
    acc[:] = 0
    block_sums(xp, W9, ob, wp, first * wp, -(-lines * wp // VECTOR) * VECTOR, acc)
    for q in range(min(BLOCK, y.shape[1] - ob)):
        finish_tail(acc[q], wp, y, n, ob + q, first, first + lines, tail)


@numba.njit(parallel=True, cache=True)
def conv_flat_fused(x, W9, pad, tail, y, planes, acc_ws):
    """y (N, O, Ho, Wo) = tail(the 3x3 stride-1 correlation of x (N, C, H, W) zero-padded by
    `pad` with W9 (O rounded up to a multiple of BLOCK, C, 9), zero kernels past O).
    planes: flat, >= C * plane floats for one image, times the threads when N > 1;
    acc_ws: (threads, >= BLOCK * accumulator row floats); flat_scratch gives both."""
    n, c, h, w = x.shape
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
