"""Net: named layers over a DAG, addressed by parameter path (`res2a_2a.W`).

Nodes are kept in the order they were added, which is a topological order because a node may only
read nodes added before it; forward walks that list, backward walks it in reverse and sums the
gradients of outputs read by more than one node (the residual fork). At inference, layers with a
`forward_into` write their output over an input that nothing reads afterwards. A ReLU whose input
only it reads, from a batch norm or a residual add, is applied by that layer in its own pass, in
training too (see _absorbed_relus).
"""

import numpy as np

from npdc.engine.layers.activation import ReLU
from npdc.engine.layers.base import sum_gradients
from npdc.engine.layers.conv import Conv2d
from npdc.errors import UserError
from npdc.engine.images import as_float

INPUT = "input"


def _spare(outs, uses, keep, name):
    """Whether an eval-mode layer may write its output over outs[name]: this reader is its last,
    nobody asked to keep it, it is not the caller's input, and no other live output shares its
    memory (a layer may return a view of its input). Saves a full pass of memory traffic per
    batch norm, ReLU and residual add at inference."""
    a = outs[name]
    if name == INPUT or name in keep or uses[name] != 1 or not (a.flags.c_contiguous and a.flags.writeable):
        return False
    return not any(np.may_share_memory(a, b) for k, b in outs.items() if k != name)


class Net:
    def __init__(self, spec, in_shape):
        self.spec = dict(spec)          # how to rebuild this net from the registry (JSON-able)
        self.in_shape = tuple(in_shape)
        self.nodes: list[tuple[str, object, tuple[str, ...]]] = []
        self.layers: dict[str, object] = {}
        self.shapes: dict[str, tuple] = {INPUT: self.in_shape}
        self.mean = np.zeros(self.in_shape[0], np.float32)  # input normalisation, stored with the model
        self.std = np.ones(self.in_shape[0], np.float32)
        self._absorbed = {}  # ReLU node -> the node that applied it, in the last forward

    # -- construction ----------------------------------------------------------------------
    def add(self, name, layer, inputs=None, rng=None):
        """Append a layer reading `inputs` (default: the previous node) and build it now."""
        if name in self.shapes:
            raise ValueError(f"duplicate node name {name!r}")
        if inputs is None:
            inputs = (self.nodes[-1][0] if self.nodes else INPUT,)
        elif isinstance(inputs, str):
            inputs = (inputs,)
        inputs = tuple(inputs)
        in_shapes = [self.shapes[i] for i in inputs]
        self.shapes[name] = layer.build(in_shapes if len(inputs) > 1 else in_shapes[0], rng)
        self.nodes.append((name, layer, inputs))
        self.layers[name] = layer
        return name

    @property
    def output(self):
        return self.nodes[-1][0]

    # -- computation -----------------------------------------------------------------------
    def forward(self, x, train=False, keep=()):
        """x: normalised (N, *in_shape) -> output of the last node; with `keep`, also a dict of
        the named intermediate outputs (e.g. the fc5 embedding for distillation)."""
        outs = {INPUT: x}
        uses = self._uses()
        self._absorbed = absorbed = self._absorbed_relus(uses, keep)
        rectify = set(absorbed.values())
        for name, layer, inputs in self.nodes:
            xs = [outs[i] for i in inputs]
            arg = xs if len(xs) > 1 else xs[0]
            flag = {"relu": True} if name in rectify else {}
            into = None if train else getattr(layer, "forward_into", None)
            if name in absorbed:  # the layer before has applied it already
                outs[name] = arg
            elif into is not None and _spare(outs, uses, keep, inputs[0]):
                outs[name] = into(arg, **flag)
            else:
                outs[name] = layer.forward(arg, train, **flag)
            for i in inputs:
                uses[i] -= 1
                if uses[i] == 0 and i not in keep:
                    del outs[i]
        y = outs[self.output]
        return (y, {k: outs[k] for k in keep}) if keep else y

    def backward(self, dy, extra=None, input_grad=False):
        """Backpropagate dy (gradient of the output); `extra` adds gradients at kept nodes.
        Returns the gradient at the input when input_grad, else None: training never uses it,
        so a convolution reading the input then computes its weight gradient only (at
        ImageNet size the stem's data gradient is a large share of its backward)."""
        pending = {self.output: [dy]}  # node -> its gradient's parts, one per reader
        for name, g in (extra or {}).items():
            pending.setdefault(name, []).append(g)
        for name, layer, inputs in reversed(self.nodes):
            parts = pending.pop(name)
            if name in self._absorbed:  # the layer before masks the parts' sum
                pending.setdefault(inputs[0], []).extend(parts)
                continue
            g = parts if len(parts) > 1 and layer.sums_gradient_parts else sum_gradients(parts)
            if not input_grad and inputs == (INPUT,) and isinstance(layer, Conv2d):
                layer.backward(g, need_dx=False)
                continue
            dxs = layer.backward(g)
            for i, dx in zip(inputs, [dxs] if len(inputs) == 1 else dxs):
                pending.setdefault(i, []).append(dx)
        self._settle_grads()
        return sum_gradients(pending[INPUT]) if input_grad and INPUT in pending else None

    def _absorbed_relus(self, uses, keep):
        """{ReLU node: the node before it} for each ReLU whose input only it reads, from a layer
        that can apply it in its own pass (batch norm, residual add), unless that input is kept:
        each such pair saves the ReLU's passes over the tensor, forward and backward."""
        found = {}
        for name, layer, inputs in self.nodes:
            src = inputs[0]
            if (type(layer) is ReLU and src != INPUT and uses[src] == 1 and src not in keep
                    and getattr(self.layers[src], "absorbs_relu", False)):
                found[name] = src
        return found

    def _uses(self):
        uses = {INPUT: 0}
        for name, _, inputs in self.nodes:
            uses[name] = 0
            for i in inputs:
                uses[i] += 1
        uses[self.output] += 1  # the result is never freed
        return uses

    def preprocess(self, x):
        """Raw images (uint8 or float) -> the normalised float32 input the net was trained on."""
        x = as_float(x)
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def predict(self, x, batch_size=256):
        """Logits for raw images, in eval mode, in batches."""
        outs = [self.forward(self.preprocess(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0,) + self.shapes[self.output], np.float32)

    # -- parameters by path ----------------------------------------------------------------
    def _paths(self, attr):
        return {f"{n}.{k}": v for n, layer, _ in self.nodes for k, v in getattr(layer, attr).items()}

    def params(self):
        return self._paths("params")

    def grads(self):
        self._settle_grads()
        return self._paths("grads")

    def buffers(self):
        return self._paths("buffers")

    def zero_grad(self):
        """Make every gradient read as zero from the next backward or `grads()` on: the arrays are
        only marked (Layer.unset_grad), and the backward stores each layer's first gradient where
        it would have added it to zeros (the same bits, a pass less over each array and no zeroing
        pass). Arrays held from an earlier `grads()` (an optimizer's) read as zero once the next
        backward has run; in between they still hold the last step's values."""
        for _, layer, _ in self.nodes:
            layer.unset_grad()

    def _settle_grads(self):
        for _, layer, _ in self.nodes:
            layer.settle_grads()

    def astype(self, dtype):
        for _, layer, _ in self.nodes:
            layer.astype(dtype)
        return self

    def state_dict(self):
        """Copies of every parameter and buffer, keyed by path, plus the input normalisation."""
        state = {k: v.copy() for k, v in {**self.params(), **self.buffers()}.items()}
        state["input.mean"], state["input.std"] = self.mean.copy(), self.std.copy()
        return state

    def load_state_dict(self, state):
        """Load arrays by path; the first missing, unexpected or mis-shaped entry is a UserError."""
        expected = {**self.params(), **self.buffers(), "input.mean": self.mean, "input.std": self.std}
        for path in expected:
            if path not in state:
                raise UserError(f"model state lacks {path}")
        for path in state:
            if path not in expected:
                raise UserError(f"model state has unexpected entry {path}")
        for path, ref in expected.items():
            arr = np.asarray(state[path])
            if arr.shape != ref.shape:
                raise UserError(f"{path} has shape {arr.shape}, the architecture needs {ref.shape}")
        for path, arr in state.items():
            node, key = path.rsplit(".", 1)
            arr = np.array(arr, dtype=np.float32)
            if node == INPUT:
                setattr(self, key, arr)
                continue
            layer = self.layers[node]
            (layer.params if key in layer.params else layer.buffers)[key] = arr
        for _, layer, _ in self.nodes:
            layer.zero_grad()  # written now: an optimizer may hold the arrays

    # -- description -----------------------------------------------------------------------
    def summary(self):
        """One row per layer: name, kind, output shape, parameters, MACs per image."""
        return [dict(name=n, kind=layer.describe(), shape=self.shapes[n],
                     params=sum(p.size for p in layer.params.values()), macs=layer.macs())
                for n, layer, _ in self.nodes]

    def num_params(self):
        return sum(p.size for p in self.params().values())

    def macs(self):
        return sum(layer.macs() for _, layer, _ in self.nodes)
