"""Depthwise convolution (one filter per channel, groups = C = O) computed directly, line by line.

The depthwise layers of MobileNets (Howard et al. 2017, "MobileNets: Efficient Convolutional
Neural Networks for Mobile Vision Applications"; Sandler et al. 2018, "MobileNetV2") do about
k*k multiply-adds per value read, too few for any GEMM lowering to pay: im2col per group builds a
k*k-times larger copy and multiplies it by a 1-row matrix, so the layer is bound by memory
traffic, and the best it can do is read x and write y once. Here each task owns one (image,
channel) plane. A 3x3 kernel (all of MobileNet's) copies the plane into a zero-bordered one per
thread and builds each output line in one pass over the three input lines under it, the nine
weights in registers (_forward3): no tap needs a bounds test. Other kernels build each output
line in place from the k input lines under it, one tap at a time over the run of columns inside
the image (`valid_run`), so the line stays in L1 while its k*k taps are added and padding is
never materialised.

Backward: the data gradient scatters each output line back onto the k input lines (the transpose
of the same loop, a plane per task); the weight gradient sums dy times the input under each tap,
over the channel's images in order, so one task owns each channel and no reduction across
threads is needed (deterministic for any thread count). Every run of a tap is a slice indexed
from zero (see _axpy). Average pooling is this convolution with every tap 1 / k*k
(npdc.engine.layers.pool).
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
def _sweep(src, W, stride, pad, out, adjoint):
    """out (overwritten) = the depthwise convolution of src by W, or with adjoint its transpose:
    each output line of src (dy) scattered back onto the input lines under it (dx). Both walk the
    same runs: for output line oy, tap (a, b), the output columns [lo, hi) and the input columns
    they read, a zero-based slice with the stride as its step (see _axpy)."""
    n, c = src.shape[0], src.shape[1]
    plane, lines = (out, src) if adjoint else (src, out)  # the input-sized and output-sized sides
    h, w = plane.shape[2], plane.shape[3]
    ho, wo = lines.shape[2], lines.shape[3]
    kh, kw = W.shape[2], W.shape[3]
    for task in numba.prange(n * c):
        i, ch = task // c, task % c
        taps = W[ch, 0]
        out[i, ch] = 0
        for oy in range(ho):
            row = lines[i, ch, oy]
            for a in range(kh):
                iy = oy * stride - pad + a
                if iy < 0 or iy >= h:
                    continue
                for b in range(kw):
                    lo, hi = valid_run(b, stride, pad, w, wo)
                    if hi > lo:
                        first = lo * stride + b - pad
                        run = plane[i, ch, iy, first:first + (hi - lo - 1) * stride + 1:stride]
                        if adjoint:
                            _axpy(taps[a, b], row[lo:hi], run)
                        else:
                            _axpy(taps[a, b], run, row[lo:hi])


@numba.njit(cache=True, inline="always")
def _dot(xs, ys):
    """The sum of xs * ys over two runs of equal length (at least one element), in their type."""
    s = xs[0] * ys[0]
    for j in range(1, xs.size):
        s += xs[j] * ys[j]
    return s


@numba.njit(parallel=True, cache=True, fastmath={"contract", "reassoc"})
def _weight_gradient(x, dy, stride, pad, dW):
    """dW (C, 1, kh, kw), one task per channel. Each line's sum per tap runs in x's type; the
    lines' sums are added in float64 (a channel sums N*Ho*Wo products)."""
    n, c, h, w = x.shape
    kh, kw = dW.shape[2], dW.shape[3]
    ho, wo = dy.shape[2], dy.shape[3]
    for ch in numba.prange(c):
        acc = np.zeros((kh, kw))
        for i in range(n):
            for oy in range(ho):
                grow = dy[i, ch, oy]
                for a in range(kh):
                    iy = oy * stride - pad + a
                    if iy < 0 or iy >= h:
                        continue
                    line = x[i, ch, iy]
                    for b in range(kw):
                        lo, hi = valid_run(b, stride, pad, w, wo)
                        if hi > lo:
                            first = lo * stride + b - pad
                            acc[a, b] += _dot(grow[lo:hi], line[first:first + (hi - lo - 1) * stride + 1:stride])
        for a in range(kh):
            for b in range(kw):
                dW[ch, 0, a, b] = acc[a, b]


def data_gradient(W, dy, stride, pad, x_shape):
    """dx (x_shape) of the depthwise convolution by W: also average pooling's gradient."""
    dx = np.empty(x_shape, dy.dtype)
    _sweep(dy, W, stride, pad, dx, True)
    return dx


@numba.njit(cache=True, inline="always")
def _line3_unit(row, r0, r1, r2, k):
    """row[t] = the nine taps k over input lines r0, r1, r2 from column t on (stride 1)."""
    for t in range(row.size):
        row[t] = (k[0] * r0[t] + k[1] * r0[t + 1] + k[2] * r0[t + 2] + k[3] * r1[t] + k[4] * r1[t + 1]
                  + k[5] * r1[t + 2] + k[6] * r2[t] + k[7] * r2[t + 1] + k[8] * r2[t + 2])


@numba.njit(cache=True, inline="always")
def _line3(row, r0, r1, r2, k, stride):
    """row[t] = the nine taps k over input lines r0, r1, r2 from column t*stride on; unsigned
    indices, so Numba adds no negative-index fix-up."""
    one, two = numba.uint64(1), numba.uint64(2)
    for t in range(row.size):
        p = numba.uint64(t) * stride
        row[t] = (k[0] * r0[p] + k[1] * r0[p + one] + k[2] * r0[p + two] + k[3] * r1[p]
                  + k[4] * r1[p + one] + k[5] * r1[p + two] + k[6] * r2[p] + k[7] * r2[p + one]
                  + k[8] * r2[p + two])


@numba.njit(parallel=True, cache=True, fastmath={"contract"})
def _forward3(x, W, stride, pad, y, planes):
    """y = the 3x3 depthwise convolution of x: each task copies its (image, channel) plane into
    its thread's zero-bordered plane (H + 2*pad, W + 2*pad) and builds every output line in one
    pass, nine weights in registers and three input lines under it: no tap falls outside, so
    there are no edge cases and no line is read and written once per tap."""
    n, c, h, w = x.shape
    ho = y.shape[2]
    step = numba.uint64(stride)
    for task in numba.prange(n * c):
        i, ch = task // c, task % c
        P = planes[numba.get_thread_id()]
        for r in range(h):
            P[r + pad, pad:pad + w] = x[i, ch, r]
        q = W[ch, 0]
        k = (q[0, 0], q[0, 1], q[0, 2], q[1, 0], q[1, 1], q[1, 2], q[2, 0], q[2, 1], q[2, 2])
        for oy in range(ho):
            top = oy * stride
            if stride == 1:
                _line3_unit(y[i, ch, oy], P[top], P[top + 1], P[top + 2], k)
            else:
                _line3(y[i, ch, oy], P[top], P[top + 1], P[top + 2], k, step)


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (C, 1, kh, kw) -> y: (N, C, Ho, Wo)."""
    n, c, h, w = x.shape
    kh, kw = W.shape[2], W.shape[3]
    y = np.empty((n, c, (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1), x.dtype)
    if (kh, kw) == (3, 3):
        planes = np.zeros((numba.get_num_threads(), h + 2 * pad, w + 2 * pad), x.dtype)
        _forward3(x, W, stride, pad, y, planes)
    else:
        _sweep(x, W, stride, pad, y, False)
    return y


def backward(x, W, dy, stride, pad, groups, need_dx):
    """(dx or None, dW) for dy: (N, C, Ho, Wo)."""
    dW = np.empty_like(W)
    _weight_gradient(x, dy, stride, pad, dW)
    return (data_gradient(W, dy, stride, pad, x.shape) if need_dx else None), dW
