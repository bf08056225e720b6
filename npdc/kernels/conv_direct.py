"""Direct convolution: the defining sum as Numba loops, no lowering and no extra memory
(the "direct" family of Anderson & Gregg 2017, "Optimal DNN Primitive Selection with Partitioned
Boolean Quadratic Programming"). Parallel over (image, output channel) pairs for forward, over
(image, input channel) for the data gradient and over output channels for the weight gradient,
so every task writes only its own plane and no reduction is needed. The inner loop runs over
one output line's in-bounds run, contiguous for stride 1 (it vectorises). It wins where there is
no GEMM worth building: depthwise and very small channel counts. Accepts every shape.
"""

import numba
import numpy as np

from npdc.kernels.im2col import valid_run


@numba.njit(parallel=True, cache=True)
def _forward(x, W, stride, pad, groups, y):
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    ho, wo = y.shape[2], y.shape[3]
    og = o // groups
    for task in numba.prange(n * o):
        i, oc = task // o, task % o
        c0 = (oc // og) * cg
        out = y[i, oc]
        out[:, :] = 0
        for ci in range(cg):
            for a in range(kh):
                for b in range(kw):
                    wt = W[oc, ci, a, b]
                    lo, hi = valid_run(b, stride, pad, w, wo)
                    shift = b - pad
                    for oy in range(ho):
                        iy = oy * stride - pad + a
                        if iy < 0 or iy >= h:
                            continue
                        src, dst = x[i, c0 + ci, iy], out[oy]
                        for ox in range(lo, hi):
                            dst[ox] += wt * src[ox * stride + shift]


@numba.njit(parallel=True, cache=True)
def _backward_data(W, dy, stride, pad, groups, dx):
    n, c, h, w = dx.shape
    o, cg, kh, kw = W.shape
    ho, wo = dy.shape[2], dy.shape[3]
    og = o // groups
    for task in numba.prange(n * c):
        i, ch = task // c, task % c
        g, ci = ch // cg, ch % cg
        out = dx[i, ch]
        for oc in range(g * og, (g + 1) * og):
            for a in range(kh):
                for b in range(kw):
                    wt = W[oc, ci, a, b]
                    lo, hi = valid_run(b, stride, pad, w, wo)
                    shift = b - pad
                    for oy in range(ho):
                        iy = oy * stride - pad + a
                        if iy < 0 or iy >= h:
                            continue
                        src, dst = dy[i, oc, oy], out[iy]
                        for ox in range(lo, hi):
                            dst[ox * stride + shift] += wt * src[ox]


@numba.njit(parallel=True, cache=True)
def _backward_weights(x, dy, stride, pad, groups, dW):
    n, c, h, w = x.shape
    o, cg, kh, kw = dW.shape
    ho, wo = dy.shape[2], dy.shape[3]
    og = o // groups
    for oc in numba.prange(o):
        c0 = (oc // og) * cg
        for ci in range(cg):
            for a in range(kh):
                for b in range(kw):
                    lo, hi = valid_run(b, stride, pad, w, wo)
                    shift = b - pad
                    s = 0.0
                    for i in range(n):
                        for oy in range(ho):
                            iy = oy * stride - pad + a
                            if iy < 0 or iy >= h:
                                continue
                            src, d = x[i, c0 + ci, iy], dy[i, oc, oy]
                            for ox in range(lo, hi):
                                s += d[ox] * src[ox * stride + shift]
                    dW[oc, ci, a, b] = s


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C/g, kh, kw) -> y: (N, O, Ho, Wo)."""
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    y = np.empty((n, o, (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1), x.dtype)
    _forward(x, W, stride, pad, groups, y)
    return y


def backward(x, W, dy, stride, pad, groups, need_dx):
    """(dx or None, dW) for dy: (N, O, Ho, Wo)."""
    dW = np.empty_like(W)
    _backward_weights(x, dy, stride, pad, groups, dW)
    if not need_dx:
        return None, dW
    dx = np.zeros_like(x)
    _backward_data(W, dy, stride, pad, groups, dx)
    return dx, dW
