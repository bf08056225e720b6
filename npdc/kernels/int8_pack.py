"""Lowering uint8 activations into the packed columns the int8 GEMM of npdc.kernels.int8 reads:
groups of four column rows interleaved byte by byte, so that one 32-bit word holds one output
position's four inputs, as AVX-512 VNNI's vpdpbusd multiplies them (Intel's instruction set
reference). `im2col_packed` lowers exact columns (im2col, Chellapilla et al. 2006) for any
stride; `runs_packed`, for stride 1, lowers over the padded width so that each column row is a
shifted run of the padded input (the "runs" lowering of npdc.kernels.fused's stride-1 kernel);
`pack_rows` packs a linear layer's input rows. For a conv whose channels are a multiple
of 4, `interleave_rows` builds no columns at all: it stores the tile's padded input rows four
channels to a 32-bit word (the NC/4HW4 layout of oneDNN and ncnn), split into stride x stride
phases, so that the 16 positions of one tap and one group of four channels are 64 contiguous
bytes, read in place at `tap_offsets`.
Every buffer is handed in.
"""

import numba
import numpy as np

GROUP = 4  # inputs per 32-bit product word
LANES = 16  # output positions per vector block
GAP = 128  # bytes left after each thread's row of a workspace a kernel allocates (Numba starts an
# array 32 bytes into a cache line): no line holds two threads' rows, which cost 1-5 % a layer
SKEW = 64  # bytes between one group's packed columns and the next beyond the columns themselves,
           # so that a pitch of a large power of two does not map every group to one cache set


@numba.njit(cache=True, inline="always")
def word4(b0, b1, b2, b3):
    """Four uint8 values as one little-endian 32-bit word: lane l is byte l, as vpdpbusd reads it."""
    return (np.uint32(b0) | (np.uint32(b1) << np.uint32(8)) | (np.uint32(b2) << np.uint32(16))
            | (np.uint32(b3) << np.uint32(24)))


@numba.njit(cache=True)
def rows_pitch(n):
    """Positions of a linear layer's packed input rows for n images: n in whole vectors."""
    return (n + LANES - 1) // LANES * LANES


@numba.njit(cache=True, inline="always")
def group_bytes(pitch):
    """Bytes from one group of four packed column rows to the next, for `pitch` positions."""
    return pitch * GROUP + SKEW


@numba.njit(cache=True)
def im2col_row(flat, h, w, zx, r, kh, kw, stride, pad, p0, p1, wo, out):
    """Row r (input channel, kernel row, kernel column) of the columns of output rows p0..p1-1,
    from one image flattened (C*H*W uint8), into out[:(p1-p0)*wo]; padding reads zx. The run of
    in-bounds positions is worked out first, so the copy loop has no tests."""
    c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
    q_lo = min(wo, max(0, (pad - j + stride - 1) // stride))
    q_hi = max(q_lo, min(wo, (w - 1 + pad - j) // stride + 1))
    u_lo, u_hi, u_wo, u_stride = np.uint64(q_lo), np.uint64(q_hi), np.uint64(wo), np.uint64(stride)
    for p in range(p0, p1):
        iy = p * stride - pad + i
        o = np.uint64((p - p0) * wo)  # unsigned indices: no wraparound tests in the loops
        if iy < 0 or iy >= h:
            for q in range(u_wo):
                out[o + q] = zx
            continue
        src = np.uint64((c * h + iy) * w + j - pad + stride * q_lo)
        for q in range(u_lo):
            out[o + q] = zx
        for q in range(u_hi - u_lo):
            out[o + u_lo + q] = flat[src + q * u_stride]
        for q in range(u_hi, u_wo):
            out[o + q] = zx


@numba.njit(cache=True)
def im2col_packed(x, zx, kh, kw, stride, pad, p0, p1, wo, k_total, pitch, cols, rows4):
    """Columns of output rows p0..p1-1 of one image x (C, H, W) uint8, packed for dot_rows4:
    cols[(k // 4) * group_bytes(pitch) + position * 4 + k % 4] for k < k_total = C*kh*kw; padding reads
    the zero point zx (a real 0), the k past k_total read 0 (their weights are 0). Four rows at a
    time are lowered into rows4 (4 x pitch bytes of scratch), then interleaved."""
    flat = x.reshape(x.size)
    width = (p1 - p0) * wo
    k4 = (k_total + GROUP - 1) // GROUP
    words = cols[:k4 * group_bytes(pitch)].view(np.uint32)  # one word: a position's 4 bytes
    r0, r1, r2, r3 = rows4[:pitch], rows4[pitch:2 * pitch], rows4[2 * pitch:3 * pitch], rows4[3 * pitch:]
    for g in range(k4):
        for lane in range(GROUP):
            r = g * GROUP + lane
            row = rows4[lane * pitch:(lane + 1) * pitch]
            if r < k_total:
                im2col_row(flat, x.shape[1], x.shape[2], zx, r, kh, kw, stride, pad, p0, p1, wo, row)
            else:
                row[:width] = 0
        base = np.uint64(g * group_bytes(pitch) // GROUP)
        for t in range(np.uint64(width)):
            words[base + t] = word4(r0[t], r1[t], r2[t], r3[t])


@numba.njit(cache=True)
def pack_rows(x, p0, p1, pitch, cols):
    """Rows p0..p1-1 of x (N, F) uint8 packed as im2col_packed packs columns (position = row):
    a transpose of 4-byte words, done in blocks of LANES rows so that each row's bytes are read
    along the row (a linear's input rows are thousands of bytes apart)."""
    f = x.shape[1]
    full, groups = f // GROUP, (f + GROUP - 1) // GROUP
    step = np.uint64(group_bytes(pitch) // GROUP)
    words = cols[:groups * group_bytes(pitch)].view(np.uint32)
    for b in range(p0, p1, LANES):
        for g in range(full):
            base, k = np.uint64(g) * step, GROUP * g
            for p in range(b, min(b + LANES, p1)):
                words[base + np.uint64(p - p0)] = word4(x[p, k], x[p, k + 1], x[p, k + 2], x[p, k + 3])
    if full == groups:
        return
    for p in range(p0, p1):  # the last group of an F that is no multiple of 4: zero bytes after F
        v = np.uint32(0)
        for k in range(GROUP * full, f):
            v |= np.uint32(x[p, k]) << np.uint32(8 * (k - GROUP * full))
        words[np.uint64(full) * step + np.uint64(p - p0)] = v


@numba.njit(cache=True)
def tile_bytes(c, kh, kw, pad, w, rows, wo, stride):
    """Column workspace bytes of a conv tile of `rows` output rows (conv_u8's three lowerings),
    followed by (at least) the 2 x pitch bytes of scratch its tails use."""
    k4 = (c * kh * kw + GROUP - 1) // GROUP
    wp = w + 2 * pad
    row = wo if stride > 1 and c % GROUP else tap_width(w, pad, stride)
    pitch = (((rows - 1) * row + wo + LANES - 1) // LANES) * LANES
    if c % GROUP == 0:  # interleave_rows' phase planes
        return (c // GROUP) * stride * stride * tap_plane(rows, kh, row, stride) * GROUP + 2 * pitch
    extra = c * (rows + kh - 1) * wp if stride == 1 else GROUP * pitch
    return k4 * group_bytes(pitch) + max(extra, 2 * pitch)


@numba.njit(cache=True)
def tap_width(w, pad, stride):
    """Positions per output row of interleave_rows' tiles: a phase row of the padded input."""
    return (w + 2 * pad + stride - 1) // stride


@numba.njit(cache=True)
def tap_plane(rows, kh, wq, stride):
    """Words from one phase plane to the next in interleave_rows' buffer, for tiles of `rows`
    output rows: rows + (kh - 1) // stride phase rows of wq words, and SKEW bytes, which also
    cover the reads of the positions past a tile's last (computed and dropped)."""
    return (rows + (kh - 1) // stride) * wq + SKEW // GROUP


def tap_offsets(c, kh, kw, wq, plane, stride):
    """Byte offsets (int64) of the columns of input group k = (channel group, kernel row i,
    kernel column j) in interleave_rows' buffer: phase plane (i % stride, j % stride) of the
    group, row i // stride, column j // stride. The weights are packed in this order."""
    g, i, j = np.meshgrid(np.arange(c // GROUP), np.arange(kh), np.arange(kw), indexing="ij")
    planes = (g * stride + i % stride) * stride + j % stride
    return ((planes * plane + (i // stride) * wq + j // stride) * GROUP).reshape(-1).astype(np.int64)


@numba.njit(cache=True)
def interleave_rows(x, zx, pad, stride, kh, kw, p0, span, plane, words):
    """The input a tile of output rows p0.. reads, of one image x (C, H, W) uint8, C a multiple
    of 4, split into stride x stride phases of the zero-point padded input: padded[stride * u + a,
    stride * v + b] goes to words[((g * stride + a) * stride + b) * plane + (u - p0) * wq + v] for
    u - p0 < span and v < wq = tap_width, byte l of the word being channel 4g + l (little-endian,
    as vpdpbusd reads it). Output (p, q) then reads tap (i, j) at phase (i % stride, j % stride),
    row p + i // stride, column q + j // stride: positions of one row are contiguous words. The
    phases no tap of a kh x kw kernel reads (a >= kh or b >= kw: a 1x1 strided conv reads one)
    are left as they are."""
    c_n, h, w = x.shape[0], x.shape[1], x.shape[2]
    wq = tap_width(w, pad, stride)
    zx4 = np.uint32(zx) * np.uint32(0x01010101)
    for g in range(c_n // GROUP):
        for ph in range(stride * stride):
            a, b = ph // stride, ph % stride
            if a >= kh or b >= kw:
                continue
            v_lo = min(wq, max(0, (pad - b + stride - 1) // stride))  # first column inside x
            v_hi = max(v_lo, min(wq, (w - 1 + pad - b) // stride + 1))
            src0, step = np.uint64(stride * v_lo + b - pad), np.uint64(stride)
            for uu in range(span):
                iy, o = stride * (p0 + uu) + a - pad, (g * stride * stride + ph) * plane + uu * wq
                if iy < 0 or iy >= h:
                    words[o:o + wq] = zx4
                    continue
                words[o:o + v_lo] = zx4
                r0, r1 = x[GROUP * g, iy], x[GROUP * g + 1, iy]
                r2, r3 = x[GROUP * g + 2, iy], x[GROUP * g + 3, iy]
                row = words[o + v_lo:o + v_hi]
                if stride == 1:  # unit steps: contiguous loads the vectoriser takes
                    s0, s1, s2, s3 = r0[src0:], r1[src0:], r2[src0:], r3[src0:]
                    for v in range(np.uint64(v_hi - v_lo)):
                        row[v] = word4(s0[v], s1[v], s2[v], s3[v])
                else:
                    for v in range(np.uint64(v_hi - v_lo)):
                        at = src0 + v * step
                        row[v] = word4(r0[at], r1[at], r2[at], r3[at])
                words[o + v_hi:o + wq] = zx4


@numba.njit(cache=True)
def runs_packed(x, zx, kh, kw, pad, p0, p1, k_total, pitch, cols, padded):
    """The columns of output rows p0..p1-1 of a stride-1 conv of one image x (C, H, W) uint8,
    packed as im2col_packed packs them but over the padded width Wp: position (p - p0) * Wp + q.
    The rows the tile reads are first copied into `padded` (C x (p1-p0+kh-1) x Wp, the zero
    point around them); then column row (c, i, j) is the run of `padded` starting at channel c,
    row i, column j, and four such runs interleave into one group's words (in the last group
    of a k_total that is no multiple of 4, the rows past it repeat its first)."""
    c_n, h, w = x.shape[0], x.shape[1], x.shape[2]
    wp, span = w + 2 * pad, p1 - p0 + kh - 1
    plane = span * wp
    for c in range(c_n):
        for rr in range(span):
            iy, o = p0 + rr - pad, (c * span + rr) * wp
            if iy < 0 or iy >= h:
                padded[o:o + wp] = zx
                continue
            padded[o:o + pad] = zx
            padded[o + pad:o + pad + w] = x[c, iy]
            padded[o + pad + w:o + wp] = zx
    width = (p1 - p0 - 1) * wp + (w + 2 * pad - kw + 1)
    words = cols[:((k_total + GROUP - 1) // GROUP) * group_bytes(pitch)].view(np.uint32)
    starts = np.zeros(GROUP, np.int64)
    for g in range((k_total + GROUP - 1) // GROUP):
        for lane in range(GROUP):
            r = g * GROUP + lane
            c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
            starts[lane] = c * plane + i * wp + j if r < k_total else -1
        base = np.uint64(g * group_bytes(pitch) // GROUP)
        for lane in range(GROUP):  # rows past k_total (the last group) repeat row g * 4: their
            if starts[lane] < 0:   # weights are 0, so any byte gives the same sums
                starts[lane] = starts[0]
        s0, s1, s2, s3 = np.uint64(starts[0]), np.uint64(starts[1]), np.uint64(starts[2]), np.uint64(starts[3])
        for t in range(np.uint64(width)):
            words[base + t] = word4(padded[s0 + t], padded[s1 + t], padded[s2 + t], padded[s3 + t])
