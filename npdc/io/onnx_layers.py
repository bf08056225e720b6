"""How each ONNX operator reading an activation becomes graph nodes of npdc.engine.graph
(CONVERTERS: op type -> function(walk, node, inputs, attributes, where) -> the Act it writes).

Semantics from the ONNX operator reference (opsets 11 to 21); the walk that calls these, and what
is refused before them, is npdc.io.onnx_import. Where ONNX says more than the engine can express
(asymmetric padding, AveragePool without the padding in its count, a slice of channels, a Pad of
the image sides), the converter refuses with one line instead of approximating.
"""

import math

import numpy as np

from npdc.engine.net import INPUT
from npdc.errors import UserError
from npdc.io.onnx_fold import Folded, attr, slices

BATCH_STAND_IN = 1 << 40  # the batch axis's length when a Slice on it is checked to keep it whole


class Act:
    """An activation: the engine node writing it and its ONNX shape without the batch axis (which
    differs from the node's own shape only after a pooling to 1x1 or a reshape of a flat one)."""

    def __init__(self, node, shape, sub=(1, 1)):
        self.node, self.shape = node, tuple(int(d) for d in shape)
        self.sub = sub  # a Slice's steps on H and W not yet written as a node (they differ)


def _per_channel(w, value, shape, where, what):
    """A constant broadcast per channel over an activation of `shape` (without the batch axis), as
    ONNX broadcasts: (C,) on a flat one, (C, 1, 1) or (1, C, 1, 1) on an image, or one value for
    all; returned as (C,) float32."""
    v, c, rank = w.const(value, where, what), shape[0], len(shape) + 1
    if v.size == 1 and v.ndim <= rank:
        return np.full(c, v.reshape(-1)[0], np.float32)
    if v.ndim > rank or (1,) * (rank - v.ndim) + v.shape != (1, c) + (1,) * (rank - 2):
        raise UserError(f"{where}: {what} of shape {v.shape} is not one value per channel of {shape}")
    return v.reshape(-1)


def _node_of(w, act):
    return next(d for d in reversed(w.nodes) if d["name"] == act.node)


def _exact(w, act):
    """Whether `act` is its node's own output, not a reshaped view of it."""
    return act.node != INPUT and w.shapes[act.node][0] == act.shape


def conv(w, n, ins, a, where):
    x, W = w.image(ins, where), w.const(ins[1] if len(ins) > 1 else None, where, "Conv's weight")
    if W.ndim != 4:
        raise UserError(f"{where}: a weight of shape {W.shape}; npdc imports 2-D convolutions")
    k, s, p, d = w.window(a, where, list(W.shape[2:]))
    groups = attr(a, "group", "int", 1, where)
    if [k, k] != list(W.shape[2:]) or groups < 1 or W.shape[1] * groups != x.shape[0]:
        raise UserError(f"{where}: weight {W.shape} with group {groups} does not fit {x.shape[0]} input channels")
    weights = {"W": W}
    if len(ins) > 2 and ins[2] is not None:
        weights["b"] = w.const(ins[2], where, "Conv's bias").reshape(-1)
    return w.emit(n, "conv", [x], weights=weights, out=W.shape[0], k=k, stride=s, pad=p, dilation=d,
                  groups=groups, bias="b" in weights)


def batch_norm(w, n, ins, a, where):
    x = ins[0]
    if attr(a, "training_mode", "int", 0, where) or any(w.uses.get(o) for o in n.output[1:] if o):
        raise UserError(f"{where}: BatchNormalization in training mode; export the model in eval mode")
    if len(ins) != 5:
        raise UserError(f"{where}: BatchNormalization needs scale, bias, mean and variance")
    keys = ("gamma", "beta", "running_mean", "running_var")
    weights = {k: w.const(v, where, f"BatchNormalization's {k}") for k, v in zip(keys, ins[1:])}
    if any(v.shape != (x.shape[0],) for v in weights.values()):
        raise UserError(f"{where}: BatchNormalization's parameters are not one value per channel ({x.shape[0]})")
    if np.any(weights["running_var"] < 0):
        raise UserError(f"{where}: BatchNormalization has a negative variance")
    return w.emit(n, "bn", [x], weights=weights, eps=attr(a, "epsilon", "float", 1e-5, where))


def relu(w, n, ins, a, where):
    return w.emit(n, "relu", [ins[0]])


def prelu(w, n, ins, a, where):
    x = ins[0]
    slope = _per_channel(w, ins[1], x.shape, where, "PRelu's slope")
    return w.emit(n, "prelu", [x], weights={"slope": slope})


def clip(w, n, ins, a, where):
    bounds = []
    for k, v in zip(("min", "max"), (list(ins) + [None, None])[1:3]):
        c = None if v is None else w.const(v, where, f"Clip's {k}")
        if c is not None and c.size != 1:
            raise UserError(f"{where}: Clip's {k} is not one value")
        bounds.append(None if c is None else float(c.reshape(-1)[0]))
    lo, hi = bounds
    if lo == 0.0 and hi is None:
        return w.emit(n, "relu", [ins[0]])
    if lo is None or hi is None:
        raise UserError(f"{where}: Clip with one bound; npdc imports Clip(min, max), and Clip(0) as ReLU")
    return w.emit(n, "clip", [ins[0]], lo=lo, hi=hi)


def add(w, n, ins, a, where):
    acts = [i for i in ins if isinstance(i, Act)]
    if len(acts) == 2:
        if acts[0].shape != acts[1].shape:
            raise UserError(f"{where}: Add of shapes {acts[0].shape} and {acts[1].shape}; npdc adds equal shapes")
        return w.emit(n, "add", acts)
    x, c = acts[0], ins[1] if ins[0] is acts[0] else ins[0]
    source = n.input[ins.index(x)]
    node = _node_of(w, x) if _exact(w, x) else {}
    if node.get("op") not in ("conv", "linear") or node.get("bias") or w.uses.get(source) != 1:
        raise UserError(f"{where}: Add of a constant is imported only as the bias of the Conv, Gemm "
                        "or MatMul before it (read by nothing else)")
    w.weights[node["name"]]["b"] = _per_channel(w, c, x.shape, where, "the added bias")
    node["bias"] = True
    return x


def _pool(op):
    def convert(w, n, ins, a, where):
        x = w.image(ins, where)
        k, s, p, d = w.window(a, where)
        if d != 1 or any(w.uses.get(o) for o in n.output[1:] if o):
            raise UserError(f"{where}: dilated pooling or pooling indices are not imported")
        if op == "avgpool" and p and not attr(a, "count_include_pad", "int", 0, where):
            raise UserError(f"{where}: AveragePool with padding left out of the count; npdc counts it "
                            "(count_include_pad=1, PyTorch's default)")
        return w.emit(n, op, [x], k=k, stride=s, pad=p, ceil=bool(attr(a, "ceil_mode", "int", 0, where)))
    return convert


def global_pool(w, n, ins, a, where):
    x = w.image(ins, where)
    return w.emit(n, "gap", [x], shape_hint=(x.shape[0], 1, 1))


def reduce_mean(w, n, ins, a, where):
    x = w.image(ins, where)
    axes = attr(a, "axes", "ints", None, where) if w.opset < 18 else w.ints(ins, 1, where, "ReduceMean's axes")
    if sorted(i % 4 for i in axes or ()) != [2, 3] or any(not -4 <= i < 4 for i in axes):
        raise UserError(f"{where}: ReduceMean over axes {axes}; npdc imports the mean over H and W")
    keep = attr(a, "keepdims", "int", 1, where)
    return w.emit(n, "gap", [x], shape_hint=(x.shape[0], 1, 1) if keep else (x.shape[0],))


def _flat(w, n, x, where):
    """x as (batch, features): the node itself when it is flat already, else a flatten node."""
    if len(w.shapes[x.node][0]) == 1:
        return Act(x.node, (math.prod(x.shape),))
    return w.emit(n, "flatten", [x])


def flatten(w, n, ins, a, where):
    x = ins[0]
    if attr(a, "axis", "int", 1, where) not in (1, -len(x.shape)):
        raise UserError(f"{where}: Flatten on an axis other than 1")
    return _flat(w, n, x, where)


def reshape(w, n, ins, a, where):
    x, f = ins[0], ins[1] if len(ins) > 1 else None
    if not isinstance(f, Folded) or f.value.dtype.kind not in "iu" or f.value.ndim != 1:
        raise UserError(f"{where}: Reshape's shape must be a constant list of whole numbers")
    t, m, total = [int(v) for v in f.value], list(f.mask()), math.prod(x.shape)
    if any(m[1:]) or len(t) < 2:
        raise UserError(f"{where}: Reshape to {t}: npdc imports Reshape to (batch, features)")
    batch = (m[0] or t[0] == w.fixed_batch or (t[0] == 0 and not attr(a, "allowzero", "int", 0, where))
             or (t[0] == -1 and math.prod(t[1:]) == total))
    if batch and t[1:] == list(x.shape):
        return x
    if not batch or len(t) != 2 or t[1] not in (-1, total):
        raise UserError(f"{where}: Reshape to {t}: npdc imports Reshape to (batch, features)")
    return _flat(w, n, x, where)


def squeeze(w, n, ins, a, where):
    x = ins[0]
    axes = attr(a, "axes", "ints", None, where) if w.opset < 13 else w.ints(ins, 1, where, "Squeeze's axes")
    rank = len(x.shape) + 1
    axes = sorted({i % rank for i in axes}) if axes else [i + 1 for i, d in enumerate(x.shape) if d == 1]
    shape = tuple(d for i, d in enumerate(x.shape) if i + 1 not in axes)
    if 0 in axes or any(x.shape[i - 1] != 1 for i in axes) or shape != w.shapes[x.node][0]:
        raise UserError(f"{where}: Squeeze of axes {axes}: npdc imports it only after a pooling to 1x1")
    return Act(x.node, shape)


def _linear(w, n, x, W, b, where):
    if len(x.shape) != 1 or len(w.shapes[x.node][0]) != 1 or W.shape[1] != x.shape[0]:
        raise UserError(f"{where}: a weight of shape {W.shape} on an input of shape {x.shape}")
    weights = {"W": W} if b is None else {"W": W, "b": b}
    return w.emit(n, "linear", [x], weights=weights, out=W.shape[0], bias=b is not None)


def gemm(w, n, ins, a, where):
    x, B = ins[0], w.const(ins[1], where, "Gemm's B")
    if attr(a, "transA", "int", 0, where) or B.ndim != 2:
        raise UserError(f"{where}: Gemm with transA or a B of shape {B.shape}")
    W = (B if attr(a, "transB", "int", 0, where) else B.T) * attr(a, "alpha", "float", 1.0, where)
    b = None
    if len(ins) > 2 and ins[2] is not None:
        b = _per_channel(w, ins[2], (W.shape[0],), where, "Gemm's C") * attr(a, "beta", "float", 1.0, where)
    return _linear(w, n, x, np.ascontiguousarray(W, np.float32), b, where)


def matmul(w, n, ins, a, where):
    B = w.const(ins[1], where, "MatMul's second input")
    if B.ndim != 2:
        raise UserError(f"{where}: MatMul by a weight of shape {B.shape}")
    return _linear(w, n, ins[0], np.ascontiguousarray(B.T), None, where)


def concat(w, n, ins, a, where):
    if not all(isinstance(i, Act) for i in ins):
        raise UserError(f"{where}: Concat of activations and constants")
    if attr(a, "axis", "int", None, where) not in (1, -len(ins[0].shape)):
        raise UserError(f"{where}: Concat on an axis other than the channels")
    return w.emit(n, "concat", list(ins))


def identity(w, n, ins, a, where):
    return ins[0]


def dropout(w, n, ins, a, where):
    if w.opset < 12:
        p = attr(a, "ratio", "float", 0.5, where)
    else:
        p = float(w.const(ins[1], where, "Dropout's ratio").reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else 0.5
        if len(ins) > 2 and ins[2] is not None and np.any(w.const(ins[2], where, "training_mode", floats=False)):
            raise UserError(f"{where}: Dropout in training mode; export the model in eval mode")
    return w.emit(n, "dropout", [ins[0]], p=p)


def slice_(w, n, ins, a, where):
    """Every s-th pixel of H and W, from the first (x[:, :, ::s, ::s], which exporters may write
    as one Slice per axis): a shortcut node once the steps on H and W are equal."""
    x = w.image(ins, where)
    lists = [w.ints(ins, k, where, f"Slice's {what}") for k, what in enumerate(("starts", "ends", "axes", "steps"), 1)]
    if lists[0] is None or lists[1] is None:
        raise UserError(f"{where}: Slice without starts and ends")
    dims = (BATCH_STAND_IN, *x.shape)
    kept = [range(d)[i] for d, i in zip(dims, slices(4, *lists, where))]
    if (kept[0] != range(dims[0]) or kept[1] != range(dims[1])
            or any(r.step < 1 or r != range(0, d, r.step) for r, d in zip(kept[2:], dims[2:]))):
        raise UserError(f"{where}: Slice {lists}: npdc imports only every s-th pixel of H and W (x[:, :, ::s, ::s])")
    sub = (x.sub[0] * kept[2].step, x.sub[1] * kept[3].step)
    shape = (x.shape[0], len(kept[2]), len(kept[3]))
    if sub[0] != sub[1]:
        return Act(x.node, shape, sub)
    if sub[0] == 1:
        return x
    source = Act(x.node, w.shapes[x.node][0]) if x.node != INPUT else Act(INPUT, w.in_shape)
    return w.emit(n, "shortcut", [source], out=x.shape[0], stride=sub[0], front=0)


def pad(w, n, ins, a, where):
    """Zero channels before and after (F.pad(x, (0, 0, 0, 0, a, b))): a shortcut node, merged
    with the subsampling Slice before it when nothing else reads that."""
    x = w.image(ins, where)
    mode = attr(a, "mode", "string", "constant", where)
    pads = w.ints(ins, 1, where, "Pad's pads")
    fill = w.const(ins[2], where, "Pad's value", floats=False) if len(ins) > 2 and ins[2] is not None else np.zeros(1)
    if mode != "constant" or fill.size != 1 or fill.reshape(-1)[0] != 0 or (len(ins) > 3 and ins[3] is not None):
        raise UserError(f"{where}: Pad other than with zeros on all axes")
    if pads is None or len(pads) != 8 or any(pads[i] for i in (0, 2, 3, 4, 6, 7)) or min(pads) < 0:
        raise UserError(f"{where}: Pad {pads}: npdc imports zero channels added before and after only")
    front, back = pads[1], pads[5]
    if front == back == 0:
        return x
    node = _node_of(w, x) if _exact(w, x) else {}
    if node.get("op") == "shortcut" and node["front"] == 0 and node["out"] == w.shapes[node["inputs"][0]][0][0] \
            and w.uses.get(n.input[0]) == 1:
        node["out"], node["front"] = node["out"] + front + back, front
        shape = (node["out"], *x.shape[1:])
        w.shapes[node["name"]] = (shape, 0)
        return Act(node["name"], shape)
    return w.emit(n, "shortcut", [x], out=x.shape[0] + front + back, stride=1, front=front)


def _normalisation(key):
    """Sub (mean) or Div (std) of per-channel constants applied to the model's input before any
    layer: npdc's own export writes them; they become the net's mean and std."""
    def convert(w, n, ins, a, where):
        x, c = ins[0], ins[1]
        if (not isinstance(x, Act) or x.node != INPUT or w.nodes or getattr(w, key) is not None
                or w.std is not None or w.uses.get(n.input[0]) != 1 or not isinstance(c, Folded)):
            raise UserError(f"{where}: {n.op_type} on an activation is imported only as the input's "
                            "normalisation (Sub of a mean, then Div by a std, before any layer)")
        value = _per_channel(w, c, x.shape, where, f"the input's {key}")
        if key == "std":
            if np.any(value <= 0):
                raise UserError(f"{where}: the input's std must be above 0")
            w.mean = np.zeros(x.shape[0], np.float32) if w.mean is None else w.mean
        setattr(w, key, value)
        return x
    return convert


CONVERTERS = {"Conv": conv, "BatchNormalization": batch_norm, "Relu": relu, "PRelu": prelu, "Clip": clip,
              "Add": add, "MaxPool": _pool("maxpool"), "AveragePool": _pool("avgpool"),
              "GlobalAveragePool": global_pool, "ReduceMean": reduce_mean, "Flatten": flatten,
              "Reshape": reshape, "Squeeze": squeeze, "Gemm": gemm, "MatMul": matmul, "Concat": concat,
              "Identity": identity, "Dropout": dropout, "Slice": slice_, "Pad": pad,
              "Sub": _normalisation("mean"), "Div": _normalisation("std")}
