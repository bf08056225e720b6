"""Integer kernels of int8 inference: uint8 activations with a zero point, int8 weights, int32
sums, and requantisation by a fixed-point multiplier and a shift, after Jacob et al. 2018
("Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", sections 2.2-2.4).

A real value r of a tensor is S * (q - Z): S its scale, Z its zero point, q its uint8. A conv or
linear output channel o sums v = sum_k W[o, k] * (x[k] - Zx) + bias[o] in integers and writes
q = Zy + M * v, M = Sx * Sw[o] / Sy, rounded and clamped. M is given as M0 * 2^-shift with M0 an
int32 in [2^30, 2^31) (Q31), applied with the paper's roundings by npdc.kernels.int8_requant,
which also holds the conv tails (residual adds included) and says where they depart from the
paper. Departure here: the zero-point products Zx * sum_k W[o, k] are folded into the bias by
the caller (the paper keeps them as separate terms).

Accumulation bound: the int32 sum of a channel's K products is at most K * 127 * 255 in
magnitude (uint8 activations, |int8 weight| <= 127); the value requantised, sum_k W (x - Zx) +
bias, is at most K * 127 * 255 + 2^29 (|x - Zx| <= 255, the bias clipped at 2^29). Both stay
below 2^31 when K <= MAX_INPUTS = 48,000 (48,000 * 127 * 255 + 2^29 = 2,091,350,912). The
runtime refuses larger layers. The shipped fmnist-resnet18's largest is fc5, K = 2,048 (worst
|sum| 66,324,480), fmnist-resnet20's res4c_2b, K = 576; an ImageNet ResNet-18's 4,608.

Layout. A product of four bytes at a time (GROUP) is what AVX-512 VNNI's vpdpbusd does in one
lane: the columns of a tile are packed as (K/4, width, 4) bytes, so that 16 output positions x 4
inputs are one 64-byte vector, and weights as (O, K/4) int32 words of 4 int8 each. The GEMM of a
tile runs four output channels at a time (`npdc.kernels.vnni.dot_rows4`, or its portable twin
`dot_rows4_portable` here); both compute exact integer sums, so both give the same bits. A conv
whose input channels are a multiple of 4 builds no columns: its tile's input is stored four
channels to a word (npdc.kernels.int8_pack.interleave_rows), where each tap's 16 positions are
already one 64-byte vector, and the GEMM reads them there at per-tap offsets (`dot_rows4_at`,
`dot_rows4_at2` for 32 positions at a time); its weights are packed in the same tap order.
Where the runtime keeps activations in that word layout between layers, the conv is
npdc.kernels.int8_words.conv_words, which shares this module's GEMM and tile input.
"""

import numba
import numpy as np

from npdc.kernels.fused import RES_NONE
from npdc.kernels.int8_pack import (GROUP, LANES, group_bytes, im2col_packed, interleave_rows, pack_rows,
                                   rows_pitch, runs_packed, tap_plane, tap_width)
from npdc.kernels.int8_requant import clamp_u8, finish_linear, finish_plain, finish_residual, requantize
from npdc.kernels.vnni import dot_rows4, dot_rows4_at, dot_rows4_at2

ROWS = 4  # output channels per register block
MAX_INPUTS = 48_000  # inputs (C * kh * kw, or features) per output channel: see the bound above

# -- the tile GEMM ---------------------------------------------------------------------------------
@numba.njit(cache=True)
def dot_rows4_portable(w, w_off, w_pitch, cols, c_off, c_pitch, offs, k4, acc, a_off, a_pitch):
    """acc[a_off + r*a_pitch + l] = sum over k < k4 of the 4-byte dot product of weight word
    w[w_off + r*w_pitch + k] (4 int8) and column bytes cols[at + 4l ..] (4 uint8), at = c_off +
    k*c_pitch (offs empty) or c_off + offs[k], for r < 4 and l < 16: what dot_rows4 and
    dot_rows4_at do with vpdpbusd, in plain loops."""
    wb = w.view(np.int8)  # the words' bytes, in memory order as vpdpbusd reads them
    for r in range(ROWS):
        out = a_off + r * a_pitch
        for lane in range(LANES):
            acc[out + lane] = 0
        for k in range(k4):
            wo_ = (w_off + r * w_pitch + k) * GROUP
            co = c_off + (offs[k] if offs.size else k * c_pitch)
            w0, w1, w2, w3 = np.int32(wb[wo_]), np.int32(wb[wo_ + 1]), np.int32(wb[wo_ + 2]), np.int32(wb[wo_ + 3])
            for lane in range(LANES):
                b = co + lane * GROUP
                acc[out + lane] += np.int32(w0 * np.int32(cols[b]) + w1 * np.int32(cols[b + 1])
                                            + w2 * np.int32(cols[b + 2]) + w3 * np.int32(cols[b + 3]))


@numba.njit(cache=True)
def gemm_tile(w, k4, cols, pitch, offs, acc, vnni):
    """acc (O4 x pitch, flat) = w (O4 x k4 words) times the packed columns, O4 a multiple of 4,
    pitch of 16: column group k at byte k * group_bytes(pitch) (offs empty) or at offs[k] (a
    conv's taps read in place, npdc.kernels.int8_pack.interleave_rows)."""
    o4 = w.size // k4
    step = group_bytes(pitch)
    pairs = (pitch // (2 * LANES)) * 2 * LANES if vnni and offs.size else 0
    for o in range(0, o4, ROWS):
        for p in range(0, pairs, 2 * LANES):  # 32 positions at a time where they fit
            dot_rows4_at2(w, o * k4, k4, cols, p * GROUP, offs, k4, acc, o * pitch + p, pitch)
        for p in range(pairs, pitch, LANES):
            if vnni and offs.size:
                dot_rows4_at(w, o * k4, k4, cols, p * GROUP, offs, k4, acc, o * pitch + p, pitch)
            elif vnni:
                dot_rows4(w, o * k4, k4, cols, p * GROUP, step, k4, acc, o * pitch + p, pitch)
            else:
                dot_rows4_portable(w, o * k4, k4, cols, p * GROUP, step, offs, k4, acc, o * pitch + p, pitch)


@numba.njit(cache=True)
def tile_input(x, zx, k4, kh, kw, stride, pad, p0, p1, wo, pitch, plane, taps, col):
    """Lays out in col what the GEMM of a tile of output rows p0..p1-1 of one image x (C, H, W)
    reads (conv_u8's three ways: interleaved phases when taps, else the lowered columns) and
    returns the rest of col, the tails' scratch."""
    if taps:
        rest_at = (x.shape[0] // GROUP) * stride * stride * plane * GROUP
        interleave_rows(x, zx, pad, stride, kh, kw, p0, p1 - p0 + (kh - 1) // stride, plane,
                        col[:rest_at].view(np.uint32))
        return col[rest_at:]
    k_total = x.shape[0] * kh * kw
    rest = col[k4 * group_bytes(pitch):]
    if stride == 1:
        runs_packed(x, zx, kh, kw, pad, p0, p1, k_total, pitch, col, rest)
    else:
        im2col_packed(x, zx, kh, kw, stride, pad, p0, p1, wo, k_total, pitch, col, rest)
    return rest


@numba.njit(cache=True, parallel=True)
def conv_u8(x, w, k4, kh, kw, stride, pad, bias, m0, shift, meta, res, y, cols, acc, rows_per, offs, vnni):
    """x (N, C, H, W) uint8 -> y (N, O, Ho, Wo) uint8 through the int8 weights w (O4 x k4 int32
    words), output rows in tiles of rows_per shared among threads. bias, m0, shift: (O4,) int64
    (bias with the zero-point term folded in); meta: [Zx, Zy, clamp low (Zy after a ReLU, else
    0), residual mode, front, stride, Zr, the multiplier and shift of the residual term]. cols, acc:
    (threads, tile bytes / words) workspaces (npdc.kernels.int8_pack.tile_bytes gives the columns'
    size).

    With offs (int64, k4 long: C a multiple of 4 and the weights packed by taps, see
    npdc.runtime.int8) the tile's input is stored four channels to a word in stride x stride
    phases (interleave_rows) and every tap's columns are read there in place, over rows of
    tap_width positions (those q >= Wo computed and dropped). Without, a stride-1 conv lowers its
    columns as shifted runs of the padded rows (runs_packed, rows of the padded width), a strided
    one lowers exact columns (im2col_packed)."""
    n_img, o_out, ho, wo = y.shape[0], y.shape[1], y.shape[2], y.shape[3]
    tiles = (ho + rows_per - 1) // rows_per
    k_total = x.shape[1] * kh * kw
    runs = stride == 1
    row = wo  # positions from one output row of the tile to the next
    if offs.size or runs:
        row = tap_width(x.shape[3], pad, stride)
    plane = tap_plane(rows_per, kh, row, stride)
    sum_bound = 128 * 255 * k_total  # |sum of a channel's products| (uint8 times int8)
    for t in numba.prange(n_img * tiles):
        n, p0 = t // tiles, (t % tiles) * rows_per
        p1 = min(ho, p0 + rows_per)
        width = (p1 - p0 - 1) * row + wo
        pitch = ((width + LANES - 1) // LANES) * LANES
        tid = numba.get_thread_id()
        col, a = cols[tid], acc[tid]
        rest = tile_input(x[n], np.uint8(meta[0]), k4, kh, kw, stride, pad, p0, p1, wo, pitch, plane,
                          offs.size > 0, col)
        gemm_tile(w, k4, col, pitch, offs, a, vnni)
        for o in range(o_out):
            if meta[3] == RES_NONE:
                finish_plain(a, o * pitch, row, y[n, o], p0, p1, bias[o], m0[o], shift[o], meta[1],
                             meta[2], sum_bound, rest)
                continue
            finish_residual(a, o * pitch, row, y[n, o], p0, p1, bias[o], m0[o], shift[o], meta, res[n], o,
                            sum_bound, rest)


@numba.njit(cache=True, parallel=True)
def linear_u8(x, w, k4, bias, m0, shift, meta, y, y_float, dequant, col, a, vnni):
    """x (N, F) uint8 -> y (N, O) uint8 (dequant empty) or y_float (N, O) float32 = (sum + bias) *
    dequant[o] (the last layer's logits). The N rows are the positions of one packed tile (col:
    k4 x pitch x 4 bytes, a: O4 x pitch words); blocks of four output channels go to threads."""
    n_img = x.shape[0]
    pitch = rows_pitch(n_img)
    offs_none = np.zeros(0, np.int64)
    pack_rows(x, 0, n_img, pitch, col)
    o4 = w.size // k4
    for ob in numba.prange(o4 // ROWS):
        o = ob * ROWS
        for p in range(0, pitch, LANES):
            if vnni:
                dot_rows4(w, o * k4, k4, col, p * GROUP, group_bytes(pitch), k4, a, o * pitch + p, pitch)
            else:
                dot_rows4_portable(w, o * k4, k4, col, p * GROUP, group_bytes(pitch), offs_none, k4, a,
                                   o * pitch + p, pitch)
    o_out = y_float.shape[1] if dequant.size else y.shape[1]
    for o in range(o_out):
        for n in range(n_img):
            finish_linear(a[o * pitch + n], n, o, bias, m0, shift, meta, y, y_float, dequant)


@numba.njit(cache=True, parallel=True)
def avg_pool_u8(x, zx, zy, m0, shift, y):
    """y (N, C) = Zy + requantised sum over each plane of x (N, C, H, W) minus Zx; the multiplier
    carries 1 / (H W)."""
    n_img, c_n, hw = x.shape[0], x.shape[1], x.shape[2] * x.shape[3]
    for t in numba.prange(n_img * c_n):
        n, c = t // c_n, t % c_n
        s = np.int64(0)
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                s += np.int64(x[n, c, i, j])
        y[n, c] = clamp_u8(zy + requantize(s - zx * hw, m0, shift), 0)


@numba.njit(cache=True, parallel=True)
def quantize_u8(x, inv_scale, zp, y):
    """y = clamp(round_half_even(x / S) + Z) of float32 x (any shape, C-contiguous, as y)."""
    a, b = x.reshape(x.size), y.reshape(y.size)
    for i in numba.prange(a.size):
        v = np.round(np.float64(a[i]) * inv_scale) + zp
        b[i] = np.uint8(min(max(v, 0.0), 255.0))


@numba.njit(cache=True, parallel=True)
def quantize_images(x, mean, std, inv_scale, zp, y):
    """y = quantize_u8 of (x - mean[c]) / std[c] for float32 images x (N, C, H, W), the
    normalisation in float32 as npdc.runtime.infer.normalise_images does it (the same bits), in
    one parallel pass instead of three serial NumPy passes and a quantizing one."""
    n, c = x.shape[0], x.shape[1]
    for t in numba.prange(n * c):
        i, ch = t // c, t % c
        m, s = mean[ch], std[ch]
        for p in range(x.shape[2]):
            for q in range(x.shape[3]):
                v = np.round(np.float64((x[i, ch, p, q] - m) / s) * inv_scale) + zp
                y[i, ch, p, q] = np.uint8(min(max(v, 0.0), 255.0))


@numba.njit(cache=True, parallel=True)
def dequantize_u8(x, scale, zp, y):
    """y = S * (x - Z), float32."""
    a, b = x.reshape(x.size), y.reshape(y.size)
    for i in numba.prange(a.size):
        b[i] = np.float32(scale * (np.float64(a[i]) - zp))
