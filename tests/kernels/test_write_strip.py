"""The `blocked` kernel's strip writer (npdc.kernels.blocked_io.write_strip), which transposes
8 x 8 tiles in registers and writes them through the tail with masked stores, against the way it
replaced (by_channel, then finish_sums a channel's run at a time): the same bits in every case,
and nothing written outside the strip's outputs. Cases: strips that start mid-image and run over
image ends (tiles split in two), a last tile short of eight positions, channels short of a tile
(the rest through finish_sums), a block past the layer's last channel, planes of fewer than eight
positions, an identity residual read from another array and written over in place, ReLU and a
leaky slope, no activation, and RES_ZEROPAD (the old way)."""

import numba
import numpy as np
import pytest

from npdc.kernels.blocked_io import by_channel, finish_sums, write_strip
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD, Tail


@numba.njit(cache=True)
def _old(acc, npix, lanes, span, pix0, ob, tail, y, n0):
    by_channel(acc, npix, lanes, span)
    finish_sums(acc[span * lanes:], 1, span, lanes, pix0, npix, ob, tail, y, n0)


@pytest.mark.parametrize("n0,o,hw,lanes,pix0,npix,ob,res_mode,act,in_place", [
    (0, 32, (7, 7), 32, 3, 128, 0, RES_NONE, True, False),  # tiles split at every image's end
    (1, 64, (6, 5), 32, 10, 61, 32, RES_IDENTITY, True, False),  # a short last tile
    (2, 40, (4, 4), 32, 0, 45, 32, RES_IDENTITY, True, True),  # 8 of 32 channels, in place
    (0, 13, (5, 4), 16, 7, 30, 0, RES_NONE, False, False),  # 13 channels: a tile and 5 the old way
    (1, 44, (3, 3), 16, 2, 15, 32, RES_IDENTITY, True, False),  # 9 positions: a tile spans 2 ends
    (0, 16, (2, 3), 16, 1, 27, 0, RES_NONE, True, False),  # 6 positions: the old way
    (1, 24, (5, 5), 16, 4, 40, 0, RES_ZEROPAD, True, False),  # RES_ZEROPAD: the old way
    (0, 32, (12, 12), 32, 16, 128, 0, RES_IDENTITY, False, True),  # one image, no activation
])
def test_the_strip_writer_writes_the_bits_of_by_channel_and_finish_sums(n0, o, hw, lanes, pix0, npix,
                                                                       ob, res_mode, act, in_place):
    n = n0 + -(-(pix0 + npix) // (hw[0] * hw[1])) + 1  # and an image past the strip's
    rng = np.random.default_rng(o + pix0)
    span = 16 * 8
    acc = np.zeros(2 * span * max(lanes, 32), np.float32)
    acc[:-(-npix // 8) * 8 * lanes] = rng.standard_normal(-(-npix // 8) * 8 * lanes)
    scale, shift = rng.standard_normal(o).astype(np.float32), rng.standard_normal(o).astype(np.float32)
    slopes = np.full(o, 0.25, np.float32) if act else np.zeros(o, np.float32)
    shape = (n, o) + hw
    y0 = np.full(shape, np.nan, np.float32)
    res = rng.standard_normal(shape).astype(np.float32)
    if res_mode == RES_ZEROPAD:
        res = rng.standard_normal((n, o // 2) + hw).astype(np.float32)
    outs = []
    for write in (_old, write_strip):
        y = res.copy() if in_place else y0.copy()
        tail = Tail(scale, shift, act, slopes, y if in_place else res, res_mode, 3, 1)
        write(acc.copy(), npix, lanes, span, pix0, ob, tail, y, n0)
        outs.append(y)
    untouched = res[-1] if in_place else np.full(shape[1:], np.nan, np.float32)
    np.testing.assert_array_equal(outs[0][-1], untouched)  # the strip leaves other outputs as they were
    np.testing.assert_array_equal(outs[1], outs[0])
