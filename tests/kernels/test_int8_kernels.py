"""The integer kernels of npdc.kernels.int8: requantisation rounds as Jacob et al. 2018's
reference code does (checked against exact rational arithmetic and against the real product),
outputs saturate at both ends, int32 sums stay exact up to the stated bound, and the VNNI and
portable dot products give the same bits."""

from fractions import Fraction
import math

import numba
import numpy as np
import pytest

from npdc.kernels import int8 as K
from npdc.kernels import int8_requant as R
from npdc.kernels import int8_pack as P
from npdc.kernels.int8_pack import SKEW
from npdc.kernels.vnni import cpu_has_vnni
from npdc.errors import UserError
from npdc.runtime.int8_params import BIAS_LIMIT, RATIO_LIMIT, fixed_multipliers, residual_multiplier

needs_vnni = pytest.mark.skipif(not cpu_has_vnni(), reason="the CPU has no AVX-512 VNNI")


def _round_half_up(f):
    return math.floor(f + Fraction(1, 2))


def _round_half_away(f):
    return int(math.copysign(math.floor(abs(f) + Fraction(1, 2)), f))


def _exact(v, m0, shift):
    """The paper's two roundings in exact arithmetic: v*m0/2^31 to nearest (ties up), then /2^shift
    to nearest (ties away from zero); a negative shift multiplies v first."""
    v = max(min(v, 2 ** 31 - 1), -2 ** 31)
    if shift < 0:
        v, shift = max(min(v * 2 ** -shift, 2 ** 31 - 1), -2 ** 31), 0
    return _round_half_away(Fraction(_round_half_up(Fraction(v * m0, 2 ** 31)), 2 ** shift))


def _requantize(v, m0, shift):
    out = np.zeros(len(v), np.int64)
    R.requantize_array(np.asarray(v, np.int64), np.asarray(m0, np.int64), np.asarray(shift, np.int64), out)
    return out


def test_requantisation_follows_the_papers_rounding_exactly():
    rng = np.random.default_rng(0)
    M = np.concatenate([rng.uniform(1e-5, 1, 300), rng.uniform(1, 40, 100)])
    v = rng.integers(-2 ** 28, 2 ** 28, M.size)
    v[:50] = rng.integers(-300, 300, 50)  # small sums, where the two roundings show
    m0, shift = fixed_multipliers(M)
    got = _requantize(v, m0, shift)
    assert [int(g) for g in got] == [_exact(int(a), int(b), int(c)) for a, b, c in zip(v, m0, shift)]


def test_requantisation_is_within_half_a_step_and_a_bit_of_the_real_product():
    rng = np.random.default_rng(1)
    M = rng.uniform(1e-4, 1, 500)
    v = rng.integers(-2 ** 27, 2 ** 27, M.size)
    m0, shift = fixed_multipliers(M)
    assert np.all((m0 >= 2 ** 30) & (m0 < 2 ** 31))
    assert np.allclose(m0 * 2.0 ** -(31 + shift), M, rtol=2 ** -30, atol=0)
    got = _requantize(v, m0, shift)
    real = v * (m0 * 2.0 ** -(31 + shift))  # the dyadic M itself: only the rounding differs
    assert np.all(np.abs(got - real) <= 0.5 + 0.5 * 2.0 ** -shift + 1e-9)


@pytest.mark.parametrize("ratio", [0.0, 1e-9, 0.013, 0.37, 1.0, 1.5, 7.9, 300.0, RATIO_LIMIT * 0.999])
def test_the_residual_term_is_within_half_a_unit_and_its_multipliers_step(ratio):
    """The residual's term d * r_mul / 2^r_shift, rounded, against the real d * ratio *
    2^RES_FRACTION for every byte difference d: within 0.5 + 255 / 2^(r_shift + 1) (0.51 at a
    ratio of 1), a 32-bit sum, and the multiplier as fine as 32 bits allow."""
    r_mul, r_shift = residual_multiplier(ratio, "res")
    assert 0 <= r_mul < 1 << R.RES_MUL_BITS and 0 <= r_shift <= 30
    assert r_shift == 30 or 2 * r_mul >= 1 << R.RES_MUL_BITS  # a finer multiplier would not fit
    d = np.arange(-255, 256)
    term = np.array([R.residual_term(int(v), r_mul, r_shift) for v in d])
    assert np.abs(term - d * ratio * 2.0 ** R.RES_FRACTION).max() <= 0.5 + 127.5 / 2 ** r_shift + 1e-6
    if ratio <= 1:
        assert np.abs(term - d * ratio * 2.0 ** R.RES_FRACTION).max() <= 0.51
    assert (255 * r_mul + (1 << r_shift) // 2 < 1 << 31) and (np.abs(term) < 1 << 28).all()


@pytest.mark.parametrize("ratio", [RATIO_LIMIT, 1e9, float("nan"), float("inf"), -0.5])
def test_a_residual_scale_ratio_past_the_limit_is_a_user_error(ratio):
    with pytest.raises(UserError, match="res7's residual scale"):
        residual_multiplier(ratio, "res7")


@pytest.mark.parametrize("x,e,expected", [(3, 1, 2), (-3, 1, -2), (1, 1, 1), (-1, 1, -1), (5, 2, 1),
                                          (-5, 2, -1), (6, 2, 2), (-6, 2, -2), (7, 0, 7)])
def test_the_rounding_shift_takes_ties_away_from_zero(x, e, expected):
    assert R.divide_by_pow2(np.int64(x), e) == expected


@pytest.mark.parametrize("a,expected", [(1, 1), (-1, 0), (3, 2), (-3, -1)])
def test_the_high_multiply_takes_ties_up(a, expected):
    """a * 2^30 / 2^31 = a / 2: ties go toward +inf."""
    assert R.high_mul(np.int64(a), np.int64(2 ** 30)) == expected


def test_the_high_multiply_saturates_its_one_overflow():
    assert R.high_mul(np.int64(-2 ** 31), np.int64(-2 ** 31)) == 2 ** 31 - 1


def test_requantisation_saturates_huge_sums_and_left_shifts():
    m0, shift = fixed_multipliers([0.5, 4.0])
    got = _requantize([2 ** 40, -2 ** 40], m0[:1].repeat(2), shift[:1].repeat(2))
    assert list(got) == [2 ** 30, -2 ** 30]  # saturated to int32 first, then halved
    got = _requantize([2 ** 30, -2 ** 30], m0[1:].repeat(2), shift[1:].repeat(2))
    assert list(got) == [2 ** 30, -2 ** 30]  # the left shift saturates at int32 before the multiply



@numba.njit(cache=True)
def _requantize_lanes(v, m0, shift, out):
    for i in range(v.size):
        left, right, rnd, neg = R.lane_shifts(shift[i])
        out[i] = R.requantize_lanes(v[i], m0[i], left, right, rnd, neg)


def test_the_branch_free_requantisation_of_the_tails_equals_the_papers():
    """The tails' floor form of both roundings gives requantize's bits: ties of either rounding,
    either sign, shifts 0 (no rounding shift) to 40, left shifts that saturate, sums past int32."""
    rng = np.random.default_rng(7)
    M = np.concatenate([10.0 ** rng.uniform(-12, 0, 600), rng.uniform(1, 3000, 200), [0.5, 0.25, 1.0, 2.0 ** -20]])
    m0, shift = fixed_multipliers(M)
    v = rng.integers(-2 ** 31, 2 ** 31, M.size)
    v[:300] = rng.integers(-600, 600, 300)  # ties of the rounding shift show with small sums
    v[-4:] = [2 ** 40, -2 ** 40, -(2 ** 20), 3 * 2 ** 19]
    v[::97] = -v[::97] - 1
    want, got = _requantize(v, m0, shift), np.zeros(v.size, np.int64)
    _requantize_lanes(v.astype(np.int64), m0, shift, got)
    assert set(shift.tolist()) >= {0} and shift.min() < 0 and shift.max() > 20
    assert np.array_equal(got, want)

def _gemm(W, cols_kp, vnni):
    """acc = W (O, K) int8 times cols (K, P) uint8 through gemm_tile's packing."""
    o, k = W.shape
    p = cols_kp.shape[1]
    k4, o4, pitch = -(-k // 4), -(-o // 4) * 4, -(-p // 16) * 16
    w = np.zeros((o4, 4 * k4), np.int8)
    w[:o, :k] = W
    packed = np.zeros((k4 * 4, pitch), np.uint8)
    packed[:k, :p] = cols_kp
    groups = np.zeros((k4, pitch * 4 + SKEW), np.uint8)  # each group's bytes, then the skew
    groups[:, :pitch * 4] = packed.reshape(k4, 4, pitch).transpose(0, 2, 1).reshape(k4, -1)
    cols = groups.reshape(-1)
    acc = np.zeros(o4 * pitch, np.int32)
    K.gemm_tile(w.view(np.int32).reshape(-1), k4, cols, pitch, np.zeros(0, np.int64), acc, vnni)
    return acc.reshape(o4, pitch)[:o, :p]


def test_the_portable_dot_product_is_the_integer_product():
    rng = np.random.default_rng(2)
    W = rng.integers(-127, 128, (7, 45)).astype(np.int8)
    X = rng.integers(0, 256, (45, 37)).astype(np.uint8)
    assert np.array_equal(_gemm(W, X, False), W.astype(np.int64) @ X.astype(np.int64))


@needs_vnni
def test_vnni_and_portable_dot_products_give_the_same_bits():
    rng = np.random.default_rng(3)
    for o, k, p in ((4, 4, 16), (9, 147, 50), (64, 576, 64)):
        W = rng.integers(-127, 128, (o, k)).astype(np.int8)
        X = rng.integers(0, 256, (k, p)).astype(np.uint8)
        fast, portable = _gemm(W, X, True), _gemm(W, X, False)
        assert fast.dtype == portable.dtype == np.int32
        assert np.array_equal(fast, portable)
        assert np.array_equal(fast, W.astype(np.int64) @ X.astype(np.int64))



@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=needs_vnni)])
def test_a_linear_gives_the_integer_product_over_several_row_blocks_and_a_partial_group(vnni):
    """linear_u8's float output with unit dequantization is sum + bias exactly: rows in three
    blocks of 16 (the packing's transpose blocks), 45 features (a last group of one byte)."""
    rng = np.random.default_rng(8)
    n, f, o = 37, 45, 6
    x = rng.integers(0, 256, (n, f)).astype(np.uint8)
    W = rng.integers(-127, 128, (o, f)).astype(np.int8)
    k4, o4, pitch = -(-f // 4), 8, 48
    packed = np.zeros((o4, 4 * k4), np.int8)
    packed[:o, :f] = W
    bias = np.arange(o4, dtype=np.int64) * 1000 - 3000
    out = np.zeros((n, o), np.float32)
    K.linear_u8(x, packed.view(np.int32).reshape(-1), k4, bias, np.zeros(o4, np.int64), np.zeros(o4, np.int64),
                np.zeros(9, np.int64), np.zeros((1, 1), np.uint8), out, np.ones(o),
                np.zeros(k4 * P.group_bytes(pitch), np.uint8), np.zeros(o4 * pitch, np.int32), vnni)
    assert np.array_equal(out, (x.astype(np.int64) @ W.T.astype(np.int64) + bias[:o]).astype(np.float32))

@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=needs_vnni)])
def test_the_int32_sum_is_exact_at_the_stated_bound(vnni):
    """The worst case of one output: MAX_INPUTS inputs of 255 times weights of -127 and 127 sum
    to K * 127 * 255 and its negation, exactly; with the largest bias it still fits int32."""
    k = K.MAX_INPUTS
    worst = k * 127 * 255
    assert worst + BIAS_LIMIT < 2 ** 31
    W = np.array([[127] * k, [-127] * k], np.int8)
    X = np.full((k, 1), 255, np.uint8)
    assert _gemm(W, X, vnni)[:, 0].tolist() == [worst, -worst]


def _conv(bias, relu, zy=10, zx=0):
    x = np.full((1, 1, 3, 3), 200, np.uint8)
    w = np.zeros((4, 1), np.int32)
    w[0, 0] = 0x01  # weight 1 on the only input, the other rows 0
    m0, shift = fixed_multipliers([0.5])
    meta = np.array([zx, zy, zy if relu else 0, K.RES_NONE, 0, 1, 0, 0, 0], np.int64)
    y = np.zeros((1, 1, 3, 3), np.uint8)
    threads = numba.config.NUMBA_NUM_THREADS
    cols, acc = np.zeros((threads, 2 * 4 * 16 + SKEW), np.uint8), np.zeros((threads, 4 * 16), np.int32)
    K.conv_u8(x, w.reshape(-1), 1, 1, 1, 1, 0, np.array([bias, 0, 0, 0], np.int64),
              m0.repeat(4), shift.repeat(4), meta, np.zeros((1, 1, 1, 1), np.uint8), y, cols, acc, 3, np.zeros(0, np.int64), False)
    return y


def test_conv_outputs_saturate_at_both_ends_and_relu_clamps_at_the_zero_point():
    assert np.all(_conv(0, False) == 110)  # 10 + 200 * 0.5
    assert np.all(_conv(10 ** 6, False) == 255)
    assert np.all(_conv(-10 ** 6, False) == 0)
    assert np.all(_conv(-10 ** 6, True) == 10)  # ReLU: real 0 is the zero point


def _tap_conv(x, W, rows, taps, vnni, stride=1, pad=1, zx=3, zy=5):
    """conv_u8 of x (N, C, H, W) by W (O, C, k, k), ReLU-free, through the lowered columns
    (taps False: weights in (channel, row, column) order; shifted runs at stride 1, im2col
    otherwise) or the channel-interleaved phases read in place (taps True: weights by (channel
    group, row, column, channel))."""
    n, c, h, w = x.shape
    o, k = W.shape[0], W.shape[2]
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    k4, o4 = c * k * k // 4, -(-o // 4) * 4
    order = W.reshape(o, c // 4, 4, k, k).transpose(0, 1, 3, 4, 2) if taps else W
    packed = np.zeros((o4, 4 * k4), np.int8)
    packed[:o] = order.reshape(o, -1)
    wq = P.tap_width(w, pad, stride)
    offs = P.tap_offsets(c, k, k, wq, P.tap_plane(rows, k, wq, stride), stride) if taps else np.zeros(0, np.int64)
    m0, shift = fixed_multipliers(np.linspace(0.002, 0.01, o4))
    bias = np.arange(o4, dtype=np.int64) * 37 - 100
    meta = np.array([zx, zy, 0, K.RES_NONE, 0, 1, 0, 0, 0], np.int64)
    threads = numba.config.NUMBA_NUM_THREADS
    pitch = -(-((rows - 1) * max(wq, w + 2 * pad) + wo) // 16) * 16
    lowered = k4 * P.group_bytes(pitch) + c * (rows + k - 1) * (w + 2 * pad) + 4 * pitch  # tile_bytes: the taps'
    cols = np.zeros((threads, max(lowered, P.tile_bytes(c, k, k, pad, w, rows, wo, stride))), np.uint8)
    acc = np.zeros((threads, o4 * pitch), np.int32)
    y = np.zeros((n, o, ho, wo), np.uint8)
    K.conv_u8(x, packed.view(np.int32).reshape(-1), k4, k, k, stride, pad, bias, m0, shift, meta,
              np.zeros((1, 1, 1, 1), np.uint8), y, cols, acc, rows, offs, vnni)
    return y


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=needs_vnni)])
@pytest.mark.parametrize("k, stride, pad", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (3, 3, 2), (1, 1, 0)])
def test_convs_reading_interleaved_channels_in_place_equal_the_lowered_columns(vnni, k, stride, pad):
    """The in-place tap reads give the bits of the lowered columns (themselves held to a NumPy
    simulation by tests/runtime/test_int8.py), for tiles that split the rows unevenly."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (2, 8, 7, 9)).astype(np.uint8)
    W = rng.integers(-127, 128, (6, 8, k, k)).astype(np.int8)
    for rows in (1, 2, 3, 7):
        ref = _tap_conv(x, W, rows, False, False, stride, pad)
        assert len(np.unique(ref)) > 20  # not saturated: the outputs carry the sums
        assert np.array_equal(_tap_conv(x, W, rows, True, vnni, stride, pad), ref)


def test_interleaved_rows_hold_four_channels_per_word_and_the_zero_point_around():
    x = np.arange(8 * 2 * 3, dtype=np.uint8).reshape(8, 2, 3)
    plane = P.tap_plane(2, 3, 5, 1)
    words = np.full(2 * plane, 7, np.uint32)
    P.interleave_rows(x, np.uint8(9), 1, 1, 3, 3, 0, 4, plane, words)
    b = words.view(np.uint8).reshape(2, plane, 4)
    grid = b[:, :4 * 5].reshape(2, 4, 5, 4)  # (group, padded row, padded column, channel)
    assert np.array_equal(grid[:, 1:3, 1:4].transpose(0, 3, 1, 2).reshape(8, 2, 3), x)
    assert (grid[:, 0] == 9).all() and (grid[:, 3] == 9).all()
    assert (grid[:, :, 0] == 9).all() and (grid[:, :, 4] == 9).all()


def test_quantizing_rounds_and_saturates():
    x = np.array([-1e9, -0.26, 0.25, 0.75, 1e9, 3.0], np.float32)
    y = np.zeros(6, np.uint8)
    K.quantize_u8(x, 2.0, 1, y)  # scale 0.5, zero point 1
    assert y.tolist() == [0, 0, 1, 3, 255, 7]


def test_quantizing_images_gives_the_bits_of_normalising_then_quantizing():
    from npdc.runtime.infer import normalise_images

    rng = np.random.default_rng(4)
    mean, std = np.array([0.49, 0.48, 0.45], np.float32), np.array([0.247, 0.243, 0.261], np.float32)
    x = (rng.random((5, 3, 4, 7)) * 1.2 - 0.1).astype(np.float32)
    x[0, 0, 0, :3] = [np.float32(0.49 + 0.247 * 0.5 * 0.0173), 0.49, 1e9]  # near a tie, the zero point, saturating
    ref = np.empty_like(x)
    normalise_images(x, mean, std, ref)
    for inv_scale, zp in ((1 / 0.0173, 120), (1 / 0.0311, 255), (40.0, 128)):
        want, got = np.empty(x.shape, np.uint8), np.empty(x.shape, np.uint8)
        K.quantize_u8(ref, inv_scale, zp, want)
        K.quantize_images(x, mean, std, inv_scale, zp, got)
        assert np.array_equal(got, want) and len(np.unique(got)) > 20
