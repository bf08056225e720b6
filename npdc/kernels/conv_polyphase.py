"""Direct 3x3 stride-2 convolution over the four polyphase components of the padded input, with
flat's register blocking (the "direct" family of Anderson & Gregg 2017; splitting a strided
convolution into stride-1 ones over the input's phases is the polyphase decomposition of
multirate filter banks, Vaidyanathan 1990, "Multirate Digital Filters, Filter Banks, Polyphase
Networks, and Applications").

Why: a stride-2 output reads every other input column, which vector loads cannot do. Split the
padded input xp into its four phases P_ab[u, v] = xp[2u + a, 2v + b]; then output (r, s) reads
tap (i, j) from phase (i % 2, j % 2) at (r + i // 2, s + j // 2), a stride-1 neighbour. Laid out
like conv_flat's planes (each phase image has Ho + 1 rows of width Wo + 1, images stacked), every
tap is a constant shift 0, 1, Wo + 1 or Wo + 2 into one of four planes, and conv_flat's kernel
shape applies unchanged: eight output channels by nine taps per input load, in tiles of lines.

The weight gradient sums dy (laid out on the same positions) times the nine shifted phase rows,
one kernel row of taps by four output channels at a time, grouped the same way whatever the
thread count.
The data gradient is im2col's (its transposed scatter has no stride-1 form this simple).
"""

import numba
import numpy as np

from npdc.kernels import conv_flat, conv_im2col
from npdc.kernels.conv_flat import BLOCK, GRAD_PLANE_FLOATS, PLANE_FLOATS, TILE, VECTOR, _nine, _taps
from npdc.kernels.im2col import out_size, refuse_unless_dense_3x3


def refuse(x_shape, W_shape, stride, pad, groups):
    """Why this primitive cannot compute the convolution, or None."""
    return refuse_unless_dense_3x3(W_shape, stride, pad, groups, want_stride=2, max_pad=1)


def _layout(n, c, ho, wo, threads, floats):
    """(images per plane g, row width wq, rows per image period, plane length, output positions
    n_t): phase row u of image k starts at (k*period + u)*wq; output line r of image k sits at
    the same place. The plane count is a whole number of rounds of `threads` whose four phase
    planes fit `floats`."""
    wq, period = wo + 1, ho + 1
    most = max(1, (floats // (4 * c)) // (period * wq))
    n_planes = -(-n // most)
    n_planes = -(-n_planes // threads) * threads
    g = -(-n // n_planes)
    n_t = ((g - 1) * period + ho) * wq
    return g, wq, period, g * period * wq + VECTOR + 2, n_t


@numba.njit(cache=True)
def _fill_phases(x, first, images, pad, wq, period, xp):
    """Write images first .. first+images-1 of x (N, C, H, W) into the zeroed phase planes
    xp (4, C, size): xp[2a + b, c, (k*period + u)*wq + v] = x[first + k, c, 2u + a - pad, 2v + b - pad]."""
    _, c, h, w = x.shape
    for k in range(images):
        for ch in range(c):
            for r in range(h):
                a, u = (r + pad) % 2, (r + pad) // 2
                line = (k * period + u) * wq
                src = x[first + k, ch, r]
                for b in range(2):
                    dst = xp[2 * a + b, ch]
                    # column 2v + b - pad of the row, for every v that lands inside it
                    for v in range((pad - b + 1) // 2, (w - 1 - b + pad) // 2 + 1):
                        dst[line + v] = src[2 * v + b - pad]


@numba.njit(cache=True, fastmath={"contract"})
def _block(xp, W9, ob, wq, start, n_t, acc):
    """acc[q, t] += sum over channels and taps of W9[ob + q, c, tap] * (phase of tap)[c, start + t + shift(tap)]."""
    for c in range(xp.shape[1]):
        w0, w1, w2, w3 = _nine(W9, ob, c), _nine(W9, ob + 1, c), _nine(W9, ob + 2, c), _nine(W9, ob + 3, c)
        w4, w5, w6, w7 = _nine(W9, ob + 4, c), _nine(W9, ob + 5, c), _nine(W9, ob + 6, c), _nine(W9, ob + 7, c)
        end = start + n_t + 1
        e, e2 = xp[0, c, start:end], xp[0, c, start + wq:end + wq]  # even rows, even columns
        f, f2 = xp[1, c, start:end], xp[1, c, start + wq:end + wq]  # even rows, odd columns
        g, h = xp[2, c, start:end], xp[3, c, start:end]  # odd rows
        a0, a1, a2, a3, a4, a5, a6, a7 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]
        for t in range(n_t):
            p0, p1, p2 = e[t], f[t], e[t + 1]
            q0, q1, q2 = g[t], h[t], g[t + 1]
            s0, s1, s2 = e2[t], f2[t], e2[t + 1]
            a0[t] = _taps(a0[t], w0, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a1[t] = _taps(a1[t], w1, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a2[t] = _taps(a2[t], w2, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a3[t] = _taps(a3[t], w3, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a4[t] = _taps(a4[t], w4, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a5[t] = _taps(a5[t], w5, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a6[t] = _taps(a6[t], w6, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a7[t] = _taps(a7[t], w7, p0, p1, p2, q0, q1, q2, s0, s1, s2)


@numba.njit(parallel=True, cache=True)
def _convolve(x, W9, pad, g, wq, period, size, n_t, y, n_threads):
    """y = the 3x3 stride-2 correlation of x zero-padded by `pad`, one stack of g images' phase
    planes per task."""
    n, c = x.shape[0], x.shape[1]
    n_planes = (n + g - 1) // g
    n_lines = n_t // wq
    per_tile = max(1, TILE // wq)
    planes = np.empty((n_threads, 4, c, size), x.dtype)
    tiles = np.empty((n_threads, BLOCK, per_tile * wq + VECTOR), y.dtype)
    for plane in numba.prange(n_planes):
        xp, acc = planes[numba.get_thread_id()], tiles[numba.get_thread_id()]
        images = min(g, n - plane * g)
        xp[:] = 0
        _fill_phases(x, plane * g, images, pad, wq, period, xp)
        for ob in range(0, W9.shape[0], BLOCK):
            for first in range(0, n_lines, per_tile):
                lines = min(per_tile, n_lines - first)
                acc[:] = 0
                _block(xp, W9, ob, wq, first * wq, -(-lines * wq // VECTOR) * VECTOR, acc)
                conv_flat.store_lines(acc, first, lines, wq, period, images, plane * g, ob, y)


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C, 3, 3) -> y: (N, O, Ho, Wo), Ho = (H + 2*pad - 3) // 2 + 1."""
    n, c, h, w = x.shape
    o = W.shape[0]
    ho, wo = out_size(h, 3, 2, pad), out_size(w, 3, 2, pad)
    threads = numba.get_num_threads()
    g, wq, period, size, n_t = _layout(n, c, ho, wo, threads, PLANE_FLOATS)
    y = np.empty((n, o, ho, wo), x.dtype)
    _convolve(x, conv_flat.blocked(W.reshape(o, c, 9)), pad, g, wq, period, size, n_t, y, threads)
    return y


@numba.njit(cache=True, fastmath={"contract", "reassoc"})
def _three_taps(dyp, ob, n_t, zero, out, xa, sa, ka, xb, sb, kb, xc, sc, kc):
    """out[q, ka] += sum_t dyp[ob + q, t] * xa[t + sa] for q < 4, and likewise for taps kb and
    kc: twelve sums in the input precision (`zero` of its type), as in conv_flat's weight rows."""
    d0, d1, d2, d3 = dyp[ob], dyp[ob + 1], dyp[ob + 2], dyp[ob + 3]
    ra, rb, rc = xa[sa:sa + n_t], xb[sb:sb + n_t], xc[sc:sc + n_t]
    s0 = s1 = s2 = s3 = u0 = u1 = u2 = u3 = v0 = v1 = v2 = v3 = zero
    for t in range(n_t):
        ea, eb, ec = ra[t], rb[t], rc[t]
        s0 += d0[t] * ea
        s1 += d1[t] * ea
        s2 += d2[t] * ea
        s3 += d3[t] * ea
        u0 += d0[t] * eb
        u1 += d1[t] * eb
        u2 += d2[t] * eb
        u3 += d3[t] * eb
        v0 += d0[t] * ec
        v1 += d1[t] * ec
        v2 += d2[t] * ec
        v3 += d3[t] * ec
    for q, a, b, c in ((0, s0, u0, v0), (1, s1, u1, v1), (2, s2, u2, v2), (3, s3, u3, v3)):
        out[q, ka] += a
        out[q, kb] += b
        out[q, kc] += c


@numba.njit(parallel=True, cache=True)
def _weight_grad(x, dy, pad, g, wq, period, size, n_t, parts, n_threads):
    """parts[p] (O4, C, 9) = stack p's sum of dy (zero off the output lines) times each tap's
    shifted phase plane, kernel row by kernel row (one stack per task, as conv_flat's)."""
    n, c = x.shape[0], x.shape[1]
    n_planes, o4 = parts.shape[0], parts.shape[1]
    xs = np.empty((n_threads, 4, c, size), x.dtype)
    ds = np.empty((n_threads, o4, n_t), x.dtype)
    zero = np.zeros(1, x.dtype)[0]
    for plane in numba.prange(n_planes):
        xp, d = xs[numba.get_thread_id()], ds[numba.get_thread_id()]
        images = min(g, n - plane * g)
        xp[:] = 0
        d[:] = 0
        _fill_phases(x, plane * g, images, pad, wq, period, xp)
        conv_flat.fill_rows(dy, plane * g, images, wq, period, d)
        for ob in range(0, o4, 4):
            for ch in range(c):
                out = parts[plane, ob:ob + 4, ch]
                e, f, g_, h = xp[0, ch], xp[1, ch], xp[2, ch], xp[3, ch]
                _three_taps(d, ob, n_t, zero, out, e, 0, 0, f, 0, 1, e, 1, 2)
                _three_taps(d, ob, n_t, zero, out, g_, 0, 3, h, 0, 4, g_, 1, 5)
                _three_taps(d, ob, n_t, zero, out, e, wq, 6, f, wq, 7, e, wq + 1, 8)


def weight_gradient(x, dy, pad):
    """dW (O, C, 3, 3) of the 3x3 stride-2 convolution of x (N, C, H, W) padded by `pad`."""
    n, c = x.shape[:2]
    o, ho, wo = dy.shape[1:]
    # the same layout whatever the thread count (an even stack count, for two threads), and the
    # stacks' sums added in order, so the sums are grouped the same way
    g, wq, period, size, n_t = _layout(n, c, ho, wo, 2, GRAD_PLANE_FLOATS)
    o4 = -(-o // 4) * 4
    parts = np.zeros((-(-n // g), o4, c, 9))
    _weight_grad(x, dy, pad, g, wq, period, size, n_t, parts, numba.get_num_threads())
    return parts.sum(axis=0)[:o].reshape(o, c, 3, 3).astype(x.dtype)


def backward(x, W, dy, stride, pad, groups, need_dx):
    """(dx or None, dW) for dy: (N, O, Ho, Wo)."""
    dx = conv_im2col.data_gradient(x.shape, W, dy, stride, pad) if need_dx else None
    return dx, weight_gradient(x, dy, pad)
