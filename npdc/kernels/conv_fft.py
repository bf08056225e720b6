"""Convolution in the frequency domain (Mathieu, Henaff & LeCun 2014, "Fast Training of
Convolutional Networks through FFTs"): each padded input plane and each kernel is transformed
once, the sum over input channels becomes a batched complex GEMM per frequency, and one inverse
transform per output plane gives the full correlation, of which the strided valid part is kept.

With the transform size equal to the padded input (Hp, Wp) nothing wraps around: the forward
correlation, the data gradient (a full convolution of dy, of size Hp) and the weight gradient
(a correlation of x with dy, indices below k) all fit. A stride s is handled by computing the
stride-1 result and keeping every s-th pixel (forward), or by spreading dy on the stride-1 grid
with zeros (backward). Cost does not grow with the kernel size, which is where it pays off.
Uses scipy.fft with Numba's thread count as workers. Refuses 1x1 kernels (nothing to gain).
"""

import numba
import numpy as np
import scipy.fft


def refuse(x_shape, W_shape, stride, pad, groups):
    """Why FFT convolution is not offered for this shape, or None."""
    return "a 1x1 kernel has no neighbourhood to transform" if W_shape[2] * W_shape[3] == 1 else None


def _spectra(x, pad, shape):
    """rfft2 of the zero-padded planes of x: (N, C, H, W) -> (N, C, Hp, Wp//2+1) complex."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return scipy.fft.rfft2(xp, s=shape, workers=numba.get_num_threads())


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C/g, kh, kw) -> y: (N, O, Ho, Wo)."""
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    shape = (h + 2 * pad, w + 2 * pad)
    X = _spectra(x, pad, shape)
    K = np.conj(scipy.fft.rfft2(W, s=shape))
    og = o // groups
    Y = np.concatenate([np.einsum("ncuv,ocuv->nouv", X[:, g * cg:(g + 1) * cg], K[g * og:(g + 1) * og],
                                  optimize=True) for g in range(groups)], axis=1)
    full = scipy.fft.irfft2(Y, s=shape, workers=numba.get_num_threads())
    ho, wo = (shape[0] - kh) // stride + 1, (shape[1] - kw) // stride + 1
    y = full[:, :, :(ho - 1) * stride + 1:stride, :(wo - 1) * stride + 1:stride]
    return np.ascontiguousarray(y, dtype=x.dtype)


def backward(x, W, dy, stride, pad, groups, need_dx):
    """(dx or None, dW) for dy: (N, O, Ho, Wo)."""
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    og = o // groups
    shape = (h + 2 * pad, w + 2 * pad)
    grid = np.zeros((n, o) + shape, x.dtype)  # dy on the stride-1 grid of correlation outputs
    grid[:, :, :dy.shape[2] * stride:stride, :dy.shape[3] * stride:stride] = dy
    D = scipy.fft.rfft2(grid, workers=numba.get_num_threads())
    X = _spectra(x, pad, shape)
    dWf = np.concatenate([np.einsum("nouv,ncuv->ocuv", np.conj(D[:, g * og:(g + 1) * og]),
                                    X[:, g * cg:(g + 1) * cg], optimize=True)
                          for g in range(groups)], axis=0)
    dW = scipy.fft.irfft2(dWf, s=shape)[:, :, :kh, :kw]
    dW = np.ascontiguousarray(dW, dtype=W.dtype)
    if not need_dx:
        return None, dW
    K = scipy.fft.rfft2(W, s=shape)
    dXf = np.concatenate([np.einsum("nouv,ocuv->ncuv", D[:, g * og:(g + 1) * og], K[g * og:(g + 1) * og],
                                    optimize=True) for g in range(groups)], axis=1)
    dxp = scipy.fft.irfft2(dXf, s=shape, workers=numba.get_num_threads())
    dx = dxp[:, :, pad:pad + h, pad:pad + w]
    return np.ascontiguousarray(dx, dtype=x.dtype), dW
