"""Requantisation of int8 inference, after Jacob et al. 2018 ("Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", section 2.2): a sum v becomes
v * M, M = m0 * 2^-(31 + shift) with m0 a Q31 int32 in [2^30, 2^31). `high_mul` is the paper's
rounding doubling high multiply (the 64-bit product, nudged by 2^30 and divided by 2^31
truncating toward zero: ties go toward +inf) and `divide_by_pow2` its rounding right shift (ties
away from zero), exactly as its reference code (gemmlowp) does them; `requantize` is the scalar
rule, `requantize_lanes` the same bits without branches. Departure: a negative shift (M >= 1) is a
saturating left shift of v before the multiply.

The tails of npdc.kernels.int8.conv_u8 live here too: each output channel of a tile goes from
int32 sums to uint8, the residual added in the same pass (both terms rescaled to the output
scale with RES_FRACTION extra bits, summed and rounded once; the paper's add rescales each input
to a shared intermediate scale instead). Departure: the residual's term is its byte difference
(at most 255 in magnitude) times an integer multiplier below 2^RES_MUL_BITS, rounded by a shift
(`residual_term`), instead of a Q31 high multiply: product and rounding fit 32 bits, one
multiply a lane instead of two 64-bit ones. The term is within 0.5 + 128 / 2^r_shift (0.5 +
ratio / 64 for a residual scale `ratio` times the output's) of its real value in units of
2^-RES_FRACTION, against 0.5 and a little for the high multiply. Where the preconditions of
npdc.kernels.int8_lanes hold (checked per channel: sums plus bias within int32 after any left
shift, right shifts of at most 30), 16 positions at a time go through its
vector IR, which writes the output rows directly (masked stores end at a row's end); elsewhere
through branch-free loops over the tile's run of positions and a row copy. Both give the bits
of `requantize`.
"""

import numba
import numpy as np

from npdc.kernels.fused import RES_ZEROPAD
from npdc.kernels.int8_lanes import requantize16, residual16
from npdc.kernels.int8_pack import LANES

RES_FRACTION = 8  # extra fraction bits of a residual tail's two terms before their one rounding
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
RES_MUL_BITS = 22  # a residual multiplier is below 2^22: 255 * (2^22 - 1) + 2^29 (its rounding) < 2^31


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


@numba.njit(cache=True, inline="always")
def residual_term(d, r_mul, r_shift):
    """A residual tail's residual term, in units of 2^-RES_FRACTION of the output's: the byte
    difference d = r - Zr times r_mul, rounded by 2^r_shift (ties up); npdc.runtime.int8_params.
    residual_multiplier gives (r_mul, r_shift)."""
    return (np.int64(d) * r_mul + ((np.int64(1) << r_shift) >> 1)) >> r_shift


@numba.njit(cache=True)
def requantize_array(v, m0, shift, out):
    """out[i] = requantize(v[i], m0[i], shift[i]) (int64 arrays): the scalar rule, for tests."""
    for i in range(v.size):
        out[i] = requantize(v[i], m0[i], shift[i])


@numba.njit(cache=True, inline="always")
def clamp_u8(v, lo):
    return np.uint8(min(max(v, lo), 255))


@numba.njit(cache=True, inline="always")
def finish_linear(total, n, o, bias, m0, shift, meta, y, y_float, dequant):
    """A linear layer's output (image n, channel o) from its int32 sum: y[n, o] uint8 requantised,
    or, when dequant is not empty (the last layer's logits), y_float[n, o] = (sum + bias) *
    dequant[o]. The one tail of every int8 linear kernel."""
    v = np.int64(total) + bias[o]
    if dequant.size:
        y_float[n, o] = np.float32(np.float64(v) * dequant[o])
    else:
        y[n, o] = clamp_u8(meta[1] + requantize(v, m0[o], shift[o]), meta[2])


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


@numba.njit(cache=True, inline="always")
def lanes_apply(bias, shift, sum_bound):
    """Whether requantize16 (npdc.kernels.int8_lanes) gives a channel's bits: its sums, at most
    sum_bound in magnitude, plus the bias fit in int32 also after the left shift of a negative
    shift, and a right shift is at most 30."""
    left = min(max(-shift, 0), 31)
    return shift <= 30 and abs(bias) <= INT32_MAX and abs(bias) + sum_bound <= INT32_MAX >> left


@numba.njit(cache=True, inline="always")
def by_runs(wo, row, p0, p1):
    """Whether 16-lane tails go over the tile's run of positions (into scratch, then a row copy)
    rather than row by row into the plane: where the run takes under 3/4 of the 16-lane steps
    (short rows: a row of Wo < 16 fills only part of its step)."""
    steps_run = ((p1 - p0 - 1) * row + wo + LANES - 1) // LANES
    return 4 * steps_run < 3 * (p1 - p0) * ((wo + LANES - 1) // LANES)


@numba.njit(cache=True)
def finish_plain(a, start, row, plane, p0, p1, bias, m0, shift, zy, low, sum_bound, scratch):
    """Rows p0..p1-1 of one output plane (Ho, Wo) from sums a[start + (p - p0) * row + q] (each
    at most sum_bound in magnitude): zy + requantised, clamped to [low, 255]. Where lanes_apply,
    16 positions at a time by requantize16: straight into the plane row by row (its masked
    stores end at a row's end), or over the tile's run of positions into scratch (by_runs).
    Else in one branch-free loop over the run (the q >= Wo between rows too), which the
    vectoriser takes whole. scratch holds >= the run's bytes; runs are copied out row by row."""
    wo = plane.shape[1]
    width = (p1 - p0 - 1) * row + wo
    if lanes_apply(bias, shift, sum_bound):
        if by_runs(wo, row, p0, p1):
            for t in range(0, width, LANES):
                requantize16(a, start + t, scratch, t, min(LANES, width - t), bias, m0, shift, zy, low)
            copy_rows(scratch, row, plane, p0, p1)
            return
        flat = plane.reshape(plane.size)
        for p in range(p0, p1):
            src, dst = start + (p - p0) * row, p * wo
            for q in range(0, wo, LANES):
                requantize16(a, src + q, flat, dst + q, min(LANES, wo - q), bias, m0, shift, zy, low)
        return
    left, right, rnd, neg = lane_shifts(shift)
    src = np.uint64(start)
    for t in range(np.uint64(width)):
        out = zy + requantize_lanes(np.int64(a[src + t]) + bias, m0, left, right, rnd, neg)
        scratch[t] = np.uint8(min(max(out, low), 255))
    copy_rows(scratch, row, plane, p0, p1)


@numba.njit(cache=True)
def finish_residual(a, start, row, plane, p0, p1, bias, m0, shift, meta, res, o, sum_bound, scratch):
    """finish_plain with the residual res (C, H, W) of one image added: the conv's sum and the
    residual, each rescaled to the output scale with RES_FRACTION extra bits, summed and rounded
    once. An identity residual reads channel o at the same place (it may be `plane` itself: each
    row is read before it is written); a zero-pad one reads channel o - front of every stride-th
    row and column (gathered into scratch first), and adds real 0 (nothing) outside its channels.
    16 positions at a time through residual16 where its preconditions hold (row by row, or over
    the run as finish_plain does, the residual's bytes laid out as the run from byte `pitch` of
    scratch: scratch holds >= 2 x pitch bytes), else finish_residual_run."""
    wo = plane.shape[1]
    zy, low, mode, front, step = meta[1], meta[2], meta[3], meta[4], meta[5]
    c = o - front if mode == RES_ZEROPAD else o
    outside = c < 0 or c >= res.shape[0]
    r_shift = meta[8]
    if not lanes_apply(bias, shift - RES_FRACTION, sum_bound):
        finish_residual_run(a, start, row, plane, p0, p1, bias, m0, shift, meta, res, c, outside, scratch)
        return
    r_mul, sub = 0 if outside else meta[7], step if mode == RES_ZEROPAD else 1
    r_plane = res[max(min(c, res.shape[0] - 1), 0)]
    r_flat, r_w = r_plane.reshape(r_plane.size), r_plane.shape[1]
    width = (p1 - p0 - 1) * row + wo
    if by_runs(wo, row, p0, p1):
        pitch = ((width + LANES - 1) // LANES) * LANES
        if not outside:  # else any bytes: the multiplier is 0
            for p in range(p0, p1):
                at, dst = p * sub * r_w, pitch + (p - p0) * row
                for q in range(wo):
                    scratch[dst + q] = r_flat[at + q * sub]
        for t in range(0, width, LANES):
            residual16(a, start + t, scratch, pitch + t, scratch, t, min(LANES, width - t), bias, m0,
                       shift - RES_FRACTION, zy, low, meta[6], r_mul, r_shift, RES_FRACTION)
        copy_rows(scratch, row, plane, p0, p1)
        return
    flat = plane.reshape(plane.size)
    for p in range(p0, p1):
        src, dst = start + (p - p0) * row, p * wo
        r_src, r_at = scratch, 0  # outside the residual's channels: any bytes, times multiplier 0
        if not outside and mode == RES_ZEROPAD:
            at = p * step * r_w
            for q in range(wo):
                scratch[q] = r_flat[at + q * step]
        elif not outside:
            r_src, r_at = r_flat, p * wo
        for q in range(0, wo, LANES):
            residual16(a, src + q, r_src, r_at + q, flat, dst + q, min(LANES, wo - q), bias, m0,
                       shift - RES_FRACTION, zy, low, meta[6], r_mul, r_shift, RES_FRACTION)


@numba.njit(cache=True)
def finish_residual_run(a, start, row, plane, p0, p1, bias, m0, shift, meta, res, c, outside, scratch):
    """finish_residual for any multipliers, reading residual channel c (none when outside): the
    residual's rows are first laid out as the tile's positions in the second half of scratch
    (2 x the run's bytes), so that the sum runs as one loop over the tile, as in finish_plain."""
    wo = plane.shape[1]
    width = (p1 - p0 - 1) * row + wo
    zy, low, mode, step, zr = meta[1], meta[2], meta[3], meta[5], meta[6]
    if outside:  # a zero-padded channel: the residual adds nothing
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
    f_rnd = np.int64(1) << (fraction - 1)
    r_mul, r_shift = meta[7], meta[8]
    src = np.uint64(start)
    for t in range(np.uint64(width)):
        v = np.int64(a[src + t]) + bias
        total = (requantize_lanes(v, m0, cl, cr, c_rnd, c_neg)
                 + residual_term(np.int64(r_run[t]) - zr, r_mul, r_shift))
        q = zy + ((total + f_rnd + (total >> 63)) >> fraction)  # divide_by_pow2(total, RES_FRACTION)
        out[t] = np.uint8(min(max(q, low), 255))
    copy_rows(out, row, plane, p0, p1)


