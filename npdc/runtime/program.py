"""A plan lowered for the compiled walk (npdc.kernels.walk): one int64 record per step and the
weights of every conv and linear step packed into a few flat buffers, with each layer's kernel
(and, in the `auto` weight mode, its storage: dense floats or sparse rows) chosen per layer from
measured time at the plan's batch size.

Choice by measurement follows the per-layer primitive selection of Anderson & Gregg 2017
("Optimal DNN Primitive Selection with Partitioned Boolean Quadratic Programming"), as
npdc.engine.conv_plan does for training; here every candidate keeps the NCHW layout, so there is
no conversion cost on the edges and the cheapest candidate of each layer alone is the optimum.
Sparse storage is a candidate like any other: it is kept only where its kernel is faster (EIE's
premise, Han et al. 2016, that skipping zeros pays, holds on a CPU only for some shapes and
sparsities). Timings are cached on disk like the conv timings (keyed by shape, non-zeros, batch,
threads, CPU and the kernels' digest), so the same machine makes the same choices, and so the
same bytes, run after run.
"""

import contextlib
import functools
import json
import math
import os

import numba
import numpy as np
from numba.core import event

from npdc.atomic import write_text
from npdc.engine.conv_select import best_in_turns, cache_file, cpu_name
from npdc.engine.net import INPUT
from npdc.kernels import walk as W
from npdc.kernels.cache_stamp import kernels_digest
from npdc.kernels.conv import forced_primitive
from npdc.kernels.conv_flat import blocked, interleaved
from npdc.kernels.conv_flat import refuse as flat_refuse
from npdc.kernels.conv_polyphase import refuse as phases_refuse
from npdc.kernels.fused_blocked import lanes_for
from npdc.kernels.fused_pointwise import OUT as POINTWISE_OUT
from npdc.kernels.fused_winograd import grouped_kernels
from npdc.kernels.sparse_s1 import sparse_takes
from npdc.progress import notice_if_slow

TIMINGS_NAME = "runtime_timings.json"
# the largest transformed kernels (36 O C floats, 4x the dense weights) a batch-1 layer may run
# Winograd with: timed alone, a layer's weights stay in L2 from call to call, but a whole
# forward streams every layer's through it, and cifar-resnet20's five 64-channel layers (590 KB
# each, 2.9 MB) then ran slower than the sparse rows they had beaten alone (docs/perf.md)
WINOGRAD_ONE_BYTES = 256 * 1024
ROUNDS_ONE = 30  # rounds a batch-1 choice is timed at least (measured_choices)
CHOICES = ("measure", "reference")  # measured per layer, or the Python walk's fixed rules
COMPILING = ("compiling the runtime's kernels (Numba, on their first use after an install or an "
             "upgrade; a few minutes, then cached)")


class Packer:
    """Flat buffers grown one array at a time; `add` returns the array's offset."""

    def __init__(self):
        self.parts = {"weights": [], "rowptr": [], "cols": [], "vidx": [], "tables": []}
        self.sizes = dict.fromkeys(self.parts, 0)

    def add(self, buf, array):
        off = self.sizes[buf]
        self.parts[buf].append(np.ravel(array))
        self.sizes[buf] += int(np.size(array))
        return off

    def arrays(self, cols_dtype, vidx_dtype):
        """The five buffers, each concatenated (one element at least)."""
        dtypes = {"weights": np.float32, "rowptr": np.int32, "cols": cols_dtype,
                  "vidx": vidx_dtype, "tables": np.float32}
        return {k: np.concatenate([np.zeros(0, dtypes[k])] + [p.astype(dtypes[k]) for p in parts])
                if parts else np.zeros(1, dtypes[k]) for k, parts in self.parts.items()}


def _shape3(shape):
    s = tuple(int(v) for v in shape)
    return s + (1,) * (3 - len(s)) if len(s) <= 3 else (int(np.prod(s)), 1, 1)


def step_record(runtime, step, op, kind, packer):
    """The record of `step` run by `op` with `kind` weights ("dense" or "sparse"), its arrays
    appended to `packer`."""
    plan, r = runtime.plan, np.zeros(W.N_FIELDS, np.int64)
    r[W.F_OP] = op
    if op == W.OP_HOST:
        return r
    x, y = plan.values[step.inputs[0]], plan.values[step.output]
    r[W.F_X], r[W.F_Y] = plan.batch * x.offset, plan.batch * y.offset
    r[W.F_XC:W.F_XW + 1], r[W.F_YC:W.F_YW + 1] = _shape3(x.shape), _shape3(y.shape)
    if step.kind == "pool":
        return r
    r[W.F_RES] = -1
    if step.residual:
        res = plan.values[step.residual]
        r[W.F_RES], r[W.F_RC:W.F_RW + 1] = plan.batch * res.offset, _shape3(res.shape)
    r[W.F_RMODE], r[W.F_RFRONT], r[W.F_RSTRIDE] = step.res_mode, step.res_front, step.res_stride
    if step.kind == "conv":
        r[W.F_KH], r[W.F_KW] = step.w_shape[2], step.w_shape[3]
        r[W.F_STRIDE], r[W.F_PAD] = step.stride, step.pad
    r[W.F_ROWS], r[W.F_COLS] = step.w_shape[0], int(np.prod(step.w_shape[1:]))
    r[W.F_SPARSE], r[W.F_ACT] = kind == "sparse", step.act
    parts = runtime.stores[kind].get(step)
    if kind == "dense":
        W2, scale = parts
        if op in (W.OP_CONV_FLAT, W.OP_CONV_PHASES):  # O padded to whole register blocks
            W9 = W2.reshape(W2.shape[0], -1, 9)
            W2 = blocked(W9) if op == W.OP_CONV_FLAT else interleaved(W9, 8)
            r[W.F_ROWS] = -(-W9.shape[0] // 8) * 8
        elif op == W.OP_CONV_BLOCKED:  # output channels in the lanes, O padded to whole blocks
            lanes = lanes_for(W2.shape[0])
            W2 = interleaved(W2.reshape(W2.shape[0], step.w_shape[1], -1), lanes)
            r[W.F_ROWS] = W2.shape[0] * lanes
        elif op == W.OP_CONV_POINTWISE:  # O padded to whole blocks
            W2 = interleaved(W2.reshape(W2.shape[0], -1, 1), POINTWISE_OUT)
            r[W.F_ROWS] = W2.shape[0] * POINTWISE_OUT
        elif op == W.OP_CONV_WINOGRAD:  # the kernels' transform, O and C padded to whole blocks
            o16, c8 = -(-step.w_shape[0] // 16) * 16, -(-step.w_shape[1] // 8) * 8
            W2 = grouped_kernels(W2.reshape(step.w_shape))
            r[W.F_ROWS], r[W.F_COLS] = o16, 36 * c8
        r[W.F_W] = packer.add("weights", W2)
    else:
        rowptr, cols, vidx, table = parts
        scale = step.scale
        r[W.F_ROWPTR], r[W.F_NZ] = packer.add("rowptr", rowptr), packer.add("cols", cols)
        packer.add("vidx", vidx)
        r[W.F_NNZ], r[W.F_TABLE], r[W.F_TSIZE] = len(cols), packer.add("tables", table), len(table)
    r[W.F_SCALE], r[W.F_SHIFT] = packer.add("weights", scale), packer.add("weights", step.shift)
    r[W.F_SLOPES] = packer.add("weights", step.slopes)
    return r


def candidates(runtime, step):
    """[(op, kind)] a step may run as: every kernel that computes it, with every weight storage
    the runtime holds; a dense batch conv may also run the engine's primitive on the host."""
    if step.kind == "pool":
        return [(W.OP_POOL, None)]
    if step.kind == "layer":
        return [(W.OP_HOST, None)]
    host = step.kind == "conv" and "dense" in runtime.stores and runtime.plan.batch > 1
    if host and forced_primitive():  # --primitive: every dense batch conv runs it, as it says
        return [(W.OP_HOST, "dense")]
    out = []
    for kind in runtime.stores:
        if step.kind == "linear":
            ops = [W.OP_LINEAR_ROWS] + ([W.OP_LINEAR_GEMM] if kind == "dense" and runtime.plan.batch > 1 else [])
        else:
            runs = step.stride == 1 or kind == "sparse" and sparse_takes(
                step.w_shape, step.stride, step.pad, runtime.plan.values[step.inputs[0]].shape[1:],
                runtime.plan.values[step.output].shape[1:], runtime.plan.batch, runtime.threads)
            ops = [W.OP_CONV_TILED] + ([W.OP_CONV_RUNS] if runs else [])
            if kind == "dense" and flat_refuse(None, step.w_shape, step.stride, step.pad, 1) is None:
                ops.append(W.OP_CONV_FLAT)
            if kind == "dense" and phases_refuse(None, step.w_shape, step.stride, step.pad, 1) is None:
                ops.append(W.OP_CONV_PHASES)
            if kind == "dense" and flat_refuse(None, step.w_shape, step.stride, step.pad, 1) is None \
                    and (runtime.plan.batch > 1 or winograd_bytes(step.w_shape) <= WINOGRAD_ONE_BYTES):
                ops.append(W.OP_CONV_WINOGRAD)
            if kind == "dense" and step.w_shape[2:] == (1, 1) and step.pad == 0:
                ops.append(W.OP_CONV_POINTWISE)
            if kind == "dense":
                ops.append(W.OP_CONV_BLOCKED)
        out += [(op, kind) for op in ops]
    if host:
        out.append((W.OP_HOST, "dense"))
    return out


class _Compiles(event.Listener):
    """Notes whether Numba compiled anything (loading a kernel from its cache is no compile)."""

    def __init__(self):
        self.seen = False

    def on_start(self, ev):
        self.seen = True

    def on_end(self, ev):
        pass


@contextlib.contextmanager
def compiling_notice():
    """Within the block, say COMPILING once if Numba compiles and the block runs past
    npdc.progress.NOTICE_SECONDS: the first run after an install waits minutes with nothing
    else to show."""
    compiles = _Compiles()
    with event.install_listener("numba:compile", compiles), \
            notice_if_slow(COMPILING, when=lambda: compiles.seen):
        yield


def notices_compiling(method):
    """method, its first call on each object run inside compiling_notice: the call in which the
    object's compiled walk compiles (or loads from Numba's cache)."""
    @functools.wraps(method)
    def first_or_not(self, *args):
        if self.__dict__.get("_walked"):
            return method(self, *args)
        self._walked = True
        with compiling_notice():
            return method(self, *args)
    return first_or_not


def winograd_bytes(w_shape):
    """Bytes of a 3x3 layer's transformed kernels in fused_winograd (O and C padded to blocks)."""
    return 4 * 36 * -(-w_shape[0] // 16) * 16 * -(-w_shape[1] // 8) * 8


def reference_choice(runtime, step):
    """The (op, kind) the Python walk (npdc.runtime.infer) runs a step with."""
    kind = next(iter(runtime.stores)) if step.kind in ("conv", "linear") else None
    how = runtime.python_kernel(step)
    op = {"host": W.OP_HOST, "tiled": W.OP_CONV_TILED, "runs": W.OP_CONV_RUNS, "rows": W.OP_LINEAR_ROWS,
          "gemm": W.OP_LINEAR_GEMM, "pool": W.OP_POOL}[how]
    return op, kind


class Program:
    """Records, buffers and segments of a runtime's plan for the compiled walk."""

    def __init__(self, runtime, choice="measure"):
        if choice not in CHOICES:
            raise ValueError(f"unknown choice {choice!r}; known: {', '.join(CHOICES)}")
        self._attach(runtime)
        steps = runtime.plan.steps
        if choice == "measure":
            picks = measured_choices(runtime)
        else:
            picks = [reference_choice(runtime, s) for s in steps]
        self.picks = {s.name: p for s, p in zip(steps, picks)}
        self._segments = {}
        self._pack(picks)

    def _attach(self, runtime):
        """Run on runtime's arena and scratch: where its input starts, and the empty images and
        output a run of steps alone passes the walk."""
        self.runtime, plan = runtime, runtime.plan
        self._input_at = plan.batch * plan.values[INPUT].offset
        self._no_images = np.zeros((0,) + tuple(plan.in_shape), np.float32)
        self._no_out = np.zeros(0, np.float32)

    def _pack(self, picks):
        runtime, packer = self.runtime, Packer()
        self.records = np.stack([step_record(runtime, s, op, kind, packer)
                                 for s, (op, kind) in zip(runtime.plan.steps, picks)])
        self.buffers = packer.arrays(*sparse_dtypes(runtime, picks))

    def arrays(self):
        return [self.records] + list(self.buffers.values())

    def segments(self, last):
        """[(first, stop)] runs of compiled steps and [k] host steps, through step `last`."""
        if last not in self._segments:
            self._segments[last] = self._split(last)
        return self._segments[last]

    def _split(self, last):
        out, start = [], None
        for k in range(last + 1):
            if self.records[k, W.F_OP] == W.OP_HOST:
                if start is not None:
                    out.append((start, k))
                out.append((k,))
                start = None
            elif start is None:
                start = k
        if start is not None:
            out.append((start, last + 1))
        return out

    def run(self, first, stop, n, records=None):
        """Steps first..stop-1 (all compiled) on the first n images already in the arena."""
        self._walk(self.records if records is None else records, first, stop, n, self._no_images,
                   0, self._no_out, 0)

    def run_images(self, images, last, out):
        """Steps 0..last, all compiled, on images (float32, at most the plan's batch) loaded in the
        same compiled call; out (C-contiguous) = step last's output."""
        plan = self.runtime.plan
        self._walk(self.records, 0, last + 1, len(images), images, self._input_at,
                   out.reshape(out.size), plan.batch * plan.values[plan.steps[last].output].offset)

    @notices_compiling
    def _walk(self, records, first, stop, n, images, x_at, out, out_at):
        rt, b, plan = self.runtime, self.buffers, self.runtime.plan
        W.walk(records, first, stop, n, rt.arena, b["weights"], b["rowptr"], b["cols"], b["vidx"],
               b["tables"], rt.cols, rt.acc, rt.padded, rt.rows.reshape(-1), rt.no_res, images,
               plan.mean, plan.std, x_at, out, out_at)

    def kernels(self):
        """{step name: (kernel, weight storage or None)} of the compiled plan."""
        return {name: (W.OP_NAMES[op], kind) for name, (op, kind) in self.picks.items()}


def sparse_dtypes(runtime, picks, steps=None):
    """(column-step dtype, value-index dtype): the narrowest that hold every sparse layer picked."""
    cols, vidx = np.uint8, np.uint8
    for s, (op, kind) in zip(steps or runtime.plan.steps, picks):
        if kind == "sparse" and op != W.OP_HOST:
            _, c, v, _ = runtime.stores["sparse"].get(s)
            cols = np.promote_types(cols, c.dtype)
            vidx = np.promote_types(vidx, v.dtype)
    return cols, vidx


# -- measuring ------------------------------------------------------------------------------------
def _key(runtime, step, op, kind):
    plan, nnz = runtime.plan, 0
    if kind == "sparse":
        nnz = len(runtime.stores["sparse"].get(step)[1])
    shape = plan.values[step.inputs[0]].shape
    return (f"{step.kind}-{W.OP_NAMES[op]}-{kind}-b{plan.batch}-x{'x'.join(map(str, shape))}"
            f"-w{'x'.join(map(str, step.w_shape or ()))}-s{step.stride}-p{step.pad}-nz{nnz}"
            f"-r{step.res_mode}-t{numba.get_num_threads()}-{cpu_name()}-k{kernels_digest()}")


def _timings_file():
    return cache_file().with_name(TIMINGS_NAME)


def _load_timings():
    try:
        data = json.loads(_timings_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    # a damaged entry is measured again rather than trusted (NaN compares false, so it drops out)
    return {k: v for k, v in data.items() if isinstance(v, (int, float)) and 0 <= v < math.inf}


def measured_choices(runtime, repeats=3):
    """[(op, kind)] per step: the fastest candidate at the plan's batch, timed on the runtime's own
    arena (values do not change a kernel's time) or read from the timings cache. A step's
    candidates are timed in turns (best_in_turns), best of `repeats` rounds, five at least for a
    batch, where a call is long enough that a few more rounds cost little, and ROUNDS_ONE at
    least for one image: its calls take tens of microseconds, so one woken thread or page fault
    doubles a call, and with three rounds some layers' picks were a fifth slower than the best."""
    use_cache = os.environ.get("NPDC_RUNTIME_RETIME", "") in ("", "0")
    cached, fresh, picks = _load_timings() if use_cache else {}, {}, []
    packer = Packer()
    steps = runtime.plan.steps
    options = [candidates(runtime, s) for s in steps]
    records = [[step_record(runtime, s, op, kind, packer) for op, kind in opts]
               for s, opts in zip(steps, options)]
    trial = Program.__new__(Program)
    trial._attach(runtime)
    trial.buffers = packer.arrays(*sparse_dtypes(runtime, [o for opts in options for o in opts],
                                                  [s for s, opts in zip(steps, options) for _ in opts]))
    B = runtime.plan.batch
    rounds = max(repeats, ROUNDS_ONE) if B == 1 else max(repeats, 5)
    for s, opts, recs in zip(steps, options, records):
        if len(opts) == 1:
            picks.append(opts[0])
            continue
        keys, calls = [_key(runtime, s, op, kind) for op, kind in opts], {}
        for key, (op, kind), rec in zip(keys, opts, recs):
            if key not in cached:
                calls[key] = (runtime.host_call(s, B) if op == W.OP_HOST
                              else lambda one=rec[None]: trial.run(0, 1, B, one))
        fresh.update(best_in_turns(calls, rounds))
        cached.update(fresh)
        picks.append(opts[int(np.argmin([cached[k] for k in keys]))])
    if fresh and use_cache:
        data = _load_timings()  # another process may have written meanwhile
        data.update(fresh)
        write_text(_timings_file(), json.dumps(data, indent=1, sort_keys=True))
    return picks
