"""Pruning criteria: pure functions from a weight tensor to a keep-mask.

Threshold pruning follows Han et al. 2015, "Learning both Weights and Connections for Efficient
Neural Networks": a weight survives when |w| >= std(W) * s, with a per-layer quality parameter s
(the most sensitive layer, the first conv, gets the smallest). Percentage pruning removes the
smallest p % of a layer by magnitude.

Granularities follow Mao et al. 2017, "Exploring the Regularity of Sparse Structure in
Convolutional Neural Networks": for a conv weight W: (O, C, kh, kw) a group is one element,
a vector (one kernel row W[o, c, i, :]), a kernel (W[o, c]) or a filter (W[o]). A Linear weight
(O, F) is treated as (O, F, 1, 1), so its vectors and kernels are single weights and its filters
are output rows. Departure from the paper: a group's saliency is its L1 or L2 norm *divided by
the norm of an all-ones group of that size* (mean |w|, or RMS), so it lives on the scale of one
weight and the same std(W) * s threshold applies to every granularity.
"""

import numpy as np

from npdc.compress.thin import filter_bn_masks
from npdc.engine.layers import Conv2d, Linear
from npdc.errors import UserError

GRANULARITIES = ("element", "vector", "kernel", "filter")


def _as4d(W):
    if W.ndim == 4:
        return W
    if W.ndim == 2:
        return W[:, :, None, None]
    raise ValueError(f"cannot prune a weight of shape {W.shape}")


def _group_axes(granularity):
    """Axes of the 4-D weight reduced into one saliency per group."""
    try:
        return {"element": (), "vector": (3,), "kernel": (2, 3), "filter": (1, 2, 3)}[granularity]
    except KeyError:
        raise UserError(f"unknown granularity {granularity!r}; known: {', '.join(GRANULARITIES)}") from None


def saliency(W, granularity="element", norm="l1"):
    """Per-group saliency on the scale of one weight; keepdims shape, broadcastable to W (4-D)."""
    W4 = np.abs(_as4d(W)).astype(np.float64)
    axes = _group_axes(granularity)
    if not axes:
        return W4
    if norm == "l1":
        return W4.mean(axis=axes, keepdims=True)
    if norm == "l2":
        return np.sqrt((W4 ** 2).mean(axis=axes, keepdims=True))
    raise UserError(f"unknown norm {norm!r}; use l1 or l2")


def _expand(keep_groups, W):
    return np.broadcast_to(keep_groups, _as4d(W).shape).reshape(W.shape).copy()


def threshold_mask(W, s, granularity="element", norm="l1"):
    """Keep-mask of the groups whose saliency is >= std(W) * s (s = 0 keeps everything)."""
    threshold = float(np.std(W.astype(np.float64))) * s
    return _expand(saliency(W, granularity, norm) >= threshold, W)


def _check_percent(percent):
    if not 0 <= percent <= 100:
        raise UserError(f"sparsity must be between 0 and 100 %, not {percent}")


def percentage_mask(W, percent, granularity="element", norm="l1"):
    """Keep-mask without the `percent` % of groups of smallest saliency (ties broken by position,
    so exactly floor(percent/100 * groups) groups go)."""
    _check_percent(percent)
    sal = saliency(W, granularity, norm)
    flat = sal.reshape(-1)
    n_drop = int(np.floor(flat.size * percent / 100.0))
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:n_drop]] = False
    return _expand(keep.reshape(sal.shape), W)


def parse_layer_s(text):
    """'conv1=0,fc5=2x' -> {'conv1': (0.0, False), 'fc5': (2.0, True)}: (value, is_multiple)."""
    overrides = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"layer override {item!r} is not NAME=VALUE or NAME=Kx")
        value = value.strip()
        multiple = value.lower().endswith("x")
        try:
            number = float(value[:-1] if multiple else value)
        except ValueError:
            raise UserError(f"layer override {item!r}: {value!r} is not a number or a multiple") from None
        if not number >= 0 or number == float("inf"):  # also refuses NaN
            raise UserError(f"layer override {item!r}: the value must be a finite number >= 0")
        overrides[name.strip()] = (number, multiple)
    return overrides


def layer_s(name, s, overrides):
    """The sensitivity used for layer `name`: its override (absolute, or a multiple of s) or s."""
    if name not in overrides:
        return s
    value, multiple = overrides[name]
    return value * s if multiple else value


# -- applying criteria to a net ------------------------------------------------------------------
def prunable_layers(net):
    """Names of the layers whose weight `W` is pruned: every convolution and linear layer."""
    return [name for name, layer, _ in net.nodes if isinstance(layer, (Conv2d, Linear))]


def check_layer_names(net, names):
    known = set(prunable_layers(net))
    for name in names:
        if name not in known:
            raise UserError(f"no prunable layer {name!r}; prunable: {', '.join(sorted(known))}")


def layer_granularity(net, name, granularity):
    """Structured granularities apply to convolutions; linear layers are pruned element-wise
    (a "filter" of the classifier would be a whole class)."""
    return granularity if isinstance(net.layers[name], Conv2d) else "element"


def threshold_masks(net, s, overrides=None, granularity="element", norm="l1"):
    """{path: keep-mask} for every prunable layer, threshold std(W) * s_layer."""
    if not s >= 0:
        raise UserError(f"the threshold multiplier s must be >= 0, not {s}")
    overrides = overrides or {}
    check_layer_names(net, overrides)
    return {f"{name}.W": threshold_mask(net.layers[name].params["W"], layer_s(name, s, overrides),
                                        layer_granularity(net, name, granularity), norm)
            for name in prunable_layers(net)}


def percentage_masks(net, percent, overrides=None, granularity="element", norm="l1"):
    """{path: keep-mask} pruning `percent` % of each layer (overrides give per-layer percents,
    absolute or as multiples of `percent`)."""
    overrides = overrides or {}
    check_layer_names(net, overrides)
    _check_percent(percent)
    return {f"{name}.W": percentage_mask(net.layers[name].params["W"],
                                         min(100.0, layer_s(name, percent, overrides)),
                                         layer_granularity(net, name, granularity), norm)
            for name in prunable_layers(net)}


def global_percentage_masks(net, percent, exclude=(), granularity="element", norm="l1"):
    """Prune `percent` % of all prunable weights together (one magnitude cut across layers);
    layers in `exclude` stay dense and do not count."""
    _check_percent(percent)
    check_layer_names(net, exclude)
    names = [n for n in prunable_layers(net) if n not in set(exclude)]
    sal = {n: saliency(net.layers[n].params["W"], layer_granularity(net, n, granularity), norm)
           for n in names}
    sizes = {n: net.layers[n].params["W"].size // sal[n].size for n in names}
    every = np.concatenate([np.repeat(sal[n].reshape(-1), sizes[n]) for n in names]) if names else np.zeros(0)
    n_drop = int(np.floor(every.size * percent / 100.0))
    cut = np.partition(every, n_drop - 1)[n_drop - 1] if n_drop else -np.inf
    masks = {f"{n}.W": _expand(sal[n] > cut, net.layers[n].params["W"]) for n in names}
    for n in exclude:
        masks[f"{n}.W"] = np.ones(net.layers[n].params["W"].shape, bool)
    return masks


def apply_masks(net, masks):
    """Zero the pruned weights in place."""
    params = net.params()
    for path, keep in masks.items():
        params[path] *= keep


def sparsity_table(net, masks=None):
    """Per prunable layer: weights, non-zeros and sparsity (from masks, else from exact zeros)."""
    rows = []
    for name in prunable_layers(net):
        W = net.layers[name].params["W"]
        nonzero = int(masks[f"{name}.W"].sum()) if masks and f"{name}.W" in masks else int(np.count_nonzero(W))
        rows.append({"layer": name, "weights": int(W.size), "nonzero": nonzero,
                     "sparsity": 1.0 - nonzero / W.size})
    total = sum(r["weights"] for r in rows)
    nonzero = sum(r["nonzero"] for r in rows)
    return rows, {"weights": total, "nonzero": nonzero, "sparsity": 1.0 - nonzero / max(total, 1)}


def masks_from_zeros(net):
    """Keep-masks that preserve the current zero pattern (to retrain an already pruned model)."""
    return {f"{n}.W": net.layers[n].params["W"] != 0 for n in prunable_layers(net)}


def filter_masks_complete(net, masks):
    """With filter granularity, also mask the BN entries of removed filters (npdc.compress.thin),
    so the masked model computes exactly what the thinned one will."""
    return {**masks, **filter_bn_masks(net, masks)}
