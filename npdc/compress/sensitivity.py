"""Per-layer sensitivity analysis (Han et al. 2015, "Learning both Weights and Connections"):
prune one layer alone at a sweep of thresholds s (or sparsities), evaluate, restore; the curves
show which layers tolerate pruning and suggest a per-layer s for an accuracy budget.
"""

from npdc.compress.prune import layer_granularity, percentage_mask, prunable_layers, threshold_mask
from npdc.engine.train import evaluate
from npdc.progress import progress_bar

DEFAULT_S = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
DEFAULT_SPARSITY = (30.0, 50.0, 70.0, 80.0, 90.0, 95.0)


def sweep(net, x, y, values=None, by="s", layers=None, granularity="element", batch_size=256,
          progress=True):
    """{"baseline": {...}, "by": by, "layers": {name: [{"value", "sparsity", "accuracy", "loss"}]}}

    Evaluation runs the engine's kernels on every core; each layer's weights are restored after
    its sweep, so the net is unchanged on return.
    """
    values = tuple(values or (DEFAULT_S if by == "s" else DEFAULT_SPARSITY))
    layers = list(layers or prunable_layers(net))
    result = {"by": by, "baseline": evaluate(net, x, y, batch_size), "layers": {}}
    bar = progress_bar(total=len(layers) * len(values), desc="sensitivity", unit="eval", enabled=progress)
    for name in layers:
        W = net.layers[name].params["W"]
        original = W.copy()
        g = layer_granularity(net, name, granularity)
        rows = []
        for v in values:
            keep = threshold_mask(original, v, g) if by == "s" else percentage_mask(original, v, g)
            W[...] = original * keep
            r = evaluate(net, x, y, batch_size)
            rows.append({"value": v, "sparsity": 1.0 - keep.mean(), **r})
            bar.update()
            bar.set_postfix(layer=name)
        W[...] = original
        result["layers"][name] = rows
    bar.close()
    return result


def suggest(result, budget):
    """Per layer, the largest swept value whose accuracy stays within `budget` (a fraction, e.g.
    0.005) of the baseline; 0 when none does."""
    floor = result["baseline"]["accuracy"] - budget
    return {name: max([r["value"] for r in rows if r["accuracy"] >= floor], default=0.0)
            for name, rows in result["layers"].items()}


def format_table(result):
    """Layers as rows, swept values as columns, accuracy in the cells."""
    layers = result["layers"]
    values = [r["value"] for r in next(iter(layers.values()))] if layers else []
    head = ["layer"] + [f"{result['by']}={v:g}" for v in values]
    rows = [[name] + [f"{r['accuracy']:.4f}" for r in rs] for name, rs in layers.items()]
    widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [head] + rows]
    lines.append(f"baseline accuracy {result['baseline']['accuracy']:.4f}")
    return "\n".join(lines)


def curves_of(result):
    """A sweep's result as {layer: (sparsities, accuracies)}, each starting at the unpruned
    layer (sparsity 0, the baseline accuracy)."""
    base = result["baseline"]["accuracy"]
    return {name: ([0.0] + [r["sparsity"] for r in rows], [base] + [r["accuracy"] for r in rows])
            for name, rows in result["layers"].items()}
