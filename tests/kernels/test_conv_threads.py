"""Every convolution primitive gives the same bits on one thread as on two, forward and both
gradients: training must not round differently with --threads. The shapes make im2col, kn2row and
Winograd F(2,3) sum their weight gradients over more than two chunks of images, where summing per
thread grouped the sums by the thread count."""

import numba
import numpy as np
import pytest

from npdc.kernels.conv import conv2d_backward, conv2d_forward, legal_primitives

CASES = [  # x shape, W shape, stride, pad, groups
    ((5, 4, 32, 32), (6, 4, 3, 3), 1, 1, 1),
    ((5, 4, 32, 32), (6, 4, 3, 3), 2, 1, 1),
    ((5, 6, 24, 24), (8, 6, 1, 1), 1, 0, 1),
    ((5, 6, 24, 24), (6, 1, 3, 3), 1, 1, 6),
    ((3, 3, 30, 30), (4, 3, 7, 7), 2, 3, 1),
]


def _on(threads, fn, *args, **kwargs):
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return fn(*args, **kwargs)
    finally:
        numba.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
@pytest.mark.parametrize("x_shape,W_shape,stride,pad,groups", CASES)
def test_every_primitive_gives_the_same_bits_on_one_and_two_threads(x_shape, W_shape, stride, pad, groups):
    r = np.random.default_rng(7)
    x = r.standard_normal(x_shape).astype(np.float32)
    W = r.standard_normal(W_shape).astype(np.float32)
    y = conv2d_forward(x, W, stride, pad, groups)
    dy = r.standard_normal(y.shape).astype(np.float32)
    for name in legal_primitives(x_shape, W_shape, stride, pad, groups):
        ran = [(_on(t, conv2d_forward, x, W, stride, pad, groups, primitive=name),
                *_on(t, conv2d_backward, x, W, dy, stride, pad, groups, primitive=name)) for t in (1, 2)]
        for what, one, two in zip(("y", "dx", "dW"), *ran):
            np.testing.assert_array_equal(one, two, err_msg=f"{name} {what}")
