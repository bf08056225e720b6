"""SGD with momentum, Nesterov and weight decay; step and cosine learning-rate schedules.

Masks (bool arrays keyed by parameter path, True = kept) are applied to the weight, its gradient
and its momentum buffer at every step, so a pruned weight cannot come back through momentum.
"""

import math

import numpy as np

from npdc.kernels.sgd import sgd_update


class SGD:
    def __init__(self, params, grads, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                 masks=None):
        """params, grads: dicts keyed by path (Net.params(), Net.grads()), updated in place.
        Weight decay applies to conv and linear weights (paths ending in `.W`) only."""
        self.params, self.grads = params, grads
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.masks = {} if masks is None else masks  # shared: gradual pruning adds to it
        self.velocity = {k: np.zeros_like(p) for k, p in params.items()}
        self.apply_masks()

    def apply_masks(self):
        for path, keep in self.masks.items():
            for store in (self.params, self.grads, self.velocity):
                store[path] *= keep

    def step(self):
        for path, p in self.params.items():
            g = self.grads[path]
            if path in self.masks:
                g *= self.masks[path]
            v = self.velocity[path]
            t = p.dtype.type
            flat = [np.ascontiguousarray(a, dtype=p.dtype).reshape(-1) for a in (p, g, v)]
            sgd_update(*flat, t(self.lr), t(self.momentum), t(self.weight_decay),
                       bool(self.weight_decay) and path.endswith(".W"), self.nesterov)
            for a, f in ((p, flat[0]), (v, flat[2])):
                if not np.may_share_memory(a, f):  # a copy was updated (a non-contiguous array)
                    a[...] = f.reshape(a.shape)
            if path in self.masks:
                p *= self.masks[path]
                v *= self.masks[path]


def step_lr(base, progress, milestones=(0.5, 0.75), gamma=0.1):
    """Step decay: base times gamma for each milestone (a fraction of training) passed."""
    return base * gamma ** sum(progress >= m for m in milestones)


def cosine_lr(base, progress, floor=0.0):
    """Cosine annealing from base to floor over progress in [0, 1]."""
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


SCHEDULES = {"step": step_lr, "cosine": cosine_lr}
