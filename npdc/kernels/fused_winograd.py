"""Winograd F(4x4, 3x3) for inference with the layer's tail fused into the output, for the
compiled walk (npdc.kernels.walk): the transforms and GEMMs of npdc.kernels.conv_winograd4 (Lavin
& Gray 2016), the kernels transformed once when the plan is packed.

Why: a dense 3x3 stride-1 layer's direct kernels (npdc.kernels.fused_blocked) do all 9 multiply-
adds per output and channel pair; the engine's Winograd forward does a quarter of them in its
GEMMs but ran on the host, its tail a second pass over the output in NumPy, which cost it the
layers it wins on its own (docs/perf.md). Here each tile row's outputs go through the tail while
they are in cache: eight columns by eight channels at a time turned to NCHW in registers and
written through the tail, an identity residual read where they are written (write_rows); a
zero-pad residual, or channels short of eight, through the tile row turned channels-innermost
(finish_lanes, the residual's rows turned the same way first by load_rows) and then to NCHW.

Departures from conv_winograd4's forward: work is split by tile rows counted across the batch,
not by whole images, so one image still keeps every thread busy (its tile rows are shared out)
and a batch of small planes still fills a GEMM block (a task's tile rows run on across images);
one small image is split by groups of output channels as well. Each task copies the padded input
rows its tile rows reach (two rows more than it computes) into its own channels-innermost band.
A chunk's last four tiles or fewer take a GEMM of four tiles (gemm_four), not eight. Every
output is computed from its own tile in a fixed order of operations, so the bits do not depend
on the split or the thread count.
"""

import numba
import numpy as np

from npdc.kernels.conv_winograd4 import BUDGET, LANES, OUT_BLOCK, ROWS, _gemm, transformed_kernels
from npdc.kernels.conv_winograd4_transforms import cols_in, fill_rows, store_rows, strip_in, tile_out
from npdc.kernels.fused import PRANGE_ONLY, RES_IDENTITY, RES_NONE, RES_ZEROPAD
from npdc.kernels.simd import (fma16, ld16, prefer_512_bit_vectors, st16, straight_line_compiled, transpose8,
                               transpose8_tail)


GROUP = 2  # register blocks of 16 output channels a GEMM call takes (its widest register block)


def _gemm_four_body(V, U, M, t):
    """M[xi, t + i, o] = sum_c V[xi, t + i, c] U[xi, o // 16, c, o % 16] for i < 4: the products
    of four tiles, the GEMM of conv_winograd4 with half its register block, for the last tiles
    of a chunk when there are at most four (one small image has four tiles at 8x8 or 7x7, and
    eight rows would double its products)."""
    prefer_512_bit_vectors()
    u = numba.uint64
    n_xi, n_blocks, n_c = U.shape[0], U.shape[1], U.shape[2]
    lv, c8, lm, o16 = V.shape[1], V.shape[2], M.shape[1], M.shape[2]
    Vf, Uf, Mf = V.reshape(V.size), U.reshape(U.size), M.reshape(M.size)  # flat: no view per row
    z = np.zeros(1, V.dtype)[0]
    zero = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    k1, k2, k3 = u(c8), u(2 * c8), u(3 * c8)
    for xi in range(n_xi):
        v, m = u((xi * lv + t) * c8), u((xi * lm + t) * o16)
        for block in range(0, n_blocks, 2):
            ua = u((xi * n_blocks + block) * n_c * 16)
            ub = ua + u(n_c * 16) if block + 1 < n_blocks else ua
            s0 = s1 = s2 = s3 = q0 = q1 = q2 = q3 = zero
            for c in range(n_c):
                e, f, w = ld16(Uf, ua + u(16 * c)), ld16(Uf, ub + u(16 * c)), v + u(c)
                v0, v1, v2, v3 = Vf[w], Vf[w + k1], Vf[w + k2], Vf[w + k3]
                s0, s1, s2, s3 = fma16(s0, v0, e), fma16(s1, v1, e), fma16(s2, v2, e), fma16(s3, v3, e)
                q0, q1, q2, q3 = fma16(q0, v0, f), fma16(q1, v1, f), fma16(q2, v2, f), fma16(q3, v3, f)
            p = m + u(16 * block)
            for i, a, b in ((0, s0, q0), (1, s1, q1), (2, s2, q2), (3, s3, q3)):
                st16(Mf, p + u(i * o16), a)
                if block + 1 < n_blocks:
                    st16(Mf, p + u(i * o16 + 16), b)


gemm_four = straight_line_compiled(_gemm_four_body, "F[:, :, ::1], F[:, :, :, ::1], F[:, :, ::1], i8")


@numba.njit(cache=True)
def products(V, U, M, tiles):
    """M = the products of the first `tiles` tiles of V (the rows past them up to a whole
    register block zeroed in V, their products computed and dropped): blocks of eight tiles,
    a last one of four when no more are left."""
    full = tiles // ROWS * ROWS
    if tiles - full > 4 or tiles == full:
        V[:, tiles:-(-tiles // ROWS) * ROWS] = 0
        _gemm(V, U, M, -(-tiles // ROWS) * ROWS)
        return
    V[:, tiles:full + 4] = 0
    if full:
        _gemm(V, U, M, full)
    gemm_four(V, U, M, full)


def grouped_kernels(W):
    """The kernels' transform for conv_winograd_fused, flat: U (36, O16/16, C8, 16) of
    conv_winograd4.transformed_kernels cut into groups of GROUP blocks of output channels, each
    group C-contiguous (36, blocks, C8, 16) and the groups one after another, so that a task can
    multiply by one group alone."""
    U = transformed_kernels(W)
    return np.concatenate([U[:, b:b + GROUP].ravel() for b in range(0, U.shape[1], GROUP)])


@numba.njit(cache=True)
def load_rows(res, mode, front, stride, image, oy, rows, k0, S):
    """S[i, col, k] = the residual of output (image, k0 + k, oy + i, col) for i < rows and k
    below S's lanes (zero where there is none): an identity residual's NCHW rows turned
    channels-innermost, eight channels by eight columns through transpose8, or option A's
    subsample one value at a time."""
    lanes = S.shape[2]
    if mode == RES_IDENTITY:
        ho, wo, o = res.shape[2], res.shape[3], min(lanes, res.shape[1] - k0)
        hw, o8, w8 = ho * wo, o // 8 * 8, wo // 8 * 8
        for i in range(rows):
            src = ((image * res.shape[1] + k0) * ho + oy + i) * wo
            for k in range(0, o8, 8):
                for col0 in range(0, w8, 8):
                    transpose8(res, src + k * hw + col0, hw, S, (i * S.shape[1] + col0) * lanes + k, lanes)
            for col in range(wo):
                for k in range(o8 if col < w8 else 0, o):
                    S[i, col, k] = res[image, k0 + k, oy + i, col]
        return
    for i in range(rows):
        for col in range(S.shape[1]):
            for k in range(lanes):
                c = k0 + k - front
                S[i, col, k] = res[image, c, (oy + i) * stride, col * stride] if 0 <= c < res.shape[1] else 0


@numba.njit(cache=True)
def finish_lanes(R, S, rows, wo, scale, shift, act, slopes, with_res):
    """R[i, col, k] = act(R * scale[k] + shift[k] (+ S[i, col, k])) for i < rows, col < wo, over
    all k of R's lanes (scale, shift, slopes as many): the tail with the output channels
    innermost, so each step is a vector of channels. (A position's lanes as views: through flat
    offsets into R and S the loop ran four times slower, scalar.)"""
    for i in range(rows):
        for col in range(wo):
            r = R[i, col]
            s = S[i, col]
            for k in range(r.size):
                v = r[k] * scale[k] + shift[k]
                if with_res:
                    v += s[k]
                if act and v < 0:
                    v *= slopes[k]
                r[k] = v


@numba.njit(cache=True)
def write_rows(R, rows, k0, o, tail, y, image, oy):
    """What finish_lanes and then store_rows write for a tile row without a residual or with an
    identity one (o, a multiple of 8, of R's lanes kept), in the same bits: eight columns by eight
    channels of R at a time transposed in registers and written through the tail by
    transpose8_tail, the residual read from its NCHW rows where they are written, a row's last
    columns by masked stores (R's rows are 4 * tw >= Wo wide, the last one followed by S, so the
    eight positions read stay inside the workspace). Why: turning the residual channels-innermost,
    applying the tail there and turning the sums back moved every output three times
    (docs/perf.md, eighteenth session)."""
    lanes, ho, wo = R.shape[2], y.shape[2], y.shape[3]
    hw, add = ho * wo, tail.res_mode == RES_IDENTITY
    for k in range(0, o, 8):
        for i in range(rows):
            src, dst = (i * R.shape[1] * lanes) + k, ((image * y.shape[1] + k0 + k) * ho + oy + i) * wo
            for col0 in range(0, wo, 8):
                transpose8_tail(R, src + col0 * lanes, lanes, y, dst + col0, hw, tail.scale, tail.shift,
                                tail.slopes, k0 + k, tail.res, tail.act, add, 0, min(8, wo - col0))


@numba.njit(cache=True)
def layout(n, c, o, ho, wo, threads):
    """(row tasks, parts, tile rows per chunk): the batch's tile rows shared among row tasks in
    chunks whose transforms and products fit BUDGET floats, one chunk a task, the tasks a whole
    number of rounds of the threads; when the tile rows are too few for a register block of
    tiles each (one small image), fewer row tasks, each split into `parts` tasks by groups of
    output channels, so that both threads still work."""
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    c8, o16 = -(-c // LANES) * LANES, -(-o // OUT_BLOCK) * OUT_BLOCK
    chunk = max(1, max(2 * ROWS, BUDGET // (36 * (c8 + o16))) // tw)
    total = n * th
    tasks = -(-total // chunk)
    tasks = min(total, -(-tasks // threads) * threads)
    tasks = max(1, min(tasks, total * tw // ROWS))
    groups = -(-o16 // (16 * GROUP))
    parts = min(groups, max(1, threads // tasks))
    return tasks, parts, min(chunk, -(-total // tasks))


@numba.njit(cache=True)
def workspace_floats(chunk, tw, c8):
    """Floats of one thread's workspace (carve) for chunks of `chunk` tile rows tw tiles wide."""
    lines = -(-chunk * tw // ROWS) * ROWS + 1
    run = (4 * tw + 2) * c8
    wide = 16 * GROUP
    return chunk * 6 * run + 16 + 36 * lines * (c8 + wide) + 6 * run + 24 * wide + 32 * tw * wide + 3 * wide


@numba.njit(cache=True)
def aligned_rows(rows, size, dtype):
    """An empty (rows, size) array whose rows start on 64-byte lines (size a multiple of 64
    bytes): Numba aligns new arrays to 32 bytes only, and a 64-byte vector store across two
    lines costs two (measured: the same kernel a tenth slower or faster by where its buffers
    happened to start)."""
    raw = np.empty(rows * size + 64, dtype)
    skip = (-raw.ctypes.data) % 64 // raw.itemsize
    return raw[skip:skip + rows * size].reshape((rows, size))


@numba.njit(cache=True)
def carve(ws, chunk, lines, run, c8, tw, wide):
    """One thread's workspace cut into the padded band xp, the transforms V and the strip Z (all
    three at the same place whatever `wide`), and for a group of `wide` output channels its
    products M, the half-transformed Q, the output rows R, the residual rows S (zeroed) and three
    vectors of its lanes."""
    xp = ws[:chunk * 6 * run + 16]  # at most six padded rows a tile row
    at = xp.size
    V = ws[at:at + 36 * lines * c8].reshape((36, lines, c8))
    at += V.size
    Z = ws[at:at + 6 * run].reshape((6, run))
    at += Z.size
    M = ws[at:at + 36 * lines * wide].reshape((36, lines, wide))
    at += M.size
    Q = ws[at:at + 24 * wide].reshape((4, 6, wide))
    at += Q.size
    R = ws[at:at + 16 * tw * wide].reshape((4, 4 * tw, wide))
    at += R.size
    S = ws[at:at + 16 * tw * wide].reshape((4, 4 * tw, wide))
    S[:] = 0
    at += S.size
    return xp, V, Z, M, Q, R, S, ws[at:at + 3 * wide].reshape((3, wide))


@numba.njit(cache=True)
def _transform_in(x, pad, a, b, th, tw, run, c8, xp, Z, V, K, starts):
    """V[:, r*tw + tx] = the input transforms of the tiles of batch tile rows a .. b - 1 (row g:
    image g // th, tile row g % th), through their padded rows copied into xp, each image's
    once."""
    at, g = 0, a
    while g < b:  # one image's run of tile rows: its padded rows once, shared
        image, t0 = g // th, g % th
        t1 = min(th, t0 + b - g)
        fill_rows(x, image, 4 * t0, 4 * t1 + 2, pad, run, c8, xp, at)
        for t in range(t0, t1):
            starts[g - a + t - t0] = at + 4 * (t - t0) * run
        at += (4 * (t1 - t0) + 2) * run
        g += t1 - t0
    for r in range(b - a):
        strip_in(xp, starts[r], run, Z, K)
        cols_in(Z, tw, c8, r * tw, V, K)


@numba.njit(cache=True)
def _task(x, U, pad, tail, y, g0, g1, q0, q1, chunk, K, ws):
    """Tile rows g0 .. g1 - 1 of the batch for the output channels of groups q0 .. q1 - 1, a chunk
    of `chunk` tile rows at a time: transform the inputs once, then per group multiply,
    transform back and write each tile row through the tail."""
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    c8, o16 = U.size // (36 * 16 * (-(-o // 16))), 16 * (-(-o // 16))
    run, block = (4 * tw + 2) * c8, 36 * c8 * 16
    lines = -(-chunk * tw // ROWS) * ROWS + 1  # odd: see conv_winograd4._convolve
    xp, V, Z, _, _, _, _, _ = carve(ws, chunk, lines, run, c8, tw, 16 * GROUP)
    starts = np.empty(chunk, np.int64)  # where each tile row's six padded rows start in xp
    for a in range(g0, g1, chunk):
        b = min(g1, a + chunk)
        _transform_in(x, pad, a, b, th, tw, run, c8, xp, Z, V, K, starts)
        for q in range(q0, q1):
            k0 = q * 16 * GROUP
            wide = min(16 * GROUP, o16 - k0)
            Uq = U[k0 // 16 * block:(k0 + wide) // 16 * block].reshape((36, wide // 16, c8, 16))
            _, _, _, Mq, Qq, Rq, Sq, lanes = carve(ws, chunk, lines, run, c8, tw, wide)
            scale, shift, slopes = lanes[0], lanes[1], lanes[2]
            kept = min(wide, o - k0)
            scale[kept:], shift[kept:], slopes[kept:] = 0, 0, 0
            scale[:kept], shift[:kept] = tail.scale[k0:k0 + kept], tail.shift[k0:k0 + kept]
            slopes[:kept] = tail.slopes[k0:k0 + kept]
            products(V, Uq, Mq, (b - a) * tw)
            for r in range(b - a):
                image, row = (a + r) // th, (a + r) % th
                for tx in range(tw):
                    tile_out(Mq, r * tw + tx, wide, Qq, Rq, 4 * tx, K)
                rows = min(4, ho - 4 * row)
                if tail.res_mode != RES_ZEROPAD and kept % 8 == 0:
                    write_rows(Rq, rows, k0, kept, tail, y, image, 4 * row)
                    continue
                if tail.res_mode != RES_NONE:
                    load_rows(tail.res, tail.res_mode, tail.res_front, tail.res_stride, image,
                              4 * row, rows, k0, Sq)
                finish_lanes(Rq, Sq, rows, wo, scale, shift, tail.act, slopes, tail.res_mode != RES_NONE)
                store_rows(Rq, rows, k0, y, image, 4 * row)


@numba.njit(parallel=PRANGE_ONLY, cache=True)
def conv_winograd_fused(x, U, pad, tail, y, threads):
    """y (N, O, Ho, Wo) = tail(the 3x3 stride-1 correlation of x (N, C, H, W) zero-padded by
    `pad` with the kernels whose transform is U (grouped_kernels, flat)); the batch's tile rows
    and groups of output channels shared among tasks for `threads` threads (layout)."""
    n, c = x.shape[0], x.shape[1]
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    tasks, parts, chunk = layout(n, c, o, ho, wo, threads)
    total, groups = n * ((ho + 3) // 4), -(-o // (16 * GROUP))
    K = np.array([2, 4, 5, 8], x.dtype)
    ws = aligned_rows(threads, workspace_floats(chunk, (wo + 3) // 4, -(-c // LANES) * LANES), x.dtype)
    for t in numba.prange(tasks * parts):
        row, part = t // parts, t % parts
        _task(x, U, pad, tail, y, row * total // tasks, (row + 1) * total // tasks,
              part * groups // parts, (part + 1) * groups // parts, chunk, K, ws[numba.get_thread_id()])
