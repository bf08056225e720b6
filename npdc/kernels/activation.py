"""Elementwise kernels of the engine, parallel over both cores where NumPy uses one: ReLU each way
(one pass instead of NumPy's mask-then-multiply two) and the residual add, which can apply the ReLU
that follows it in the same pass."""

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
def add(a, b, out, relu):
    """out = a + b elementwise over flat contiguous arrays, rectified if relu."""
    if relu:
        for i in numba.prange(a.size):
            v = a[i] + b[i]
            out[i] = 0 if v <= 0 else v
    else:
        for i in numba.prange(a.size):
            out[i] = a[i] + b[i]
