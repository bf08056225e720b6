"""The runtime's channels-in-lanes direct convolution (npdc.kernels.fused_blocked) against a
float64 reference of conv + folded batch norm + residual + activation: kernels 1x1, 3x3 and 5x5,
strides 1 and 2, every padding, one image and a batch, output channels not a multiple of the
register block, positions not a multiple of its width, a batch's images longer than one strip of
positions and images small enough that a thread takes several at once (the last task fewer),
one image's blocks in strips of STRIP that end where a thread's share or a block of channels does,
an identity residual written over in place, a batch's narrow layers at stride 1 (whose register
blocks run along the padded plane) over strips that end mid-row, and the same bits on one thread
as on two."""

import numba
import numpy as np
import pytest

from npdc.kernels.conv_flat import interleaved
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD, Tail
from npdc.kernels.fused_blocked import blocked_scratch, conv_blocked_fused, lanes_for
from tests.kernels.fused_check import check_fused


def _run(x, W, stride, pad, scale, shift, slopes, res, res_mode, y, threads):
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    rows = numba.config.NUMBA_NUM_THREADS
    Wb = interleaved((W * scale[:, None, None, None]).reshape(o, c, kh * kw).astype(np.float32), lanes_for(o))
    plane, acc = blocked_scratch(c, h, w, pad, o, y.shape[2] * y.shape[3], n)
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
    (1, 16, 16, 12, 10, 3, 1, 1, RES_IDENTITY), (3, 3, 16, 9, 9, 3, 2, 1, RES_ZEROPAD),
    (2, 3, 40, 12, 10, 3, 1, 1, RES_IDENTITY), (2, 2, 8, 15, 14, 3, 1, 1, RES_ZEROPAD),
    (16, 4, 36, 4, 4, 3, 1, 1, RES_IDENTITY), (12, 3, 12, 5, 5, 1, 1, 0, RES_NONE),
    (3, 5, 16, 20, 13, 3, 1, 1, RES_IDENTITY), (2, 3, 10, 9, 8, 5, 1, 2, RES_NONE),
    (2, 1, 16, 6, 5, 1, 1, 1, RES_NONE), (1, 3, 70, 35, 35, 3, 1, 1, RES_IDENTITY),
    (1, 5, 16, 30, 29, 3, 1, 1, RES_NONE)])
def test_the_blocked_conv_matches_the_reference(n, c, o, h, w, k, stride, pad, res_mode):
    check_fused(_run, n, c, o, h, w, k, stride, pad, res_mode)
