"""The integer parameters of an int8 plan's steps (Jacob et al. 2018, as npdc.runtime.int8
describes the scheme): activation scales and zero points from calibrated ranges, Q31 fixed-point
multipliers (and a residual's integer multiplier, `residual_multiplier`), int8 weights per
output channel, and `Int8Step`, one conv's or linear's packed
weights, bias, multipliers, shifts and the meta fields its kernels read.
"""

import numpy as np

from npdc.errors import UserError
from npdc.kernels import int8 as K
from npdc.kernels import int8_pack as P
from npdc.kernels import int8_requant as R

BIAS_LIMIT = 1 << 29  # |int32 bias| clipped here, inside the accumulation bound of npdc.kernels.int8
RATIO_LIMIT = 1 << 12  # residual scale / output scale below this: the term stays below 255 * 2^12 * 2^8 < 2^28


def scale_and_zero(low, high):
    """(scale, zero point) of uint8 values covering [low, high] (which contains 0): real 0 maps to
    the integer zero point exactly. A tensor that is always 0 gets scale 1. The scale is
    rounded to float32, as the .npdc file keeps it, so stored and fresh scales run alike."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if not high > low:
        return 1.0, 0
    scale = float(np.float32((high - low) / 255.0))  # float32: what the file stores
    return scale, int(min(max(round(-low / scale), 0), 255))


def activation_scales(ranges):
    """{value: (scale, zero point)} of calibration ranges {value: (low, high)}."""
    return {name: scale_and_zero(*r) for name, r in ranges.items()}


def fixed_multipliers(M):
    """(m0, shift) int64 arrays with M = m0 * 2^-(31 + shift), m0 in [2^30, 2^31) (Q31), for
    real multipliers M >= 0; an M too small to reach a whole unit (shift > 62) or 0 gives m0 0."""
    M = np.atleast_1d(np.asarray(M, np.float64))
    if not np.isfinite(M).all() or (M < 0).any():
        raise UserError("int8: a requantisation multiplier is negative or not finite")
    f, e = np.frexp(M)
    m0 = np.round(f * 2.0 ** 31).astype(np.int64)
    carry = m0 == 1 << 31
    m0[carry] //= 2
    e = e.astype(np.int64) + carry
    shift = -e
    dead = (m0 == 0) | (shift > 62)
    m0[dead], shift[dead] = 0, 0
    return m0, np.maximum(shift, -32)


def residual_multiplier(ratio, name):
    """(r_mul, r_shift) of a residual tail's term (npdc.kernels.int8_requant.residual_term) for
    ratio = the residual's scale over the output's: r_mul = round(ratio * 2^(RES_FRACTION +
    r_shift)) below 2^RES_MUL_BITS, r_shift the largest that allows it (at most 30). A ratio of
    RATIO_LIMIT or more (a residual thousands of times coarser than the sum it is added to) is
    refused: its term would no longer stay below 2^28."""
    ratio = float(ratio)
    if not (np.isfinite(ratio) and 0 <= ratio < RATIO_LIMIT):
        raise UserError(f"int8: {name}'s residual scale is {ratio:.4g} times its output's; integer "
                        f"residual adds take a finite ratio below {RATIO_LIMIT}")
    for r_shift in range(30, -1, -1):
        r_mul = round(ratio * 2.0 ** (R.RES_FRACTION + r_shift))
        if r_mul < 1 << R.RES_MUL_BITS:
            return r_mul, r_shift
    raise AssertionError("a ratio below RATIO_LIMIT fits at r_shift 0")


def int8_weights(W2):
    """(int8 weights (O, K), float64 scales (O,)) of float weights (O, K): symmetric per row; a
    row of zeros keeps scale 1."""
    W2 = np.asarray(W2, np.float64)
    amax = np.abs(W2).max(axis=1, initial=0.0)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.round(W2 / scale[:, None]), -127, 127).astype(np.int8), scale


def pad_to(n, m):
    """n rounded up to a multiple of m."""
    return (n + m - 1) // m * m


class Int8Step:
    """One conv or linear step's integer parameters: packed weights (O4 x k4 int32 words; for a
    conv of input channels a multiple of 4, `taps`, in the order of
    npdc.kernels.int8_pack.tap_offsets), bias, m0, shift (O4,) int64, the real weight scales and
    meta (the int64 fields conv_u8 reads)."""

    def __init__(self, step, W2, shift_f, sx, zx, sy, zy, res_q=None):
        o, k = W2.shape
        if k > K.MAX_INPUTS:
            raise UserError(f"int8: {step.name} sums {k:,} inputs per output; the int32 bound "
                            f"allows {K.MAX_INPUTS:,}")
        if step.act and np.any(step.slopes != 0):
            raise UserError(f"int8: {step.name} ends in a PReLU; integer inference takes ReLU only")
        Wq, sw = int8_weights(W2)
        self.k4, o4 = pad_to(k, P.GROUP) // P.GROUP, pad_to(o, K.ROWS)
        packed = np.zeros((o4, self.k4 * P.GROUP), np.int8)
        self.taps = step.kind == "conv" and step.w_shape[1] % P.GROUP == 0
        if self.taps:  # words of (channel group, kernel row, kernel column), as tap_offsets reads
            c, kh, kw = step.w_shape[1:]
            packed[:o, :k] = Wq.reshape(o, c // P.GROUP, P.GROUP, kh, kw).transpose(0, 1, 3, 4, 2).reshape(o, k)
        else:
            packed[:o, :k] = Wq
        self.w = packed.view(np.int32).reshape(-1)
        self.Wq, self.w_scale = Wq, sw
        bias = np.clip(np.round(np.asarray(shift_f, np.float64) / (sx * sw)), -BIAS_LIMIT, BIAS_LIMIT)
        self.bias = np.zeros(o4, np.int64)
        self.bias[:o] = bias.astype(np.int64) - zx * Wq.astype(np.int64).sum(axis=1)
        self.m0, self.shift = np.zeros(o4, np.int64), np.zeros(o4, np.int64)
        self.m0[:o], self.shift[:o] = fixed_multipliers(sx * sw / sy)
        zr, r_mul, r_shift = 0, 0, 0
        if res_q is not None:
            zr, (r_mul, r_shift) = res_q[1], residual_multiplier(res_q[0] / sy, step.name)
        self.meta = np.array([zx, zy, zy if step.act else 0, step.res_mode, step.res_front,
                              step.res_stride, zr, r_mul, r_shift], np.int64)
        self.dequant = (sx * sw).astype(np.float64)
