"""What the channels-in-lanes kernels (npdc.kernels.fused_blocked) read and write around their
register blocks: images copied into zero-padded planes, and sums written back to the NCHW arena
through the layer's tail (npdc.kernels.fused.Tail), a strip of blocks at a time, regrouped by
channel eight by eight (write_strip).

Why a module of its own: the copy and the tail run once per layer over every activation, and at
a batch they are as much of a 16-channel layer's time as the register blocks are not (the cost
of each is in docs/perf.md, branches `f128` and `d128`); both move floats without multiplying
them, so they are written for the memory traffic: runs the loop vectoriser turns into vector
loads and stores, one pass over y, no overlap test the vectoriser gives up on.
"""

import numba

from npdc.kernels.fused import RES_IDENTITY, RES_ZEROPAD
from npdc.kernels.simd import transpose8, transpose8_tail


@numba.njit(cache=True)
def fill_padded(x, i, pad, xp, r0=0, r1=-1, zero=True):
    """Rows r0 .. r1 - 1 (r1 < 0: to the last) of xp (C, H + 2 pad, W + 2 pad), flat = image i of
    x (N, C, H, W) inside a zero border, the other rows left as they are: those rows zeroed, a
    run per plane (one run when they are every row of every plane), then the image's rows copied
    in; with zero False only the copy (the border is zero already: a plane filled before).
    Plain loops the loop vectoriser turns into vector runs: writing the zeros apart (per
    border, as slices or short loops) and the rows in 16-float runs cost more on every plane size
    measured (docs/perf.md). The row indices are
    unsigned: with signed ones the vectoriser kept NumPy's negative-index wraparound and moved
    each row by gather and scatter, 2.5-3 times slower (docs/perf.md, fifteenth session)."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    hp, wp = h + 2 * pad, w + 2 * pad
    r1 = hp if r1 < 0 else min(r1, hp)
    xf = x.reshape(x.size)
    u = numba.uint64
    runs, run = (1, c * hp * wp) if r0 == 0 and r1 == hp else (c, (r1 - r0) * wp)  # whole planes: one run
    for ch in range(runs if zero else 0):
        for k in range(u(ch * hp * wp + r0 * wp), u(ch * hp * wp + r0 * wp + run)):
            xp[k] = 0
    for ch in range(c):
        for r in range(max(r0 - pad, 0), min(r1 - pad, h)):
            start, src = u(ch * hp * wp + (r + pad) * wp + pad), u(((i * c + ch) * h + r) * w)
            for col in range(u(w)):
                xp[start + col] = xf[src + col]


@numba.njit(cache=True)
def padded_images(x, i0, count, pad, planes, at, size, r0=0, r1=-1, zero=True):
    """Images i0 .. i0+count-1 of x as flat planes `size` floats apart: x's own floats when there
    is no border, else filled into planes[at:] (only padded rows r0 .. r1 - 1, and with zero
    False only their images' rows: fill_padded)."""
    if pad == 0:
        return x.reshape(x.size)[i0 * size:(i0 + count) * size]
    xp = planes[at:at + count * size + 16]
    for k in range(count):
        fill_padded(x, i0 + k, pad, xp[k * size:], r0, r1, zero)
    return xp


@numba.njit(cache=True, inline="always")
def _run(acc, step, npix, s, b, act, a, add, res, y):
    """y[r] = act(acc[r * step] * s + b (+ res[r] when add)) for r < npix; the tests on add and
    act stay out of the loops, so each loop vectorises, and y is written once."""
    if add and act:
        for r in range(npix):
            v = acc[r * step] * s + b + res[r]
            y[r] = v * a if v < 0 else v
    elif add:
        for r in range(npix):
            y[r] = acc[r * step] * s + b + res[r]
    elif act:
        for r in range(npix):
            v = acc[r * step] * s + b
            y[r] = v * a if v < 0 else v
    else:
        for r in range(npix):
            y[r] = acc[r * step] * s + b


@numba.njit(cache=True)
def finish_sums(acc, rstep, lstep, lanes, pix0, npix, ob, tail, y, n0):
    """y[n0 + image, ob + l, row, col] = the tail of acc[r * rstep + l * lstep] for the positions
    pix0 + r, r < npix, of the block (k -> image k // (Ho Wo), row, col), l < lanes within y's
    channels: a register block's sums (rstep lanes, lstep 1) or a strip transposed by channel
    (rstep 1, and then each channel's loop reads a run). Channel by channel, so the writes run
    along a row: position by position they would land Ho*Wo floats apart, in as few cache sets as
    there are lanes when the plane is 4 KiB. Indices are flat and unsigned (no negative-index
    tests); an identity residual has y's shape, so it is read at the same flat index."""
    o_all, hw, wo = y.shape[1], y.shape[2] * y.shape[3], y.shape[3]
    yf = y.reshape(y.size)
    res, mode, front, rs = tail.res, tail.res_mode, tail.res_front, tail.res_stride
    rf = res.reshape(res.size)
    n, rest, done = n0 + pix0 // hw, pix0 % hw, 0
    # written over its own residual (the plan's in-place sums): y read and written through one
    # pointer, else the loop vectoriser's overlap test between the two fails and it runs scalar
    in_place = mode == RES_IDENTITY and rf.ctypes.data == yf.ctypes.data
    while mode != RES_ZEROPAD and done < npix:  # image by image, each channel's positions a run
        seg = min(npix - done, hw - rest)
        for l in range(min(lanes, o_all - ob)):
            o = ob + l
            at = numba.uint64((n * o_all + o) * hw + rest)
            s, b, a, add = tail.scale[o], tail.shift[o], tail.slopes[o], mode == RES_IDENTITY
            r_at = rf[at:] if add else rf
            if rstep == 1 and in_place:
                y_at = yf[at:]
                _run(acc[l * lstep + done:], 1, seg, s, b, tail.act, a, True, y_at, y_at)
            elif rstep == 1:  # a constant step: the loads are a vector's
                _run(acc[l * lstep + done:], 1, seg, s, b, tail.act, a, add, r_at, yf[at:])
            else:
                _run(acc[l * lstep + done * rstep:], rstep, seg, s, b, tail.act, a, add, r_at,
                     yf[at:])
        n, rest, done = n + 1, 0, done + seg
    if mode != RES_ZEROPAD:
        return
    for l in range(min(lanes, o_all - ob)):
        o = ob + l
        s, b, a = tail.scale[o], tail.shift[o], tail.slopes[o]
        pad_c = o - front
        use_pad = mode == RES_ZEROPAD and 0 <= pad_c < res.shape[1]
        n, rest = n0 + pix0 // hw, pix0 % hw
        for r in range(npix):
            at = numba.uint64((n * o_all + o) * hw + rest)
            v = acc[r * rstep + l * lstep] * s + b
            if mode == RES_IDENTITY:
                v += rf[at]
            elif use_pad:
                v += res[n, pad_c, (rest // wo) * rs, (rest % wo) * rs]
            if tail.act and v < 0:
                v *= a
            yf[at] = v
            rest += 1
            if rest == hw:
                n, rest = n + 1, 0


@numba.njit(cache=True)
def by_channel(acc, npix, lanes, span):
    """acc[span * lanes + l * span + r] = acc[r * lanes + l] for r < npix rounded up to 8 and
    l < lanes: a strip's sums, one register block's after another, regrouped by channel with
    8 x 8 transposes."""
    for r0 in range(0, npix, 8):
        for l0 in range(0, lanes, 8):
            transpose8(acc, r0 * lanes + l0, lanes, acc, span * lanes + l0 * span + r0, span)


@numba.njit(cache=True)
def write_strip(acc, npix, lanes, span, pix0, ob, tail, y, n0):
    """What by_channel and then finish_sums(acc[span * lanes:], 1, span, lanes, pix0, npix, ob,
    tail, y, n0) write, for a strip's sums one register block's after another (acc[r * lanes + l]),
    in the same bits: each 8 x 8 tile of eight positions by eight channels transposed in
    registers and written through the tail by transpose8_tail, a tile split where an image ends
    written as two masked runs. Why: regrouping the whole strip by channel and then writing it a
    channel's run per call cost a small layer as much as a tenth to a third of its time at a
    batch (docs/perf.md, eighteenth session). Channels short of a tile's eight, planes of fewer
    than 8 positions (a tile would span three images) and RES_ZEROPAD's strided residual take
    that way."""
    o_all, hw = y.shape[1], y.shape[2] * y.shape[3]
    if tail.res_mode == RES_ZEROPAD or hw < 8:
        by_channel(acc, npix, lanes, span)
        finish_sums(acc[span * lanes:], 1, span, lanes, pix0, npix, ob, tail, y, n0)
        return
    add, valid = tail.res_mode == RES_IDENTITY, min(lanes, o_all - ob)
    for r0 in range(0, npix, 8):
        k = pix0 + r0
        n, rest, m = n0 + k // hw, k % hw, min(8, npix - r0)
        first = min(m, hw - rest)  # the tile's positions in image n; the rest open image n + 1
        for l0 in range(0, valid - 7, 8):
            o = ob + l0
            transpose8_tail(acc, r0 * lanes + l0, lanes, y, (n * o_all + o) * hw + rest, hw, tail.scale,
                            tail.shift, tail.slopes, o, tail.res, tail.act, add, 0, first)
            if first < m:
                transpose8_tail(acc, r0 * lanes + l0, lanes, y, ((n + 1) * o_all + o) * hw - first, hw,
                                tail.scale, tail.shift, tail.slopes, o, tail.res, tail.act, add, first, m)
    if valid % 8:
        l0 = valid - valid % 8
        finish_sums(acc[l0:], lanes, 1, valid % 8, pix0, npix, ob + l0, tail, y, n0)
