"""A 1x1 convolution for inference with the positions in the vector lanes, read and written in
the arena's NCHW layout, the layer's tail (npdc.kernels.fused.Tail) applied as each block is
written.

Why: a 1x1 layer is a matrix product per image, y[o, p] = sum_c W[o, c] x[c, p], and in NCHW a
channel's positions are one contiguous run, so a vector of sixteen positions is one load and
needs no copy into a padded plane nor a regrouping of sums by channel (which the channels-in-
lanes kernel of npdc.kernels.fused_blocked pays on every layer, and which were most of a
16-channel 1x1 layer's time there). A register block is OUT output channels by VECTORS vectors
of positions: per input channel, VECTORS loads and OUT broadcast weights feed OUT x VECTORS
multiply-adds (the outer-product blocking of Goto & van de Geijn 2008, "Anatomy of
High-Performance Matrix Multiplication", without packing: the operands are small enough to stay
in cache). A stride-s layer first copies its subsampled input (every s-th row and column) into a
contiguous plane per task.

Threads: a batch is split by images; one image (or fewer images than threads) by groups of
output blocks as well, so both threads work. Each output is summed over c in order by one task,
so the bits depend neither on the split nor on the thread count.
"""

import numba

from npdc.kernels.blocked_io import finish_sums
from npdc.kernels.fused import PRANGE_ONLY
from npdc.kernels.simd import fma16, ld16, prefer_512_bit_vectors, st16, straight_line_compiled

OUT = 4  # output channels per register block
VECTORS = 4  # vectors of 16 positions per register block
SPAN = 16 * VECTORS  # positions per register block
TAIL_FLOATS = 8192  # sums per tail call: a run of positions for every output channel of a task


@numba.njit(cache=True)
def tail_positions(o):
    """Positions per tail call for o output channels: whole register blocks, as many as fill
    TAIL_FLOATS (a tail call per channel and run; short runs cost their calls, docs/perf.md)."""
    return SPAN * max(1, TAIL_FLOATS // (-(-o // OUT) * OUT * SPAN))


def _block_body(xf, at, cs, Wb, lstep, acc):
    """acc[l * lstep + r] = sum over c of Wb[c, l] * xf[at + c * cs + r] for l < OUT, r < SPAN:
    OUT output channels by four vectors of positions, sixteen sums in registers."""
    prefer_512_bit_vectors()
    u = numba.uint64
    acc[0] = 0
    e = acc[0]
    z = (e, e, e, e, e, e, e, e, e, e, e, e, e, e, e, e)
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = z
    p = u(at)
    for c in range(Wb.shape[0]):
        x0, x1, x2, x3 = ld16(xf, p), ld16(xf, p + u(16)), ld16(xf, p + u(32)), ld16(xf, p + u(48))
        w = Wb[c]
        w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
        a0, a1, a2, a3 = fma16(a0, w0, x0), fma16(a1, w0, x1), fma16(a2, w0, x2), fma16(a3, w0, x3)
        b0, b1, b2, b3 = fma16(b0, w1, x0), fma16(b1, w1, x1), fma16(b2, w1, x2), fma16(b3, w1, x3)
        c0, c1, c2, c3 = fma16(c0, w2, x0), fma16(c1, w2, x1), fma16(c2, w2, x2), fma16(c3, w2, x3)
        d0, d1, d2, d3 = fma16(d0, w3, x0), fma16(d1, w3, x1), fma16(d2, w3, x2), fma16(d3, w3, x3)
        p += u(cs)
    for k, s in enumerate((a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3)):
        st16(acc, u((k // VECTORS) * lstep + 16 * (k % VECTORS)), s)


block_sums = straight_line_compiled(_block_body, "F[::1], i8, i8, F[:, ::1], i8, F[::1]")


def _vector_body(xf, at, cs, Wb, lstep, acc):
    """_block_body for one vector of sixteen positions: acc[l * lstep + r], r < 16."""
    prefer_512_bit_vectors()
    u = numba.uint64
    acc[0] = 0
    e = acc[0]
    a = b = c = d = (e, e, e, e, e, e, e, e, e, e, e, e, e, e, e, e)
    p = u(at)
    for ch in range(Wb.shape[0]):
        x = ld16(xf, p)
        w = Wb[ch]
        a, b, c, d = fma16(a, w[0], x), fma16(b, w[1], x), fma16(c, w[2], x), fma16(d, w[3], x)
        p += u(cs)
    for k, s in enumerate((a, b, c, d)):
        st16(acc, u(lstep * k), s)


vector_sums = straight_line_compiled(_vector_body, "F[::1], i8, i8, F[:, ::1], i8, F[::1]")


@numba.njit(cache=True)
def _scalar_sums(xf, at, cs, Wb, count, lstep, acc):
    """acc[l * lstep + r] for the last count < 16 positions, one at a time."""
    for l in range(OUT):
        for r in range(count):
            k = l * lstep + r
            acc[k] = 0
            for c in range(Wb.shape[0]):
                acc[k] += Wb[c, l] * xf[at + c * cs + r]


@numba.njit(cache=True)
def _subsample(x, image, stride, plane):
    """plane[c * P + i * Wo + j] = x[image, c, i * stride, j * stride]: a strided layer's input
    as contiguous channel runs."""
    c, ho, wo = x.shape[1], (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1
    for ch in range(c):
        for i in range(ho):
            row = x[image, ch, i * stride]
            at = (ch * ho + i) * wo
            for j in range(wo):
                plane[at + j] = row[j * stride]


@numba.njit(cache=True)
def _image(x, Wb, stride, tail, y, image, b0, b1, ws):
    """Output blocks b0 .. b1 - 1 of one image, a run of tail_positions positions at a time: per
    register block of SPAN positions, every output block's sums (the positions' inputs stay in
    L1 from one output block to the next), then one tail call for the run's channels."""
    c, P = x.shape[1], y.shape[2] * y.shape[3]
    run = tail_positions(Wb.shape[0] * OUT)  # of every block, as pointwise_floats sizes ws
    acc = ws[:(b1 - b0) * OUT * run]
    if stride == 1:
        xf, base = x.reshape(x.size), image * c * P
    else:
        xf, base = ws[acc.size:acc.size + c * P], 0
        _subsample(x, image, stride, xf)
    full, vec = P // SPAN * SPAN, P // 16 * 16
    for q0 in range(0, P, run):
        for p0 in range(q0, min(q0 + run, P), SPAN):
            for b in range(b0, b1):
                a = acc[(b - b0) * OUT * run + p0 - q0:]
                if p0 < full:
                    block_sums(xf, base + p0, P, Wb[b], run, a)
                    continue
                for v in range(p0, vec, 16):
                    vector_sums(xf, base + v, P, Wb[b], run, a[v - p0:])
                if vec < P:
                    _scalar_sums(xf, base + vec, P, Wb[b], P - vec, run, a[vec - p0:])
        finish_sums(acc, 1, run, (b1 - b0) * OUT, image * P + q0, min(run, P - q0), b0 * OUT, tail, y, 0)


def pointwise_floats(c, o, ho, wo, stride):
    """Floats of one thread's workspace for a layer with c input channels, o output channels and
    a ho x wo output."""
    return -(-o // OUT) * OUT * tail_positions(o) + (c * ho * wo if stride > 1 else 0)


@numba.njit(parallel=PRANGE_ONLY, cache=True)
def conv_pointwise_fused(x, Wb, stride, tail, y, ws):
    """y (N, O, Ho, Wo) = tail(the 1x1 convolution with `stride`, no padding, of x (N, C, H, W)
    with Wb (O/OUT blocks, C, OUT): conv_flat.interleaved weights of size OUT, zero past O).
    ws: (threads, >= pointwise_floats) scratch."""
    n, blocks = x.shape[0], Wb.shape[0]
    threads = ws.shape[0]
    parts = 1 if n >= 2 * threads else min(blocks, max(1, threads // n))
    for t in numba.prange(n * parts):
        image, part = t // parts, t % parts
        _image(x, Wb, stride, tail, y, image, part * blocks // parts, (part + 1) * blocks // parts,
               ws[numba.get_thread_id()])
