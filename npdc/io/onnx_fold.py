"""An ONNX file's constants, read within the file's Budget, and the constant subgraphs exporters
write for shapes and pads, folded to arrays at import.

Semantics are the ONNX operator reference's (opsets 11 to 21): attributes are read by their
declared type (a wrong type is refused, never coerced), tensors through onnx.numpy_helper once
their declared size has been taken from the Budget, external data from a file beside the model
(never outside its folder). Folding covers Constant, ConstantOfShape, Shape, Gather, Unsqueeze,
Squeeze, Concat, Cast, Transpose, Reshape, Slice, Identity and the integer arithmetic between
them (Add, Sub, Mul, Div). A folded value remembers which of its elements are the batch size, the
one size an exporter leaves symbolic: `Folded.batch` marks them, so `x.view(x.size(0), -1)`
resolves while a pad computed from the batch size is refused as a dynamic shape.
"""

import math
import os

import numpy as np

from npdc.errors import UserError

try:
    from onnx import AttributeProto, TensorProto, numpy_helper
except ImportError:  # the optional extra is not installed; npdc.io.onnx_export says what to do
    AttributeProto = TensorProto = numpy_helper = None

MAX_RANK = 8
MAX_LIST = 64  # elements of an integer list attribute (kernel_shape, pads, perm, ...)
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64,
          9: np.bool_, 10: np.float16, 11: np.float64}  # TensorProto data types folded here
FOLDABLE = ("Constant", "ConstantOfShape", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat",
            "Cast", "Transpose", "Reshape", "Slice", "Identity", "Add", "Sub", "Mul", "Div")


class Folded:
    """A value known at import: `value` (an array) and `batch` (None, or a bool array of its
    shape marking the elements that are the batch size, unknown until run time)."""

    def __init__(self, value, batch=None):
        self.value = np.asarray(value)
        self.batch = None if batch is None or not np.any(batch) else np.asarray(batch, bool)

    def mask(self):
        return np.zeros(self.value.shape, bool) if self.batch is None else self.batch

    def static(self, where):
        """The array, or UserError when part of it is the batch size."""
        if self.batch is not None:
            raise UserError(f"{where} depends on the batch size (a dynamic shape npdc cannot resolve)")
        return self.value


# -- attributes ---------------------------------------------------------------------------------
def attributes(node, where):
    found = {}
    for a in node.attribute:
        if a.name in found:
            raise UserError(f"{where}: attribute {a.name[:40]!r} is given twice")
        found[a.name] = a
    return found


def attr(attrs, name, kind, default, where):
    """Attribute `name` of type kind ("int", "ints", "float", "floats", "string", "tensor")."""
    a = attrs.get(name)
    if a is None:
        return default
    want = {"int": AttributeProto.INT, "ints": AttributeProto.INTS, "float": AttributeProto.FLOAT,
            "floats": AttributeProto.FLOATS, "string": AttributeProto.STRING,
            "tensor": AttributeProto.TENSOR}[kind]
    if a.type != want:
        raise UserError(f"{where}: attribute {name} is not of type {kind}")
    if kind == "int":
        return int(a.i)
    if kind == "float":
        return float(a.f)
    if kind == "string":
        return a.s.decode("utf-8", "replace")
    if kind == "tensor":
        return a.t
    values = a.ints if kind == "ints" else a.floats
    if len(values) > MAX_LIST:
        raise UserError(f"{where}: attribute {name} has {len(values):,} values, more than {MAX_LIST}")
    return [int(v) for v in values] if kind == "ints" else [float(v) for v in values]


# -- tensors --------------------------------------------------------------------------------------
def tensor_array(t, budget, where, folder):
    """The array of a TensorProto, its declared size taken from `budget` first; external data is
    read from `folder` (the model's), from a relative path that stays inside it."""
    dtype = DTYPES.get(t.data_type)
    if dtype is None:
        raise UserError(f"{where}: tensor {t.name[:60]!r} has data type {t.data_type}, which npdc does not read")
    dims = list(t.dims)
    if len(dims) > MAX_RANK or any(d < 0 for d in dims):
        raise UserError(f"{where}: tensor {t.name[:60]!r} declares dims {dims[:MAX_RANK + 1]}")
    count = math.prod(dims)
    budget.take(count * np.dtype(dtype).itemsize, f"tensor {t.name[:60]!r} ({count:,} elements)")
    if t.data_location == TensorProto.EXTERNAL:
        return _external(t, dims, dtype, where, folder)
    try:
        a = numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 -- onnx raises many kinds on damaged tensors
        raise UserError(f"{where}: tensor {t.name[:60]!r} cannot be read ({str(e).splitlines()[0][:80]})") from None
    if a.shape != tuple(dims):
        raise UserError(f"{where}: tensor {t.name[:60]!r} holds {a.size:,} values for dims {dims}")
    return a


def _external(t, dims, dtype, where, folder):
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    parts = location.replace("\\", "/").split("/")
    if not location or os.path.isabs(location) or ".." in parts:
        raise UserError(f"{where}: external data of {t.name[:60]!r} at {location[:80]!r} is not a file beside the model")
    path = os.path.join(folder, *parts)
    if not os.path.isfile(path):
        raise UserError(f"{where}: external-data file {location[:80]} of tensor {t.name[:60]!r} is missing")
    nbytes = math.prod(dims) * np.dtype(dtype).itemsize
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
    except ValueError:
        raise UserError(f"{where}: external data of {t.name[:60]!r} has an offset or length that is not a number") from None
    if offset < 0 or length != nbytes or offset + length > os.path.getsize(path):
        raise UserError(f"{where}: external data of {t.name[:60]!r} ({location[:80]}, offset {offset}, "
                        f"length {length}) does not hold its {nbytes:,} bytes")
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    return np.frombuffer(data, np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(dims)


# -- folding --------------------------------------------------------------------------------------
def _axis(a, rank, where):
    if not -rank <= a < max(rank, 1):
        raise UserError(f"{where}: axis {a} is outside a rank-{rank} tensor")
    return a % max(rank, 1)


def _ints(f, where, what):
    v = f.static(f"{where}: {what}")
    if v.dtype.kind not in "iu" or v.ndim > 1:
        raise UserError(f"{where}: {what} is not a list of whole numbers")
    return [int(i) for i in v.reshape(-1)]


def _room(shape, dtype, budget, where):
    count = math.prod(shape)
    node = where.removeprefix(f"{budget.name}: ")
    budget.take(count * np.dtype(dtype).itemsize, f"the folded result of {node} ({count:,} elements)")


def reshape_target(shape, target, allowzero, where):
    """The shape that ONNX Reshape of a `shape` tensor to `target` produces (0 copies, -1 infers)."""
    out = [shape[i] if (t == 0 and not allowzero and i < len(shape)) else t for i, t in enumerate(target)]
    if out.count(-1) > 1 or any(t < -1 for t in out) or len(out) > MAX_RANK:
        raise UserError(f"{where}: Reshape target {target[:MAX_RANK + 1]} is not a shape")
    known, total = math.prod(t for t in out if t != -1), math.prod(shape)
    if -1 in out:
        if known == 0 or total % known:
            raise UserError(f"{where}: cannot reshape {list(shape)} to {target}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise UserError(f"{where}: cannot reshape {list(shape)} to {target}")
    return out


def slices(rank, starts, ends, axes, steps, where):
    """Python slices of ONNX Slice's starts/ends/axes/steps on a rank-`rank` tensor."""
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise UserError(f"{where}: Slice's starts, ends, axes and steps differ in length")
    index = [slice(None)] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise UserError(f"{where}: Slice step 0")
        index[_axis(a, rank, where)] = slice(s, e, st)
    return tuple(index)


def _arith(op, a, b, where):
    if op == "Div" and a.dtype.kind in "iu":
        if np.any(b == 0):
            raise UserError(f"{where}: integer division by zero")
        q = np.abs(a) // np.abs(b)
        return (np.sign(a) * np.sign(b) * q).astype(np.result_type(a, b))  # ONNX truncates
    return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, b)


def fold(node, ins, opset, budget, where, folder):
    """The Folded outputs of a FOLDABLE node whose inputs `ins` (Folded, or None for an omitted
    optional input) are all known."""
    op, attrs = node.op_type, attributes(node, where)
    x = ins[0] if ins else None
    if op == "Constant":
        return [_constant(attrs, budget, where, folder)]
    if x is None:
        raise UserError(f"{where}: {op} has no input")
    v, m = x.value, x.mask()
    if op in ("Add", "Sub", "Mul", "Div"):
        if len(ins) != 2 or ins[1] is None:
            raise UserError(f"{where}: {op} needs two inputs")
        b = ins[1]
        try:
            shape = np.broadcast_shapes(v.shape, b.value.shape)
        except ValueError:
            raise UserError(f"{where}: {op} of shapes {v.shape} and {b.value.shape}") from None
        _room(shape, np.result_type(v, b.value), budget, where)
        with np.errstate(all="ignore"):
            return [Folded(_arith(op, v, b.value, where), m | b.mask())]
    if op == "Identity":
        return [x]
    if op == "Cast":
        to = attr(attrs, "to", "int", None, where)
        if to not in DTYPES:
            raise UserError(f"{where}: Cast to data type {to}, which npdc does not read")
        with np.errstate(all="ignore"):
            return [Folded(v.astype(DTYPES[to]), x.batch)]
    if op == "ConstantOfShape":
        shape = _ints(x, where, "ConstantOfShape's shape")
        if any(d < 0 for d in shape) or len(shape) > MAX_RANK:
            raise UserError(f"{where}: ConstantOfShape of shape {shape[:MAX_RANK + 1]}")
        t = attr(attrs, "value", "tensor", None, where)
        fill = np.zeros(1, np.float32) if t is None else tensor_array(t, budget, where, folder)
        if fill.size != 1:
            raise UserError(f"{where}: ConstantOfShape's value is not one element")
        _room(shape, fill.dtype, budget, where)
        return [Folded(np.full(shape, fill.reshape(-1)[0], fill.dtype))]
    if op == "Gather":
        idx = ins[1].static(f"{where}: Gather's indices") if len(ins) > 1 and ins[1] is not None else None
        if idx is None or idx.dtype.kind not in "iu":
            raise UserError(f"{where}: Gather needs whole-number indices")
        axis = _axis(attr(attrs, "axis", "int", 0, where), v.ndim, where)
        if v.ndim == 0 or np.any(idx < -v.shape[axis]) or np.any(idx >= v.shape[axis]):
            raise UserError(f"{where}: Gather index outside the data")
        _room(v.shape[:axis] + idx.shape + v.shape[axis + 1:], v.dtype, budget, where)
        return [Folded(np.take(v, idx, axis), np.take(m, idx, axis))]
    if op in ("Unsqueeze", "Squeeze"):
        axes = attr(attrs, "axes", "ints", None, where) if opset < 13 else (
            _ints(ins[1], where, f"{op}'s axes") if len(ins) > 1 and ins[1] is not None else None)
        if op == "Unsqueeze":
            if axes is None:
                raise UserError(f"{where}: Unsqueeze without axes")
            rank = v.ndim + len(axes)
            axes = sorted(_axis(a, rank, where) for a in axes)
            if len(set(axes)) != len(axes) or rank > MAX_RANK:
                raise UserError(f"{where}: Unsqueeze axes {axes}")
            return [Folded(np.expand_dims(v, tuple(axes)), np.expand_dims(m, tuple(axes)))]
        axes = tuple(_axis(a, v.ndim, where) for a in axes) if axes else tuple(
            i for i, d in enumerate(v.shape) if d == 1)
        if any(v.shape[a] != 1 for a in axes):
            raise UserError(f"{where}: Squeeze of an axis whose size is not 1")
        return [Folded(np.squeeze(v, axes), np.squeeze(m, axes))]
    if op == "Concat":
        if any(i is None for i in ins):
            raise UserError(f"{where}: Concat of an empty input")
        axis = _axis(attr(attrs, "axis", "int", None, where) or 0, v.ndim, where)
        try:
            return [Folded(np.concatenate([i.value for i in ins], axis), np.concatenate([i.mask() for i in ins], axis))]
        except ValueError:
            raise UserError(f"{where}: Concat of shapes {[i.value.shape for i in ins]}") from None
    if op == "Transpose":
        perm = attr(attrs, "perm", "ints", list(range(v.ndim))[::-1], where)
        if sorted(perm) != list(range(v.ndim)):
            raise UserError(f"{where}: Transpose perm {perm} of a rank-{v.ndim} tensor")
        return [Folded(np.transpose(v, perm), np.transpose(m, perm))]
    if op == "Reshape":
        target = _ints(ins[1], where, "Reshape's shape") if len(ins) > 1 and ins[1] is not None else None
        if target is None:
            raise UserError(f"{where}: Reshape without a shape")
        shape = reshape_target(v.shape, target, attr(attrs, "allowzero", "int", 0, where), where)
        return [Folded(v.reshape(shape), m.reshape(shape))]
    if op == "Slice":
        lists = [_ints(i, where, "Slice's " + k) if i is not None else None
                 for i, k in zip(ins[1:5], ("starts", "ends", "axes", "steps"))]
        lists += [None] * (4 - len(lists))
        if lists[0] is None or lists[1] is None:
            raise UserError(f"{where}: Slice without starts and ends")
        index = slices(v.ndim, *lists, where)
        return [Folded(v[index].copy(), m[index].copy())]
    if op == "Shape":
        start, end = attr(attrs, "start", "int", 0, where), attr(attrs, "end", "int", None, where)
        return [Folded(np.array(v.shape, np.int64)[start:end])]
    raise UserError(f"{where}: op {op} cannot be folded")


def _constant(attrs, budget, where, folder):
    if len(attrs) != 1:
        raise UserError(f"{where}: Constant needs exactly one value attribute")
    name = next(iter(attrs))
    if name == "value":
        return Folded(tensor_array(attr(attrs, name, "tensor", None, where), budget, where, folder))
    kinds = {"value_float": ("float", np.float32), "value_floats": ("floats", np.float32),
             "value_int": ("int", np.int64), "value_ints": ("ints", np.int64)}
    if name not in kinds:
        raise UserError(f"{where}: Constant's {name[:40]} is not supported")
    kind, dtype = kinds[name]
    return Folded(np.array(attr(attrs, name, kind, None, where), dtype))


def shape_of(dims, start=0, end=None):
    """Folded value of ONNX Shape on an activation of shape (batch, *dims)."""
    value = np.array([1, *dims], np.int64)[start:end]
    batch = np.array([True] + [False] * len(dims))[start:end]
    return Folded(value, batch)
