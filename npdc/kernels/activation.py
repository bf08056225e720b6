"""Elementwise kernels of the engine, parallel over both cores where NumPy uses one: ReLU each way
(one pass instead of NumPy's mask-then-multiply two), clipping (ReLU6) each way, the residual add, which can apply the ReLU
that follows it in the same pass, and the zero-padded subsampling shortcut each way (NumPy zeroes
the whole output, then copies strided, on one core)."""

import numba


@numba.njit(parallel=True, cache=True)
def relu_forward(x, y):
    """y = max(x, 0) elementwise over flat contiguous arrays."""
    for i in numba.prange(x.size):
        v = x[i]
        y[i] = 0 if v <= 0 else v  # NaN stays NaN, as with np.maximum


@numba.njit(parallel=True, cache=True)
def relu_backward(dy, y, dx):
    """dx = dy where the forward output y was positive, else 0 (flat contiguous arrays)."""
    for i in numba.prange(dy.size):
        dx[i] = dy[i] if y[i] > 0 else 0


@numba.njit(parallel=True, cache=True)
def relu_backward_sum(a, b, y, dx):
    """dx = a + b where the forward output y was positive, else 0: a ReLU's gradient arriving as
    two parts (a fork), summed and masked in one pass (the sum rounds as a + b alone would)."""
    for i in numba.prange(a.size):
        dx[i] = a[i] + b[i] if y[i] > 0 else 0


@numba.njit(parallel=True, cache=True)
def clip_forward(x, lo, hi, y):
    """y = min(max(x, lo), hi) elementwise over flat contiguous arrays (NaN stays NaN, as with
    np.clip); y may be x."""
    for i in numba.prange(x.size):
        v = x[i]
        y[i] = lo if v < lo else (hi if v > hi else v)


@numba.njit(parallel=True, cache=True)
def clip_backward(dy, y, lo, hi, dx):
    """dx = dy where lo < y < hi, else 0 (flat contiguous arrays; y the forward's input or output,
    the same test either way)."""
    for i in numba.prange(dy.size):
        v = y[i]
        dx[i] = dy[i] if lo < v < hi else 0


@numba.njit(parallel=True, cache=True)
def add(a, b, out, relu):
    """out = a + b elementwise over flat contiguous arrays, rectified if relu."""
    if relu:
        for i in numba.prange(a.size):
            v = a[i] + b[i]
            out[i] = 0 if v <= 0 else v
    else:
        for i in numba.prange(a.size):
            out[i] = a[i] + b[i]


@numba.njit(parallel=True, cache=True)
def shortcut_forward(x, s, front, y):
    """y[:, front + c] = x[:, c, ::s, ::s] and y's other channels zero, for x: (N, C, H, W)."""
    n, o = y.shape[0], y.shape[1]
    c = x.shape[1]
    for task in numba.prange(n * o):
        i, k = task // o, task % o
        dst = y[i, k]
        if front <= k < front + c:
            src = x[i, k - front]
            for r in range(dst.shape[0]):
                for q in range(dst.shape[1]):
                    dst[r, q] = src[s * r, s * q]
        else:
            dst[:] = 0


@numba.njit(parallel=True, cache=True)
def shortcut_backward(dy, s, front, dx):
    """dx[:, c, ::s, ::s] = dy[:, front + c] and dx zero elsewhere, for dx: (N, C, H, W)."""
    n, c = dx.shape[0], dx.shape[1]
    for task in numba.prange(n * c):
        i, k = task // c, task % c
        dst, src = dx[i, k], dy[i, front + k]
        dst[:] = 0
        for r in range(src.shape[0]):
            for q in range(src.shape[1]):
                dst[s * r, s * q] = src[r, q]

