"""Figures of a compression search as PNG files, drawn with matplotlib (the optional extra
`plots`): each layer's pruning sensitivity curve, and the candidates the search measured
(validation accuracy against how much each keeps) with the budget and the chosen ones marked.
Without matplotlib, `missing()` says how to get it and nothing is drawn.
"""

from npdc.atomic import atomic_path
from npdc.errors import UserError

INSTALL = 'install npdc[plots] for the figures: pip install -e ".[plots]"'


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def missing():
    """The one-line hint when matplotlib is not installed, else None."""
    return None if _pyplot() is not None else INSTALL


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _accuracy_label(metric):
    return "validation verification accuracy (%)" if metric == "verification" else "validation accuracy (%)"


def sensitivity_figure(curves, baseline, path, title="Pruning sensitivity (each layer alone)", metric="accuracy"):
    """curves: {layer: (sparsity fractions, accuracies)}; one line per layer. metric: what the
    accuracies are (npdc.engine.metrics: accuracy or verification)."""
    plt = _pyplot()
    if plt is None:
        raise UserError(INSTALL)
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.cm.tab20.colors
    for i, (name, (levels, accs)) in enumerate(curves.items()):  # 20 colours, then dashed
        ax.plot([100 * v for v in levels], [100 * a for a in accs], marker=".", linewidth=1, label=name,
                color=colours[i % 20], linestyle="-" if i < 20 else "--")
    ax.axhline(100 * baseline, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel("sparsity of the layer (%)")
    ax.set_ylabel(_accuracy_label(metric))
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2 if len(curves) > 12 else 1, loc="lower left")
    _save(fig, path)
    plt.close(fig)


def candidates_figure(search, path):
    """Left: the pruning steps, validation accuracy against the weights kept; right: the bit-width
    candidates against their mean bits. Dotted: the baseline; dashed: the floor each had to
    stay above (a step's share of the budget, then the whole budget less the margin); the kept
    ones filled."""
    plt = _pyplot()
    if plt is None:
        raise UserError(INSTALL)
    before, cfg = search["val_accuracy_before"], search.get("settings", {})
    budget = float(cfg.get("max_drop", 0))
    floors = (100 * before - float(cfg.get("prune_share", 1)) * budget,   # what a step may lose
              100 * before - (1 - float(cfg.get("margin", 0))) * budget)  # what the whole may lose
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    steps = search["prune"]["climb"].get("tried", [])
    for t in steps:
        left.plot(100 * (1 - t["sparsity"]), 100 * t["val_accuracy"], "o",
                  color="tab:green" if t["passed"] else "tab:red", fillstyle="full" if t["passed"] else "none")
    left.set_xscale("log")
    left.set_xlabel("weights kept (%, log scale)")
    left.set_ylabel(_accuracy_label(search.get("metric")))
    left.set_title("pruning steps")
    bits = search["bits"]
    for t in bits.get("tried", []):
        chosen = t["candidate"] == bits.get("chosen")
        right.plot(t["mean_bits"], 100 * t["val_accuracy"], "*" if chosen else "o", markersize=12 if chosen else 6,
                   color="tab:green" if t["passed"] else "tab:red", fillstyle="full" if t["passed"] else "none")
    right.set_xlabel("mean bits per kept weight")
    right.set_title("bit-width candidates (star: chosen)")
    for ax, floor in zip((left, right), floors):
        ax.axhline(100 * before, color="black", linewidth=0.8, linestyle=":")
        ax.axhline(floor, color="tab:red", linewidth=0.8, linestyle="--")
    _save(fig, path)
    plt.close(fig)


def search_figures(search, folder):
    """Draw both figures of a search into `folder`; {file name: caption}, or {} without matplotlib."""
    if _pyplot() is None:
        return {}
    curves = search["prune"]["curves"]
    sensitivity_figure(curves, next(iter(curves.values()))[1][0], folder / "sensitivity.png",
                       metric=search.get("metric", "accuracy"))
    candidates_figure(search, folder / "candidates.png")
    return {"sensitivity.png": "each layer's pruning sensitivity",
            "candidates.png": "the candidates measured on validation images"}
