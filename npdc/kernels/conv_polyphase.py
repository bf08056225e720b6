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
whose K axis runs over (channel, tap) and whose B rows are those shifted plane rows, computed in
register blocks of eight outputs by 32 positions (see _taps_gemm_body).

The weight gradient sums dy (laid out on the same positions) times the nine shifted phase rows,
one kernel row of taps by four output channels at a time, grouped the same way whatever the
thread count.
The data gradient is im2col's (its transposed scatter has no stride-1 form this simple).
"""

import numba
import numpy as np

from npdc.kernels import conv_flat, conv_im2col
from npdc.kernels.conv_flat import GRAD_PLANE_FLOATS, PLANE_FLOATS, TILE
from npdc.kernels.im2col import out_size, refuse_unless_dense_3x3
from npdc.kernels.simd import deinterleave16, fma16, ld16, prefer_512_bit_vectors, st16, straight_line_compiled


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
    return g, wq, period, g * period * wq + LANES + 2, n_t


@numba.njit(cache=True)
def fill_phases(x, first, images, pad, wq, period, xp):
    """Write images first .. first+images-1 of x (N, C, H, W) into the phase planes xp (4, C, size):
    xp[2a + b, c, (k*period + u)*wq + v] = x[first + k, c, 2u + a - pad, 2v + b - pad]. Positions
    no pixel lands on are left as they are (zero in a zeroed plane). One pass over each input row
    writes both column phases: pixel 2v goes to column v of phase `pad`, pixel 2v + 1 to column
    v + pad of the other, sixteen pixels at a time through deinterleave16 (one vector load and
    two shuffles where scalar code moves one pixel at a time: measured about twice as fast on
    16- and 32-channel layers, docs/perf.md), the last sixteen overlapping the ones before, and
    rows narrower than sixteen one pixel at a time."""
    _, c, h, w = x.shape
    half, hw, size = w // 2, h * w, xp.shape[2]
    for k in range(images):
        for ch in range(c):
            for r in range(h):
                a, u = (r + pad) % 2, (r + pad) // 2
                line = (k * period + u) * wq
                evens, odds = 2 * a + pad, 2 * a + 1 - pad
                src = ((first + k) * c + ch) * hw + r * w
                e, o = (evens * c + ch) * size + line, (odds * c + ch) * size + line + pad
                if half >= 8:
                    for v0 in range(0, half, 8):
                        v = min(v0, half - 8)  # the last eight may overlap the ones before: same values
                        deinterleave16(x, src + 2 * v, xp, e + v, xp, o + v)
                else:
                    for v in range(half):
                        xp[evens, ch, line + v] = x[first + k, ch, r, 2 * v]
                        xp[odds, ch, line + pad + v] = x[first + k, ch, r, 2 * v + 1]
                if w % 2:
                    xp[evens, ch, line + half] = x[first + k, ch, r, w - 1]


ROWS, LANES = 8, 32  # register block: output channels by positions (sixteen 16-lane sums)
COLUMNS = 64  # output positions per run that every block of outputs sweeps
CHANNELS = 16  # input channels per sweep: their 16 x 9 B rows of a block stay in L1
HALF = np.uint64(16)  # a 32-lane tuple is two 16-lane ones (npdc.kernels.simd)


@numba.njit(cache=True, inline="always")
def _lanes(v, q):
    """v[q .. q+31] as a tuple."""
    return ld16(v, q) + ld16(v, q + HALF)


@numba.njit(cache=True, inline="always")
def _madd(s, w, e):
    """s + w * e lane by lane, for 32-tuples s and e."""
    return fma16(s[:16], w, e[:16]) + fma16(s[16:], w, e[16:])


@numba.njit(cache=True, inline="always")
def _tap(S, e, w):
    """One tap's multiply-adds into the eight 32-tuples S: S[r] + w[r] * e."""
    return (_madd(S[0], w[0], e), _madd(S[1], w[1], e), _madd(S[2], w[2], e),
            _madd(S[3], w[3], e), _madd(S[4], w[4], e), _madd(S[5], w[5], e),
            _madd(S[6], w[6], e), _madd(S[7], w[7], e))


@numba.njit(cache=True, inline="always")
def _put(m, p, s):
    """m[p .. p+31] = the 32-tuple s."""
    st16(m, p, s[:16])
    st16(m, p + HALF, s[16:])


def _taps_gemm_body(xp, Wb, wq, start, T, acc):
    """acc[o, t] = sum over channels c and taps (i, j) of Wb[o // 8, c, 3i + j, o % 8] times
    phase (i % 2, j % 2) of channel c at start + t + (i // 2)*wq + j // 2, for t < T (a multiple
    of 32).

    A block of eight output channels by 32 positions is summed in 256 scalars that the SLP
    vectoriser packs into sixteen 512-bit registers; per (channel, tap), two vector loads and
    eight broadcasts feed sixteen multiply-adds. The block is sized for AVX-512's 32 vector
    registers (sixteen sums, two loads, eight broadcasts); with 256-bit vectors it would need more
    registers than AVX2 has. Six outputs by 32, and three by 32 in 8-lane registers under LLVM's
    default 256-bit preference, measured slower on whole forwards. The nine taps are written out,
    so their offsets are additions, not table lookups (measured faster). Positions go in runs of
    COLUMNS and channels in groups of CHANNELS, each run and group swept by every block of
    outputs, so what a block reads stays in L1 while the weights stream through; the sums go back
    to acc between groups. Figures in docs/perf.md."""
    prefer_512_bit_vectors()
    n_b, n_c = Wb.shape[0], Wb.shape[1]
    zeros = _lanes(np.zeros(LANES, xp.dtype), numba.uint64(0))
    one, line = numba.uint64(1), numba.uint64(wq)
    for tc in range(0, T, COLUMNS):
        for c0 in range(0, n_c, CHANNELS):
            for ob in range(n_b):
                Wo, m = Wb[ob], acc[ROWS * ob:ROWS * ob + ROWS]
                for t0 in range(tc, min(tc + COLUMNS, T), LANES):
                    p = numba.uint64(t0)
                    if c0 == 0:
                        S = (zeros, zeros, zeros, zeros, zeros, zeros, zeros, zeros)
                    else:
                        S = (_lanes(m[0], p), _lanes(m[1], p), _lanes(m[2], p),
                             _lanes(m[3], p), _lanes(m[4], p), _lanes(m[5], p), _lanes(m[6], p), _lanes(m[7], p))
                    q = numba.uint64(start + t0)
                    for c in range(c0, min(c0 + CHANNELS, n_c)):
                        u, e0, e1, e2, e3 = Wo[c], xp[0, c], xp[1, c], xp[2, c], xp[3, c]
                        S = _tap(S, _lanes(e0, q), u[0])
                        S = _tap(S, _lanes(e1, q), u[1])
                        S = _tap(S, _lanes(e0, q + one), u[2])
                        S = _tap(S, _lanes(e2, q), u[3])
                        S = _tap(S, _lanes(e3, q), u[4])
                        S = _tap(S, _lanes(e2, q + one), u[5])
                        S = _tap(S, _lanes(e0, q + line), u[6])
                        S = _tap(S, _lanes(e1, q + line), u[7])
                        S = _tap(S, _lanes(e0, q + line + one), u[8])
                    _put(m[0], p, S[0])
                    _put(m[1], p, S[1])
                    _put(m[2], p, S[2])
                    _put(m[3], p, S[3])
                    _put(m[4], p, S[4])
                    _put(m[5], p, S[5])
                    _put(m[6], p, S[6])
                    _put(m[7], p, S[7])


taps_gemm = straight_line_compiled(_taps_gemm_body, "F[:, :, ::1], F[:, :, :, ::1], i8, i8, i8, F[:, ::1]")


@numba.njit(cache=True)
def _store(acc, first, lines, wq, period, images, i0, y):
    """Copy the output lines among plane lines first .. first+lines-1 (line = k*period + r for
    image i0 + k, row r; the rest are padding) from the tile acc (O4, lines*wq) into y. Lines
    outer: one division per line, not per line and channel (measured faster at rows of 4-16
    columns, where the divisions weigh most; docs/perf.md)."""
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
def _convolve(x, Wb, pad, g, wq, period, size, n_t, y, n_threads):
    """y = the 3x3 stride-2 correlation of x zero-padded by `pad`, one stack of g images' phase
    planes per task. The planes are zeroed once: a task writes only pixel positions, always the
    same ones for its k-th image, and a short last task's leftover images are never stored (no
    output line of image k reads past its own period)."""
    n, c = x.shape[0], x.shape[1]
    n_planes = (n + g - 1) // g
    n_lines = n_t // wq
    per_tile = max(1, TILE // wq)
    planes = np.zeros((n_threads, 4, c, size), x.dtype)
    tiles = np.empty((n_threads, ROWS * Wb.shape[0], per_tile * wq + LANES), y.dtype)
    for plane in numba.prange(n_planes):
        xp, acc = planes[numba.get_thread_id()], tiles[numba.get_thread_id()]
        images = min(g, n - plane * g)
        fill_phases(x, plane * g, images, pad, wq, period, xp)
        for first in range(0, n_lines, per_tile):
            lines = min(per_tile, n_lines - first)
            taps_gemm(xp, Wb, wq, first * wq, -(-lines * wq // LANES) * LANES, acc)
            _store(acc, first, lines, wq, period, images, plane * g, y)


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C, 3, 3) -> y: (N, O, Ho, Wo), Ho = (H + 2*pad - 3) // 2 + 1."""
    n, c, h, w = x.shape
    o = W.shape[0]
    ho, wo = out_size(h, 3, 2, pad), out_size(w, 3, 2, pad)
    threads = numba.get_num_threads()
    g, wq, period, size, n_t = _layout(n, c, ho, wo, threads, PLANE_FLOATS)
    y = np.empty((n, o, ho, wo), x.dtype)
    _convolve(x, conv_flat.interleaved(W.reshape(o, c, 9), ROWS), pad, g, wq, period, size, n_t, y, threads)
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
        fill_phases(x, plane * g, images, pad, wq, period, xp)
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
