"""im2col / col2im for one image: lay convolution patches out as matrix columns so a convolution
becomes one GEMM (the Caffe lowering; Chellapilla et al. 2006).

Layout: cols has shape (C*kh*kw, M) and one image fills the columns col0 .. col0+Ho*Wo; row
r = (c, i, j) holds, for every output pixel, the input value under kernel tap (i, j) of channel c,
zero in the padding. Several images side by side make one wide GEMM for small feature maps.
For each row and output line the in-bounds pixels form one run [lo, hi) computed once, so the copy
loop has no per-element test (a per-element select made the copy a large share of a forward pass).
Channels are given as a range (c0, n_ch) of a contiguous image instead of a sliced view: Numba
compiles a much slower strided version for non-contiguous arrays. For the same reason the runs are
indexed, not sliced, and with unsigned offsets (every index here is at least 0): a slice per run
built a strided view whose set-up outweighed the 7- or 14-pixel runs of ImageNet's last stages,
and a signed index costs Numba's wrap-around fix-up on every element (docs/perf.md, `r50s`).
"""

import numba
import numpy as np

# A weight gradient summed over a batch (im2col's, kn2row's, Winograd F(2,3)'s) is split into
# this many parts, each summed in its own buffer by one task and then added in part order. Fixed,
# not the thread count: the grouping of the sums sets their rounding, and training must give the
# same bits with --threads 1 and 2 (with more threads than parts, the rest wait in these sums).
REDUCTION_PARTS = 2


def out_size(size, k, stride, pad):
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * pad - k) // stride + 1


def refuse_unless_dense_3x3(W_shape, stride, pad, groups, want_stride=1, max_pad=None):
    """Why a convolution is not a dense 3x3 one of stride `want_stride` and padding at most
    `max_pad` (None: any), the only kind Winograd, flat and polyphase compute; or None."""
    if W_shape[2:] != (3, 3):
        return "only 3x3 kernels"
    if stride != want_stride:
        return f"only stride {want_stride}"
    if groups != 1:
        return "only groups = 1"
    if max_pad is not None and pad > max_pad:
        return f"only padding 0 to {max_pad}"
    return None


@numba.njit(cache=True, inline="always")
def valid_run(j, stride, pad, w, wo):
    """Output columns [lo, hi) whose input column ox*stride - pad + j lies inside 0..w-1."""
    lo = 0
    if pad > j:
        lo = (pad - j + stride - 1) // stride
    hi = (w - 1 + pad - j) // stride + 1
    if hi > wo:
        hi = wo
    if hi < lo:
        hi = lo
    return lo, hi


@numba.njit(cache=True, inline="always")
def copy_run(src, dst):
    """dst[:] = src over runs of equal length indexed from 0: an index Numba knows is not
    negative needs no wrap-around fix-up, and the loop vectorises."""
    for k in range(dst.size):
        dst[k] = src[k]


@numba.njit(cache=True)
def im2col(x, c0, n_ch, kh, kw, stride, pad, cols, col0):
    """Channels c0..c0+n_ch of one image x: (C, H, W) -> cols[:, col0:col0+Ho*Wo], overwritten."""
    h, w = x.shape[1], x.shape[2]
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    for r in range(n_ch * kh * kw):
        c = c0 + r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        lo, hi = valid_run(j, stride, pad, w, wo)
        row = cols[r]
        for oy in range(ho):
            iy = oy * stride - pad + i
            d0 = np.uint64(col0 + oy * wo)
            if iy < 0 or iy >= h:
                lo_y, hi_y = wo, wo
            else:
                lo_y, hi_y = lo, hi
            for ox in range(lo_y):
                row[d0 + np.uint64(ox)] = 0
            if hi_y > lo_y:
                src = x[c, iy]
                s0 = np.uint64(lo_y * stride + j - pad)
                for k in range(hi_y - lo_y):
                    row[d0 + np.uint64(lo_y + k)] = src[s0 + np.uint64(k * stride)]
            for ox in range(hi_y, wo):
                row[d0 + np.uint64(ox)] = 0


@numba.njit(cache=True)
def col2im(cols, c0, n_ch, kh, kw, stride, pad, dx, col0):
    """Scatter-add cols[:, col0:col0+Ho*Wo] into channels c0.. of one image dx: (C, H, W)."""
    h, w = dx.shape[1], dx.shape[2]
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    for r in range(n_ch * kh * kw):
        c = c0 + r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        lo, hi = valid_run(j, stride, pad, w, wo)
        row = cols[r]
        for oy in range(ho):
            iy = oy * stride - pad + i
            if iy < 0 or iy >= h or hi <= lo:
                continue
            dst = dx[c, iy]
            s0, d0 = np.uint64(col0 + oy * wo + lo), np.uint64(lo * stride + j - pad)
            for k in range(hi - lo):
                dst[d0 + np.uint64(k * stride)] += row[s0 + np.uint64(k)]
