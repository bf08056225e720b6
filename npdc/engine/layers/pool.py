"""Max, average and global-average pooling.

Windows are visited one kernel offset (i, j) at a time, each a strided slice of the padded input,
so k*k whole-array numpy operations do the work and no index arrays are built.
"""

import numpy as np

from npdc.engine.layers.base import Layer
from npdc.kernels.im2col import out_size


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.k = int(kernel_size)
        self.stride = int(stride) if stride is not None else self.k
        self.padding = int(padding)

    def build(self, in_shape, rng):
        c, h, w = in_shape
        ho, wo = out_size(h, self.k, self.stride, self.padding), out_size(w, self.k, self.stride, self.padding)
        if ho < 1 or wo < 1 or self.padding > self.k // 2:
            raise ValueError(f"pool {self.k}x{self.k} pad {self.padding} does not fit {h}x{w}")
        self.in_shape, self.out_shape = tuple(in_shape), (c, ho, wo)
        return self.out_shape

    def _pad(self, x, fill):
        p = self.padding
        if p == 0:
            return x
        return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)

    def _window(self, a, i, j):
        """The (N, C, Ho, Wo) slice of padded `a` under kernel offset (i, j)."""
        _, ho, wo = self.out_shape
        s = self.stride
        return a[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]

    def _unpad(self, dxp):
        p = self.padding
        return dxp[:, :, p:dxp.shape[2] - p, p:dxp.shape[3] - p] if p else dxp

    def describe(self):
        return f"{type(self).__name__} {self.k}x{self.k}/{self.stride}"


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
    """x: (N, C, H, W) -> y: (N, C, Ho, Wo); padding counts as zeros in the average."""

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
