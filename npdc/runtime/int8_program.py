"""An int8 plan (npdc.runtime.int8.Int8Runtime) lowered for the compiled walk of
npdc.kernels.int8_walk: one int64 record per step, every layer's packed weights, integer tail
parameters and dequantization factors in three flat buffers, and the segments of steps one
compiled call runs (between float layers, which run in Python). The float plan's lowering is
npdc.runtime.program; this one has no choices to make (every int8 step has one kernel).
"""

import numpy as np

from npdc.kernels import int8_walk as KW
from npdc.runtime.int8_layout import ROOM, image_words


class _Buffers:
    """Flat buffers grown one array at a time; `add` returns the array's offset."""

    def __init__(self, **dtypes):
        self.dtypes, self.parts = dtypes, {k: [] for k in dtypes}
        self.sizes = dict.fromkeys(dtypes, 0)

    def add(self, buf, array):
        off = self.sizes[buf]
        self.parts[buf].append(np.ravel(array).astype(self.dtypes[buf]))
        self.sizes[buf] += int(np.size(array))
        return off

    def array(self, buf):
        return np.concatenate(self.parts[buf] + [np.zeros(1, self.dtypes[buf])])  # never empty


def shape3(shape):
    """A value's per-image shape as (C, H, W): (F,) becomes (F, 1, 1)."""
    s = tuple(int(v) for v in shape)
    return s + (1,) * (3 - len(s)) if len(s) <= 3 else (int(np.prod(s)), 1, 1)


def lower(rt):
    """(records, words, ints, reals, segments) of the runtime's plan; segments are (first, stop)
    runs of compiled steps and (k,) for a float layer. Each step's Int8Step arrays, sparse
    entries and blocked weights become views of the flat buffers, so the weights are held once."""
    bufs = _Buffers(words=np.int32, ints=np.int64, reals=np.float64)
    records = np.stack([_record(rt, s, bufs) for s in rt.plan.steps])
    words, ints, reals = bufs.array("words"), bufs.array("ints"), bufs.array("reals")
    for r, s in zip(records, rt.plan.steps):
        if r[KW.F_OP] in (KW.OP_CONV, KW.OP_LINEAR):
            q, b, o4 = rt.q[s.name], r[KW.F_BIAS], r[KW.F_O4]
            q.w = words[r[KW.F_W]:r[KW.F_W] + r[KW.F_WN]]
            q.bias, q.m0, q.shift = ints[b:b + o4], ints[b + o4:b + 2 * o4], ints[b + 2 * o4:b + 3 * o4]
            q.meta = ints[r[KW.F_META]:r[KW.F_META] + KW.META]
        if s.name in rt.entries:
            rp, e, nnz = r[KW.F_ROWPTR], r[KW.F_EOFF], r[KW.F_NNZ]
            rt.entries[s.name] = (ints[rp:rp + r[KW.F_NROWPTR]], ints[e:e + nnz], words[r[KW.F_EW]:r[KW.F_EW] + nnz])
        if s.name in rt.blocked:
            rt.blocked[s.name] = words[r[KW.F_LANES]:r[KW.F_LANES] + r[KW.F_NLANES]]
    segments, start = [], None
    for k, r in enumerate(records):
        if r[KW.F_OP] == KW.OP_HOST:
            segments += ([(start, k)] if start is not None else []) + [(k,)]
            start = None
        elif start is None:
            start = k
    if start is not None:
        segments.append((start, len(records)))
    return records, words, ints, reals, segments


def _record(rt, s, bufs):
    r, B = np.zeros(KW.N_FIELDS, np.int64), ROOM * rt.plan.batch  # B x byte offsets
    if s.kind == "layer":
        return r  # OP_HOST
    x, y = rt.plan.values[s.inputs[0]], rt.plan.values[s.output]
    r[KW.F_X], r[KW.F_Y] = B * x.offset, B * y.offset
    r[KW.F_XC:KW.F_XW + 1], r[KW.F_YC:KW.F_YW + 1] = shape3(x.shape), shape3(y.shape)
    if s.kind == "pool":
        (_, zx), (_, zy) = rt.scales[s.inputs[0]], rt.scales[s.output]
        m0, shift = rt.pool_multiplier(s)
        r[KW.F_OP], r[KW.F_ZX], r[KW.F_ZY], r[KW.F_M0], r[KW.F_SHIFT] = KW.OP_POOL, zx, zy, m0, shift
        return r
    q = rt.q[s.name]
    r[KW.F_W], r[KW.F_WN], r[KW.F_K4], r[KW.F_O4] = bufs.add("words", q.w), q.w.size, q.k4, q.bias.size
    r[KW.F_BIAS] = bufs.add("ints", np.concatenate([q.bias, q.m0, q.shift]))
    r[KW.F_META] = bufs.add("ints", q.meta)
    if s.kind == "linear":
        r[KW.F_OP], r[KW.F_ROWS] = KW.OP_LINEAR, rt.plan.batch  # the batch its sparse entries are for
        if rt.float_out and s is rt.plan.steps[-1]:
            r[KW.F_LAST], r[KW.F_DEQ] = 1, bufs.add("reals", q.dequant)
        return _kernel_fields(rt, s, r, bufs)
    r[KW.F_OP], r[KW.F_RES] = KW.OP_CONV, -1
    if s.residual:
        res = rt.plan.values[s.residual]
        r[KW.F_RES], r[KW.F_RC:KW.F_RW + 1] = B * res.offset, shape3(res.shape)
    r[KW.F_KH], r[KW.F_KW], r[KW.F_STRIDE], r[KW.F_PAD] = s.w_shape[2], s.w_shape[3], s.stride, s.pad
    r[KW.F_ROWS] = rt.rows_per(s)
    if rt.runs_words(s):
        r[KW.F_GEO] = bufs.add("ints", rt.geometry(s))
        r[KW.F_WORDS] = 1
        for name, field in ((s.inputs[0], KW.F_XN), (s.residual, KW.F_RN), (s.output, KW.F_YN)):
            r[field] = image_words(rt.plan, rt.pads, name) if name in rt.pads else 0
    offs = rt.tap_offsets(s)
    r[KW.F_OFFS], r[KW.F_NOFFS] = bufs.add("ints", offs), offs.size
    return _kernel_fields(rt, s, r, bufs)


def _kernel_fields(rt, s, r, bufs):
    """The record r of a conv or linear step with its sparse entries or blocked weights, if any."""
    r[KW.F_NROWPTR] = 1  # a dense GEMM: ints[F_ROWPTR] (0) the one row pointer
    if s.name in rt.entries:
        rowptr, e_off, ew = rt.entries[s.name]
        r[KW.F_ROWPTR], r[KW.F_NROWPTR] = bufs.add("ints", rowptr), rowptr.size
        r[KW.F_EOFF], r[KW.F_EW], r[KW.F_NNZ] = bufs.add("ints", e_off), bufs.add("words", ew), ew.size
    if s.name in rt.blocked:
        r[KW.F_LANES], r[KW.F_NLANES] = bufs.add("words", rt.blocked[s.name]), rt.blocked[s.name].size
    return r
