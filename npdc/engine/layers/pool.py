"""Max, average and global-average pooling.

Windows are visited one kernel offset (i, j) at a time, each a strided slice of the padded input,
so k*k whole-array numpy operations do the work and no index arrays are built.
"""

import numpy as np

from npdc.engine.layers.base import Layer


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

    def _pad(self, x, fill):
        """x padded by `padding` on every side, and on the bottom and right as far as a ceil-mode
        last window reaches."""
        p, (_, h, w), (_, ho, wo) = self.padding, self.in_shape, self.out_shape
        extra_h = max(0, (ho - 1) * self.stride + self.k - h - 2 * p)
        extra_w = max(0, (wo - 1) * self.stride + self.k - w - 2 * p)
        if p == 0 and extra_h == 0 and extra_w == 0:
            return x
        return np.pad(x, ((0, 0), (0, 0), (p, p + extra_h), (p, p + extra_w)), constant_values=fill)

    def _window(self, a, i, j):
        """The (N, C, Ho, Wo) slice of padded `a` under kernel offset (i, j)."""
        _, ho, wo = self.out_shape
        s = self.stride
        return a[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]

    def _unpad(self, dxp):
        p, (_, h, w) = self.padding, self.in_shape
        return dxp[:, :, p:p + h, p:p + w]

    def describe(self):
        return f"{type(self).__name__} {self.k}x{self.k}/{self.stride}" + (" ceil" if self.ceil else "")


class MaxPool2d(_Pool2d):
    """x: (N, C, H, W) -> y: (N, C, Ho, Wo); ties send the gradient to the first maximum."""

    def forward(self, x, train):
        xp = self._pad(x, -np.inf)
        y = self._window(xp, 0, 0).copy()
        arg = np.zeros(y.shape, np.int16)
        for t in range(1, self.k * self.k):
            v = self._window(xp, t // self.k, t % self.k)
            better = v > y
            np.copyto(y, v, where=better)
            arg[better] = t
        if train:
            self.cache.update(arg=arg, xshape=xp.shape)
        return y

    def backward(self, dy):
        arg, xshape = self.cache.pop("arg"), self.cache.pop("xshape")
        dxp = np.zeros(xshape, dy.dtype)
        for t in range(self.k * self.k):
            self._window(dxp, t // self.k, t % self.k)[...] += np.where(arg == t, dy, 0)
        return self._unpad(dxp)


class AvgPool2d(_Pool2d):
    """x: (N, C, H, W) -> y: (N, C, Ho, Wo); padding counts as zeros in the average (PyTorch's
    count_include_pad), so a ceil-mode window reaching past the padding is refused."""

    def build(self, in_shape, rng):
        if self.ceil:
            raise ValueError("average pooling in ceil mode is not supported")
        return super().build(in_shape, rng)

    def forward(self, x, train):
        xp = self._pad(x, 0)
        y = np.zeros((x.shape[0],) + self.out_shape, x.dtype)
        for t in range(self.k * self.k):
            y += self._window(xp, t // self.k, t % self.k)
        y *= 1.0 / (self.k * self.k)
        if train:
            self.cache["xshape"] = xp.shape
        return y

    def backward(self, dy):
        dxp = np.zeros(self.cache.pop("xshape"), dy.dtype)
        share = dy * (1.0 / (self.k * self.k))
        for t in range(self.k * self.k):
            self._window(dxp, t // self.k, t % self.k)[...] += share
        return self._unpad(dxp)


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
