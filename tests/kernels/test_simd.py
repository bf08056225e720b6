"""The vector building blocks in npdc.kernels.simd, against plain numpy."""

import numba
import numpy as np
import pytest

from npdc.kernels.simd import deinterleave16, transpose8


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
