"""im2col / col2im for one image: lay convolution patches out as matrix columns so a convolution
becomes one GEMM (the Caffe lowering).

Layout: cols has shape (C*kh*kw, Ho*Wo); row r = (c, i, j) holds, for every output pixel, the input
value under kernel tap (i, j) of channel c, zero in the padding. One image's columns fit in L2
cache at ResNet sizes, so they are written and read back by the GEMM without touching memory.
Channels are given as a range (c0, n_ch) of a contiguous image instead of a sliced view: Numba
compiles a much slower strided version for non-contiguous arrays.
"""

import numba


def out_size(size, k, stride, pad):
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * pad - k) // stride + 1


@numba.njit(cache=True)
def im2col(x, c0, n_ch, kh, kw, stride, pad, cols):
    """Channels c0..c0+n_ch of one image x: (C, H, W) -> cols: (n_ch*kh*kw, Ho*Wo), overwritten."""
    h, w = x.shape[1], x.shape[2]
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    for r in range(n_ch * kh * kw):
        c = c0 + r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for oy in range(ho):
            iy = oy * stride - pad + i
            o = oy * wo
            if iy < 0 or iy >= h:
                for ox in range(wo):
                    cols[r, o + ox] = 0
                continue
            for ox in range(wo):  # a select in the loop body vectorises; split loops did not
                ix = ox * stride - pad + j
                cols[r, o + ox] = x[c, iy, ix] if ix >= 0 and ix < w else 0


@numba.njit(cache=True)
def col2im(cols, c0, n_ch, kh, kw, stride, pad, dx):
    """Scatter-add cols: (n_ch*kh*kw, Ho*Wo) into channels c0.. of one image dx: (C, H, W)."""
    h, w = dx.shape[1], dx.shape[2]
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    for r in range(n_ch * kh * kw):
        c = c0 + r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for oy in range(ho):
            iy = oy * stride - pad + i
            if iy < 0 or iy >= h:
                continue
            o = oy * wo
            for ox in range(wo):
                ix = ox * stride - pad + j
                if ix >= 0 and ix < w:
                    dx[c, iy, ix] += cols[r, o + ox]
