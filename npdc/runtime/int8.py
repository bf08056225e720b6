"""Integer-only int8 inference of a plan (npdc.runtime.plan), after Jacob et al. 2018
("Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference"); the kernels and their rounding are npdc.kernels.int8's.

- Weights: int8 per output channel, symmetric (scale max|W| / 127, zero point 0), from the
  decoded codebook weights with the plan's batch-norm scale folded in (the paper folds BN before
  quantizing; it quantizes weights per tensor with a zero point, per-channel symmetric scales
  being the later practice that loses less). The .npdc file keeps its codebooks: nothing is
  stored for the weights.
- Activations: uint8 with a per-tensor scale and zero point from calibration
  (npdc.runtime.calibrate); after a ReLU the range starts at 0, so the zero point is 0 and the
  ReLU is the clamp at it. Departure: a tensor with negative values (the normalised input, a
  conv without ReLU, a linear before a batch norm) is uint8 with its zero point too, the same
  256 levels as int8 with the zero point moved by 128, so that every layer multiplies uint8 by
  int8 as vpdpbusd does.
- Bias: int32 at scale Sx * Sw[o], zero point 0, as in the paper, with the input's zero-point
  term folded in; requantisation by M = Sx * Sw[o] / Sy as a Q31 multiplier and a shift.
- Residual adds are rescaled in integers in the conv's tail (the residual's term by a 32-bit
  integer multiplier, npdc.kernels.int8_requant.residual_term); global average pooling sums in
  integers and rescales by Sx / (H W Sy). The last layer, when a linear, gives float logits:
  its int32 sums times Sx * Sw[o] (the paper's uint8 output would make ties of the arg max).
- Activations that only convs read are kept four channels to a 32-bit word with their padding
  (npdc.runtime.int8_layout, npdc.kernels.int8_words): the next conv reads its taps there in
  place. `view` gives such a value as words, `planar` as (N, C, H, W) bytes.
- A generic layer step (one the float plan does not fuse) runs in float between a dequantize and
  a quantize: correct, but not integer-only; `float_steps` lists them.
The scales, zero points, multipliers and packed weights of each step: npdc.runtime.int8_params.
"""

import math

import numba
import numpy as np

from npdc.engine.images import as_float
from npdc.engine.net import INPUT
from npdc.errors import UserError
from npdc.kernels import int8 as K
from npdc.kernels import int8_pack as P
from npdc.kernels import int8_walk as KW
from npdc.kernels import int8_words as KWo
from npdc.kernels.int8_blocked import conv_blocked_words, linear_blocked
from npdc.kernels.int8_sparse import linear_sparse_u8
from npdc.kernels.vnni import vnni_path
from npdc.runtime.infer import check_images, normalise_images
from npdc.runtime.int8_choice import kernel_choice
from npdc.runtime.int8_layout import ROOM, geometry, image_words, words_pads
from npdc.runtime.int8_params import Int8Step, fixed_multipliers, pad_to
from npdc.runtime.int8_program import lower
from npdc.runtime.plan import Plan, aligned_zeros
from npdc.runtime.program import compiling_notice, notices_compiling
from npdc.runtime.weights import DenseWeights

TILE_BYTES = 1 << 17  # packed column bytes of one conv tile per thread (stays in L2; whole images for most layers)


class Int8Runtime:
    """A plan run in integers: `predict(images)` gives float logits; `scales` {value: (scale,
    zero point)} come from calibration (npdc.runtime.calibrate) or from the file. It answers
    the float Runtime's questions the measuring code asks (mode, walk, kernels, static_bytes)."""

    mode = walk = "int8"
    primitives = {}

    def __init__(self, net, scales, batch=1, vnni=None, sparse="measure", blocked="measure"):
        self.plan = plan = Plan(net, batch)
        self.pads, apart = words_pads(plan)  # the values kept as words between convs
        if apart:
            plan.write_apart(apart)
        missing = [v for v in plan.values if v not in scales]
        if missing:
            raise UserError(f"int8: no activation scale for {', '.join(missing[:5])}")
        self.scales = {v: (float(scales[v][0]), int(scales[v][1])) for v in plan.values}
        self.vnni = vnni_path() if vnni is None else bool(vnni)
        B = plan.batch
        self.arena = aligned_zeros(ROOM * B * plan.arena_size, np.uint8)
        self.input = np.zeros((B,) + plan.in_shape, np.float32)
        self.threads = numba.config.NUMBA_NUM_THREADS
        steps = [s for s in plan.steps if s.kind in ("conv", "linear")]
        dense = DenseWeights(steps, net.params())
        self.q = {}
        for s in steps:
            sx, zx = self.scales[s.inputs[0]]
            sy, zy = self.scales[s.output]
            res = self.scales[s.residual] if s.residual else None
            self.q[s.name] = Int8Step(s, dense.get(s)[0], s.shift, sx, zx, sy, zy, res)
        last = plan.steps[-1]
        self.float_out = last.kind == "linear"
        self.logits = np.zeros((B,) + plan.values[plan.output].shape, np.float32)
        self.float_steps = [s.name for s in plan.steps if s.kind == "layer"]
        self._workspace()
        self.no_res = np.zeros((1, 1, 1, 1), np.uint8)
        self.no_words = np.zeros((1, 1), np.uint32)
        self.no_logits = np.zeros((1, 1), np.float32)
        self.dense_entries = (np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32))
        # the steps whose GEMM skips zero words, and those with output channels in the lanes
        with compiling_notice():  # timing a kernel first compiles it
            self.entries, self.blocked = kernel_choice(self, sparse, blocked)
        self.records, self.words, self.ints, self.reals, self.segments = lower(self)
        self.calls = self._bind(B)

    def _row(self, s):
        """Positions from one output row of a conv tile to the next, as the conv lays them out."""
        return int(KWo.conv_row(self.geometry(s), s.stride, s.pad, self.q[s.name].taps))

    def geometry(self, s):
        """A conv's geometry fields (npdc.kernels.int8_words)."""
        return geometry(self.plan, self.pads, s)

    def runs_words(self, s):
        """Whether a conv reads or writes a value kept as words (it runs conv_words)."""
        return any(name in self.pads for name in s.reads() + [s.output])

    def rows_per(self, s):
        """Output rows of one conv tile: packed columns within TILE_BYTES, and at least as many
        tiles as threads when the plan's batch alone does not give them."""
        c, h, w = self.plan.values[s.inputs[0]].shape
        ho, wo = self.plan.values[s.output].shape[1:]
        k4 = self.q[s.name].k4
        rows = max(1, TILE_BYTES // (k4 * P.GROUP * self._row(s)))
        if self.plan.batch < self.threads:
            rows = min(rows, max(1, math.ceil(ho / self.threads)))
        return min(rows, ho)

    def _workspace(self):
        cols = acc = 1
        for s in self.plan.steps:
            if s.kind not in ("conv", "linear"):
                continue
            q = self.q[s.name]
            if s.kind == "conv":
                c, h, w = self.plan.values[s.inputs[0]].shape
                rows, wo = self.rows_per(s), self.plan.values[s.output].shape[2]
                cols = max(cols, P.tile_bytes(c, s.w_shape[2], s.w_shape[3], s.pad, w, rows, wo, s.stride))
                if self.runs_words(s):
                    cols = max(cols, KWo.words_tile_bytes(self.geometry(s), s.w_shape[2], s.w_shape[3], s.stride,
                                                          s.pad, rows, q.taps))
                pitch = pad_to((rows - 1) * self._row(s) + wo, P.LANES)
            else:
                pitch = P.rows_pitch(self.plan.batch)
                cols = max(cols, q.k4 * (pitch * P.GROUP + P.SKEW))
            acc = max(acc, q.w.size // q.k4 * pitch)
        self.cols = aligned_zeros((self.threads, cols), np.uint8)
        self.acc = aligned_zeros((self.threads, acc), np.int32)

    def view(self, name, n):
        """A value's first n images in the arena: (n,) + shape uint8, or (n, words) uint32 for a
        value kept as words."""
        v = self.plan.values[name]
        start = ROOM * self.plan.batch * v.offset
        if name in self.pads:
            size = image_words(self.plan, self.pads, name)
            return self.arena[start:start + 4 * n * size].view(np.uint32).reshape(n, size)
        return self.arena[start:start + n * v.size].reshape((n,) + v.shape)

    def planar(self, name, n):
        """A copy of a value's first n images as (n,) + shape uint8, whatever its layout."""
        if name not in self.pads:
            return self.view(name, n).copy()
        return KWo.to_planar(self.view(name, n), *self.plan.values[name].shape, self.pads[name])

    def static_bytes(self):
        return sum(int(a.nbytes) for a in self.arrays())

    def sparse_layers(self):
        """None: int8 keeps every layer's weights as dense packed words (the convs whose GEMM
        skips their zero words, a choice of kernel, are named in kernels())."""
        return []

    def arrays(self):
        """Every array the runtime holds between calls."""
        return [self.arena, self.input, self.logits, self.cols, self.acc, self.no_res, self.no_words, self.no_logits,
                self.records, self.words, self.ints, self.reals]  # the steps' arrays: views of these

    # -- binding ------------------------------------------------------------------------------
    def _bind(self, n):
        return [self._bind_step(s, n) for s in self.plan.steps]

    def _bind_step(self, s, n):
        x, y = self.view(s.inputs[0], n), self.view(s.output, n)
        if s.kind == "layer":
            return lambda: self._generic(s, n)
        if s.kind == "pool":
            (_, zx), (_, zy) = self.scales[s.inputs[0]], self.scales[s.output]
            m0, shift = self.pool_multiplier(s)
            return lambda: K.avg_pool_u8(x, zx, zy, m0, shift, y.reshape(n, -1))
        if s.kind == "linear":
            return self.linear_call(s, n, self.entries.get(s.name), self.blocked.get(s.name))
        return self.conv_call(s, n, self.entries.get(s.name), self.blocked.get(s.name))

    def linear_call(self, s, n, sparse=None, blocked=None):
        """Linear step s on the first n images as a call: linear_u8, over the non-zero words
        (sparse: npdc.kernels.int8_sparse.linear_entries) or with output channels in the lanes
        (blocked: npdc.kernels.int8_blocked.blocked_weights)."""
        x, y, q = self.view(s.inputs[0], n).reshape(n, -1), self.view(s.output, n), self.q[s.name]
        last = self.float_out and s is self.plan.steps[-1]
        out = y.reshape(n, -1) if not last else self.no_res.reshape(1, 1)
        deq = q.dequant if last else np.zeros(0)
        logits = self.logits[:n] if last else self.no_logits
        if sparse is not None:
            return lambda: linear_sparse_u8(x, *sparse, self.plan.batch, q.bias, q.m0, q.shift, q.meta, out, logits,
                                            deq, self.cols[0], self.threads, self.vnni)
        if blocked is not None:
            return lambda: linear_blocked(x, blocked, q.k4, q.bias, q.m0, q.shift, q.meta, out, logits, deq,
                                          self.threads, self.vnni)
        return lambda: K.linear_u8(x, q.w, q.k4, q.bias, q.m0, q.shift, q.meta, out, logits, deq, self.cols[0],
                                   self.acc[0], self.vnni)

    def conv_call(self, s, n, sparse=None, blocked=None):
        """Conv step s on the first n images as a call: its GEMM dense, over the non-zero words
        (sparse: npdc.kernels.int8_sparse.sparse_entries) or with output channels in the lanes
        (blocked: npdc.kernels.int8_blocked.blocked_weights)."""
        x, y, q = self.view(s.inputs[0], n), self.view(s.output, n), self.q[s.name]
        res = self.view(s.residual, n) if s.residual else self.no_res
        kh, kw = s.w_shape[2], s.w_shape[3]
        rows, offs = self.rows_per(s), self.tap_offsets(s)
        if self.runs_words(s):
            geo = self.geometry(s)
            xs = (self.no_res, x) if s.inputs[0] in self.pads else (x, self.no_words)
            rs = (self.no_res, res) if s.residual in self.pads else (res, self.no_words)
            ys = (self.no_res, y) if s.output in self.pads else (y, self.no_words)
            if blocked is not None:
                return lambda: conv_blocked_words(x, blocked, q.k4, kh, kw, s.stride, s.pad, q.bias, q.m0, q.shift,
                                                  q.meta, rs[0], rs[1], ys[0], ys[1], geo, self.threads, self.vnni)
            entries = self.dense_entries if sparse is None else sparse
            return lambda: KWo.conv_words(xs[0], xs[1], q.w, q.k4, kh, kw, s.stride, s.pad, q.bias, q.m0, q.shift,
                                          q.meta, rs[0], rs[1], ys[0], ys[1], geo, self.cols, self.acc, rows, offs,
                                          self.vnni, *entries)
        return lambda: K.conv_u8(x, q.w, q.k4, kh, kw, s.stride, s.pad, q.bias, q.m0, q.shift, q.meta,
                                 res, y, self.cols, self.acc, rows, offs, self.vnni)

    def tap_offsets(self, s):
        """The tap offsets of a conv whose taps are read in place (empty otherwise)."""
        if not self.q[s.name].taps:
            return np.zeros(0, np.int64)
        kh, kw = s.w_shape[2], s.w_shape[3]
        c = self.plan.values[s.inputs[0]].shape[0]
        geo = self.geometry(s)
        if geo[KWo.G_WPI] > 0 and s.stride == 1:  # the input's own planes, read in place
            return P.tap_offsets(c, kh, kw, int(geo[KWo.G_WPI]), int(geo[KWo.G_PLI]), 1)
        wq = self._row(s)
        return P.tap_offsets(c, kh, kw, wq, P.tap_plane(self.rows_per(s), kh, wq, s.stride), s.stride)

    def pool_multiplier(self, s):
        """(m0, shift) of a global average pool: Sx / (H W Sy)."""
        (sx, _), (sy, _) = self.scales[s.inputs[0]], self.scales[s.output]
        c, h, w = self.plan.values[s.inputs[0]].shape
        m0, shift = fixed_multipliers(sx / (h * w * sy))
        return int(m0[0]), int(shift[0])

    def _generic(self, s, n):
        """A layer the plan does not fuse, in float between a dequantize and a quantize."""
        xs = []
        for name in s.inputs:
            sx, zx = self.scales[name]
            xq = self.view(name, n)
            xf = np.empty(xq.shape, np.float32)
            K.dequantize_u8(np.ascontiguousarray(xq), sx, zx, xf)
            xs.append(xf)
        out = np.ascontiguousarray(s.layer.forward(xs[0] if len(xs) == 1 else xs, False), np.float32)
        sy, zy = self.scales[s.output]
        K.quantize_u8(out, 1.0 / sy, zy, self.view(s.output, n))

    # -- running ------------------------------------------------------------------------------
    def load_input(self, images):
        """Normalise raw images and quantize them into the arena (float images in one parallel pass,
        uint8 ones scaled to [0, 1] in the float input buffer first, as normalise_images does)."""
        n = len(images)
        s, z = self.scales[INPUT]
        x = as_float(images) if images.dtype != np.uint8 else np.divide(images, np.float32(255.0), out=self.input[:n])
        if x.ndim == 4:
            K.quantize_images(x, self.plan.mean, self.plan.std, 1.0 / s, z, self.view(INPUT, n))
            return n
        normalise_images(images, self.plan.mean, self.plan.std, self.input[:n])
        K.quantize_u8(self.input[:n], 1.0 / s, z, self.view(INPUT, n))
        return n

    def run(self, n, keep=None):
        """Every step on the first n images already in the arena: the compiled walk between
        float layers; with keep (a dict), one step at a time, each step's uint8 output copied
        into keep by value name (for tests)."""
        if keep is None:
            for seg in self.segments:
                if len(seg) == 1:
                    self._generic(self.plan.steps[seg[0]], n)
                else:
                    self.run_compiled(seg[0], seg[1], n)
            return
        calls = self.calls if n == self.plan.batch else self._bind(n)
        for s, call in zip(self.plan.steps, calls):
            call()
            if not (self.float_out and s is self.plan.steps[-1]):
                keep[s.output] = self.planar(s.output, n)

    @notices_compiling
    def run_compiled(self, first, stop, n):
        """Steps first..stop-1 (none a float layer) in one compiled call."""
        KW.walk_int8(self.records, first, stop, n, self.arena, self.words, self.ints, self.reals,
                     self.logits, self.no_logits, self.cols, self.acc, self.no_res, self.no_words, self.vnni)

    def output(self, n):
        """Float logits of the last run: the last linear's, or the last value dequantized."""
        if self.float_out:
            return self.logits[:n]
        s, z = self.scales[self.plan.output]
        out = self.logits[:n]
        K.dequantize_u8(np.ascontiguousarray(self.view(self.plan.output, n)), s, z, out)
        return out

    def predict(self, images):
        """Float logits (N, classes) of raw images, in batches of the plan."""
        images = check_images(images, self.plan.in_shape)
        B = self.plan.batch
        out = np.empty((len(images),) + self.logits.shape[1:], np.float32)
        for i in range(0, len(images), B):
            n = self.load_input(images[i:i + B])
            self.run(n)
            out[i:i + n] = self.output(n)
        return out

    def kernels(self):
        """{step: (kernel, None)}: how each step runs (int8 conv/linear on the vnni or portable
        path, a conv's or linear's GEMM dense, over its non-zero weight words (`sparse`) or with
        output channels in the lanes (`blocked`), int8 pool, or a float layer between a dequantize and a quantize)."""
        path = "vnni" if self.vnni else "portable"
        names = {"conv": f"int8-conv-{path}", "linear": f"int8-linear-{path}", "pool": "int8-pool",
                 "layer": "float-layer"}
        conv = {s.name: f"int8-{s.kind}-sparse-{path}" for s in self.plan.steps if s.name in self.entries}
        conv.update({s.name: f"int8-{s.kind}-blocked-{path}" for s in self.plan.steps if s.name in self.blocked})
        return {s.name: (conv.get(s.name, names[s.kind]), None) for s in self.plan.steps}
