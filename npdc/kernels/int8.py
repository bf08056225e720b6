"""Integer kernels of int8 inference: uint8 activations with a zero point, int8 weights, int32
sums, and requantisation by a fixed-point multiplier and a shift, after Jacob et al. 2018
("Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", sections 2.2-2.4).

A real value r of a tensor is S * (q - Z): S its scale, Z its zero point, q its uint8. A conv or
linear output channel o sums v = sum_k W[o, k] * (x[k] - Zx) + bias[o] in integers and writes
q = Zy + M * v, M = Sx * Sw[o] / Sy, rounded and clamped. M is given as M0 * 2^-shift with M0 an
int32 in [2^30, 2^31) (Q31): `high_mul` is the paper's rounding doubling high multiply (the
64-bit product, nudged by 2^30 and divided by 2^31 truncating toward zero: ties go toward +inf)
and `divide_by_pow2` its rounding right shift (ties away from zero), exactly as the paper's
reference code (gemmlowp) does them. Departures: the zero-point products Zx * sum_k W[o, k] are
folded into the bias by the caller (the paper keeps them as separate terms); a negative shift
(M >= 1) is a saturating left shift of v before the multiply; a residual add is done in the same
tail with RES_FRACTION bits of extra precision (both terms rescaled to the output scale, summed,
rounded once), where the paper's add rescales each input to a shared intermediate scale.

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
"""

import numba
import numpy as np

from npdc.kernels.fused import RES_NONE, RES_ZEROPAD
from npdc.kernels.int8_pack import (GROUP, LANES, group_bytes, im2col_packed, interleave_rows, pack_rows,
                                   runs_packed, tap_plane, tap_width)
from npdc.kernels.vnni import dot_rows4, dot_rows4_at, dot_rows4_at2

ROWS = 4  # output channels per register block
MAX_INPUTS = 48_000  # inputs (C * kh * kw, or features) per output channel: see the bound above
RES_FRACTION = 8  # extra fraction bits of a residual tail's two terms before their one rounding
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

# -- fixed-point arithmetic (the paper's reference code) ------------------------------------------
@numba.njit(cache=True, inline="always")
def high_mul(a, b):
    """round(a * b / 2^31), ties toward +inf, for a, b in int32 (int64 arithmetic); the one
    overflowing case a = b = -2^31 saturates to 2^31 - 1."""
    if a == INT32_MIN and b == INT32_MIN:
        return np.int64(INT32_MAX)
    ab = np.int64(a) * np.int64(b)
    t = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    return t >> 31 if t >= 0 else -((-t) >> 31)  # C division: truncate toward zero


@numba.njit(cache=True, inline="always")
def divide_by_pow2(x, e):
    """round(x / 2^e), ties away from zero, for e >= 0."""
    if e == 0:
        return x
    mask = (np.int64(1) << e) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if (x & mask) > threshold else 0)


@numba.njit(cache=True, inline="always")
def saturate32(x):
    return min(max(x, INT32_MIN), INT32_MAX)


@numba.njit(cache=True, inline="always")
def requantize(v, m0, shift):
    """v * m0 * 2^-(31 + shift), rounded as the paper does: v saturated to int32 (and, for a
    negative shift, shifted left with saturation) before the high multiply."""
    x = saturate32(np.int64(v))
    if shift < 0:
        x = saturate32(x << min(-shift, 32))
        shift = 0
    return divide_by_pow2(high_mul(x, m0), shift)


@numba.njit(cache=True)
def requantize_array(v, m0, shift, out):
    """out[i] = requantize(v[i], m0[i], shift[i]) (int64 arrays): the scalar rule, for tests."""
    for i in range(v.size):
        out[i] = requantize(v[i], m0[i], shift[i])


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


# -- tails -----------------------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def clamp_u8(v, lo):
    return np.uint8(min(max(v, lo), 255))


@numba.njit(cache=True, parallel=True)
def conv_u8(x, w, k4, kh, kw, stride, pad, bias, m0, shift, meta, res, y, cols, acc, rows_per, offs, vnni):
    """x (N, C, H, W) uint8 -> y (N, O, Ho, Wo) uint8 through the int8 weights w (O4 x k4 int32
    words), output rows in tiles of rows_per shared among threads. bias, m0, shift: (O4,) int64
    (bias with the zero-point term folded in); meta: [Zx, Zy, clamp low (Zy after a ReLU, else
    0), residual mode, front, stride, Zr, m0 and shift of the residual's rescale]. cols, acc:
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
    for t in numba.prange(n_img * tiles):
        n, p0 = t // tiles, (t % tiles) * rows_per
        p1 = min(ho, p0 + rows_per)
        width = (p1 - p0 - 1) * row + wo
        pitch = ((width + LANES - 1) // LANES) * LANES
        tid = numba.get_thread_id()
        col, a = cols[tid], acc[tid]
        if offs.size:
            rest_at = (x.shape[1] // GROUP) * stride * stride * plane * GROUP
            rest = col[rest_at:]
            span = p1 - p0 + (kh - 1) // stride
            interleave_rows(x[n], np.uint8(meta[0]), pad, stride, kh, kw, p0, span, plane,
                            col[:rest_at].view(np.uint32))
        else:
            rest = col[k4 * group_bytes(pitch):]
            if runs:
                runs_packed(x[n], np.uint8(meta[0]), kh, kw, pad, p0, p1, k_total, pitch, col, rest)
            else:
                im2col_packed(x[n], np.uint8(meta[0]), kh, kw, stride, pad, p0, p1, wo, k_total, pitch,
                              col, rest)
        gemm_tile(w, k4, col, pitch, offs, a, vnni)
        for o in range(o_out):
            if meta[3] == RES_NONE:
                finish_plain(a, o * pitch, row, y[n, o], p0, p1, bias[o], m0[o], shift[o], meta[1],
                             meta[2], rest)
                continue
            finish_residual(a, o * pitch, row, y[n, o], p0, p1, bias[o], m0[o], shift[o], meta, res[n], o,
                            rest)


@numba.njit(cache=True, inline="always")
def lane_shifts(shift):
    """(left, right, rnd, neg) of requantize_lanes for a shift: left = max(-shift, 0), right =
    max(shift, 0), rnd = 2^right / 2 (0 when right is 0), neg = -1 when right > 0, else 0."""
    right = np.int64(max(shift, 0))
    return np.int64(max(-shift, 0)), right, (np.int64(1) << right) >> 1, -np.int64(right > 0)


@numba.njit(cache=True, inline="always")
def requantize_lanes(v, m0, left, right, rnd, neg):
    """requantize(v, m0, shift) without branches, for a vectorised loop, with m0 >= 0 (the high
    multiply cannot overflow) and (left, right, rnd, neg) = lane_shifts(shift). Both of the
    paper's roundings are written as floors, which an arithmetic shift gives: its nudged and
    truncated high multiply (ties toward +inf) is floor((x m0 + 2^30) / 2^31) for either sign,
    and its rounding right shift (ties away from zero) is floor((h + rnd - [h < 0]) / 2^right)."""
    x = saturate32(saturate32(v) << left)
    h = (np.int64(np.int32(x)) * np.int64(np.int32(m0)) + (1 << 30)) >> 31  # a 32x32->64 multiply
    return (h + rnd + ((h >> 63) & neg)) >> right


@numba.njit(cache=True, inline="always")
def copy_rows(run, row, plane, p0, p1):
    """Rows p0..p1-1 of plane (Ho, Wo) from a tile's run of positions, `row` apart."""
    flat, wo = plane.reshape(plane.size), np.uint64(plane.shape[1])
    for p in range(p0, p1):
        src, dst = np.uint64((p - p0) * row), np.uint64(p) * wo
        for q in range(wo):
            flat[dst + q] = run[src + q]


@numba.njit(cache=True)
def finish_plain(a, start, row, plane, p0, p1, bias, m0, shift, zy, low, scratch):
    """Rows p0..p1-1 of one output plane (Ho, Wo) from sums a[start + (p - p0) * row + q]: zy +
    requantised, clamped to [low, 255]. The tile's positions are requantised in one run
    (the q >= Wo between its rows too: one long loop without tests or branches, which the
    vectoriser takes whole), into scratch (>= the run's bytes), then each row is copied out."""
    wo = plane.shape[1]
    width = (p1 - p0 - 1) * row + wo
    left, right, rnd, neg = lane_shifts(shift)
    src = np.uint64(start)
    for t in range(np.uint64(width)):
        out = zy + requantize_lanes(np.int64(a[src + t]) + bias, m0, left, right, rnd, neg)
        scratch[t] = np.uint8(min(max(out, low), 255))
    copy_rows(scratch, row, plane, p0, p1)


@numba.njit(cache=True)
def finish_residual(a, start, row, plane, p0, p1, bias, m0, shift, meta, res, o, scratch):
    """finish_plain with the residual res (C, H, W) of one image added: the conv's sum and the
    residual, each rescaled to the output scale with RES_FRACTION extra bits, summed and rounded
    once. An identity residual reads channel o at the same place (it may be `plane` itself: it is
    read before the plane is written); a zero-pad one reads channel o - front of every
    stride-th row and column, and adds real 0 (nothing) outside its channels. The residual's rows
    are first laid out as the tile's positions in the second half of scratch (2 x the run's
    bytes), so that the sum runs as one loop over the tile, as in finish_plain."""
    wo = plane.shape[1]
    width = (p1 - p0 - 1) * row + wo
    zy, low, mode, front, step, zr = meta[1], meta[2], meta[3], meta[4], meta[5], meta[6]
    c = o - front if mode == RES_ZEROPAD else o
    if c < 0 or c >= res.shape[0]:  # a zero-padded channel: the residual adds nothing
        for p in range(p0, p1):
            for q in range(wo):
                v = np.int64(a[start + (p - p0) * row + q]) + bias
                total = requantize(v, m0, shift - RES_FRACTION)
                plane[p, q] = clamp_u8(zy + divide_by_pow2(total, RES_FRACTION), low)
        return
    out, r_run = scratch[:width], scratch[width:2 * width]
    sub = step if mode == RES_ZEROPAD else 1
    r_flat, r_w = res[c].reshape(res.shape[1] * res.shape[2]), np.uint64(res.shape[2])
    for p in range(p0, p1):
        src, dst, u_sub = np.uint64(p * sub) * r_w, np.uint64((p - p0) * row), np.uint64(sub)
        for q in range(np.uint64(wo)):
            r_run[dst + q] = r_flat[src + q * u_sub]
    fraction = np.int64(RES_FRACTION)
    cl, cr, c_rnd, c_neg = lane_shifts(shift - fraction)
    rl, rr, r_rnd, r_neg = lane_shifts(meta[8] - fraction)
    f_rnd = np.int64(1) << (fraction - 1)
    rm0 = meta[7]
    src = np.uint64(start)
    for t in range(np.uint64(width)):
        v = np.int64(a[src + t]) + bias
        r = np.int64(r_run[t]) - zr
        total = requantize_lanes(v, m0, cl, cr, c_rnd, c_neg) + requantize_lanes(r, rm0, rl, rr, r_rnd, r_neg)
        q = zy + ((total + f_rnd + (total >> 63)) >> fraction)  # divide_by_pow2(total, RES_FRACTION)
        out[t] = np.uint8(min(max(q, low), 255))
    copy_rows(out, row, plane, p0, p1)


@numba.njit(cache=True, parallel=True)
def linear_u8(x, w, k4, bias, m0, shift, meta, y, y_float, dequant, col, a, vnni):
    """x (N, F) uint8 -> y (N, O) uint8 (dequant empty) or y_float (N, O) float32 = (sum + bias) *
    dequant[o] (the last layer's logits). The N rows are the positions of one packed tile (col:
    k4 x pitch x 4 bytes, a: O4 x pitch words); blocks of four output channels go to threads."""
    n_img = x.shape[0]
    pitch = ((n_img + LANES - 1) // LANES) * LANES
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
            v = np.int64(a[o * pitch + n]) + bias[o]
            if dequant.size:
                y_float[n, o] = np.float32(np.float64(v) * dequant[o])
            else:
                y[n, o] = clamp_u8(meta[1] + requantize(v, m0[o], shift[o]), meta[2])


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
def dequantize_u8(x, scale, zp, y):
    """y = S * (x - Z), float32."""
    a, b = x.reshape(x.size), y.reshape(y.size)
    for i in numba.prange(a.size):
        b[i] = np.float32(scale * (np.float64(a[i]) - zp))
