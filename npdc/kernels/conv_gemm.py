"""Convolution as one GEMM over the whole batch: the im2col lowering of Chellapilla et al. 2006
("High Performance Convolutional Neural Networks for Document Processing"), with every image's
columns side by side, multiplied in a single GEMM split between the threads by rows of its
output.

Why: the deep layers of ImageNet-size networks have small feature maps (14x14, 7x7) and many
channels. Per-image GEMMs there are narrow (49 columns at 7x7) and, run one per thread, each
keeps a private copy of a large weight gradient to sum at the end; one GEMM over the batch is
wide enough for BLAS to reach its peak, and the threads split its output rows. A 1x1
stride-1 unpadded convolution needs no lowering at all: its columns are the input with the image
and channel axes swapped.

Departure from im2col (conv_im2col): the columns of all images live at once (C*kh*kw by N*Ho*Wo
floats), which costs memory at large feature maps (refused past MAX_COLUMN_FLOATS); the default
heuristic uses this primitive only where the maps are small. The products' row blocks are fixed
(npdc.kernels.matmul), so the results do not depend on the thread count. Groups = 1 only.
"""

import numba
import numpy as np

from npdc.kernels.im2col import col2im, im2col, out_size
from npdc.kernels.matmul import matmul


MAX_COLUMN_FLOATS = 1 << 26  # 256 MB of float32 columns at most


def refuse(x_shape, W_shape, stride, pad, groups):
    """Why this primitive cannot compute the convolution, or None."""
    if groups != 1:
        return "only groups = 1"
    n, c, h, w = x_shape
    _, _, kh, kw = W_shape
    floats = c * kh * kw * n * out_size(h, kh, stride, pad) * out_size(w, kw, stride, pad)
    if floats > MAX_COLUMN_FLOATS:
        return f"the whole batch's columns ({floats} floats) exceed {MAX_COLUMN_FLOATS}"
    return None


def _pointwise(W_shape, stride, pad):
    return W_shape[2] == W_shape[3] == 1 and stride == 1 and pad == 0


@numba.njit(parallel=True, cache=True)
def _lower(x, kh, kw, stride, pad, cols):
    """cols (C*kh*kw, N*P) = every image's im2col columns, image i at columns i*P .. (i+1)*P."""
    n, c = x.shape[0], x.shape[1]
    plane = cols.shape[1] // n
    for i in numba.prange(n):
        im2col(x[i], 0, c, kh, kw, stride, pad, cols, i * plane)


@numba.njit(parallel=True, cache=True)
def _to_rows(a, rows):
    """rows (C, N*P) = a (N, C, P) with the first two axes swapped (a plane at a time)."""
    n, c, plane = a.shape
    for task in numba.prange(n * c):
        i, k = task // c, task % c
        rows[k, i * plane:(i + 1) * plane] = a[i, k]


@numba.njit(parallel=True, cache=True)
def _from_rows(rows, a):
    """a (N, C, P) = rows (C, N*P) with the first two axes swapped back."""
    n, c, plane = a.shape
    for task in numba.prange(n * c):
        i, k = task // c, task % c
        a[i, k] = rows[k, i * plane:(i + 1) * plane]


@numba.njit(parallel=True, cache=True)
def _raise(cols, kh, kw, stride, pad, dx):
    """dx (overwritten) = col2im of each image's columns of cols."""
    n, c = dx.shape[0], dx.shape[1]
    plane = cols.shape[1] // n
    for i in numba.prange(n):
        dx[i] = 0
        col2im(cols, 0, c, kh, kw, stride, pad, dx[i], i * plane)


def _columns(x, W_shape, stride, pad, plane):
    """The (C*kh*kw, N*plane) columns of x."""
    n, c = x.shape[:2]
    _, _, kh, kw = W_shape
    cols = np.empty((c * kh * kw, n * plane), x.dtype)
    if _pointwise(W_shape, stride, pad):
        _to_rows(x.reshape(n, c, plane), cols)
    else:
        _lower(x, kh, kw, stride, pad, cols)
    return cols


def _out_rows(dy):
    """dy (N, O, Ho, Wo) as (O, N*Ho*Wo)."""
    n, o = dy.shape[:2]
    rows = np.empty((o, dy[0, 0].size * n), dy.dtype)
    _to_rows(dy.reshape(n, o, -1), rows)
    return rows


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C, kh, kw) -> y: (N, O, Ho, Wo)."""
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    cols = _columns(x, W.shape, stride, pad, ho * wo)
    prod = matmul(W.reshape(o, -1), cols)
    y = np.empty((n, o, ho, wo), x.dtype)
    _from_rows(prod, y.reshape(n, o, ho * wo))
    return y


def backward(x, W, dy, stride, pad, groups, need_dx, dW_out=None):
    """(dx or None, dW) for dy: (N, O, Ho, Wo); dW is written into dW_out when given."""
    o, c, kh, kw = W.shape
    d = _out_rows(dy)
    into = None if dW_out is None else dW_out.reshape(o, -1)
    dW = matmul(d, _columns(x, W.shape, stride, pad, dy.shape[2] * dy.shape[3]).T, into).reshape(W.shape)
    if not need_dx:
        return None, dW
    back = matmul(W.reshape(o, -1).T, d)
    dx = np.empty_like(x)
    if _pointwise(W.shape, stride, pad):
        _from_rows(back, dx.reshape(x.shape[0], c, -1))
    else:
        _raise(back, kh, kw, stride, pad, dx)
    return dx, dW
