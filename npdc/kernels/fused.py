"""Inference-only convolution and linear kernels with the layer tail fused in: per-channel scale
and shift (a folded batch norm, Ioffe & Szegedy 2015), an optional residual (identity, or the
option-A zero-padded subsample of He et al. 2016) and ReLU / PReLU, written once into the output.

Two conv primitives (the framing of Anderson & Gregg 2017, "Optimal DNN Primitive Selection"):
- `conv_direct`: the direct loop nest, parallel over (image, output channel). At batch 1 the
  im2col + GEMM path of npdc.kernels.conv has one image for its threads to share; this one gives
  each thread whole output planes. Padding is never materialised: for every kernel tap the range
  of output pixels whose input lies inside the image is computed, and only it is visited.
- `conv_gemm`: im2col + GEMM (Chellapilla et al. 2006), parallel over images, for large batches.
Every buffer (accumulators, columns, outputs) is handed in; nothing is allocated per call.
"""

import numba
import numpy as np

from npdc.kernels.im2col import im2col
from npdc.threads import single_thread_numba_blas

single_thread_numba_blas()

RES_NONE, RES_IDENTITY, RES_ZEROPAD = 0, 1, 2


@numba.njit(cache=True)
def tap_range(size_in, size_out, k_off, stride, pad):
    """[lo, hi) of output positions whose input position o*stride + k_off - pad is in the image."""
    lo = 0
    while lo < size_out and lo * stride + k_off - pad < 0:
        lo += 1
    hi = size_out
    while hi > lo and (hi - 1) * stride + k_off - pad >= size_in:
        hi -= 1
    return lo, hi


@numba.njit(cache=True)
def add_tap(acc, xc, w, i, j, stride, pad, ho, wo):
    """acc (ho*wo,) += w * the input plane xc (H, W) under kernel tap (i, j)."""
    p0, p1 = tap_range(xc.shape[0], ho, i, stride, pad)
    q0, q1 = tap_range(xc.shape[1], wo, j, stride, pad)
    for p in range(p0, p1):
        row = xc[p * stride + i - pad]
        base = p * wo
        if stride == 1:
            shift = j - pad
            for q in range(q0, q1):
                acc[base + q] += w * row[q + shift]
        else:
            for q in range(q0, q1):
                acc[base + q] += w * row[q * stride + j - pad]


@numba.njit(cache=True)
def finish_plane(acc, y, n, o, scale, shift, act, slopes, res, res_mode, res_front, res_stride):
    """y[n, o] = act(acc * scale[o] + shift[o] + residual); acc is the flat (Ho*Wo,) sum.
    An identity residual may be y itself: each element is read before it is overwritten."""
    ho, wo = y.shape[2], y.shape[3]
    s, b, a = scale[o], shift[o], slopes[o]
    c = o - res_front
    use_pad = res_mode == RES_ZEROPAD and 0 <= c < res.shape[1]
    for p in range(ho):
        for q in range(wo):
            v = acc[p * wo + q] * s + b
            if res_mode == RES_IDENTITY:
                v += res[n, o, p, q]
            elif use_pad:
                v += res[n, c, p * res_stride, q * res_stride]
            if act and v < 0:
                v *= a
            y[n, o, p, q] = v


@numba.njit(parallel=True, cache=True)
def conv_direct(x, W2, kh, kw, stride, pad, scale, shift, act, slopes, res, res_mode, res_front,
                res_stride, y, acc):
    """x: (N, C, H, W), W2: (O, C*kh*kw) -> y: (N, O, Ho, Wo) with the fused tail;
    acc: (threads, >= Ho*Wo) scratch, one row per Numba thread."""
    n_img, c_in = x.shape[0], x.shape[1]
    o_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    taps = kh * kw
    for t in numba.prange(n_img * o_out):
        n, o = t // o_out, t % o_out
        a = acc[numba.get_thread_id()]
        a[:ho * wo] = 0
        for r in range(c_in * taps):
            w = W2[o, r]
            tap = r % taps
            add_tap(a, x[n, r // taps], w, tap // kw, tap % kw, stride, pad, ho, wo)
        finish_plane(a, y, n, o, scale, shift, act, slopes, res, res_mode, res_front, res_stride)


@numba.njit(parallel=True, cache=True)
def conv_gemm(x, W2, kh, kw, stride, pad, scale, shift, act, slopes, res, res_mode, res_front,
              res_stride, y, cols, acc):
    """As conv_direct, by im2col + GEMM per image; cols: (threads, >= C*kh*kw*Ho*Wo) and
    acc: (threads, >= O*Ho*Wo) scratch."""
    n_img, c_in = x.shape[0], x.shape[1]
    o_out, plane = y.shape[1], y.shape[2] * y.shape[3]
    rows = W2.shape[1]
    n_threads = cols.shape[0]
    for t in numba.prange(n_threads):
        col = cols[t, :rows * plane].reshape((rows, plane))
        out = acc[t, :o_out * plane].reshape((o_out, plane))
        for n in range(t, n_img, n_threads):
            im2col(x[n], 0, c_in, kh, kw, stride, pad, col)
            np.dot(W2, col, out)
            for o in range(o_out):
                finish_plane(out[o], y, n, o, scale, shift, act, slopes, res, res_mode, res_front,
                             res_stride)


@numba.njit(cache=True)
def finish_rows(acc, scale, shift, act, slopes, y):
    """y (N, O) = act(acc * scale + shift), per column."""
    for n in range(y.shape[0]):
        for o in range(y.shape[1]):
            v = acc[n, o] * scale[o] + shift[o]
            if act and v < 0:
                v *= slopes[o]
            y[n, o] = v


@numba.njit(parallel=True, cache=True, fastmath=True)
def linear_direct(x, W, scale, shift, act, slopes, y):
    """x: (N, F), W: (O, F) -> y: (N, O) = act((x W^T) * scale + shift), parallel over O."""
    for o in numba.prange(W.shape[0]):
        w = W[o]
        for n in range(x.shape[0]):
            xn = x[n]
            s = np.float32(0.0)
            for f in range(w.shape[0]):
                s += w[f] * xn[f]
            v = s * scale[o] + shift[o]
            if act and v < 0:
                v *= slopes[o]
            y[n, o] = v


@numba.njit(cache=True, fastmath=True)
def global_avg_pool(x, y):
    """x: (N, C, H, W) -> y: (N, C), the mean of each plane."""
    inv = np.float32(1.0 / (x.shape[2] * x.shape[3]))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            s = np.float32(0.0)
            for p in range(x.shape[2]):
                for q in range(x.shape[3]):
                    s += x[n, c, p, q]
            y[n, c] = s * inv
