"""A direct convolution for inference with output channels in the vector lanes: any kernel size
and stride, the layer's tail (npdc.kernels.fused.Tail) applied as each register block is written.

Why: the other runtime kernels (npdc.kernels.fused, fused_direct, sparse) put output positions in
the vector lanes, which fill badly when a plane is small (7x7, 4x4) and leave half of each vector
idle at the end of every row. Here a register block is PIXELS output positions by OUT output
channels: per (tap, input channel) two 16-lane vector loads of weights and PIXELS broadcast
inputs feed 2 x PIXELS multiply-adds, whatever the plane's shape, because the positions of a
block are any PIXELS consecutive positions of the layer (a block may cross rows). Layers of at
most 16 output channels use one vector by NARROW_PIXELS positions instead, so no lane is idle.

This is the register blocking of Zhang, Franchetti & Low 2018 ("High Performance Zero-Memory
Overhead Direct Convolutions") with the output channels, not the columns, in the lanes, as in the
blocked layouts of Georganas et al. 2018 ("Anatomy of High-Performance Deep Learning Convolutions
on SIMD Architectures"). Departures: activations stay NCHW in the arena (a block writes its sums
back through the tail channel by channel), and an image's input is copied into a zero-padded
plane (C, Hp, Wp) first, so every tap of every position is a fixed offset into it with no bounds
test. Weights are packed once, when the plan is built, as (O/OUT, C, taps, OUT) (the `interleaved`
layout of npdc.kernels.conv_flat), zero kernels past O. The input channel is the innermost loop,
so a tap's input pointers are set once per tap, not once per (channel, kernel row). Why the
block sizes and what they reach: docs/perf.md (branches `f16c` and `f128`; 8 positions rather
than 6 or 12: fifteenth session).

Threads: one image is split over (block of OUT channels, block of positions) pairs, so both
threads work at batch 1, each on a padded copy of the image of its own (a plane one core writes
and the other reads comes from the writer's cache, slowly: docs/perf.md), and a thread's run of
blocks is summed up to STRIP blocks at a time and then written, as a batch's strip is (a tail
call per register block cost small layers much of their time at batch 1: docs/perf.md,
seventeenth session). A batch is split over tasks of images_per_task images, each thread padding
them into its own planes, its blocks' positions running on across them, and the tail written a
strip of STRIP blocks at a time (blocked_io.write_strip). At a batch, a layer of at most
NARROW output channels at stride 1 with a border runs row_sums instead, whose blocks run along
the padded plane (the positions past a row's outputs computed and dropped), so that one pointer
reaches every input of a block. Each output is summed by one task in one fixed order (tap, then
input channel) whatever the thread count and the block, so the bits do not depend on either.
The padded copy and the tail: npdc.kernels.blocked_io.
"""

import numba
import numpy as np

from npdc.kernels.blocked_io import padded_images, write_strip
from npdc.kernels.simd import fma16, ld16, prefer_512_bit_vectors, st16, straight_line_compiled

OUT = 32  # output channels per register block: two 16-lane vectors
PIXELS = 8  # output positions per register block (16 sums + 2 weight vectors of 32 registers)
NARROW, NARROW_PIXELS = 16, 12  # layers of at most 16 output channels: one vector by 12 positions
STRIP = 16  # register blocks summed before their outputs are written (192 or 128 positions)


@numba.njit(cache=True)
def lanes_for(o):
    """Output channels per register block for a layer of o output channels."""
    return NARROW if o <= NARROW else OUT


@numba.njit(cache=True, inline="always")
def _next(g, p, q, move, ho, wo):
    """Image, row and column of the position after (g, p, q) when `move`, else (g, p, q) again
    (a block's positions past the layer's last repeat it): no division per position."""
    if move:
        q += 1
        if q == wo:
            q, p = 0, p + 1
            if p == ho:
                p, g = 0, g + 1
    return g, p, q


@numba.njit(cache=True, inline="always")
def _at(g, p, q, stride, wp, plane):
    """Where the window of output position (image g, row p, column q) starts in the planes."""
    return numba.uint64(g * plane + p * stride * wp + q * stride)


@numba.njit(cache=True, inline="always")
def _six(g, p, q, r0, npix, ho, wo, stride, wp, plane):
    """Plane offsets of a block's positions r0 .. r0+5, position r0 being (image g, row p, column
    q), and the (g, p, q) of position r0 + 6 (positions from npix on repeat the last)."""
    o0 = _at(g, p, q, stride, wp, plane)
    g, p, q = _next(g, p, q, r0 + 1 < npix, ho, wo)
    o1 = _at(g, p, q, stride, wp, plane)
    g, p, q = _next(g, p, q, r0 + 2 < npix, ho, wo)
    o2 = _at(g, p, q, stride, wp, plane)
    g, p, q = _next(g, p, q, r0 + 3 < npix, ho, wo)
    o3 = _at(g, p, q, stride, wp, plane)
    g, p, q = _next(g, p, q, r0 + 4 < npix, ho, wo)
    o4 = _at(g, p, q, stride, wp, plane)
    g, p, q = _next(g, p, q, r0 + 5 < npix, ho, wo)
    o5 = _at(g, p, q, stride, wp, plane)
    g, p, q = _next(g, p, q, r0 + 6 < npix, ho, wo)
    return (o0, o1, o2, o3, o4, o5), g, p, q


def _block_body(xf, Wo, pix0, npix, wo, hw, stride, wp, plane, kh, kw, cstride, acc):
    """acc[r * OUT + l] = sum over taps (i, j) and input channels c of Wo[c, i*kw + j, l] times
    xf[c * cstride + offset(r) + i * wp + j], for the r < PIXELS positions pix0 + r (clipped to
    pix0 + npix - 1), where position k is image k // hw, row (k % hw) // wo, column k % wo of
    planes `plane` floats apart with rows wp apart, read every `stride`-th row and column."""
    prefer_512_bit_vectors()
    ho, g, p, q = hw // wo, pix0 // hw, (pix0 % hw) // wo, pix0 % wo
    (o0, o1, o2, o3, o4, o5), g, p, q = _six(g, p, q, 0, npix, ho, wo, stride, wp, plane)
    o6 = _at(g, p, q, stride, wp, plane)
    g, p, q = _next(g, p, q, 7 < npix, ho, wo)
    o7 = _at(g, p, q, stride, wp, plane)
    acc[0] = 0
    e = acc[0]
    z = (e, e, e, e, e, e, e, e, e, e, e, e, e, e, e, e)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = z
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = z
    half, step = numba.uint64(16), numba.uint64(cstride)
    for i in range(kh):
        for j in range(kw):
            t, at = i * kw + j, numba.uint64(i * wp + j)
            for c in range(Wo.shape[0]):
                w = Wo[c, t]
                wa, wb = ld16(w, numba.uint64(0)), ld16(w, half)
                x0, x1, x2 = xf[o0 + at], xf[o1 + at], xf[o2 + at]
                x3, x4, x5 = xf[o3 + at], xf[o4 + at], xf[o5 + at]
                x6, x7 = xf[o6 + at], xf[o7 + at]
                at += step
                a0, b0 = fma16(a0, x0, wa), fma16(b0, x0, wb)
                a1, b1 = fma16(a1, x1, wa), fma16(b1, x1, wb)
                a2, b2 = fma16(a2, x2, wa), fma16(b2, x2, wb)
                a3, b3 = fma16(a3, x3, wa), fma16(b3, x3, wb)
                a4, b4 = fma16(a4, x4, wa), fma16(b4, x4, wb)
                a5, b5 = fma16(a5, x5, wa), fma16(b5, x5, wb)
                a6, b6 = fma16(a6, x6, wa), fma16(b6, x6, wb)
                a7, b7 = fma16(a7, x7, wa), fma16(b7, x7, wb)
    st16(acc, numba.uint64(0), a0)
    st16(acc, numba.uint64(16), b0)
    st16(acc, numba.uint64(32), a1)
    st16(acc, numba.uint64(48), b1)
    st16(acc, numba.uint64(64), a2)
    st16(acc, numba.uint64(80), b2)
    st16(acc, numba.uint64(96), a3)
    st16(acc, numba.uint64(112), b3)
    st16(acc, numba.uint64(128), a4)
    st16(acc, numba.uint64(144), b4)
    st16(acc, numba.uint64(160), a5)
    st16(acc, numba.uint64(176), b5)
    st16(acc, numba.uint64(192), a6)
    st16(acc, numba.uint64(208), b6)
    st16(acc, numba.uint64(224), a7)
    st16(acc, numba.uint64(240), b7)


block_sums = straight_line_compiled(_block_body, "F[::1], F[:, :, ::1], i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, F[::1]")


def _narrow_body(xf, Wo, pix0, npix, wo, hw, stride, wp, plane, kh, kw, cstride, acc):
    """_block_body for NARROW output channels by NARROW_PIXELS positions: acc[r * NARROW + l]."""
    prefer_512_bit_vectors()
    ho, g, p, q = hw // wo, pix0 // hw, (pix0 % hw) // wo, pix0 % wo
    (o0, o1, o2, o3, o4, o5), g, p, q = _six(g, p, q, 0, npix, ho, wo, stride, wp, plane)
    (o6, o7, o8, o9, o10, o11), g, p, q = _six(g, p, q, 6, npix, ho, wo, stride, wp, plane)
    acc[0] = 0
    e = acc[0]
    z = (e, e, e, e, e, e, e, e, e, e, e, e, e, e, e, e)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = z
    step = numba.uint64(cstride)
    for i in range(kh):
        for j in range(kw):
            t, at = i * kw + j, numba.uint64(i * wp + j)
            for c in range(Wo.shape[0]):
                w = ld16(Wo[c, t], numba.uint64(0))
                a0, a1 = fma16(a0, xf[o0 + at], w), fma16(a1, xf[o1 + at], w)
                a2, a3 = fma16(a2, xf[o2 + at], w), fma16(a3, xf[o3 + at], w)
                a4, a5 = fma16(a4, xf[o4 + at], w), fma16(a5, xf[o5 + at], w)
                a6, a7 = fma16(a6, xf[o6 + at], w), fma16(a7, xf[o7 + at], w)
                a8, a9 = fma16(a8, xf[o8 + at], w), fma16(a9, xf[o9 + at], w)
                a10, a11 = fma16(a10, xf[o10 + at], w), fma16(a11, xf[o11 + at], w)
                at += step
    for r, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11)):
        st16(acc, numba.uint64(r * NARROW), a)


narrow_sums = straight_line_compiled(_narrow_body, "F[::1], F[:, :, ::1], i8, i8, i8, i8, i8, i8, i8, i8, i8, i8, F[::1]")


def _row_body(xf, Wo, at0, wp, wo, q, d, kh, kw, cstride, acc):
    """_narrow_body at stride 1 for NARROW_PIXELS positions that run along the padded plane from
    offset at0 (column q of a padded row wp wide), so that every input is a constant step from one
    pointer and the block keeps its 12 sums, the weight vector and three integers in registers.
    Positions in a row's last wp - wo columns are no outputs: position r's sums go to
    acc[d_r * NARROW:], d_r = d plus the outputs before it in the block, where the next output's
    overwrite those of a non-output."""
    prefer_512_bit_vectors()
    acc[d * NARROW] = 0  # a zero of acc's float type, in a slot this block writes
    e = acc[d * NARROW]
    z = (e, e, e, e, e, e, e, e, e, e, e, e, e, e, e, e)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = z
    step, u = numba.uint64(cstride), numba.uint64  # unsigned offsets: no negative-index tests
    for i in range(kh):
        for j in range(kw):
            t, at = i * kw + j, u(at0 + i * wp + j)
            for c in range(Wo.shape[0]):
                w = ld16(Wo[c, t], u(0))
                a0, a1 = fma16(a0, xf[at], w), fma16(a1, xf[at + u(1)], w)
                a2, a3 = fma16(a2, xf[at + u(2)], w), fma16(a3, xf[at + u(3)], w)
                a4, a5 = fma16(a4, xf[at + u(4)], w), fma16(a5, xf[at + u(5)], w)
                a6, a7 = fma16(a6, xf[at + u(6)], w), fma16(a7, xf[at + u(7)], w)
                a8, a9 = fma16(a8, xf[at + u(8)], w), fma16(a9, xf[at + u(9)], w)
                a10, a11 = fma16(a10, xf[at + u(10)], w), fma16(a11, xf[at + u(11)], w)
                at += step
    for a in (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11):
        st16(acc, u(d * NARROW), a)
        d, q = d + (q < wo), (q + 1) % wp


row_sums = straight_line_compiled(_row_body, "F[::1], F[:, :, ::1], i8, i8, i8, i8, i8, i8, i8, i8, F[::1]")


@numba.njit(cache=True)
def _sums(xf, Wo, pix0, npix, wo, hw, stride, wp, plane, kh, kw, cstride, acc):
    """The register block of Wo's width (OUT or NARROW lanes) at positions pix0 ..."""
    if Wo.shape[2] == NARROW:
        narrow_sums(xf, Wo, pix0, npix, wo, hw, stride, wp, plane, kh, kw, cstride, acc)
    else:
        block_sums(xf, Wo, pix0, npix, wo, hw, stride, wp, plane, kh, kw, cstride, acc)


@numba.njit(cache=True, inline="always")
def _outputs_before(k, wp, wo):
    """Outputs before offset k of a padded plane whose rows hold wo outputs in wp floats."""
    return (k // wp) * wo + min(k % wp, wo)


@numba.njit(cache=True)
def _row_strips(xp, Wo, count, size, ho, wo, wp, kh, kw, acc, tail, y, n0):
    """The outputs of `count` images, padded at stride 1 into xp `size` floats apart, by row_sums:
    per image, the offsets of the padded plane from the first output's to past the last's, a
    strip of STRIP blocks at a time, whose outputs' sums are written by write_strip."""
    span, cstride = STRIP * NARROW_PIXELS, size // Wo.shape[0]
    last = (ho - 1) * wp + wo
    for k in range(count):
        for s0 in range(0, last, span):
            end, first = min(s0 + span, last), _outputs_before(s0, wp, wo)
            for p0 in range(s0, end, NARROW_PIXELS):
                row_sums(xp, Wo, k * size + p0, wp, wo, p0 % wp, _outputs_before(p0, wp, wo) - first,
                         kh, kw, cstride, acc)
            write_strip(acc, _outputs_before(end, wp, wo) - first, NARROW, span, first, 0, tail, y, n0 + k)


@numba.njit(cache=True)
def _strip(xp, Wo, s0, end, last, wo, hw, stride, wp, size, kh, kw, cstride, acc, tail, y, ob, n0):
    """Positions s0 .. end - 1 (at most STRIP register blocks; positions from `last` on repeat
    the last) for the output channels ob .. ob + lanes - 1 of Wo: each block's sums into acc,
    then written into y (from image n0) through the tail by write_strip."""
    lanes = Wo.shape[2]
    pixels = NARROW_PIXELS if lanes == NARROW else PIXELS
    span = STRIP * pixels
    for p0 in range(s0, end, pixels):
        _sums(xp, Wo, p0, min(pixels, last - p0), wo, hw, stride, wp, size, kh, kw, cstride,
              acc[(p0 - s0) * lanes:])
    write_strip(acc, end - s0, lanes, span, s0, ob, tail, y, n0)


@numba.njit(cache=True)
def _rows_read(t0, t1, chunks, pixels, hw, wo, stride, kh):
    """The padded rows (r0, r1 past the last) that one image's tasks t0 .. t1 - 1 read: those of
    their positions when they lie in one block of channels, else every row."""
    if t1 <= t0:
        return 0, 0
    if t0 // chunks != (t1 - 1) // chunks:
        return 0, -1
    first, last = (t0 % chunks) * pixels, min(((t1 - 1) % chunks + 1) * pixels, hw) - 1
    return (first // wo) * stride, (last // wo) * stride + kh


@numba.njit(cache=True)
def images_per_task(hw, pixels):
    """Images a thread takes at once in a large batch: enough that their hw output positions
    together fill a strip (planes of 7x7 or 4x4 positions leave fewer register blocks
    part-empty), 1 when one image does. A small batch takes fewer, so that every thread has a
    few tasks."""
    return max(1, -(-STRIP * pixels // hw))


def blocked_scratch(c, h, w, pad, o, hw, batch):
    """(plane floats, accumulator floats) one thread needs for a layer with c input channels of
    h x w padded by `pad`, o output channels of hw positions, at a batch (16 floats of slack past
    the planes; no read goes there)."""
    lanes = lanes_for(o)
    images = 1 if batch == 1 else images_per_task(hw, NARROW_PIXELS if lanes == NARROW else PIXELS)
    return (images * c * (h + 2 * pad) * (w + 2 * pad) + 16,
            2 * STRIP * max(PIXELS * OUT, NARROW_PIXELS * NARROW))


@numba.njit(parallel=True, cache=True)
def conv_blocked_fused(x, Wb, kh, kw, stride, pad, tail, y, planes, acc_ws):
    """y (N, O, Ho, Wo) = tail(the kh x kw correlation with `stride` of x (N, C, H, W) zero-padded
    by `pad` with Wb (O/lanes blocks, C, kh*kw, lanes): conv_flat.interleaved weights, lanes
    OUT, or NARROW when O <= NARROW (lanes_for).
    planes: flat, one image's plane per thread (N = 1), or images_per_task's planes per thread;
    acc_ws: (threads, >= a strip's sums twice); blocked_scratch gives both per thread."""
    n, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    size = c * hp * wp
    ho, wo = y.shape[2], y.shape[3]
    hw = ho * wo
    lanes = Wb.shape[3]
    pixels = NARROW_PIXELS if lanes == NARROW else PIXELS
    chunks = (hw + pixels - 1) // pixels
    span = STRIP * pixels  # a batch's strip of positions, a multiple of 8
    blocks = Wb.shape[0]
    if n == 1:  # each thread pads the image into its own plane: read there, not from the other core's
        threads, tasks = acc_ws.shape[0], blocks * chunks
        for part in numba.prange(threads):
            tid, t, stop = numba.get_thread_id(), part * tasks // threads, (part + 1) * tasks // threads
            r0, r1 = _rows_read(t, stop, chunks, pixels, hw, wo, stride, kh)
            xp = padded_images(x, 0, 1, pad, planes, tid * (size + 16), size, r0, r1)
            acc = acc_ws[tid]
            while t < stop:  # this thread's blocks, a strip of at most STRIP in one block at a time
                b, c0 = t // chunks, t % chunks
                c1 = min(chunks, c0 + min(STRIP, stop - t))
                _strip(xp, Wb[b], c0 * pixels, min(c1 * pixels, hw), hw, wo, hw, stride, wp, size, kh,
                       kw, hp * wp, acc, tail, y, b * lanes, 0)
                t += c1 - c0
    else:
        # acc_ws has a row per thread the process may run; a group's positions are summed as one
        # image's would be, so the group's size leaves the bits
        group = max(1, min(images_per_task(hw, pixels), n // (4 * acc_ws.shape[0])))
        bordered = np.zeros(acc_ws.shape[0], np.bool_)  # whether a thread's planes have their zero border
        for task in numba.prange((n + group - 1) // group):
            i0, tid = task * group, numba.get_thread_id()
            count = min(group, n - i0)
            at = tid * (group * size + 16)
            if pad > 0 and not bordered[tid]:  # the border once per call: later images write only their rows
                planes[at:at + group * size] = 0
                bordered[tid] = True
            xp = padded_images(x, i0, count, pad, planes, at, size, 0, -1, False)
            if lanes == NARROW and stride == 1 and pad > 0:  # the blocks read past a row's end
                _row_strips(xp, Wb[0], count, size, ho, wo, wp, kh, kw, acc_ws[tid], tail, y, i0)
                continue
            acc, last = acc_ws[tid], count * hw  # positions cross images: k -> image k // hw
            for b in range(blocks):
                for s0 in range(0, last, span):
                    _strip(xp, Wb[b], s0, min(s0 + span, last), last, wo, hw, stride, wp, size, kh, kw,
                           hp * wp, acc, tail, y, b * lanes, i0)
