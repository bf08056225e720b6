"""The transforms of conv_winograd4's F(4x4, 3x3) tiles, with the channels innermost, and the
copies in and out of that layout.

Holds: the one-axis transforms B^T (input), A^T (output) and A (dy, for the weight gradient) on
scalars and lane by lane on 8-tuples; the input transform of a chunk of tile rows (strip_in down
the columns over whole padded rows, then cols_in along the rows per tile, into V (36, T, C8)),
dy's transform for the weight gradient (strip_dy, cols_dy), the output transform of one tile
(tile_out), and the copies between NCHW and the channels-innermost planes (fill_rows into a
band of a plane's rows, fill into whole planes, store_rows out of a tile row from any first
channel), which move 8 x 8 blocks through simd.transpose8.

Why eight lanes: a tile's transform is a handful of adds per value, so its cost is loads and
stores; eight channels side by side are one vector, and the 8-tuples below are written so that
every load of a step comes before its stores, which lets the SLP vectoriser pack them. The
kernels whose names end in _body are compiled with that vectoriser (simd's
straight_line_compiled), each float type when a call first brings it.
"""

import numba
import numpy as np

from npdc.kernels.simd import straight_line_compiled, transpose8


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


J = tuple(np.uint64(j) for j in range(8))  # unsigned offsets, so indexing emits no wraparound test


@numba.njit(cache=True, fastmath={"contract"})
def strip_in(xp, p, run, Z, K):
    """Z[a, i] = (B^T d)[a] for d the six values xp[p + r*run + i], r = 0..5: one tile row's
    input transform down the columns, over whole padded rows of all channels (contiguous)."""
    k2, k4, k5 = K[0], K[1], K[2]
    x0, x1, x2 = xp[p:p + run], xp[p + run:p + 2 * run], xp[p + 2 * run:p + 3 * run]
    x3, x4, x5 = xp[p + 3 * run:p + 4 * run], xp[p + 4 * run:p + 5 * run], xp[p + 5 * run:p + 6 * run]
    z0, z1, z2, z3, z4, z5 = Z[0], Z[1], Z[2], Z[3], Z[4], Z[5]
    for i in range(numba.uint64(run)):
        z0[i], z1[i], z2[i], z3[i], z4[i], z5[i] = _bt(x0[i], x1[i], x2[i], x3[i], x4[i], x5[i], k2, k4, k5)


@numba.njit(cache=True, inline="always")
def _ld8(v, q):
    """v[q .. q+7] as a tuple: all loads of a step come before its stores, so the SLP vectoriser
    may pack them without knowing that the arrays do not overlap."""
    return v[q], v[q + J[1]], v[q + J[2]], v[q + J[3]], v[q + J[4]], v[q + J[5]], v[q + J[6]], v[q + J[7]]


@numba.njit(cache=True, inline="always")
def _st8(v, q, s):
    """v[q .. q+7] = the 8-tuple s."""
    v[q], v[q + J[1]], v[q + J[2]], v[q + J[3]] = s[0], s[1], s[2], s[3]
    v[q + J[4]], v[q + J[5]], v[q + J[6]], v[q + J[7]] = s[4], s[5], s[6], s[7]


@numba.njit(cache=True, inline="always")
def _st8x6(rows, q, e):
    """rows[i][q .. q+7] = e[i] for six rows and six 8-tuples."""
    _st8(rows[0], q, e[0])
    _st8(rows[1], q, e[1])
    _st8(rows[2], q, e[2])
    _st8(rows[3], q, e[3])
    _st8(rows[4], q, e[4])
    _st8(rows[5], q, e[5])


@numba.njit(cache=True, inline="always")
def _map8(f, d0, d1, d2, d3, d4, d5, k0, k1, k2):
    """f(d0[l], ..., d5[l], k0, k1, k2) for the eight lanes l of six 8-tuples, lane by lane."""
    return (f(d0[0], d1[0], d2[0], d3[0], d4[0], d5[0], k0, k1, k2),
            f(d0[1], d1[1], d2[1], d3[1], d4[1], d5[1], k0, k1, k2),
            f(d0[2], d1[2], d2[2], d3[2], d4[2], d5[2], k0, k1, k2),
            f(d0[3], d1[3], d2[3], d3[3], d4[3], d5[3], k0, k1, k2),
            f(d0[4], d1[4], d2[4], d3[4], d4[4], d5[4], k0, k1, k2),
            f(d0[5], d1[5], d2[5], d3[5], d4[5], d5[5], k0, k1, k2),
            f(d0[6], d1[6], d2[6], d3[6], d4[6], d5[6], k0, k1, k2),
            f(d0[7], d1[7], d2[7], d3[7], d4[7], d5[7], k0, k1, k2))


@numba.njit(cache=True, inline="always")
def _row(ls, i):
    """Element i of each of the eight lanes' results: one 8-tuple."""
    return ls[0][i], ls[1][i], ls[2][i], ls[3][i], ls[4][i], ls[5][i], ls[6][i], ls[7][i]


@numba.njit(cache=True, inline="always")
def _bt8(d0, d1, d2, d3, d4, d5, k2, k4, k5):
    """_bt lane by lane on six 8-tuples: six 8-tuples."""
    ls = _map8(_bt, d0, d1, d2, d3, d4, d5, k2, k4, k5)
    return _row(ls, 0), _row(ls, 1), _row(ls, 2), _row(ls, 3), _row(ls, 4), _row(ls, 5)


@numba.njit(cache=True, inline="always")
def _at8(m0, m1, m2, m3, m4, m5, k2, k4, k8):
    """_at lane by lane on six 8-tuples: four 8-tuples."""
    ls = _map8(_at, m0, m1, m2, m3, m4, m5, k2, k4, k8)
    return _row(ls, 0), _row(ls, 1), _row(ls, 2), _row(ls, 3)


@numba.njit(cache=True, inline="always")
def _a(e0, e1, e2, e3, k2, k4, k8):
    """A e for one 4-vector e (A is the transpose of A^T): the weight gradient's transform of dy."""
    s02, s13 = e0 + e2, e1 + e3
    t02, t13 = e0 + k4 * e2, k2 * e1 + k8 * e3
    return e0, s02 + s13, s02 - s13, t02 + t13, t02 - t13, e3


@numba.njit(cache=True, inline="always")
def _a_of_four(e0, e1, e2, e3, unused0, unused1, k2, k4, k8):
    """_a in _map8's form (six values, the last two unused)."""
    return _a(e0, e1, e2, e3, k2, k4, k8)


@numba.njit(cache=True, inline="always")
def _a8(e0, e1, e2, e3, k2, k4, k8):
    """_a lane by lane on four 8-tuples: six 8-tuples."""
    ls = _map8(_a_of_four, e0, e1, e2, e3, e0, e0, k2, k4, k8)
    return _row(ls, 0), _row(ls, 1), _row(ls, 2), _row(ls, 3), _row(ls, 4), _row(ls, 5)


def _cols_in_body(Z, tw, c8, t0, V, K):
    """V[a*6 + b, t0 + tx, c] = (B^T d)[b] for d = Z[a] at columns 4*tx .. 4*tx + 5, channel c:
    the input transform along the rows, tile by tile, eight channels per step."""
    k2, k4, k5 = K[0], K[1], K[2]
    for a in range(6):
        z = Z[a]
        for tx in range(tw):
            q = 4 * tx * c8
            d0, d1, d2 = z[q:q + c8], z[q + c8:q + 2 * c8], z[q + 2 * c8:q + 3 * c8]
            d3, d4, d5 = z[q + 3 * c8:q + 4 * c8], z[q + 4 * c8:q + 5 * c8], z[q + 5 * c8:q + 6 * c8]
            v0, v1, v2 = V[6 * a, t0 + tx], V[6 * a + 1, t0 + tx], V[6 * a + 2, t0 + tx]
            v3, v4, v5 = V[6 * a + 3, t0 + tx], V[6 * a + 4, t0 + tx], V[6 * a + 5, t0 + tx]
            for c0 in range(0, c8, 8):
                ch = numba.uint64(c0)
                _st8x6((v0, v1, v2, v3, v4, v5), ch, _bt8(_ld8(d0, ch), _ld8(d1, ch), _ld8(d2, ch), _ld8(d3, ch),
                                                          _ld8(d4, ch), _ld8(d5, ch), k2, k4, k5))


@numba.njit(cache=True, inline="always")
def _at_rows(m, s, o16, k2, k4, k8):
    """s[i][o] = (A^T (m[0][o], ..., m[5][o]))[i] for the six rows m, four rows s and all o."""
    for o0 in range(0, o16, 8):
        o = numba.uint64(o0)
        e = _at8(_ld8(m[0], o), _ld8(m[1], o), _ld8(m[2], o), _ld8(m[3], o), _ld8(m[4], o), _ld8(m[5], o),
                 k2, k4, k8)
        _st8(s[0], o, e[0])
        _st8(s[1], o, e[1])
        _st8(s[2], o, e[2])
        _st8(s[3], o, e[3])


def _tile_out_body(M, t, o16, Q, R, q0x, K):
    """R[i, q0x + j, o] = (A^T m A)[i, j] for tile t's products m = M[:, t, o], eight output
    channels per step (Q holds A^T m)."""
    k2, k4, k8 = K[0], K[1], K[3]
    for b in range(6):
        _at_rows((M[b, t], M[6 + b, t], M[12 + b, t], M[18 + b, t], M[24 + b, t], M[30 + b, t]),
                 (Q[0, b], Q[1, b], Q[2, b], Q[3, b]), o16, k2, k4, k8)
    for i in range(4):
        _at_rows((Q[i, 0], Q[i, 1], Q[i, 2], Q[i, 3], Q[i, 4], Q[i, 5]),
                 (R[i, q0x], R[i, q0x + 1], R[i, q0x + 2], R[i, q0x + 3]), o16, k2, k4, k8)


cols_in = straight_line_compiled(_cols_in_body, "F[:, ::1], i8, i8, i8, F[:, :, ::1], F[::1]")
tile_out = straight_line_compiled(_tile_out_body, "F[:, :, ::1], i8, i8, F[:, :, ::1], F[:, :, ::1], i8, F[::1]")


@numba.njit(cache=True, inline="always")
def transform_rows(strip, cols, xp, r0, rows, th, tw, plane, run, lanes, Z, V, K):
    """V[:, r*tw + tx] = the transforms (strip down the columns, then cols along the rows) of the
    tiles of tile rows r0 .. r0 + rows - 1, counted image by image over the planes xp (th tile
    rows an image): x's through strip_in and cols_in, dy's through strip_dy and cols_dy."""
    for r in range(rows):
        image, tile_row = (r0 + r) // th, (r0 + r) % th
        strip(xp, image * plane + 4 * tile_row * run, run, Z, K)
        cols(Z, tw, lanes, r * tw, V, K)


@numba.njit(cache=True)
def fill_rows(x, image, r0, r1, pad, run, lanes, xp, at):
    """xp[at + (r - r0)*run + col*lanes + ch] = the zero-padded x[image, ch] at padded row r and
    column col, for r0 <= r < r1: a band of one image's padded plane with the channels innermost,
    every value written (the padding and the lanes past C as zeros), so the band needs no
    clearing first."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    hw, c8, w8 = h * w, c // 8 * 8, w // 8 * 8
    xf, u = x.reshape(x.size), numba.uint64
    for r in range(r0, r1):
        row = at + (r - r0) * run
        if r < pad or r >= h + pad:
            xp[row:row + run] = 0
            continue
        xp[row:row + pad * lanes] = 0
        xp[row + (w + pad) * lanes:row + run] = 0
        base, src = row + pad * lanes, image * c * hw + (r - pad) * w
        for c0 in range(0, c8, 8):
            for col0 in range(0, w8, 8):
                transpose8(x, src + c0 * hw + col0, hw, xp, base + col0 * lanes + c0, lanes)
            if w8 < w and w8 > 0:  # the last columns: one more block ending at the row's end
                transpose8(x, src + c0 * hw + w - 8, hw, xp, base + (w - 8) * lanes + c0, lanes)
        first = c8 if w8 > 0 else 0  # channels below it are written
        for col in range(w):  # flat unsigned indices: x's 4-D index kept wraparound tests and ran scalar
            d, s = u(base + col * lanes), u(src + col)
            for ch in range(u(first), u(c)):
                xp[d + ch] = xf[s + ch * u(hw)]
            xp[base + col * lanes + c:base + (col + 1) * lanes] = 0


@numba.njit(cache=True)
def fill(x, first, count, pad, plane, run, lanes, xp):
    """Images first .. first + count - 1 of x (NCHW), each a whole zero-padded plane with the
    channels innermost, `plane` floats apart in xp: fill_rows over all plane // run rows."""
    for k in range(count):
        fill_rows(x, first + k, 0, plane // run, pad, run, lanes, xp, k * plane)


@numba.njit(cache=True)
def store_rows(R, rows, k0, y, image, oy):
    """y[image, k0 + k, oy + i, col] = R[i, col, k] for i < rows and the channels of y from k0
    that R's lanes hold: a tile row's (W, lanes) outputs into y's NCHW rows, blocks of eight
    columns by eight channels through transpose8 (channel blocks outermost: measured faster
    than rows outermost)."""
    lanes, ho, wo = R.shape[2], y.shape[2], y.shape[3]
    o = min(lanes, y.shape[1] - k0)
    hw, o8, w8 = ho * wo, o // 8 * 8, wo // 8 * 8
    for k in range(0, o8, 8):
        for i in range(rows):
            src, dst = i * R.shape[1] * lanes, ((image * y.shape[1] + k0) * ho + oy + i) * wo
            for col0 in range(0, w8, 8):
                transpose8(R, src + col0 * lanes + k, lanes, y, dst + k * hw + col0, hw)
    for i in range(rows):
        for k in range(o):
            for col in range(w8 if k < o8 else 0, wo):
                y[image, k0 + k, oy + i, col] = R[i, col, k]


@numba.njit(cache=True, fastmath={"contract"})
def strip_dy(dp, p, run, Z, K):
    """Z[a, i] = (A e)[a] for e the four values dp[p + r*run + i], r = 0..3: one tile row of dy
    transformed down the columns, over whole rows of all output channels (contiguous)."""
    k2, k4, k8 = K[0], K[1], K[3]
    e0, e1, e2, e3 = dp[p:p + run], dp[p + run:p + 2 * run], dp[p + 2 * run:p + 3 * run], dp[p + 3 * run:p + 4 * run]
    z0, z1, z2, z3, z4, z5 = Z[0], Z[1], Z[2], Z[3], Z[4], Z[5]
    for i in range(numba.uint64(run)):
        z0[i], z1[i], z2[i], z3[i], z4[i], z5[i] = _a(e0[i], e1[i], e2[i], e3[i], k2, k4, k8)


def _cols_dy_body(Z, tw, o8, t0, Y, K):
    """Y[a*6 + b, t0 + tx, o] = (A e)[b] for e = Z[a] at columns 4*tx .. 4*tx + 3, channel o."""
    k2, k4, k8 = K[0], K[1], K[3]
    for a in range(6):
        z = Z[a]
        for tx in range(tw):
            q = 4 * tx * o8
            e0, e1, e2, e3 = z[q:q + o8], z[q + o8:q + 2 * o8], z[q + 2 * o8:q + 3 * o8], z[q + 3 * o8:q + 4 * o8]
            y0, y1, y2 = Y[6 * a, t0 + tx], Y[6 * a + 1, t0 + tx], Y[6 * a + 2, t0 + tx]
            y3, y4, y5 = Y[6 * a + 3, t0 + tx], Y[6 * a + 4, t0 + tx], Y[6 * a + 5, t0 + tx]
            for o0 in range(0, o8, 8):
                o = numba.uint64(o0)
                _st8x6((y0, y1, y2, y3, y4, y5), o, _a8(_ld8(e0, o), _ld8(e1, o), _ld8(e2, o), _ld8(e3, o), k2, k4, k8))


cols_dy = straight_line_compiled(_cols_dy_body, "F[:, ::1], i8, i8, i8, F[:, :, ::1], F[::1]")
