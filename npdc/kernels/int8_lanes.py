"""The int8 tails' requantisation of 16 int32 sums at a time, as LLVM vector IR emitted at the
call site (a Numba intrinsic, as npdc.kernels.vnni emits vpdpbusd): Jacob et al. 2018's rounding
high multiply and rounding right shift (npdc.kernels.int8_requant.requantize), then the zero point and
the clamp, 16 uint8 out.

Why IR: Numba types int32 arithmetic as int64, so a plain loop of the tail runs 8 lanes of 64-bit
operations per vector. Here only the 32 x 32 -> 64-bit multiply and the shift that rounds it are
done in 64-bit lanes (the even and the odd lanes, the multiply one vpmuldq on AVX-512); the rest
runs on 16 int32 lanes. The IR is
generic LLVM (no x86 intrinsic), so it compiles on any CPU and gives the same bits everywhere.

Preconditions, which the caller (npdc.kernels.int8_requant.lanes_apply) checks per channel and
otherwise takes the general loop: the sum plus bias, shifted left by -shift when the shift is
negative (M >= 1), fits in int32 without saturating (so the paper's saturations are the
identity), and a right shift e is at most 30. Then, with a = v m0 + 2^30 and h = floor(a /
2^31) (|h| < 2^31: the product is below 2^62), divide_by_pow2(h, e) = (h >> e) + [(h & mask) >
(mask >> 1) + [h < 0]], mask = 2^e - 1, is floor((h + 2^(e-1) - [h < 0]) / 2^e) for e >= 1, and
so one arithmetic shift of a 64-bit lane: floor((a + 2^(30+e) - [a < 0] 2^31) / 2^(31+e)).
Both roundings in that one shift take about a fifth fewer vector operations than the rounding
shift on 16 lanes after the halves are joined.
"""

import llvmlite
import llvmlite.binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from npdc.kernels.int8_pack import LANES


def _pointer_name(vec):
    """The mangled pointer of a masked load or store's name: "p0" where LLVM's pointers are
    opaque (LLVM 17 on), else the typed pointer to the vector."""
    if llvm.llvm_version_info[0] >= 17 or not getattr(llvmlite, "ir_layer_typed_pointers_enabled", True):
        return "p0"
    return f"p0v{vec.count}i{vec.element.width}"


def _flat(t, dtype):
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == dtype


def _splat(builder, value, vec):
    """A vector of type vec with every lane the scalar value, cut or sign-extended to the lanes."""
    lane = vec.element
    if value.type.width > lane.width:
        value = builder.trunc(value, lane)
    elif value.type.width < lane.width:
        value = builder.sext(value, lane)
    one = builder.insert_element(ir.Constant(vec, None), value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vec.count), [0] * vec.count)
    return builder.shuffle_vector(one, ir.Constant(vec, None), zeros)


def _const(vec, v):
    return ir.Constant(vec, [ir.Constant(vec.element, v)] * vec.count)


def _keep(builder, count):
    """The lane mask l < count of a masked load or store (count <= LANES: compared in 32 bits)."""
    i32 = ir.IntType(32)
    lanes = ir.Constant(ir.VectorType(i32, LANES), [ir.Constant(i32, lane) for lane in range(LANES)])
    return builder.icmp_signed("<", lanes, _splat(builder, count, ir.VectorType(i32, LANES)))


def _load(builder, base, off, vec, keep):
    """vec's lanes from base + off where keep (0 elsewhere: nothing past them is read)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec.as_pointer(), ir.IntType(32),
                                                                             keep.type, vec]),
                                        f"llvm.masked.load.v{LANES}i{vec.element.width}.{_pointer_name(vec)}")
    ptr = builder.bitcast(builder.gep(base, [off]), vec.as_pointer())
    return builder.call(fn, [ptr, ir.Constant(ir.IntType(32), vec.element.width // 8), keep, ir.Constant(vec, None)])


def _requantize(builder, x, m0, shift):
    """requantize(x, m0, shift) of 16 int32 lanes, for shift <= 30 and x * 2^-shift within int32
    (no saturation): a left shift for a negative shift, then on the even and the odd lanes (64-bit
    products) both roundings as one arithmetic shift: with a = x m0 + 2^30, h = floor(a / 2^31)
    and, for e >= 1, divide_by_pow2(h, e) = floor((h + 2^(e-1) - [h < 0]) / 2^e) =
    floor((a + 2^(30+e) - [a < 0] 2^31) / 2^(31+e)) (|a| < 2^62 + 2^30: no overflow)."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    v16, w8 = x.type, ir.VectorType(i64, LANES // 2)
    shift = builder.sext(shift, i64) if shift.type.width < 64 else shift
    negative = builder.icmp_signed("<", shift, ir.Constant(i64, 0))
    zero = ir.Constant(i64, 0)
    x = builder.shl(x, _splat(builder, builder.select(negative, builder.neg(shift), zero), v16))
    e = builder.select(negative, zero, shift)
    rounds = builder.icmp_signed(">", e, zero)
    half = builder.select(rounds, builder.shl(ir.Constant(i64, 1), builder.add(e, ir.Constant(i64, 30))), zero)
    nudge = _splat(builder, builder.add(half, ir.Constant(i64, 1 << 30)), w8)
    below = _splat(builder, builder.select(rounds, ir.Constant(i64, 1 << 31), zero), w8)
    count = _splat(builder, builder.add(e, ir.Constant(i64, 31)), w8)
    pairs = builder.bitcast(x, w8)  # lane 2i in the low half of 64-bit lane i, lane 2i+1 high
    m = builder.sext(_splat(builder, m0, ir.VectorType(i32, LANES // 2)), w8)  # m0 < 2^31: vpmuldq
    low = _const(w8, -(1 << 30))
    halves = []
    for lanes in (builder.ashr(builder.shl(pairs, _const(w8, 32)), _const(w8, 32)), builder.ashr(pairs, _const(w8, 32))):
        p = builder.mul(lanes, m)
        t = builder.sub(builder.add(p, nudge), builder.select(builder.icmp_signed("<", p, low), below, _const(w8, 0)))
        halves.append(builder.ashr(t, count))
    h = builder.or_(builder.and_(halves[0], _const(w8, 0xFFFFFFFF)), builder.shl(halves[1], _const(w8, 32)))
    return builder.bitcast(h, v16)


def _clamp(builder, y, zy, low):
    """clamp(y + zy, low, 255) on int32 lanes."""
    v16 = y.type
    y = builder.add(y, _splat(builder, zy, v16))
    lo, hi = _splat(builder, low, v16), _const(v16, 255)
    y = builder.select(builder.icmp_signed("<", y, lo), lo, y)
    return builder.select(builder.icmp_signed(">", y, hi), hi, y)


def _store_u8(builder, y, zy, low, base, off, keep):
    """clamp(y + zy, low, 255) as bytes to base + off where keep."""
    b16 = ir.VectorType(ir.IntType(8), LANES)
    y = _clamp(builder, y, zy, low)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [b16, b16.as_pointer(),
                                                                                     ir.IntType(32), keep.type]),
                                        f"llvm.masked.store.v{LANES}i8.{_pointer_name(b16)}")
    builder.call(fn, [builder.trunc(y, b16), builder.bitcast(builder.gep(base, [off]), b16.as_pointer()),
                      ir.Constant(ir.IntType(32), 1), keep])


def _residual_sum(builder, x, bias, m0, shift, rb, zr, r_mul, r_shift, fraction):
    """residual16's sum before the zero point: requantize(x + bias, m0, shift) clamped to +-2^30,
    plus residual_term(rb - zr, r_mul, r_shift) (in 32 bits: |rb - zr| <= 255, r_mul < 2^22,
    r_shift <= 30), rounded by 2^-fraction (ties away from zero)."""
    v16 = x.type
    c = _requantize(builder, builder.add(x, _splat(builder, bias, v16)), m0, shift)
    big = _const(v16, 1 << 30)
    c = builder.select(builder.icmp_signed(">", c, big), big, c)
    c = builder.select(builder.icmp_signed("<", c, builder.neg(big)), builder.neg(big), c)
    i64 = ir.IntType(64)
    e = builder.sext(r_shift, i64) if r_shift.type.width < 64 else r_shift
    half = builder.lshr(builder.shl(ir.Constant(i64, 1), e), ir.Constant(i64, 1))
    t = builder.mul(builder.sub(rb, _splat(builder, zr, v16)), _splat(builder, r_mul, v16))
    t = builder.ashr(builder.add(t, _splat(builder, half, v16)), _splat(builder, e, v16))
    total = builder.add(c, t)
    f16 = _splat(builder, fraction, v16)
    half = builder.lshr(builder.shl(_const(v16, 1), f16), _const(v16, 1))
    return builder.ashr(builder.add(builder.add(total, half), builder.ashr(total, _const(v16, 31))), f16)


def _store_words(builder, y, base, off, keep):
    """16 int32 lanes to base + off where keep."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [y.type, y.type.as_pointer(),
                                                                                     ir.IntType(32), keep.type]),
                                        f"llvm.masked.store.v{LANES}i32.{_pointer_name(y.type)}")
    builder.call(fn, [y, builder.bitcast(builder.gep(base, [off]), y.type.as_pointer()), ir.Constant(ir.IntType(32), 4),
                      keep])


def _data(context, builder, ty, value):
    return context.make_array(ty)(context, builder, value).data


@intrinsic
def requantize16(typingctx, a, a_off, out, o_off, count, bias, m0, shift, zy, low):
    """out[o_off + l] = clamp(zy + requantize(a[a_off + l] + bias, m0, shift), low, 255) for lanes l <
    count (<= 16; masked loads and stores: nothing past them is read or written), under the
    module's preconditions; a int32, out uint8, both flat and C-contiguous; no bounds checks (the
    caller derives the offsets from the shapes)."""
    if not (_flat(a, types.int32) and _flat(out, types.uint8)):
        return None

    def codegen(context, builder, signature, args):
        a_a, a_off_v, out_a, o_off_v, count_v, bias_v, m0_v, e_v, zy_v, low_v = args
        v16 = ir.VectorType(ir.IntType(32), LANES)
        keep = _keep(builder, count_v)
        x = _load(builder, _data(context, builder, signature.args[0], a_a), a_off_v, v16, keep)
        y = _requantize(builder, builder.add(x, _splat(builder, bias_v, v16)), m0_v, e_v)
        _store_u8(builder, y, zy_v, low_v, _data(context, builder, signature.args[2], out_a), o_off_v, keep)
        return context.get_dummy_value()

    i = types.int64
    return types.void(a, i, out, i, i, i, i, i, i, i), codegen


@intrinsic
def residual16(typingctx, a, a_off, r, r_off, out, o_off, count, bias, m0, shift, zy, low, zr, r_mul, r_shift,
               fraction):
    """requantize16 with a residual added, as npdc.kernels.int8_requant.finish_residual adds it:
    the conv's term c = requantize(a + bias, m0, shift) (a shift that already includes the
    `fraction` extra bits) and the residual's t = residual_term(r - zr, r_mul, r_shift) of the
    bytes r[r_off + l], summed and rounded once (ties away from zero), zy added and clamped.
    Preconditions: the module's for c's shift, r_mul < 2^22 and r_shift <= 30 (as
    npdc.runtime.int8_params.residual_multiplier gives them: |t| < 2^28); c is clamped to +-2^30
    before the sum (within int32), which changes no output: a larger |c| saturates it either
    way."""
    if not (_flat(a, types.int32) and _flat(r, types.uint8) and _flat(out, types.uint8)):
        return None

    def codegen(context, builder, signature, args):
        (a_a, a_off_v, r_a, r_off_v, out_a, o_off_v, count_v, bias_v, m0_v, shift_v, zy_v, low_v, zr_v, rmul_v,
         rs_v, f_v) = args
        v16, b16 = ir.VectorType(ir.IntType(32), LANES), ir.VectorType(ir.IntType(8), LANES)
        keep = _keep(builder, count_v)
        x = _load(builder, _data(context, builder, signature.args[0], a_a), a_off_v, v16, keep)
        rb = _load(builder, _data(context, builder, signature.args[2], r_a), r_off_v, b16, keep)
        y = _residual_sum(builder, x, bias_v, m0_v, shift_v, builder.zext(rb, v16), zr_v, rmul_v, rs_v, f_v)
        _store_u8(builder, y, zy_v, low_v, _data(context, builder, signature.args[4], out_a), o_off_v, keep)
        return context.get_dummy_value()

    i = types.int64
    return types.void(a, i, r, i, out, i, i, i, i, i, i, i, i, i, i, i), codegen


def _words4(residual):
    """The codegen of requantize16x4 (residual False) and residual16x4: four output channels'
    16 lanes each, requantised as requantize16 / residual16 do, packed byte r = channel o + r into
    16 words (the layout of npdc.kernels.int8_words)."""

    def codegen(context, builder, signature, args):
        if residual:
            (a_a, a_off, a_pitch, r_a, r_off, out_a, o_off, count, bias_a, m0_a, shift_a, zy, low, zr, rmul, rs,
             f) = args
        else:
            a_a, a_off, a_pitch, out_a, o_off, count, bias_a, m0_a, shift_a, zy, low = args
        at = 2 if residual else 0  # r and r_off shift the later arguments
        v16 = ir.VectorType(ir.IntType(32), LANES)
        keep = _keep(builder, count)
        a_base = _data(context, builder, signature.args[0], a_a)
        words = ir.Constant(v16, None)
        if residual:
            r_words = _load(builder, _data(context, builder, signature.args[3], r_a), r_off, v16, keep)
        for r in range(4):
            x = _load(builder, a_base, builder.add(a_off, builder.mul(a_pitch, ir.Constant(a_pitch.type, r))), v16,
                      keep)
            bias, m0, shift = (builder.extract_value(t, r) for t in (bias_a, m0_a, shift_a))
            if residual:
                rb = builder.and_(builder.lshr(r_words, _const(v16, 8 * r)), _const(v16, 255))
                y = _residual_sum(builder, x, bias, m0, builder.sub(shift, f), rb, zr, rmul, rs, f)
            else:
                y = _requantize(builder, builder.add(x, _splat(builder, bias, v16)), m0, shift)
            words = builder.or_(words, builder.shl(_clamp(builder, y, zy, low), _const(v16, 8 * r)))
        _store_words(builder, words, _data(context, builder, signature.args[at + 3], out_a), o_off, keep)
        return context.get_dummy_value()

    return codegen


def _four(t):
    return isinstance(t, types.UniTuple) and t.count == 4 and isinstance(t.dtype, types.Integer)


@intrinsic
def requantize16x4(typingctx, a, a_off, a_pitch, out, o_off, count, bias, m0, shift, zy, low):
    """out[o_off + l] (uint32) = the four bytes clamp(zy + requantize(a[a_off + r * a_pitch + l] +
    bias[r], m0[r], shift[r]), low, 255) for r < 4, byte r the r-th, for lanes l < count (<= 16,
    masked); a int32 and out flat, bias, m0, shift tuples of four integers (values, not arrays,
    so that a loop over a run keeps everything derived from them out of the loop); the module's
    preconditions for all four channels."""
    if not (_flat(a, types.int32) and _flat(out, types.uint32) and _four(bias) and _four(m0) and _four(shift)):
        return None
    i = types.int64
    return types.void(a, i, i, out, i, i, bias, m0, shift, i, i), _words4(False)


@intrinsic
def residual16x4(typingctx, a, a_off, a_pitch, r, r_off, out, o_off, count, bias, m0, shift, zy, low, zr, r_mul,
                 r_shift, fraction):
    """requantize16x4 with a residual added as residual16 adds it, channel r's residual byte
    being byte r of the words r[r_off + l] (uint32); the conv's shifts are shift[r] - fraction;
    residual16's preconditions for all four."""
    if not (_flat(a, types.int32) and _flat(r, types.uint32) and _flat(out, types.uint32) and _four(bias)
            and _four(m0) and _four(shift)):
        return None
    i = types.int64
    return types.void(a, i, i, r, i, out, i, i, bias, m0, shift, i, i, i, i, i, i, i), _words4(True)
