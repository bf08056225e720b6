"""The register passes of the stride-1 sparse convolution (npdc.kernels.sparse_s1) and the
decoding of a weight row they read.

A weight row of npdc.kernels.sparse (column steps and codebook indices, EIE's format) is decoded
once per call into (input offset, weight) pairs; a pass then sums up to eight 16-position chunks
of its outputs in vector registers, one broadcast weight and one multiply-add per chunk per pair,
as the sparse 1x1 kernels of Elsen et al. 2020 ("Fast Sparse ConvNets") do; a tap of any kernel
size is a shifted run of the padded input, so the same pass serves every size. Every output is
summed in its row's entry order, whatever the chunk it falls in.

Inputs and sums are addressed by offsets into whole arrays (x0, a0), not by slices: the passes
run once per row and chunk group, and a slice is a new array with its own reference counting.
"""

import numba
import numpy as np

from npdc.kernels.simd import fma16, ld16, prefer_512_bit_vectors, st16, straight_line_compiled
from npdc.kernels.sparse import BAD_COLUMN, BAD_INDEX


@numba.njit(cache=True)
def tap_offsets(c_in, kh, kw, hp, wp):
    """Where column c*kh*kw + i*kw + j of a weight row starts in one padded image (C, Hp, Wp)."""
    lut = np.empty(c_in * kh * kw, np.uint32)  # the caller bounds an image below 2**32 values
    r = 0
    for c in range(c_in):
        for i in range(kh):
            for j in range(kw):
                lut[r] = c * hp * wp + i * wp + j
                r += 1
    return lut


@numba.njit(cache=True)
def decode_row(rowptr, cols, vidx, table, lut, o, offs, vals):
    """Row o's entries as (input offset, weight) pairs in offs/vals[:count] (a filler: weight 0,
    which adds nothing); returns count, or BAD_COLUMN / BAD_INDEX (check_row) at the first entry
    that points outside lut or table, before reading there. Unsigned indices and no branch on
    the fillers: this runs once per entry per call."""
    n_cols, n_values = np.uint64(lut.shape[0]), np.uint64(table.shape[0])
    c, k = np.uint64(0), np.uint64(0)
    for e in range(np.uint64(rowptr[o]), np.uint64(rowptr[o + 1])):
        c += np.uint64(cols[e])
        v = np.uint64(vidx[e])
        if c >= n_cols:
            return BAD_COLUMN
        if v >= n_values:
            return BAD_INDEX
        offs[k], vals[k] = lut[c], table[v]
        k += np.uint64(1)
    return np.int64(k)


@numba.njit(cache=True, inline="always")
def _store8(acc, at, sums):
    """acc[at[v] .. at[v]+15] = sums[v] for the eight 16-tuples of a register pass."""
    st16(acc, at[0], sums[0])
    st16(acc, at[1], sums[1])
    st16(acc, at[2], sums[2])
    st16(acc, at[3], sums[3])
    st16(acc, at[4], sums[4])
    st16(acc, at[5], sums[5])
    st16(acc, at[6], sums[6])
    st16(acc, at[7], sums[7])


def _rows8_body(xf, offs, vals, e0, e1, d0, d1, d2, d3, d4, d5, d6, d7, s0, s1, s2, s3, s4, s5, s6,
                s7, acc):
    """acc[s_v .. s_v+15] = sum over entries e0..e1-1 of vals[e] * xf[offs[e] + d_v ..], v < 8:
    eight 16-position chunks summed in registers, each entry's weight loaded once."""
    prefer_512_bit_vectors()
    acc[s0] = 0  # a zero of the float type; this chunk is written below anyway
    z = acc[s0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    for e in range(e0, e1):
        w, b = vals[e], offs[e]
        a0, a1 = fma16(a0, w, ld16(xf, b + d0)), fma16(a1, w, ld16(xf, b + d1))
        a2, a3 = fma16(a2, w, ld16(xf, b + d2)), fma16(a3, w, ld16(xf, b + d3))
        a4, a5 = fma16(a4, w, ld16(xf, b + d4)), fma16(a5, w, ld16(xf, b + d5))
        a6, a7 = fma16(a6, w, ld16(xf, b + d6)), fma16(a7, w, ld16(xf, b + d7))
    _store8(acc, (s0, s1, s2, s3, s4, s5, s6, s7), (a0, a1, a2, a3, a4, a5, a6, a7))


def _rows4_body(xf, offs, vals, e0, e1, d0, d1, d2, d3, s0, s1, s2, s3, acc):
    """_rows8_body for four chunks."""
    prefer_512_bit_vectors()
    acc[s0] = 0  # a zero of the float type; this chunk is written below anyway
    z = acc[s0]
    a0 = a1 = a2 = a3 = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    for e in range(e0, e1):
        w, b = vals[e], offs[e]
        a0, a1 = fma16(a0, w, ld16(xf, b + d0)), fma16(a1, w, ld16(xf, b + d1))
        a2, a3 = fma16(a2, w, ld16(xf, b + d2)), fma16(a3, w, ld16(xf, b + d3))
    st16(acc, s0, a0)
    st16(acc, s1, a1)
    st16(acc, s2, a2)
    st16(acc, s3, a3)


rows8_sums = straight_line_compiled(_rows8_body, "F[::1], u4[::1], F[::1], i8, i8, " + "u8, " * 16 + "F[::1]")
rows4_sums = straight_line_compiled(_rows4_body, "F[::1], u4[::1], F[::1], i8, i8, " + "u8, " * 8 + "F[::1]")


def _four_rows_body(xf, offs, vals, count, L, d0, d1, s00, s01, s10, s11, s20, s21, s30, s31, acc):
    """Two chunks (displacements d0, d1) of four rows at once, row r's pairs at offs/vals[r * L:],
    each padded with zero weights to `count`: acc[s_rc ..] = row r's sums over chunk c."""
    prefer_512_bit_vectors()
    acc[s00] = 0  # a zero of the float type; this chunk is written below anyway
    z = acc[s00]
    a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    for e in range(count):
        w0, b0, w1, b1 = vals[e], offs[e], vals[L + e], offs[L + e]
        w2, b2, w3, b3 = vals[2 * L + e], offs[2 * L + e], vals[3 * L + e], offs[3 * L + e]
        a00, a01 = fma16(a00, w0, ld16(xf, b0 + d0)), fma16(a01, w0, ld16(xf, b0 + d1))
        a10, a11 = fma16(a10, w1, ld16(xf, b1 + d0)), fma16(a11, w1, ld16(xf, b1 + d1))
        a20, a21 = fma16(a20, w2, ld16(xf, b2 + d0)), fma16(a21, w2, ld16(xf, b2 + d1))
        a30, a31 = fma16(a30, w3, ld16(xf, b3 + d0)), fma16(a31, w3, ld16(xf, b3 + d1))
    _store8(acc, (s00, s01, s10, s11, s20, s21, s30, s31), (a00, a01, a10, a11, a20, a21, a30, a31))


def _two_rows_body(xf, offs, vals, count, L, d0, d1, d2, d3, s00, s01, s02, s03, s10, s11, s12, s13,
                   acc):
    """_four_rows_body for four chunks of two rows."""
    prefer_512_bit_vectors()
    acc[s00] = 0
    z = acc[s00]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    for e in range(count):
        w0, b0, w1, b1 = vals[e], offs[e], vals[L + e], offs[L + e]
        a00, a01 = fma16(a00, w0, ld16(xf, b0 + d0)), fma16(a01, w0, ld16(xf, b0 + d1))
        a02, a03 = fma16(a02, w0, ld16(xf, b0 + d2)), fma16(a03, w0, ld16(xf, b0 + d3))
        a10, a11 = fma16(a10, w1, ld16(xf, b1 + d0)), fma16(a11, w1, ld16(xf, b1 + d1))
        a12, a13 = fma16(a12, w1, ld16(xf, b1 + d2)), fma16(a13, w1, ld16(xf, b1 + d3))
    _store8(acc, (s00, s01, s02, s03, s10, s11, s12, s13), (a00, a01, a02, a03, a10, a11, a12, a13))


four_rows_sums = straight_line_compiled(_four_rows_body, "F[::1], u4[::1], F[::1], i8, i8, " + "u8, " * 10 + "F[::1]")
two_rows_sums = straight_line_compiled(_two_rows_body, "F[::1], u4[::1], F[::1], i8, i8, " + "u8, " * 12 + "F[::1]")


@numba.njit(cache=True, inline="always")
def _chunk(i, m, span, image, x0, a0):
    """(input offset, sum offset) of chunk i of a task whose inputs start at x0 and sums at a0:
    image i // m of the task, positions 16 k .. 16 k + 15 for k = i % m, the last chunk ending at
    the span's end."""
    g, k = i // m, min(16 * (i % m), span - 16)
    return numba.uint64(x0 + g * image + k), numba.uint64(a0 + g * span + k)


@numba.njit(cache=True, inline="always")
def chunk_pass(xf, x0, offs, vals, e0, e1, m, count, i, span, image, acc, a0):
    """Chunks i .. i+7 of a task's count chunks of 16 positions (i .. i+3 when at most four are
    left; chunks past the last repeat it), summed over entries e0..e1-1 in one register pass."""
    last = count - 1
    (d0, s0), (d1, s1) = _chunk(i, m, span, image, x0, a0), _chunk(min(i + 1, last), m, span, image, x0, a0)
    (d2, s2) = _chunk(min(i + 2, last), m, span, image, x0, a0)
    (d3, s3) = _chunk(min(i + 3, last), m, span, image, x0, a0)
    if count - i > 4:
        (d4, s4) = _chunk(i + 4, m, span, image, x0, a0)
        (d5, s5) = _chunk(min(i + 5, last), m, span, image, x0, a0)
        (d6, s6) = _chunk(min(i + 6, last), m, span, image, x0, a0)
        (d7, s7) = _chunk(min(i + 7, last), m, span, image, x0, a0)
        rows8_sums(xf, offs, vals, e0, e1, d0, d1, d2, d3, d4, d5, d6, d7, s0, s1, s2, s3, s4, s5, s6,
                   s7, acc)
    else:
        rows4_sums(xf, offs, vals, e0, e1, d0, d1, d2, d3, s0, s1, s2, s3, acc)


@numba.njit(cache=True)
def row_sums(xf, x0, offs, vals, e0, e1, m, count, span, image, acc, a0):
    """acc[a0:] (count // m images of `span` sums, then the rest) = one weight row over a task's
    count chunks of 16 positions (inputs from xf[x0:], images `image` values apart), a pass of
    eight at a time; spans under 16 positions one position at a time."""
    if span < 16:
        for g in range(count):
            for k in range(span):
                s = xf[0] * 0
                for e in range(e0, e1):
                    s += vals[e] * xf[offs[e] + numba.uint64(x0 + g * image + k)]
                acc[a0 + g * span + k] = s
        return
    for i in range(0, count, 8):
        chunk_pass(xf, x0, offs, vals, e0, e1, m, count, i, span, image, acc, a0)


@numba.njit(cache=True)
def decode_floats(longest):
    """Floats of decode scratch one thread needs for rows of at most `longest` entries: the
    offsets and the weights of four rows (the most a register pass takes)."""
    return 2 * 4 * max(longest, 1)


@numba.njit(cache=True, inline="always")
def decoded(ws, width):
    """(offsets, weights) of `width` entries each in one thread's decode scratch ws (floats): the
    offsets as 32-bit unsigned integers over the first `width` floats, the weights after them."""
    return ws[:width].view(np.uint32)[:width], ws[width:2 * width]
