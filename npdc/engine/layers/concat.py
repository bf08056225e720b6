"""Concatenation along channels (the fire modules of Iandola et al. 2016, "SqueezeNet") and
dropout, which at inference and in npdc's training is the identity."""

import numpy as np

from npdc.engine.layers.base import Layer


class Concat(Layer):
    """Inputs (N, C_i, ...) of equal trailing shape -> (N, sum C_i, ...); backward splits dy."""

    def build(self, in_shapes, rng):
        shapes = [tuple(s) for s in in_shapes]
        if len(shapes) < 2 or any(s[1:] != shapes[0][1:] for s in shapes):
            raise ValueError(f"concat of shapes {shapes}: all but the channels must agree")
        self.sizes = [s[0] for s in shapes]
        self.in_shape, self.out_shape = shapes, (sum(self.sizes),) + shapes[0][1:]
        return self.out_shape

    def forward(self, xs, train):
        return np.concatenate(xs, axis=1)

    def backward(self, dy):
        cuts = np.cumsum(self.sizes)[:-1]
        return [np.ascontiguousarray(part) for part in np.split(dy, cuts, axis=1)]


class Dropout(Layer):
    """The identity: dropout is off at inference, and npdc keeps it off when fine-tuning imported
    models too (the pruned-and-retrained nets of Han et al. 2015 are retrained with a reduced
    dropout rate; npdc uses none). `p` is kept only so the model records what the source had."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = float(p)

    def forward(self, x, train):
        return x

    def backward(self, dy):
        return dy
