"""Export a net as an ONNX model (opset 13) through the `onnx` package (optional extra `onnx`).

Operator semantics are those of the ONNX operator reference for opset 13. Each node of the net
becomes the ONNX node of the same meaning, named like it: Conv (kernel, stride, pads, dilations,
group), BatchNormalization (eval mode: running statistics), Relu, PRelu (slope broadcast per
channel), Clip (min and max as inputs, as opset 13 wants), MaxPool (ceil_mode), AveragePool
(count_include_pad=1, npdc's and PyTorch's default), GlobalAveragePool then Flatten, Flatten,
Gemm (transB=1), Identity for dropout, Add, Concat on channels, and the option-A shortcut of
CIFAR ResNets as Slice (steps = stride) then Pad. The model's input is `images`, (N, C, H, W)
float pixels on the [0, 1] scale; the net's normalisation runs first as Sub and Div, so ONNX
Runtime given the same pixels computes npdc's logits. The batch size is left symbolic.
"""

import numpy as np

from npdc.atomic import atomic_path
from npdc.engine.layers import (Add, AvgPool2d, BatchNorm2d, Clip, Concat, Conv2d, Dropout, Flatten,
                                GlobalAvgPool, Linear, MaxPool2d, PReLU, ReLU, ZeroPadShortcut)
from npdc.engine.net import INPUT
from npdc.errors import UserError

try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError:  # the optional extra is not installed
    onnx = None

OPSET = 13
INSTALL = 'install npdc[onnx]: pip install -e ".[onnx]"'


def need_onnx():
    if onnx is None:
        raise UserError(INSTALL)


class _Graph:
    """The ONNX nodes and initializers under construction."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op, inputs, output, name, **attrs):
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attrs))
        return output


def _layer(g, name, layer, xs):
    """Append the ONNX node(s) of one npdc layer reading tensors `xs`; returns the output name."""
    p = {k: v.astype(np.float32) for k, v in layer.params.items()}
    if isinstance(layer, Conv2d):
        ins = xs + [g.const(f"{name}.W", p["W"])] + ([g.const(f"{name}.b", p["b"])] if "b" in p else [])
        k = layer.k
        return g.node("Conv", ins, name, name, kernel_shape=[k, k], strides=[layer.stride] * 2,
                      pads=[layer.padding] * 4, dilations=[layer.dilation] * 2, group=layer.groups)
    if isinstance(layer, BatchNorm2d):
        b = {k: v.astype(np.float32) for k, v in layer.buffers.items()}
        ins = [g.const(f"{name}.{k}", a) for k, a in (("gamma", p["gamma"]), ("beta", p["beta"]),
                                                       ("running_mean", b["running_mean"]),
                                                       ("running_var", b["running_var"]))]
        return g.node("BatchNormalization", xs + ins, name, name, epsilon=layer.eps)
    if isinstance(layer, ReLU):
        return g.node("Relu", xs, name, name)
    if isinstance(layer, PReLU):
        spatial = len(layer.in_shape) - 1
        slope = p["slope"].reshape((-1,) + (1,) * spatial)
        return g.node("PRelu", xs + [g.const(f"{name}.slope", slope)], name, name)
    if isinstance(layer, Clip):
        lo, hi = (g.const(f"{name}.{k}", np.array(v, np.float32)) for k, v in (("lo", layer.lo), ("hi", layer.hi)))
        return g.node("Clip", xs + [lo, hi], name, name)
    if isinstance(layer, (MaxPool2d, AvgPool2d)):
        attrs = dict(kernel_shape=[layer.k] * 2, strides=[layer.stride] * 2, pads=[layer.padding] * 4)
        if isinstance(layer, MaxPool2d):
            return g.node("MaxPool", xs, name, name, ceil_mode=int(layer.ceil), **attrs)
        return g.node("AveragePool", xs, name, name, count_include_pad=1, **attrs)
    if isinstance(layer, GlobalAvgPool):
        pooled = g.node("GlobalAveragePool", xs, f"{name}:4d", f"{name}:pool")
        return g.node("Flatten", [pooled], name, name, axis=1)
    if isinstance(layer, Flatten):
        return g.node("Flatten", xs, name, name, axis=1)
    if isinstance(layer, Linear):
        ins = xs + [g.const(f"{name}.W", p["W"])] + ([g.const(f"{name}.b", p["b"])] if "b" in p else [])
        return g.node("Gemm", ins, name, name, transB=1)
    if isinstance(layer, Dropout):
        return g.node("Identity", xs, name, name)
    if isinstance(layer, Add):
        return g.node("Add", xs, name, name)
    if isinstance(layer, Concat):
        return g.node("Concat", xs, name, name, axis=1)
    if isinstance(layer, ZeroPadShortcut):
        s, front = layer.stride, layer.front
        back = layer.out_channels - layer.in_shape[0] - front
        big = np.iinfo(np.int64).max
        ints = {k: g.const(f"{name}.{k}", np.array(v, np.int64))
                for k, v in (("starts", [0, 0]), ("ends", [big, big]), ("axes", [2, 3]), ("steps", [s, s]),
                             ("pads", [0, front, 0, 0, 0, back, 0, 0]))}
        sub = g.node("Slice", xs + [ints[k] for k in ("starts", "ends", "axes", "steps")], f"{name}:sub",
                     f"{name}:slice")
        return g.node("Pad", [sub, ints["pads"]], name, name)
    raise UserError(f"cannot export layer {name} ({layer.describe()}) to ONNX")


def net_to_onnx(net):
    """The onnx.ModelProto of `net` (checked by onnx's checker)."""
    need_onnx()
    g = _Graph()
    view = (1, -1, 1, 1)
    mean = g.const("input.mean", net.mean.astype(np.float32).reshape(view))
    std = g.const("input.std", net.std.astype(np.float32).reshape(view))
    centred = g.node("Sub", ["images", mean], "input:centred", "input:sub")
    names = {INPUT: g.node("Div", [centred, std], INPUT, "input:div")}
    for name, layer, inputs in net.nodes:
        names[name] = _layer(g, name, layer, [names[i] for i in inputs])
    x = helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", *net.in_shape])
    y = helper.make_tensor_value_info(names[net.output], onnx.TensorProto.FLOAT,
                                      ["N", *net.shapes[net.output]])
    graph = helper.make_graph(g.nodes, str(net.spec.get("arch", "npdc")), [x], [y], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="npdc")
    model.ir_version = min(model.ir_version, 8)  # readable by ONNX Runtimes of the last years
    onnx.checker.check_model(model)
    return model


def export_onnx(net, path):
    """Write `net` as an ONNX file at `path`, atomically."""
    model = net_to_onnx(net)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
