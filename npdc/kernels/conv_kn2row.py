"""kn2row: a k x k convolution as k*k 1x1 convolutions, each one GEMM on the unmodified input,
whose results are shifted and added into the output (Vasudevan, Anderson & Gregg 2017, "Parallel
Multi Channel Convolution using General Matrix Multiplication"). A 1x1 stride-1 unpadded
convolution is then a single GEMM straight into the output, with no lowering at all.

Forward per image and tap (a, b): Z = W[:, :, a, b] (O x C) @ x (C x H*W), then
y[:, oy, ox] += Z[:, oy*s - p + a, ox*s - p + b]. Backward uses the transposed steps: the data
gradient is W_ab^T @ dy scattered back by the same shift, the weight gradient dy @ x_ab^T with
x_ab the input sampled under tap (a, b) (one im2col row block). Images are split between Numba's
threads; the weight gradient is summed in REDUCTION_PARTS parts added in a fixed order, the same
bits whatever the thread count.
Groups = 1 only; every stride and padding.
"""

import numba
import numpy as np

from npdc.kernels.im2col import REDUCTION_PARTS, valid_run


def refuse(x_shape, W_shape, stride, pad, groups):
    """Why kn2row cannot compute this convolution, or None."""
    return "only groups = 1" if groups != 1 else None


@numba.njit(cache=True)
def _shift_add(Z, a, b, stride, pad, y):
    """y[:, oy, ox] += Z[:, iy, ix] with (iy, ix) = (oy*s - p + a, ox*s - p + b) inside Z."""
    h, w = Z.shape[1], Z.shape[2]
    ho, wo = y.shape[1], y.shape[2]
    lo, hi = valid_run(b, stride, pad, w, wo)
    shift = b - pad
    for k in range(y.shape[0]):
        for oy in range(ho):
            iy = oy * stride - pad + a
            if iy < 0 or iy >= h:
                continue
            src, dst = Z[k, iy], y[k, oy]
            for ox in range(lo, hi):
                dst[ox] += src[ox * stride + shift]


@numba.njit(cache=True)
def _tap(x, a, b, stride, pad, G):
    """G[:, oy, ox] = x[:, oy*s - p + a, ox*s - p + b], zero outside x (the transpose of _shift_add)."""
    h, w = x.shape[1], x.shape[2]
    ho, wo = G.shape[1], G.shape[2]
    lo, hi = valid_run(b, stride, pad, w, wo)
    shift = b - pad
    for k in range(G.shape[0]):
        for oy in range(ho):
            iy = oy * stride - pad + a
            dst = G[k, oy]
            dst[:] = 0
            if iy < 0 or iy >= h:
                continue
            src = x[k, iy]
            for ox in range(lo, hi):
                dst[ox] = src[ox * stride + shift]


@numba.njit(parallel=True, cache=True)
def _forward_taps(x, Wt, kh, kw, stride, pad, y, n_threads):
    """Wt: (kh*kw, O, C) -> y: (N, O, Ho, Wo)."""
    n, c, h, w = x.shape
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    direct = kh == 1 and kw == 1 and stride == 1 and pad == 0
    Z = np.empty((n_threads, o, h, w), x.dtype)
    for t in numba.prange(n_threads):
        for i in range(t, n, n_threads):
            if direct:
                np.dot(Wt[0], x[i].reshape((c, h * w)), y[i].reshape((o, ho * wo)))
                continue
            y[i] = 0
            for tap in range(kh * kw):
                np.dot(Wt[tap], x[i].reshape((c, h * w)), Z[t].reshape((o, h * w)))
                _shift_add(Z[t], tap // kw, tap % kw, stride, pad, y[i])


@numba.njit(parallel=True, cache=True)
def _backward_taps(x, Wt, kh, kw, dy, stride, pad, dx, need_dx, parts):
    """(sum over images of dy @ x_tap^T) per part, and dx += shifted W_tap^T @ dy."""
    n, c, h, w = x.shape
    o, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    direct = kh == 1 and kw == 1 and stride == 1 and pad == 0
    G = np.empty((parts, c, ho, wo), x.dtype)
    T = np.empty((parts, c, ho, wo), x.dtype)
    part = np.empty((parts, o, c), x.dtype)
    dW = np.zeros((parts, kh * kw, o, c), x.dtype)
    for t in numba.prange(parts):
        for i in range(t, n, parts):
            dyi = dy[i].reshape((o, ho * wo))
            for tap in range(kh * kw):
                a, b = tap // kw, tap % kw
                if direct:
                    np.dot(dyi, x[i].reshape((c, h * w)).T, part[t])
                else:
                    _tap(x[i], a, b, stride, pad, G[t])
                    np.dot(dyi, G[t].reshape((c, ho * wo)).T, part[t])
                dW[t, tap] += part[t]
                if not need_dx:
                    continue
                if direct:
                    np.dot(Wt[tap].T, dyi, dx[i].reshape((c, h * w)))
                    continue
                np.dot(Wt[tap].T, dyi, T[t].reshape((c, ho * wo)))
                _scatter_tap(T[t], a, b, stride, pad, dx[i])
    return dW


@numba.njit(cache=True)
def _scatter_tap(T, a, b, stride, pad, dx):
    """dx[:, oy*s - p + a, ox*s - p + b] += T[:, oy, ox] where inside dx."""
    h, w = dx.shape[1], dx.shape[2]
    ho, wo = T.shape[1], T.shape[2]
    lo, hi = valid_run(b, stride, pad, w, wo)
    shift = b - pad
    for k in range(T.shape[0]):
        for oy in range(ho):
            iy = oy * stride - pad + a
            if iy < 0 or iy >= h:
                continue
            src, dst = T[k, oy], dx[k, iy]
            for ox in range(lo, hi):
                dst[ox * stride + shift] += src[ox]


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C, kh, kw) -> y: (N, O, Ho, Wo)."""
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    y = np.empty((n, o, (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1), x.dtype)
    Wt = np.ascontiguousarray(W.transpose(2, 3, 0, 1).reshape(kh * kw, o, c))
    _forward_taps(x, Wt, kh, kw, stride, pad, y, numba.get_num_threads())
    return y


def _thread_sum(parts, out):
    """out = parts[0] + parts[1] + ... in thread order (into a new array without out)."""
    if out is None:
        out = parts[0].copy()
    else:
        out[...] = parts[0]
    for part in parts[1:]:
        out += part
    return out


def backward(x, W, dy, stride, pad, groups, need_dx, dW_out=None):
    """(dx or None, dW) for dy: (N, O, Ho, Wo); dW is written into dW_out when given."""
    o, c, kh, kw = W.shape
    Wt = np.ascontiguousarray(W.transpose(2, 3, 0, 1).reshape(kh * kw, o, c))
    pointwise = kh == kw == 1 and stride == 1 and pad == 0
    if not need_dx:
        dx = np.zeros((1, 1, 1, 1), x.dtype)
    else:  # a pointwise layer's products write every element; the taps' scatters add into zeros
        dx = np.empty_like(x) if pointwise else np.zeros_like(x)
    parts = _backward_taps(x, Wt, kh, kw, dy, stride, pad, dx, need_dx, REDUCTION_PARTS)
    if kh == kw == 1:  # the taps' layout is W's
        dW = _thread_sum(parts, None if dW_out is None else dW_out.reshape(parts.shape[1:]))
        return (dx if need_dx else None), dW.reshape(W.shape)
    dW = _thread_sum(parts, None).reshape(kh, kw, o, c).transpose(2, 3, 0, 1)
    if dW_out is None:
        return (dx if need_dx else None), np.ascontiguousarray(dW)
    dW_out[...] = dW
    return (dx if need_dx else None), dW_out
