"""Winograd F(4x4, 3x3) convolution with the transforms fused into the tile loop (Lavin & Gray
2016, "Fast Algorithms for Convolutional Neural Networks"; the matrices B^T, G, A^T are the
paper's, interpolation points 0, +-1, +-2, infinity).

Why: each 4x4 output tile costs 36 multiply-adds per channel pair instead of 144, so the GEMM
part does a quarter of the direct work. The unfused F(m x m, 3 x 3) in conv_winograd writes every
transform to memory in its own pass and loses that gain to memory traffic at ResNet shapes.

How: each parallel task copies its run of images into a zero-padded plane per thread, then goes through
its tiles a chunk of whole tile rows at a time. For a chunk it transforms the inputs into
V (36, C, T) (rows combined along whole padded rows, which is contiguous, then columns per tile),
runs 36 GEMMs M_xi (O, T) = U_xi^T @ V_xi with U_xi (C, O), V_xi (C, T), a register block of
four output channels by sixteen tiles at a time, and turns each output channel's M into its 4x4
tiles, written straight into y. A chunk's V and M together hold about BUDGET floats, so they
stay in the core's caches.

Every output is computed by one task, from its own tile only, in a fixed order of operations,
so the result does not depend on the thread count. The data gradient is the same convolution on
dy with the kernels flipped and transposed (padding 2 - pad); the weight gradient is flat's.
"""

import numba
import numpy as np

from npdc.kernels import conv_flat
from npdc.kernels.conv_flat import straight_line_vectorised
from npdc.kernels.conv_winograd import matrices
from npdc.kernels.im2col import out_size

BUDGET = 384 * 1024  # floats of V and M per chunk (measured: 192 Ki and 768 Ki were slower)
LANES = 16  # chunks are computed in whole blocks of this many tiles (_gemm's width)

refuse = conv_flat.refuse  # 3x3, stride 1, groups 1, padding 0..2 (so the data gradient fits)


@numba.njit(parallel=True, cache=True)
def _kernels(W, G, U):
    """U[a*6 + b, c, o] = (G g G^T)[a, b] for every 3x3 kernel g = W[o, c]; U is zero-padded."""
    o, c = W.shape[0], W.shape[1]
    for k in numba.prange(o):
        half = np.empty((6, 3))
        for ch in range(c):
            g = W[k, ch]
            for a in range(6):
                for j in range(3):
                    half[a, j] = G[a, 0] * g[0, j] + G[a, 1] * g[1, j] + G[a, 2] * g[2, j]
            for a in range(6):
                for b in range(6):
                    U[a * 6 + b, ch, k] = half[a, 0] * G[b, 0] + half[a, 1] * G[b, 1] + half[a, 2] * G[b, 2]


@numba.njit(cache=True, inline="always")
def _bt(d0, d1, d2, d3, d4, d5, k2, k4, k5):
    """B^T d for one 6-vector d (F(4x4, 3x3) input transform along one axis)."""
    return (k4 * d0 - k5 * d2 + d4, (d3 + d4) - k4 * (d1 + d2), k4 * (d1 - d2) + (d4 - d3),
            k2 * (d3 - d1) + (d4 - d2), k2 * (d1 - d3) + (d4 - d2), k4 * d1 - k5 * d3 + d5)


@numba.njit(cache=True, inline="always")
def _at(m0, m1, m2, m3, m4, m5, k2, k4, k8):
    """A^T m for one 6-vector m (F(4x4, 3x3) output transform along one axis)."""
    s12, d12, s34, d34 = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return m0 + s12 + s34, d12 + k2 * d34, s12 + k4 * s34, d12 + k8 * d34 + m5


@numba.njit(cache=True, fastmath={"contract"})
def _tiles_in(xp, row_bases, tw, wp, Z, V, K):
    """V[a*6 + b, c, r*tw + tx] = (B^T d B)[a, b] for the 6x6 window d at xp[c, row_bases[r] + 4*tx].
    K holds the constants 2, 4, 5 in the data's type (Python integers would promote to float64)."""
    k2, k4, k5 = K[0], K[1], K[2]
    width = 4 * tw + 2
    for c in range(xp.shape[0]):
        x = xp[c]
        for r in range(row_bases.shape[0]):
            p = row_bases[r]
            x0, x1, x2 = x[p:p + width], x[p + wp:p + wp + width], x[p + 2 * wp:p + 2 * wp + width]
            x3, x4, x5 = x[p + 3 * wp:p + 3 * wp + width], x[p + 4 * wp:p + 4 * wp + width], \
                x[p + 5 * wp:p + 5 * wp + width]
            z0, z1, z2, z3, z4, z5 = Z[0], Z[1], Z[2], Z[3], Z[4], Z[5]
            for col in range(width):
                z0[col], z1[col], z2[col], z3[col], z4[col], z5[col] = _bt(
                    x0[col], x1[col], x2[col], x3[col], x4[col], x5[col], k2, k4, k5)
            for a in range(6):
                z = Z[a]
                for tx in range(tw):
                    q, t = 4 * tx, r * tw + tx
                    v = _bt(z[q], z[q + 1], z[q + 2], z[q + 3], z[q + 4], z[q + 5], k2, k4, k5)
                    for b in range(6):
                        V[6 * a + b, c, t] = v[b]


J = tuple(np.uint64(j) for j in range(16))  # unsigned offsets, so indexing emits no wraparound test


def _gemm_body(U, V, M, T):
    """M[xi, o, t] = sum_c U[xi, c, o] V[xi, c, t] for t < T (a multiple of 16), O a multiple of 4.

    A block of four output channels by sixteen tiles is summed over all c in 64 scalars, which the
    SLP vectoriser packs into eight 8-lane registers; per c, two vector loads and four broadcasts
    feed eight multiply-adds, and M is written once. (A loop over t instead pays LLVM's alias
    checks on every entry, which halved the speed at the 16-100 tiles a chunk holds.)"""
    n_xi, n_c, o4 = U.shape
    z = np.zeros(1, V.dtype)[0]
    for xi in range(n_xi):
        Ux, Vx, Mx = U[xi], V[xi], M[xi]
        for t0 in range(0, T, 16):
            p = numba.uint64(t0)
            for o in range(0, o4, 4):
                q = numba.uint64(o)
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = a12 = a13 = a14 = a15 = z
                b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = b8 = b9 = b10 = b11 = b12 = b13 = b14 = b15 = z
                f0 = f1 = f2 = f3 = f4 = f5 = f6 = f7 = f8 = f9 = f10 = f11 = f12 = f13 = f14 = f15 = z
                h0 = h1 = h2 = h3 = h4 = h5 = h6 = h7 = h8 = h9 = h10 = h11 = h12 = h13 = h14 = h15 = z
                for c in range(n_c):
                    v, u = Vx[c], Ux[c]
                    e0, e1, e2, e3 = v[p], v[p + J[1]], v[p + J[2]], v[p + J[3]]
                    e4, e5, e6, e7 = v[p + J[4]], v[p + J[5]], v[p + J[6]], v[p + J[7]]
                    e8, e9, e10, e11 = v[p + J[8]], v[p + J[9]], v[p + J[10]], v[p + J[11]]
                    e12, e13, e14, e15 = v[p + J[12]], v[p + J[13]], v[p + J[14]], v[p + J[15]]
                    w = u[q]
                    a0, a1, a2, a3 = a0 + w * e0, a1 + w * e1, a2 + w * e2, a3 + w * e3
                    a4, a5, a6, a7 = a4 + w * e4, a5 + w * e5, a6 + w * e6, a7 + w * e7
                    a8, a9, a10, a11 = a8 + w * e8, a9 + w * e9, a10 + w * e10, a11 + w * e11
                    a12, a13, a14, a15 = a12 + w * e12, a13 + w * e13, a14 + w * e14, a15 + w * e15
                    w = u[q + J[1]]
                    b0, b1, b2, b3 = b0 + w * e0, b1 + w * e1, b2 + w * e2, b3 + w * e3
                    b4, b5, b6, b7 = b4 + w * e4, b5 + w * e5, b6 + w * e6, b7 + w * e7
                    b8, b9, b10, b11 = b8 + w * e8, b9 + w * e9, b10 + w * e10, b11 + w * e11
                    b12, b13, b14, b15 = b12 + w * e12, b13 + w * e13, b14 + w * e14, b15 + w * e15
                    w = u[q + J[2]]
                    f0, f1, f2, f3 = f0 + w * e0, f1 + w * e1, f2 + w * e2, f3 + w * e3
                    f4, f5, f6, f7 = f4 + w * e4, f5 + w * e5, f6 + w * e6, f7 + w * e7
                    f8, f9, f10, f11 = f8 + w * e8, f9 + w * e9, f10 + w * e10, f11 + w * e11
                    f12, f13, f14, f15 = f12 + w * e12, f13 + w * e13, f14 + w * e14, f15 + w * e15
                    w = u[q + J[3]]
                    h0, h1, h2, h3 = h0 + w * e0, h1 + w * e1, h2 + w * e2, h3 + w * e3
                    h4, h5, h6, h7 = h4 + w * e4, h5 + w * e5, h6 + w * e6, h7 + w * e7
                    h8, h9, h10, h11 = h8 + w * e8, h9 + w * e9, h10 + w * e10, h11 + w * e11
                    h12, h13, h14, h15 = h12 + w * e12, h13 + w * e13, h14 + w * e14, h15 + w * e15
                m = Mx[o + 0]
                m[p], m[p + J[1]], m[p + J[2]], m[p + J[3]] = a0, a1, a2, a3
                m[p + J[4]], m[p + J[5]], m[p + J[6]], m[p + J[7]] = a4, a5, a6, a7
                m[p + J[8]], m[p + J[9]], m[p + J[10]], m[p + J[11]] = a8, a9, a10, a11
                m[p + J[12]], m[p + J[13]], m[p + J[14]], m[p + J[15]] = a12, a13, a14, a15
                m = Mx[o + 1]
                m[p], m[p + J[1]], m[p + J[2]], m[p + J[3]] = b0, b1, b2, b3
                m[p + J[4]], m[p + J[5]], m[p + J[6]], m[p + J[7]] = b4, b5, b6, b7
                m[p + J[8]], m[p + J[9]], m[p + J[10]], m[p + J[11]] = b8, b9, b10, b11
                m[p + J[12]], m[p + J[13]], m[p + J[14]], m[p + J[15]] = b12, b13, b14, b15
                m = Mx[o + 2]
                m[p], m[p + J[1]], m[p + J[2]], m[p + J[3]] = f0, f1, f2, f3
                m[p + J[4]], m[p + J[5]], m[p + J[6]], m[p + J[7]] = f4, f5, f6, f7
                m[p + J[8]], m[p + J[9]], m[p + J[10]], m[p + J[11]] = f8, f9, f10, f11
                m[p + J[12]], m[p + J[13]], m[p + J[14]], m[p + J[15]] = f12, f13, f14, f15
                m = Mx[o + 3]
                m[p], m[p + J[1]], m[p + J[2]], m[p + J[3]] = h0, h1, h2, h3
                m[p + J[4]], m[p + J[5]], m[p + J[6]], m[p + J[7]] = h4, h5, h6, h7
                m[p + J[8]], m[p + J[9]], m[p + J[10]], m[p + J[11]] = h8, h9, h10, h11
                m[p + J[12]], m[p + J[13]], m[p + J[14]], m[p + J[15]] = h12, h13, h14, h15


with straight_line_vectorised():
    _gemm = numba.njit(["void(f4[:, :, ::1], f4[:, :, ::1], f4[:, :, ::1], i8)",
                        "void(f8[:, :, ::1], f8[:, :, ::1], f8[:, :, ::1], i8)"],
                       cache=True, fastmath={"contract"})(_gemm_body)


@numba.njit(cache=True, fastmath={"contract"})
def _tiles_out_rows(M, o, T, Q, K):
    """Q[i*6 + b, t] = (A^T m_t)[i, b] for output channel o's 6x6 products m_t = M[:, o, t]."""
    k2, k4, k8 = K[0], K[1], K[3]
    for b in range(6):
        m0, m1, m2, m3, m4, m5 = M[b, o], M[6 + b, o], M[12 + b, o], M[18 + b, o], M[24 + b, o], M[30 + b, o]
        q0, q1, q2, q3 = Q[b], Q[6 + b], Q[12 + b], Q[18 + b]
        for t in range(T):
            q0[t], q1[t], q2[t], q3[t] = _at(m0[t], m1[t], m2[t], m3[t], m4[t], m5[t], k2, k4, k8)


@numba.njit(cache=True, fastmath={"contract"})
def _tiles_out_store(Q, tw, images, tile_rows, K, y_o):
    """y_o[images[r], 4*tile_rows[r] + i, 4*tx + j] = (Q A)[i, j] of tile (r, tx), clipped to y."""
    k2, k4, k8 = K[0], K[1], K[3]
    ho, wo = y_o.shape[1], y_o.shape[2]
    for r in range(images.shape[0]):
        dst = y_o[images[r]]
        oy = 4 * tile_rows[r]
        for i in range(min(4, ho - oy)):
            row = dst[oy + i]
            q0, q1, q2, q3, q4, q5 = Q[6 * i], Q[6 * i + 1], Q[6 * i + 2], Q[6 * i + 3], Q[6 * i + 4], Q[6 * i + 5]
            for tx in range(tw):
                t, ox = r * tw + tx, 4 * tx
                y0, y1, y2, y3 = _at(q0[t], q1[t], q2[t], q3[t], q4[t], q5[t], k2, k4, k8)
                if ox + 4 <= wo:
                    row[ox], row[ox + 1], row[ox + 2], row[ox + 3] = y0, y1, y2, y3
                else:  # the last tile of a row whose width is not a multiple of 4
                    row[ox] = y0
                    if ox + 1 < wo:
                        row[ox + 1] = y1
                    if ox + 2 < wo:
                        row[ox + 2] = y2


@numba.njit(parallel=True, cache=True)
def _convolve(x, U, pad, n_tasks, th, tw, span, y, n_threads):
    """y = the valid 3x3 correlation of x zero-padded by `pad`, the batch split evenly into
    n_tasks runs of images, and chunks of span tiles (whole tile rows) per GEMM."""
    n, c, h, w = x.shape
    o, o4 = y.shape[1], U.shape[2]
    hp, wp = 4 * th + 2, 4 * tw + 2
    plane = hp * wp
    g = (n + n_tasks - 1) // n_tasks
    rows_per_chunk = span // tw
    K = np.array([2, 4, 5, 8], x.dtype)
    planes = np.zeros((n_threads, c, g * plane), x.dtype)
    # an odd row length: with power-of-two channel counts, the 36 rows of V (and of M) that one
    # tile writes would otherwise sit a multiple of 4 KiB apart, in the same few L1 sets
    # (measured: c64h8 forward 4.8 -> 4.0 ms)
    row = span + LANES + 1
    Vs = np.zeros((n_threads, 36, c, row), x.dtype)
    Ms = np.empty((n_threads, 36, o4, row), x.dtype)
    Zs = np.empty((n_threads, 6, wp), x.dtype)
    Qs = np.empty((n_threads, 24, span + LANES), x.dtype)
    where = np.zeros((n_threads, 3, rows_per_chunk), np.int64)
    for task in numba.prange(n_tasks):
        tid = numba.get_thread_id()
        xp, V, M, Z, Q = planes[tid], Vs[tid], Ms[tid], Zs[tid], Qs[tid]
        bases, images, tile_rows = where[tid, 0], where[tid, 1], where[tid, 2]
        first = task * n // n_tasks
        count = (task + 1) * n // n_tasks - first
        for k in range(count):
            for ch in range(c):
                dst = xp[ch]
                for r in range(h):
                    src, start = x[first + k, ch, r], numba.uint64(k * plane + (r + pad) * wp + pad)
                    for col in range(numba.uint64(w)):  # unsigned: a vectorised copy
                        dst[start + col] = src[col]
        for r0 in range(0, count * th, rows_per_chunk):
            rows = min(rows_per_chunk, count * th - r0)
            for r in range(rows):
                images[r], tile_rows[r] = (r0 + r) // th, (r0 + r) % th
                bases[r] = images[r] * plane + 4 * tile_rows[r] * wp
            lanes = -(-rows * tw // LANES) * LANES
            _tiles_in(xp, bases[:rows], tw, wp, Z, V, K)
            _gemm(U, V, M, lanes)
            for k in range(o):
                _tiles_out_rows(M, k, lanes, Q, K)
                _tiles_out_store(Q, tw, images[:rows], tile_rows[:rows], K, y[first:first + count, k])


def _layout(n, c, o4, th, tw, threads):
    """(tasks, tiles per chunk span): a chunk is whole tile rows whose V and M fit BUDGET; a
    task holds at most the images one chunk covers (at least one), and the task count is a whole
    number of rounds of the threads (7 tasks on 2 threads had left one thread idle 1/8 of the
    time), sizes differing by one image at most."""
    per = th * tw
    span = max(LANES, BUDGET // (36 * (c + o4)))
    g = max(1, min(n, span // per))
    n_tasks = min(n, -(-n // (g * threads)) * threads)
    span = min(span, -(-n // n_tasks) * per)
    return n_tasks, max(tw, span // tw * tw)


def _correlate(x, W, pad):
    """Valid 3x3 correlation of x (N, C, H, W) zero-padded by `pad` with W (O, C, 3, 3)."""
    n, c, h, w = x.shape
    o = W.shape[0]
    ho, wo = out_size(h, 3, 1, pad), out_size(w, 3, 1, pad)
    th, tw = -(-ho // 4), -(-wo // 4)
    o4 = -(-o // 4) * 4
    U = np.zeros((36, c, o4), x.dtype)
    _kernels(W, matrices(4, np.float64)[1], U)
    threads = numba.get_num_threads()
    n_tasks, span = _layout(n, c, o4, th, tw, threads)
    y = np.empty((n, o, ho, wo), x.dtype)
    _convolve(x, U, pad, n_tasks, th, tw, span, y, threads)
    return y


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C, 3, 3) -> y: (N, O, H + 2*pad - 2, W + 2*pad - 2)."""
    return _correlate(x, W, pad)


def backward(x, W, dy, stride, pad, groups, need_dx):
    """(dx or None, dW) for dy: (N, O, Ho, Wo)."""
    dx = None
    if need_dx:
        dx = _correlate(dy, np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)), 2 - pad)
    return dx, conv_flat.weight_gradient(x, dy, pad)
