"""The int8 activations kept as words between layers: a value (C, H, W), C a multiple of 4, is
stored per image as C/4 group planes of (H + 2P) x (W + 2P) 32-bit words and a slack of
SKEW bytes, byte l of a word being channel 4g + l (the NC/4HW4 layout of oneDNN and ncnn, with
the padding kept around it: P rows and columns of the value's zero point on every side).

Why: a stride-1 conv reading such a value builds nothing; its taps' 16 positions are already
one 64-byte vector of the plane (npdc.kernels.int8_pack.interleave_rows builds that vector per
tile from planar bytes, which took about a fifth of a conv's time), and the tile's run of
positions, one padded row apart, is a run of the plane. The producing conv writes it: four
output channels are one group, their 16 requantised lanes one word vector
(npdc.kernels.int8_lanes.requantize16x4), stored over the run of the output plane; the run's
positions between rows land on the padding, which is then rewritten with the zero point.

`conv_words` is the conv of npdc.kernels.int8.conv_u8 with any of its input, residual and output
in this layout (the caller, npdc.runtime.int8_layout, decides which). It gives the bits of
conv_u8: the same GEMM and the same requantisation (the lanes' preconditions checked per
channel, the scalar rule `requantize` elsewhere).

Geometry: an int64 array of N_GEO fields G_*: the input's C, H, W, the output's O, Ho, Wo, the
residual's channels, and for the input, the residual and the output their pad P, padded row Wp
(0: planar bytes) and words per group plane.
"""

import numba
import numpy as np

from npdc.kernels.fused import RES_NONE, RES_ZEROPAD
from npdc.kernels.int8 import gemm_tile, tile_input
from npdc.kernels.int8_lanes import requantize16x4, residual16x4
from npdc.kernels.int8_pack import GROUP, LANES, SKEW, tap_plane, tap_width
from npdc.kernels.int8_requant import (RES_FRACTION, clamp_u8, divide_by_pow2, lanes_apply, requantize,
                                       residual_term)
from npdc.kernels.int8_sparse import gemm_tile_sparse

(G_C, G_H, G_W, G_O, G_HO, G_WO, G_CR, G_PI, G_WPI, G_PLI, G_PR, G_WPR, G_PLR, G_PO, G_WPO,
 G_PLO) = range(16)
N_GEO = 16


def group_plane(h, w, pad):
    """(padded row Wp, words per group plane) of an H x W value kept with pad P."""
    wp = w + 2 * pad
    return wp, (h + 2 * pad) * wp + SKEW // GROUP


def to_planar(words, c, h, w, pad):
    """(N, C, H, W) uint8 of a value kept as words (N, C/4 x plane) uint32 (NumPy; for tests and
    the per-step runs that keep every value)."""
    wp, plane = group_plane(h, w, pad)
    b = words.view(np.uint8).reshape(words.shape[0], c // GROUP, plane, GROUP)[:, :, :(h + 2 * pad) * wp]
    b = b.reshape(words.shape[0], c // GROUP, h + 2 * pad, wp, GROUP)[:, :, pad:pad + h, pad:pad + w]
    return np.ascontiguousarray(b.transpose(0, 1, 4, 2, 3).reshape(words.shape[0], c, h, w))


@numba.njit(cache=True)
def conv_row(geo, stride, pad, taps):
    """Positions from one output row of a tile to the next: the input's padded row when it is
    read in place, the output's when a strided conv's phases are gathered for a words output,
    else conv_u8's (interleave_rows' or the runs' padded width, or Wo for strided columns)."""
    if geo[G_WPI] > 0:
        if stride == 1:
            return geo[G_WPI]
        return geo[G_WPO] if geo[G_WPO] > 0 else tap_width(geo[G_W], pad, stride)
    if taps or stride == 1:
        return tap_width(geo[G_W], pad, stride)
    return geo[G_WO]


@numba.njit(cache=True)
def gather_phases(img, geo, pad, stride, kh, kw, p0, span, plane, wq, zx, words):
    """interleave_rows for an input kept as words (img: one image's words): the stride x stride
    phases of the conv's padded input, rows of wq words, copied word by word (a word already
    holds four channels); what lies beyond the kept padding reads the zero point zx."""
    d, wpi, pli = geo[G_PI] - pad, geo[G_WPI], geo[G_PLI]
    rows = geo[G_H] + 2 * geo[G_PI]
    zx4 = np.uint32(zx) * np.uint32(0x01010101)
    for g in range(geo[G_C] // GROUP):
        for ph in range(stride * stride):
            a, b = ph // stride, ph % stride
            if a >= kh or b >= kw:
                continue
            v_hi = min(wq, max(0, (wpi - b - d + stride - 1) // stride))
            for uu in range(span):
                o, rr = (g * stride * stride + ph) * plane + uu * wq, stride * (p0 + uu) + a + d
                if rr >= rows:
                    words[o:o + wq] = zx4
                    continue
                src = g * pli + rr * wpi + b + d
                for v in range(v_hi):
                    words[o + v] = img[src + stride * v]
                for v in range(v_hi, wq):
                    words[o + v] = zx4


@numba.njit(cache=True)
def residual_words(res, r_img, geo, meta, o, p0, p1, row, scratch):
    """(words, offset, multiplier) of the residual of output channels o..o+3 over a tile's run:
    the residual's own plane where it is kept as words, identity, with the run's row; else its
    bytes gathered into scratch (every step-th row and column, channel c - front, for a zero-pad
    residual; from planar res (C, H, W) or from words), a channel outside the residual reading
    its zero point (adds 0); four channels all outside read nothing and get multiplier 0."""
    mode, front, step, zr = meta[3], meta[4], meta[5], meta[6]
    pr, wpr, plr = geo[G_PR], geo[G_WPR], geo[G_PLR]
    shift_c = front if mode == RES_ZEROPAD else 0
    sub = step if mode == RES_ZEROPAD else 1
    g = (o - shift_c) // GROUP
    aligned = (o - shift_c) % GROUP == 0 and 0 <= g < geo[G_CR] // GROUP
    if wpr > 0 and aligned and mode != RES_ZEROPAD and row == wpr:
        return r_img, g * plr + (p0 + pr) * wpr + pr, meta[7]
    if o + GROUP - shift_c <= 0 or o - shift_c >= geo[G_CR]:  # all four outside: multiplier 0, any words
        return scratch, 0, 0
    wo = geo[G_WO]
    for p in range(p0, p1):
        dst = (p - p0) * row
        if wpr > 0 and aligned:
            src = g * plr + (p * sub + pr) * wpr + pr
            for q in range(wo):
                scratch[dst + q] = r_img[src + q * sub]
            continue
        for r in range(GROUP):
            c = o + r - shift_c
            for q in range(wo):
                if c < 0 or c >= geo[G_CR]:
                    b = np.uint32(zr)
                elif wpr > 0:
                    b = r_img[(c // GROUP) * plr + (p * sub + pr) * wpr + pr + q * sub]
                    b = (b >> np.uint32(8 * (c % GROUP))) & np.uint32(255)
                else:
                    b = np.uint32(res[c, p * sub, q * sub])
                at = dst + q
                scratch[at] = (scratch[at] & ~(np.uint32(255) << np.uint32(8 * r))) | (b << np.uint32(8 * r))
    return scratch, 0, meta[7]


@numba.njit(cache=True)
def words_scalar(a, start, pitch, width, dst, d_off, bias, m0, shift, o, meta, src, s_off, r_mul):
    """The group's run by the scalar rule, byte by byte into words (where the lanes' preconditions
    fail); src is None-like (size 0) when there is no residual."""
    out = dst.view(np.uint8)
    zy, low = meta[1], meta[2]
    for r in range(GROUP):
        for t in range(width):
            v = np.int64(a[start + r * pitch + t]) + bias[o + r]
            if src.size:
                rb = np.int64((src[s_off + t] >> np.uint32(8 * r)) & np.uint32(255))
                total = (requantize(v, m0[o + r], shift[o + r] - RES_FRACTION)
                         + residual_term(rb - meta[6], r_mul, meta[8]))
                q = zy + divide_by_pow2(total, RES_FRACTION)
            else:
                q = zy + requantize(v, m0[o + r], shift[o + r])
            out[(d_off + t) * GROUP + r] = clamp_u8(q, low)


@numba.njit(cache=True)
def fix_pads(img, geo, p0, p1, zy):
    """The zero point zy into the padding of output rows p0..p1-1 (and the rows above and below the
    value when the tile is its first or last) of one image kept as words."""
    po, wp, pl, ho, wo = geo[G_PO], geo[G_WPO], geo[G_PLO], geo[G_HO], geo[G_WO]
    z = np.uint32(zy) * np.uint32(0x01010101)
    r_lo = 0 if p0 == 0 else p0 + po
    r_hi = ho + 2 * po if p1 == ho else p1 + po
    for g in range(geo[G_O] // GROUP):  # loops, not slices: a slice costs more than these few words
        for rr in range(r_lo, r_hi):
            at = g * pl + rr * wp
            if rr < po or rr >= ho + po:
                for q in range(wp):
                    img[at + q] = z
                continue
            for q in range(po):
                img[at + q] = z
            for q in range(po + wo, wp):
                img[at + q] = z


@numba.njit(cache=True)
def finish_words(a, pitch, row, p0, p1, bias, m0, shift, meta, res, r_img, geo, y, out_img, scratch,
                 sum_bound):
    """A tile's output channels from its sums a (O4 rows, pitch apart), four at a time: into the
    output plane's run when the output is kept as words (then the padding rewritten), else
    into scratch and out to the planar rows of y (O, Ho, Wo). scratch: >= 2 x pitch words."""
    wo, o_out, mode = geo[G_WO], geo[G_O], meta[3]
    width = (p1 - p0 - 1) * row + wo
    words_out = geo[G_WPO] > 0
    out_s, r_s = scratch[:pitch], scratch[pitch:2 * pitch]
    r_shift = meta[8]
    extra = 0 if mode == RES_NONE else RES_FRACTION
    for o in range(0, o_out, GROUP):
        dst, d_off = out_s, 0
        if words_out:
            dst, d_off = out_img, (o // GROUP) * geo[G_PLO] + (p0 + geo[G_PO]) * geo[G_WPO] + geo[G_PO]
        lanes = True
        for r in range(GROUP):
            lanes = lanes and lanes_apply(bias[o + r], shift[o + r] - extra, sum_bound)
        b4, m4, s4 = (bias[o], bias[o + 1], bias[o + 2], bias[o + 3]), (m0[o], m0[o + 1], m0[o + 2], m0[o + 3]), \
            (shift[o], shift[o + 1], shift[o + 2], shift[o + 3])
        if mode == RES_NONE:
            if lanes:
                for t in range(0, width, LANES):
                    requantize16x4(a, o * pitch + t, pitch, dst, d_off + t, min(LANES, width - t), b4, m4, s4,
                                   meta[1], meta[2])
            else:
                words_scalar(a, o * pitch, pitch, width, dst, d_off, bias, m0, shift, o, meta, r_s[:0], 0, 0)
        else:
            src, s_off, r_mul = residual_words(res, r_img, geo, meta, o, p0, p1, row, r_s)
            if lanes:
                for t in range(0, width, LANES):
                    residual16x4(a, o * pitch + t, pitch, src, s_off + t, dst, d_off + t, min(LANES, width - t),
                                 b4, m4, s4, meta[1], meta[2], meta[6], r_mul, r_shift, RES_FRACTION)
            else:
                words_scalar(a, o * pitch, pitch, width, dst, d_off, bias, m0, shift, o, meta, src, s_off, r_mul)
        if words_out:
            continue
        for r in range(min(GROUP, o_out - o)):
            for p in range(p0, p1):
                for q in range(wo):
                    y[o + r, p, q] = np.uint8((out_s[(p - p0) * row + q] >> np.uint32(8 * r)) & np.uint32(255))
    if words_out:
        fix_pads(out_img, geo, p0, p1, meta[1])


@numba.njit(cache=True)
def words_tile_bytes(geo, kh, kw, stride, pad, rows, taps):
    """Workspace bytes of one conv_words tile: what the GEMM reads (nothing when the input's
    plane is read in place), then 2 x pitch words of the tails' scratch."""
    row = conv_row(geo, stride, pad, taps)
    pitch = (((rows - 1) * row + geo[G_WO] + LANES - 1) // LANES) * LANES
    scratch = 2 * pitch * GROUP + SKEW
    if geo[G_WPI] > 0 and stride == 1:
        return scratch
    if geo[G_WPI] > 0 or taps:
        return (geo[G_C] // GROUP) * stride * stride * tap_plane(rows, kh, row, stride) * GROUP + scratch
    k4 = (geo[G_C] * kh * kw + GROUP - 1) // GROUP
    return k4 * (pitch * GROUP + SKEW) + geo[G_C] * (rows + kh - 1) * (geo[G_W] + 2 * pad) + GROUP * pitch + scratch


@numba.njit(cache=True, parallel=True)
def conv_words(x, xw, w, k4, kh, kw, stride, pad, bias, m0, shift, meta, res, rw, y, yw, geo, cols, acc,
               rows_per, offs, vnni, rowptr, e_off, ew):
    """conv_u8 with its input, residual and output each either planar (x (N, C, H, W), res, y
    uint8) or kept as words (xw, rw, yw (N, words) uint32), as geo says (the unused array of each
    pair a dummy). offs are the tap offsets of the plane read: the input's group planes when it
    is read in place (stride 1), else the phases' (tap_plane of rows_per and conv_row). With
    entries (rowptr longer than 1; taps only: npdc.kernels.int8_sparse.sparse_entries of w at
    offs) the GEMM runs over the non-zero words alone, to the same sums."""
    n_img = yw.shape[0] if geo[G_WPO] > 0 else y.shape[0]
    ho = geo[G_HO]
    tiles = (ho + rows_per - 1) // rows_per
    taps = offs.size > 0
    row = conv_row(geo, stride, pad, taps)
    plane = tap_plane(rows_per, kh, row, stride)
    in_place = geo[G_WPI] > 0 and stride == 1
    sum_bound = 128 * 255 * geo[G_C] * kh * kw
    for t in numba.prange(n_img * tiles):
        n, p0 = t // tiles, (t % tiles) * rows_per
        p1 = min(ho, p0 + rows_per)
        pitch = ((((p1 - p0 - 1) * row + geo[G_WO]) + LANES - 1) // LANES) * LANES
        tid = numba.get_thread_id()
        col, a = cols[tid], acc[tid]
        src, rest = col, col
        if in_place:
            d = geo[G_PI] - pad
            src = xw[n].view(np.uint8)[((p0 + d) * geo[G_WPI] + d) * GROUP:]
        elif geo[G_WPI] > 0:
            rest_at = (geo[G_C] // GROUP) * stride * stride * plane * GROUP
            gather_phases(xw[n], geo, pad, stride, kh, kw, p0, p1 - p0 + (kh - 1) // stride, plane, row,
                          meta[0], col[:rest_at].view(np.uint32))
            rest = col[rest_at:]
        else:
            rest = tile_input(x[n], np.uint8(meta[0]), k4, kh, kw, stride, pad, p0, p1, geo[G_WO], pitch, plane,
                              taps, col)
        if rowptr.size > 1:
            gemm_tile_sparse(rowptr, e_off, ew, src, pitch, a, vnni)
        else:
            gemm_tile(w, k4, src, pitch, offs, a, vnni)
        scratch = rest[:rest.size // GROUP * GROUP].view(np.uint32)  # rest starts 4-byte aligned in col
        res_n = res[min(n, res.shape[0] - 1)]
        r_img = rw[min(n, rw.shape[0] - 1)]
        y_n = y[min(n, y.shape[0] - 1)]
        out_img = yw[min(n, yw.shape[0] - 1)]
        finish_words(a, pitch, row, p0, p1, bias, m0, shift, meta, res_n, r_img, geo, y_n, out_img, scratch,
                     sum_bound)
