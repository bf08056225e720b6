"""Batch-normalisation kernels over (N, H, W) per channel, parallel over channels.

Forward makes one pass for the sum and the sum of squares of x minus one of the channel's own
values (in float64, so the variance keeps its digits unless the spread is below 1e-8 of the
offset from that value), and a second that writes y (measured: 1.2-1.35x the three-pass form at
cifar-resnet20's shapes, same y bits there); backward recomputes x-hat from x instead of keeping
a normalised copy, so only x is cached. The NumPy form of the same maths made ~6 full passes over
the tensor each way. The per-channel sums may be reassociated so they vectorise (a sequential
float64 sum waits on the adder's latency at every element: 2x slower forward); each channel is
summed by one thread, so the rounding does not depend on the thread count. In eval mode the
layer is one multiply-add per element with folded running statistics, done here in one pass
instead of NumPy's two with a temporary. Each kernel can also apply a ReLU that follows the
layer, saving that layer's passes over the tensor.
"""
import numba
import numpy as np


@numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def bn_forward_train(x, gamma, beta, eps, y, mean, inv, relu):
    """y = gamma * (x - mean) * inv + beta with batch statistics, then max(y, 0) if relu; fills
    mean, inv: (C,)."""
    n, c = x.shape[0], x.shape[1]
    hw = x.shape[2] * x.shape[3]
    m = n * hw
    for ch in numba.prange(c):
        shift = np.float64(x[0, ch, 0, 0])  # a value of the channel: sums about it lose nothing to a large mean
        s = 0.0
        q = 0.0
        for i in range(n):
            xi = x[i, ch].reshape(hw)
            for k in range(hw):
                d = xi[k] - shift
                s += d
                q += d * d
        mu = shift + s / m
        v = max(q - s * s / m, 0.0)
        r = 1.0 / np.sqrt(v / m + eps)
        mean[ch], inv[ch] = mu, r
        a = gamma[ch] * r
        b = beta[ch] - mu * a
        for i in range(n):
            _affine(x[i, ch].reshape(hw), a, b, relu, y[i, ch].reshape(hw))


@numba.njit(cache=True, inline="always")
def _affine(xi, a, b, relu, yi):
    """yi = xi * a + b, rectified if relu (NaN stays NaN, as in relu_forward)."""
    if relu:
        for k in range(xi.size):
            v = xi[k] * a + b
            yi[k] = 0 if v <= 0 else v
    else:
        for k in range(xi.size):
            yi[k] = xi[k] * a + b


@numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def bn_backward_train(x, dy, gamma, beta, mean, inv, dx, dgamma, dbeta, relu):
    """Gradients through batch statistics: fills dx and dgamma, dbeta: (C,) (overwritten).

    With relu, dy is the gradient of max(bn(x), 0): the forward's output is recomputed from x
    (the same expression, rounded to x's type by storing it in dx first) to mask dy, so the ReLU
    costs no pass of its own and its output need not be kept."""
    n, c = x.shape[0], x.shape[1]
    hw = x.shape[2] * x.shape[3]
    m = n * hw
    for ch in numba.prange(c):
        mu, r = mean[ch], inv[ch]
        a = gamma[ch] * r
        b = beta[ch] - mu * a
        sb = 0.0
        sg = 0.0
        for i in range(n):
            xi = x[i, ch].reshape(hw)
            di = dy[i, ch].reshape(hw)
            oi = dx[i, ch].reshape(hw)
            if relu:  # separate loops: a test of relu inside one kept it from vectorising
                for k in range(hw):
                    oi[k] = xi[k] * a + b
                    g = di[k] if oi[k] > 0 else 0
                    sb += g
                    sg += g * (xi[k] - mu) * r
            else:
                for k in range(hw):
                    sb += di[k]
                    sg += di[k] * (xi[k] - mu) * r
        dbeta[ch], dgamma[ch] = sb, sg
        k_all = gamma[ch] * r
        mb, mg = sb / m, sg / m
        for i in range(n):
            xi = x[i, ch].reshape(hw)
            di = dy[i, ch].reshape(hw)
            oi = dx[i, ch].reshape(hw)
            if relu:
                for k in range(hw):
                    g = di[k] if oi[k] > 0 else 0
                    oi[k] = k_all * (g - mb - (xi[k] - mu) * r * mg)
            else:
                for k in range(hw):
                    oi[k] = k_all * (di[k] - mb - (xi[k] - mu) * r * mg)


@numba.njit(parallel=True, cache=True)
def bn_forward_eval(x, scale, shift, y, relu):
    """y[:, c] = x[:, c] * scale[c] + shift[c] for x, y: (N, C, H, W), rectified if relu."""
    n, c = x.shape[0], x.shape[1]
    hw = x.shape[2] * x.shape[3]
    for task in numba.prange(n * c):
        i, ch = task // c, task % c
        _affine(x[i, ch].reshape(hw), scale[ch], shift[ch], relu, y[i, ch].reshape(hw))
