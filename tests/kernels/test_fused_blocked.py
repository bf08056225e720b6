"""The runtime's channels-in-lanes direct convolution (npdc.kernels.fused_blocked) against a
float64 reference of conv + folded batch norm + residual + activation: kernels 1x1, 3x3 and 5x5,
strides 1 and 2, every padding, one image and a batch, output channels not a multiple of the
register block, positions not a multiple of its width, an identity residual written over in
place, and the same bits on one thread as on two."""

import numba
import numpy as np
import pytest

from npdc.kernels.conv_flat import interleaved
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD, Tail
from npdc.kernels.fused_blocked import blocked_scratch, conv_blocked_fused, lanes_for
from npdc.kernels.im2col import out_size
from tests.conftest import rel_err


def _reference(x, W, stride, pad, scale, shift, slopes, res, res_mode):
    """float64 conv then the tail, written out from the definitions."""
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    ho, wo = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + w] = x
    z = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
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
    o, _, kh, kw = W.shape
    rows = numba.config.NUMBA_NUM_THREADS
    Wb = interleaved((W * scale[:, None, None, None]).reshape(o, c, kh * kw).astype(np.float32), lanes_for(o))
    plane, acc = blocked_scratch(c, h, w, pad)
    tail = Tail(np.ones_like(scale), shift, True, slopes, res, res_mode, 2, 2)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        conv_blocked_fused(x, Wb, kh, kw, stride, pad, tail, y, np.full(plane * rows, np.nan, np.float32),
                           np.zeros((rows, acc), np.float32))
    finally:
        numba.set_num_threads(before)
    return y


@pytest.mark.parametrize("n,c,o,h,w,k,stride,pad,res_mode", [
    (1, 3, 13, 9, 11, 3, 1, 1, RES_NONE), (1, 16, 32, 8, 8, 3, 1, 1, RES_IDENTITY),
    (3, 5, 40, 7, 6, 3, 1, 2, RES_ZEROPAD), (2, 8, 9, 10, 12, 3, 1, 0, RES_IDENTITY),
    (1, 64, 64, 4, 4, 3, 1, 1, RES_IDENTITY), (1, 16, 32, 16, 16, 3, 2, 1, RES_NONE),
    (1, 3, 21, 9, 13, 3, 2, 1, RES_ZEROPAD), (3, 6, 8, 11, 8, 3, 2, 0, RES_IDENTITY),
    (2, 12, 70, 7, 7, 1, 2, 0, RES_NONE), (1, 7, 33, 5, 5, 1, 1, 0, RES_IDENTITY),
    (2, 4, 17, 9, 8, 5, 1, 2, RES_NONE), (1, 5, 6, 1, 1, 3, 1, 1, RES_NONE),
    (1, 16, 16, 12, 10, 3, 1, 1, RES_IDENTITY), (3, 3, 16, 9, 9, 3, 2, 1, RES_ZEROPAD)])
def test_the_blocked_conv_matches_the_reference(n, c, o, h, w, k, stride, pad, res_mode):
    rng = np.random.default_rng(n * 100 + c + k)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    W = rng.normal(size=(o, c, k, k)).astype(np.float32)
    scale, shift = rng.uniform(0.5, 2, o).astype(np.float32), rng.normal(size=o).astype(np.float32)
    slopes = rng.uniform(0, 0.3, o).astype(np.float32)
    ho, wo = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
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
