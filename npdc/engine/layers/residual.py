"""The residual add and the parameter-free shortcut of CIFAR ResNets
(He et al. 2016, "Deep Residual Learning", option A: subsample by the stride, zero-pad channels)."""

import numpy as np

from npdc.engine.layers.base import Layer, sum_gradients
from npdc.kernels.activation import (add, relu_backward, relu_backward_sum, shortcut_backward,
                                     shortcut_forward)


def _sum(a, b, out, relu):
    """a + b (rectified if relu) into out (a contiguous; out may be a) with the parallel kernel, or
    with NumPy when the dtypes differ (its promotion, which the kernel does not do)."""
    if a.dtype != b.dtype:
        s = a + b
        return np.maximum(s, 0, out=s) if relu else s
    add(a.reshape(-1), np.ascontiguousarray(b).reshape(-1), out.reshape(-1), relu)
    return out


class Add(Layer):
    """Two inputs of equal shape -> their sum; backward returns the same gradient to both. With
    relu=True (Net decides) it also applies the ReLU that follows it, forward and backward."""

    n_inputs = 2
    absorbs_relu = True
    sums_gradient_parts = True

    def build(self, in_shapes, rng):
        a, b = (tuple(s) for s in in_shapes)
        if a != b:
            raise ValueError(f"residual add of shapes {a} and {b}")
        self.in_shape = self.out_shape = a
        return a

    def forward(self, xs, train, relu=False):
        a = np.ascontiguousarray(xs[0])
        y = _sum(a, xs[1], np.empty_like(a), relu)
        if train:
            self.cache["relu_y"] = y if relu else None
        return y

    def forward_into(self, xs, relu=False):
        """Eval-mode forward over xs[0] itself (contiguous; the caller no longer needs it)."""
        return _sum(xs[0], xs[1], xs[0], relu)

    def backward(self, dy):
        """dy: the gradient, or a list of its parts (when the output forks), which the ReLU's
        mask then sums in its own pass."""
        y = self.cache.pop("relu_y", None)
        parts = dy if isinstance(dy, list) else [dy]
        if y is None:
            dy = sum_gradients(parts)
            return [dy, dy]
        masked = np.empty_like(y)
        if len(parts) > 1 and all(p.dtype == y.dtype for p in parts):
            head, last = sum_gradients(parts[:-1]), np.ascontiguousarray(parts[-1])
            relu_backward_sum(np.ascontiguousarray(head).reshape(-1), last.reshape(-1), y.reshape(-1),
                              masked.reshape(-1))
        else:
            g = np.ascontiguousarray(sum_gradients(parts), dtype=y.dtype)
            relu_backward(g.reshape(-1), y.reshape(-1), masked.reshape(-1))
        return [masked, masked]


class ZeroPadShortcut(Layer):
    """x: (N, C, H, W) -> (N, O, ceil(H/s), ceil(W/s)): every s-th pixel, the new channels zero.

    The O - C new channels are split between the front and the back: `front` of them before the
    input's channels (default: the floor half, the layout of the reference CIFAR ResNets, so their
    weights import unchanged; an ONNX Pad may put them anywhere).
    """

    def __init__(self, out_channels, stride, front=None):
        super().__init__()
        self.out_channels, self.stride = int(out_channels), int(stride)
        self.front_setting = None if front is None else int(front)

    def build(self, in_shape, rng):
        c, h, w = in_shape
        if self.out_channels < c:
            raise ValueError(f"zero-pad shortcut cannot shrink {c} channels to {self.out_channels}")
        s, spare = self.stride, self.out_channels - c
        self.front = spare // 2 if self.front_setting is None else self.front_setting
        if not 0 <= self.front <= spare:
            raise ValueError(f"zero-pad shortcut: {self.front} front channels do not fit {spare} new ones")
        self.in_shape, self.out_shape = tuple(in_shape), (self.out_channels, -(-h // s), -(-w // s))
        return self.out_shape

    def forward(self, x, train):
        y = np.empty((x.shape[0],) + self.out_shape, x.dtype)
        shortcut_forward(x, self.stride, self.front, y)
        return y

    def backward(self, dy):
        dx = np.empty((dy.shape[0],) + self.in_shape, dy.dtype)
        shortcut_backward(dy, self.stride, self.front, dx)
        return dx
