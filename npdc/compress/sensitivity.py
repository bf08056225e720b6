"""Per-layer sensitivity analysis (Han et al. 2015, "Learning both Weights and Connections"):
prune one layer alone at a sweep of thresholds s (or sparsities), evaluate, restore; the curves
show which layers tolerate pruning and suggest a per-layer s for an accuracy budget. Accuracy is
top-1 on labelled images, or whatever a metric of npdc.engine.metrics measures (verification
accuracy on pairs, for a budget search on it).
"""

from npdc.compress.prune import layer_granularity, percentage_mask, prunable_layers, threshold_mask
from npdc.engine.metrics import judged
from npdc.jobs import run_jobs

DEFAULT_S = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
DEFAULT_SPARSITY = (30.0, 50.0, 70.0, 80.0, 90.0, 95.0)


def sweep(net, x=None, y=None, values=None, by="s", layers=None, granularity="element", batch_size=256,
          progress=True, executor=None, shared=None, metric=None):
    """{"baseline": {...}, "by": by, "layers": {name: [{"value", "sparsity", "accuracy", ...}]}}

    Each point is judged by top-1 accuracy (and loss) on images x, labels y, or by `metric`
    (npdc.engine.metrics; x and y are then not read), whose "accuracy" it records.

    Each evaluation (the baseline, then every layer × value) is one job of npdc.jobs.run_jobs on
    `executor` (in-process when None), the net and images shared by all; the results are the
    same on any executor. `shared` replaces (net, x, y) as what the jobs receive, e.g. a
    npdc.jobs.Loaded recipe that builds them from paths on each worker. Each job restores the
    layer it pruned, so the net is unchanged on return.
    """
    values = tuple(values or (DEFAULT_S if by == "s" else DEFAULT_SPARSITY))
    layers = list(layers or prunable_layers(net))
    jobs = [(None, None, by, granularity, batch_size)]
    jobs += [(name, v, by, granularity, batch_size) for name in layers for v in values]
    if shared is None:
        shared = (net, x, y) if metric is None else (net, metric)
    rows = run_jobs(sweep_point, shared, jobs, executor, progress, desc="sensitivity")
    result = {"by": by, "baseline": rows[0], "layers": {}}
    for i, name in enumerate(layers):
        result["layers"][name] = rows[1 + i * len(values):1 + (i + 1) * len(values)]
    return result


def sweep_point(shared, job):
    """One job of a sweep: evaluate the net with layer `name` alone pruned at `value` (the
    unpruned net when name is None), then put the layer's weights back. shared: (net, metric)
    or (net, x, y) for top-1 (npdc.engine.metrics.judged)."""
    name, value, by, granularity, batch_size = job
    net, metric = judged(shared, batch_size)
    if name is None:
        return metric.evaluate(net)
    W = net.layers[name].params["W"]
    original = W.copy()
    g = layer_granularity(net, name, granularity)
    keep = threshold_mask(original, value, g) if by == "s" else percentage_mask(original, value, g)
    try:
        W[...] = original * keep
        return {"value": value, "sparsity": 1.0 - keep.mean(), **metric.evaluate(net)}
    finally:
        W[...] = original


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
