"""Convolution by im2col + GEMM (Chellapilla et al. 2006, "High Performance Convolutional Neural
Networks for Document Processing"; the Caffe lowering).

Numba's threads take chunks of images in turn. A chunk is lowered into a private column buffer
(C/g*k*k, chunk*Ho*Wo) and multiplied by W (O/g, C/g*k*k) in one single-threaded BLAS GEMM;
chunks hold several images when a feature map is small, so that GEMM stays wide enough for BLAS
to run near its peak (Ho*Wo = 64 alone wastes half of it). The weight gradient recomputes the
columns rather than caching them and sums per-thread parts in a fixed order, so results are
deterministic for a given thread count; the data gradient is W^T dy scattered back by col2im. Accepts every stride, padding and grouping.
"""

import numba
import numpy as np

from npdc.kernels.im2col import REDUCTION_PARTS, col2im, im2col
from npdc.kernels.matmul import transposed

COLUMNS = 1024  # target GEMM width per chunk (output pixels); measured on ResNet layer shapes


SPLIT = 2  # chunks come in multiples of this (fixed, not the thread count: chunk widths change
# a GEMM's rounding, and results must not depend on --threads)


def chunk_images(plane, n):
    """Images per chunk: at most about COLUMNS output pixels, in a multiple of SPLIT chunks as
    even as that allows (eight 7x7 planes made one chunk of 392 columns by COLUMNS alone, which
    left one of two threads idle at ResNet-50's last stage)."""
    widest = max(1, COLUMNS // plane)
    rounds = -(-n // (SPLIT * widest))  # chunks per part
    return max(1, min(widest, -(-n // (SPLIT * rounds))))


@numba.njit(cache=True, inline="always")
def _chunk(cols_buf, mats_buf, t, k, chunk, n, plane):
    """(first image, images, columns, matrix) of chunk k: views (rows, width) and (og, width) of
    thread t's buffers, width = images * plane; the row counts follow from the buffer sizes."""
    i0 = k * chunk
    m = min(chunk, n - i0)
    width = m * plane
    rows, og = cols_buf.shape[1] // (chunk * plane), mats_buf.shape[1] // (chunk * plane)
    return i0, m, cols_buf[t, :rows * width].reshape((rows, width)), \
        mats_buf[t, :og * width].reshape((og, width))


@numba.njit(parallel=True, cache=True)
def _forward(x, W2, kh, kw, stride, pad, groups, y, chunk, n_threads):
    n, c = x.shape[0], x.shape[1]
    o, rows = W2.shape
    og, cg, plane = o // groups, c // groups, y.shape[2] * y.shape[3]
    n_chunks = (n + chunk - 1) // chunk
    cols_buf = np.empty((n_threads, rows * chunk * plane), x.dtype)
    outs_buf = np.empty((n_threads, og * chunk * plane), x.dtype)
    for t in numba.prange(n_threads):
        for k in range(t, n_chunks, n_threads):
            i0, m, cols, out = _chunk(cols_buf, outs_buf, t, k, chunk, n, plane)
            for g in range(groups):
                for i in range(m):
                    im2col(x[i0 + i], g * cg, cg, kh, kw, stride, pad, cols, i * plane)
                Wg = W2[g * og:(g + 1) * og]
                if m == 1:
                    np.dot(Wg, cols, y[i0, g * og:(g + 1) * og].reshape((og, plane)))
                    continue
                np.dot(Wg, cols, out)
                for i in range(m):
                    y[i0 + i, g * og:(g + 1) * og].reshape((og, plane))[:, :] = \
                        out[:, i * plane:(i + 1) * plane]


@numba.njit(parallel=True, cache=True)
def _weight_gradient(x, dy, kh, kw, stride, pad, groups, rows, chunk, parts):
    """dW (O, C/g*kh*kw) = dy times the columns of x, summed per part then in part order."""
    n, c = x.shape[0], x.shape[1]
    o = dy.shape[1]
    og, cg, plane = o // groups, c // groups, dy.shape[2] * dy.shape[3]
    n_chunks = (n + chunk - 1) // chunk
    cols_buf = np.empty((parts, rows * chunk * plane), x.dtype)
    dys_buf = np.empty((parts, og * chunk * plane), x.dtype)
    part = np.empty((parts, og, rows), x.dtype)
    dW = np.zeros((parts, o, rows), x.dtype)
    for t in numba.prange(parts):
        for k in range(t, n_chunks, parts):
            i0, m, cols, dys = _chunk(cols_buf, dys_buf, t, k, chunk, n, plane)
            for g in range(groups):
                for i in range(m):
                    im2col(x[i0 + i], g * cg, cg, kh, kw, stride, pad, cols, i * plane)
                    dys[:, i * plane:(i + 1) * plane] = \
                        dy[i0 + i, g * og:(g + 1) * og].reshape((og, plane))
                np.dot(dys, cols.T, part[t])
                dW[t, g * og:(g + 1) * og] += part[t]
    total = dW[0].copy()
    for t in range(1, parts):
        total += dW[t]
    return total


@numba.njit(parallel=True, cache=True)
def _data_gradient(WT, dy, kh, kw, stride, pad, groups, dx, chunk, n_threads):
    """dx += col2im(W^T dy), chunk images at a time."""
    n, c = dx.shape[0], dx.shape[1]
    rows, og = WT.shape[1], WT.shape[2]
    cg, plane = c // groups, dy.shape[2] * dy.shape[3]
    n_chunks = (n + chunk - 1) // chunk
    cols_buf = np.empty((n_threads, rows * chunk * plane), dx.dtype)
    dys_buf = np.empty((n_threads, og * chunk * plane), dx.dtype)
    for t in numba.prange(n_threads):
        for k in range(t, n_chunks, n_threads):
            i0, m, cols, dys = _chunk(cols_buf, dys_buf, t, k, chunk, n, plane)
            for g in range(groups):
                for i in range(m):
                    dys[:, i * plane:(i + 1) * plane] = dy[i0 + i, g * og:(g + 1) * og].reshape((og, plane))
                np.dot(WT[g], dys, cols)
                for i in range(m):
                    col2im(cols, g * cg, cg, kh, kw, stride, pad, dx[i0 + i], i * plane)


def data_gradient(x_shape, W, dy, stride, pad):
    """dx (x_shape): also the data gradient of primitives that compute the weight gradient their
    own way."""
    o, cg, kh, kw = W.shape
    groups = x_shape[1] // cg
    if groups == 1:
        WT = transposed(W.reshape(o, cg * kh * kw))[None]
    else:
        WT = np.ascontiguousarray(W.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1))
    dx = np.zeros(x_shape, dy.dtype)
    chunk = chunk_images(dy.shape[2] * dy.shape[3], x_shape[0])
    _data_gradient(WT, dy, kh, kw, stride, pad, groups, dx, chunk, numba.get_num_threads())
    return dx


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W) contiguous, W: (O, C/g, kh, kw) -> y: (N, O, Ho, Wo)."""
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    y = np.empty((n, o, ho, wo), x.dtype)
    W2 = np.ascontiguousarray(W.reshape(o, cg * kh * kw))
    _forward(x, W2, kh, kw, stride, pad, groups, y, chunk_images(ho * wo, n), numba.get_num_threads())
    return y


def weight_gradient(x, dy, W_shape, stride, pad, groups):
    """dW (W_shape): also the weight gradient of primitives whose own is slower at some shapes."""
    o, cg, kh, kw = W_shape
    chunk = chunk_images(dy.shape[2] * dy.shape[3], x.shape[0])
    dW = _weight_gradient(x, dy, kh, kw, stride, pad, groups, cg * kh * kw, chunk, REDUCTION_PARTS)
    return dW.reshape(W_shape)


def backward(x, W, dy, stride, pad, groups, need_dx):
    """(dx or None, dW) for dy: (N, O, Ho, Wo)."""
    dx = data_gradient(x.shape, W, dy, stride, pad) if need_dx else None
    return dx, weight_gradient(x, dy, W.shape, stride, pad, groups)
