"""Convs over activations kept as words (npdc.kernels.int8_words) give the bits of conv_u8 over
planar bytes (itself held to a NumPy simulation by tests/runtime/test_int8.py), whatever each of
their input, residual and output is kept as, with strided phases, zero-pad residuals, tiles that
split the rows unevenly and the scalar path where the lanes' preconditions fail; the padding
they write holds the zero point."""

import numba
import numpy as np
import pytest

from npdc.kernels import int8 as K
from npdc.kernels import int8_pack as P
from npdc.kernels import int8_words as W
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD
from npdc.kernels.int8_sparse import sparse_entries
from npdc.kernels.vnni import cpu_has_vnni
from npdc.runtime.int8_params import fixed_multipliers, residual_multiplier

needs_vnni = pytest.mark.skipif(not cpu_has_vnni(), reason="the CPU has no AVX-512 VNNI")
THREADS = numba.config.NUMBA_NUM_THREADS
JUNK = 0xA5C3E1F7  # the slack after each plane: read only for positions that are dropped


def _words(x, pad, zx):
    """x (N, C, H, W) uint8 kept as words with pad, the padding the zero point."""
    n, c, h, w = x.shape
    wp, plane = W.group_plane(h, w, pad)
    out = np.full((n, c // 4, plane), JUNK, np.uint32)
    grid = np.full((n, c // 4, h + 2 * pad, wp, 4), zx, np.uint8)
    grid[:, :, pad:pad + h, pad:pad + w] = x.reshape(n, c // 4, 4, h, w).transpose(0, 1, 3, 4, 2)
    out[:, :, :(h + 2 * pad) * wp] = grid.reshape(n, c // 4, -1, 4).view(np.uint32)[..., 0]
    return out.reshape(n, -1)


def _geo(x, y, res, keep):
    """Geometry of a conv from x to y with residual res, keeping as words those named in keep
    ({"x": pad, ...})."""
    g = np.zeros(W.N_GEO, np.int64)
    g[[W.G_C, W.G_H, W.G_W, W.G_O, W.G_HO, W.G_WO]] = *x.shape[1:], *y.shape[1:]
    g[W.G_CR] = res.shape[1]
    for key, v, at in (("x", x, W.G_PI), ("r", res, W.G_PR), ("y", y, W.G_PO)):
        if key in keep:
            g[at] = keep[key]
            g[at + 1], g[at + 2] = W.group_plane(v.shape[2], v.shape[3], keep[key])
    return g


def _run(x, Wt, stride, pad, res, mode, keep, rows, vnni, shift_add=0, zx=3, zy=5, zr=7, sparse=False):
    """(planar output of conv_u8, planar output of conv_words) of the same conv; sparse: conv_words'
    GEMM over the non-zero weight words only."""
    n, c, h, w = x.shape
    o, k = Wt.shape[0], Wt.shape[2]
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    k4, o4 = c * k * k // 4, -(-o // 4) * 4
    packed = np.zeros((o4, 4 * k4), np.int8)
    packed[:o] = Wt.reshape(o, c // 4, 4, k, k).transpose(0, 1, 3, 4, 2).reshape(o, -1)
    wts = packed.view(np.int32).reshape(-1)
    m0, shift = fixed_multipliers(np.linspace(0.002, 0.01, o4))
    shift = shift + shift_add
    bias = np.arange(o4, dtype=np.int64) * 37 - 100
    r_mul, r_shift = residual_multiplier(0.7, "test")
    front = (o - res.shape[1]) // 2 if mode == RES_ZEROPAD else 0
    meta = np.array([zx, zy, 0, mode, front, 2 if mode == RES_ZEROPAD else 1, zr, r_mul, r_shift], np.int64)
    y = np.zeros((n, o, ho, wo), np.uint8)
    geo0 = _geo(x, y, res, {})
    row = W.conv_row(geo0, stride, pad, True)
    offs = P.tap_offsets(c, k, k, row, P.tap_plane(rows, k, row, stride), stride)
    cols = np.zeros((THREADS, 1 << 16), np.uint8)
    acc = np.zeros((THREADS, o4 * 256), np.int32)
    no_res = np.zeros((1, 1, 1, 1), np.uint8)
    K.conv_u8(x, wts, k4, k, k, stride, pad, bias, m0, shift, meta, res if mode != RES_NONE else no_res, y, cols,
              acc, rows, offs, vnni)
    geo = _geo(x, y, res, keep)
    row = W.conv_row(geo, stride, pad, True)
    if "x" in keep and stride == 1:
        offs = P.tap_offsets(c, k, k, int(geo[W.G_WPI]), int(geo[W.G_PLI]), 1)
    else:
        offs = P.tap_offsets(c, k, k, row, P.tap_plane(rows, k, row, stride), stride)
    xw = _words(x, keep["x"], zx) if "x" in keep else np.zeros((1, 1), np.uint32)
    rw = _words(res, keep["r"], zr) if "r" in keep else np.zeros((1, 1), np.uint32)
    yw = np.full((n, (o // 4) * geo[W.G_PLO]), JUNK, np.uint32) if "y" in keep else np.zeros((1, 1), np.uint32)
    y2 = np.zeros_like(y) if "y" not in keep else no_res
    ent = sparse_entries(wts, k4, offs) if sparse else (np.zeros(1, np.int64), np.zeros(0, np.int64),
                                                         np.zeros(0, np.int32))
    W.conv_words(x if "x" not in keep else no_res, xw, wts, k4, k, k, stride, pad, bias, m0, shift, meta,
                 res if "r" not in keep and mode != RES_NONE else no_res, rw, y2, yw, geo, cols, acc, rows, offs, vnni,
                 *ent)
    if "y" not in keep:
        return y, y2
    grid = yw.reshape(n, o // 4, -1)[:, :, :(ho + 2 * keep["y"]) * int(geo[W.G_WPO])].view(np.uint8)
    grid = grid.reshape(n, o // 4, ho + 2 * keep["y"], int(geo[W.G_WPO]), 4)
    inner = np.zeros(grid.shape[:4], bool)
    inner[:, :, keep["y"]:keep["y"] + ho, keep["y"]:keep["y"] + wo] = True
    assert (grid[~inner] == zy).all()  # the padding: the output's zero point
    return y, W.to_planar(yw, o, ho, wo, keep["y"])


CASES = [  # (kernel, stride, pad, residual mode, kept as words)
    (3, 1, 1, RES_IDENTITY, {"x": 1, "r": 1, "y": 1}),
    (3, 1, 1, RES_NONE, {"x": 2, "y": 2}),
    (1, 1, 0, RES_IDENTITY, {"x": 1, "r": 1}),
    (3, 2, 1, RES_ZEROPAD, {"x": 1, "r": 1, "y": 1}),
    (1, 2, 0, RES_NONE, {"x": 1, "y": 1}),
    (3, 1, 1, RES_ZEROPAD, {"y": 1}),
    (3, 1, 1, RES_IDENTITY, {"x": 1, "y": 1}),
]


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=needs_vnni)])
@pytest.mark.parametrize("k, stride, pad, mode, keep", CASES)
def test_convs_over_words_give_the_bits_of_the_planar_conv(vnni, k, stride, pad, mode, keep):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (2, 8, 7, 9)).astype(np.uint8)
    o = 8
    ho, wo = (7 + 2 * pad - k) // stride + 1, (9 + 2 * pad - k) // stride + 1
    Wt = rng.integers(-127, 128, (o, 8, k, k)).astype(np.int8)
    if mode == RES_ZEROPAD:  # half the channels at every other row and column of the output's
        res = rng.integers(0, 256, (2, 4, 2 * ho, 2 * wo)).astype(np.uint8)
    else:
        res = rng.integers(0, 256, (2, o, ho, wo)).astype(np.uint8)
    for rows in (1, 3, ho):
        ref, got = _run(x, Wt, stride, pad, res, mode, keep, rows, vnni)
        assert len(np.unique(ref)) > 20  # not saturated: the outputs carry the sums
        assert np.array_equal(got, ref), rows


@pytest.mark.parametrize("mode", [RES_NONE, RES_IDENTITY])
def test_the_scalar_path_gives_the_bits_where_the_lanes_do_not_apply(mode):
    """A left shift (multipliers >= 1) saturating the sums: the lanes' precondition fails."""
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (1, 8, 5, 6)).astype(np.uint8)
    Wt = rng.integers(-127, 128, (4, 8, 3, 3)).astype(np.int8)
    res = rng.integers(0, 256, (1, 4, 5, 6)).astype(np.uint8)
    ref, got = _run(x, Wt, 1, 1, res, mode, {"x": 1, "r": 1, "y": 1}, 2, False, shift_add=-12)
    assert (ref == 255).any() and (ref == 0).any()
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=needs_vnni)])
@pytest.mark.parametrize("k, stride, pad, mode, keep", [CASES[0], CASES[2], CASES[3]])
def test_convs_over_the_non_zero_words_give_the_bits_of_the_planar_conv(vnni, k, stride, pad, mode, keep):
    """Weights pruned to a fifth, one output channel all zeros: conv_words' sparse GEMM."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (2, 8, 7, 9)).astype(np.uint8)
    ho, wo = (7 + 2 * pad - k) // stride + 1, (9 + 2 * pad - k) // stride + 1
    Wt = (rng.integers(-127, 128, (8, 8, k, k)) * (rng.random((8, 8, k, k)) < 0.2)).astype(np.int8)
    Wt[3] = 0
    res = (rng.integers(0, 256, (2, 4, 2 * ho, 2 * wo)) if mode == RES_ZEROPAD
           else rng.integers(0, 256, (2, 8, ho, wo))).astype(np.uint8)
    for rows in (1, ho):
        ref, got = _run(x, Wt, stride, pad, res, mode, keep, rows, vnni, sparse=True)
        assert np.array_equal(got, ref), rows
