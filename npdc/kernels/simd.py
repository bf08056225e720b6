"""Vector building blocks the convolution kernels share.

- straight_line_vectorised, straight_line_compiled: LLVM's SLP (straight-line) vectoriser, a
  process-wide Numba setting, turned on only while the kernels that need it compile.
- prefer_512_bit_vectors, transpose8, transpose8_tail, deinterleave16: Numba intrinsics, i.e. LLVM IR emitted at
  the call site. Numba has no vector types, and LLVM's vectorisers neither widen past their
  preferred width nor turn a scalar 8 x 8 transpose into shuffles (a version over tuples stayed
  scalar in the compiled code), so those steps are written in IR here. The two that move data
  load and store whole vectors without bounds checks; transpose8_checked and
  deinterleave16_checked are their bounds-checked twins, for tests.
- ld16, fma16, fmav16, st16: 16-lane tuple helpers for the register blocks the SLP vectoriser packs.
"""

from contextlib import contextmanager

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, sigutils, types
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic


@contextmanager
def straight_line_vectorised():
    """Compile with LLVM's SLP (straight-line) vectoriser, which Numba leaves off by default:
    kernels that keep a row of scalar sums (flat's few-channel rows, the GEMMs of winograd4 and
    polyphase) only get vector registers with it. The switch is process-wide and Numba reads it
    when it compiles, so it is set only while such a kernel compiles (holding Numba's compiler
    lock, so that no other thread compiles meanwhile), and the old value comes back even if a
    compilation fails."""
    with global_compiler_lock:
        old = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            yield
        finally:
            numba.config.SLP_VECTORIZE = old


# the float types (Numba's names) a straight_line_compiled kernel may be built for
SLP_FLOAT_TYPES = ("f4", "f8")


def straight_line_compiled(body, args, parallel=False):
    """body compiled with the SLP vectoriser for float32 and float64 arrays: `args` is its
    argument list with F for the float type, e.g. "F[:, ::1], i8".

    Each float type's signature is compiled (or loaded from Numba's cache) when a call first
    brings arrays of that type, not when the module loads: these register-blocked kernels are
    the slowest of the package to compile (tens of seconds each on a cold cache), and most
    programs use them in float32 only. A call is typed against the signatures as written, as if
    they had been given to numba.njit, and once every type is built the kernel compiles nothing
    more, exactly like such a kernel."""
    declared = {}
    for t in SLP_FLOAT_TYPES:
        arg_types, _ = sigutils.normalize_signature(f"void({args.replace('F', t)})")
        declared[numba.from_dtype(np.dtype(t))] = arg_types
    kernel = numba.njit(parallel=parallel, cache=True, fastmath={"contract"})(body)
    compile_any = kernel.compile

    def compile_declared(sig):
        arg_types, _ = sigutils.normalize_signature(sig)
        dtype = next((a.dtype for a in arg_types if isinstance(a, types.Array)), None)
        if dtype not in declared:
            raise TypeError(f"{body.__name__} is built for arrays of {sorted(map(str, declared))}, "
                            f"not for {arg_types}")
        with straight_line_vectorised():
            entry = compile_any(declared[dtype])
        if len(kernel.overloads) == len(declared):
            kernel.disable_compile()
        return entry

    kernel.compile = compile_declared
    return kernel


@intrinsic
def prefer_512_bit_vectors(typingctx):
    """Called first in a kernel: its vectorisers may use 512-bit registers. LLVM's tuning for
    AVX-512 CPUs asks for 256-bit vectors (older ones lowered their clock for wider ones), which
    halves the multiply-add peak of a register-blocked kernel. Only kernels whose register block
    is sized for 16-lane float32 vectors opt in (flat's few-channel rows, polyphase's and
    winograd4's GEMMs); a CPU without AVX-512 keeps its own widest vectors. The one-core peak
    measured with it is in docs/perf.md."""
    def codegen(context, builder, signature, args):
        # llvmlite's attribute set takes only the flag names it lists; LLVM reads this key=value one
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return types.void(), codegen


# two-input shuffles of the transpose, in three rounds: each round interleaves pairs of vectors
# in runs of 1, 2, then 4 lanes, so that after the third, vector j holds lane j of all eight rows
_ROUNDS = ([0, 8, 1, 9, 2, 10, 3, 11], [4, 12, 5, 13, 6, 14, 7, 15],
           [0, 1, 8, 9, 2, 3, 10, 11], [4, 5, 12, 13, 6, 7, 14, 15],
           [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])


def _transposed(builder, rows):
    """IR: the eight 8-lane vectors whose vector j holds lane j of each of `rows`, by 24 shuffles."""
    def shuffle(a, b, mask):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8), mask))

    v = rows
    for r, gap in enumerate((1, 2, 4)):  # pair vectors `gap` apart within groups of 2*gap
        lo, hi = _ROUNDS[2 * r], _ROUNDS[2 * r + 1]
        nxt = [None] * 8
        for k in range(4):
            a = (k // gap) * 2 * gap + k % gap
            nxt[2 * k], nxt[2 * k + 1] = shuffle(v[a], v[a + gap], lo), shuffle(v[a], v[a + gap], hi)
        v = nxt
    return v


@intrinsic
def transpose8(typingctx, src, s, s_step, dst, d, d_step):
    """dst.flat[d + j*d_step + i] = src.flat[s + i*s_step + j] for i, j < 8, both arrays
    C-contiguous of one float type: eight vector loads, 24 shuffles, eight vector stores. The
    caller keeps every index in bounds (no checks here; the kernels derive them from shapes;
    transpose8_checked is the checked twin)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.dtype == dst.dtype
            and src.dtype in (types.float32, types.float64) and src.layout == dst.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        src_a, s_v, s_step_v, dst_a, d_v, d_step_v = args
        ftype = context.get_value_type(signature.args[0].dtype)
        vtype, align = ir.VectorType(ftype, 8), context.get_abi_sizeof(ftype)
        base_in = context.make_array(signature.args[0])(context, builder, src_a).data
        base_out = context.make_array(signature.args[3])(context, builder, dst_a).data
        i64 = ir.IntType(64)

        def at(base, start, step, k):
            offset = builder.add(start, builder.mul(step, ir.Constant(i64, k)))
            return builder.bitcast(builder.gep(base, [offset]), vtype.as_pointer())

        v = _transposed(builder, [builder.load(at(base_in, s_v, s_step_v, i), align=align) for i in range(8)])
        for j in range(8):
            builder.store(v[j], at(base_out, d_v, d_step_v, j), align=align)
        return context.get_dummy_value()

    return types.void(src, s, s_step, dst, d, d_step), codegen


@intrinsic
def transpose8_tail(typingctx, src, s, s_step, dst, d, d_step, scale, shift, slopes, ch, res, act, add, lo,
                    hi):
    """The lanes lo <= i < hi of transpose8 with a conv's tail applied by destination row j:
    dst.flat[d + j*d_step + i] = f(src.flat[s + i*s_step + j] * scale[ch + j] + shift[ch + j]
    (+ res.flat[d + j*d_step + i] when add)), f(v) = v * slopes[ch + j] if act and v < 0 else v,
    in that order and unfused, so the bits are those of the same sum written one by one. Eight
    vector loads, 24 shuffles, then per row masked vector stores (and residual loads): only
    lanes lo .. hi - 1 are read from res and written, so a row may start before, or run past, the
    run it writes (a block of eight positions split where an image ends). All arrays C-contiguous
    of one float type; the caller keeps every written and read index in bounds."""
    arrays = (src, dst, scale, shift, slopes, res)
    if not (all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == src.dtype for a in arrays)
            and src.dtype in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        s_v, s_step_v, d_v, d_step_v, ch_v, lo_v, hi_v = (
            context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 2, 4, 5, 9, 13, 14))
        act_v, add_v = args[11], args[12]
        ftype = context.get_value_type(signature.args[0].dtype)
        vtype, align = ir.VectorType(ftype, 8), context.get_abi_sizeof(ftype)
        i32, i64, mtype = ir.IntType(32), ir.IntType(64), ir.VectorType(ir.IntType(1), 8)

        def base(k):
            return context.make_array(signature.args[k])(context, builder, args[k]).data

        def at(ptr, start, step, k):
            offset = builder.add(start, builder.mul(step, ir.Constant(i64, k)))
            return builder.bitcast(builder.gep(ptr, [offset]), vtype.as_pointer())

        def splat(value, vt):  # an 8-lane vector of value
            one = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(i32, 8), [0] * 8))

        def per_channel(ptr, j):
            return splat(builder.load(builder.gep(ptr, [builder.add(ch_v, ir.Constant(i64, j))])), vtype)

        lanes = ir.Constant(ir.VectorType(i64, 8), list(range(8)))
        mask = builder.and_(builder.icmp_signed(">=", lanes, splat(lo_v, ir.VectorType(i64, 8))),
                            builder.icmp_signed("<", lanes, splat(hi_v, ir.VectorType(i64, 8))))
        suffix = f"v8f{context.get_abi_sizeof(ftype) * 8}.p0"  # LLVM's name for this vector and pointer
        store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vtype, vtype.as_pointer(), i32, mtype]),
            f"llvm.masked.store.{suffix}")
        load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vtype, [vtype.as_pointer(), i32, mtype, vtype]), f"llvm.masked.load.{suffix}")
        rows = _transposed(builder, [builder.load(at(base(0), s_v, s_step_v, i), align=align) for i in range(8)])
        act_b = builder.icmp_unsigned("!=", act_v, ir.Constant(act_v.type, 0))
        add_b = builder.icmp_unsigned("!=", add_v, ir.Constant(add_v.type, 0))
        zero = ir.Constant(vtype, [0.0] * 8)
        sc_p, sh_p, sl_p, dst_p, res_p = base(6), base(7), base(8), base(3), base(10)
        for j in range(8):
            v = builder.fadd(builder.fmul(rows[j], per_channel(sc_p, j)), per_channel(sh_p, j))
            before = builder.block
            with builder.if_then(add_b):
                r = builder.call(load, [at(res_p, d_v, d_step_v, j), ir.Constant(i32, align), mask, zero])
                added, then = builder.fadd(v, r), builder.block
            merged = builder.phi(vtype)
            merged.add_incoming(added, then)
            merged.add_incoming(v, before)
            leaky = builder.select(builder.fcmp_ordered("<", merged, zero),
                                   builder.fmul(merged, per_channel(sl_p, j)), merged)
            out = builder.select(act_b, leaky, merged)
            builder.call(store, [out, at(dst_p, d_v, d_step_v, j), ir.Constant(i32, align), mask])
        return context.get_dummy_value()

    return types.void(src, s, s_step, dst, d, d_step, scale, shift, slopes, ch, res, act, add, lo, hi), codegen


@intrinsic
def deinterleave16(typingctx, src, s, evens, e, odds, o):
    """evens.flat[e + k] = src.flat[s + 2k] and odds.flat[o + k] = src.flat[s + 2k + 1] for
    k < 8, arrays C-contiguous of one float type: one vector load, two shuffles, two stores. The
    caller keeps every index in bounds (deinterleave16_checked is the checked twin)."""
    arrays = (src, evens, odds)
    if not (all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == src.dtype for a in arrays)
            and src.dtype in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        ftype = context.get_value_type(signature.args[0].dtype)
        align = context.get_abi_sizeof(ftype)

        def at(k, vtype):
            base = context.make_array(signature.args[k])(context, builder, args[k]).data
            return builder.bitcast(builder.gep(base, [args[k + 1]]), vtype.as_pointer())

        v = builder.load(at(0, ir.VectorType(ftype, 16)), align=align)
        for k, first in ((2, 0), (4, 1)):
            mask = ir.Constant(ir.VectorType(ir.IntType(32), 8), [first + 2 * j for j in range(8)])
            builder.store(builder.shuffle_vector(v, v, mask), at(k, ir.VectorType(ftype, 8)), align=align)
        return context.get_dummy_value()

    return types.void(src, s, evens, e, odds, o), codegen


# Bounds-checked twins of the two intrinsics that move data, for tests: the same arguments and
# the same result, but every index range is checked against its array before anything is read or
# written (IndexError otherwise), and the values move one at a time. Numba's own bounds checking
# (NUMBA_BOUNDSCHECK=1) cannot see inside the intrinsics' vector loads and stores, so a test that
# wants the kernels' index arithmetic checked compiles them with these in their place.


@numba.njit(cache=True)
def _check_span(first, step, count, width, size, what):
    """Raise IndexError unless first + k*step + l lies in 0 .. size-1 for all k < count, l < width."""
    low, high = first + min(0, (count - 1) * step), first + max(0, (count - 1) * step) + width - 1
    if low < 0 or high >= size:
        raise IndexError(what)


@numba.njit(cache=True)
def transpose8_checked(src, s, s_step, dst, d, d_step):
    """transpose8 with its index ranges checked: all 64 values are read before any is written,
    as the vector loads come before the stores there."""
    _check_span(s, s_step, 8, 8, src.size, "transpose8: source block out of range")
    _check_span(d, d_step, 8, 8, dst.size, "transpose8: destination block out of range")
    a, b = src.reshape(src.size), dst.reshape(dst.size)
    block = np.empty((8, 8), src.dtype)
    for i in range(8):
        for j in range(8):
            block[i, j] = a[s + i * s_step + j]
    for j in range(8):
        for i in range(8):
            b[d + j * d_step + i] = block[i, j]


@numba.njit(cache=True)
def deinterleave16_checked(src, s, evens, e, odds, o):
    """deinterleave16 with its index ranges checked: the sixteen values are read before any is
    written, as the one vector load comes before the two stores there."""
    _check_span(s, 0, 1, 16, src.size, "deinterleave16: source run out of range")
    _check_span(e, 0, 1, 8, evens.size, "deinterleave16: even run out of range")
    _check_span(o, 0, 1, 8, odds.size, "deinterleave16: odd run out of range")
    a = src.reshape(src.size)
    run = a[s:s + 16].copy()
    ev, od = evens.reshape(evens.size), odds.reshape(odds.size)
    for k in range(8):
        ev[e + k] = run[2 * k]
    for k in range(8):
        od[o + k] = run[2 * k + 1]


J16 = tuple(np.uint64(j) for j in range(16))  # unsigned offsets: no wraparound tests


@numba.njit(cache=True, inline="always")
def ld16(v, q):
    """v[q .. q+15] as a tuple."""
    return (v[q], v[q + J16[1]], v[q + J16[2]], v[q + J16[3]], v[q + J16[4]], v[q + J16[5]], v[q + J16[6]],
            v[q + J16[7]], v[q + J16[8]], v[q + J16[9]], v[q + J16[10]], v[q + J16[11]], v[q + J16[12]],
            v[q + J16[13]], v[q + J16[14]], v[q + J16[15]])


@numba.njit(cache=True, inline="always")
def fma16(s, w, e):
    """s + w * e lane by lane, for 16-tuples s and e."""
    return (s[0] + w * e[0], s[1] + w * e[1], s[2] + w * e[2], s[3] + w * e[3],
            s[4] + w * e[4], s[5] + w * e[5], s[6] + w * e[6], s[7] + w * e[7],
            s[8] + w * e[8], s[9] + w * e[9], s[10] + w * e[10], s[11] + w * e[11],
            s[12] + w * e[12], s[13] + w * e[13], s[14] + w * e[14], s[15] + w * e[15])


@numba.njit(cache=True, inline="always")
def fmav16(s, a, b):
    """s + a * b lane by lane, for 16-tuples s, a and b."""
    return (s[0] + a[0] * b[0], s[1] + a[1] * b[1], s[2] + a[2] * b[2], s[3] + a[3] * b[3],
            s[4] + a[4] * b[4], s[5] + a[5] * b[5], s[6] + a[6] * b[6], s[7] + a[7] * b[7],
            s[8] + a[8] * b[8], s[9] + a[9] * b[9], s[10] + a[10] * b[10], s[11] + a[11] * b[11],
            s[12] + a[12] * b[12], s[13] + a[13] * b[13], s[14] + a[14] * b[14], s[15] + a[15] * b[15])


@numba.njit(cache=True, inline="always")
def st16(v, q, s):
    """v[q .. q+15] = the 16-tuple s."""
    v[q], v[q + J16[1]], v[q + J16[2]], v[q + J16[3]] = s[0], s[1], s[2], s[3]
    v[q + J16[4]], v[q + J16[5]], v[q + J16[6]], v[q + J16[7]] = s[4], s[5], s[6], s[7]
    v[q + J16[8]], v[q + J16[9]], v[q + J16[10]], v[q + J16[11]] = s[8], s[9], s[10], s[11]
    v[q + J16[12]], v[q + J16[13]], v[q + J16[14]], v[q + J16[15]] = s[12], s[13], s[14], s[15]
