"""2-D convolution layer; the arithmetic lives in npdc.kernels.conv (one entry point).

A dilated convolution (Yu & Koltun 2016, "Multi-Scale Context Aggregation by Dilated
Convolutions") runs as the ordinary convolution of the kernel spread out with zeros between its
taps, so every primitive computes it; its weight gradient is read back at the taps.

The layer carries the name of the primitive its plan chose (`primitive`, None for the default
heuristic); `ran` records the one the last forward used, for the speed report, and `ran_backward`
the last backward's (without a plan it may differ: npdc.kernels.conv.default_backward_primitive)."""

import numpy as np

from npdc.engine.layers.base import Layer
from npdc.kernels.conv import (check_conv, choose_backward_primitive, choose_primitive, conv2d_backward,
                               conv2d_forward)
from npdc.kernels.im2col import out_size


class Conv2d(Layer):
    """x: (N, C, H, W) -> y: (N, O, Ho, Wo); W: (O, C/groups, k, k), optional b: (O,)."""

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=False, dilation=1):
        super().__init__()
        self.out_channels, self.k = int(out_channels), int(kernel_size)
        self.stride, self.padding, self.groups, self.bias = int(stride), int(padding), int(groups), bias
        self.dilation = int(dilation)
        self.span = self.dilation * (self.k - 1) + 1  # the side of the kernel spread out by dilation
        self.primitive = None
        self.ran = None  # the primitives the last forward and backward ran
        self.ran_backward = None

    def build(self, in_shape, rng):
        c, h, w = in_shape
        W_shape = (self.out_channels, c // self.groups, self.k, self.k)
        if self.dilation < 1:
            raise ValueError(f"conv: dilation {self.dilation} must be >= 1")
        check_conv((1, c, h, w), W_shape[:2] + (self.span, self.span), self.stride, self.padding, self.groups)
        fan_in = W_shape[1] * self.k * self.k
        self.params["W"] = (rng.standard_normal(W_shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if self.bias:
            self.params["b"] = np.zeros(self.out_channels, np.float32)
        self.zero_grad()
        self.in_shape = tuple(in_shape)
        self.out_shape = (self.out_channels, out_size(h, self.span, self.stride, self.padding),
                          out_size(w, self.span, self.stride, self.padding))
        return self.out_shape

    def _spread(self):
        """W with dilation - 1 zeros between its taps (W itself without dilation)."""
        W = self.params["W"]
        if self.dilation == 1:
            return W
        out = np.zeros(W.shape[:2] + (self.span, self.span), W.dtype)
        out[:, :, ::self.dilation, ::self.dilation] = W
        return out

    def forward(self, x, train):
        W = self._spread()
        self.ran = choose_primitive(self.primitive, x.shape, W.shape, self.stride, self.padding, self.groups,
                                    inference=not train)
        y = conv2d_forward(x, W, self.stride, self.padding, self.groups, primitive=self.ran, keep=not train)
        if self.bias:
            y += self.params["b"][:, None, None]
        if train:
            self.cache["x"] = x
        return y

    def backward(self, dy, need_dx=True):
        """dx (None without need_dx: the weight gradients only), adding into grads."""
        x = self.cache.pop("x")
        W = self._spread()
        name = choose_backward_primitive(self.primitive, x.shape, W.shape, self.stride, self.padding,
                                         self.groups)
        self.ran_backward = name
        into = self.grad_target("W") if self.dilation == 1 else None
        dx, dW = conv2d_backward(x, W, dy, self.stride, self.padding, self.groups, need_dx=need_dx,
                                 primitive=name, dW_out=into)
        if into is None:
            self.add_grad("W", dW[:, :, ::self.dilation, ::self.dilation])
        if self.bias:
            self.add_grad("b", dy.sum(axis=(0, 2, 3)))
        return dx

    def macs(self):
        o, ho, wo = self.out_shape
        return o * ho * wo * self.params["W"][0].size

    def describe(self):
        g = f" g{self.groups}" if self.groups > 1 else ""
        d = f" d{self.dilation}" if self.dilation > 1 else ""
        return f"Conv{self.k}x{self.k}/{self.stride} p{self.padding}{g}{d}"
