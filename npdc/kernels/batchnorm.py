"""Batch-normalisation kernels over (N, H, W) per channel.

Forward makes one pass for the sum and the sum of squares of x minus one of the channel's own
values (in float64, so the variance keeps its digits unless the spread is below 1e-8 of the
offset from that value), and a second that writes y; backward recomputes x-hat from x instead of
keeping a normalised copy, so only x is cached. The NumPy form of the same maths made ~6 full
passes over the tensor each way. In eval mode the layer is one multiply-add per element with
folded running statistics, in one pass. Each kernel can also apply a ReLU that follows the layer,
saving that layer's passes over the tensor.

The sums run image by image over contiguous (H, W) planes, each of BLOCKS fixed runs of images
keeping its own per-channel sums, added in run order at the end: the rounding does not depend on
the thread count. (Summing channel by channel instead jumps C*H*W floats from one image's plane
to the next, and measured slower in cifar-resnet20's training step.) The per-plane sums may be
reassociated so they vectorise (a sequential float64 sum waits on the adder's latency at every
element and measured about half as fast). Figures in docs/perf.md.
"""

import numba
import numpy as np

BLOCKS = 16  # runs of images whose sums are kept apart (fixed: the same rounding on any thread count)


@numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def bn_forward_train(x, gamma, beta, eps, y, mean, inv, relu):
    """y = gamma * (x - mean) * inv + beta with batch statistics, then max(y, 0) if relu; fills
    mean, inv: (C,)."""
    n, c = x.shape[0], x.shape[1]
    hw = x.shape[2] * x.shape[3]
    m = n * hw
    nb = min(n, BLOCKS)
    shift = np.empty(c)  # a value of each channel: sums about it lose nothing to a large mean
    for ch in range(c):
        shift[ch] = x[0, ch, 0, 0]
    S, Q = np.zeros((nb, c)), np.zeros((nb, c))
    for blk in numba.prange(nb):
        for i in range(blk * n // nb, (blk + 1) * n // nb):
            for ch in range(c):
                xi, sh = x[i, ch].reshape(hw), shift[ch]
                s = 0.0
                q = 0.0
                for k in range(hw):
                    d = xi[k] - sh
                    s += d
                    q += d * d
                S[blk, ch] += s
                Q[blk, ch] += q
    a, b = np.empty(c), np.empty(c)
    for ch in range(c):
        s, q = _in_order(S[:, ch]), _in_order(Q[:, ch])
        mu = shift[ch] + s / m
        r = 1.0 / np.sqrt(max(q - s * s / m, 0.0) / m + eps)
        mean[ch], inv[ch] = mu, r
        a[ch] = gamma[ch] * r
        b[ch] = beta[ch] - mu * a[ch]
    for task in numba.prange(n * c):
        i, ch = task // c, task % c
        _affine(x[i, ch].reshape(hw), a[ch], b[ch], relu, y[i, ch].reshape(hw))


@numba.njit(cache=True, inline="always")
def _in_order(v):
    """v[0] + v[1] + ... from the left (the blocks' sums, in block order)."""
    t = 0.0
    for k in range(v.size):
        t += v[k]
    return t


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
    nb = min(n, BLOCKS)
    SB, SG = np.zeros((nb, c)), np.zeros((nb, c))
    for blk in numba.prange(nb):
        for i in range(blk * n // nb, (blk + 1) * n // nb):
            for ch in range(c):
                mu, r = mean[ch], inv[ch]
                a = gamma[ch] * r
                b = beta[ch] - mu * a
                xi, di, oi = x[i, ch].reshape(hw), dy[i, ch].reshape(hw), dx[i, ch].reshape(hw)
                sb = 0.0
                sg = 0.0
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
                SB[blk, ch] += sb
                SG[blk, ch] += sg
    for ch in range(c):
        dbeta[ch], dgamma[ch] = _in_order(SB[:, ch]), _in_order(SG[:, ch])
    for task in numba.prange(n * c):
        i, ch = task // c, task % c
        mu, r = mean[ch], inv[ch]
        k_all, mb, mg = gamma[ch] * r, dbeta[ch] / m, dgamma[ch] / m
        xi, di, oi = x[i, ch].reshape(hw), dy[i, ch].reshape(hw), dx[i, ch].reshape(hw)
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
