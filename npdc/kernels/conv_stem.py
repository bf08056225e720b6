"""Direct convolution for layers with few input channels, any kernel size and stride: the 7x7
stride-2 stem of ImageNet ResNets (He et al. 2016, "Deep Residual Learning for Image
Recognition"). Output channels are blocked in registers so each loaded input feeds eight
multiply-adds (Zhang, Franchetti & Low 2018, "High Performance Zero-Memory Overhead Direct
Convolutions"); the kernel is flat's few-channel rows (npdc.kernels.conv_flat) made general.

Why: im2col lowers three channels into 147 rows, a copy 49 times the input, and then multiplies
a 64 x 147 matrix by it; with so few channels neither step runs near the machine's peak.
Here nothing is lowered. Each image is split once into column phases: with stride s, padded
column t*s + q goes to phase q at position t, so tap j of an output row reads phase j % s from
position j // s on, a contiguous run. A block of eight output channels by two 16-column chunks
of an output row is summed over every channel and tap in sixteen 512-bit registers and stored
once. Rows narrower than a chunk are computed into a wider buffer and cut.

Backward: the data gradient is im2col's (the stem's is never asked for in training); the weight
gradient is a direct sum over the same phase planes, dy's channels in blocks of 16 lanes times
each tap's input broadcast, so no column matrix is built either (see _weight_image_body). Each
image's sums go to its own slot and the slots are added in image order: the same bits for any
thread count.
Departures from the papers: none in the maths; the phase split and the loop order are this
module's.
"""

import numba
import numpy as np

from npdc.kernels import conv_im2col
from npdc.kernels.conv_flat import BLOCK, LANES, block_tap, interleaved, row_chunks, store_block, zero_block
from npdc.kernels.im2col import copy_run, out_size, valid_run
from npdc.kernels.simd import fmav16, ld16, prefer_512_bit_vectors, st16, straight_line_compiled

MAX_CHANNELS = 8  # from here on the channels give GEMM-style primitives enough reuse to win
GRAD_ROWS = 8  # output rows per weight-gradient pass: their dy and input lines stay in L2


def refuse(x_shape, W_shape, stride, pad, groups):
    """Why this primitive cannot compute the convolution, or None."""
    if groups != 1:
        return "only groups = 1"
    if x_shape[1] > MAX_CHANNELS:
        return f"only layers with at most {MAX_CHANNELS} input channels"
    return None


def _geometry(x_shape, W_shape, stride, pad):
    """(Ho, Wo, the forward's row width max(Wo, LANES), phase length Wq): a phase holds whole
    16-column chunks of the widest row either direction computes, from every tap's shift."""
    _, _, h, w = x_shape
    _, _, kh, kw = W_shape
    ho, wo = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
    width = max(wo, LANES)
    return ho, wo, width, -(-width // LANES) * LANES + (kw - 1) // stride


@numba.njit(parallel=True, cache=True)
def _split_phases(x, stride, pad, planes):
    """planes (N, C, H + 2*pad, s, Wq), zeroed: padded row r + pad, column t*s + q of x's image
    at planes[i, c, r + pad, q, t]."""
    n, c, h, w = x.shape
    wq = planes.shape[4]
    for task in numba.prange(n * c):
        i, ch = task // c, task % c
        for q in range(stride):
            lo, hi = valid_run(q, stride, pad, w, wq)
            if hi > lo:
                first = lo * stride + q - pad
                for r in range(h):
                    copy_run(x[i, ch, r, first:first + (hi - lo - 1) * stride + 1:stride],
                              planes[i, ch, r + pad, q, lo:hi])


def _phase_planes(x, kw, stride, pad, wq):
    n, c, h, _ = x.shape
    planes = np.zeros((n, c, h + 2 * pad, stride, wq), x.dtype)
    _split_phases(x, stride, pad, planes)
    return planes


def _rows_block_body(plane, Wb, starts, shift, phase, stride, yi, q0):
    """yi[q0:q0+8] (O, Ho, width) = output channels q0.. of one image from its phase planes
    (C, Hp, s, Wq), with Wb[c, i*kw + j, q] the tap (i, j) of output channel q0 + q. Tap j reads
    phase[j] from shift[j] on. Chunks start at `starts` (pairs, as conv_flat.row_chunks gives
    them); the shifts and phases are passed as data for the reason conv_flat._rows_image_body
    gives (constant shifts compile to gathers and permutes)."""
    prefer_512_bit_vectors()
    ho = yi.shape[1]
    c, kw = Wb.shape[0], shift.size
    kh = Wb.shape[1] // kw
    for r in range(ho):
        for k in range(0, starts.size, 2):
            ca, cb = numba.uint64(starts[k]), numba.uint64(starts[k + 1])
            S = zero_block(plane)
            for ch in range(c):
                u = Wb[ch]
                for i in range(kh):
                    line = plane[ch, r * stride + i]
                    for j in range(kw):
                        a = line[phase[j], shift[j]:]
                        S = block_tap(S, u[i * kw + j], ld16(a, ca), ld16(a, cb))
            store_block(S, yi, q0, r, ca, cb)


_rows_block = straight_line_compiled(
    _rows_block_body, "F[:, :, :, ::1], F[:, :, ::1], i8[::1], i8[::1], i8[::1], i8, F[:, :, ::1], i8")


@numba.njit(parallel=True, cache=True)
def _forward(planes, W8, starts, shift, phase, stride, y):
    """y (N, O, Ho, width): one task per image and block of eight output channels."""
    n, blocks = planes.shape[0], W8.shape[0]
    for task in numba.prange(n * blocks):
        i, b = task // blocks, task % blocks
        _rows_block(planes[i], W8[b], starts, shift, phase, stride, y[i], b * BLOCK)


def _taps_of(kw, stride):
    """(shift, phase) of each kernel column j: phase j % s, from position j // s on."""
    j = np.arange(kw)
    return j // stride, j % stride


def forward(x, W, stride, pad, groups):
    """x: (N, C, H, W), W: (O, C, kh, kw) -> y: (N, O, Ho, Wo)."""
    n = x.shape[0]
    o, c, kh, kw = W.shape
    ho, wo, width, wq = _geometry(x.shape, W.shape, stride, pad)
    planes = _phase_planes(x, kw, stride, pad, wq)
    shift, phase = _taps_of(kw, stride)
    y = np.empty((n, o, ho, width), x.dtype)
    W8 = interleaved(W.reshape(o, c, kh * kw), BLOCK)
    _forward(planes, W8, row_chunks(width), shift, phase, stride, y)
    return y if width == wo else np.ascontiguousarray(y[:, :, :, :wo])


@numba.njit(cache=True, inline="always")
def _outer(S, a0, a1, a2, a3, b0, b1, b2, b3):
    """S[4q + t] + a_q * b_t lane by lane for q, t < 4: four dy lines by four taps' inputs."""
    return (fmav16(S[0], a0, b0), fmav16(S[1], a0, b1), fmav16(S[2], a0, b2), fmav16(S[3], a0, b3),
            fmav16(S[4], a1, b0), fmav16(S[5], a1, b1), fmav16(S[6], a1, b2), fmav16(S[7], a1, b3),
            fmav16(S[8], a2, b0), fmav16(S[9], a2, b1), fmav16(S[10], a2, b2), fmav16(S[11], a2, b3),
            fmav16(S[12], a3, b0), fmav16(S[13], a3, b1), fmav16(S[14], a3, b2), fmav16(S[15], a3, b3))


def _weight_block_body(plane, dyi, g, taps, stride, acc):
    """acc[tb, 4q + t, lane] += the sum over output rows and the lanes' columns of dyi[4g + q]
    times the input under tap 4*tb + t, for one image's dy (O4, Ho, W16, zero past O and Wo)
    and phase planes (C, Hp, s, Wq); taps[t] = (channel, kernel row, phase, shift). Sixteen
    512-bit sums per pass (four dy chunks by four taps' chunks: eight loads feed sixteen
    multiply-adds), GRAD_ROWS output rows at a time so both stay in cache; the lanes are added
    after the whole image."""
    prefer_512_bit_vectors()
    ho, w16 = dyi.shape[1], dyi.shape[2]
    z = numba.uint64(0)
    for r0 in range(0, ho, GRAD_ROWS):
        for tb in range(acc.shape[0]):
            A = acc[tb]
            S = (ld16(A[0], z), ld16(A[1], z), ld16(A[2], z), ld16(A[3], z), ld16(A[4], z), ld16(A[5], z),
                 ld16(A[6], z), ld16(A[7], z), ld16(A[8], z), ld16(A[9], z), ld16(A[10], z), ld16(A[11], z),
                 ld16(A[12], z), ld16(A[13], z), ld16(A[14], z), ld16(A[15], z))
            t0, t1, t2, t3 = taps[4 * tb], taps[4 * tb + 1], taps[4 * tb + 2], taps[4 * tb + 3]
            for r in range(r0, min(ho, r0 + GRAD_ROWS)):
                d0, d1, d2, d3 = dyi[4 * g, r], dyi[4 * g + 1, r], dyi[4 * g + 2, r], dyi[4 * g + 3, r]
                e0 = plane[t0[0], r * stride + t0[1], t0[2], t0[3]:]
                e1 = plane[t1[0], r * stride + t1[1], t1[2], t1[3]:]
                e2 = plane[t2[0], r * stride + t2[1], t2[2], t2[3]:]
                e3 = plane[t3[0], r * stride + t3[1], t3[2], t3[3]:]
                for k in range(0, w16, LANES):
                    col = numba.uint64(k)
                    S = _outer(S, ld16(d0, col), ld16(d1, col), ld16(d2, col), ld16(d3, col),
                               ld16(e0, col), ld16(e1, col), ld16(e2, col), ld16(e3, col))
            for q in range(16):
                st16(A[q], z, S[q])


_weight_block = straight_line_compiled(
    _weight_block_body, "F[:, :, :, ::1], F[:, :, ::1], i8, i8[:, ::1], i8, F[:, :, ::1]")


@numba.njit(parallel=True, cache=True)
def _weight_sums(planes, dyp, taps, stride, acc):
    """acc (N, O4/4, T4/4, 16, 16): one task per image and group of four output channels, each
    writing only its own slot."""
    n, groups = dyp.shape[0], dyp.shape[1] // 4
    for task in numba.prange(n * groups):
        i, g = task // groups, task % groups
        _weight_block(planes[i], dyp[i], g, taps, stride, acc[i, g])


def _tap_table(c, kh, kw, stride):
    """(channel, kernel row, phase, shift) of each tap, in W's order, padded to a multiple of
    four with copies of tap 0 (their sums are dropped)."""
    t = np.arange(c * kh * kw)
    rows = np.stack([t // (kh * kw), (t // kw) % kh, (t % kw) % stride, (t % kw) // stride], axis=1)
    return np.concatenate([rows, np.repeat(rows[:1], -len(t) % 4, axis=0)]).astype(np.int64)


def weight_gradient(x, dy, W_shape, stride, pad):
    """dW (W_shape) of the convolution of x by a kernel of W_shape, for dy: (N, O, Ho, Wo)."""
    n = x.shape[0]
    o, c, kh, kw = W_shape
    ho, wo, width, wq = _geometry(x.shape, W_shape, stride, pad)
    w16, o4 = -(-width // LANES) * LANES, -(-o // 4) * 4
    planes = _phase_planes(x, kw, stride, pad, wq)
    dyp = dy
    if (o4, w16) != (o, wo):
        dyp = np.zeros((n, o4, ho, w16), dy.dtype)
        dyp[:, :o, :, :wo] = dy
    taps = _tap_table(c, kh, kw, stride)
    acc = np.zeros((n, o4 // 4, len(taps) // 4, 16, LANES), x.dtype)
    _weight_sums(planes, dyp, taps, stride, acc)
    per_image = acc.sum(axis=-1, dtype=np.float64).reshape(n, o4 // 4, len(taps) // 4, 4, 4)
    per_image = per_image.transpose(0, 1, 3, 2, 4).reshape(n, o4, len(taps))
    total = per_image[0].copy()
    for i in range(1, n):  # images added in order: the same bits for any thread count
        total += per_image[i]
    return total[:o, :c * kh * kw].reshape(W_shape).astype(x.dtype)


def backward(x, W, dy, stride, pad, groups, need_dx):
    """(dx or None, dW) for dy: (N, O, Ho, Wo)."""
    dx = conv_im2col.data_gradient(x.shape, W, dy, stride, pad) if need_dx else None
    return dx, weight_gradient(x, dy, W.shape, stride, pad)
