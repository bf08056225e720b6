"""An inference plan, built once per model and batch size: which fused steps run, in what order,
and where in one activation arena each step writes.

Fusion. A batch norm after a conv or linear layer is folded into it (Ioffe & Szegedy 2015: in
eval mode BN is the per-channel affine map y = x*scale + shift, with scale = gamma/sqrt(var+eps),
shift = beta - mean*scale, from npdc.engine.layers.batchnorm.inference_affine; the plan composes
it with the layer's bias in float64 and rounds the result to float32 once); a residual add is folded into the conv that produces one of its
inputs, the other becoming a residual read in the conv's tail (the option-A zero-pad shortcut of
He et al. 2016 is folded into that read, so it never gets a buffer); a ReLU or PReLU after either
becomes the tail's activation. Flatten is a view. Any other layer runs as a generic step that
calls the layer's own forward.

Memory. Each value (the input, each step's output) is live from the step that writes it to the
last step that reads it: liveness analysis as in register allocation (Aho et al., "Compilers",
ch. 9). A conv whose identity residual dies at that conv writes over it in place. Values get
offsets in one arena by the greedy-by-size placement of Pisarchyk & Lee 2020 ("Efficient Memory
Management for Deep Neural Net Inference"): largest first, each at the lowest offset that no
value with an overlapping lifetime occupies; values that never overlap share memory, the
interval-graph colouring view of the problem. The largest sum of live sizes over the steps is a
lower bound no placement can beat (`lower_bound`); the arena is compared with it.
"""

from dataclasses import dataclass, field

import numpy as np

from npdc.engine.layers import (Add, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool, Linear, PReLU,
                                ReLU, ZeroPadShortcut)
from npdc.engine.layers.batchnorm import inference_affine
from npdc.engine.net import INPUT
from npdc.kernels.fused import RES_IDENTITY, RES_NONE, RES_ZEROPAD

TILE_FLOATS = 8192  # floats of one im2col or accumulator tile per thread (32 KiB: stays in L1/L2)


@dataclass
class Step:
    """One kernel call. kind: "conv", "linear", "pool" or "layer" (a generic layer forward, kept
    in `layer`). `name` is the node of the conv/linear, whose weight is `name.W` of w_shape; `inputs` the value it
    reads (one), `residual` the value added in the tail (or None); `output` the value written."""
    kind: str
    name: str
    layer: object
    inputs: list
    output: str
    nodes: list = field(default_factory=list)
    scale: np.ndarray = None
    shift: np.ndarray = None
    act: bool = False
    slopes: np.ndarray = None
    residual: str = None
    res_mode: int = RES_NONE
    res_front: int = 0
    res_stride: int = 1
    inplace: bool = False
    w_shape: tuple = None
    stride: int = 1
    pad: int = 0
    primitive: str = None  # the conv plan's choice for the layer (npdc tune), None = default

    def reads(self):
        return self.inputs + ([self.residual] if self.residual else [])


@dataclass
class Value:
    """An activation: per-image shape; lifetime [first, last] in step indices (-1 = before the
    first step, n_steps = returned to the caller); offset (floats per image) in the arena."""
    name: str
    shape: tuple
    first: int
    last: int = -1
    offset: int = -1
    shares: str = None  # the value whose memory it is written over (in-place)

    @property
    def size(self):
        return int(np.prod(self.shape))


class Plan:
    """Steps, values and their arena offsets for batches of up to `batch` images."""

    def __init__(self, net, batch=1, tile_floats=TILE_FLOATS):
        self.batch, self.tile_floats = int(batch), int(tile_floats)
        self.in_shape = tuple(net.in_shape)
        self.mean, self.std = net.mean.astype(np.float32), net.std.astype(np.float32)
        self.steps = _fuse(net)
        self.values = _liveness(net, self.steps)
        self.output = self.steps[-1].output
        self.arena_size = _place(self.values)  # floats per image
        self.lower_bound = lower_bound(self.values, len(self.steps))

    def root(self, name):
        while self.values[name].shares:
            name = self.values[name].shares
        return name

    def write_apart(self, names):
        """Give the values `names`, written in place over their residual, memory of their own (a
        runtime whose layouts differ between the two), and place the arena again."""
        for step in self.steps:
            if step.output in names:
                step.inplace = False
                self.values[step.output].shares = None
        self.arena_size = _place(self.values)
        self.lower_bound = lower_bound(self.values, len(self.steps))

    def activation_bytes(self):
        """Bytes of the arena for `batch` images."""
        return 4 * self.batch * self.arena_size


# -- fusion -------------------------------------------------------------------------------------
def _consumers(net):
    count = {INPUT: 0}
    for name, _, inputs in net.nodes:
        count[name] = 0
        for i in inputs:
            count[i] += 1
    count[net.output] += 1
    return count


def _fuse(net):
    consumers, alias, producer, steps = _consumers(net), {}, {}, []

    def sole(value, kinds):
        """The step writing `value` if it is of `kinds` and nothing else reads the value."""
        step = producer.get(value)
        ok = step is not None and step.kind in kinds and consumers.get(value) == 1
        return step if ok else None

    def rename(step, name, node):
        del producer[step.output]
        step.output, producer[name] = name, step
        step.nodes.append(node)

    for name, layer, inputs in net.nodes:
        ins = [alias.get(i, i) for i in inputs]
        if isinstance(layer, Flatten):
            alias[name] = ins[0]
            consumers[ins[0]] += consumers[name] - 1
            continue
        plain_conv = isinstance(layer, Conv2d) and layer.groups == 1 and layer.dilation == 1
        if isinstance(layer, Linear) or plain_conv:  # grouped and dilated convs run as layers
            o = layer.params["W"].shape[0]
            b = layer.params.get("b", np.zeros(o, np.float32))
            step = Step("conv" if isinstance(layer, Conv2d) else "linear", name, None, ins, name,
                        [name], np.ones(o, np.float64), b.astype(np.float64), False, np.zeros(o, np.float32))
            step.w_shape = tuple(layer.params["W"].shape)  # the plan keeps no weights
            if isinstance(layer, Conv2d):
                step.stride, step.pad, step.primitive = layer.stride, layer.padding, layer.primitive
            steps.append(step)
            producer[name] = step
            continue
        step = sole(ins[0], ("conv", "linear"))
        if isinstance(layer, BatchNorm2d) and step and not step.act and not step.residual:
            scale, shift = inference_affine(layer.params["gamma"], layer.params["beta"],
                                            layer.buffers["running_mean"], layer.buffers["running_var"],
                                            layer.eps)
            step.scale, step.shift = step.scale * scale, step.shift * scale + shift
            rename(step, name, name)
            continue
        if isinstance(layer, (ReLU, PReLU)) and step and not step.act:
            step.act = True
            if isinstance(layer, PReLU):
                step.slopes = layer.params["slope"].astype(np.float32)
            rename(step, name, name)
            continue
        if isinstance(layer, Add) and _fuse_add(steps, producer, sole, ins, name):
            continue
        kind = "pool" if isinstance(layer, GlobalAvgPool) else "layer"
        step = Step(kind, name, layer, ins, name, [name])
        steps.append(step)
        producer[name] = step
    for step in steps:
        if step.kind in ("conv", "linear"):
            step.scale, step.shift = step.scale.astype(np.float32), step.shift.astype(np.float32)
    return steps


def _fuse_add(steps, producer, sole, ins, name):
    """Fold Add(ins) into the latest conv writing one input; the other becomes its residual."""
    candidates = []
    for target, other in ((ins[0], ins[1]), (ins[1], ins[0])):
        step = sole(target, ("conv",))
        if step and not step.act and not step.residual:
            candidates.append((steps.index(step), step, other))
    for index, step, other in sorted(candidates, key=lambda c: -c[0]):
        mode, front, stride, source = RES_IDENTITY, 0, 1, other
        pad = sole(other, ("layer",))
        if pad is not None and isinstance(pad.layer, ZeroPadShortcut):
            mode, front, stride, source = RES_ZEROPAD, pad.layer.front, pad.layer.stride, pad.inputs[0]
        writer = producer.get(source)
        if writer is not None and steps.index(writer) >= index:
            continue  # the residual would be written after the conv that reads it
        if mode == RES_ZEROPAD:
            steps.remove(pad)
            del producer[other]
            step.nodes.extend(pad.nodes)
        step.residual, step.res_mode, step.res_front, step.res_stride = source, mode, front, stride
        del producer[step.output]
        step.output, producer[name] = name, step
        step.nodes.append(name)
        return True
    return False


# -- liveness and placement -----------------------------------------------------------------------
def _liveness(net, steps):
    values = {INPUT: Value(INPUT, tuple(net.in_shape), -1)}
    for t, step in enumerate(steps):
        for name in step.reads():
            values[name].last = t
        node = step.nodes[-1]
        values[step.output] = Value(step.output, tuple(net.shapes[node]), t)
    values[steps[-1].output].last = len(steps)
    for t, step in enumerate(steps):
        res = values.get(step.residual)
        if (step.res_mode == RES_IDENTITY and res.last == t and step.residual not in step.inputs
                and res.shape == values[step.output].shape):
            step.inplace = True
            values[step.output].shares = step.residual
    return values


def _intervals(values):
    """{root: (first, last, size)} of each group of values that share memory."""
    spans = {}
    for v in values.values():
        root = v.name
        while values[root].shares:
            root = values[root].shares
        f, last, size = spans.get(root, (v.first, v.last, v.size))
        spans[root] = (min(f, v.first), max(last, v.last), max(size, v.size))
    return spans


def _place(values):
    """Greedy by size: give every group an offset; returns the arena size in floats."""
    spans = _intervals(values)
    placed, offsets = [], {}
    for root, (first, last, size) in sorted(spans.items(), key=lambda kv: (-kv[1][2], kv[1][0])):
        busy = sorted((offsets[r], offsets[r] + spans[r][2]) for r in placed
                      if spans[r][0] <= last and first <= spans[r][1])
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        offsets[root] = offset
        placed.append(root)
    for v in values.values():
        root = v.name
        while values[root].shares:
            root = values[root].shares
        v.offset = offsets[root]
    return max((offsets[r] + spans[r][2] for r in spans), default=0)


def lower_bound(values, n_steps):
    """The largest total size (floats per image) of the groups live at any one step."""
    spans = _intervals(values).values()
    return max(sum(size for first, last, size in spans if first <= t <= last)
               for t in range(-1, n_steps + 1))


def overlaps(plan):
    """Pairs of values whose lifetimes overlap and whose arena ranges intersect, other than a
    value written in place over another: what a correct placement never has."""
    spans = _intervals(plan.values)
    roots = sorted(spans)
    offsets = {r: plan.values[r].offset for r in roots}
    bad = []
    for i, a in enumerate(roots):
        for b in roots[i + 1:]:
            (fa, la, sa), (fb, lb, sb) = spans[a], spans[b]
            if fa <= lb and fb <= la and offsets[a] < offsets[b] + sb and offsets[b] < offsets[a] + sa:
                bad.append((a, b))
    return bad


LINE = 64  # bytes of a cache line, and of an AVX-512 vector


def aligned_zeros(shape, dtype):
    """A zeroed array whose data starts on a LINE-byte boundary, and whose rows do too when it is
    2-D (each row's length rounded up to whole lines; the kernels index a thread's row and read
    no further than they asked for). Why: NumPy starts a large array 16 bytes into a line, and
    a vector load or store that crosses a line costs two; the arena's values and the threads'
    workspace rows then start on lines wherever malloc put them (the within-run comparison is in
    docs/perf.md). Inside a compiled kernel, npdc.kernels.fused_winograd.aligned_rows does the
    same for a workspace the kernel allocates itself."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    if len(shape) == 2:
        per_line = LINE // dtype.itemsize
        shape = (shape[0], -(-shape[1] // per_line) * per_line)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(size + LINE, np.uint8)
    skip = (-raw.ctypes.data) % LINE
    return raw[skip:skip + size].view(dtype).reshape(shape)
