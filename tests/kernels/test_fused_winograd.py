"""The compiled walk's Winograd F(4x4, 3x3) convolution with its tail fused
(npdc.kernels.fused_winograd) against the float64 reference of conv + folded batch norm +
residual + activation: one image whose tile rows are shared among the tasks, batches whose
chunks of tile rows cross image boundaries (planes of one tile row and of several, sizes not a
multiple of four), channel counts off the register blocks, paddings 0 to 2, an identity residual
written over in place and the option-A residual, and the same bits on one thread as on two."""

import numba
import numpy as np
import pytest

from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD, Tail
from npdc.kernels.fused_winograd import conv_winograd_fused, grouped_kernels, layout
from tests.kernels.fused_check import check_fused


def _run(x, W, stride, pad, scale, shift, slopes, res, res_mode, y, threads):
    U = grouped_kernels((W * scale[:, None, None, None]).astype(np.float32))
    tail = Tail(np.ones_like(scale), shift, True, slopes, res, res_mode, 2, 2)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        conv_winograd_fused(x, U, pad, tail, y, threads)
    finally:
        numba.set_num_threads(before)
    return y


@pytest.mark.parametrize("n,c,o,h,w,pad,res_mode", [
    (1, 16, 16, 28, 28, 1, RES_IDENTITY), (1, 3, 13, 9, 11, 1, RES_NONE),
    (3, 5, 40, 7, 6, 2, RES_ZEROPAD), (2, 8, 9, 10, 12, 0, RES_IDENTITY),
    (9, 64, 64, 4, 4, 1, RES_IDENTITY), (5, 32, 20, 7, 7, 1, RES_NONE),
    (40, 6, 17, 3, 5, 1, RES_ZEROPAD), (2, 24, 48, 14, 14, 1, RES_IDENTITY)])
def test_the_winograd_conv_matches_the_reference(n, c, o, h, w, pad, res_mode):
    check_fused(_run, n, c, o, h, w, 3, 1, pad, res_mode)


@pytest.mark.parametrize("n,o,ho,threads", [(1, 16, 28, 2), (128, 16, 28, 2), (128, 128, 4, 2), (3, 16, 7, 4),
                                            (1, 64, 8, 2), (1, 128, 4, 2), (1, 16, 4, 2)])
def test_the_layout_keeps_every_thread_busy(n, o, ho, threads):
    """No more row tasks than tile rows, none longer than a chunk; a batch's row tasks are whole
    rounds of the threads, and one small image (too few tiles for a register block a thread)
    is split by groups of output channels instead, as far as it has groups."""
    tasks, parts, chunk = layout(n, 16, o, ho, ho, threads)
    rows, groups = n * -(-ho // 4), -(-o // 32)
    assert 1 <= tasks <= rows and -(-rows // tasks) <= chunk
    assert 1 <= parts <= groups
    assert tasks * parts >= min(threads, tasks * groups)
    if n > 8:
        assert tasks % threads == 0 and parts == 1
