"""A net's convolution plan: which primitive each conv layer runs ({layer name: primitive}).

`tune_net` times every legal primitive at each conv layer's shape (npdc.engine.conv_select, cached
on disk) and solves the per-layer choice exactly, with layout-conversion costs on the edges between
convs that feed each other through BN / ReLU / add nodes: a chain by dynamic programming, a
residual DAG as a PBQP (Anderson & Gregg 2017). The plan is stored in the model file.
"""

import numpy as np

from npdc.engine.layers import Conv2d
from npdc.errors import UserError
from npdc.kernels.conv import PRIMITIVES
from npdc.engine.conv_select import layer_timings, layout_cost, solve_chain, solve_pbqp


def conv_layers(net):
    """[(name, layer)] of the convolutions, in net order."""
    return [(n, layer) for n, layer, _ in net.nodes if isinstance(layer, Conv2d)]


def conv_edges(net):
    """[(u, v)]: conv u's output reaches conv v through non-conv nodes only."""
    inputs = {n: ins for n, _, ins in net.nodes}
    convs = {n for n, _ in conv_layers(net)}
    edges = []
    for v in convs:
        stack, seen = list(inputs[v]), set()
        while stack:
            u = stack.pop()
            if u in seen or u not in inputs:
                continue
            seen.add(u)
            if u in convs:
                edges.append((u, v))
            else:
                stack.extend(inputs[u])
    return sorted(edges)


def tune_net(net, batch_size=128, mode="train", cache=True):
    """(plan, timings): the cheapest primitive per conv layer and {layer: {primitive: s}}."""
    layers = conv_layers(net)
    if not layers:
        return {}, {}
    timings, options = {}, {}
    for name, layer in layers:
        x_shape = (batch_size,) + tuple(layer.in_shape)
        W_shape = layer.params["W"].shape
        timings[name] = layer_timings(x_shape, W_shape, layer.stride, layer.padding, layer.groups,
                                      layer.params["W"].dtype, mode, cache)
        options[name] = list(timings[name])
    costs = {n: np.array([timings[n][p] for p in options[n]]) for n in options}
    edges = {}
    for u, v in conv_edges(net):
        shape = (batch_size,) + tuple(net.layers[v].in_shape)
        layouts_u = [PRIMITIVES[p].layout for p in options[u]]
        layouts_v = [PRIMITIVES[p].layout for p in options[v]]
        cost_of = {(a, b): layout_cost(shape, a, b) for a in set(layouts_u) for b in set(layouts_v)}
        edges[(u, v)] = np.array([[cost_of[(a, b)] for b in layouts_v] for a in layouts_u])
    names = [n for n, _ in layers]
    chain = all((names[i], names[i + 1]) in edges for i in range(len(names) - 1)) and \
        len(edges) == len(names) - 1
    if chain:
        picks, _ = solve_chain([costs[n] for n in names], [edges[(a, b)] for a, b in zip(names, names[1:])])
        choice = dict(zip(names, picks))
    else:
        choice, _ = solve_pbqp(costs, edges)
    return {n: options[n][choice[n]] for n in names}, timings


def apply_plan(net, plan):
    """Set each conv layer's primitive from `plan`; an unknown layer or primitive is a UserError."""
    convs = dict(conv_layers(net))
    for name, prim in plan.items():
        if not isinstance(prim, str):
            raise UserError(f"conv plan: the entry for {str(name)[:40]} is a {type(prim).__name__}, not a primitive's name")
        if name not in convs:
            raise UserError(f"conv plan names {name!r}, which is not a conv layer of this net")
        if prim not in PRIMITIVES:
            raise UserError(f"conv plan: unknown primitive {prim!r} for {name}")
        layer = convs[name]
        x_shape = (1,) + tuple(layer.in_shape)
        reason = PRIMITIVES[prim].refuse(x_shape, layer.params["W"].shape, layer.stride,
                                         layer.padding, layer.groups)
        if reason:
            raise UserError(f"conv plan: {prim} cannot run {name}: {reason}")
    for name, layer in convs.items():
        layer.primitive = plan.get(name)
    return net


def net_plan(net):
    """The plan the layers carry ({} when none was applied)."""
    return {n: layer.primitive for n, layer in conv_layers(net) if layer.primitive}
