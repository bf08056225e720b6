"""Import an ONNX classifier as an npdc graph net (arch "graph") through the `onnx` package.

The file is parsed by onnx's protobuf reader, checked by onnx's checker and shape inference, and
walked node by node in its (required) topological order; nothing in it is executed. Operators
follow the ONNX operator reference (opsets 11 to 21) and map onto the engine's graph ops:
Conv (square kernels; any stride, symmetric padding, dilation, groups), BatchNormalization (eval),
Relu, PRelu, Clip (Relu when only min is 0), Add of two activations, Add of a per-channel constant
as the bias of the Conv/Gemm/MatMul before it, MaxPool, AveragePool, GlobalAveragePool and
ReduceMean over H and W, Flatten, Reshape/Squeeze to (batch, features), Gemm, MatMul, Concat on
channels, Identity, Dropout, and Slice (steps on H and W) and Pad (zeros on channels) as the
option-A shortcut of He et al. 2016. A Sub then Div of per-channel constants reading the input
(what npdc's own export writes) become the model's input normalisation. Constant subgraphs are
folded (npdc.io.onnx_fold). Any other op, a shape that depends on the batch size, or external data
missing beside the file is refused with one line naming it, before anything is built.
"""

import os
import re

import numpy as np

from npdc.engine.graph import MAX_NODES, check_node, graph, graph_cost
from npdc.engine.net import INPUT
from npdc.errors import UserError
from npdc.io.onnx_export import need_onnx
from npdc.io.onnx_fold import FOLDABLE, Folded, attr, attributes, fold, shape_of, tensor_array
from npdc.io.onnx_layers import CONVERTERS, Act
from npdc.limits import Budget

try:
    import onnx
except ImportError:  # the optional extra is not installed; need_onnx says what to do
    onnx = None

SUPPORTED = sorted(set(CONVERTERS) | set(FOLDABLE))
MIN_OPSET, MAX_OPSET = 11, 21


def import_onnx(path, mean=None, std=None, input_shape=None):
    """A Net of the ONNX classifier at `path`; mean/std (per channel, [0, 1] scale) become its
    input normalisation, input_shape (C, H, W) fixes sizes the file leaves symbolic."""
    need_onnx()
    source = str(path)
    if not os.path.isfile(source):
        raise UserError(f"no ONNX model file {source}")
    budget = Budget.for_path(path)
    model = _parse(source)
    walk = _Walk(model, source, budget, os.path.dirname(os.path.abspath(source)), input_shape)
    net = walk.net()
    for name, value, given in (("mean", walk.mean, mean), ("std", walk.std, std)):
        if value is not None and given is not None:
            raise UserError(f"{source} normalises its input itself; leave out --{name}")
        chosen = value if value is not None else given
        if chosen is not None:
            chosen = np.asarray(chosen, np.float32).reshape(-1)
            if chosen.size == 1:
                chosen = np.repeat(chosen, net.in_shape[0])
            if chosen.size != net.in_shape[0] or not np.all(np.isfinite(chosen)) or (name == "std" and np.any(chosen <= 0)):
                raise UserError(f"--{name} needs {net.in_shape[0]} finite values{' above 0' if name == 'std' else ''}")
            setattr(net, name, chosen)
    return net


def _parse(source):
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{source}: cannot be read ({e.strerror})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # noqa: BLE001 -- protobuf's DecodeError and friends
        raise UserError(f"{source}: not an ONNX model (the protobuf is truncated or damaged)") from None
    if not model.HasField("graph") or not model.graph.node:
        raise UserError(f"{source}: not an ONNX model (no graph with nodes)")
    return model


def _check_order(g, source):
    """ONNX requires nodes in topological order: a node reading a value no earlier node (nor an
    input or initializer) writes is a cycle or a damaged file."""
    known = {v.name for v in g.input} | {t.name for t in g.initializer}
    for i, n in enumerate(g.node):
        missing = next((v for v in n.input if v and v not in known), None)
        if missing is not None:
            raise UserError(f"{source}: node {n.name[:60] or i!r} ({n.op_type}) reads {missing[:60]!r}, which "
                            "no earlier node writes (a cycle, or nodes out of order)")
        known.update(n.output)


def _scoped(name, weighted):
    """PyTorch names a node by its module scopes, each the qualified name of a submodule
    (`/layer1/layer1.0/conv1/Conv`): the innermost qualified name, without the op of a module's
    own node."""
    parts = [p for p in name.split("/") if p]
    if weighted and len(parts) > 1:
        parts = parts[:-1]
    out = []
    for p in parts:
        if out and p.startswith(out[-1] + "."):
            out[-1] = p
        else:
            out.append(p)
    return ".".join(out)


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


class _Walk:
    """One pass over the ONNX graph, writing the node list and collecting the weights."""

    def __init__(self, model, source, budget, folder, input_shape):
        self.source, self.budget, self.folder = source, budget, folder
        g = model.graph
        opsets = {o.domain: o.version for o in model.opset_import}
        self.opset = opsets.get("", opsets.get("ai.onnx"))
        if self.opset is None or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise UserError(f"{source}: ONNX opset {self.opset} is not one npdc imports "
                            f"({MIN_OPSET} to {MAX_OPSET}; export with opset_version=13 or later)")
        if len(g.node) > 8 * MAX_NODES:
            raise UserError(f"{source}: {len(g.node):,} nodes, more than npdc imports")
        for n in g.node:
            if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED:
                raise UserError(f"{source}: op {n.domain + '.' if n.domain else ''}{n.op_type[:40]} (node "
                                f"{n.name[:60]!r}) is not supported; npdc imports {', '.join(SUPPORTED)}")
        _check_order(g, source)
        self.values = {}  # ONNX value name -> Folded or Act
        for t in g.initializer:
            self.values[t.name] = Folded(tensor_array(t, budget, source, folder))
        for t in g.initializer:  # external data is in memory now: the checker sees a plain model
            if t.data_location == onnx.TensorProto.EXTERNAL:
                t.CopyFrom(onnx.numpy_helper.from_array(self.values[t.name].value, t.name))
        try:
            onnx.checker.check_model(model)
            inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except Exception as e:  # noqa: BLE001 -- checker and inference raise their own kinds
            raise UserError(f"{source}: {_first_line(e)}") from None
        self.inferred = {v.name: v for v in inferred.graph.value_info}
        self.graph, self.nodes, self.shapes, self.weights = g, [], {INPUT: None}, {}
        self.mean = self.std = None
        self._input(input_shape)
        self.uses = {}
        for n in g.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1

    def _input(self, input_shape):
        inputs = [i for i in self.graph.input if i.name not in self.values]
        if len(inputs) != 1:
            raise UserError(f"{self.source}: {len(inputs)} graph inputs; npdc imports a model with one image input")
        t = inputs[0].type.tensor_type
        if t.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise UserError(f"{self.source}: input {inputs[0].name[:60]!r} is not a float tensor")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if len(dims) != 4:
            raise UserError(f"{self.source}: input {inputs[0].name[:60]!r} has {len(dims)} dimensions, not (N, C, H, W)")
        shape = list(input_shape) if input_shape is not None else dims[1:]
        if any(d is None for d in shape) or (input_shape is not None and any(
                a is not None and a != b for a, b in zip(dims[1:], shape))):
            raise UserError(f"{self.source}: input shape {['?' if d is None else d for d in dims]} is not "
                            f"fixed; give --input-shape C,H,W{' matching the file' if input_shape else ''}")
        if any(not 1 <= d <= 1 << 16 for d in shape):
            raise UserError(f"{self.source}: input shape {shape} is outside 1..65,536 per dimension")
        self.fixed_batch = dims[0]  # a file exported for one batch size writes it as a number
        self.in_shape = tuple(shape)
        self.shapes[INPUT] = (self.in_shape, 0)
        self.values[inputs[0].name] = Act(INPUT, self.in_shape)

    # -- the walk ---------------------------------------------------------------------------------
    def net(self):
        outputs = list(self.graph.output)
        if len(outputs) != 1:
            raise UserError(f"{self.source}: {len(outputs)} graph outputs; npdc imports a model with one")
        needed = self._needed(outputs[0].name)
        for i, n in enumerate(self.graph.node):
            if any(o in needed for o in n.output):
                self._node(n, f"{self.source}: node {n.name[:60] or i!r} ({n.op_type})")
        out = self.values.get(outputs[0].name)
        if not isinstance(out, Act) or out.node == INPUT or out.sub != (1, 1):
            raise UserError(f"{self.source}: the output {outputs[0].name[:60]!r} is not computed by any layer")
        if len(self.shapes[out.node][0]) != 1:
            raise UserError(f"{self.source}: the output has shape {out.shape}; npdc imports classifiers "
                            "whose output is (batch, classes)")
        cost = graph_cost(self.in_shape, self.nodes)
        self.budget.take(2 * cost, f"the network its nodes describe ({cost:,} bytes)")
        net = graph(np.random.default_rng(0), self.in_shape, self.nodes)
        self._load(net)
        return net

    def _needed(self, output):
        """Names of the values the output depends on; nodes writing none of them are skipped."""
        writer = {o: n for n in self.graph.node for o in n.output if o}
        needed, stack = set(), [output]
        while stack:
            v = stack.pop()
            if v in needed:
                continue
            needed.add(v)
            if v in writer:
                stack.extend(i for i in writer[v].input if i)
        return needed

    def _node(self, n, where):
        ins = []
        for i in n.input:
            if i and i not in self.values:
                raise UserError(f"{where} reads {i[:60]!r}, which no earlier node writes (a cycle, or nodes out of order)")
            ins.append(self.values[i] if i else None)
        acts = [i for i in ins if isinstance(i, Act)]
        if any(i.sub != (1, 1) for i in acts) and n.op_type != "Slice":
            raise UserError(f"{where} reads a Slice with different steps on H and W, which npdc does not import")
        if n.op_type == "Shape" and acts:
            a = attributes(n, where)
            result = [shape_of(acts[0].shape, attr(a, "start", "int", 0, where), attr(a, "end", "int", None, where))]
        elif not acts:
            if n.op_type not in FOLDABLE:
                raise UserError(f"{where}: op {n.op_type} on constants is not folded by npdc")
            result = fold(n, ins, self.opset, self.budget, where, self.folder)
        else:
            convert = CONVERTERS.get(n.op_type)
            if convert is None:
                raise UserError(f"{where}: op {n.op_type} on an activation is not supported")
            result = [convert(self, n, ins, attributes(n, where), where)]
        written = [o for o in n.output if o]
        if n.op_type == "Dropout" and len(written) > 1 and self.uses.get(written[1]):
            raise UserError(f"{where}: Dropout's mask is used")
        for name, value in zip(written, result):
            if name in self.values:
                raise UserError(f"{where} writes {name[:60]!r} a second time")
            self._check_inferred(name, value, where)
            self.values[name] = value

    def _check_inferred(self, name, value, where):
        """onnx's shape inference and npdc's own must agree on every activation's static shape."""
        if not isinstance(value, Act):
            return
        info = self.inferred.get(name)
        if info is not None:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
            if len(dims) == len(value.shape) + 1 and any(a is not None and a != b for a, b in zip(dims[1:], value.shape)):
                raise UserError(f"{where}: npdc works out shape {value.shape}, ONNX's shape inference {dims[1:]}")

    # -- helpers --------------------------------------------------------------------------------
    def emit(self, n, op, inputs, shape_hint=None, weights=None, **settings):
        name = self.name(n, op)
        node = {"name": name, "op": op, "inputs": [a.node for a in inputs], **settings}
        shape, _ = check_node(node, self.shapes, where=f"{self.source}: node {n.name[:60]!r}")
        self.shapes[name] = (shape, 0)
        self.nodes.append(node)
        if len(self.nodes) > MAX_NODES:
            raise UserError(f"{self.source}: more than {MAX_NODES:,} layers")
        if weights:
            self.weights[name] = weights
        return Act(name, shape_hint or shape)

    def name(self, n, op):
        """The module's name where the exporter kept it: from the weight (`layer1.0.conv1.weight`)
        or from PyTorch's scoped node name (`/layer1/layer1.0/conv1/Conv` -> `layer1.0.conv1`),
        else the node's name; made of the characters a graph name allows, and unique."""
        weighted = op in ("conv", "linear", "bn", "prelu")
        weight = n.input[1] if weighted and len(n.input) > 1 else ""
        base = weight[:-len(".weight")] if weight.endswith(".weight") and "::" not in weight else _scoped(n.name, weighted)
        base = re.sub(r"[^A-Za-z0-9_.:-]", "_", base).lstrip(".:-")[:120]
        base, name, k = base or op, base or op, 1
        while name in self.shapes:
            k += 1
            name = f"{base}_{k}"
        return name

    def const(self, value, where, what, floats=True):
        if not isinstance(value, Folded):
            raise UserError(f"{where}: {what} must be a constant, not computed from the input")
        v = value.static(f"{where}: {what}")
        if floats:
            if v.dtype.kind != "f":
                raise UserError(f"{where}: {what} is {v.dtype}, not floating point")
            v = v.astype(np.float32)
            if not np.all(np.isfinite(v)):
                raise UserError(f"{where}: {what} holds NaN or infinite values")
        return v

    def ints(self, ins, k, where, what, default=None):
        if len(ins) <= k or ins[k] is None:
            return default
        v = self.const(ins[k], where, what, floats=False)
        if v.dtype.kind not in "iu" or v.ndim > 1:
            raise UserError(f"{where}: {what} is not a list of whole numbers")
        return [int(i) for i in v.reshape(-1)]

    def image(self, ins, where):
        x = ins[0]
        if not isinstance(x, Act) or len(x.shape) != 3:
            raise UserError(f"{where}: needs an (N, C, H, W) activation as its first input")
        return x

    def window(self, a, where, k_default=None):
        """(k, stride, pad, dilation) of a square, symmetric window (Conv, MaxPool, AveragePool)."""
        ks = attr(a, "kernel_shape", "ints", k_default, where)
        strides = attr(a, "strides", "ints", [1, 1], where)
        dil = attr(a, "dilations", "ints", [1, 1], where)
        pads = attr(a, "pads", "ints", [0, 0, 0, 0], where)
        auto = attr(a, "auto_pad", "string", "NOTSET", where)
        if ks is None or len(ks) != 2 or len(strides) != 2 or len(dil) != 2 or len(pads) != 4:
            raise UserError(f"{where}: npdc imports 2-D windows only")
        if ks[0] != ks[1] or strides[0] != strides[1] or dil[0] != dil[1]:
            raise UserError(f"{where}: kernel {ks}, strides {strides}, dilations {dil}: npdc imports square ones")
        if auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            span = dil[0] * (ks[0] - 1) + 1
            pads = [max(0, span - strides[0]) // 2] * 4
            if (span - strides[0]) % 2 and span > strides[0]:
                raise UserError(f"{where}: auto_pad {auto} pads unevenly, which npdc does not import")
        elif auto != "NOTSET":
            raise UserError(f"{where}: auto_pad {auto[:20]!r}")
        if len(set(pads)) != 1:
            raise UserError(f"{where}: pads {pads}: npdc imports equal padding on every side")
        return ks[0], strides[0], pads[0], dil[0]

    def _load(self, net):
        for name, weights in self.weights.items():
            layer = net.layers[name]
            for key, value in weights.items():
                store = layer.buffers if key in layer.buffers else layer.params
                if store[key].shape != value.shape:
                    raise UserError(f"{self.source}: layer {name} needs {key} of shape {store[key].shape}, "
                                    f"the file gives {value.shape}")
                store[key] = np.ascontiguousarray(value, np.float32)
