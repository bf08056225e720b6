"""Winograd F(4x4, 3x3) convolution with the transforms fused into the tile loop (Lavin & Gray
2016, "Fast Algorithms for Convolutional Neural Networks"; the matrices B^T, G, A^T are the
paper's, interpolation points 0, +-1, +-2, infinity).

Why: each 4x4 output tile costs 36 multiply-adds per channel pair instead of 144, so the GEMM
part does a quarter of the direct work. The unfused F(m x m, 3 x 3) in conv_winograd writes every
transform to memory in its own pass and loses that gain to memory traffic at ResNet shapes.

Why channels innermost: a tile's transform is a handful of adds per value, so its cost is loads
and stores. Kept in NCHW, each tile-channel's 36 transformed values went to 36 scattered places
one scalar at a time; with channels innermost, the same step moves eight channels per vector
instruction (measured faster than the NCHW version at every cifar-resnet20 shape).

How: each parallel task copies its run of images into a zero-padded plane per thread with the
channels innermost (H, W, C8; C rounded up to a multiple of 8), then goes through its tiles a
chunk of whole tile rows at a time. For a chunk it transforms the inputs into V (36, T, C8)
(rows combined down six whole padded rows, which is contiguous, then columns per tile, eight
channels at a time), runs 36 GEMMs M_xi (T, O16) = V_xi @ U_xi with U_xi (C8, O16) packed
sixteen output channels to a block, a register block of eight tiles by 32 output channels at a
time, and turns each tile's products into its 4x4 outputs for all output channels at once, which
a last pass writes into y's rows. A chunk's V
and M together hold about BUDGET floats, so they stay in the core's caches.

Every output is computed by one task, from its own tile only, in a fixed order of operations,
so the result does not depend on the thread count. The data gradient is the same convolution on
dy with the kernels flipped and transposed (padding 2 - pad). The weight gradient is Winograd
too, on the same tiles and transforms (see weight_gradient), measured faster than flat's at
cifar-resnet20's shapes. Figures for all of these in docs/perf.md.

This module holds the kernel transform, the GEMMs, the chunk and task loops and the weight
gradient's sums; the tile transforms and the copies into and out of the channels-innermost
planes are in conv_winograd4_transforms.
"""

import numba
import numpy as np

from npdc.kernels import conv_flat, conv_im2col
from npdc.kernels.conv_winograd import matrices
from npdc.kernels.conv_winograd4_transforms import (cols_dy, cols_in, fill, store_rows, strip_dy, strip_in, tile_out,
                                                    transform_rows)
from npdc.kernels.im2col import out_size
from npdc.kernels.prepared import prepared
from npdc.kernels.simd import fma16, ld16, prefer_512_bit_vectors, st16, straight_line_compiled

BUDGET = 96 * 1024  # floats of V and M per chunk: they stay in a core's L2 (the best size measured)
ROWS = 8  # tiles per GEMM register block: chunks are computed in whole multiples of it
LANES = 8  # channels per vector step of the transforms (C is padded to a multiple)
OUT_BLOCK = 16  # output channels per GEMM register block (O is padded to a multiple)

# the weight gradient's task count, fixed so that its sums round the same on any thread count; it
# also caps the threads the weight gradient uses (measured on 2 cores: 4 and 8 tasks were slower)
GRAD_TASKS = 2
GRAD_BUDGET = 96 * 1024  # floats of V and Y per weight-gradient chunk
# from this many (o, c) pairs on, a chunk's sums into all 36 of them outweigh the saving and the
# weight gradient is im2col's GEMM (measured at cifar-resnet shapes: faster than flat's at 256
# channels, slower at 512; at ResNet-50's 256-channel 14x14 layers, batch 8, im2col's took 0.6 of
# this one's time and flat's 0.7; docs/perf.md). Unlike this one, im2col's sums are grouped per
# thread, so there the rounding follows the thread count.
GRAD_MAX_PAIRS = 256 * 256
# except on output maps of at least WIDE_PIXELS (ResNet-50's 256-channel 3x3 layers at 14x14; no
# shipped model has 256 channels on a map that large), where Winograd's sums stay, in chunks of
# up to WIDE_BUDGET floats: with 36 * 256 * 256 sums per task, each chunk's read-modify-write of
# them was the cost, and chunks of a whole task's tiles (with _finish's loops) made this weight
# gradient faster than im2col's there (docs/perf.md, branch r50m). 512 channels at 7x7 stay
# im2col's (Winograd's measured 2x slower).
WIDE_PIXELS = 196
WIDE_BUDGET = 1 << 21

refuse = conv_flat.refuse  # 3x3, stride 1, groups 1, padding 0..2 (so the data gradient fits)


@numba.njit(parallel=True, cache=True)
def _kernels(W, G, flipped, U):
    """U[a*6 + b, k // 16, ch, k % 16] = (G g G^T)[a, b] for every 3x3 kernel g from output
    channel k to input channel ch: g = W[k, ch], or with `flipped` (the data gradient's kernels)
    W[ch, k] turned by 180 degrees. U is zero-padded (and zeroed by the caller).

    Each task owns a block of sixteen output channels and goes along the input channels, the
    sixteen kernels of one channel side by side in the vector lanes, so that every write of U is
    one whole run of sixteen floats. Flipped, the sixteen kernels are one contiguous run of W,
    so the transpose costs no copy of its own (NumPy's copy of the flipped, transposed view took
    as long as the transform at 512 channels). A task per input channel, scattering its writes
    over U, measured 3x slower at 256 and 512 channels; one output channel at a time along c,
    writing U a float per line, about a quarter slower than this (docs/perf.md)."""
    o, c = (W.shape[1], W.shape[0]) if flipped else (W.shape[0], W.shape[1])
    for block in numba.prange(U.shape[1]):
        k0 = 16 * block
        g = np.zeros((9, 16))  # g[3*i + j, kk] = the tap (i, j) of kernel k0 + kk
        half = np.empty((18, 16))  # half[3*a + j] = (G g)[a, j] for every kk
        for ch in range(c):
            for kk in range(min(o, k0 + 16) - k0):
                for t in range(9):
                    if flipped:
                        g[t, kk] = W[ch, k0 + kk, 2 - t // 3, 2 - t % 3]
                    else:
                        g[t, kk] = W[k0 + kk, ch, t // 3, t % 3]
            for a in range(6):
                for j in range(3):
                    h, g0, g1, g2 = half[3 * a + j], g[j], g[3 + j], g[6 + j]
                    for kk in range(16):
                        h[kk] = G[a, 0] * g0[kk] + G[a, 1] * g1[kk] + G[a, 2] * g2[kk]
            for a in range(6):
                h0, h1, h2 = half[3 * a], half[3 * a + 1], half[3 * a + 2]
                for b in range(6):
                    u = U[a * 6 + b, block, ch]
                    for kk in range(16):
                        u[kk] = h0[kk] * G[b, 0] + h1[kk] * G[b, 1] + h2[kk] * G[b, 2]


def _gemm_body(V, U, M, T):
    """M[xi, t, o] = sum_c V[xi, t, c] U[xi, o // 16, c, o % 16] for t < T (a multiple of 8), O a
    multiple of 16.

    A block of eight tiles by 32 output channels is summed over all c in sixteen 16-tuples, which
    the SLP vectoriser packs into sixteen 512-bit registers; per c, two vector loads of U and eight
    broadcasts of V feed sixteen multiply-adds, and M is written once (an odd last block of sixteen
    output channels takes eight registers). U is packed sixteen output channels to a block, so the
    loop over c reads each block's rows in order; with U (C, O) row-major, 256 and 512 output
    channels put its rows 1 and 2 KiB apart, all in a few L1 sets. Eight tiles by sixteen channels
    paid at 32 and 64 input channels against four tiles in 256-bit registers, and twelve tiles
    were no faster (docs/perf.md). Each output's sum runs over c in order whatever the block, so
    the block size does not change the result. Straight-line code rather than a vectorised loop,
    which would pay LLVM's alias checks on every entry. Rows by flat offsets, not views: a view
    raises and drops a reference count (two calls, atomic), and eight a block cost more than its
    sums at 16 channels."""
    prefer_512_bit_vectors()
    u = numba.uint64
    n_xi, n_blocks, n_c = U.shape[0], U.shape[1], U.shape[2]
    lv, c8, lm, o16 = V.shape[1], V.shape[2], M.shape[1], M.shape[2]
    Vf, Uf, Mf = V.reshape(V.size), U.reshape(U.size), M.reshape(M.size)
    z = np.zeros(1, V.dtype)[0]
    zero = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    k1, k2, k3, k4, k5, k6, k7 = u(c8), u(2 * c8), u(3 * c8), u(4 * c8), u(5 * c8), u(6 * c8), u(7 * c8)
    for xi in range(n_xi):
        for t in range(0, T, 8):
            v, m = u((xi * lv + t) * c8), u((xi * lm + t) * o16)  # the block's first tile in V, M
            for block in range(0, n_blocks - 1, 2):
                ua, ub = u((xi * n_blocks + block) * n_c * 16), u((xi * n_blocks + block + 1) * n_c * 16)
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
                q0 = q1 = q2 = q3 = q4 = q5 = q6 = q7 = zero
                for c in range(n_c):
                    e, f = ld16(Uf, ua + u(16 * c)), ld16(Uf, ub + u(16 * c))
                    w = v + u(c)
                    v0, v1, v2, v3 = Vf[w], Vf[w + k1], Vf[w + k2], Vf[w + k3]
                    v4, v5, v6, v7 = Vf[w + k4], Vf[w + k5], Vf[w + k6], Vf[w + k7]
                    s0, s1, s2, s3 = fma16(s0, v0, e), fma16(s1, v1, e), fma16(s2, v2, e), fma16(s3, v3, e)
                    s4, s5, s6, s7 = fma16(s4, v4, e), fma16(s5, v5, e), fma16(s6, v6, e), fma16(s7, v7, e)
                    q0, q1, q2, q3 = fma16(q0, v0, f), fma16(q1, v1, f), fma16(q2, v2, f), fma16(q3, v3, f)
                    q4, q5, q6, q7 = fma16(q4, v4, f), fma16(q5, v5, f), fma16(q6, v6, f), fma16(q7, v7, f)
                p = m + u(16 * block)
                for i, a, b in ((0, s0, q0), (1, s1, q1), (2, s2, q2), (3, s3, q3),
                                (4, s4, q4), (5, s5, q5), (6, s6, q6), (7, s7, q7)):
                    st16(Mf, p + u(i * o16), a)
                    st16(Mf, p + u(i * o16 + 16), b)
            if n_blocks % 2:
                ua, p = u((xi * n_blocks + n_blocks - 1) * n_c * 16), m + u(16 * (n_blocks - 1))
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
                for c in range(n_c):
                    e, w = ld16(Uf, ua + u(16 * c)), v + u(c)
                    s0, s1, s2, s3 = fma16(s0, Vf[w], e), fma16(s1, Vf[w + k1], e), fma16(s2, Vf[w + k2], e), \
                        fma16(s3, Vf[w + k3], e)
                    s4, s5 = fma16(s4, Vf[w + k4], e), fma16(s5, Vf[w + k5], e)
                    s6, s7 = fma16(s6, Vf[w + k6], e), fma16(s7, Vf[w + k7], e)
                for i, a in ((0, s0), (1, s1), (2, s2), (3, s3), (4, s4), (5, s5), (6, s6), (7, s7)):
                    st16(Mf, p + u(i * o16), a)


_gemm = straight_line_compiled(_gemm_body, "F[:, :, ::1], F[:, :, :, ::1], F[:, :, ::1], i8")


@numba.njit(parallel=True, cache=True)
def _convolve(x, U, pad, n_tasks, th, tw, span, y, n_threads):
    """y = the valid 3x3 correlation of x zero-padded by `pad`, the batch split evenly into
    n_tasks runs of images, and chunks of span tiles (whole tile rows) per GEMM."""
    n = x.shape[0]
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    c8, o16 = U.shape[2], 16 * U.shape[1]
    hp, wp = 4 * th + 2, 4 * tw + 2
    run = wp * c8  # one padded row, all channels
    plane = hp * run
    g = (n + n_tasks - 1) // n_tasks
    rows_per_chunk = span // tw
    K = np.array([2, 4, 5, 8], x.dtype)
    planes = np.zeros((n_threads, g * plane), x.dtype)
    # an odd number of tile slots (a multiple of ROWS, plus one): with power-of-two channel
    # counts the 36 slices a tile writes would otherwise sit a multiple of 4 KiB apart, in the
    # same few L1 sets
    lines = -(-span // ROWS) * ROWS + 1
    Vs = np.zeros((n_threads, 36, lines, c8), x.dtype)
    Ms = np.empty((n_threads, 36, lines, o16), x.dtype)
    Zs = np.empty((n_threads, 6, run), x.dtype)
    Qs = np.empty((n_threads, 4, 6, o16), x.dtype)
    Rs = np.empty((n_threads, 4, 4 * tw, o16), x.dtype)
    for task in numba.prange(n_tasks):
        tid = numba.get_thread_id()
        xp, V, M, Z, Q, R = planes[tid], Vs[tid], Ms[tid], Zs[tid], Qs[tid], Rs[tid]
        first = task * n // n_tasks
        count = (task + 1) * n // n_tasks - first
        fill(x, first, count, pad, plane, run, c8, xp)
        for r0 in range(0, count * th, rows_per_chunk):
            rows = min(rows_per_chunk, count * th - r0)
            transform_rows(strip_in, cols_in, xp, r0, rows, th, tw, plane, run, c8, Z, V, K)
            _gemm(V, U, M, -(-rows * tw // ROWS) * ROWS)
            for r in range(rows):
                image, tile_row = (r0 + r) // th, (r0 + r) % th
                for tx in range(tw):
                    tile_out(M, r * tw + tx, o16, Q, R, 4 * tx, K)
                store_rows(R, min(4, ho - 4 * tile_row), 0, y, first + image, 4 * tile_row)


def _layout(n, c8, o16, th, tw, threads):
    """(tasks, tiles per chunk span): a chunk is whole tile rows whose V and M fit BUDGET; a
    task holds at most the images one chunk covers (at least one), and the task count is a whole
    number of rounds of the threads (7 tasks on 2 threads had left one thread idle 1/8 of the
    time), sizes differing by one image at most."""
    per = th * tw
    span = max(2 * ROWS, BUDGET // (36 * (c8 + o16)))
    g = max(1, min(n, span // per))
    n_tasks = min(n, -(-n // (g * threads)) * threads)
    span = min(span, -(-n // n_tasks) * per)
    return n_tasks, max(tw, span // tw * tw)


def transformed_kernels(W, flipped=False):
    """U (36, O16 / 16, C8, 16) for W (O, C, 3, 3): the products' right-hand sides (_kernels);
    with `flipped`, those of the data gradient, whose kernels are W's turned by 180 degrees with
    the channel axes exchanged (O and C then swap roles)."""
    o, c = (W.shape[1], W.shape[0]) if flipped else W.shape[:2]
    c8, o16 = -(-c // LANES) * LANES, -(-o // OUT_BLOCK) * OUT_BLOCK
    U = np.zeros((36, o16 // OUT_BLOCK, c8, OUT_BLOCK), W.dtype)
    _kernels(W, matrices(4, np.float64)[1], flipped, U)
    return U


def _correlate(x, o, pad, U):
    """Valid 3x3 correlation of x (N, C, H, W) zero-padded by `pad` with the o output channels'
    kernels whose transform is U."""
    n, c, h, w = x.shape
    ho, wo = out_size(h, 3, 1, pad), out_size(w, 3, 1, pad)
    th, tw = -(-ho // 4), -(-wo // 4)
    c8, o16 = -(-c // LANES) * LANES, -(-o // OUT_BLOCK) * OUT_BLOCK
    threads = numba.get_num_threads()
    n_tasks, span = _layout(n, c8, o16, th, tw, threads)
    y = np.empty((n, o, ho, wo), x.dtype)
    _convolve(x, U, pad, n_tasks, th, tw, span, y, threads)
    return y


def _gemm_dw_body(Y, V, P, T):
    """P[xi, o, c] += sum_{t < T} Y[xi, t, o] V[xi, t, c], O a multiple of 4, C of 16: a block
    of four rows by sixteen lanes, summed over tiles (the forward's block, eight rows in 512-bit
    registers, measured no faster here)."""
    n_xi, o8, c16 = P.shape
    z = np.zeros(1, V.dtype)[0]
    zero = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    one = np.ones(1, V.dtype)[0]
    for xi in range(n_xi):
        Yx, Vx, Px = Y[xi], V[xi], P[xi]
        for o in range(0, o8, 4):
            for c in range(0, c16, 16):
                p = numba.uint64(c)
                s0 = s1 = s2 = s3 = zero
                for t in range(T):
                    e, w = ld16(Vx[t], p), Yx[t]
                    s0, s1, s2, s3 = fma16(s0, w[o], e), fma16(s1, w[o + 1], e), fma16(s2, w[o + 2], e), \
                        fma16(s3, w[o + 3], e)
                for i, s in ((0, s0), (1, s1), (2, s2), (3, s3)):
                    row = Px[o + i]
                    st16(row, p, fma16(s, one, ld16(row, p)))  # row += s


_gemm_dw = straight_line_compiled(_gemm_dw_body, "F[:, :, ::1], F[:, :, ::1], F[:, :, ::1], i8")


@numba.njit(parallel=True, cache=True)
def _weight_grad(x, dy, pad, n_tasks, g, th, tw, span, parts, n_threads):
    """parts[task, xi, o, c] = sum over the task's tiles of (A e A^T)[xi] (B^T d B)[xi] for each
    tile's 4x4 window e of dy[:, o] and 6x6 window d of the padded x[:, c]; a task goes through
    its images g at a time (the planes hold g images), in chunks of span tiles."""
    n = x.shape[0]
    o8, c16 = parts.shape[2], parts.shape[3]
    wp = 4 * tw + 2
    run, run_d = wp * c16, 4 * tw * o8
    plane, plane_d = (4 * th + 2) * run, 4 * th * run_d
    rows_per_chunk = span // tw
    K = np.array([2, 4, 5, 8], x.dtype)
    planes = np.zeros((n_threads, g * plane), x.dtype)
    dplanes = np.zeros((n_threads, g * plane_d), x.dtype)
    lines = -(-span // ROWS) * ROWS + 1  # odd, as in _convolve
    Vs = np.zeros((n_threads, 36, lines, c16), x.dtype)
    Ys = np.zeros((n_threads, 36, lines, o8), x.dtype)
    Zs = np.empty((n_threads, 6, run), x.dtype)
    Zds = np.empty((n_threads, 6, run_d), x.dtype)
    for task in numba.prange(n_tasks):
        tid = numba.get_thread_id()
        xp, dp, V, Y, Z, Zd = planes[tid], dplanes[tid], Vs[tid], Ys[tid], Zs[tid], Zds[tid]
        start, end = task * n // n_tasks, (task + 1) * n // n_tasks
        for first in range(start, end, g):
            count = min(g, end - first)
            fill(x, first, count, pad, plane, run, c16, xp)
            fill(dy, first, count, 0, plane_d, run_d, o8, dp)
            for r0 in range(0, count * th, rows_per_chunk):
                rows = min(rows_per_chunk, count * th - r0)
                transform_rows(strip_in, cols_in, xp, r0, rows, th, tw, plane, run, c16, Z, V, K)
                transform_rows(strip_dy, cols_dy, dp, r0, rows, th, tw, plane_d, run_d, o8, Zd, Y, K)
                _gemm_dw(Y, V, parts[task], rows * tw)


@numba.njit(cache=True, inline="always")
def _combine(dst, src, first, step, weights):
    """dst = sum over j < 6 of weights[j] * src[first + step * j], row by row, from 0.0 in order."""
    dst[:] = 0.0
    for j in range(6):
        w, row = weights[j], src[first + step * j]
        for ch in range(dst.size):
            dst[ch] += w * row[ch]


@numba.njit(parallel=True, cache=True)
def _finish(parts, G, dW):
    """dW[o, c] = G^T S G for S (6, 6) the sum of parts[:, :, o, c] in task order, each sum
    from 0.0 in a fixed order. Explicit loops along c into buffers made once per output channel:
    NumPy-style expressions here allocated a temporary for each of about 160 row operations per
    output channel and took as long as the sums themselves at 256 by 256 channels (docs/perf.md)."""
    o, c = dW.shape[0], dW.shape[1]
    for k in numba.prange(o):
        S, H, out = np.empty((36, c)), np.empty((18, c)), np.empty((9, c))
        for xi in range(36):
            row = S[xi]
            row[:] = 0.0
            for task in range(parts.shape[0]):
                p = parts[task, xi, k]
                for ch in range(c):
                    row[ch] += p[ch]
        for u in range(3):
            for b in range(6):  # H[6u + b] = sum over a of G[a, u] S[6a + b]
                _combine(H[6 * u + b], S, b, 6, G[:, u])
            for v in range(3):  # out[3u + v] = sum over b of G[b, v] H[6u + b]
                _combine(out[3 * u + v], H, 6 * u, 1, G[:, v])
        for ch in range(c):
            for t in range(9):
                dW[k, ch, t // 3, t % 3] = out[t, ch]


def weight_gradient(x, dy, pad, out=None):
    """dW (O, C, 3, 3) of the 3x3 stride-1 convolution of x (N, C, H, W) padded by `pad`,
    written into `out` (of x's type) when given.

    Why Winograd here too: dW[o, c] is the correlation of padded x[:, c] with dy[:, o], a 3x3
    output, so on the forward's tiles each tile adds the 3x3 correlation of its 6x6 input window
    with its 4x4 window of dy. That is minimal filtering F(3x3, 4x4) with the 4x4 dy window as the
    filter; with the forward's interpolation points its matrices are the forward's, A and G
    exchanged: x goes through B^T d B as in the forward, dy through A e A^T, and the sum over all
    tiles comes back through G^T S G once per (o, c) pair, so the GEMM (36 per chunk, summing
    over tiles) does a quarter of the direct work.

    The task split is the same whatever the thread count (GRAD_TASKS) and the tasks' sums are
    added in task order, so training rounds the same with any --threads."""
    n, c = x.shape[0], x.shape[1]
    o, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    th, tw = -(-ho // 4), -(-wo // 4)
    c16, o8 = -(-c // OUT_BLOCK) * OUT_BLOCK, -(-o // LANES) * LANES
    budget = GRAD_BUDGET
    if o8 * c16 >= GRAD_MAX_PAIRS:
        if ho * wo < WIDE_PIXELS:
            dW = conv_im2col.weight_gradient(x, dy, (o, c, 3, 3), 1, pad, 1)
            if out is None:
                return dW
            out[...] = dW
            return out
        budget = WIDE_BUDGET
    n_tasks = min(n, GRAD_TASKS)
    span = max(1, budget // (36 * (c16 + o8)) // tw) * tw
    span = min(span, -(-n // n_tasks) * th * tw)
    g = max(1, span // (th * tw))
    parts = np.zeros((n_tasks, 36, o8, c16), x.dtype)
    _weight_grad(x, dy, pad, n_tasks, g, th, tw, span, parts, numba.get_num_threads())
    dW = np.empty((o, c, 3, 3)) if out is None else out  # sums in float64, rounded as stored
    _finish(parts, matrices(4, np.float64)[1], dW)
    return dW.astype(x.dtype) if out is None else out


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C, 3, 3) -> y: (N, O, H + 2*pad - 2, W + 2*pad - 2). The
    transformed kernels are kept between calls on the same weights (npdc.kernels.prepared)."""
    return _correlate(x, W.shape[0], pad, prepared("winograd4", W, transformed_kernels))


def forward_fresh(x, W, stride, pad, groups):
    """forward with the kernels transformed afresh, neither kept nor looked up (training)."""
    return _correlate(x, W.shape[0], pad, transformed_kernels(W))


def backward(x, W, dy, stride, pad, groups, need_dx, dW_out=None):
    """(dx or None, dW) for dy: (N, O, Ho, Wo); dW is written into dW_out when given."""
    dx = None
    if need_dx:
        dx = _correlate(dy, W.shape[1], 2 - pad, transformed_kernels(W, flipped=True))
    return dx, weight_gradient(x, dy, pad, dW_out)
