"""Direct 3x3 stride-2 convolution over the four polyphase components of the padded input, as an
implicit GEMM over (channel, tap) (the "direct" family of Anderson & Gregg 2017; splitting a strided
convolution into stride-1 ones over the input's phases is the polyphase decomposition of
multirate filter banks, Vaidyanathan 1990, "Multirate Digital Filters, Filter Banks, Polyphase
Networks, and Applications").

Why: a stride-2 output reads every other input column, which vector loads cannot do. Split the
padded input xp into its four phases P_ab[u, v] = xp[2u + a, 2v + b]; then output (r, s) reads
tap (i, j) from phase (i % 2, j % 2) at (r + i // 2, s + j // 2), a stride-1 neighbour. Laid out
like conv_flat's planes (each phase image has Ho + 1 rows of width Wo + 1, images stacked), every
tap is a constant shift 0, 1, Wo + 1 or Wo + 2 into one of four planes. The forward is then a GEMM
whose K axis runs over (channel, tap) and whose B rows are those shifted plane rows, computed by
winograd4's register-blocked kernel shape (four outputs by sixteen positions held through the
whole reduction; measured 8-23 % faster than flat's eight-output sweep, which reads and writes
its accumulators once per channel).

The weight gradient sums dy (laid out on the same positions) times the nine shifted phase rows,
one kernel row of taps by four output channels at a time, grouped the same way whatever the
thread count.
The data gradient is im2col's (its transposed scatter has no stride-1 form this simple).
"""

import numba
import numpy as np

from npdc.kernels import conv_flat, conv_im2col
from npdc.kernels.conv_flat import GRAD_PLANE_FLOATS, PLANE_FLOATS, TILE, VECTOR
from npdc.kernels.conv_winograd4 import J, straight_line_vectorised
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
    """Write images first .. first+images-1 of x (N, C, H, W) into the phase planes xp (4, C, size):
    xp[2a + b, c, (k*period + u)*wq + v] = x[first + k, c, 2u + a - pad, 2v + b - pad]. Positions
    no pixel lands on are left as they are (zero in a zeroed plane). One pass over each input row
    writes both column phases: pixel 2v goes to column v of phase `pad`, pixel 2v + 1 to column
    v + pad of the other. Unsigned indices let LLVM vectorise that split (measured 1.6-1.9x)."""
    _, c, h, w = x.shape
    half, shift, two = numba.uint64(w // 2), numba.uint64(pad), numba.uint64(2)
    for k in range(images):
        for ch in range(c):
            for r in range(h):
                a, u = (r + pad) % 2, (r + pad) // 2
                line = numba.uint64((k * period + u) * wq)
                src = x[first + k, ch, r]
                evens, odds = xp[2 * a + pad, ch], xp[2 * a + 1 - pad, ch]
                for v in range(half):
                    evens[line + v] = src[two * v]
                    odds[line + shift + v] = src[two * v + numba.uint64(1)]
                if w % 2:
                    evens[line + half] = src[w - 1]


COLUMNS = 64  # output positions per run that every block of outputs sweeps (measured: 16 to 128 alike)


def _taps_gemm_body(xp, Wb, taps, start, T, acc):
    """acc[o, t] = sum over channels c and taps k of
    Wb[o // 4, c, k, o % 4] * xp[taps[k, 0], c, start + t + taps[k, 1]], for t < T (a multiple of 16).

    winograd4's GEMM kernel shape: a block of four output channels by sixteen positions is summed
    over every (channel, tap) in 64 scalars that the SLP vectoriser packs into eight registers, and
    written once. Positions go in runs of COLUMNS, each run swept by every block of outputs, so the
    inputs a run reads stay in L1 while the blocks' weights stream through."""
    n_b, n_c, n_k, _ = Wb.shape
    z = np.zeros(1, xp.dtype)[0]
    for tc in range(0, T, COLUMNS):
        for ob in range(n_b):
            Wo = Wb[ob]
            o = 4 * ob
            for t0 in range(tc, min(tc + COLUMNS, T), 16):
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = a12 = a13 = a14 = a15 = z
                b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = b8 = b9 = b10 = b11 = b12 = b13 = b14 = b15 = z
                f0 = f1 = f2 = f3 = f4 = f5 = f6 = f7 = f8 = f9 = f10 = f11 = f12 = f13 = f14 = f15 = z
                h0 = h1 = h2 = h3 = h4 = h5 = h6 = h7 = h8 = h9 = h10 = h11 = h12 = h13 = h14 = h15 = z
                for c in range(n_c):
                    wc = Wo[c]
                    for k in range(n_k):
                        v = xp[taps[k, 0], c]
                        p = numba.uint64(start + t0 + taps[k, 1])
                        e0, e1, e2, e3 = v[p], v[p + J[1]], v[p + J[2]], v[p + J[3]]
                        e4, e5, e6, e7 = v[p + J[4]], v[p + J[5]], v[p + J[6]], v[p + J[7]]
                        e8, e9, e10, e11 = v[p + J[8]], v[p + J[9]], v[p + J[10]], v[p + J[11]]
                        e12, e13, e14, e15 = v[p + J[12]], v[p + J[13]], v[p + J[14]], v[p + J[15]]
                        u = wc[k]
                        w = u[0]
                        a0, a1, a2, a3 = a0 + w * e0, a1 + w * e1, a2 + w * e2, a3 + w * e3
                        a4, a5, a6, a7 = a4 + w * e4, a5 + w * e5, a6 + w * e6, a7 + w * e7
                        a8, a9, a10, a11 = a8 + w * e8, a9 + w * e9, a10 + w * e10, a11 + w * e11
                        a12, a13, a14, a15 = a12 + w * e12, a13 + w * e13, a14 + w * e14, a15 + w * e15
                        w = u[1]
                        b0, b1, b2, b3 = b0 + w * e0, b1 + w * e1, b2 + w * e2, b3 + w * e3
                        b4, b5, b6, b7 = b4 + w * e4, b5 + w * e5, b6 + w * e6, b7 + w * e7
                        b8, b9, b10, b11 = b8 + w * e8, b9 + w * e9, b10 + w * e10, b11 + w * e11
                        b12, b13, b14, b15 = b12 + w * e12, b13 + w * e13, b14 + w * e14, b15 + w * e15
                        w = u[2]
                        f0, f1, f2, f3 = f0 + w * e0, f1 + w * e1, f2 + w * e2, f3 + w * e3
                        f4, f5, f6, f7 = f4 + w * e4, f5 + w * e5, f6 + w * e6, f7 + w * e7
                        f8, f9, f10, f11 = f8 + w * e8, f9 + w * e9, f10 + w * e10, f11 + w * e11
                        f12, f13, f14, f15 = f12 + w * e12, f13 + w * e13, f14 + w * e14, f15 + w * e15
                        w = u[3]
                        h0, h1, h2, h3 = h0 + w * e0, h1 + w * e1, h2 + w * e2, h3 + w * e3
                        h4, h5, h6, h7 = h4 + w * e4, h5 + w * e5, h6 + w * e6, h7 + w * e7
                        h8, h9, h10, h11 = h8 + w * e8, h9 + w * e9, h10 + w * e10, h11 + w * e11
                        h12, h13, h14, h15 = h12 + w * e12, h13 + w * e13, h14 + w * e14, h15 + w * e15
                p = numba.uint64(t0)
                m = acc[o]
                m[p], m[p + J[1]], m[p + J[2]], m[p + J[3]] = a0, a1, a2, a3
                m[p + J[4]], m[p + J[5]], m[p + J[6]], m[p + J[7]] = a4, a5, a6, a7
                m[p + J[8]], m[p + J[9]], m[p + J[10]], m[p + J[11]] = a8, a9, a10, a11
                m[p + J[12]], m[p + J[13]], m[p + J[14]], m[p + J[15]] = a12, a13, a14, a15
                m = acc[o + 1]
                m[p], m[p + J[1]], m[p + J[2]], m[p + J[3]] = b0, b1, b2, b3
                m[p + J[4]], m[p + J[5]], m[p + J[6]], m[p + J[7]] = b4, b5, b6, b7
                m[p + J[8]], m[p + J[9]], m[p + J[10]], m[p + J[11]] = b8, b9, b10, b11
                m[p + J[12]], m[p + J[13]], m[p + J[14]], m[p + J[15]] = b12, b13, b14, b15
                m = acc[o + 2]
                m[p], m[p + J[1]], m[p + J[2]], m[p + J[3]] = f0, f1, f2, f3
                m[p + J[4]], m[p + J[5]], m[p + J[6]], m[p + J[7]] = f4, f5, f6, f7
                m[p + J[8]], m[p + J[9]], m[p + J[10]], m[p + J[11]] = f8, f9, f10, f11
                m[p + J[12]], m[p + J[13]], m[p + J[14]], m[p + J[15]] = f12, f13, f14, f15
                m = acc[o + 3]
                m[p], m[p + J[1]], m[p + J[2]], m[p + J[3]] = h0, h1, h2, h3
                m[p + J[4]], m[p + J[5]], m[p + J[6]], m[p + J[7]] = h4, h5, h6, h7
                m[p + J[8]], m[p + J[9]], m[p + J[10]], m[p + J[11]] = h8, h9, h10, h11
                m[p + J[12]], m[p + J[13]], m[p + J[14]], m[p + J[15]] = h12, h13, h14, h15


with straight_line_vectorised():
    _taps_gemm = numba.njit(["void(f4[:, :, ::1], f4[:, :, :, ::1], i8[:, ::1], i8, i8, f4[:, ::1])",
                             "void(f8[:, :, ::1], f8[:, :, :, ::1], i8[:, ::1], i8, i8, f8[:, ::1])"],
                            cache=True, fastmath={"contract"})(_taps_gemm_body)


@numba.njit(cache=True)
def _store(acc, first, lines, wq, period, images, i0, y):
    """Copy the output lines among plane lines first .. first+lines-1 (line = k*period + r for
    image i0 + k, row r; the rest are padding) from the tile acc (O4, lines*wq) into y. Lines
    outer: one division per line, not per line and channel (measured 1.6-5x at 4-16 columns)."""
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    for line in range(first, first + lines):
        k, r = line // period, line % period
        if r < ho and k < images:
            start, dst = numba.uint64((line - first) * wq), y[i0 + k]
            for q in range(o):
                row, a = dst[q, r], acc[q]
                for col in range(numba.uint64(wo)):
                    row[col] = a[start + col]


@numba.njit(parallel=True, cache=True)
def _convolve(x, Wb, taps, pad, g, wq, period, size, n_t, y, n_threads):
    """y = the 3x3 stride-2 correlation of x zero-padded by `pad`, one stack of g images' phase
    planes per task. The planes are zeroed once: a task writes only pixel positions, always the
    same ones for its k-th image, and a short last task's leftover images are never stored (no
    output line of image k reads past its own period)."""
    n, c = x.shape[0], x.shape[1]
    n_planes = (n + g - 1) // g
    n_lines = n_t // wq
    per_tile = max(1, TILE // wq)
    planes = np.zeros((n_threads, 4, c, size), x.dtype)
    tiles = np.empty((n_threads, 4 * Wb.shape[0], per_tile * wq + VECTOR), y.dtype)
    for plane in numba.prange(n_planes):
        xp, acc = planes[numba.get_thread_id()], tiles[numba.get_thread_id()]
        images = min(g, n - plane * g)
        _fill_phases(x, plane * g, images, pad, wq, period, xp)
        for first in range(0, n_lines, per_tile):
            lines = min(per_tile, n_lines - first)
            _taps_gemm(xp, Wb, taps, first * wq, -(-lines * wq // VECTOR) * VECTOR, acc)
            _store(acc, first, lines, wq, period, images, plane * g, y)


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C, 3, 3) -> y: (N, O, Ho, Wo), Ho = (H + 2*pad - 3) // 2 + 1."""
    n, c, h, w = x.shape
    o = W.shape[0]
    ho, wo = out_size(h, 3, 2, pad), out_size(w, 3, 2, pad)
    threads = numba.get_num_threads()
    g, wq, period, size, n_t = _layout(n, c, ho, wo, threads, PLANE_FLOATS)
    # tap (i, j) reads phase (i % 2, j % 2) shifted by i // 2 lines and j // 2 columns
    taps = np.array([[2 * (i % 2) + j % 2, (i // 2) * wq + j // 2] for i in range(3) for j in range(3)],
                    np.int64)
    o4 = -(-o // 4) * 4
    Wb = np.zeros((o4, c, 9), x.dtype)
    Wb[:o] = W.reshape(o, c, 9)
    Wb = np.ascontiguousarray(Wb.reshape(o4 // 4, 4, c, 9).transpose(0, 2, 3, 1))
    y = np.empty((n, o, ho, wo), x.dtype)
    _convolve(x, Wb, taps, pad, g, wq, period, size, n_t, y, threads)
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
