"""im2col / col2im: lay convolution patches out as matrix columns so a conv becomes one GEMM.

The column layout is (C*kh*kw, N*Ho*Wo): row r = (c, i, j) holds, for every output pixel of every
image in the chunk, the input value under kernel tap (i, j) of channel c (zero in the padding).
Rows are independent, so im2col runs in parallel over rows; col2im scatters back per channel,
which keeps the parallel writes disjoint and the result deterministic.
"""

import numba
import numpy as np


@numba.njit(cache=True)
def _valid_range(j, stride, pad, w, wo):
    """Output columns lo..hi whose input column ox*stride - pad + j lies inside 0..w-1."""
    lo = 0
    while lo < wo and lo * stride - pad + j < 0:
        lo += 1
    hi = lo
    while hi < wo and hi * stride - pad + j < w:
        hi += 1
    return lo, hi


@numba.njit(parallel=True, cache=True)
def im2col(x, c0, n_ch, kh, kw, stride, pad, out):
    """Channels c0..c0+n_ch of x: (N, C, H, W) -> out: (n_ch*kh*kw, N*Ho*Wo), fully overwritten.

    The channel range is passed instead of a sliced view because Numba compiles a much slower
    strided ('A') version for non-contiguous arrays.
    """
    n_img, h, w = x.shape[0], x.shape[2], x.shape[3]
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    plane = ho * wo
    for r in numba.prange(n_ch * kh * kw):
        c = c0 + r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        lo, hi = _valid_range(j, stride, pad, w, wo)
        for n in range(n_img):
            base = n * plane
            for oy in range(ho):
                iy = oy * stride - pad + i
                o = base + oy * wo
                if iy < 0 or iy >= h:
                    for ox in range(wo):
                        out[r, o + ox] = 0
                    continue
                for ox in range(lo):
                    out[r, o + ox] = 0
                for ox in range(lo, hi):
                    out[r, o + ox] = x[n, c, iy, ox * stride - pad + j]
                for ox in range(hi, wo):
                    out[r, o + ox] = 0


@numba.njit(parallel=True, cache=True)
def col2im(cols, c0, n_ch, kh, kw, stride, pad, dx):
    """Scatter-add cols: (n_ch*kh*kw, N*Ho*Wo) into channels c0.. of dx: (N, C, H, W), unzeroed."""
    n_img, h, w = dx.shape[0], dx.shape[2], dx.shape[3]
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    plane = ho * wo
    for c in numba.prange(n_ch):
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                lo, hi = _valid_range(j, stride, pad, w, wo)
                for n in range(n_img):
                    base = n * plane
                    for oy in range(ho):
                        iy = oy * stride - pad + i
                        if iy < 0 or iy >= h:
                            continue
                        o = base + oy * wo
                        for ox in range(lo, hi):
                            dx[n, c0 + c, iy, ox * stride - pad + j] += cols[r, o + ox]


def out_size(size, k, stride, pad):
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * pad - k) // stride + 1


def empty_cols(x, kh, kw, stride, pad):
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
    return np.empty((c * kh * kw, n * ho * wo), dtype=x.dtype)
