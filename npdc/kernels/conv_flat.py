"""Direct 3x3 stride-1 convolution over flattened, padded planes, register-blocked over eight
output channels (the "direct" family of Anderson & Gregg 2017; blocking the output channels so each
loaded input feeds many multiply-adds follows Zhang, Franchetti & Low 2018, "High Performance
Zero-Memory Overhead Direct Convolutions").

Why flat: a zero-padded plane read as one long row turns every kernel tap (i, j) into a constant
shift i*wp + j, so the inner loop runs over the whole plane without a bounds test. Each row keeps
only its `pad` leading zeros, which also serve as the trailing zeros of the row before, so
wp = W + pad; the wp - Wo positions per line past the output width are computed and thrown away.
The inner loop holds eight output rows and the nine shifted inputs, so each input load serves
eight fused multiply-adds; sums are grouped by kernel row to keep dependency chains short.

Why planes and tiles: each task copies a few images into a per-thread plane small enough to stay
in L2 while every block of output channels sweeps it, and the sweep goes a tile of lines at a time
so the block's accumulators stay in L1. Tiles are computed in whole vectors (no scalar tail).

Few input channels (the first layer) have no channel reuse to block for, and there the planes'
copies and tiles cost more than the sums: _rows sums blocks of eight output channels by 32
columns of a row over all channels in registers and writes them to y directly.

The data gradient is the same kernel on dy with the kernels flipped and transposed (padding
2 - pad); the weight gradient stacks a (larger) plane of x and of dy per task and sums dy times
the shifted input rows, four output channels by one kernel row at a time, one partial sum per
plane, added in plane order. Reductions are vectorised with reassociation allowed, so they round
differently from a sequential sum but identically from run to run.
"""

import numba
import numpy as np

from npdc.kernels.im2col import out_size, refuse_unless_dense_3x3
from npdc.kernels.simd import fma16, ld16, prefer_512_bit_vectors, st16, straight_line_compiled

BLOCK = 8  # output channels per register block


def refuse(x_shape, W_shape, stride, pad, groups):
    """Why this primitive cannot compute the convolution, or None."""
    return refuse_unless_dense_3x3(W_shape, stride, pad, groups, want_stride=1, max_pad=2)


VECTOR = 16  # tiles are computed in whole multiples of this many positions (no scalar tail)
TILE = 512  # output positions per accumulator tile (eight rows of them stay in L1)
PLANE_FLOATS = 48 * 1024  # a stacked plane of all input channels stays in a core's L2 (192 KiB)
GRAD_SPAN = 2048  # positions per weight-gradient pass; its four dy rows stay in L1 (measured)
GRAD_PLANE_FLOATS = 192 * 1024  # the weight gradient's planes: longer sums, fewer reductions (measured)


def _layout(n, c, h, w, pad, threads, floats):
    """(images per plane g, row width wp, rows per image period, plane length, output positions
    n_t): image k's rows start at line k*period + pad, neighbours share the `pad` zero lines
    between them, and output line r of image k sits at position (k*period + r)*wp. The plane
    count is the smallest whole number of rounds of `threads` whose planes fit `floats`."""
    wp, period = w + pad, h + pad
    most = max(1, (floats // c) // (period * wp))
    n_planes = -(-n // most)
    n_planes = -(-n_planes // threads) * threads
    g = -(-n // n_planes)
    n_t = ((g - 1) * period + out_size(h, 3, 1, pad)) * wp
    return g, wp, period, (g * period + pad) * wp + 2 + VECTOR, n_t


@numba.njit(cache=True)
def fill_plane(x, first, images, pad, wp, period, xp):
    """Write images first .. first+images-1 of x (N, C, H, W) into the zeroed plane xp (C, size)."""
    _, c, h, w = x.shape
    for k in range(images):
        for ch in range(c):
            dst = xp[ch]
            for r in range(h):
                start, src = numba.uint64((k * period + pad + r) * wp + pad), x[first + k, ch, r]
                for col in range(numba.uint64(w)):
                    dst[start + col] = src[col]


@numba.njit(cache=True, inline="always")
def _taps(a, w, p0, p1, p2, q0, q1, q2, s0, s1, s2):
    return a + w[0] * p0 + w[1] * p1 + w[2] * p2 + w[3] * q0 + w[4] * q1 + w[5] * q2 \
        + w[6] * s0 + w[7] * s1 + w[8] * s2


@numba.njit(cache=True, inline="always")
def _nine(W9, o, c):
    r = W9[o, c]
    return (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])


@numba.njit(cache=True, fastmath={"contract"})
def block_sums(xp, W9, ob, wp, start, n_t, acc):
    """acc[q, t] += sum over channels and taps of W9[ob + q, c, tap] * xp[c, start + t + shift(tap)]."""
    for c in range(xp.shape[0]):
        x = xp[c]
        w0, w1, w2, w3 = _nine(W9, ob, c), _nine(W9, ob + 1, c), _nine(W9, ob + 2, c), _nine(W9, ob + 3, c)
        w4, w5, w6, w7 = _nine(W9, ob + 4, c), _nine(W9, ob + 5, c), _nine(W9, ob + 6, c), _nine(W9, ob + 7, c)
        end = start + n_t + 2
        r0, r1, r2 = x[start:end], x[start + wp:end + wp], x[start + 2 * wp:end + 2 * wp]
        a0, a1, a2, a3, a4, a5, a6, a7 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]
        for t in range(n_t):
            p0, p1, p2 = r0[t], r0[t + 1], r0[t + 2]
            q0, q1, q2 = r1[t], r1[t + 1], r1[t + 2]
            s0, s1, s2 = r2[t], r2[t + 1], r2[t + 2]
            a0[t] = _taps(a0[t], w0, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a1[t] = _taps(a1[t], w1, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a2[t] = _taps(a2[t], w2, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a3[t] = _taps(a3[t], w3, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a4[t] = _taps(a4[t], w4, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a5[t] = _taps(a5[t], w5, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a6[t] = _taps(a6[t], w6, p0, p1, p2, q0, q1, q2, s0, s1, s2)
            a7[t] = _taps(a7[t], w7, p0, p1, p2, q0, q1, q2, s0, s1, s2)


@numba.njit(parallel=True, cache=True)
def _convolve(x, W9, pad, g, wp, period, size, n_t, y, n_threads):
    """y[i, o] = the valid 3x3 correlation of image i of x zero-padded by `pad`, one plane of
    g images per task."""
    n, c = x.shape[0], x.shape[1]
    n_planes = (n + g - 1) // g
    n_lines = n_t // wp
    per_tile = max(1, TILE // wp)
    planes = np.empty((n_threads, c, size), x.dtype)
    tiles = np.empty((n_threads, BLOCK, per_tile * wp + VECTOR), y.dtype)
    for plane in numba.prange(n_planes):
        xp, acc = planes[numba.get_thread_id()], tiles[numba.get_thread_id()]
        images = min(g, n - plane * g)
        xp[:] = 0
        fill_plane(x, plane * g, images, pad, wp, period, xp)
        for ob in range(0, W9.shape[0], BLOCK):
            for first in range(0, n_lines, per_tile):
                lines = min(per_tile, n_lines - first)
                acc[:] = 0
                block_sums(xp, W9, ob, wp, first * wp, -(-lines * wp // VECTOR) * VECTOR, acc)
                store_lines(acc, first, lines, wp, period, images, plane * g, ob, y)


@numba.njit(cache=True)
def store_lines(acc, first, lines, wp, period, images, i0, ob, y):
    """Copy the output lines among plane lines first .. first+lines-1 (line = k*period + r for
    image i0 + k, row r; the rest are padding) from the tile acc (BLOCK, lines*wp) into y[:, ob:]."""
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    for line in range(first, first + lines):
        k, r = line // period, line % period
        if r < ho and k < images:
            start, dst = numba.uint64((line - first) * wp), y[i0 + k]
            for q in range(min(BLOCK, o - ob)):
                row, a = dst[ob + q, r], acc[q]
                for col in range(numba.uint64(wo)):
                    row[col] = a[start + col]


def blocked(W9, size=BLOCK):
    """Pad the output-channel axis of W9: (O, C, taps) to a multiple of `size` with zero kernels."""
    o = W9.shape[0]
    full = -(-o // size) * size
    if full == o:
        return np.ascontiguousarray(W9)
    out = np.zeros((full,) + W9.shape[1:], W9.dtype)
    out[:o] = W9
    return out


def interleaved(W9, size):
    """W9 (O, C, T taps) as (O/size blocks, C, T, size), zero kernels past O: each block's `size`
    output channels side by side for every channel and tap, as register blocks broadcast them."""
    Wb = blocked(W9, size)
    return np.ascontiguousarray(Wb.reshape(-1, size, W9.shape[1], W9.shape[2]).transpose(0, 2, 3, 1))


FEW = 8  # input channels below which _rows computes the forward (no channel reuse to block for)
LANES = 16  # output columns per vector in _rows


@numba.njit(cache=True, inline="always")
def block_tap(S, w, a, b):
    """One tap's multiply-adds: S[q] + w[q] * a and S[8 + q] + w[q] * b for the eight outputs q."""
    return (fma16(S[0], w[0], a), fma16(S[1], w[1], a), fma16(S[2], w[2], a), fma16(S[3], w[3], a),
            fma16(S[4], w[4], a), fma16(S[5], w[5], a), fma16(S[6], w[6], a), fma16(S[7], w[7], a),
            fma16(S[8], w[0], b), fma16(S[9], w[1], b), fma16(S[10], w[2], b), fma16(S[11], w[3], b),
            fma16(S[12], w[4], b), fma16(S[13], w[5], b), fma16(S[14], w[6], b), fma16(S[15], w[7], b))


@numba.njit(cache=True, inline="always")
def zero_block(like):
    """Sixteen 16-tuples of zeros of the array `like`'s type: a register block's sums before the
    first tap."""
    z = np.zeros(1, like.dtype)[0]
    zero = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    return (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero)


@numba.njit(cache=True, inline="always")
def store_block(S, yi, q0, r, ca, cb):
    """Write a register block to row r of output channels q0 .. q0+7 of yi (O, Ho, Wo): S[q] at
    columns ca.., S[8 + q] at cb.. (those past O are dropped)."""
    for q, sa, sb in ((0, S[0], S[8]), (1, S[1], S[9]), (2, S[2], S[10]), (3, S[3], S[11]),
                      (4, S[4], S[12]), (5, S[5], S[13]), (6, S[6], S[14]), (7, S[7], S[15])):
        if q0 + q < yi.shape[0]:
            row = yi[q0 + q, r]
            st16(row, cb, sb)  # b first: a repeated chunk is written the same twice
            st16(row, ca, sa)


def _rows_image_body(plane, W8, starts, shift, yi):
    """yi (O, Ho, Wo) = the valid 3x3 correlation of one zero-padded image plane (C, Hp, Wp),
    with W8[b, c, 3i + j, q] the tap (i, j) of output channel 8b + q.

    For few input channels, where the plane path's stacked planes and store cost more than its
    sums: a block of eight output channels by two 16-column chunks of one output row is summed
    over all channels and taps in sixteen 512-bit registers (per tap, two vector loads and eight
    broadcasts feed sixteen multiply-adds) and written to yi once. A row's chunks start at
    `starts` (pairs; the last chunk ends at the row's end and may overlap the one before, or be
    repeated to fill a pair). A tap's columns are read through views that start `shift[j]` = j
    columns in, with the shifts passed as data: with them as constants the SLP vectoriser builds
    the three overlapping column vectors out of gathers and permutes instead of plain loads, which
    measured slower.

    Why this block: one 8-column vector per output channel makes a chain of nine dependent
    multiply-adds per channel; sixteen independent sums hide that latency and fill the 512-bit
    registers. It pays with 3 input channels at 16 and 64 output channels; with 1 input channel
    the layer's output traffic, not its sums, bounds the time, and it is as fast as before.
    Figures in docs/perf.md."""
    prefer_512_bit_vectors()
    o, ho = yi.shape[0], yi.shape[1]
    n_b, c = W8.shape[0], W8.shape[1]
    for b in range(n_b):  # blocks outside rows: measured faster at 64 output channels, even at 16
        Wb = W8[b]
        for r in range(ho):
            for k in range(0, starts.size, 2):
                ca, cb = numba.uint64(starts[k]), numba.uint64(starts[k + 1])
                S = zero_block(plane)
                for ch in range(c):
                    u = Wb[ch]
                    for i in range(3):
                        p = plane[ch, r + i]
                        a0, a1, a2 = p[shift[0]:], p[shift[1]:], p[shift[2]:]
                        S = block_tap(S, u[3 * i], ld16(a0, ca), ld16(a0, cb))
                        S = block_tap(S, u[3 * i + 1], ld16(a1, ca), ld16(a1, cb))
                        S = block_tap(S, u[3 * i + 2], ld16(a2, ca), ld16(a2, cb))
                store_block(S, yi, BLOCK * b, r, ca, cb)


rows_image = straight_line_compiled(_rows_image_body, "F[:, :, ::1], F[:, :, :, ::1], i8[::1], i8[::1], F[:, :, ::1]")


@numba.njit(parallel=True, cache=True)
def _rows(x, W8, pad, starts, shift, y, n_threads):
    """y = the valid 3x3 correlation of x zero-padded by `pad`, one image per task, through a
    per-thread padded plane (its border stays zero); `starts` and `shift` as rows_image takes
    them."""
    n, c, h, w = x.shape
    planes = np.zeros((n_threads, c, h + 2 * pad, w + 2 * pad), x.dtype)
    for i in numba.prange(n):
        plane = planes[numba.get_thread_id()]
        for ch in range(c):
            for r in range(h):
                for col in range(w):
                    plane[ch, r + pad, col + pad] = x[i, ch, r, col]
        rows_image(plane, W8, starts, shift, y[i])


@numba.njit(cache=True)
def row_chunks(wo):
    """Start columns of a row's LANES-wide chunks (wo >= LANES), an even count: the last ends at
    wo, and is repeated when the count is odd."""
    chunks = -(-wo // LANES)
    starts = np.empty(chunks + chunks % 2, np.int64)
    for k in range(chunks):
        starts[k] = min(LANES * k, wo - LANES)
    starts[-1] = starts[chunks - 1]
    return starts


def _correlate(x, W9, pad):
    """Valid 3x3 correlation of x zero-padded by `pad`: x (N, C, H, W), W9 (O, C, 9)."""
    n, c, h, w = x.shape
    ho, wo = out_size(h, 3, 1, pad), out_size(w, 3, 1, pad)
    y = np.empty((n, W9.shape[0], ho, wo), x.dtype)
    if c < FEW and wo >= LANES:
        # the column shifts 0, 1, 2 as data, out of the compiler's sight (see _rows_image_body)
        _rows(x, interleaved(W9, BLOCK), pad, row_chunks(wo), np.arange(3), y, numba.get_num_threads())
        return y
    threads = numba.get_num_threads()
    g, wp, period, size, n_t = _layout(n, c, h, w, pad, threads, PLANE_FLOATS)
    _convolve(x, blocked(W9), pad, g, wp, period, size, n_t, y, threads)
    return y


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C, 3, 3) -> y: (N, O, H + 2*pad - 2, W + 2*pad - 2)."""
    return _correlate(x, W.reshape(W.shape[0], W.shape[1], 9), pad)


@numba.njit(cache=True, fastmath={"contract", "reassoc"})
def _weight_rows(dyp, xp, ob, c, wp, t0, t1, zero, out):
    """out[q, 3*i + j] += sum_{t0 <= t < t1} dyp[ob + q, t] * xp[c, t + i*wp + j] for q < 4 (the
    sums over t in the input precision, `zero` of its type; out accumulates them in float64)."""
    x = xp[c]
    d0, d1, d2, d3 = dyp[ob, t0:t1], dyp[ob + 1, t0:t1], dyp[ob + 2, t0:t1], dyp[ob + 3, t0:t1]
    for i in range(3):
        r = x[t0 + i * wp:t1 + i * wp + 2]
        s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 = zero
        for t in range(t1 - t0):
            e0, e1, e2 = r[t], r[t + 1], r[t + 2]
            s00 += d0[t] * e0
            s01 += d0[t] * e1
            s02 += d0[t] * e2
            s10 += d1[t] * e0
            s11 += d1[t] * e1
            s12 += d1[t] * e2
            s20 += d2[t] * e0
            s21 += d2[t] * e1
            s22 += d2[t] * e2
            s30 += d3[t] * e0
            s31 += d3[t] * e1
            s32 += d3[t] * e2
        out[0, 3 * i] += s00
        out[0, 3 * i + 1] += s01
        out[0, 3 * i + 2] += s02
        out[1, 3 * i] += s10
        out[1, 3 * i + 1] += s11
        out[1, 3 * i + 2] += s12
        out[2, 3 * i] += s20
        out[2, 3 * i + 1] += s21
        out[2, 3 * i + 2] += s22
        out[3, 3 * i] += s30
        out[3, 3 * i + 1] += s31
        out[3, 3 * i + 2] += s32


@numba.njit(cache=True)
def fill_rows(dy, first, images, wp, period, dp):
    """Write output lines of images first .. first+images-1 of dy (N, O, Ho, Wo) into the zeroed
    (O4, n_t) dp where _convolve computes them: line r of image k at (k*period + r)*wp."""
    o, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    for k in range(images):
        for ch in range(o):
            for r in range(ho):
                start = (k * period + r) * wp
                dp[ch, start:start + wo] = dy[first + k, ch, r]


@numba.njit(parallel=True, cache=True)
def _weight_grad(x, dy, pad, g, wp, period, size, n_t, parts, n_threads):
    """parts[p] (O4, C, 9) = plane p's sum of dy (zero off the output lines) times shifted x.
    Each task stacks one plane of x and of dy in its thread's buffers, which stay in cache while
    every (block of four output channels, input channel) pair sweeps them, GRAD_SPAN positions
    at a time so that every input channel reads the four dy rows from L1."""
    n, c = x.shape[0], x.shape[1]
    n_planes, o4 = parts.shape[0], parts.shape[1]
    xs = np.empty((n_threads, c, size), x.dtype)
    ds = np.empty((n_threads, o4, n_t), x.dtype)
    zero = np.zeros(1, x.dtype)[0]
    for plane in numba.prange(n_planes):
        xp, dp = xs[numba.get_thread_id()], ds[numba.get_thread_id()]
        images = min(g, n - plane * g)
        xp[:] = 0
        dp[:] = 0
        fill_plane(x, plane * g, images, pad, wp, period, xp)
        fill_rows(dy, plane * g, images, wp, period, dp)
        for t0 in range(0, n_t, GRAD_SPAN):
            t1 = min(n_t, t0 + GRAD_SPAN)
            for ob in range(0, o4, 4):
                for ch in range(c):
                    _weight_rows(dp, xp, ob, ch, wp, t0, t1, zero, parts[plane, ob:ob + 4, ch])


def weight_gradient(x, dy, pad):
    """dW (O, C, 3, 3) of the 3x3 stride-1 convolution of x (N, C, H, W) padded by `pad`."""
    n, c, h, w = x.shape
    o = dy.shape[1]
    # the same layout whatever the thread count, and the planes' sums added in plane order: g
    # sets how the weight gradient's sums are grouped, and training must not round differently
    # with --threads (an even plane count keeps two threads equally busy)
    g, wp, period, size, n_t = _layout(n, c, h, w, pad, 2, GRAD_PLANE_FLOATS)
    o4 = -(-o // 4) * 4
    parts = np.zeros((-(-n // g), o4, c, 9))
    _weight_grad(x, dy, pad, g, wp, period, size, n_t, parts, numba.get_num_threads())
    return parts.sum(axis=0)[:o].reshape(o, c, 3, 3).astype(x.dtype)


def backward(x, W, dy, stride, pad, groups, need_dx):
    """(dx or None, dW) for dy: (N, O, Ho, Wo)."""
    c, o = x.shape[1], W.shape[0]
    dx = None
    if need_dx:
        flipped = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(c, o, 9)
        dx = _correlate(dy, np.ascontiguousarray(flipped), 2 - pad)
    return dx, weight_gradient(x, dy, pad)
