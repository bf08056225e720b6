"""The runtime's fused direct 3x3 convolutions (npdc.kernels.fused_direct: stride 1 and stride 2)
against a float64 reference of conv + folded batch norm + residual + activation: every padding
they take, one image and a batch, output channels not a multiple of the register block, odd
sizes, an identity residual written over in place, and the same bits on one thread as on two."""

import numba
import numpy as np
import pytest

from npdc.kernels.conv_flat import blocked, interleaved
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD, Tail
from npdc.kernels.fused_direct import conv_flat_fused, conv_polyphase_fused, flat_scratch, phase_scratch
from npdc.kernels.im2col import out_size
from tests.conftest import rel_err


def _reference(x, W, stride, pad, scale, shift, slopes, res, res_mode):
    """float64 conv then the tail, written out from the definitions."""
    n, c, h, w = x.shape
    o = W.shape[0]
    ho, wo = out_size(h, 3, stride, pad), out_size(w, 3, stride, pad)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + w] = x
    z = np.zeros((n, o, ho, wo))
    for i in range(3):
        for j in range(3):
            window = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            z += np.einsum("nchw,oc->nohw", window, W[:, :, i, j].astype(np.float64))
    z = z * scale[None, :, None, None] + shift[None, :, None, None]
    if res_mode == RES_IDENTITY:
        z += res
    elif res_mode == RES_ZEROPAD:  # channels o - 2 of every second row and column
        z[:, 2:2 + res.shape[1]] += res[:, :, ::2, ::2][:, :o - 2]
    return np.where(z < 0, z * slopes[None, :, None, None], z)


def _run(x, W, stride, pad, scale, shift, slopes, res, res_mode, y, threads):
    n, c, h, w = x.shape
    rows = numba.config.NUMBA_NUM_THREADS
    W9 = (W * scale[:, None, None, None]).reshape(W.shape[0], c, 9).astype(np.float32)
    if stride == 1:
        plane, acc = flat_scratch(c, h, w, pad)
        kernel, W9 = conv_flat_fused, blocked(W9)
    else:
        plane, acc = phase_scratch(c, W.shape[0], *y.shape[2:])
        kernel, W9 = conv_polyphase_fused, interleaved(W9, 8)
    tail = Tail(np.ones_like(scale), shift, True, slopes, res, res_mode, 2, 2)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        kernel(x, W9, pad, tail, y, np.zeros(plane * rows, np.float32),
                        np.zeros((rows, acc), np.float32))
    finally:
        numba.set_num_threads(before)
    return y


@pytest.mark.parametrize("n,c,o,h,w,stride,pad,res_mode", [
    (1, 3, 13, 9, 11, 1, 1, RES_NONE), (1, 16, 16, 8, 8, 1, 1, RES_IDENTITY),
    (3, 5, 10, 7, 6, 1, 2, RES_ZEROPAD), (2, 8, 9, 30, 40, 1, 0, RES_IDENTITY),
    (1, 4, 20, 33, 5, 1, 1, RES_ZEROPAD), (1, 16, 32, 16, 16, 2, 1, RES_NONE),
    (1, 3, 21, 9, 70, 2, 1, RES_ZEROPAD), (3, 6, 8, 11, 8, 2, 0, RES_IDENTITY),
    (2, 5, 12, 7, 7, 2, 1, RES_NONE)])
def test_the_fused_direct_convs_match_the_reference(n, c, o, h, w, stride, pad, res_mode):
    rng = np.random.default_rng(n * 100 + c)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    W = rng.normal(size=(o, c, 3, 3)).astype(np.float32)
    scale, shift = rng.uniform(0.5, 2, o).astype(np.float32), rng.normal(size=o).astype(np.float32)
    slopes = rng.uniform(0, 0.3, o).astype(np.float32)
    ho, wo = out_size(h, 3, stride, pad), out_size(w, 3, stride, pad)
    res = np.zeros((1, 1, 1, 1), np.float32)
    if res_mode == RES_IDENTITY:
        res = rng.normal(size=(n, o, ho, wo)).astype(np.float32)
    elif res_mode == RES_ZEROPAD:
        res = rng.normal(size=(n, o - 4, 2 * ho, 2 * wo)).astype(np.float32)
    want = _reference(x, W, stride, pad, scale, shift, slopes, res, res_mode)
    y = np.full((n, o, ho, wo), np.nan, np.float32)
    if res_mode == RES_IDENTITY:  # written over the residual, as the plan does in place
        one = _run(x, W, stride, pad, scale, shift, slopes, res.copy(), res_mode, res.copy(), 1)
        y = res.copy()
        two = _run(x, W, stride, pad, scale, shift, slopes, y, res_mode, y, 2)
    else:
        one = _run(x, W, stride, pad, scale, shift, slopes, res, res_mode, y.copy(), 1)
        two = _run(x, W, stride, pad, scale, shift, slopes, res, res_mode, y, 2)
    assert rel_err(two, want) < 1e-5
    assert np.array_equal(one, two)  # the thread count does not change a bit
