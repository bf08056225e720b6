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
from npdc.kernels.conv_winograd4_transforms import store_rows
from npdc.kernels.fused_winograd import conv_winograd_fused, finish_lanes, grouped_kernels, layout, load_rows, write_rows
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


@numba.njit(cache=True)
def _channels_innermost_tail(R, S, rows, k0, kept, tail, y, image, oy):
    """The tile row's tail the way write_rows replaced: the residual turned channels-innermost,
    the tail there, the outputs turned back to NCHW."""
    lanes = R.shape[2]
    scale, shift, slopes = np.zeros(lanes, R.dtype), np.zeros(lanes, R.dtype), np.zeros(lanes, R.dtype)
    scale[:kept], shift[:kept] = tail.scale[k0:k0 + kept], tail.shift[k0:k0 + kept]
    slopes[:kept] = tail.slopes[k0:k0 + kept]
    if tail.res_mode != RES_NONE:
        load_rows(tail.res, tail.res_mode, tail.res_front, tail.res_stride, image, oy, rows, k0, S)
    finish_lanes(R, S, rows, y.shape[3], scale, shift, tail.act, slopes, tail.res_mode != RES_NONE)
    store_rows(R, rows, k0, y, image, oy)


@pytest.mark.parametrize("wo,rows,lanes,k0,o,res,act", [
    (28, 4, 32, 0, 32, "none", True), (14, 2, 32, 32, 64, "copy", True), (7, 3, 16, 16, 24, "in place", True),
    (4, 4, 64, 64, 128, "in place", False), (9, 1, 16, 0, 16, "copy", False)])
def test_write_rows_writes_the_bits_of_the_channels_innermost_tail(wo, rows, lanes, k0, o, res, act):
    """Rows whose last columns are a part of eight (masked), a part of the rows of a tile row, a
    group of lanes of which only some channels exist (kept, a multiple of 8), an identity
    residual from another array and written over in place, with and without the activation:
    the same bits, and no output of another tile row or channel written."""
    rng = np.random.default_rng(wo * rows + k0)
    n, ho, oy, image = 2, 4 * rows + 3, 4, 1
    kept = min(lanes, o - k0)
    R = np.zeros((2, 4, -(-wo // 4) * 4, lanes), np.float32)  # R and, past it, S, as carve cuts them
    R[0] = rng.standard_normal(R.shape[1:])
    residual = rng.standard_normal((n, o, ho, wo)).astype(np.float32)
    scale, shift = rng.random(o, dtype=np.float32) + 0.5, rng.standard_normal(o).astype(np.float32)
    outs = []
    for write in ("old", "new"):
        y = residual.copy() if res == "in place" else np.full((n, o, ho, wo), np.nan, np.float32)
        source = {"none": np.zeros((1, 1, 1, 1), np.float32), "copy": residual, "in place": y}[res]
        mode = RES_NONE if res == "none" else RES_IDENTITY
        tail = Tail(scale, shift, act, np.full(o, 0.2, np.float32), source, mode, 0, 1)
        if write == "old":
            _channels_innermost_tail(R[0].copy(), np.zeros_like(R[0]), rows, k0, kept, tail, y, image, oy)
        else:
            write_rows(R[0], rows, k0, kept, tail, y, image, oy)
        outs.append(y)
    np.testing.assert_array_equal(outs[1], outs[0])
    untouched = residual if res == "in place" else np.full_like(residual, np.nan)
    outside = np.ones(outs[1].shape, bool)
    outside[image, k0:k0 + kept, oy:oy + rows] = False
    np.testing.assert_array_equal(outs[1][outside], untouched[outside])
