"""The layer template every op follows (after Caffe): settings in __init__, parameters in build,
forward keeps in `cache` only what backward needs, backward *adds* into `grads` (`add_grad`) and
returns dx."""

import numpy as np


class Layer:
    """Base class. Shapes exclude the batch axis in build(); arrays include it in forward()."""

    sums_gradient_parts = False  # True: backward also takes a list of parts to sum (Net's forks)

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.cache: dict = {}
        self.in_shape: tuple | None = None
        self.out_shape: tuple | None = None
        self.unset_grads: set[str] = set()  # gradients that read as zero but hold old values

    def build(self, in_shape, rng) -> tuple:
        """Create parameters for an input of shape in_shape (no batch axis); return out_shape."""
        self.in_shape = self.out_shape = tuple(in_shape)
        return self.out_shape

    def forward(self, x, train):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def zero_grad(self):
        """Zero the gradients in place (optimizers hold references to these arrays)."""
        self.unset_grads = set()
        for k, p in self.params.items():
            g = self.grads.get(k)
            if g is not None and g.shape == p.shape and g.dtype == p.dtype:
                g.fill(0)
            else:
                self.grads[k] = np.zeros_like(p)

    def unset_grad(self):
        """zero_grad without writing the arrays: each is marked, the next `add_grad` stores into it
        and `settle_grads` zeroes those still marked. A training step then makes one pass over
        each gradient where zeroing and adding made three (about 100 MB each at ResNet-50, as
        PyTorch's autograd stores a gradient its zero_grad set to None). Until settled, a marked
        array still holds its old values: only Net, which settles after every backward, uses it."""
        for k, p in self.params.items():
            g = self.grads.get(k)
            if g is None or g.shape != p.shape or g.dtype != p.dtype:
                self.grads[k] = np.zeros_like(p)
            else:
                self.unset_grads.add(k)

    def add_grad(self, key, value):
        """grads[key] += value, or grads[key] = 0 + value (the same bits, -0.0 made +0.0 as the
        addition to zero makes it) when it is unset, without reading the old values."""
        if key in self.unset_grads:
            np.add(value, 0, out=self.grads[key])
            self.unset_grads.discard(key)
        else:
            self.grads[key] += value

    def grad_target(self, key):
        """grads[key] to be written, not added to, when it is unset (then no longer marked);
        else None, and the caller adds with add_grad."""
        if key not in self.unset_grads:
            return None
        self.unset_grads.discard(key)
        return self.grads[key]

    def settle_grads(self):
        """Zero the gradients still unset (a layer whose backward did not run)."""
        for k in self.unset_grads:
            self.grads[k].fill(0)
        self.unset_grads = set()

    def macs(self) -> int:
        """Multiply-accumulates for one image."""
        return 0

    def astype(self, dtype):
        """Cast parameters and buffers (float64 for gradient checks)."""
        for store in (self.params, self.buffers):
            for k in store:
                store[k] = store[k].astype(dtype)
        self.zero_grad()

    def describe(self) -> str:
        return type(self).__name__


def sum_gradients(parts):
    """The sum of a node's gradient parts (one per reader of its output), left to right (NumPy's
    additions, into new arrays: a part may be another node's gradient too, as Add hands one
    array to both inputs); a single part is returned as it is."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
