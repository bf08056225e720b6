"""The runtime's 1x1 convolution with positions in the lanes (npdc.kernels.fused_pointwise)
against the float64 reference of conv + folded batch norm + residual + activation: planes whose
positions fill whole register blocks, leave single vectors and leave fewer than a vector (7x7,
4x4, 1x1), planes longer than one tail call's run of positions, strides 1 and 2 (odd sizes),
output channels off the register block, one image split
by groups of output blocks and batches split by images, an identity residual written over in
place and the option-A residual, and the same bits on one thread as on two."""

import numba
import numpy as np
import pytest

from npdc.kernels.conv_flat import interleaved
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD, Tail
from npdc.kernels.fused_pointwise import OUT, conv_pointwise_fused, pointwise_floats
from tests.kernels.fused_check import check_fused


def _run(x, W, stride, pad, scale, shift, slopes, res, res_mode, y, threads):
    n, c = x.shape[:2]
    o = W.shape[0]
    Wb = interleaved((W * scale[:, None, None, None]).reshape(o, c, 1).astype(np.float32), OUT)
    tail = Tail(np.ones_like(scale), shift, True, slopes, res, res_mode, 2, 2)
    ws = np.full((numba.config.NUMBA_NUM_THREADS, pointwise_floats(c, *y.shape[1:], stride)), np.nan, np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        conv_pointwise_fused(x, Wb.reshape(Wb.shape[0], c, OUT), stride, tail, y, ws)
    finally:
        numba.set_num_threads(before)
    return y


@pytest.mark.parametrize("n,c,o,h,w,stride,res_mode", [
    (1, 16, 16, 28, 28, 1, RES_IDENTITY), (1, 5, 13, 7, 7, 1, RES_NONE), (3, 16, 32, 28, 28, 2, RES_NONE),
    (2, 32, 64, 14, 14, 2, RES_ZEROPAD), (4, 64, 128, 7, 7, 2, RES_IDENTITY), (1, 7, 6, 1, 1, 1, RES_NONE),
    (5, 12, 9, 9, 11, 1, RES_ZEROPAD), (2, 3, 8, 4, 4, 1, RES_IDENTITY), (1, 24, 40, 17, 9, 2, RES_NONE),
    # planes longer than a tail call's run (tail_positions), the last run ending off a register block
    (1, 8, 128, 30, 31, 1, RES_IDENTITY), (2, 4, 20, 40, 23, 1, RES_ZEROPAD)])
def test_the_pointwise_conv_matches_the_reference(n, c, o, h, w, stride, res_mode):
    check_fused(_run, n, c, o, h, w, 1, stride, 0, res_mode)
