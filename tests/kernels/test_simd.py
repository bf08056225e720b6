"""The vector building blocks in npdc.kernels.simd, against plain numpy, and the intrinsics
against their bounds-checked twins."""

import numba
import numpy as np
import pytest

from npdc.kernels.simd import (deinterleave16, deinterleave16_checked, straight_line_compiled, transpose8,
                               transpose8_checked, transpose8_tail)


@numba.njit(cache=True)
def _transpose(src, s, s_step, dst, d, d_step):
    transpose8(src, s, s_step, dst, d, d_step)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("s, s_step, d, d_step", [(0, 8, 0, 8), (3, 20, 5, 11), (17, 9, 2, 64)])
def test_transpose8_moves_each_value_to_its_mirror_place(dtype, s, s_step, d, d_step):
    """Offsets off any vector boundary and steps other than 8, in both float types; values
    outside the 8 x 8 block stay as they were."""
    src = np.random.default_rng(s).standard_normal((1000,)).astype(dtype).reshape(10, 100)
    dst = np.full(700, -1.0, dtype).reshape(7, 100)
    want = dst.copy().ravel()
    for i in range(8):
        for j in range(8):
            want[d + j * d_step + i] = src.flat[s + i * s_step + j]
    _transpose(src, s, s_step, dst, d, d_step)
    np.testing.assert_array_equal(dst.ravel(), want)


@numba.njit(cache=True)
def _transpose_tail(src, s, s_step, dst, d, d_step, scale, shift, slopes, ch, res, act, add, lo, hi):
    transpose8_tail(src, s, s_step, dst, d, d_step, scale, shift, slopes, ch, res, act, add, lo, hi)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act, add", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("lo, hi", [(0, 8), (3, 8), (0, 5), (2, 6)])
def test_transpose8_tail_writes_the_tail_of_the_mirrored_lanes_lo_to_hi(dtype, act, add, lo, hi):
    """Each written value in the bits of the same tail done one value at a time in the array's
    float type (multiply, add, residual, slope where negative), only lanes lo .. hi - 1 written:
    the residual's other lanes are NaN and never reach the output."""
    rng = np.random.default_rng(lo * 8 + hi)
    src = rng.standard_normal(400).astype(dtype)
    dst = rng.standard_normal((3, 100)).astype(dtype)
    res = rng.standard_normal((3, 100)).astype(dtype)
    scale, shift, slopes = (rng.standard_normal(20).astype(dtype) for _ in range(3))
    s, s_step, d, d_step, ch = 5, 13, 7, 11, 3
    want = dst.copy().ravel()
    for j in range(8):
        for i in range(8):
            at = d + j * d_step + i
            if not lo <= i < hi:
                res.flat[at] = np.nan
                continue
            v = src[s + i * s_step + j] * scale[ch + j] + shift[ch + j]
            v = v + res.flat[at] if add else v
            want[at] = v * slopes[ch + j] if act and v < 0 else v
    _transpose_tail(src, s, s_step, dst, d, d_step, scale, shift, slopes, ch, res, act, add, lo, hi)
    np.testing.assert_array_equal(dst.ravel(), want)


@numba.njit(cache=True)
def _split(src, s, evens, e, odds, o):
    deinterleave16(src, s, evens, e, odds, o)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deinterleave16_splits_even_and_odd_places(dtype):
    """Sixteen values from an odd offset go, even places and odd places, to eight places each;
    nothing else is written."""
    src = np.random.default_rng(1).standard_normal((3, 20)).astype(dtype)
    evens, odds = np.full(30, -1.0, dtype), np.full((2, 15), -2.0, dtype)
    _split(src, 7, evens, 4, odds, 9)
    want_e, want_o = np.full(30, -1.0, dtype), np.full(30, -2.0, dtype)
    want_e[4:12], want_o[9:17] = src.flat[7:23:2], src.flat[8:24:2]
    np.testing.assert_array_equal(evens, want_e)
    np.testing.assert_array_equal(odds.ravel(), want_o)


@numba.njit(cache=True)
def _transpose_checked(src, s, s_step, dst, d, d_step):
    transpose8_checked(src, s, s_step, dst, d, d_step)


@numba.njit(cache=True)
def _split_checked(src, s, evens, e, odds, o):
    deinterleave16_checked(src, s, evens, e, odds, o)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose8_equals_its_checked_twin(dtype):
    """Random arrays, offsets and steps (steps of 8 and more, so the rows do not overlap, as in
    the kernels; offsets up to the last block that fits): the same bits from both."""
    r = np.random.default_rng(11)
    for _ in range(40):
        s_step, d_step = int(r.integers(8, 40)), int(r.integers(8, 40))
        src = r.standard_normal((int(r.integers(8 * s_step, 12 * s_step)),)).astype(dtype).reshape(-1, 1)
        dst = r.standard_normal((int(r.integers(8 * d_step, 12 * d_step)),)).astype(dtype).reshape(1, -1)
        s = int(r.integers(0, src.size - 7 * s_step - 7))
        d = int(r.integers(0, dst.size - 7 * d_step - 7))
        fast, checked = dst.copy(), dst.copy()
        _transpose(src, s, s_step, fast, d, d_step)
        _transpose_checked(src, s, s_step, checked, d, d_step)
        np.testing.assert_array_equal(fast, checked)
        assert not np.array_equal(fast, dst)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deinterleave16_equals_its_checked_twin(dtype):
    """Random offsets into separate arrays and, as polyphase's phase fill does, both halves into
    one array: the same bits from both."""
    r = np.random.default_rng(12)
    for trial in range(40):
        src = r.standard_normal((3, int(r.integers(6, 20)))).astype(dtype)
        out = r.standard_normal((2, int(r.integers(8, 30)))).astype(dtype)
        s, e, o = int(r.integers(0, src.size - 15)), int(r.integers(0, out.size - 7)), int(r.integers(0, out.size - 7))
        fast, checked = out.copy(), out.copy()
        if trial % 2:
            _split(src, s, fast, e, fast, o)
            _split_checked(src, s, checked, e, checked, o)
        else:
            odds = out[::-1].copy()
            fast_odds, checked_odds = odds.copy(), odds.copy()
            _split(src, s, fast, e, fast_odds, o)
            _split_checked(src, s, checked, e, checked_odds, o)
            np.testing.assert_array_equal(fast_odds, checked_odds)
        np.testing.assert_array_equal(fast, checked)


@pytest.mark.parametrize("s, s_step, d, d_step, side", [
    (-1, 8, 0, 8, "source"),  # starts before the array
    (37, 8, 0, 8, "source"),  # the last row runs one value past the end (100 values)
    (0, 14, 0, 8, "source"),  # a step that carries row 7 past the end (7*14 + 7 = 105)
    (0, 8, -3, 8, "destination"),
    (0, 8, 0, 12, "destination"),  # 7*12 + 7 = 91 past the 80 values
])
def test_transpose8_checked_twin_refuses_out_of_range(s, s_step, d, d_step, side):
    """Any index of the 8 x 8 block outside its array: IndexError naming the side, nothing written."""
    src, dst = np.ones((10, 10), np.float32), np.zeros((8, 10), np.float32)
    with pytest.raises(IndexError, match=side):
        _transpose_checked(src, s, s_step, dst, d, d_step)
    assert not dst.any()


@pytest.mark.parametrize("s, e, o, side", [
    (-1, 0, 0, "source"), (5, 0, 0, "source"),  # 5 + 15 = 20 past the 20 values
    (0, -1, 0, "even"), (0, 23, 0, "even"),  # 23 + 7 = 30 past the 30 values
    (0, 0, -2, "odd"), (0, 0, 8, "odd"),  # 8 + 7 = 15 past the 15 values
])
def test_deinterleave16_checked_twin_refuses_out_of_range(s, e, o, side):
    """A run of the source, the evens or the odds outside its array: IndexError, nothing written."""
    src, evens, odds = np.ones(20), np.zeros(30), np.zeros(15)
    with pytest.raises(IndexError, match=side):
        _split_checked(src, s, evens, e, odds, o)
    assert not evens.any() and not odds.any()


def _scale_body(v, k, out):
    for i in range(v.size):
        out[i] = v[i] * k


def test_a_straight_line_kernel_builds_each_float_type_when_first_called():
    """Nothing compiles when the kernel is made; a call builds the signature as written for its
    float type (an int32 count goes in as the declared int64), and once both types are built the
    kernel compiles nothing more. Other arrays are refused either way, and Numba's SLP switch is
    as it was."""
    slp = numba.config.SLP_VECTORIZE
    kernel = straight_line_compiled(_scale_body, "F[::1], i8, F[::1]")
    assert not kernel.overloads
    out = np.zeros(3, np.float32)
    kernel(np.arange(3, dtype=np.float32), np.int32(2), out)
    assert out.tolist() == [0, 2, 4]
    assert [str(sig) for sig in kernel.nopython_signatures] == [
        "(Array(float32, 1, 'C', False, aligned=True), int64, Array(float32, 1, 'C', False, aligned=True)) -> none"]
    with pytest.raises(TypeError):
        kernel(np.arange(3), 2, np.zeros(3, np.int64))
    out = np.zeros(2)
    kernel(np.ones(2), 5, out)
    assert out.tolist() == [5, 5] and len(kernel.overloads) == 2 and not kernel._can_compile
    with pytest.raises(TypeError):
        kernel(np.arange(3), 2, np.zeros(3, np.int64))
    assert numba.config.SLP_VECTORIZE == slp
