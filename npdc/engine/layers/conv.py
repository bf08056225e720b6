"""2-D convolution layer; the arithmetic lives in npdc.kernels.conv (one entry point).

The layer carries the name of the primitive its plan chose (`primitive`, None for the default
heuristic); `ran` records the one the last forward used, for the speed report."""

import numpy as np

from npdc.engine.layers.base import Layer
from npdc.kernels.conv import check_conv, choose_primitive, conv2d_backward, conv2d_forward
from npdc.kernels.im2col import out_size


class Conv2d(Layer):
    """x: (N, C, H, W) -> y: (N, O, Ho, Wo); W: (O, C/groups, k, k), optional b: (O,)."""

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=False):
        super().__init__()
        self.out_channels, self.k = int(out_channels), int(kernel_size)
        self.stride, self.padding, self.groups, self.bias = int(stride), int(padding), int(groups), bias
        self.primitive = None
        self.ran = None

    def build(self, in_shape, rng):
        c, h, w = in_shape
        W_shape = (self.out_channels, c // self.groups, self.k, self.k)
        check_conv((1, c, h, w), W_shape, self.stride, self.padding, self.groups)
        fan_in = W_shape[1] * self.k * self.k
        self.params["W"] = (rng.standard_normal(W_shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if self.bias:
            self.params["b"] = np.zeros(self.out_channels, np.float32)
        self.zero_grad()
        self.in_shape = tuple(in_shape)
        self.out_shape = (self.out_channels, out_size(h, self.k, self.stride, self.padding),
                          out_size(w, self.k, self.stride, self.padding))
        return self.out_shape

    def forward(self, x, train):
        W = self.params["W"]
        self.ran = choose_primitive(self.primitive, x.shape, W.shape, self.stride, self.padding, self.groups)
        y = conv2d_forward(x, W, self.stride, self.padding, self.groups, primitive=self.ran)
        if self.bias:
            y += self.params["b"][:, None, None]
        if train:
            self.cache["x"] = x
        return y

    def backward(self, dy):
        x = self.cache.pop("x")
        W = self.params["W"]
        name = choose_primitive(self.primitive, x.shape, W.shape, self.stride, self.padding, self.groups)
        dx, dW = conv2d_backward(x, W, dy, self.stride, self.padding, self.groups, primitive=name)
        self.grads["W"] += dW
        if self.bias:
            self.grads["b"] += dy.sum(axis=(0, 2, 3))
        return dx

    def macs(self):
        o, ho, wo = self.out_shape
        return o * ho * wo * self.params["W"][0].size

    def describe(self):
        g = f" g{self.groups}" if self.groups > 1 else ""
        return f"Conv{self.k}x{self.k}/{self.stride} p{self.padding}{g}"
