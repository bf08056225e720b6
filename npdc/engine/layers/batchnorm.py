"""Batch normalisation over (N, H, W) per channel (Ioffe & Szegedy 2015).

Training uses batch statistics and updates running averages (the running variance is the unbiased
batch variance, as most frameworks store it, so imported models match); eval uses the running ones.
"""

import numpy as np

from npdc.engine.layers.base import Layer


class BatchNorm2d(Layer):
    """x: (N, C, H, W) -> y, same shape; params gamma, beta: (C,); buffers running_mean/var."""

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

    def forward(self, x, train):
        gamma, beta = self.params["gamma"], self.params["beta"]
        if train:
            m = x.shape[0] * x.shape[2] * x.shape[3]
            mean = x.mean(axis=(0, 2, 3))
            xc = x - mean[:, None, None]
            var = np.einsum("nchw,nchw->c", xc, xc) / m
            inv = 1.0 / np.sqrt(var + self.eps)
            xhat = xc
            xhat *= inv[:, None, None]
            mom = self.momentum
            self.buffers["running_mean"] = ((1 - mom) * self.buffers["running_mean"] + mom * mean).astype(x.dtype)
            unbiased = var * (m / max(m - 1, 1))
            self.buffers["running_var"] = ((1 - mom) * self.buffers["running_var"] + mom * unbiased).astype(x.dtype)
            self.cache.update(xhat=xhat, inv=inv)
            return xhat * gamma[:, None, None] + beta[:, None, None]
        inv = 1.0 / np.sqrt(self.buffers["running_var"] + self.eps)
        scale = (gamma * inv).astype(x.dtype)
        shift = (beta - self.buffers["running_mean"] * scale).astype(x.dtype)
        return x * scale[:, None, None] + shift[:, None, None]

    def backward(self, dy):
        gamma = self.params["gamma"]
        xhat, inv = self.cache.pop("xhat"), self.cache.pop("inv")
        dbeta = dy.sum(axis=(0, 2, 3))
        dgamma = np.einsum("nchw,nchw->c", dy, xhat)
        self.grads["gamma"] += dgamma
        self.grads["beta"] += dbeta
        m = dy.shape[0] * dy.shape[2] * dy.shape[3]
        # dx = gamma*inv/m * (m*dy - sum(dy) - xhat*sum(dy*xhat))
        k = (gamma * inv)[:, None, None]
        dx = xhat * (-dgamma / m)[:, None, None]
        dx += dy
        dx -= (dbeta / m)[:, None, None]
        dx *= k
        return dx
