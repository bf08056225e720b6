"""An int8 conv with the output channels in the vector lanes, for activations kept as words
(npdc.kernels.int8_words): the small planes of a net's last stages.

Why: conv_words puts 16 output positions in the lanes and walks a tile's run of the padded
plane, so a 4 x 4 plane (a run of 22 positions of a 6-wide padded row) fills 16 of the 32 lanes
it computes, and a 7 x 7 one 49 of 64. Here a register block is 6 output positions by 64
output channels (npdc.kernels.vnni.dot_lanes): per packed weight word k, four weight vectors
(16 channels x 4 input channels each) are loaded and each position's input word (four channels)
is broadcast into them, so no lane is idle whatever the plane's shape, and the positions of a
block are any six of the task's (a block may cross rows and images). The blocking is that of the
float npdc.kernels.fused_blocked (Zhang, Franchetti & Low 2018, with the output channels in the
lanes as in the blocked layouts of Georganas et al. 2018), here with vpdpbusd's four-byte dot
products.

The input is read in place: position (image n, row p, column q) starts at word
n * words + (p * stride + d) * Wp + q * stride + d of the input's words (d: its kept pad less the
conv's), and packed word k = g * kh * kw + i * kw + j (channel group, kernel row, column; the
order of npdc.runtime.int8_params.Int8Step) is `offs[k] = g * plane + i * Wp + j` further. The
sums of a task's images are then laid out as conv_words lays out one tile of all an image's rows (output
channel rows `pitch` apart, one output row `conv_row` positions from the next) and finished by
its own finish_words, so the requantisation, residual and output layout are conv_words' and the
bits are too: integer sums in another order are the same sums.

A linear layer runs the same register blocks (`linear_blocked`): its positions are the batch's
images, each input word k of image n at word n * k4 + k of the input rows, read in place (no
packing), and a block's sums are already (image, output channel) as the output is.

Weights: (O4 / 64, k4, 64) int32 words (`blocked_weights`), O4 a multiple of 64.
"""

import numba
import numpy as np

from npdc.kernels.int8_pack import GAP, GROUP, LANES
from npdc.kernels.int8_requant import finish_linear
from npdc.kernels.int8_words import (G_C, G_HO, G_PI, G_PLI, G_WO, G_WPI, G_WPO, conv_row,
                                     finish_words)
from npdc.kernels.vnni import LANE_POSITIONS, LANE_VECTORS, dot_lanes

OUT = 16 * LANE_VECTORS  # output channels per register block
POSITIONS = LANE_POSITIONS  # output positions per register block (six: _block_at writes them out)
TASK_POSITIONS = 48  # positions a task takes at least (whole images), where the batch allows


def blocked_fits(geo, o4):
    """Whether a conv of this geometry can run conv_blocked_words: its input kept as words and its
    (rounded) output channels whole register blocks."""
    return geo[G_WPI] > 0 and o4 % OUT == 0


def linear_fits(features, o4):
    """Whether a linear layer can run linear_blocked: whole words of input, whole blocks of output."""
    return features % GROUP == 0 and o4 % OUT == 0


def blocked_weights(w, k4):
    """The packed weights w (O4 x k4 int32 words) as conv_blocked_words reads them: flat
    (O4 / OUT, k4, OUT), lane l of block b at word k being row b * OUT + l's word k."""
    rows = np.asarray(w, np.int32).reshape(-1, k4)
    return np.ascontiguousarray(rows.reshape(-1, OUT, k4).transpose(0, 2, 1)).reshape(-1)


@numba.njit(cache=True)
def word_offsets(geo, kh, kw):
    """offs[k] of each packed word k = g * kh * kw + i * kw + j: g * plane + i * Wp + j words."""
    taps = kh * kw
    offs = np.empty((geo[G_C] // 4) * taps, np.int64)
    for k in range(offs.size):
        g, t = k // taps, k % taps
        offs[k] = g * geo[G_PLI] + (t // kw) * geo[G_WPI] + t % kw
    return offs


@numba.njit(cache=True)
def lanes_portable(wl, w_off, x, pos, p_off, offs, k4, acc, a_off):
    """npdc.kernels.vnni.dot_lanes in plain loops (the same sums on any CPU)."""
    xb, wb = x.view(np.uint8), wl.view(np.int8)
    for j in range(POSITIONS * OUT):
        acc[a_off + j] = 0
    for k in range(k4):
        w0 = 4 * (w_off + k * OUT)
        for r in range(POSITIONS):
            at = 4 * (pos[p_off + r] + offs[k])
            x0, x1 = np.int32(xb[at]), np.int32(xb[at + 1])
            x2, x3 = np.int32(xb[at + 2]), np.int32(xb[at + 3])
            for lane in range(OUT):
                b = w0 + 4 * lane
                acc[a_off + r * OUT + lane] += (x0 * np.int32(wb[b]) + x1 * np.int32(wb[b + 1])
                                                + x2 * np.int32(wb[b + 2]) + x3 * np.int32(wb[b + 3]))


@numba.njit(cache=True, inline="always")
def _sum_at(k, npos, hw, wo, row, image, first):
    """Where the sum of the task's position k goes in its tile layout (images `image` words apart,
    the output channel's row at `first`); positions past the task's last (npos - 1) go where
    that one's go: their sums are its sums, as their input is its input."""
    k = min(k, npos - 1)
    return first + (k // hw) * image + ((k % hw) // wo) * row + k % wo


@numba.njit(cache=True, inline="always")
def _block_at(k0, npos, hw, wo, row, image, first):
    """_sum_at of the six positions k0 .. k0 + 5 of a register block."""
    return (_sum_at(k0, npos, hw, wo, row, image, first), _sum_at(k0 + 1, npos, hw, wo, row, image, first),
            _sum_at(k0 + 2, npos, hw, wo, row, image, first), _sum_at(k0 + 3, npos, hw, wo, row, image, first),
            _sum_at(k0 + 4, npos, hw, wo, row, image, first), _sum_at(k0 + 5, npos, hw, wo, row, image, first))


@numba.njit(cache=True, inline="always")
def _scatter(blk, a, at, pitch):
    """a[at[r] + lane * pitch] = blk[r * OUT + lane]: a register block's six positions by OUT
    channels into the tile layout, channel by channel (a channel's six sums land close together).
    Unsigned indices, as in the other copy loops, so no index is tested for NumPy's negative
    wraparound: the blocked convs ran faster than with signed ones (docs/perf.md, seventeenth
    session)."""
    u = numba.uint64
    at0, at1, at2, at3, at4, at5 = u(at[0]), u(at[1]), u(at[2]), u(at[3]), u(at[4]), u(at[5])
    for lane in range(u(OUT)):
        c = lane * u(pitch)
        a[at0 + c], a[at1 + c], a[at2 + c] = blk[lane], blk[lane + u(OUT)], blk[lane + u(2 * OUT)]
        a[at3 + c], a[at4 + c], a[at5 + c] = blk[lane + u(3 * OUT)], blk[lane + u(4 * OUT)], blk[lane + u(5 * OUT)]


@numba.njit(cache=True)
def images_per_task(hw, n_img, threads):
    """Images one task takes: enough for TASK_POSITIONS positions, fewer when the batch would
    otherwise leave a thread with less than two tasks."""
    want = max(1, -(-TASK_POSITIONS // hw))
    return max(1, min(want, n_img // (2 * threads)))


@numba.njit(cache=True, parallel=True)
def conv_blocked_words(xw, wl, k4, kh, kw, stride, pad, bias, m0, shift, meta, res, rw, y, yw, geo, threads, vnni):
    """npdc.kernels.int8_words.conv_words (its input kept as words, xw (N, words) uint32) with
    the blocked weights wl: the same output, planar y or words yw, the same residual res or rw
    (the unused array of each pair a dummy). Tasks of whole images go to the threads; each
    thread's workspace is allocated once per call, for `threads` (the process's thread count:
    what numba.get_thread_id ranges over)."""
    n_img = yw.shape[0] if geo[G_WPO] > 0 else y.shape[0]
    ho, wo, o4 = geo[G_HO], geo[G_WO], bias.size
    hw, row = ho * wo, conv_row(geo, stride, pad, True)
    pitch = (((ho - 1) * row + wo + LANES - 1) // LANES) * LANES
    group = images_per_task(hw, n_img, threads)
    sums = np.zeros((threads, group * o4 * pitch + GAP // 4), np.int32)  # the run positions between rows stay 0
    block = np.zeros((threads, POSITIONS * OUT + GAP // 4), np.int32)
    starts = np.zeros((threads, group * hw + POSITIONS + GAP // 8), np.int64)
    scratch = np.zeros((threads, 2 * pitch + GAP // 4), np.uint32)
    offs = word_offsets(geo, kh, kw)
    xf, words, d = xw.reshape(xw.size), xw.shape[1], geo[G_PI] - pad
    sum_bound = 128 * 255 * geo[G_C] * kh * kw
    for task in numba.prange((n_img + group - 1) // group):
        tid, i0 = numba.get_thread_id(), task * group
        count = min(group, n_img - i0)
        npos, pos, a, blk = count * hw, starts[tid], sums[tid], block[tid]
        for k in range(npos):
            n, p, q = i0 + k // hw, (k % hw) // wo, k % wo
            pos[k] = n * words + (p * stride + d) * geo[G_WPI] + q * stride + d
        for k in range(npos, npos + POSITIONS):  # a last block's positions past the task repeat its last
            pos[k] = pos[npos - 1]
        for b in range(o4 // OUT):
            for k0 in range(0, npos, POSITIONS):
                if vnni:
                    dot_lanes(wl, b * k4 * OUT, xf, pos, k0, offs, k4, blk, 0)
                else:
                    lanes_portable(wl, b * k4 * OUT, xf, pos, k0, offs, k4, blk, 0)
                _scatter(blk, a, _block_at(k0, npos, hw, wo, row, o4 * pitch, b * OUT * pitch), pitch)
        for j in range(count):
            n = i0 + j
            finish_words(a[j * o4 * pitch:], pitch, row, 0, ho, bias, m0, shift, meta, res[min(n, res.shape[0] - 1)],
                         rw[min(n, rw.shape[0] - 1)], geo, y[min(n, y.shape[0] - 1)], yw[min(n, yw.shape[0] - 1)],
                         scratch[tid], sum_bound)


@numba.njit(cache=True, parallel=True)
def linear_blocked(x, wl, k4, bias, m0, shift, meta, y, y_float, dequant, threads, vnni):
    """npdc.kernels.int8.linear_u8 with the blocked weights wl: x (N, F) uint8, F = 4 k4 ->
    y (N, O) uint8, or y_float (N, O) float32 = (sum + bias) * dequant[o] when dequant is not
    empty, the same bits. Register blocks of (6 images, 64 output channels) go to the threads."""
    n_img, o4 = x.shape[0], bias.size
    o_out = y_float.shape[1] if dequant.size else y.shape[1]
    xf = x.reshape(x.size).view(np.uint32)
    pos = np.empty(n_img + POSITIONS, np.int64)
    for k in range(pos.size):  # a last block's images past the batch repeat its last
        pos[k] = min(k, n_img - 1) * k4
    offs = np.arange(k4).astype(np.int64)
    block = np.zeros((threads, POSITIONS * OUT + GAP // 4), np.int32)
    chunks = (n_img + POSITIONS - 1) // POSITIONS
    for t in numba.prange((o4 // OUT) * chunks):
        b, k0 = t // chunks, (t % chunks) * POSITIONS
        blk = block[numba.get_thread_id()]
        if vnni:
            dot_lanes(wl, b * k4 * OUT, xf, pos, k0, offs, k4, blk, 0)
        else:
            lanes_portable(wl, b * k4 * OUT, xf, pos, k0, offs, k4, blk, 0)
        for r in range(min(POSITIONS, n_img - k0)):
            for lane in range(min(OUT, o_out - b * OUT)):
                finish_linear(blk[r * OUT + lane], k0 + r, b * OUT + lane, bias, m0, shift, meta, y, y_float, dequant)
