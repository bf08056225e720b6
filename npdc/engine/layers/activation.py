"""ReLU and PReLU (He et al. 2015, "Delving Deep into Rectifiers": one learned slope per channel)."""

import numpy as np

from npdc.engine.layers.base import Layer
from npdc.kernels.activation import clip_backward, clip_forward, relu_backward, relu_forward


class ReLU(Layer):
    """y = max(x, 0), any shape."""

    def forward(self, x, train):
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        relu_forward(x.reshape(-1), y.reshape(-1))
        if train:
            self.cache["y"] = y
        return y

    def forward_into(self, x):
        """Eval-mode forward over x itself (contiguous; the caller no longer needs it)."""
        relu_forward(x.reshape(-1), x.reshape(-1))
        return x

    def backward(self, dy):
        y = self.cache.pop("y")
        dx = np.empty_like(y)
        relu_backward(np.ascontiguousarray(dy, dtype=y.dtype).reshape(-1), y.reshape(-1), dx.reshape(-1))
        return dx


def _channel_view(a, x):
    """Broadcast a per-channel vector against x: (N, C) or (N, C, H, W)."""
    return a.reshape((1, -1) + (1,) * (x.ndim - 2))


class PReLU(Layer):
    """y = x for x > 0, slope[c] * x otherwise; x: (N, C) or (N, C, H, W)."""

    def __init__(self, init=0.25):
        super().__init__()
        self.init = float(init)

    def build(self, in_shape, rng):
        self.params["slope"] = np.full(in_shape[0], self.init, np.float32)
        self.zero_grad()
        self.in_shape = self.out_shape = tuple(in_shape)
        return self.out_shape

    def forward(self, x, train):
        a = _channel_view(self.params["slope"], x)
        y = np.where(x > 0, x, x * a)
        if train:
            self.cache["x"] = x
        return y

    def backward(self, dy):
        x = self.cache.pop("x")
        neg = x <= 0
        axes = (0,) + tuple(range(2, x.ndim))
        self.add_grad("slope", (dy * x * neg).sum(axis=axes))
        return np.where(neg, dy * _channel_view(self.params["slope"], x), dy)


class Clip(Layer):
    """y = min(max(x, lo), hi), any shape; ReLU6 is Clip(0, 6) (Sandler et al. 2018, MobileNetV2).
    The gradient passes where lo < x < hi."""

    def __init__(self, lo=0.0, hi=6.0):
        super().__init__()
        self.lo, self.hi = float(lo), float(hi)
        if not self.lo < self.hi:
            raise ValueError(f"clip needs lo < hi, not {self.lo} and {self.hi}")

    def _bounds(self, x):
        return x.dtype.type(self.lo), x.dtype.type(self.hi)

    def forward(self, x, train):
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        clip_forward(x.reshape(-1), *self._bounds(x), y.reshape(-1))
        if train:
            self.cache["y"] = y  # lo < y < hi exactly where lo < x < hi, and the next layer keeps y
        return y

    def forward_into(self, x):
        """Eval-mode forward over x itself (contiguous; the caller no longer needs it)."""
        clip_forward(x.reshape(-1), *self._bounds(x), x.reshape(-1))
        return x

    def backward(self, dy):
        y = self.cache.pop("y")
        dx = np.empty_like(y)
        clip_backward(np.ascontiguousarray(dy, dtype=y.dtype).reshape(-1), y.reshape(-1), *self._bounds(y),
                      dx.reshape(-1))
        return dx

    def describe(self):
        return f"Clip [{self.lo:g}, {self.hi:g}]"
