"""The int8 conv with output channels in the lanes (npdc.kernels.int8_blocked) gives the bits of
conv_words over the same words (itself held to the planar conv_u8 by test_int8_words.py): stride
1 and 2, 1x1 and 3x3, each residual mode, output kept as words or planar, planes of 4 x 4 and
odd shapes, tasks of several images and a batch they do not divide; the linear layer's twin
gives linear_u8's bits; the VNNI block equals its portable twin."""

import numba
import numpy as np
import pytest

from npdc.kernels import int8_pack as P
from npdc.kernels import int8_words as W
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD
from npdc.kernels.int8 import linear_u8
from npdc.kernels.int8_blocked import (OUT, POSITIONS, blocked_fits, blocked_weights, conv_blocked_words,
                                       lanes_portable, linear_blocked, linear_fits, word_offsets)
from npdc.kernels.vnni import dot_lanes
from npdc.runtime.int8_params import fixed_multipliers, residual_multiplier
from tests.kernels.test_int8_words import JUNK, THREADS, _geo, _words, needs_vnni

DENSE = (np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32))


def _both(x, Wt, stride, pad, res, mode, keep, vnni, zx=3, zy=5, zr=7):
    """(conv_words' output, conv_blocked_words' output) of the same conv, each planar; the
    padding of a words output is checked to hold the zero point."""
    n, c, h, w = x.shape
    o, k = Wt.shape[0], Wt.shape[2]
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    k4 = c * k * k // 4
    wts = Wt.reshape(o, c // 4, 4, k, k).transpose(0, 1, 3, 4, 2).reshape(o, -1).view(np.int32).reshape(-1)
    m0, shift = fixed_multipliers(np.linspace(0.0005, 0.002, o))
    bias = np.arange(o, dtype=np.int64) * 37 - 1000
    r_mul, r_shift = residual_multiplier(0.7, "test")
    front = (o - res.shape[1]) // 2 if mode == RES_ZEROPAD else 0
    meta = np.array([zx, zy, 0, mode, front, 2 if mode == RES_ZEROPAD else 1, zr, r_mul, r_shift], np.int64)
    y = np.zeros((n, o, ho, wo), np.uint8)
    geo = _geo(x, y, res, keep)
    assert blocked_fits(geo, o)
    xw = _words(x, keep["x"], zx)
    no_res, no_words = np.zeros((1, 1, 1, 1), np.uint8), np.zeros((1, 1), np.uint32)
    rw = _words(res, keep["r"], zr) if "r" in keep else no_words
    r_planar = res if "r" not in keep and mode != RES_NONE else no_res
    outs = []
    for blocked in (False, True):
        yw = np.full((n, (o // 4) * geo[W.G_PLO]), JUNK, np.uint32) if "y" in keep else no_words
        y2 = np.zeros_like(y) if "y" not in keep else no_res
        if blocked:
            conv_blocked_words(xw, blocked_weights(wts, k4), k4, k, k, stride, pad, bias, m0, shift, meta, r_planar,
                               rw, y2, yw, geo, THREADS, vnni)
        else:
            offs = (P.tap_offsets(c, k, k, int(geo[W.G_WPI]), int(geo[W.G_PLI]), 1) if stride == 1 else
                    P.tap_offsets(c, k, k, W.conv_row(geo, stride, pad, True),
                                  P.tap_plane(ho, k, W.conv_row(geo, stride, pad, True), stride), stride))
            W.conv_words(no_res, xw, wts, k4, k, k, stride, pad, bias, m0, shift, meta, r_planar, rw, y2, yw, geo,
                         np.zeros((THREADS, 1 << 17), np.uint8), np.zeros((THREADS, o * 512), np.int32), ho, offs,
                         vnni, *DENSE)
        if "y" not in keep:
            outs.append(y2)
            continue
        grid = yw.reshape(n, o // 4, -1)[:, :, :(ho + 2 * keep["y"]) * int(geo[W.G_WPO])].view(np.uint8)
        grid = grid.reshape(n, o // 4, ho + 2 * keep["y"], int(geo[W.G_WPO]), 4)
        inner = np.zeros(grid.shape[:4], bool)
        inner[:, :, keep["y"]:keep["y"] + ho, keep["y"]:keep["y"] + wo] = True
        assert (grid[~inner] == zy).all()  # the padding: the output's zero point
        outs.append(W.to_planar(yw, o, ho, wo, keep["y"]))
    return outs


CASES = [  # (kernel, stride, pad, residual mode, kept as words, input plane)
    (3, 1, 1, RES_IDENTITY, {"x": 1, "r": 1, "y": 1}, (4, 4)),
    (3, 1, 1, RES_NONE, {"x": 2, "y": 2}, (5, 7)),
    (1, 1, 0, RES_IDENTITY, {"x": 1, "r": 1}, (4, 4)),
    (3, 2, 1, RES_ZEROPAD, {"x": 1, "r": 1, "y": 1}, (7, 7)),
    (1, 2, 0, RES_NONE, {"x": 1, "y": 1}, (7, 7)),
    (3, 1, 1, RES_IDENTITY, {"x": 1}, (3, 5)),
]


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=needs_vnni)])
@pytest.mark.parametrize("k, stride, pad, mode, keep, plane", CASES)
def test_the_blocked_conv_gives_the_bits_of_conv_words(vnni, k, stride, pad, mode, keep, plane):
    rng = np.random.default_rng(11)
    n, c, o = 9, 8, 2 * OUT
    h, w = plane
    x = rng.integers(0, 256, (n, c, h, w)).astype(np.uint8)
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    Wt = rng.integers(-127, 128, (o, c, k, k)).astype(np.int8)
    if mode == RES_ZEROPAD:  # half the channels at every other row and column of the output's
        res = rng.integers(0, 256, (n, o // 2, 2 * ho, 2 * wo)).astype(np.uint8)
    else:
        res = rng.integers(0, 256, (n, o, ho, wo)).astype(np.uint8)
    ref, got = _both(x, Wt, stride, pad, res, mode, keep, vnni)
    assert len(np.unique(ref)) > 20  # not saturated: the outputs carry the sums
    assert np.array_equal(got, ref)


def test_blocked_weights_put_output_channels_in_the_lanes():
    w = np.arange(2 * OUT * 5, dtype=np.int32)  # O4 = 2 blocks, k4 = 5
    wl = blocked_weights(w, 5).reshape(2, 5, OUT)
    rows = w.reshape(2 * OUT, 5)
    assert all(wl[b, k, lane] == rows[b * OUT + lane, k] for b in range(2) for k in range(5) for lane in range(OUT))


def test_word_offsets_follow_the_packed_order():
    geo = np.zeros(W.N_GEO, np.int64)
    geo[[W.G_C, W.G_WPI, W.G_PLI]] = 8, 9, 100
    want = [g * 100 + i * 9 + j for g in range(2) for i in range(3) for j in range(3)]
    assert word_offsets(geo, 3, 3).tolist() == want


def test_only_whole_register_blocks_of_a_words_input_fit():
    geo = np.zeros(W.N_GEO, np.int64)
    geo[W.G_WPI] = 6
    assert blocked_fits(geo, 2 * OUT) and not blocked_fits(geo, OUT + 16)
    geo[W.G_WPI] = 0
    assert not blocked_fits(geo, OUT)


@needs_vnni
def test_the_vnni_block_equals_its_portable_twin():
    rng = np.random.default_rng(3)
    k4 = 37
    x = rng.integers(0, 2 ** 32, 3000, dtype=np.uint64).astype(np.uint32)
    wl = rng.integers(-2 ** 31, 2 ** 31, 2 * k4 * OUT, dtype=np.int64).astype(np.int32)
    pos = rng.integers(0, 1000, POSITIONS + 3).astype(np.int64)
    offs = rng.integers(0, 1900, k4).astype(np.int64)
    a, b = (np.full(POSITIONS * OUT + 40, 7, np.int32) for _ in range(2))
    numba.njit(lambda *args: dot_lanes(*args))(wl, k4 * OUT, x, pos, 3, offs, k4, a, 40)
    lanes_portable(wl, k4 * OUT, x, pos, 3, offs, k4, b, 40)
    assert np.array_equal(a, b) and (a[:40] == 7).all() and np.abs(a[40:]).max() > 2 ** 16


@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=needs_vnni)])
@pytest.mark.parametrize("logits", [False, True])
def test_the_blocked_linear_gives_the_bits_of_linear_u8(vnni, logits):
    """13 images (no whole number of blocks), 40 features, 128 outputs; uint8 or float logits."""
    rng = np.random.default_rng(4)
    n, f, o = 13, 40, 2 * OUT
    x = rng.integers(0, 256, (n, f)).astype(np.uint8)
    wts = rng.integers(-127, 128, (o, f)).astype(np.int8).view(np.int32).reshape(-1)
    m0, shift = fixed_multipliers(np.linspace(0.0005, 0.002, o))
    bias = np.arange(o, dtype=np.int64) * 53 - 3000
    meta = np.array([3, 5, 5, 0, 0, 1, 0, 0, 0], np.int64)
    deq = np.linspace(0.001, 0.01, o) if logits else np.zeros(0)
    outs = []
    for blocked in (False, True):
        y, y_float = np.zeros((n, o), np.uint8), np.zeros((n, o), np.float32)
        if blocked:
            linear_blocked(x, blocked_weights(wts, f // 4), f // 4, bias, m0, shift, meta, y, y_float, deq, THREADS,
                           vnni)
        else:
            linear_u8(x, wts, f // 4, bias, m0, shift, meta, y, y_float, deq, np.zeros(1 << 16, np.uint8),
                      np.zeros(o * 16, np.int32), vnni)
        outs.append(y_float if logits else y)
    assert len(np.unique(outs[0])) > 20
    assert np.array_equal(outs[0], outs[1])
    assert linear_fits(f, o) and not linear_fits(f + 2, o) and not linear_fits(f, o + 4)
