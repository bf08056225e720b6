"""Winograd minimal-filtering convolution F(m x m, 3 x 3), m = 2 or 4 (Lavin & Gray 2016, "Fast
Algorithms for Convolutional Neural Networks"). The transform matrices B^T, G, A^T are those of
the paper (interpolation points 0, +-1 for m = 2; 0, +-1, +-2 for m = 4).

Each alpha x alpha input tile (alpha = m + 2) becomes V = B^T d B, each 3x3 kernel U = G g G^T, and
the output tile is A^T [U . V] A. Summed over channels, the element-wise products are alpha^2
independent GEMMs U_xi (O x C) @ V_xi (C x T) over the T tiles of a chunk of images: 2.25x
(m = 2) or 4x (m = 4) fewer multiplies than the direct sum. Departure from the paper: transforms
are applied to whole rows of T tiles at once (data laid out (alpha^2, C, T)), so the inner loops
are long contiguous axpys that vectorise instead of per-tile 4x4/6x6 products.
Backward is the exact transpose of each linear step, so it stays in the Winograd domain:
dM = A dY A^T, dU = sum_tiles dM V^T, dV = U^T dM, dx = scatter(B dV B^T), dW = G^T dU G.
Stride 1, 3x3 kernels, groups = 1 only; any padding.

The registry's `winograd2` runs this module with m = 2. F(4x4, 3x3) runs as `winograd4` in
conv_winograd4, whose transforms are fused per chunk (this module's m = 4 passes lost the 4x
saving to memory traffic); it takes its G from `matrices` here.
"""

import numba
import numpy as np

from npdc.kernels.im2col import REDUCTION_PARTS, refuse_unless_dense_3x3, valid_run

TILES = 512  # target tiles per chunk (GEMM width), measured on ResNet layer shapes

_BT = {2: [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
       4: [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]}
_G = {2: [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
      4: [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
          [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]}
_AT = {2: [[1, 1, 1, 0], [0, 1, -1, -1]],
       4: [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]}


def matrices(m, dtype):
    """(B^T, G, A^T) of F(m x m, 3 x 3) as arrays of `dtype`."""
    return tuple(np.array(t[m], dtype) for t in (_BT, _G, _AT))


def refuse(x_shape, W_shape, stride, pad, groups):
    """Why Winograd F(m, 3) cannot compute this convolution (any padding), or None."""
    return refuse_unless_dense_3x3(W_shape, stride, pad, groups)


@numba.njit(cache=True)
def _gather(img, alpha, step, pad, th, tw, D, col0):
    """D[a*alpha + b, k, col0 + ty*tw + tx] = img[k, ty*step - pad + a, tx*step - pad + b] (0 outside)."""
    h, w = img.shape[1], img.shape[2]
    for a in range(alpha):
        for b in range(alpha):
            lo, hi = valid_run(b, step, pad, w, tw)
            shift = b - pad
            for k in range(img.shape[0]):
                for ty in range(th):
                    dst = D[a * alpha + b, k, col0 + ty * tw:col0 + (ty + 1) * tw]
                    iy = ty * step - pad + a
                    if iy < 0 or iy >= h:
                        dst[:] = 0
                        continue
                    src = img[k, iy]
                    for tx in range(lo):
                        dst[tx] = 0
                    for tx in range(lo, hi):
                        dst[tx] = src[tx * step + shift]
                    for tx in range(hi, tw):
                        dst[tx] = 0


@numba.njit(cache=True)
def _scatter_add(D, alpha, step, pad, th, tw, img, col0):
    """The transpose of _gather: img[k, ty*step - pad + a, tx*step - pad + b] += D[...]."""
    h, w = img.shape[1], img.shape[2]
    for a in range(alpha):
        for b in range(alpha):
            lo, hi = valid_run(b, step, pad, w, tw)
            shift = b - pad
            for k in range(img.shape[0]):
                for ty in range(th):
                    iy = ty * step - pad + a
                    if iy < 0 or iy >= h:
                        continue
                    src = D[a * alpha + b, k, col0 + ty * tw:col0 + (ty + 1) * tw]
                    dst = img[k, iy]
                    for tx in range(lo, hi):
                        dst[tx * step + shift] += src[tx]


@numba.njit(cache=True)
def _sandwich(L, R, src, dst, tmp):
    """dst[p*Q + q] = sum_ab L[p, a] R[q, b] src[a*B + b] for src: (A*B, K, T), dst: (P*Q, K, T);
    two separable passes of axpys over T that skip zero coefficients."""
    P, A = L.shape
    Q, B = R.shape
    for a in range(A):
        for q in range(Q):
            out = tmp[a * Q + q]
            out[:, :] = 0
            for b in range(B):
                r = R[q, b]
                if r != 0:
                    s = src[a * B + b]
                    for k in range(out.shape[0]):
                        for t in range(out.shape[1]):
                            out[k, t] += r * s[k, t]
    for p in range(P):
        for q in range(Q):
            out = dst[p * Q + q]
            out[:, :] = 0
            for a in range(A):
                l = L[p, a]
                if l != 0:
                    s = tmp[a * Q + q]
                    for k in range(out.shape[0]):
                        for t in range(out.shape[1]):
                            out[k, t] += l * s[k, t]


def _chunking(n, th, tw):
    chunk = max(1, min(n, TILES // (th * tw)))
    return chunk, chunk * th * tw


@numba.njit(parallel=True, cache=True)
def _forward(x, U, BT, AT, pad, y, chunk, n_threads):
    n, c = x.shape[0], x.shape[1]
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    m, alpha = AT.shape
    th, tw = (ho + m - 1) // m, (wo + m - 1) // m
    per = th * tw
    cap = chunk * per
    big = max(c, o)
    n_chunks = (n + chunk - 1) // chunk
    D_buf = np.empty((n_threads, alpha * alpha * big * cap), x.dtype)
    V_buf = np.empty((n_threads, alpha * alpha * big * cap), x.dtype)
    tmp_buf = np.empty((n_threads, alpha * alpha * big * cap), x.dtype)
    for t in numba.prange(n_threads):
        for k in range(t, n_chunks, n_threads):
            i0 = k * chunk
            mm = min(chunk, n - i0)
            T = mm * per
            D = D_buf[t, :alpha * alpha * c * T].reshape((alpha * alpha, c, T))
            V = V_buf[t, :alpha * alpha * c * T].reshape((alpha * alpha, c, T))
            M = D_buf[t, :alpha * alpha * o * T].reshape((alpha * alpha, o, T))
            Yt = V_buf[t, :m * m * o * T].reshape((m * m, o, T))
            tmp_c = tmp_buf[t, :alpha * alpha * c * T].reshape((alpha * alpha, c, T))
            tmp_o = tmp_buf[t, :alpha * m * o * T].reshape((alpha * m, o, T))
            for i in range(mm):
                _gather(x[i0 + i], alpha, m, pad, th, tw, D, i * per)
            _sandwich(BT, BT, D, V, tmp_c)
            for xi in range(alpha * alpha):
                np.dot(U[xi], V[xi], M[xi])
            _sandwich(AT, AT, M, Yt, tmp_o)
            for i in range(mm):
                _scatter_add(Yt, m, m, 0, th, tw, y[i0 + i], i * per)


@numba.njit(parallel=True, cache=True)
def _backward(x, U, BT, AT, dy, pad, dx, need_dx, chunk, parts):
    n, c = x.shape[0], x.shape[1]
    o, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    m, alpha = AT.shape
    th, tw = (ho + m - 1) // m, (wo + m - 1) // m
    per = th * tw
    cap = chunk * per
    big = max(c, o)
    n_chunks = (n + chunk - 1) // chunk
    A, BB = AT.T.copy(), BT.T.copy()
    UT = np.empty((alpha * alpha, c, o), x.dtype)
    for xi in range(alpha * alpha):
        UT[xi] = U[xi].T
    D_buf = np.empty((parts, alpha * alpha * big * cap), x.dtype)
    V_buf = np.empty((parts, alpha * alpha * big * cap), x.dtype)
    M_buf = np.empty((parts, alpha * alpha * big * cap), x.dtype)
    tmp_buf = np.empty((parts, alpha * alpha * big * cap), x.dtype)
    part = np.empty((parts, o, c), x.dtype)
    dU = np.zeros((parts, alpha * alpha, o, c), x.dtype)
    for t in numba.prange(parts):
        for k in range(t, n_chunks, parts):
            i0 = k * chunk
            mm = min(chunk, n - i0)
            T = mm * per
            D = D_buf[t, :alpha * alpha * c * T].reshape((alpha * alpha, c, T))
            V = V_buf[t, :alpha * alpha * c * T].reshape((alpha * alpha, c, T))
            dM = M_buf[t, :alpha * alpha * o * T].reshape((alpha * alpha, o, T))
            dYt = D_buf[t, :m * m * o * T].reshape((m * m, o, T))
            tmp_c = tmp_buf[t, :alpha * alpha * c * T].reshape((alpha * alpha, c, T))
            tmp_o = tmp_buf[t, :m * alpha * o * T].reshape((m * alpha, o, T))
            for i in range(mm):
                _gather(dy[i0 + i], m, m, 0, th, tw, dYt, i * per)
            _sandwich(A, A, dYt, dM, tmp_o)
            for i in range(mm):
                _gather(x[i0 + i], alpha, m, pad, th, tw, D, i * per)
            _sandwich(BT, BT, D, V, tmp_c)
            for xi in range(alpha * alpha):
                np.dot(dM[xi], V[xi].T, part[t])
                dU[t, xi] += part[t]
            if need_dx:
                for xi in range(alpha * alpha):
                    np.dot(UT[xi], dM[xi], V[xi])
                _sandwich(BB, BB, V, D, tmp_c)
                for i in range(mm):
                    _scatter_add(D, alpha, m, pad, th, tw, dx[i0 + i], i * per)
    total = dU[0].copy()
    for t in range(1, parts):
        total += dU[t]
    return total


def _weights(W, G):
    """U (alpha^2, O, C) = G g G^T for every kernel g = W[o, c]."""
    alpha = G.shape[0]
    U = np.einsum("pi,ocij,qj->pqoc", G, W, G, optimize=True)
    return np.ascontiguousarray(U.reshape(alpha * alpha, W.shape[0], W.shape[1]), dtype=W.dtype)


def forward(x, W, stride, pad, groups, m=2):
    """x: (N, C, H, W), W: (O, C, 3, 3) -> y: (N, O, Ho, Wo), stride 1."""
    n, c, h, w = x.shape
    o = W.shape[0]
    BT, G, AT = matrices(m, x.dtype)
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    y = np.zeros((n, o, ho, wo), x.dtype)
    chunk, _ = _chunking(n, -(-ho // m), -(-wo // m))
    _forward(x, _weights(W, G), BT, AT, pad, y, chunk, numba.get_num_threads())
    return y


def backward(x, W, dy, stride, pad, groups, need_dx, m=2):
    """(dx or None, dW) for dy: (N, O, Ho, Wo)."""
    n = x.shape[0]
    BT, G, AT = matrices(m, x.dtype)
    dx = np.zeros_like(x) if need_dx else np.zeros((1, 1, 1, 1), x.dtype)
    chunk, _ = _chunking(n, -(-dy.shape[2] // m), -(-dy.shape[3] // m))
    dU = _backward(x, _weights(W, G), BT, AT, dy, pad, dx, need_dx, chunk, REDUCTION_PARTS)
    alpha = G.shape[0]
    dU = dU.reshape(alpha, alpha, W.shape[0], W.shape[1])
    dW = np.einsum("pi,pqoc,qj->ocij", G, dU, G, optimize=True)
    return (dx if need_dx else None), dW.astype(x.dtype)
