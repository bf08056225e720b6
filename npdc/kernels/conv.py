"""The one entry point for 2-D convolution: forward, backward-data and backward-weights.

Primitive used here: im2col + BLAS GEMM (the Caffe lowering). The batch is processed in chunks so
the column matrix stays a few MB, i.e. close to cache, instead of materialising N*Ho*Wo columns
at once; backward recomputes the columns per chunk rather than caching them from forward.
A 1x1 stride-1 unpadded convolution needs no lowering at all and goes straight to GEMM.
"""

import numpy as np

from npdc.kernels.im2col import col2im, im2col, out_size

COLS_BUDGET = 1 << 22  # elements of the column buffer per chunk (16 MiB in float32; measured best)


def _chunk(n, rows, plane):
    """Images per chunk so that one chunk's column matrix fits COLS_BUDGET."""
    return int(max(1, min(n, COLS_BUDGET // max(1, rows * plane))))


def _is_pointwise(W, stride, pad, groups):
    return W.shape[2] == 1 and W.shape[3] == 1 and stride == 1 and pad == 0 and groups == 1


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


def conv2d_forward(x, W, stride=1, pad=0, groups=1):
    """x: (N, C, H, W), W: (O, C/groups, kh, kw) -> y: (N, O, Ho, Wo)."""
    check_conv(x.shape, W.shape, stride, pad, groups)
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    ho, wo = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
    if _is_pointwise(W, stride, pad, groups):
        return np.matmul(W.reshape(o, c), x.reshape(n, c, h * w)).reshape(n, o, ho, wo)
    og, rows, plane = o // groups, cg * kh * kw, ho * wo
    W2 = W.reshape(o, rows)
    y = np.empty((n, o, ho, wo), dtype=x.dtype)
    nb = _chunk(n, rows, plane)
    buf = np.empty(rows * nb * plane, dtype=x.dtype)
    for n0 in range(0, n, nb):
        n1 = min(n, n0 + nb)
        cols = buf[: rows * (n1 - n0) * plane].reshape(rows, (n1 - n0) * plane)
        for g in range(groups):
            im2col(x[n0:n1], g * cg, cg, kh, kw, stride, pad, cols)
            yg = W2[g * og:(g + 1) * og] @ cols
            y[n0:n1, g * og:(g + 1) * og] = yg.reshape(og, n1 - n0, ho, wo).transpose(1, 0, 2, 3)
    return y


def conv2d_backward(x, W, dy, stride=1, pad=0, groups=1, need_dx=True):
    """Gradients of a convolution: returns (dx or None, dW) for dy: (N, O, Ho, Wo)."""
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    ho, wo = dy.shape[2], dy.shape[3]
    if _is_pointwise(W, stride, pad, groups):
        x3, dy3 = x.reshape(n, c, h * w), dy.reshape(n, o, h * w)
        dW = np.tensordot(dy3, x3, axes=([0, 2], [0, 2])).reshape(W.shape).astype(W.dtype)
        dx = np.matmul(W.reshape(o, c).T, dy3).reshape(x.shape) if need_dx else None
        return dx, dW
    og, rows, plane = o // groups, cg * kh * kw, ho * wo
    W2 = W.reshape(o, rows)
    dW2 = np.zeros((o, rows), dtype=W.dtype)
    dx = np.zeros_like(x) if need_dx else None
    nb = _chunk(n, rows, plane)
    buf = np.empty(rows * nb * plane, dtype=x.dtype)
    for n0 in range(0, n, nb):
        n1 = min(n, n0 + nb)
        cols = buf[: rows * (n1 - n0) * plane].reshape(rows, (n1 - n0) * plane)
        for g in range(groups):
            go = slice(g * og, (g + 1) * og)
            im2col(x[n0:n1], g * cg, cg, kh, kw, stride, pad, cols)
            dyg = dy[n0:n1, go].transpose(1, 0, 2, 3).reshape(og, -1)
            dW2[go] += dyg @ cols.T
            if need_dx:
                col2im(W2[go].T @ dyg, g * cg, cg, kh, kw, stride, pad, dx[n0:n1])
    return dx, dW2.reshape(W.shape)
