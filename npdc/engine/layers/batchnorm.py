"""Batch normalisation over (N, H, W) per channel (Ioffe & Szegedy 2015).

Training uses batch statistics and updates running averages (the running variance is the unbiased
batch variance, as most frameworks store it, so imported models match); eval uses the running ones.
With relu=True the layer also applies the ReLU that follows it (Net decides), forward and backward.
"""

import numpy as np

from npdc.engine.layers.base import Layer
from npdc.kernels.batchnorm import bn_backward_train, bn_forward_eval, bn_forward_train


def inference_affine(gamma, beta, mean, var, eps):
    """Eval-mode batch norm as one per-channel affine map y = x * scale + shift (Ioffe & Szegedy
    2015, section 3.1): (scale, shift) as float32, with scale = gamma / sqrt(var + eps) and
    shift = beta - mean * scale worked out in float64 so each is rounded to float32 once. The
    .npdc file stores exactly these values for a folded batch norm (npdc.codec.model), and the
    runtime's plan folds the same map into the layer before it."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return scale.astype(np.float32), shift.astype(np.float32)


class BatchNorm2d(Layer):
    """x: (N, C, H, W) or (N, C) -> y, same shape; params gamma, beta: (C,); buffers
    running_mean, running_var: (C,). A 2-D input is treated as (N, C, 1, 1)."""

    absorbs_relu = True

    def __init__(self, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = float(eps), float(momentum)

    def build(self, in_shape, rng):
        c = in_shape[0]
        self.params = {"gamma": np.ones(c, np.float32), "beta": np.zeros(c, np.float32)}
        self.buffers = {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32)}
        self.zero_grad()
        self.in_shape = self.out_shape = tuple(in_shape)
        return self.out_shape

    def forward(self, x, train, relu=False):
        return self._forward(x.reshape(x.shape[0], x.shape[1], 1, 1) if x.ndim == 2 else x,
                             train, relu).reshape(x.shape)

    def backward(self, dy):
        return self._backward(dy.reshape(dy.shape[0], dy.shape[1], 1, 1) if dy.ndim == 2 else dy
                              ).reshape(dy.shape)

    def _forward(self, x, train, relu):
        gamma, beta = self.params["gamma"], self.params["beta"]
        if train:
            x = np.ascontiguousarray(x)
            c, m = x.shape[1], x.shape[0] * x.shape[2] * x.shape[3]
            y = np.empty_like(x)
            mean, inv = np.empty(c, np.float64), np.empty(c, np.float64)
            bn_forward_train(x, gamma, beta, self.eps, y, mean, inv, relu)
            var = 1.0 / inv**2 - self.eps
            mom = self.momentum
            self.buffers["running_mean"] = ((1 - mom) * self.buffers["running_mean"] + mom * mean).astype(x.dtype)
            unbiased = var * (m / max(m - 1, 1))
            self.buffers["running_var"] = ((1 - mom) * self.buffers["running_var"] + mom * unbiased).astype(x.dtype)
            self.cache.update(x=x, mean=mean, inv=inv, relu=relu)
            return y
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        bn_forward_eval(x, *self._scale_shift(x.dtype), y, relu)
        return y

    def forward_into(self, x, relu=False):
        """Eval-mode forward over x itself (contiguous; the caller no longer needs it)."""
        x4 = x.reshape(x.shape[0], x.shape[1], 1, 1) if x.ndim == 2 else x
        bn_forward_eval(x4, *self._scale_shift(x.dtype), x4, relu)
        return x

    def _scale_shift(self, dtype):
        """The running statistics and affine parameters as one per-channel y = x * scale + shift,
        worked out in float32. Not inference_affine (float64): compress's distillation teacher
        runs in eval mode, so these roundings reach the weights a compress run writes, and
        changing them would change the bytes of every .npdc file compress writes."""
        inv = 1.0 / np.sqrt(self.buffers["running_var"] + self.eps)
        scale = (self.params["gamma"] * inv).astype(dtype)
        return scale, (self.params["beta"] - self.buffers["running_mean"] * scale).astype(dtype)

    def _backward(self, dy):
        x, mean, inv, relu = (self.cache.pop(k) for k in ("x", "mean", "inv", "relu"))
        dx = np.empty_like(x)
        c = x.shape[1]
        dgamma, dbeta = np.empty(c, np.float64), np.empty(c, np.float64)
        bn_backward_train(x, np.ascontiguousarray(dy, dtype=x.dtype), self.params["gamma"], self.params["beta"],
                          mean, inv, dx, dgamma, dbeta, relu)
        self.add_grad("gamma", dgamma.astype(x.dtype))
        self.add_grad("beta", dbeta.astype(x.dtype))
        return dx
