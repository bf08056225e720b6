"""Fully connected layer and the Flatten that feeds it; its products run on Numba's threads
(npdc.kernels.matmul)."""

import numpy as np

from npdc.engine.layers.base import Layer
from npdc.kernels.matmul import matmul


class Flatten(Layer):
    """x: (N, C, H, W) -> y: (N, C*H*W), a view."""

    def build(self, in_shape, rng):
        self.in_shape, self.out_shape = tuple(in_shape), (int(np.prod(in_shape)),)
        return self.out_shape

    def forward(self, x, train):
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape((dy.shape[0],) + self.in_shape)


class Linear(Layer):
    """x: (N, F) -> y: (N, O) = x W^T + b; W: (O, F), b: (O,)."""

    def __init__(self, out_features, bias=True):
        super().__init__()
        self.out_features, self.bias = int(out_features), bias

    def build(self, in_shape, rng):
        (f,) = in_shape
        bound = np.sqrt(1.0 / f)
        self.params["W"] = rng.uniform(-bound, bound, (self.out_features, f)).astype(np.float32)
        if self.bias:
            self.params["b"] = np.zeros(self.out_features, np.float32)
        self.zero_grad()
        self.in_shape, self.out_shape = (f,), (self.out_features,)
        return self.out_shape

    def forward(self, x, train):
        y = matmul(x, self.params["W"].T)
        if self.bias:
            y += self.params["b"]
        if train:
            self.cache["x"] = x
        return y

    def backward(self, dy):
        x = self.cache.pop("x")
        into = self.grad_target("W")
        if into is None:
            self.add_grad("W", matmul(dy.T, x))
        else:
            matmul(dy.T, x, into)
        if self.bias:
            self.add_grad("b", dy.sum(axis=0))
        return matmul(dy, self.params["W"])

    def macs(self):
        return self.params["W"].size
