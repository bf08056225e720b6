"""Gradual pruning on the schedule of Zhu & Gupta 2017, "To prune, or not to prune":

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3,   t in {t0, t0 + dt, ..., t0 + n*dt}

Pruning happens every dt optimizer steps from t0 on, fast at first and slowly near the end, while
the network retrains between the steps. Each pruning step is magnitude (percentage) pruning of
the current weights, so weights already pruned (zero) stay pruned and the masks only grow.
"""

from npdc.compress.prune import filter_masks_complete, global_percentage_masks, percentage_masks
from npdc.errors import UserError


def agp_sparsity(t, s_i, s_f, t0, n, dt):
    """Target sparsity (a fraction) at optimizer step t; s_i before t0, s_f from t0 + n*dt on."""
    if t <= t0:
        return s_i
    progress = (t - t0) / (n * dt)
    if progress >= 1.0:
        return s_f
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


class GradualPruner:
    """A hook for npdc.engine.train.fit: at each pruning step, recompute the masks.

    target: final sparsity in [0, 1); per_layer=True prunes every layer to the schedule's
    sparsity (layers in `exclude`, e.g. conv1, stay dense); per_layer=False cuts one global
    magnitude threshold across layers to reach it overall.
    """

    def __init__(self, net, target, total_steps, initial=0.0, start=0, interval=None,
                 per_layer=True, exclude=(), granularity="element"):
        if not 0 <= initial <= target < 1:
            raise UserError(f"AGP needs 0 <= initial <= target < 1, got {initial} and {target}")
        self.net, self.target, self.initial = net, target, initial
        self.start = start
        span = max(1, total_steps - start)
        # about 20 pruning steps, ending before the last tenth of retraining so it can recover
        self.interval = interval or max(1, int(0.9 * span) // 20)
        if self.interval > span:
            raise UserError(f"pruning interval {self.interval} is longer than the {span} steps of retraining")
        self.n = max(1, int(0.9 * span) // self.interval)
        self.per_layer, self.exclude, self.granularity = per_layer, tuple(exclude), granularity

    def sparsity_at(self, t):
        return agp_sparsity(t, self.initial, self.target, self.start, self.n, self.interval)

    def is_pruning_step(self, t):
        return t >= self.start and (t - self.start) % self.interval == 0 and \
            (t - self.start) // self.interval <= self.n

    def masks_at(self, t):
        percent = 100.0 * self.sparsity_at(t)
        if self.per_layer:
            overrides = {name: (0.0, False) for name in self.exclude}
            masks = percentage_masks(self.net, percent, overrides, self.granularity)
        else:
            masks = global_percentage_masks(self.net, percent, self.exclude, self.granularity)
        return filter_masks_complete(self.net, masks) if self.granularity == "filter" else masks

    def __call__(self, t, optimizer):
        """fit's step hook: prune on schedule; the optimizer masks weight, grad and momentum."""
        if self.is_pruning_step(t):
            optimizer.masks.update(self.masks_at(t))
            optimizer.apply_masks()


class LayerwisePruner(GradualPruner):
    """AGP with a final sparsity of its own for each layer, as an allocation over sensitivity
    curves chooses them (npdc.compress.allocate): layer l goes from `initial[l]` (its sparsity
    when retraining starts, 0 by default) to `targets[l]` on the cubic schedule above; layers not
    in `targets` keep their weights. Fractions in [0, 1)."""

    def __init__(self, net, targets, total_steps, initial=None, granularity="element"):
        initial = dict(initial or {})
        for name, target in targets.items():
            if not 0 <= initial.get(name, 0.0) <= target < 1:
                raise UserError(f"{name}: AGP needs 0 <= initial <= target < 1, got "
                                f"{initial.get(name, 0.0)} and {target}")
        super().__init__(net, 0.0, total_steps, granularity=granularity)
        self.targets, self.initials = dict(targets), initial

    def masks_at(self, t):
        percents = {name: (100.0 * agp_sparsity(t, self.initials.get(name, 0.0), target, self.start,
                                                self.n, self.interval), False)
                    for name, target in self.targets.items()}
        masks = percentage_masks(self.net, 0.0, percents, self.granularity)
        masks = {path: keep for path, keep in masks.items() if path[:-2] in self.targets}
        return filter_masks_complete(self.net, masks) if self.granularity == "filter" else masks
