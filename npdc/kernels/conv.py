"""The one entry point for 2-D convolution: forward, backward-data and backward-weights.

Primitive used here: im2col + GEMM (the Caffe lowering), one image at a time. Numba's threads
take the images in turn; each lowers its image into a private column buffer that fits in L2
and calls a single-threaded BLAS GEMM through np.dot, writing straight into the NCHW output, so
there is no batch-sized column matrix and no transpose. Backward recomputes the columns rather
than caching them from forward, and sums per-thread weight gradients in a fixed order, so results
are deterministic for a given thread count. A 1x1 stride-1 unpadded convolution skips the lowering.
"""

import numba
import numpy as np

from npdc.kernels.im2col import col2im, im2col, out_size
from npdc.threads import single_thread_numba_blas

single_thread_numba_blas()  # BLAS calls from inside Numba's parallel loop must not fork again


def check_conv(x_shape, W_shape, stride, pad, groups):
    """Raise ValueError unless the shapes describe a legal convolution."""
    n, c, h, w = x_shape
    o, cg, kh, kw = W_shape
    if groups < 1 or c % groups or o % groups or cg != c // groups:
        raise ValueError(f"conv: input has {c} channels, weight {W_shape} with groups={groups}")
    if stride < 1 or pad < 0:
        raise ValueError(f"conv: stride {stride} and padding {pad} must be >= 1 and >= 0")
    if out_size(h, kh, stride, pad) < 1 or out_size(w, kw, stride, pad) < 1:
        raise ValueError(f"conv: kernel {kh}x{kw} does not fit a padded {h}x{w} input")


@numba.njit(parallel=True, cache=True)
def _forward(x, W2, kh, kw, stride, pad, groups, y, n_threads):
    n, c = x.shape[0], x.shape[1]
    o, rows = W2.shape
    og, cg, plane = o // groups, c // groups, y.shape[2] * y.shape[3]
    pointwise = kh == 1 and kw == 1 and stride == 1 and pad == 0 and groups == 1
    bufs = np.empty((n_threads, rows, plane), x.dtype)
    for t in numba.prange(n_threads):
        for i in range(t, n, n_threads):
            yi = y[i].reshape((o, plane))
            if pointwise:
                np.dot(W2, x[i].reshape((c, plane)), yi)
                continue
            for g in range(groups):
                im2col(x[i], g * cg, cg, kh, kw, stride, pad, bufs[t])
                np.dot(W2[g * og:(g + 1) * og], bufs[t], yi[g * og:(g + 1) * og])


@numba.njit(parallel=True, cache=True)
def _backward(x, W2, dy, kh, kw, stride, pad, groups, dx, need_dx, n_threads):
    n, c = x.shape[0], x.shape[1]
    o, rows = W2.shape
    og, cg, plane = o // groups, c // groups, dy.shape[2] * dy.shape[3]
    pointwise = kh == 1 and kw == 1 and stride == 1 and pad == 0 and groups == 1
    bufs = np.empty((n_threads, rows, plane), x.dtype)
    dW = np.zeros((n_threads, o, rows), W2.dtype)
    for t in numba.prange(n_threads):
        for i in range(t, n, n_threads):
            dyi = dy[i].reshape((o, plane))
            if pointwise:
                xi = x[i].reshape((c, plane))
                dW[t] += np.dot(dyi, xi.T)
                if need_dx:
                    np.dot(W2.T, dyi, dx[i].reshape((c, plane)))
                continue
            for g in range(groups):
                dyg = dyi[g * og:(g + 1) * og]
                im2col(x[i], g * cg, cg, kh, kw, stride, pad, bufs[t])
                dW[t, g * og:(g + 1) * og] += np.dot(dyg, bufs[t].T)
                if need_dx:
                    np.dot(W2[g * og:(g + 1) * og].T, dyg, bufs[t])
                    col2im(bufs[t], g * cg, cg, kh, kw, stride, pad, dx[i])
    total = dW[0].copy()
    for t in range(1, n_threads):
        total += dW[t]
    return total


def conv2d_forward(x, W, stride=1, pad=0, groups=1):
    """x: (N, C, H, W), W: (O, C/groups, kh, kw) -> y: (N, O, Ho, Wo)."""
    check_conv(x.shape, W.shape, stride, pad, groups)
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    x = np.ascontiguousarray(x)
    W2 = np.ascontiguousarray(W.reshape(o, cg * kh * kw), dtype=x.dtype)
    y = np.empty((n, o, out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)), x.dtype)
    _forward(x, W2, kh, kw, stride, pad, groups, y, numba.get_num_threads())
    return y


def conv2d_backward(x, W, dy, stride=1, pad=0, groups=1, need_dx=True):
    """Gradients of a convolution: returns (dx or None, dW) for dy: (N, O, Ho, Wo)."""
    check_conv(x.shape, W.shape, stride, pad, groups)
    o, cg, kh, kw = W.shape
    want = (x.shape[0], o, out_size(x.shape[2], kh, stride, pad), out_size(x.shape[3], kw, stride, pad))
    if dy.shape != want:
        raise ValueError(f"conv backward: dy has shape {dy.shape}, expected {want}")
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    W2 = np.ascontiguousarray(W.reshape(o, cg * kh * kw), dtype=x.dtype)
    dx = np.zeros_like(x) if need_dx else np.zeros((1,) * 4, x.dtype)
    dW = _backward(x, W2, dy, kh, kw, stride, pad, groups, dx, need_dx, numba.get_num_threads())
    return (dx if need_dx else None), dW.reshape(W.shape).astype(W.dtype, copy=False)
