"""The conv tails of npdc.kernels.int8_requant give the bits of the scalar rule `requantize`,
whether they take the 16-lane IR of npdc.kernels.int8_lanes or (where its preconditions fail:
left shifts, sums near int32's end) the branch-free loops; the
masked stores write no byte past a row."""

import numba
import numpy as np
import pytest

from npdc.kernels import int8_requant as R
from npdc.kernels.fused import RES_IDENTITY, RES_ZEROPAD
from npdc.kernels.int8_lanes import requantize16, residual16


def _clamp(v, low):
    return np.uint8(min(max(v, low), 255))


def _plain_ref(a, bias, m0, shift, zy, low):
    return np.array([_clamp(zy + R.requantize(int(v) + bias, m0, shift), low) for v in a], np.uint8)


def _term(d, r_mul, r_shift):
    """The residual's term in Python integers: d * r_mul / 2^r_shift rounded, ties up."""
    return (d * r_mul + (1 << r_shift) // 2) >> r_shift


def _residual_ref(a, r, bias, m0, shift, meta, low):
    """The residual rule written with the scalar requantize: both terms at RES_FRACTION extra
    bits, summed, rounded once (ties away from zero)."""
    f, out = R.RES_FRACTION, []
    for v, b in zip(a, r):
        total = (R.requantize(int(v) + bias, m0, shift - f)
                 + _term(int(b) - int(meta[6]), int(meta[7]), int(meta[8])))
        out.append(_clamp(int(meta[1]) + R.divide_by_pow2(total, f), low))
    return np.array(out, np.uint8)


@numba.njit(cache=True)
def _lanes(a, count, bias, m0, e, zy, low, out):
    for t in range(0, a.size, 16):
        requantize16(a, t, out, t, count, bias, m0, e, zy, low)


@numba.njit(cache=True)
def _residual_lanes(a, r, count, bias, m0, shift, meta, out):
    for t in range(0, a.size, 16):
        residual16(a, t, r, t, out, t, count, bias, m0, shift, meta[1], meta[2], meta[6], meta[7],
                   meta[8], R.RES_FRACTION)


def test_sixteen_lanes_give_the_scalar_rule_and_store_only_their_count():
    rng = np.random.default_rng(3)
    for trial in range(300):
        shift, zy, count = int(rng.integers(-8, 31)), int(rng.integers(0, 256)), int(rng.integers(1, 17))
        low = int(rng.choice([0, zy]))
        m0 = int(rng.choice([1 << 30, (1 << 31) - 1, 0, int(rng.integers(1 << 30, 1 << 31))]))
        limit = (2 ** 31 - 1) >> max(-shift, 0)  # |sum + bias| within int32 after the left shift
        scale = min(int(rng.choice([300, 1 << 20, 1 << 30])), limit // 2)
        bias = int(rng.integers(-scale, scale))
        a = rng.integers(-scale, scale, 48)
        a[:8] = ((np.arange(-4, 4) * 2 + 1) << max(shift - 1, 0)) - bias  # halves: ties of the rounding shift
        a = np.clip(a, -limit + abs(bias), limit - abs(bias)).astype(np.int32)
        out = np.full(48, 77, np.uint8)
        _lanes(a, count, bias, m0, shift, zy, low, out)
        kept = (np.arange(48) % 16) < count
        assert np.array_equal(out[kept], _plain_ref(a, bias, m0, shift, zy, low)[kept]), (shift, m0, bias)
        assert (out[~kept] == 77).all()


def test_sixteen_lanes_with_a_residual_give_the_scalar_rule():
    rng = np.random.default_rng(4)
    for trial in range(300):
        shift, r_shift = int(rng.integers(0, 39)), int(rng.integers(0, 31))
        zy, count = int(rng.integers(0, 256)), int(rng.integers(1, 17))
        low = int(rng.choice([0, zy]))
        r_mul = int(rng.choice([0, 1, (1 << R.RES_MUL_BITS) - 1, int(rng.integers(0, 1 << R.RES_MUL_BITS))]))
        zr = int(rng.integers(0, 256))
        if trial < 4:  # the largest terms of either sign, with the largest rounding: all within int32
            r_mul, r_shift, zr = (1 << R.RES_MUL_BITS) - 1, 30 - trial % 2, 255 * (trial // 2)
        meta = np.array([0, zy, low, RES_IDENTITY, 0, 1, zr, r_mul, r_shift], np.int64)
        m0 = int(rng.integers(1 << 30, 1 << 31))
        scale = min(int(rng.choice([1 << 12, 1 << 24, 1 << 30])), 2 ** 30 >> max(8 - shift, 0))
        a = rng.integers(-scale, scale, 32).astype(np.int32)
        r = rng.integers(0, 256, 32).astype(np.uint8)
        if trial < 4:
            r[:] = 255 - zr
        out = np.full(32, 77, np.uint8)
        _residual_lanes(a, r, count, 0, m0, shift - R.RES_FRACTION, meta, out)
        kept = (np.arange(32) % 16) < count
        assert np.array_equal(out[kept], _residual_ref(a, r, 0, m0, shift, meta, low)[kept]), (shift, r_shift)
        assert (out[~kept] == 77).all()


@pytest.mark.parametrize("shift, bias", [(9, 100), (35, 0), (-3, 7), (-12, 7), (12, 2 ** 31 - 2 ** 20)])
@pytest.mark.parametrize("r_shift", [None, 0, 14, 30])
@pytest.mark.parametrize("rows, row, wo", [(3, 7, 5), (2, 20, 18)])
def test_tails_take_every_path_and_give_the_scalar_rule(shift, bias, r_shift, rows, row, wo):
    """finish_plain and finish_residual (identity and zero-pad residuals) over a tile of output
    rows 1..rows of a plane, `row` positions apart in the sums (the ones past Wo dropped): short
    rows go over the tile's run, long ones row by row; multipliers inside and outside the
    16-lane preconditions."""
    assert R.by_runs(wo, row, 1, 1 + rows) == (wo < 16)
    rng = np.random.default_rng(5)
    ho, sum_bound = rows + 1, 2 ** 20
    a = rng.integers(-sum_bound, sum_bound, 64).astype(np.int32)
    m0, zy, low = int(rng.integers(1 << 30, 1 << 31)), 17, 17
    sums = np.array([a[(p - 1) * row + q] for p in range(1, 1 + rows) for q in range(wo)])
    scratch = np.zeros(128, np.uint8)
    plane = np.full((ho, wo), 99, np.uint8)
    if r_shift is None:
        R.finish_plain(a, 0, row, plane, 1, 1 + rows, bias, m0, shift, zy, low, sum_bound, scratch)
        expected = _plain_ref(sums, bias, m0, shift, zy, low)
        assert np.array_equal(plane[1:].reshape(-1), expected) and (plane[0] == 99).all()
        return
    res = rng.integers(0, 256, (3, 2 * ho, 2 * wo)).astype(np.uint8)
    for mode, o, front in ((RES_IDENTITY, 1, 0), (RES_ZEROPAD, 2, 1), (RES_ZEROPAD, 0, 1)):
        meta = np.array([0, zy, low, mode, front, 2 if mode == RES_ZEROPAD else 1, 40,
                         int(rng.integers(0, 1 << R.RES_MUL_BITS)), r_shift], np.int64)
        src = res[:, :ho, :wo] if mode == RES_IDENTITY else res[:, ::2, ::2]
        plane[:] = 99
        R.finish_residual(a, 0, row, plane, 1, 1 + rows, bias, m0, shift, meta,
                          np.ascontiguousarray(res[:, :ho, :wo]) if mode == RES_IDENTITY else res, o,
                          sum_bound, scratch)
        c = o - front
        r = src[c, 1:].reshape(-1) if 0 <= c < 3 else np.full(rows * wo, 40)  # outside: adds 0
        expected = _residual_ref(sums, r, bias, m0, shift, meta, low)
        assert np.array_equal(plane[1:].reshape(-1), expected), (mode, o)
        assert (plane[0] == 99).all()
