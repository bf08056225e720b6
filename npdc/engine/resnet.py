"""Architectures by name (He et al. 2016, "Deep Residual Learning for Image Recognition").

Two families, in the explicit registry ARCHITECTURES:
- `resnet18`: the layout of a face-recognition ResNet with Caffe-style names. `conv1`; per stage
  N = 2..5 the blocks `resNa` (projection shortcut `resNa_1`, convs `resNa_2a`, `resNa_2b`) and
  `resNb`; then `fc5`, an embedding on the flattened last feature map (most of the parameters, as
  in the face model), normalised by `fc5_bn`, then the classifier `fc6`. Width, input shape and strides are parameters.
- `cifar-resnetN`, N = 6n+2: 16/32/64 channels, n blocks per stage, parameter-free shortcuts
  (stride-2 subsample, zero-padded channels), global average pooling, one linear layer `fc`.
  Blocks are named like the first family: stage N = 2..4, blocks `resNa`, `resNb`, ...
  Options for imported models: `width` (channels of stage 2, default 16) and
  `shortcut="projection"` (He et al.'s option B: 1x1 conv + BN where the shape changes).

A spec is a JSON-able dict {"arch": name, ...hyper-parameters}; build_net(spec, seed) rebuilds it.
Its optional "channels" maps a conv's name to a smaller output width, written by filter pruning.
check_spec is the one schema of a spec (types, signs, ranges), checked by build_net before anything
is built; spec_cost works out from a checked spec, without building it, how many bytes building
the net allocates, so that a reader can take them from its file's npdc.limits.Budget first.
"""

import inspect
import numbers
import string

import numpy as np

from npdc.engine import torchvision
from npdc.engine.conv_plan import apply_plan, net_plan
from npdc.engine.graph import check_nodes, check_settings, graph, graph_cost, real
from npdc.engine.layers import (Add, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool, Linear, PReLU,
                                ReLU, ZeroPadShortcut)
from npdc.engine.net import Net
from npdc.errors import UserError


def _act(kind):
    return PReLU() if kind == "prelu" else ReLU()


def _conv_bn(net, name, rng, out, k, stride, inputs=None, act=None):
    out = net.spec.get("channels", {}).get(name, out)  # filter pruning may have thinned it
    net.add(name, Conv2d(out, k, stride=stride, padding=k // 2), inputs, rng)
    net.add(f"{name}_bn", BatchNorm2d(), rng=rng)
    if act:
        net.add(f"{name}_relu", _act(act), rng=rng)
    return net.output


def _block(net, rng, name, x, out, stride, shortcut, act):
    """A basic block: two 3x3 convs; the shortcut is 'identity', 'projection' or 'zeropad'."""
    _conv_bn(net, f"{name}_2a", rng, out, 3, stride, inputs=x, act=act)
    y = _conv_bn(net, f"{name}_2b", rng, out, 3, 1)
    if shortcut == "projection":
        x = _conv_bn(net, f"{name}_1", rng, out, 1, stride, inputs=x)
    elif shortcut == "zeropad":
        x = net.add(f"{name}_pad", ZeroPadShortcut(out, stride), x, rng)
    net.add(name, Add(), (x, y), rng)
    return net.add(f"{name}_relu", _act(act), rng=rng)


def _spec(channels, **fields):
    """The JSON-able spec; `channels` (conv name -> output channels) only once filters are thinned."""
    return {**fields, "channels": dict(channels)} if channels else fields


def resnet18(rng, input_shape=(1, 28, 28), num_classes=10, width=16, embedding=512,
             strides=(1, 1, 2, 2, 2), activation="relu", channels=None):
    """Face-style ResNet-18: stage widths w, 2w, 4w, 8w; `strides` for conv1 and stages 2..5."""
    if len(strides) != 5:
        raise UserError("resnet18 needs 5 strides: conv1 and stages 2..5")
    net = Net(_spec(channels, arch="resnet18", input_shape=list(input_shape), num_classes=num_classes,
                    width=width, embedding=embedding, strides=list(strides), activation=activation),
              input_shape)
    x = _conv_bn(net, "conv1", rng, width, 3, strides[0], act=activation)
    for stage, stride in zip(range(2, 6), strides[1:]):
        out = width * 2 ** (stage - 2)
        x = _block(net, rng, f"res{stage}a", x, out, stride, "projection", activation)
        x = _block(net, rng, f"res{stage}b", x, out, 1, "identity", activation)
    net.add("flatten", Flatten(), rng=rng)
    net.add("fc5", Linear(embedding, bias=False), rng=rng)  # fc5_bn supplies the shift
    net.add("fc5_bn", BatchNorm2d(), rng=rng)
    net.add("fc6", Linear(num_classes), rng=rng)
    return net


def cifar_resnet(rng, depth=20, input_shape=(3, 32, 32), num_classes=10, activation="relu",
                 channels=None, width=16, shortcut="zeropad"):
    """CIFAR ResNet of depth 6n+2; option-A shortcuts unless shortcut="projection"."""
    if (depth - 2) % 6:
        raise UserError(f"cifar-resnet depth must be 6n+2, not {depth}")
    if shortcut not in ("zeropad", "projection"):
        raise UserError(f"cifar-resnet shortcut must be 'zeropad' or 'projection', not {shortcut!r}")
    n = (depth - 2) // 6
    options = {"width": width} if width != 16 else {}  # default specs stay as they were
    if shortcut != "zeropad":
        options["shortcut"] = shortcut
    net = Net(_spec(channels, arch=f"cifar-resnet{depth}", input_shape=list(input_shape),
                    num_classes=num_classes, activation=activation, **options), input_shape)
    x = _conv_bn(net, "conv1", rng, width, 3, 1, act=activation)
    in_ch = width
    for stage, out in zip(range(2, 5), (width, 2 * width, 4 * width)):
        for b in range(n):
            stride = 2 if (b == 0 and stage > 2) else 1
            kind = shortcut if (stride != 1 or in_ch != out) else "identity"
            x = _block(net, rng, f"res{stage}{_letters(b)}", x, out, stride, kind, activation)
            in_ch = out
    net.add("pool", GlobalAvgPool(), rng=rng)
    net.add("fc", Linear(num_classes), rng=rng)
    return net


def _letters(i):
    """Block suffix: a..z, then aa, ab, ... (ResNet-110 has 18 blocks per stage)."""
    s = string.ascii_lowercase
    return s[i] if i < 26 else s[i // 26 - 1] + s[i % 26]


def _cifar(depth):
    return lambda rng, **kw: cifar_resnet(rng, depth=depth, **kw)


ARCHITECTURES = {"resnet18": resnet18, **{f"cifar-resnet{d}": _cifar(d) for d in (20, 32, 44, 56, 110)},
                 **torchvision.BUILDERS, "graph": graph}

GRAPH_BUILT = {*torchvision.BUILDERS, "graph"}  # architectures built from a node list


def build_net(spec, seed=0):
    """Rebuild a net from its spec; parameters drawn from a generator seeded with `seed`."""
    check_spec(spec)
    spec = dict(spec)
    arch = spec.pop("arch", None)
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[arch](np.random.default_rng(seed), **spec)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build {arch}: {e}") from None


def clone_net(net):
    """An independent copy of `net` (same spec, parameters, buffers, normalisation and conv plan)."""
    copy = build_net(net.spec)
    copy.load_state_dict(net.state_dict())
    apply_plan(copy, net_plan(net))
    return copy


# -- the schema of a spec, and what building it costs -------------------------------------------
MAX_SIDE = 1 << 16  # channels, widths and image sides a spec may declare
MAX_UNITS = 1 << 20  # classes and embedding size


def _count(limit):
    def check(v):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            return f"is not a whole number ({v!r})"
        return None if 1 <= v <= limit else f"must be between 1 and {limit:,}, not {v}"
    return check


def _ints(n, limit, noun="whole numbers"):
    def check(v):
        if not isinstance(v, (list, tuple)) or len(v) != n:
            return f"is not a list of {n} {noun} ({str(v)[:40]})"
        return next((f"[{i}] {p}" for i, p in enumerate(map(_count(limit), v)) if p), None)
    return check


def _one_of(*choices):
    return lambda v: None if isinstance(v, str) and v in choices else f"must be one of {', '.join(choices)}"


def _channels(v):
    if not isinstance(v, dict):
        return "is not an object"
    for name, n in v.items():
        problem = _count(MAX_SIDE)(n)
        if problem:
            return f"[{name!r}] {problem}"
    return None


_COMMON = {"input_shape": _ints(3, MAX_SIDE), "num_classes": _count(MAX_UNITS), "width": _count(MAX_SIDE),
           "activation": _one_of("relu", "prelu"), "channels": _channels}
def _list(v):
    return None if isinstance(v, list) else "is not a list"


_SIZES = {k: _COMMON[k] for k in ("input_shape", "num_classes", "channels")}
SCHEMA = {"resnet18": {**_COMMON, "embedding": _count(MAX_UNITS), "strides": _ints(5, 64, "strides")},
          "cifar-resnet": {**_COMMON, "shortcut": _one_of("zeropad", "projection")},
          "tv-resnet": {**_SIZES, "width": _count(MAX_SIDE)},
          "mobilenet_v2": {**_SIZES, "width_mult": real(0.01, 16.0)},
          "squeezenet1_1": {**_SIZES, "width": _count(MAX_SIDE)},
          "graph": {**_SIZES, "nodes": _list}}


def _family(arch):
    if arch.startswith("cifar-resnet"):
        return "cifar-resnet"
    return "tv-resnet" if arch.startswith("tv-resnet") else arch


def _nodes(spec):
    """The node list of a checked graph-built spec (a torchvision architecture or a graph)."""
    return spec["nodes"] if spec["arch"] == "graph" else torchvision.arch_nodes(spec)


def check_spec(spec):
    """UserError (one line) unless `spec` is an object naming a known architecture whose
    hyper-parameters all have the right type, sign and range: the one schema of a spec."""
    if not isinstance(spec, dict):
        raise UserError(f"the architecture spec is a {type(spec).__name__}, not an object")
    arch = spec.get("arch")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {str(arch)[:40]!r}; known: {', '.join(ARCHITECTURES)}")
    schema = SCHEMA[_family(arch)]
    check_settings(spec, schema, ("arch",), arch, f"{arch} has no hyper-parameter")
    if arch == "graph" and ("input_shape" not in spec or "nodes" not in spec):
        raise UserError("graph: the spec needs input_shape and nodes")
    if arch in GRAPH_BUILT:
        spec = torchvision.spec_with_defaults(spec) if arch != "graph" else spec
        check_nodes(spec["input_shape"], _nodes(spec), spec.get("channels"))
    return spec


def _defaults(arch):
    builder = resnet18 if arch == "resnet18" else cifar_resnet
    return {k: p.default for k, p in inspect.signature(builder).parameters.items()
            if p.default is not inspect.Parameter.empty}


def spec_cost(spec):
    """Bytes that building the net of a checked spec allocates, worked out from the spec alone:
    its float32 parameters and buffers plus one image's activations (conv, BN and activation
    outputs), counted with Python integers so no size wraps. An estimate from above: filter
    pruning only thins what it counts, and gradients are allocated later, by training."""
    check_spec(spec)
    arch = spec["arch"]
    if arch in GRAPH_BUILT:
        spec = torchvision.spec_with_defaults(spec) if arch != "graph" else spec
        return graph_cost(spec["input_shape"], _nodes(spec), spec.get("channels"))
    h = {**_defaults(arch), **spec}
    thin = h.get("channels") or {}
    acts = 1 if h["activation"] == "prelu" else 0
    c, y, x = h["input_shape"]
    total = {"params": 0, "acts": 0}

    def conv(name, cin, side, out, k, stride):
        out = thin.get(name, out)
        side = ((side[0] - 1) // stride + 1, (side[1] - 1) // stride + 1)
        total["params"] += out * cin * k * k + 4 * out + acts * out
        total["acts"] += 3 * out * side[0] * side[1]
        return out, side

    if arch == "resnet18":
        strides, width, side = h["strides"], h["width"], (y, x)
        c, side = conv("conv1", c, side, width, 3, strides[0])
        for stage, stride in zip(range(2, 6), strides[1:]):
            out = width * 2 ** (stage - 2)
            conv(f"res{stage}a_1", c, side, out, 1, stride)
            c, side = conv(f"res{stage}a_2a", c, side, out, 3, stride)
            for name in (f"res{stage}a_2b", f"res{stage}b_2a", f"res{stage}b_2b"):
                c, side = conv(name, c, side, out, 3, 1)
        features, classes = c * side[0] * side[1], h["num_classes"]
        total["params"] += features * h["embedding"] + 4 * h["embedding"] + (h["embedding"] + 1) * classes
    else:
        width, side, n = h["width"], (y, x), (int(arch[len("cifar-resnet"):]) - 2) // 6
        c, side = conv("conv1", c, side, width, 3, 1)
        for stage, out in zip(range(2, 5), (width, 2 * width, 4 * width)):
            for b in range(n):
                stride, name = (2 if (b == 0 and stage > 2) else 1), f"res{stage}{_letters(b)}"
                if h["shortcut"] == "projection" and (stride != 1 or c != out):
                    conv(f"{name}_1", c, side, out, 1, stride)
                c, side = conv(f"{name}_2a", c, side, out, 3, stride)
                c, side = conv(f"{name}_2b", c, side, out, 3, 1)
        total["params"] += (c + 1) * h["num_classes"]
    return 4 * (total["params"] + total["acts"])
