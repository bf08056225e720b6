"""AVX-512 VNNI for the int8 kernels: `dot_rows4`, a Numba intrinsic (LLVM IR emitted at the call
site, as npdc.kernels.simd does for shuffles) whose inner loop is the vpdpbusd instruction,
its sparse twins `dot_row_sparseV` (one weight row's non-zero words only), `dot_lanes` (output
channels in the lanes, npdc.kernels.int8_blocked), and `vnni_path()`, the one place that
decides whether the kernels use it.

vpdpbusd (Intel's instruction set reference, "VPDPBUSD: Multiply and Add Unsigned and Signed
Bytes") adds to each of 16 int32 lanes the four products of that lane's unsigned bytes of one
operand and signed bytes of the other, without saturation: the u8 activation x s8 weight dot
product of four inputs that npdc.kernels.int8 packs its columns for. Its sums are exact within
the int32 bound that module states, so the intrinsic and the portable loops of
npdc.kernels.int8.dot_rows4_portable give the same bits.

On a CPU without the feature the intrinsic compiles to a trap (LLVM cannot select the
instruction there) and vnni_path() never chooses it. NPDC_INT8_PORTABLE=1 forces the portable
loops on any CPU (for tests and comparisons).
"""

import os

import llvmlite.binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

PORTABLE_ENV = "NPDC_INT8_PORTABLE"


def cpu_has_vnni():
    """Whether the CPU Numba compiles for has AVX-512 VNNI (a CPU name forced through Numba's
    NUMBA_CPU_NAME counts as without, since its features are not the host's)."""
    if os.environ.get("NUMBA_CPU_NAME"):
        return False
    return bool(llvm.get_host_cpu_features().get("avx512vnni", False))


def vnni_path():
    """True when the int8 kernels run vpdpbusd: the CPU has it and NPDC_INT8_PORTABLE is unset or 0."""
    return cpu_has_vnni() and os.environ.get(PORTABLE_ENV, "") in ("", "0")


def _flat(t, dtype):
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == dtype


def _trap(context, builder):
    """The body of an intrinsic on a CPU without VNNI (never run: vnni_path() is False there)."""
    trap = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.trap")
    builder.call(trap, [])
    return context.get_dummy_value()


def _vpdpbusd(builder):
    v16 = ir.VectorType(ir.IntType(32), 16)
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16, v16, v16]),
                                          "llvm.x86.avx512.vpdpbusd.512")


def _broadcast(builder, word):
    """A 32-bit weight word in all 16 lanes."""
    v16 = ir.VectorType(ir.IntType(32), 16)
    one = builder.insert_element(ir.Constant(v16, None), word, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(v16, None), ir.Constant(v16, [0] * 16))


def _dot_rows4(w, cols, acc, offsets, vectors=1):
    """The codegen of dot_rows4 and dot_rows4_at(2): column k starts at c_off + k * c_pitch, or
    at c_off + offs[k] when `offsets` (an int64 array type) is given; `vectors` runs of 16
    positions side by side (4 x vectors accumulators: enough independent sums to cover
    vpdpbusd's latency, and each weight broadcast serves them all)."""
    have = cpu_has_vnni()

    def codegen(context, builder, signature, args):
        w_a, w_off_v, w_pitch_v, cols_a, c_off_v, c_step, k4_v, acc_a, a_off_v, a_pitch_v = args
        v16 = ir.VectorType(ir.IntType(32), 16)
        if not have:
            return _trap(context, builder)
        w_base = context.make_array(signature.args[0])(context, builder, w_a).data
        c_base = context.make_array(signature.args[3])(context, builder, cols_a).data
        a_base = context.make_array(signature.args[7])(context, builder, acc_a).data
        o_base = context.make_array(offsets)(context, builder, c_step).data if offsets else None
        dpbusd = _vpdpbusd(builder)
        sums = [cgutils.alloca_once_value(builder, ir.Constant(v16, None)) for _ in range(4 * vectors)]
        rows = [builder.add(w_off_v, builder.mul(w_pitch_v, ir.Constant(w_off_v.type, r))) for r in range(4)]
        with cgutils.for_range(builder, k4_v) as loop:
            k = loop.index
            step = builder.load(builder.gep(o_base, [k])) if offsets else builder.mul(k, c_step)
            at = builder.add(c_off_v, step)
            columns = []
            for v in range(vectors):  # the runs of 16 positions are 64 bytes apart
                where = builder.gep(c_base, [builder.add(at, ir.Constant(at.type, 64 * v))])
                columns.append(builder.load(builder.bitcast(where, v16.as_pointer()), align=1))
            for r in range(4):
                splat = _broadcast(builder, builder.load(builder.gep(w_base, [builder.add(rows[r], k)])))
                for v, column in enumerate(columns):
                    total = sums[r * vectors + v]
                    builder.store(builder.call(dpbusd, [builder.load(total), column, splat]), total)
        for r in range(4):
            for v in range(vectors):
                at = builder.add(a_off_v, builder.mul(a_pitch_v, ir.Constant(a_pitch_v.type, r)))
                at = builder.add(at, ir.Constant(at.type, 16 * v))
                builder.store(builder.load(sums[r * vectors + v]),
                              builder.bitcast(builder.gep(a_base, [at]), v16.as_pointer()), align=4)
        return context.get_dummy_value()

    i = types.int64  # offsets, pitches and the count arrive as int64 whatever their type at the call
    return types.void(w, i, i, cols, i, offsets or i, i, acc, i, i), codegen


@intrinsic
def dot_rows4(typingctx, w, w_off, w_pitch, cols, c_off, c_pitch, k4, acc, a_off, a_pitch):
    """acc[a_off + r*a_pitch + l] = sum over k < k4 of vpdpbusd of the column bytes
    cols[c_off + k*c_pitch ..+64] (16 lanes x 4 uint8) and the weight word w[w_off + r*w_pitch + k]
    (4 int8) broadcast to every lane, for rows r < 4 and lanes l < 16; w int32, cols uint8, acc
    int32, all flat and C-contiguous. Four accumulators stay in registers across the k loop and
    share each column load. No bounds checks: the caller derives every index from shapes."""
    if not (_flat(w, types.int32) and _flat(cols, types.uint8) and _flat(acc, types.int32)):
        return None
    return _dot_rows4(w, cols, acc, None)


@intrinsic
def dot_rows4_at(typingctx, w, w_off, w_pitch, cols, c_off, offs, k4, acc, a_off, a_pitch):
    """dot_rows4 with column k at cols[c_off + offs[k]] (offs int64, flat): the columns of a
    conv tap read in place from channel-interleaved activations (npdc.kernels.int8_pack)."""
    if not (_flat(w, types.int32) and _flat(cols, types.uint8) and _flat(acc, types.int32)
            and _flat(offs, types.int64)):
        return None
    return _dot_rows4(w, cols, acc, offs)


@intrinsic
def dot_rows4_at2(typingctx, w, w_off, w_pitch, cols, c_off, offs, k4, acc, a_off, a_pitch):
    """dot_rows4_at over 32 positions (two runs of 16 lanes, the second 64 bytes on in the
    columns and 16 words on in acc)."""
    if not (_flat(w, types.int32) and _flat(cols, types.uint8) and _flat(acc, types.int32)
            and _flat(offs, types.int64)):
        return None
    return _dot_rows4(w, cols, acc, offs, 2)


def _dot_row_sparse(ew, cols, acc, vectors):
    """The codegen of dot_row_sparseV, V = vectors: V runs of 16 positions, every entry's word
    broadcast once and its V column vectors loaded at the entry's offset (64 bytes apart); even
    and odd entries add into two sets of V sums, joined at the end, so that short passes (V = 2
    on a 4 x 4 plane) are not held up by vpdpbusd's latency."""
    have = cpu_has_vnni()

    def codegen(context, builder, signature, args):
        w_a, o_a, e0_v, e1_v, cols_a, c_off_v, acc_a, a_off_v = args
        v16 = ir.VectorType(ir.IntType(32), 16)
        if not have:
            return _trap(context, builder)
        w_base = context.make_array(signature.args[0])(context, builder, w_a).data
        o_base = context.make_array(signature.args[1])(context, builder, o_a).data
        c_base = context.make_array(signature.args[4])(context, builder, cols_a).data
        a_base = context.make_array(signature.args[6])(context, builder, acc_a).data
        dpbusd = _vpdpbusd(builder)
        sums = [cgutils.alloca_once_value(builder, ir.Constant(v16, None)) for _ in range(2 * vectors)]

        def entry(e, half):
            at = builder.add(c_off_v, builder.load(builder.gep(o_base, [e])))
            splat = _broadcast(builder, builder.load(builder.gep(w_base, [e])))
            for v in range(vectors):
                where = builder.gep(c_base, [builder.add(at, ir.Constant(at.type, 64 * v))])
                column = builder.load(builder.bitcast(where, v16.as_pointer()), align=1)
                total = sums[half * vectors + v]
                builder.store(builder.call(dpbusd, [builder.load(total), column, splat]), total)

        count = builder.sub(e1_v, e0_v)
        one = ir.Constant(count.type, 1)
        with cgutils.for_range(builder, builder.ashr(count, one)) as loop:  # two entries, two sets of sums
            e = builder.add(e0_v, builder.shl(loop.index, one))
            entry(e, 0)
            entry(builder.add(e, one), 1)
        with builder.if_then(builder.trunc(count, ir.IntType(1))):
            entry(builder.sub(e1_v, one), 0)
        for v in range(vectors):
            at = builder.add(a_off_v, ir.Constant(a_off_v.type, 16 * v))
            total = builder.add(builder.load(sums[v]), builder.load(sums[vectors + v]))
            builder.store(total, builder.bitcast(builder.gep(a_base, [at]), v16.as_pointer()), align=4)
        return context.get_dummy_value()

    i = types.int64
    return types.void(ew, types.Array(types.int64, 1, "C"), i, i, cols, i, acc, i), codegen


def _sparse_intrinsic(vectors):
    def dot_row_sparse(typingctx, ew, e_off, e0, e1, cols, c_off, acc, a_off):
        if not (_flat(ew, types.int32) and _flat(e_off, types.int64) and _flat(cols, types.uint8)
                and _flat(acc, types.int32)):
            return None
        return _dot_row_sparse(ew, cols, acc, vectors)

    dot_row_sparse.__name__ = dot_row_sparse.__qualname__ = f"dot_row_sparse{vectors}"
    return intrinsic(dot_row_sparse)


SPARSE_VECTORS = 8  # runs of 16 positions one sparse pass keeps in registers, at most
# dot_row_sparseV(ew, e_off, e0, e1, cols, c_off, acc, a_off), V = 1..SPARSE_VECTORS:
# acc[a_off + l] = sum over entries e0 <= e < e1 of vpdpbusd of the column bytes at
# cols[c_off + e_off[e] + 4l] and the weight word ew[e] broadcast, for l < 16 V: one weight row's
# sums over its non-zero words only (npdc.kernels.int8_sparse lists them). No bounds checks.
(dot_row_sparse1, dot_row_sparse2, dot_row_sparse3, dot_row_sparse4, dot_row_sparse5, dot_row_sparse6,
 dot_row_sparse7, dot_row_sparse8) = (_sparse_intrinsic(v) for v in range(1, SPARSE_VECTORS + 1))


LANE_POSITIONS, LANE_VECTORS = 6, 4  # dot_lanes' register block: 6 positions x 4 vectors of 16 channels


@intrinsic
def dot_lanes(typingctx, wl, w_off, x, pos, p_off, offs, k4, acc, a_off):
    """acc[a_off + r*64 + l] = sum over k < k4 of the 4-byte dot product of the activation word
    x[pos[p_off + r] + offs[k]] (4 uint8) and the weight word wl[w_off + 64k + l] (4 int8), for
    positions r < LANE_POSITIONS and lanes l < 64: per k, four weight vectors are loaded and each
    position's word broadcast once and multiplied into them, 24 vpdpbusd on 24 accumulators
    (npdc.kernels.int8_blocked.lanes_portable is the portable twin). wl and acc int32, x uint32,
    pos and offs int64, all flat; no bounds checks."""
    if not (_flat(wl, types.int32) and _flat(x, types.uint32) and _flat(pos, types.int64)
            and _flat(offs, types.int64) and _flat(acc, types.int32)):
        return None
    have = cpu_has_vnni()

    def codegen(context, builder, signature, args):
        w_a, w_off_v, x_a, pos_a, p_off_v, offs_a, k4_v, acc_a, a_off_v = args
        if not have:
            return _trap(context, builder)
        v16, i64 = ir.VectorType(ir.IntType(32), 16), ir.IntType(64)

        def data(k):
            return context.make_array(signature.args[k])(context, builder, args[k]).data

        def vector_at(base, at):
            return builder.bitcast(builder.gep(base, [at]), v16.as_pointer())

        w_base, x_base, p_base, o_base, a_base = data(0), data(2), data(3), data(5), data(7)
        dpbusd = _vpdpbusd(builder)
        n_sums = LANE_POSITIONS * LANE_VECTORS
        sums = [cgutils.alloca_once_value(builder, ir.Constant(v16, None)) for _ in range(n_sums)]
        starts = [builder.load(builder.gep(p_base, [builder.add(p_off_v, ir.Constant(i64, r))]))
                  for r in range(LANE_POSITIONS)]
        with cgutils.for_range(builder, k4_v) as loop:
            k = loop.index
            step = builder.load(builder.gep(o_base, [k]))
            row = builder.add(w_off_v, builder.mul(k, ir.Constant(i64, 16 * LANE_VECTORS)))
            weights = [builder.load(vector_at(w_base, builder.add(row, ir.Constant(i64, 16 * v))), align=4)
                       for v in range(LANE_VECTORS)]
            for r in range(LANE_POSITIONS):
                splat = _broadcast(builder, builder.load(builder.gep(x_base, [builder.add(starts[r], step)])))
                for v in range(LANE_VECTORS):
                    total = sums[r * LANE_VECTORS + v]  # activations unsigned, weights signed
                    builder.store(builder.call(dpbusd, [builder.load(total), splat, weights[v]]), total)
        for j, total in enumerate(sums):
            builder.store(builder.load(total), vector_at(a_base, builder.add(a_off_v, ir.Constant(i64, 16 * j))),
                          align=4)
        return context.get_dummy_value()

    i = types.int64
    return types.void(wl, i, x, pos, i, offs, i, acc, i), codegen
