"""A network as plain data: any DAG of the engine's layers, checked before it is built.

A graph spec is {"arch": "graph", "input_shape": [C, H, W], "nodes": [node, ...]} where each node
is an object {"name": ..., "op": ..., "inputs": [...], ...the op's settings}. A node reads the
input (`"input"`) or nodes listed before it, so the list is its own topological order and a cycle
cannot be written. The architectures of npdc.engine.torchvision are written as such node lists.

check_nodes is the one schema of a node list: names, ops, settings (type, sign, range), and the
shapes every node produces, worked out from the settings alone (node_shapes), so that a crafted
spec is refused, and what building it costs is known (graph_cost), before anything is allocated.
An optional "channels" {conv name: width} thins convolutions, as filter pruning writes it.
"""

import math
import numbers
import re

from npdc.engine.layers import (Add, AvgPool2d, BatchNorm2d, Clip, Concat, Conv2d, Dropout, Flatten,
                                GlobalAvgPool, Linear, MaxPool2d, PReLU, ReLU, ZeroPadShortcut)
from npdc.engine.layers.pool import pool_size
from npdc.engine.net import INPUT, Net
from npdc.errors import UserError

MAX_NODES = 1 << 13
MAX_SIDE = 1 << 16
MAX_KERNEL = 64
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


def _whole(lo, hi):
    def check(v):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            return f"is not a whole number ({str(v)[:40]})"
        return None if lo <= v <= hi else f"must be between {lo} and {hi:,}, not {v}"
    return check


def real(lo, hi):
    def check(v):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not lo <= v <= hi:
            return f"must be a number between {lo:g} and {hi:g}, not {str(v)[:40]}"
        return None
    return check


def check_settings(values, schema, skip, where, unknown):
    """UserError for the first key of `values` (other than `skip`) that `schema` ({key: check
    returning a problem or None}) does not have or whose value its check refuses."""
    for key, value in values.items():
        if key in skip:
            continue
        if key not in schema:
            raise UserError(f"{unknown} {str(key)[:40]!r}")
        problem = schema[key](value)
        if problem:
            raise UserError(f"{where}: {key} {problem}")


def _flag(v):
    return None if isinstance(v, bool) else f"is not true or false ({str(v)[:40]})"


_CONV = {"out": _whole(1, MAX_SIDE), "k": _whole(1, MAX_KERNEL), "stride": _whole(1, MAX_KERNEL),
         "pad": _whole(0, MAX_KERNEL), "dilation": _whole(1, MAX_KERNEL), "groups": _whole(1, MAX_SIDE),
         "bias": _flag}
_POOL = {"k": _whole(1, MAX_KERNEL), "stride": _whole(1, MAX_KERNEL), "pad": _whole(0, MAX_KERNEL),
         "ceil": _flag}
# op -> (settings with their checks, required settings, number of inputs (None: two or more))
OPS = {
    "conv": (_CONV, ("out", "k"), 1),
    "bn": ({"eps": real(1e-12, 1.0)}, (), 1),
    "relu": ({}, (), 1),
    "prelu": ({}, (), 1),
    "clip": ({"lo": real(-1e6, 1e6), "hi": real(-1e6, 1e6)}, ("lo", "hi"), 1),
    "maxpool": (_POOL, ("k",), 1),
    "avgpool": (_POOL, ("k",), 1),
    "gap": ({}, (), 1),
    "flatten": ({}, (), 1),
    "linear": ({"out": _whole(1, 1 << 20), "bias": _flag}, ("out",), 1),
    "dropout": ({"p": real(0.0, 1.0)}, (), 1),
    "add": ({}, (), 2),
    "concat": ({}, (), None),
    # every stride-th pixel, the input's channels placed after `front` zero channels, `out` in all:
    # the option-A shortcut of CIFAR ResNets, and an ONNX Slice (steps) or Pad (channels) alone
    "shortcut": ({"out": _whole(1, MAX_SIDE), "stride": _whole(1, MAX_KERNEL), "front": _whole(0, MAX_SIDE)},
                 ("out",), 1),
}


def _shape(node, ins, thin):
    """(output shape, parameters + buffers) of a checked node given its input shapes; a string
    names what does not fit."""
    op, x = node["op"], ins[0]
    if op in ("conv", "maxpool", "avgpool", "gap", "shortcut") and len(x) != 3:
        return f"needs a (C, H, W) input, not {x}"
    if op == "conv":
        out, k, s, p, d, g = (thin.get(node["name"], node["out"]), node["k"], node.get("stride", 1),
                              node.get("pad", 0), node.get("dilation", 1), node.get("groups", 1))
        if x[0] % g or out % g:
            return f"groups {g} must divide {x[0]} input and {out} output channels"
        span = d * (k - 1) + 1
        side = [(n + 2 * p - span) // s + 1 for n in x[1:]]
        if min(side) < 1:
            return f"a {span}x{span} kernel does not fit a padded {x[1]}x{x[2]} input"
        return (out, *side), out * (x[0] // g) * k * k + out * node.get("bias", False)
    if op in ("maxpool", "avgpool"):
        k, s, p, ceil = node["k"], node.get("stride", node["k"]), node.get("pad", 0), node.get("ceil", False)
        side = [pool_size(n, k, s, p, ceil) for n in x[1:]]
        if min(side) < 1 or p > k // 2 or (ceil and op == "avgpool"):
            return f"a {k}x{k} window with padding {p} does not fit {x[1]}x{x[2]}"
        return (x[0], *side), 0
    if op == "shortcut":
        s, front = node.get("stride", 1), node.get("front", (node["out"] - x[0]) // 2)
        if front + x[0] > node["out"]:
            return f"cannot place {x[0]} channels after {front} zero ones in {node['out']}"
        return (node["out"], *(-(-n // s) for n in x[1:])), 0
    if op in ("bn", "prelu"):
        return x, x[0] * (4 if op == "bn" else 1)
    if op == "clip" and not node["lo"] < node["hi"]:
        return "needs lo < hi"
    if op == "gap":
        return (x[0],), 0
    if op == "flatten":
        return (math.prod(x),), 0
    if op == "linear":
        if len(x) != 1:
            return f"needs a flat input, not {x}"
        return (node["out"],), node["out"] * (x[0] + node.get("bias", True))
    if op == "add" and ins[1] != x:
        return f"adds shapes {x} and {ins[1]}"
    if op == "concat":
        if any(len(s) != len(x) or s[1:] != x[1:] for s in ins):
            return f"concatenates shapes {', '.join(map(str, ins))}: only channels may differ"
        return (sum(s[0] for s in ins), *x[1:]), 0
    return x, 0


def check_node(node, shapes, thin=None, where=None):
    """(output shape, parameters) of one node whose inputs are in `shapes` ({name: (shape, params)}),
    or UserError naming what is wrong with it; the node is not added to `shapes`."""
    where = where or "graph node"
    if not isinstance(node, dict):
        raise UserError(f"{where} is not an object")
    name, op, inputs = node.get("name"), node.get("op"), node.get("inputs")
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in shapes:
        raise UserError(f"{where}: name {str(name)[:40]!r} is not a new name of letters, digits and _.:-")
    where = f"graph node {name!r}"
    if op not in OPS:
        raise UserError(f"{where}: unknown op {str(op)[:40]!r}; known: {', '.join(OPS)}")
    settings, required, arity = OPS[op]
    if (not isinstance(inputs, list) or not all(isinstance(s, str) and s in shapes for s in inputs)
            or len(inputs) != (arity or max(2, len(inputs))) or len(set(inputs)) != len(inputs)):
        raise UserError(f"{where}: inputs must be {arity or 'two or more'} distinct earlier nodes")
    check_settings(node, settings, ("name", "op", "inputs"), where, f"{where}: {op} has no setting")
    missing = [k for k in required if k not in node]
    if missing:
        raise UserError(f"{where}: {op} needs {', '.join(missing)}")
    result = _shape(node, [shapes[s][0] for s in inputs], thin or {})
    if isinstance(result, str):
        raise UserError(f"{where}: {op} {result}")
    return result


def check_nodes(input_shape, nodes, channels=None):
    """{node: (shape, parameters)} of a node list, or UserError naming the first bad node."""
    if not isinstance(nodes, list) or not 1 <= len(nodes) <= MAX_NODES:
        raise UserError(f"graph: nodes must be a list of 1 to {MAX_NODES:,} objects")
    thin = channels or {}
    shapes = {INPUT: (tuple(input_shape), 0)}
    for i, node in enumerate(nodes):
        shapes[node["name"]] = check_node(node, shapes, thin, f"graph node {i}")
    unknown = [k for k in thin if shapes.get(k) is None or _op(nodes, k) != "conv"]
    if unknown:
        raise UserError(f"graph: channels names {str(unknown[0])[:40]!r}, which is no conv")
    return shapes


def _op(nodes, name):
    return next(n["op"] for n in nodes if n["name"] == name)


def graph_cost(input_shape, nodes, channels=None):
    """Bytes building the checked node list allocates: float32 parameters and buffers plus one
    image's outputs of every node, twice (an estimate from above)."""
    shapes = check_nodes(input_shape, nodes, channels)
    return 4 * sum(params + 2 * math.prod(shape) for shape, params in shapes.values())


def _layer(node, thin):
    op = node["op"]
    get = node.get
    if op == "conv":
        return Conv2d(thin.get(node["name"], node["out"]), node["k"], get("stride", 1), get("pad", 0),
                      get("groups", 1), get("bias", False), get("dilation", 1))
    if op in ("maxpool", "avgpool"):
        cls = MaxPool2d if op == "maxpool" else AvgPool2d
        return cls(node["k"], get("stride", node["k"]), get("pad", 0), get("ceil", False))
    if op == "linear":
        return Linear(node["out"], get("bias", True))
    if op == "bn":
        return BatchNorm2d(get("eps", 1e-5))
    if op == "clip":
        return Clip(node["lo"], node["hi"])
    if op == "dropout":
        return Dropout(get("p", 0.5))
    if op == "shortcut":
        return ZeroPadShortcut(node["out"], get("stride", 1), get("front"))
    return {"relu": ReLU, "prelu": PReLU, "gap": GlobalAvgPool, "flatten": Flatten, "add": Add,
            "concat": Concat}[op]()


def nodes_net(spec, input_shape, nodes, rng, channels=None):
    """A Net of the checked node list, recording `spec` (how to rebuild it)."""
    check_nodes(input_shape, nodes, channels)
    net = Net(spec, input_shape)
    for node in nodes:
        net.add(node["name"], _layer(node, channels or {}), node["inputs"], rng)
    return net


def graph(rng, input_shape, nodes, channels=None):
    """The registry entry of arch "graph": a net from its own node list."""
    spec = {"arch": "graph", "input_shape": list(input_shape), "nodes": nodes}
    if channels:
        spec["channels"] = dict(channels)
    return nodes_net(spec, input_shape, nodes, rng, channels)


class Builder:
    """Writes a node list: each call appends one node reading the previous one (or `inputs`) and
    returns its name, so architectures read like their papers' diagrams."""

    def __init__(self):
        self.nodes, self.last = [], INPUT

    def __call__(self, name, op, inputs=None, **settings):
        inputs = [self.last] if inputs is None else ([inputs] if isinstance(inputs, str) else list(inputs))
        self.nodes.append({"name": name, "op": op, "inputs": inputs, **settings})
        self.last = name
        return name
