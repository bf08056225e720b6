"""Max, average and global-average pooling. Max pooling's window loops are the kernels of
npdc.kernels.pool; average pooling (padding counted as zeros) is the depthwise convolution whose
taps are all 1 / k*k. Neither builds a padded copy of the input."""

import numpy as np

from npdc.engine.layers.base import Layer
from npdc.kernels import conv_depthwise
from npdc.kernels.pool import max_backward, max_forward


def pool_size(side, k, stride, pad, ceil):
    """Output side of a pooling window; with `ceil`, a last partial window counts if it starts
    inside the input or its left padding (PyTorch's ceil_mode)."""
    n = side + 2 * pad - k
    out = (-(-n // stride) if ceil else n // stride) + 1
    if ceil and (out - 1) * stride >= side + pad:
        out -= 1
    return out


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0, ceil=False):
        super().__init__()
        self.k = int(kernel_size)
        self.stride = int(stride) if stride is not None else self.k
        self.padding = int(padding)
        self.ceil = bool(ceil)

    def build(self, in_shape, rng):
        c, h, w = in_shape
        ho, wo = (pool_size(side, self.k, self.stride, self.padding, self.ceil) for side in (h, w))
        if ho < 1 or wo < 1 or self.padding > self.k // 2:
            raise ValueError(f"pool {self.k}x{self.k} pad {self.padding} does not fit {h}x{w}")
        self.in_shape, self.out_shape = tuple(in_shape), (c, ho, wo)
        return self.out_shape

    def describe(self):
        return f"{type(self).__name__} {self.k}x{self.k}/{self.stride}" + (" ceil" if self.ceil else "")


class MaxPool2d(_Pool2d):
    """x: (N, C, H, W) -> y: (N, C, Ho, Wo); ties send the gradient to the first maximum."""

    def forward(self, x, train):
        x = np.ascontiguousarray(x)
        y = np.empty((x.shape[0],) + self.out_shape, x.dtype)
        arg = np.empty(y.shape if train else (1, 1, 1, 1), np.int16)  # the winning tap a*k + b
        max_forward(x, self.k, self.stride, self.padding, y, arg, train)
        if train:
            self.cache["arg"] = arg
        return y

    def backward(self, dy):
        arg = self.cache.pop("arg")
        dx = np.empty((dy.shape[0],) + self.in_shape, dy.dtype)
        max_backward(np.ascontiguousarray(dy), arg, self.k, self.stride, self.padding, dx)
        return dx


class AvgPool2d(_Pool2d):
    """x: (N, C, H, W) -> y: (N, C, Ho, Wo); padding counts as zeros in the average (PyTorch's
    count_include_pad), so a ceil-mode window reaching past the padding is refused."""

    def build(self, in_shape, rng):
        if self.ceil:
            raise ValueError("average pooling in ceil mode is not supported")
        return super().build(in_shape, rng)

    def _taps(self, dtype):
        return np.full((self.in_shape[0], 1, self.k, self.k), 1.0 / (self.k * self.k), dtype)

    def forward(self, x, train):
        x = np.ascontiguousarray(x)
        return conv_depthwise.forward(x, self._taps(x.dtype), self.stride, self.padding, x.shape[1])

    def backward(self, dy):
        dy = np.ascontiguousarray(dy)
        return conv_depthwise.data_gradient(self._taps(dy.dtype), dy, self.stride, self.padding,
                                            (dy.shape[0],) + self.in_shape)


class GlobalAvgPool(Layer):
    """x: (N, C, H, W) -> y: (N, C), the mean over each feature map."""

    def build(self, in_shape, rng):
        self.in_shape, self.out_shape = tuple(in_shape), (in_shape[0],)
        return self.out_shape

    def forward(self, x, train):
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        _, h, w = self.in_shape
        return np.broadcast_to((dy / (h * w))[:, :, None, None], dy.shape + (h, w)).copy()
