"""What the runtime's fused convolution tests share: a float64 reference of conv + folded batch
norm + residual + activation, and one check that a kernel matches it, with an identity residual
written over in place, and gives the same bits on one thread as on two."""

import numpy as np

from npdc.kernels.fused import RES_IDENTITY, RES_ZEROPAD
from npdc.kernels.im2col import out_size
from tests.conftest import rel_err


def reference(x, W, stride, pad, scale, shift, slopes, res, res_mode):
    """float64 conv (any kernel size) then the tail, written out from the definitions."""
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


def check_fused(run, n, c, o, h, w, k, stride, pad, res_mode):
    """run(x, W, stride, pad, scale, shift, slopes, res, res_mode, y, threads) -> y matches the
    reference within 1e-5, and its bits do not depend on the thread count."""
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
    want = reference(x, W, stride, pad, scale, shift, slopes, res, res_mode)
    y = np.full((n, o, ho, wo), np.nan, np.float32)
    if res_mode == RES_IDENTITY:  # written over the residual, as the plan does in place
        one = run(x, W, stride, pad, scale, shift, slopes, res.copy(), res_mode, res.copy(), 1)
        y = res.copy()
        two = run(x, W, stride, pad, scale, shift, slopes, y, res_mode, y, 2)
    else:
        one = run(x, W, stride, pad, scale, shift, slopes, res, res_mode, y.copy(), 1)
        two = run(x, W, stride, pad, scale, shift, slopes, res, res_mode, y, 2)
    assert rel_err(two, want) < 1e-5
    assert np.array_equal(one, two)  # the thread count does not change a bit
