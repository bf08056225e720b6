"""Per-layer pruning levels from sensitivity curves: the most weights removed for a predicted
accuracy drop.

Each prunable layer l has a curve of (sparsity level, accuracy drop) measured by pruning it alone
(npdc.compress.sensitivity). Assuming the drops of different layers add up, choosing one level per
layer to remove the most weights within a total drop is a multiple-choice knapsack (Sinha & Zoltners
1979, "The Multiple-Choice Knapsack Problem"). An accuracy measured on n images moves in steps of
1/n, so the drops are whole numbers of images and the knapsack is solved exactly by dynamic
programming over the budget in images, not by the Lagrangian relaxation usually used for rate
allocation (Shoham & Gersho 1988), which reaches only the points on the convex hull of the curves.

Drops are made non-decreasing along each curve (a level may not be predicted to hurt less than a
lower one; the measured curves are noisy) and negative drops count as zero.
"""

import numpy as np

from npdc.errors import UserError


def drop_units(accuracies, baseline, images):
    """Accuracy drops as whole numbers of images (rounded), non-decreasing, never negative."""
    units = np.rint((baseline - np.asarray(accuracies, np.float64)) * images).astype(np.int64)
    return np.maximum.accumulate(np.maximum(units, 0))


def _table(curves, sizes, budget):
    """The knapsack's dynamic programme: best[b], the most weights removed with a total drop of
    exactly b (-1: not reachable), and per layer the level chosen at each b."""
    budget = int(budget)
    if budget < 0:
        raise UserError(f"the allocation budget must be >= 0, not {budget}")
    NEG = -1.0
    best = np.full(budget + 1, NEG)
    best[0] = 0.0
    choice = []
    for name in curves:
        levels, drops = (np.asarray(a) for a in curves[name])
        if levels.shape != drops.shape or levels.size == 0:
            raise UserError(f"{name}: a curve needs as many drops as levels, and at least one")
        gains = levels * sizes[name]
        new = np.full(budget + 1, NEG)
        pick = np.full(budget + 1, -1)
        for j in range(levels.size):
            d = int(drops[j])
            if d > budget:
                continue
            shifted = np.full(budget + 1, NEG)
            shifted[d:] = np.where(best[:budget + 1 - d] >= 0, best[:budget + 1 - d] + gains[j], NEG)
            better = shifted > new
            new[better], pick[better] = shifted[better], j
        if np.all(new < 0):
            raise UserError(f"{name}: no level of this layer fits the budget of {budget}")
        best = new
        choice.append(pick)
    return best, choice


def _trace(curves, choice, b):
    """The levels chosen, layer by layer, that make up best[b]."""
    result = {}
    for name, pick in zip(reversed(list(curves)), reversed(choice)):
        j = int(pick[b])
        result[name] = j
        b -= int(np.asarray(curves[name][1])[j])
    return dict(reversed(list(result.items())))


def allocate(curves, sizes, budget):
    """{layer: index of the chosen level} maximising the weights removed, sum of drops <= budget.

    curves: {layer: (levels, drops)}, levels as sparsity fractions (ascending, the first usually
    0) and drops as whole numbers (drop_units); sizes: {layer: number of weights}; budget: the
    total drop allowed, a whole number. Ties go to the smaller total drop, then the lower level.
    """
    best, choice = _table(curves, sizes, budget)
    return _trace(curves, choice, int(np.argmax(best)))  # argmax: the smallest drop among equals


def cheapest(curves, sizes, gains):
    """For each wanted gain (weights removed), the allocation that reaches it with the smallest
    total predicted drop, or None when no allocation reaches it: a ladder of ever more
    aggressive allocations, each as cheap as the curves allow."""
    cap = sum(int(np.max(np.asarray(d))) for _, d in curves.values())
    best, choice = _table(curves, sizes, cap)
    reach = np.maximum.accumulate(best)
    out = []
    for gain in gains:
        hits = np.flatnonzero(reach >= gain)
        if hits.size == 0:
            out.append(None)
            continue
        b = int(hits[0])
        out.append(_trace(curves, choice, b))
    return out
