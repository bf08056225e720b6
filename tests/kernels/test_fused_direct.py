"""The runtime's fused direct 3x3 convolutions (npdc.kernels.fused_direct: stride 1 and stride 2)
against a float64 reference of conv + folded batch norm + residual + activation: every padding
they take, one image and a batch, output channels not a multiple of the register block, odd
sizes, an identity residual written over in place, a batch of few input channels (its own path),
and the same bits on one thread as on two."""

import numba
import numpy as np
import pytest

from npdc.kernels.conv_flat import blocked, interleaved
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD, Tail
from npdc.kernels.fused_direct import conv_flat_fused, conv_polyphase_fused, flat_scratch, phase_scratch
from tests.kernels.fused_check import check_fused


def _run(x, W, stride, pad, scale, shift, slopes, res, res_mode, y, threads):
    n, c, h, w = x.shape
    rows = numba.config.NUMBA_NUM_THREADS
    W9 = (W * scale[:, None, None, None]).reshape(W.shape[0], c, 9).astype(np.float32)
    if stride == 1:
        plane, acc = flat_scratch(c, h, w, pad, W.shape[0], n)
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
    (2, 5, 12, 7, 7, 2, 1, RES_NONE),
    # a batch of few input channels, rows of a chunk or more: conv_flat's rows (_few_rows)
    (3, 1, 16, 20, 18, 1, 1, RES_NONE), (2, 3, 13, 17, 16, 1, 1, RES_IDENTITY),
    (4, 2, 9, 5, 33, 1, 2, RES_ZEROPAD), (2, 7, 24, 9, 18, 1, 0, RES_IDENTITY)])
def test_the_fused_direct_convs_match_the_reference(n, c, o, h, w, stride, pad, res_mode):
    check_fused(_run, n, c, o, h, w, 3, stride, pad, res_mode)
