"""Depthwise convolution (one filter per channel, groups = C = O) computed directly, line by line.

The depthwise layers of MobileNets (Howard et al. 2017, "MobileNets: Efficient Convolutional
Neural Networks for Mobile Vision Applications"; Sandler et al. 2018, "MobileNetV2") do about
k*k multiply-adds per value read, too few for any GEMM lowering to pay: im2col per group builds a
k*k-times larger copy and multiplies it by a 1-row matrix, so the layer is bound by memory
traffic, and the best it can do is read x and write y once. Here each task owns one (image,
channel) plane and builds each output line in place from the k input lines under it, one tap at
a time over the run of columns inside the image (`valid_run`), so the line stays in L1 while its
k*k taps are added and padding is never materialised.

Backward per channel: the data gradient scatters each output line back onto the k input lines
(the transpose of the same loop); the weight gradient sums dy times the input under each tap, over
the channel's images in order, so one task owns each channel and no reduction across threads is
needed (deterministic for any thread count). Sums run in x's type, as the other primitives' do.
Departure from the papers: none in the maths; the loop order is this module's.
"""

import numba
import numpy as np

from npdc.kernels.im2col import valid_run


def refuse(x_shape, W_shape, stride, pad, groups):
    """Why this primitive cannot compute the convolution, or None."""
    if not (groups == x_shape[1] == W_shape[0]) or W_shape[1] != 1:
        return "only depthwise (groups = input channels = output channels)"
    return None


@numba.njit(cache=True, inline="always")
def _axpy(a, xs, ys):
    """ys += a * xs over two runs of equal length, indexed from 0 so that Numba needs no
    negative-index fix-up and the loop vectorises (for a stride-1 run)."""
    for j in range(ys.size):
        ys[j] += a * xs[j]


@numba.njit(parallel=True, cache=True, fastmath={"contract"})
def _forward(x, W, stride, pad, y):
    n, c, h, w = x.shape
    kh, kw = W.shape[2], W.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    for task in numba.prange(n * c):
        i, ch = task // c, task % c
        src, taps = x[i, ch], W[ch, 0]
        for oy in range(ho):
            row = y[i, ch, oy]
            row[:] = 0
            for a in range(kh):
                iy = oy * stride - pad + a
                if iy < 0 or iy >= h:
                    continue
                line = src[iy]
                for b in range(kw):
                    lo, hi = valid_run(b, stride, pad, w, wo)
                    shift, wt = b - pad, taps[a, b]
                    if hi <= lo:
                        continue
                    dst = row[lo:hi]
                    src_run = line[lo * stride + shift:(hi - 1) * stride + shift + 1:stride]
                    _axpy(wt, src_run, dst)


@numba.njit(parallel=True, cache=True, fastmath={"contract", "reassoc"})
def _backward(x, W, dy, stride, pad, dx, dW, need_dx):
    """Fills dW (C, 1, kh, kw) and, with need_dx, dx (overwritten), one task per channel. Each
    line's sums per tap run in x's type and are added up in float64 (a channel sums N*Ho*Wo
    products)."""
    n, c, h, w = x.shape
    kh, kw = W.shape[2], W.shape[3]
    ho, wo = dy.shape[2], dy.shape[3]
    zero = x.ravel()[0] * 0  # a zero of x's type for the line sums
    for ch in numba.prange(c):
        taps = W[ch, 0]
        acc = np.zeros((kh, kw))
        for i in range(n):
            src, g = x[i, ch], dy[i, ch]
            if need_dx:
                dx[i, ch] = 0
            for oy in range(ho):
                grow = g[oy]
                for a in range(kh):
                    iy = oy * stride - pad + a
                    if iy < 0 or iy >= h:
                        continue
                    line = src[iy]
                    back = dx[i, ch, iy] if need_dx else dx[0, 0, 0]
                    for b in range(kw):
                        lo, hi = valid_run(b, stride, pad, w, wo)
                        shift, wt = b - pad, taps[a, b]
                        s = zero
                        if stride == 1:
                            for ox in range(lo, hi):
                                s += grow[ox] * line[ox + shift]
                        else:
                            for ox in range(lo, hi):
                                s += grow[ox] * line[ox * stride + shift]
                        acc[a, b] += s
                        if need_dx and stride == 1:
                            for ox in range(lo, hi):
                                back[ox + shift] += wt * grow[ox]
                        elif need_dx:
                            for ox in range(lo, hi):
                                back[ox * stride + shift] += wt * grow[ox]
        for a in range(kh):
            for b in range(kw):
                dW[ch, 0, a, b] = acc[a, b]


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (C, 1, kh, kw) -> y: (N, C, Ho, Wo)."""
    n, c, h, w = x.shape
    kh, kw = W.shape[2], W.shape[3]
    y = np.empty((n, c, (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1), x.dtype)
    _forward(x, W, stride, pad, y)
    return y


def backward(x, W, dy, stride, pad, groups, need_dx):
    """(dx or None, dW) for dy: (N, C, Ho, Wo)."""
    dW = np.empty_like(W)
    dx = np.empty_like(x) if need_dx else np.empty((1, 1, 1, 1), x.dtype)
    _backward(x, W, dy, stride, pad, dx, dW, need_dx)
    return (dx if need_dx else None), dW
