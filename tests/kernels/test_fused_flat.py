"""The runtime's fused direct 3x3 convolution (npdc.kernels.fused_flat) against a float64
reference of conv + folded batch norm + residual + activation: every padding it takes, one image
and a batch, output channels not a multiple of the register block, an identity residual written
over in place, and the same bits on one thread as on two."""

import numba
import numpy as np
import pytest

from npdc.kernels.conv_flat import blocked
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD, Tail
from npdc.kernels.fused_flat import conv_flat_fused, flat_scratch
from tests.conftest import rel_err


def _reference(x, W, pad, scale, shift, slopes, res, res_mode):
    """float64 conv (stride 1) then the tail, written out from the definitions."""
    n, c, h, w = x.shape
    o = W.shape[0]
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + w] = x
    z = np.zeros((n, o, ho, wo))
    for i in range(3):
        for j in range(3):
            z += np.einsum("nchw,oc->nohw", xp[:, :, i:i + ho, j:j + wo], W[:, :, i, j].astype(np.float64))
    z = z * scale[None, :, None, None] + shift[None, :, None, None]
    if res_mode == RES_IDENTITY:
        z += res
    elif res_mode == RES_ZEROPAD:  # channels o - 2 of every second row and column
        z[:, 2:2 + res.shape[1]] += res[:, :, ::2, ::2][:, :o - 2]
    return np.where(z < 0, z * slopes[None, :, None, None], z)


def _run(x, W, pad, scale, shift, slopes, res, res_mode, y, threads):
    n, c, h, w = x.shape
    plane, acc = flat_scratch(c, h, w, pad)
    rows = numba.config.NUMBA_NUM_THREADS
    W9 = blocked((W * scale[:, None, None, None]).reshape(W.shape[0], c, 9).astype(np.float32))
    tail = Tail(np.ones_like(scale), shift, True, slopes, res, res_mode, 2, 2)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        conv_flat_fused(x, W9, pad, tail, y, np.zeros(plane * rows, np.float32),
                        np.zeros((rows, acc), np.float32))
    finally:
        numba.set_num_threads(before)
    return y


@pytest.mark.parametrize("n,c,o,h,w,pad,res_mode", [
    (1, 3, 13, 9, 11, 1, RES_NONE), (1, 16, 16, 8, 8, 1, RES_IDENTITY), (3, 5, 10, 7, 6, 2, RES_ZEROPAD),
    (2, 8, 9, 30, 40, 0, RES_IDENTITY), (1, 4, 20, 33, 5, 1, RES_ZEROPAD)])
def test_the_fused_flat_conv_matches_the_reference(n, c, o, h, w, pad, res_mode):
    rng = np.random.default_rng(n * 100 + c)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    W = rng.normal(size=(o, c, 3, 3)).astype(np.float32)
    scale, shift = rng.uniform(0.5, 2, o).astype(np.float32), rng.normal(size=o).astype(np.float32)
    slopes = rng.uniform(0, 0.3, o).astype(np.float32)
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    res = np.zeros((1, 1, 1, 1), np.float32)
    if res_mode == RES_IDENTITY:
        res = rng.normal(size=(n, o, ho, wo)).astype(np.float32)
    elif res_mode == RES_ZEROPAD:
        res = rng.normal(size=(n, o - 4, 2 * ho, 2 * wo)).astype(np.float32)
    want = _reference(x, W, pad, scale, shift, slopes, res, res_mode)
    y = np.full((n, o, ho, wo), np.nan, np.float32)
    if res_mode == RES_IDENTITY:  # written over the residual, as the plan does in place
        one = _run(x, W, pad, scale, shift, slopes, res.copy(), res_mode, res.copy(), 1)
        y = res.copy()
        two = _run(x, W, pad, scale, shift, slopes, y, res_mode, y, 2)
    else:
        one = _run(x, W, pad, scale, shift, slopes, res, res_mode, y.copy(), 1)
        two = _run(x, W, pad, scale, shift, slopes, res, res_mode, y, 2)
    assert rel_err(two, want) < 1e-5
    assert np.array_equal(one, two)  # the thread count does not change a bit
