"""Run a plan (npdc.runtime.plan) from a .npdc file: every array is allocated when the runtime is
built; a forward pass writes only into the arena and the shared workspace (except on the dense
batch path below).

Kernels: conv and linear steps call npdc.kernels.fused (dense weights) or npdc.kernels.sparse
(sparse and streamed weights); both lower tiles of output rows into one shared column workspace.
The exception is throughput: dense weights with a batch plan run each conv through the engine's
primitive for the layer (the model's conv plan from `npdc tune`, else the engine default), which
allocates its own output and scratch, and then the tail. Each step's kernel call is bound once
with its arena views, so a full batch costs one Python call per step.
"""

import functools
import os

import numba
import numpy as np

from npdc.codec.model import load_compressed, read_model_file
from npdc.engine.net import INPUT
from npdc.errors import UserError
from npdc.engine.images import as_float
from npdc.kernels.conv import choose_primitive, conv2d_forward
from npdc.kernels.fused import (Tail, conv_dense, conv_dense_s1, finish_planes, finish_rows,
                               global_avg_pool, linear_direct, pad_input, scratch_sizes)
from npdc.kernels.fused_blocked import blocked_scratch
from npdc.kernels.fused_direct import flat_scratch, phase_scratch
from npdc.kernels.fused_pointwise import pointwise_floats
from npdc.kernels.sparse import conv_sparse, linear_sparse
from npdc.kernels.sparse_passes import decode_floats
from npdc.kernels.sparse_s1 import band_floats, conv_sparse_s1, in_bands, plane_shape, sparse_takes
from npdc.kernels.walk import OP_HOST
from npdc.runtime.plan import Plan, aligned_zeros
from npdc.runtime.program import Program
from npdc.runtime.weights import MODES, DenseWeights, SparseWeights, StreamWeights


LONG_SPAN = 512  # stride-1 convs with shorter runs per weight (small planes) use tiles of
                 # im2col columns instead
BATCH_TILE_FLOATS = 1 << 18  # sparse batches: whole-image tiles (memory is not the point there)
WALKS = ("compiled", "python")
WALK_ENV = "NPDC_RUNTIME_WALK"


class Runtime:
    """A plan with its weights, arena and workspace; `predict(images)` gives logits.

    `walk` says who walks the steps (choose_walk decides): "compiled" runs the plan's Program
    (npdc.runtime.program) through npdc.kernels.walk, Python only at host steps; "python" calls
    one bound kernel per step from Python, the reference the compiled walk is tested against.
    `stores` are the weight stores by storage ("dense", "sparse"; "auto" holds both until the
    program picks one per layer)."""

    def __init__(self, plan, weights, walk="compiled", choice="measure", stores=None):
        self.plan, self.weights = plan, weights
        self.stores = stores or {weights.mode: weights}
        self.mode = "auto" if len(self.stores) > 1 else weights.mode
        B, steps = plan.batch, plan.steps
        self.arena = aligned_zeros(B * plan.arena_size, np.float32)
        self.threads = numba.config.NUMBA_NUM_THREADS  # thread ids index the scratch rows
        self.throughput = weights.mode == "dense" and B > 1  # the Python walk: engine convs, GEMMs
        self.primitives = {}  # conv step -> the engine primitive it runs on the host
        self.walk = choose_walk(self.mode, walk)
        direct = ("flat", "phases", "blocked", "pointwise") \
            if self.walk == "compiled" and "dense" in self.stores else ()
        sparse = self.stores.get("sparse")  # the longest row of each sparse conv, for its decoding
        self.longest_rows = {s.name: int(np.diff(sparse.get(s)[0]).max(initial=0))
                             for s in steps if s.kind == "conv" and isinstance(sparse, SparseWeights)}
        self._scratch(lambda s: ("tiled", "runs") + direct,  # every candidate, for measuring
                      lambda s: set(self.stores))
        linear = [s.w_shape[0] for s in steps if s.kind == "linear"]
        self.rows = np.zeros((B, max(linear, default=1)) if B > 1 else (1, 1), np.float32)
        self.no_res = np.zeros((1, 1, 1, 1), np.float32)
        self.program = Program(self, choice) if self.walk == "compiled" else None
        if self.program is not None:
            self._drop_packed()
            kernels = self.program.kernels()  # only what runs
            self._scratch(lambda s: kernels[s.name][:1], lambda s: {kernels[s.name][1]})
        self.calls = self._bind(B)

    def _scratch(self, kernels, kinds):
        """Allocate the conv workspace for the fused kernels each conv step may run (kernels(step)
        names them: "tiled", "runs", "flat", "phases", "blocked", "pointwise"; "host" and
        "winograd", which allocates its own, need none), on the weight storages kinds(step) names
        ("dense", "sparse")."""
        plan, convs, padded, direct_accs, decode = self.plan, [], 1, [], 0
        for s in plan.steps:
            if s.kind != "conv":
                continue
            c, h, w = plan.values[s.inputs[0]].shape
            shape = (c * s.w_shape[2] * s.w_shape[3], *plan.values[s.output].shape)
            runs = "runs" in kernels(s) and (s.stride == 1 or "sparse" in kinds(s) and sparse_takes(
                s.w_shape, s.stride, s.pad, (h, w), shape[2:], plan.batch, self.threads))
            hp, wp = plane_shape(h, w, s.pad, s.stride)
            bands = in_bands(plan.batch, shape[2], shape[3], wp, self.threads, *s.w_shape[2:], s.stride)
            if runs and "sparse" in kinds(s):  # decoded in the tiled columns, after the band
                band = band_floats(c, shape[2], *s.w_shape[2:], s.stride, wp, self.threads) if bands else 0
                decode = max(decode, band + decode_floats(self.longest_rows[s.name]))
            if runs:
                convs.append(shape + (1, wp))
                if (s.pad or s.stride > 1) and not (bands and kinds(s) == {"sparse"}):  # the plane
                    padded = max(padded, plan.batch * c * hp * wp)
            if "tiled" in kernels(s):
                convs.append(shape + (2, 0))
            if "pointwise" in kernels(s):
                direct_accs.append(pointwise_floats(c, *shape[1:], s.stride))
            for kernel in {"flat", "phases", "blocked"} & set(kernels(s)):  # a plane per thread, or one
                if kernel == "flat":
                    plane, direct_acc = flat_scratch(c, h, w, s.pad, shape[1], plan.batch)
                elif kernel == "blocked":
                    plane, direct_acc = blocked_scratch(c, h, w, s.pad, shape[1], shape[2] * shape[3],
                                                        plan.batch)
                else:
                    plane, direct_acc = phase_scratch(c, *shape[1:])
                per_thread = plan.batch > 1 or kernel == "blocked"
                padded = max(padded, plane * (self.threads if per_thread else 1))
                direct_accs.append(direct_acc)
        budget = plan.tile_floats if plan.batch == 1 else BATCH_TILE_FLOATS
        cols, acc = scratch_sizes(convs, budget)
        cols, acc = max(cols, decode), max([acc] + direct_accs)
        self.cols = aligned_zeros((self.threads, cols), np.float32)
        self.acc = aligned_zeros((self.threads, acc), np.float32)
        self.padded = aligned_zeros(padded, np.float32)

    def _drop_packed(self):
        """Free each store's copy of what the program packed (host steps keep theirs) and the
        stores the program picked for no layer."""
        for s in self.plan.steps:
            op, kind = self.program.picks[s.name]
            for k, store in self.stores.items():
                if s.kind in ("conv", "linear") and (op != OP_HOST or k != kind):
                    store.drop(s)
        self.primitives = {s.name: self.primitives.get(s.name) for s in self.plan.steps
                           if self.program.picks[s.name] == (OP_HOST, "dense") and s.kind == "conv"}

    def view(self, name, n):
        v = self.plan.values[name]
        start = self.plan.batch * v.offset
        return self.arena[start:start + n * v.size].reshape((n,) + v.shape)

    def arrays(self):
        """Every array the runtime holds between calls (weights, tails, arena, workspace)."""
        own = [self.arena, self.acc, self.cols, self.padded, self.rows, self.no_res,
               self.plan.mean, self.plan.std]
        if self.program is not None:
            return own + self.program.arrays() + [a for st in self.stores.values() for a in st.arrays()]
        tails = [a for s in self.plan.steps for a in (s.scale, s.shift, s.slopes) if a is not None]
        return own + tails + self.weights.arrays()

    def static_bytes(self):
        extra = self.weights.payload_bytes() if hasattr(self.weights, "payload_bytes") else 0
        return sum(int(a.nbytes) for a in self.arrays()) + extra

    def kernels(self):
        """{step: (kernel, weight storage or None)}: how each step runs ("host": in Python)."""
        if self.program is not None:
            return self.program.kernels()
        return {s.name: (self.python_kernel(s), self.weights.mode if s.kind in ("conv", "linear")
                         else None) for s in self.plan.steps}

    def sparse_layers(self):
        """Names of the conv and linear steps whose weights are sparse rows (or streamed)."""
        return [name for name, (_, kind) in self.kernels().items() if kind in ("sparse", "stream")]

    # -- the Python walk: one bound call per step ------------------------------------------------
    def python_kernel(self, s):
        """How the Python walk runs step s: "host" (a generic layer, or an engine conv primitive
        for a dense batch), "pool", "rows"/"gemm" (linear), "runs"/"tiled" (fused conv)."""
        if s.kind in ("pool", "layer"):
            return {"pool": "pool", "layer": "host"}[s.kind]
        if s.kind == "linear":
            return "gemm" if self.throughput else "rows"
        if self.throughput:
            return "host"
        c, h, w = self.plan.values[s.inputs[0]].shape
        ho, wo = self.plan.values[s.output].shape[1:]
        span = (ho - 1) * (w + 2 * s.pad) + wo
        return "runs" if s.stride == 1 and span >= LONG_SPAN else "tiled"

    def _bind(self, n):
        if self.program is not None:
            return [None if len(seg) != 1 else self.host_call(self.plan.steps[seg[0]], n)
                    for seg in self.program.segments(len(self.plan.steps) - 1)]
        return [self._bind_step(s, n) for s in self.plan.steps]

    def host_call(self, s, n):
        """Step s run in Python on n images: a generic layer's forward, or a conv through the
        engine primitive of its plan (dense weights) and then its tail."""
        x, y = self.view(s.inputs[0], n), self.view(s.output, n)
        if s.kind == "layer":
            return functools.partial(_generic, s.layer, [self.view(i, n) for i in s.inputs], y)
        W2, ones = self.stores["dense"].get(s)
        res = self.view(s.residual, n) if s.residual else self.no_res
        tail = Tail(ones, s.shift, s.act, s.slopes, res, s.res_mode, s.res_front, s.res_stride)
        W = W2.reshape(s.w_shape)
        primitive = choose_primitive(s.primitive, x.shape, W.shape, s.stride, s.pad, 1)
        self.primitives[s.name] = primitive
        return functools.partial(_conv_planned, x, W, s.stride, s.pad, primitive, tail, y)

    def _bind_step(self, s, n):
        how = self.python_kernel(s)
        if how == "host":
            return self.host_call(s, n)
        x, y = self.view(s.inputs[0], n), self.view(s.output, n)
        if how == "pool":
            return functools.partial(global_avg_pool, x, y)
        if s.kind == "linear":
            return functools.partial(self._linear, s, x.reshape(n, -1), y)
        res = self.view(s.residual, n) if s.residual else self.no_res
        kh, kw = s.w_shape[2], s.w_shape[3]
        tail = Tail(s.scale, s.shift, s.act, s.slopes, res, s.res_mode, s.res_front, s.res_stride)
        mode = self.weights.mode
        if mode == "dense":
            W2, ones = self.weights.get(s)
            tail = tail._replace(scale=ones)  # the scale is in the weights
        if how == "runs":
            xp, pad = x, s.pad
            if s.pad and (mode == "dense" or not in_bands(n, *y.shape[2:], x.shape[3] + 2 * s.pad,
                                                          self.threads, kh, kw, 1)):
                shape = (n, x.shape[1], x.shape[2] + 2 * s.pad, x.shape[3] + 2 * s.pad)
                xp = self.padded[:int(np.prod(shape))].reshape(shape)
            # one image, or the sparse kernel (per batch task): the kernel pads; else pad_input
            inner = pad if n == 1 or mode != "dense" else 0
            if mode == "dense":
                kernel = functools.partial(conv_dense_s1, x, inner, xp, W2, kh, kw, tail, y, self.acc)
            else:
                kernel = lambda: conv_sparse_s1(x, inner, 1, xp, *self.weights.get(s), kh, kw, *tail, y,
                                                self.acc, self.cols)
            if inner == pad:
                return kernel
            return lambda: (pad_input(x, pad, xp), kernel())
        if mode == "dense":
            return functools.partial(conv_dense, x, W2, kh, kw, s.stride, s.pad, tail, y, self.cols,
                                     self.acc)
        return lambda: conv_sparse(x, *self.weights.get(s), kh, kw, s.stride, s.pad, *tail, y,
                                   self.cols, self.acc)

    def _linear(self, s, x, y):
        if self.weights.mode != "dense":
            linear_sparse(x, *self.weights.get(s), s.scale, s.shift, s.act, s.slopes, y)
            return
        W, ones = self.weights.get(s)
        if self.throughput and x.shape[0] > 1:
            acc = self.rows[:x.shape[0], :W.shape[0]]
            np.matmul(x, W.T, out=acc)
            finish_rows(acc, ones, s.shift, s.act, s.slopes, y)
        else:
            linear_direct(x, W, ones, s.shift, s.act, s.slopes, y)

    # -- running -------------------------------------------------------------------------------
    def forward(self, n):
        """Run every step on the first n images already in the input view; returns the output
        view (valid until the next call)."""
        self._steps(n, len(self.plan.steps) - 1)
        return self.view(self.plan.output, n)

    def step_calls(self, n):
        """The Python walk's one call per step for n images (a batch of the plan, or fewer)."""
        if self.program is not None:
            raise ValueError("step_calls: the compiled walk runs segments, not steps")
        return self.calls if n == self.plan.batch else self._bind(n)

    def _steps(self, n, last):
        """Run steps 0..last on the first n images in the input view."""
        calls = self.calls if n == self.plan.batch else self._bind(n)
        if self.program is None:
            for call in calls[:last + 1]:
                call()
            return
        for seg, call in zip(self.program.segments(last), calls):
            if call is None:
                self.program.run(seg[0], seg[1], n)
            else:
                call()

    def load_input(self, images):
        """Normalise raw images (uint8 scaled to [0, 1], or float) into the input view."""
        n = len(images)
        normalise_images(images, self.plan.mean, self.plan.std, self.view(INPUT, n))
        return n

    def predict(self, images):
        """Logits (N, classes) of raw images (N, C, H, W) or (N, H, W), in batches of the plan."""
        return self._run(images, len(self.plan.steps) - 1)

    def writer(self, node):
        """Index of the step whose output is the net's node `node`, or None when the plan has no
        such value (a node fused inside a step, like fc5 before its batch norm, or a view)."""
        return next((k for k, s in enumerate(self.plan.steps) if s.output == node), None)

    def features(self, images, node):
        """Outputs of node `node` for raw images (e.g. an embedding), running only the steps up to
        the one that writes it; UserError when the plan has no such value (see `writer`)."""
        last = self.writer(node)
        if last is None:
            raise UserError(f"the runtime has no output {node!r} (fused into another step or not a node)")
        return self._run(images, last)

    def _run(self, images, last):
        """The output of step `last` for raw images, in batches of the plan."""
        images = check_images(images, self.plan.in_shape)
        B, name = self.plan.batch, self.plan.steps[last].output
        out = np.empty((len(images),) + self.plan.values[name].shape, np.float32)
        if self.program is not None and self.program.segments(last) == [(0, last + 1)]:
            for i in range(0, len(images), B):  # loading, the steps, the output: one compiled call
                self.program.run_images(_raw(images[i:i + B]), last, out[i:i + B])
            return out
        for i in range(0, len(images), B):
            n = self.load_input(images[i:i + B])
            self._steps(n, last)
            out[i:i + n] = self.view(name, n)
        return out


def normalise_images(images, mean, std, out):
    """out (float32, images' shape) = the images as the net takes them: uint8 scaled to [0, 1]
    (floats as they are), minus the per-channel mean, over the std."""
    if images.dtype == np.uint8:
        np.divide(images, np.float32(255.0), out=out)
    else:
        out[...] = as_float(images)
    out -= mean[:, None, None]
    out /= std[:, None, None]


def _conv_planned(x, W, stride, pad, primitive, tail, y):
    finish_planes(conv2d_forward(x, W, stride, pad, 1, primitive), tail, y)


def _generic(layer, xs, y):
    y[...] = layer.forward(xs[0] if len(xs) == 1 else xs, False)


def _raw(images):
    """Images as the compiled walk loads them: C-contiguous float32, uint8 scaled to [0, 1]."""
    return np.ascontiguousarray(as_float(images))


def check_images(images, in_shape):
    """Images as (N, C, H, W) of the model's input shape; (N, H, W) gets a channel axis. An
    array-like with shape and dtype (an image folder's, decoded by batch) is taken as it is."""
    if not isinstance(images, np.ndarray) and not all(hasattr(images, a) for a in ("shape", "ndim", "dtype")):
        images = np.asarray(images)
    if images.ndim == 3 and len(in_shape) == 3 and in_shape[0] == 1:
        images = images[:, None]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(in_shape):
        raise UserError(f"images of shape {images.shape[1:]} do not fit the model's input {tuple(in_shape)}")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise UserError(f"cannot use images of dtype {images.dtype}: expected uint8 or floating point")
    return images


def choose_walk(mode, walk=None):
    """The one place that decides who walks a plan: `walk` when given, else $NPDC_RUNTIME_WALK,
    else "compiled"; streamed weights are decoded in Python between layers, so they always take
    the Python walk, and mixed ("auto") weights exist only in the compiled one."""
    walk = walk or os.environ.get(WALK_ENV) or "compiled"
    if walk not in WALKS:
        raise UserError(f"unknown runtime walk {walk!r}; known: {', '.join(WALKS)}")
    if mode == "stream":
        return "python"
    if mode == "auto" and walk == "python":
        raise UserError("weights 'auto' choose per layer in the compiled walk; the Python walk takes dense or sparse")
    return walk


def load_runtime(path, weights="sparse", batch=1, walk=None):
    """A Runtime for the .npdc file at `path`; weights one of MODES."""
    if weights not in MODES:
        raise UserError(f"unknown weight mode {weights!r}; known: {', '.join(MODES)}")
    net, codes = load_compressed(path)
    return build_runtime(net, codes, weights, batch, path if weights == "stream" else None, walk)


def build_runtime(net, codes, weights="sparse", batch=1, path=None, walk=None, choice="measure"):
    """A Runtime from a decoded net and its quantized layers ({path: QuantizedLayer}); stream mode
    rereads the coded layer payloads from `path`. walk: see choose_walk; choice: how the compiled
    walk picks each layer's kernel ("measure", or "reference": as the Python walk does)."""
    if weights not in MODES:
        raise UserError(f"unknown weight mode {weights!r}; known: {', '.join(MODES)}")
    plan = Plan(net, batch)
    steps = [s for s in plan.steps if s.kind in ("conv", "linear")]
    params = net.params()
    stores = {}
    if weights in ("dense", "auto"):
        stores["dense"] = DenseWeights(steps, params)
    if weights in ("sparse", "auto"):
        stores["sparse"] = SparseWeights(steps, params, codes)
    if weights == "stream":
        stores["stream"] = StreamWeights(steps, params, codes, layer_payloads(path))
    return Runtime(plan, next(iter(stores.values())), walk, choice, stores)


def layer_payloads(path):
    """{parameter path: LAYR payload} of a .npdc file, its section layout checked by the codec's
    one model-file reader."""
    return read_model_file(path).payloads
