"""Everything the kernels emit as LLVM IR through numba's `@intrinsic`, one name per helper.

- f32 scalars: `fma32` (llvm.fma: one rounding; `fma64` for f64), the bit casts `f32_bits` / `bits_f32` (and
  `f64_bits` / `bits_f64`), f16 <-> f32 (`f16_to_f32`, `f32_to_f16`), glibc's `cosf` / `sinf` / `expf` called by
  symbol name (the process's libm: the code llama.cpp's CPU build calls).
- 8-lane registers, the numba types I32x8 / F32x8: zeros, `f32x8_load` / `f32x8_store` (f32, or f16 bits decoded on
  load), `f32x8_mul_add` (acc + x·v rounded twice, as plain f32 code), `f32x8_fma` (_mm256_fmadd_ps), `hsum8` (ggml's
  hsum_float_8: ((a4+a0) + (a6+a2)) + ((a5+a1) + (a7+a3))), `hsum_i32`.
- `fma_lanes`: the inner loop of ggml's float dots, acc[j] = fma(a[c·width + j], b[c·width + j], acc[j]), with the
  `width` accumulators held in <8 x float> registers for the whole loop (numba's own loop over a heap array reloads
  them every chunk, and falls back to scalar code when it cannot prove the arrays do not alias). Each lane is one
  sequential chain, so the result does not depend on how lanes are grouped into machine registers.
- the ternary dots `dot_<fmt>_q8k[_t4]` (ggml profile) and tiles `tile_<fmt>` (bitnet profile), on one primitive:
  32 unsigned codes u (0..3) times 32 int8 activations q give 8 int32 lanes, lane k = Σ_{j<4} u[4k+j]·q[4k+j].
  With the 32 activations starting at a multiple of 32 inside a 256-block, lane k holds the elements with
  (e mod 32) ∈ [4k, 4k+3]: ggml's TQ lane grouping. Two x86 sequences compute it, chosen by the runtime argument
  `isa` (a loop-invariant branch that LLVM hoists):
  ISA_AVX2, vpmaddubsw (u8×i8 pairs → i16), the vectors of a block added in int16, then one vpmaddwd with ones
  (i16 pairs → i32), as ggml's AVX2 TQ kernels; exact: a vpmaddubsw sum is at most 2·3·128 = 768 and a call adds at
  most 16 of them (plus Q8_K bsums ≤ 16·128), far below 2^15. ISA_AVX512VNNI, vpdpbusd on 256-bit vectors
  (avx512vl): the four u8×i8 products of a lane added in int32. Integer sums are exact, so both (and the portable
  numba loops of ternary.py) give the same lanes bit for bit. Weights are decoded in registers: 2-bit fields by shift
  and mask (TQ2_0 low pair first, I2_S high pair first), TQ1_0 trits by ×3^n in 8-bit adds and shifts, then
  [p ≥ 86] + [p ≥ 171] (= (3p) >> 8). The `_t4` forms decode a block once for 4 token rows (prefill). A tile takes
  R ≤ 2 weight rows × N tokens over several blocks: each activation vector is loaded once for the R rows, and the
  AVX2 sequence keeps one int16 sum per (row, token) across up to 32 vpmaddubsw (32·768 < 2^15) before widening.

One fallback path: where an instruction needs a CPU feature, its code generator asks `isa.host_has` (numba's target,
at compile time) and, on a target without it, emits portable LLVM code with the same result bit for bit: f16 <-> f32
by integer operations without F16C (vcvtph2ps / vcvtps2ph quiet signaling NaNs, the portable decoder keeps them;
nothing else differs), vpmaddubsw / vpmaddwd as generic vector arithmetic without AVX2, the AVX2 sequence without
AVX512-VNNI. So every kernel compiles and gives the same numbers on every x86-64 host. llvm.fma needs no choice:
without FMA hardware LLVM calls libm's fmaf, one rounding too. `f16_to_f32_soft` / `f32_to_f16_soft` force the
portable f16 code so that tests check it on any host.

ISA detection and the ternary kernels' runtime `isa` choice live in isa.py: Python-level facts about the host that the
engine, tests and bench read without LLVM, and this module is long enough with the code generators alone.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from bitnet_ref.formats import I2_S, TQ1_0, TQ2_0
from bitnet_ref.kernels.isa import ISA_AVX512VNNI, host_has

_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_HALF = ir.HalfType()
_V32I8 = ir.VectorType(_I8, 32)
_V8I16 = ir.VectorType(_I16, 8)
_V16I16 = ir.VectorType(_I16, 16)
_V32I16 = ir.VectorType(_I16, 32)
_V8I32 = ir.VectorType(_I32, 8)
_V8F32 = ir.VectorType(_F32, 8)
_V4F64 = ir.VectorType(ir.DoubleType(), 4)
_V4I64 = ir.VectorType(_I64, 4)


def _splat(vecty, value):
    return ir.Constant(vecty, [value] * vecty.count)


def _like(ty, elem):
    """`elem`, or a vector of `elem` as long as `ty` where `ty` is a vector type."""
    return ir.VectorType(elem, ty.count) if isinstance(ty, ir.VectorType) else elem


def _const(ty, value):
    """A constant of scalar or vector type `ty` (splatted)."""
    return _splat(ty, value) if isinstance(ty, ir.VectorType) else ir.Constant(ty, value)


def _call(builder, name: str, retty, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(retty, [a.type for a in args]), name)
    return builder.call(fn, args)


def _is_f32(*tys) -> bool:
    return all(isinstance(t, types.Float) and t.bitwidth == 32 for t in tys)


# ---------------------------------------------------------------------------------------------------------------------
# f32 scalars


@intrinsic
def fma32(typingctx, a, b, c):
    """f32 a·b + c with a single rounding (llvm.fma.f32: hardware FMA, or libm's fmaf without it)."""
    if not _is_f32(a, b, c):
        return None

    def codegen(context, builder, sig, args):
        return _call(builder, "llvm.fma.f32", _F32, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def fma64(typingctx, a, b, c):
    """f64 a·b + c with a single rounding (llvm.fma.f64)."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 64 for t in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        return _call(builder, "llvm.fma.f64", ir.DoubleType(), args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@intrinsic
def f64_bits(typingctx, x):
    """The IEEE bits of an f64 as uint64."""
    if not (isinstance(x, types.Float) and x.bitwidth == 64):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _I64)

    return types.uint64(types.float64), codegen


@intrinsic
def bits_f64(typingctx, bits):
    """The f64 whose IEEE bits are a uint64."""
    if bits != types.uint64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.uint64), codegen


@intrinsic
def f32_bits(typingctx, x):
    """The IEEE bits of an f32 as int32."""
    if not _is_f32(x):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _I32)

    return types.int32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, bits):
    """The f32 whose IEEE bits are the low 32 bits of an integer."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(context.cast(builder, args[0], sig.args[0], types.uint32), _F32)

    return types.float32(bits), codegen


def _f16_to_f32_ir(builder, h16, hardware: bool):
    """f32 values of the f16 bits h16 (i16 or a vector of them): fpext half (vcvtph2ps) if `hardware` and the target
    has F16C, else integer operations (exact; signaling NaNs stay signaling)."""
    i32, f32 = _like(h16.type, _I32), _like(h16.type, _F32)
    if hardware and host_has("f16c"):
        return builder.fpext(builder.bitcast(h16, _like(h16.type, _HALF)), f32)
    h = builder.zext(h16, i32)
    sign = builder.shl(builder.and_(h, _const(i32, 0x8000)), _const(i32, 16))
    em = builder.and_(h, _const(i32, 0x7FFF))
    e = builder.lshr(em, _const(i32, 10))
    bits = builder.add(builder.shl(em, _const(i32, 13)), _const(i32, 112 << 23))  # rebias 15 -> 127
    inf_nan = builder.icmp_unsigned("==", e, _const(i32, 31))
    bits = builder.select(inf_nan, builder.add(bits, _const(i32, 112 << 23)), bits)  # exponent 255
    normal = builder.bitcast(builder.or_(bits, sign), f32)
    tiny = builder.fmul(builder.uitofp(em, f32), _const(f32, 2.0**-24))  # subnormal or zero, exact
    tiny = builder.bitcast(builder.or_(builder.bitcast(tiny, i32), sign), f32)
    return builder.select(builder.icmp_unsigned("==", e, _const(i32, 0)), tiny, normal)


def _f32_to_f16_ir(builder, x, hardware: bool):
    """f16 bits (i16) of the f32 x rounded to nearest even: fptrunc (vcvtps2ph) if `hardware` and the target has F16C,
    else integer operations with the same result (a NaN quieted, the top 10 bits of its payload kept)."""
    if hardware and host_has("f16c"):
        return builder.bitcast(builder.fptrunc(x, _HALF), _I16)

    def c(v):
        return ir.Constant(_I32, v)

    u = builder.bitcast(x, _I32)
    a = builder.and_(u, c(0x7FFFFFFF))
    sign = builder.and_(builder.lshr(u, c(16)), c(0x8000))
    odd = builder.and_(builder.lshr(a, c(13)), c(1))
    normal = builder.lshr(builder.add(builder.add(a, c(0xFFF - (112 << 23))), odd), c(13))  # rebias, round half even
    tiny = builder.fadd(builder.bitcast(a, _F32), ir.Constant(_F32, 0.5))  # ulp(0.5) = 2^-24, f16's subnormal step
    tiny = builder.sub(builder.bitcast(tiny, _I32), c(0x3F000000))
    nan = builder.or_(c(0x7E00), builder.and_(builder.lshr(a, c(13)), c(0x3FF)))
    out = builder.select(builder.icmp_unsigned("<", a, c(0x38800000)), tiny, normal)  # below 2^-14: subnormal
    out = builder.select(builder.icmp_unsigned(">=", a, c(0x47800000)), c(0x7C00), out)  # ≥ 2^16: inf
    out = builder.select(builder.icmp_unsigned(">", a, c(0x7F800000)), nan, out)
    return builder.trunc(builder.or_(out, sign), _I16)


def _f16_decoder(bits, hardware: bool):
    """Typing and codegen of f16 bits (the low 16 bits of any integer) -> f32."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        h16 = builder.trunc(context.cast(builder, args[0], sig.args[0], types.int64), _I16)
        return _f16_to_f32_ir(builder, h16, hardware)

    return types.float32(bits), codegen


def _f16_encoder(x, hardware: bool):
    """Typing and codegen of f32 -> f16 bits (uint16)."""
    if not _is_f32(x):
        return None

    def codegen(context, builder, sig, args):
        return _f32_to_f16_ir(builder, args[0], hardware)

    return types.uint16(types.float32), codegen


@intrinsic
def f16_to_f32(typingctx, bits):
    """The f32 value (exact) of the f16 whose bits are the low 16 bits of an integer."""
    return _f16_decoder(bits, True)


@intrinsic
def f16_to_f32_soft(typingctx, bits):
    """f16_to_f32 by the portable code (what hosts without F16C run)."""
    return _f16_decoder(bits, False)


@intrinsic
def f32_to_f16(typingctx, x):
    """f32 to f16 bits (uint16), round to nearest even (= F16C and numpy astype(float16))."""
    return _f16_encoder(x, True)


@intrinsic
def f32_to_f16_soft(typingctx, x):
    """f32_to_f16 by the portable code (what hosts without F16C run)."""
    return _f16_encoder(x, False)


def _libm_unary(x, symbol: str):
    """Typing and codegen of a call to libm's f32 -> f32 function `symbol`."""
    if not _is_f32(x):
        return None

    def codegen(context, builder, sig, args):
        return _call(builder, symbol, _F32, args)

    return types.float32(types.float32), codegen


@intrinsic
def cosf(typingctx, x):
    """glibc cosf."""
    return _libm_unary(x, "cosf")


@intrinsic
def sinf(typingctx, x):
    """glibc sinf."""
    return _libm_unary(x, "sinf")


@intrinsic
def expf(typingctx, x):
    """glibc expf."""
    return _libm_unary(x, "expf")


# ---------------------------------------------------------------------------------------------------------------------
# 8-lane registers: numba types for LLVM vectors, and operations on them


class I32x8Type(types.Type):
    """Eight int32 lanes (LLVM <8 x i32>)."""

    def __init__(self) -> None:
        super().__init__(name="I32x8")


class F32x8Type(types.Type):
    """Eight float32 lanes (LLVM <8 x float>)."""

    def __init__(self) -> None:
        super().__init__(name="F32x8")


i32x8 = I32x8Type()
f32x8 = F32x8Type()


@register_model(I32x8Type)
class _I32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8I32)


@register_model(F32x8Type)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8F32)


@intrinsic
def i32x8_zero(typingctx):
    """Eight int32 zeros."""
    return i32x8(), lambda context, builder, sig, args: ir.Constant(_V8I32, None)


@intrinsic
def f32x8_zero(typingctx):
    """Eight float32 +0.0."""
    return f32x8(), lambda context, builder, sig, args: ir.Constant(_V8F32, None)


def _splat_value(builder, vecty, x):
    """A vector of type `vecty` with every lane the runtime value x."""
    v = builder.insert_element(ir.Constant(vecty, None), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, vecty.count), None))


def _splat_f32(builder, x):
    """<8 x float> with every lane x."""
    return _splat_value(builder, _V8F32, x)


def _f32_c_array(ty) -> bool:
    return isinstance(ty, types.Array) and ty.dtype == types.float32 and ty.layout == "C"


@intrinsic
def f32x8_load(typingctx, a, i):
    """a.flat[i : i+8] of a C-contiguous float32 array, or of f16 bits (uint16, decoded exactly), as F32x8."""
    ok = isinstance(a, types.Array) and a.dtype in (types.float32, types.uint16) and a.layout == "C"
    if not (ok and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _load8(context, builder, sig.args[0], args[0], context.cast(builder, args[1], sig.args[1], types.intp))

    return f32x8(a, i), codegen


@intrinsic
def f32x8_store(typingctx, a, i, v):
    """a.flat[i : i+8] = v for a C-contiguous float32 array (unaligned store)."""
    if not (_f32_c_array(a) and isinstance(i, types.Integer) and v == f32x8):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, value=args[0]).data
        ptr = builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        builder.store(args[2], builder.bitcast(ptr, _V8F32.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.void(a, i, v), codegen


@intrinsic
def f32x8_mul_add(typingctx, acc, x, v):
    """acc_k + f32(x·v_k): the product and the sum each rounded once (fmul, fadd: never contracted to an FMA)."""
    if not (acc == f32x8 and v == f32x8 and isinstance(x, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        xv = _splat_f32(builder, context.cast(builder, args[1], sig.args[1], types.float32))
        return builder.fadd(args[0], builder.fmul(xv, args[2]))

    return f32x8(acc, x, v), codegen


@intrinsic
def f32x8_fma(typingctx, facc, lanes, d):
    """facc_k = fma(float(lanes_k), d, facc_k) with one rounding (llvm.fma.v8f32), d a float32 scalar."""

    def codegen(context, builder, sig, args):
        facc_, lanes_, d_ = args
        splat = _splat_f32(builder, context.cast(builder, d_, sig.args[2], types.float32))
        return _call(builder, "llvm.fma.v8f32", _V8F32, [builder.sitofp(lanes_, _V8F32), splat, facc_])

    return f32x8(facc, lanes, types.float32), codegen


@intrinsic
def hsum8(typingctx, facc):
    """ggml's hsum_float_8 in float32: ((a4+a0) + (a6+a2)) + ((a5+a1) + (a7+a3))."""

    def codegen(context, builder, sig, args):
        a = [builder.extract_element(args[0], ir.Constant(_I32, k)) for k in range(8)]
        lo = builder.fadd(builder.fadd(a[4], a[0]), builder.fadd(a[6], a[2]))
        hi = builder.fadd(builder.fadd(a[5], a[1]), builder.fadd(a[7], a[3]))
        return builder.fadd(lo, hi)

    return types.float32(facc), codegen


@intrinsic
def hsum_i32(typingctx, acc):
    """Sum of the eight int32 lanes as int64; added in int32, exact while |sum| < 2^31 (K ≤ 65536: below 2^26)."""

    def codegen(context, builder, sig, args):
        return builder.sext(_call(builder, "llvm.vector.reduce.add.v8i32", _I32, [args[0]]), _I64)

    return types.int64(acc), codegen


@intrinsic
def f32x8_abs_bits_max(typingctx, v):
    """The largest of the eight lanes' IEEE bits with the sign cleared, as int32 (≥ 0x7f800000: an inf or a nan)."""
    if v != f32x8:
        return None

    def codegen(context, builder, sig, args):
        bits = builder.and_(builder.bitcast(args[0], _V8I32), _splat(_V8I32, 0x7FFFFFFF))
        return _call(builder, "llvm.vector.reduce.umax.v8i32", _I32, [bits])

    return types.int32(v), codegen


@intrinsic
def expf_exp2_table_x8(typingctx, v, tab, inv_ln2_n, shift, p0, p1, p2):
    """Eight lanes of the main path of glibc's expf (activation._expf_glibc_core, lane by lane the same operations
    in double, so the same bits): kd = fma(inv_ln2_n, x, shift), ki its bits, kd −= shift, r = fma(inv_ln2_n, x,
    −kd), s = the f64 of bits tab[ki & 31] + (ki << 47), y = fma(fma(r, p0, p1), r·r, fma(r, p2, 1)), f32(y·s).
    Each lane's x must be in the main path's range (|x| < 88); tab: the 32-entry uint64 table (C-contiguous)."""
    ok = v == f32x8 and isinstance(tab, types.Array) and tab.dtype == types.uint64 and tab.layout == "C"
    if not (ok and all(isinstance(c, types.Float) and c.bitwidth == 64 for c in (inv_ln2_n, shift, p0, p1, p2))):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[1])(context, builder, args[1]).data
        inv, sh, c0, c1, c2 = (_splat_value(builder, _V4F64, a) for a in args[2:])
        one = _splat(_V4F64, 1.0)
        halves = []
        for h in range(2):
            lanes = ir.Constant(ir.VectorType(_I32, 4), [4 * h + k for k in range(4)])
            xd = builder.fpext(builder.shuffle_vector(args[0], args[0], lanes), _V4F64)
            kd = _call(builder, "llvm.fma.v4f64", _V4F64, [inv, xd, sh])
            ki = builder.bitcast(kd, _V4I64)
            kd = builder.fsub(kd, sh)
            r = _call(builder, "llvm.fma.v4f64", _V4F64, [inv, xd, builder.fneg(kd)])
            idx = builder.and_(ki, _splat(_V4I64, 31))
            t = ir.Constant(_V4I64, None)
            for k in range(4):
                i = builder.extract_element(idx, ir.Constant(_I32, k))
                t = builder.insert_element(t, builder.load(builder.gep(data, [i])), ir.Constant(_I32, k))
            s = builder.bitcast(builder.add(t, builder.shl(ki, _splat(_V4I64, 47))), _V4F64)
            z = _call(builder, "llvm.fma.v4f64", _V4F64, [r, c0, c1])
            y = _call(builder, "llvm.fma.v4f64", _V4F64, [z, builder.fmul(r, r),
                                                          _call(builder, "llvm.fma.v4f64", _V4F64, [r, c2, one])])
            halves.append(builder.fptrunc(builder.fmul(y, s), ir.VectorType(_F32, 4)))
        return builder.shuffle_vector(halves[0], halves[1], ir.Constant(_V8I32, list(range(8))))

    return f32x8(v, tab, types.float64, types.float64, types.float64, types.float64, types.float64), codegen


# ---------------------------------------------------------------------------------------------------------------------
# prefetch: a read hint for a cache line (the tile intrinsics and the ggml rows stream decode weights with it)


def _prefetch(b, ptr):
    """llvm.prefetch of the cache line at ptr (read, all cache levels): a hint that never faults."""
    fn = cgutils.get_or_insert_function(
        b.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0i8"
    )
    b.call(fn, [b.bitcast(ptr, _I8.as_pointer()), ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


@intrinsic
def prefetch(typingctx, a, i):
    """Hint that a[i] (flat index into a C-contiguous array) is read soon: its cache line is fetched without waiting
    (_prefetch; any address, no effect on results)."""
    if not (isinstance(a, types.Array) and a.layout == "C" and isinstance(i, types.Integer)):
        raise TypeError(f"prefetch: expected a C-contiguous array and an integer index, got {a}, {i}")

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, value=args[0]).data
        _prefetch(builder, builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)]))
        return context.get_dummy_value()

    return types.none(a, i), codegen


# ---------------------------------------------------------------------------------------------------------------------
# fma_lanes: ggml's float-dot inner loop over arrays, accumulators in registers


def _load8(context, builder, aryty, ary, offset):
    """<8 x float> at element `offset` of a contiguous array: f32 loaded as is, f16 bits (uint16) converted exactly."""
    data = context.make_array(aryty)(context, builder, ary).data
    ptr = builder.gep(data, [offset])
    if aryty.dtype == types.uint16:
        bits = builder.load(builder.bitcast(ptr, _V8I16.as_pointer()), align=2)
        return _f16_to_f32_ir(builder, bits, True)
    return builder.load(builder.bitcast(ptr, _V8F32.as_pointer()), align=4)


def _make_fma_loop(nvec: int, rows: int = 1):
    """Intrinsic fma_loop(a, ao, b, bo, nchunks, acc): acc[j] = fma(a[ao+c·W+j], b[bo+c·W+j], acc[j]), W = 8·nvec.
    With rows = 2, fma_loop(a, ao, ao2, b, bo, nchunks, acc) does the same for a second row of a at ao2 into
    acc[W + j], each chunk of b loaded once for both rows: two memory streams in flight instead of one.

    a is f32 or f16 bits (uint16, decoded exactly on load), b and acc are f32; all C-contiguous.
    """

    def typer(a, b, acc):
        def ok(t, dtypes):
            return isinstance(t, types.Array) and t.dtype in dtypes and t.layout == "C"

        if not (ok(a, (types.float32, types.uint16)) and ok(b, (types.float32,)) and ok(acc, (types.float32,))):
            return None
        return types.void(a, *[types.intp] * rows, b, types.intp, types.intp, acc), codegen

    def codegen(context, builder, signature, args):
        aty, bty, accty = signature.args[0], signature.args[rows + 1], signature.args[-1]
        a_v, aos, (b_v, bo_v, n_v, acc_v) = args[0], args[1 : rows + 1], args[rows + 1 :]
        slots = [cgutils.alloca_once(builder, _V8F32) for _ in range(rows * nvec)]
        for v, slot in enumerate(slots):
            builder.store(_load8(context, builder, accty, acc_v, ir.Constant(_I64, 8 * v)), slot)
        width = ir.Constant(_I64, 8 * nvec)
        with cgutils.for_range(builder, n_v) as loop:
            base = builder.mul(loop.index, width)
            for v in range(nvec):
                off = builder.add(base, ir.Constant(_I64, 8 * v))
                bv = _load8(context, builder, bty, b_v, builder.add(bo_v, off))
                for r, ao_v in enumerate(aos):
                    av = _load8(context, builder, aty, a_v, builder.add(ao_v, off))
                    slot = slots[r * nvec + v]
                    builder.store(_call(builder, "llvm.fma.v8f32", _V8F32, [av, bv, builder.load(slot)]), slot)
        data = context.make_array(accty)(context, builder, acc_v).data
        for v, slot in enumerate(slots):
            ptr = builder.bitcast(builder.gep(data, [ir.Constant(_I64, 8 * v)]), _V8F32.as_pointer())
            builder.store(builder.load(slot), ptr, align=4)
        return context.get_dummy_value()

    if rows == 1:

        @intrinsic
        def fma_loop(typingctx, a, ao, b, bo, nchunks, acc):
            return typer(a, b, acc)

    else:

        @intrinsic
        def fma_loop(typingctx, a, ao, ao2, b, bo, nchunks, acc):
            return typer(a, b, acc)

    return fma_loop


_fma_loop_8 = _make_fma_loop(1)
_fma_loop_16 = _make_fma_loop(2)
_fma_loop_32 = _make_fma_loop(4)
_fma_loop_64 = _make_fma_loop(8)
_fma_loop_32_x2 = _make_fma_loop(4, rows=2)
_fma_loop_64_x2 = _make_fma_loop(8, rows=2)


@njit(cache=True, inline="always")
def fma_lanes(a, ao, b, bo, nchunks, width, acc):
    """acc[j] = fma(a[ao + c·width + j], b[bo + c·width + j], acc[j]) for c < nchunks, j < width ∈ {8, 16, 32, 64}.

    a: f32, or f16 bits as uint16 (each product of two f16 values is exact, so this is ggml's F16 vec_dot lane).
    """
    if width == 32:
        _fma_loop_32(a, ao, b, bo, nchunks, acc)
    elif width == 8:
        _fma_loop_8(a, ao, b, bo, nchunks, acc)
    elif width == 64:
        _fma_loop_64(a, ao, b, bo, nchunks, acc)
    else:
        _fma_loop_16(a, ao, b, bo, nchunks, acc)


@njit(cache=True, inline="always")
def fma_lanes_x2(a, ao, ao2, b, bo, nchunks, width, acc):
    """fma_lanes for two rows of a at once, width ∈ {32, 64}: row ao into acc[:width], row ao2 into
    acc[width : 2·width], every lane the same sequence of FMAs as fma_lanes gives it."""
    if width == 32:
        _fma_loop_32_x2(a, ao, ao2, b, bo, nchunks, acc)
    else:
        _fma_loop_64_x2(a, ao, ao2, b, bo, nchunks, acc)


# ---------------------------------------------------------------------------------------------------------------------
# ternary dot codegen


def _c_array(ty, what: str) -> None:
    if not isinstance(ty, types.Array) or ty.layout != "C":
        raise TypeError(f"{what}: expected a C-contiguous array, got {ty}")


def _load(context, builder, aryty, ary, idx, idxty, vecty):
    """Unaligned load of a vector from `ary` starting at flat element index `idx`."""
    data = context.make_array(aryty)(context, builder, value=ary).data
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.load(builder.bitcast(builder.gep(data, [i]), vecty.as_pointer()), align=1)


def _pairs_generic(builder, v, outty):
    """Add adjacent lanes (2i, 2i+1) of `v` after sign extension: the arithmetic of vpmaddwd with ones."""
    n = v.type.count
    ev = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n // 2), list(range(0, n, 2))))
    od = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n // 2), list(range(1, n, 2))))
    return builder.add(builder.sext(ev, outty), builder.sext(od, outty))


def _maddubs(builder, u, q):
    """u8 × i8 products summed in pairs into 16 int16 lanes (vpmaddubsw; generic IR without AVX2)."""
    if host_has("avx2"):
        return _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [u, q])
    prod = builder.mul(builder.zext(u, _V32I16), builder.sext(q, _V32I16))
    n = 32
    ev = builder.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(_I32, n // 2), list(range(0, n, 2))))
    od = builder.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(_I32, n // 2), list(range(1, n, 2))))
    return builder.add(ev, od)


def _madd_ones(builder, v16):
    """16 int16 lanes summed in pairs into 8 int32 lanes (vpmaddwd with ones; generic IR without AVX2)."""
    if host_has("avx2"):
        return _call(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [v16, _splat(_V16I16, 1)])
    return _pairs_generic(builder, v16, _V8I32)


def _dot_avx2(builder, acc, pairs, sub16):
    """acc + lanes of Σ u·q − sub16 with vpmaddubsw, all partial sums in int16, one vpmaddwd to int32.

    Exact: |u·q pair sum| ≤ 2·3·128 = 768 per vpmaddubsw, at most 16 of them (12288) plus |sub16| ≤ 16·128 per lane.
    """
    s16 = None
    for u, q in pairs:
        p = _maddubs(builder, u, q)
        s16 = p if s16 is None else builder.add(s16, p)
    s16 = builder.sub(s16, sub16)
    return builder.add(acc, _madd_ones(builder, s16))


def _dot_vnni(builder, acc, pairs, sub16):
    """acc + lanes of Σ u·q − sub16 with vpdpbusd (the AVX2 arithmetic on a host without avx512vnni)."""
    if not host_has("avx512vnni", "avx512vl"):
        return _dot_avx2(builder, acc, pairs, sub16)
    for u, q in pairs:
        acc = _call(builder, "llvm.x86.avx512.vpdpbusd.256", _V8I32, [acc, u, q])
    acc = builder.sub(acc, _madd_ones(builder, sub16))
    return acc


def _by_isa(context, builder, isa, isaty, vnni, avx2):
    """Branch on the runtime `isa` (loop-invariant, so LLVM unswitches it): `vnni(builder)` where it is
    ISA_AVX512VNNI, else `avx2(builder)`, each emitting a list of <8 x i32>; returns their merged values."""
    is_vnni = builder.icmp_signed(
        "==", context.cast(builder, isa, isaty, types.int64), ir.Constant(_I64, ISA_AVX512VNNI)
    )
    with builder.if_else(is_vnni) as (then, other):
        with then:
            r_vnni = vnni(builder)
            bb_vnni = builder.block
        with other:
            r_avx2 = avx2(builder)
            bb_avx2 = builder.block
    out = []
    for rv, ra in zip(r_vnni, r_avx2, strict=True):
        phi = builder.phi(_V8I32)
        phi.add_incoming(rv, bb_vnni)
        phi.add_incoming(ra, bb_avx2)
        out.append(phi)
    return out


def _dot_by_isa(context, builder, isa, isaty, accs, emit):
    """The VNNI or AVX2 sequence by `isa` (_by_isa). `emit(builder)` emits, in each branch, one (pairs, sub16) job per
    token: its (u, q) vector pairs and the int16 vector to subtract. Returns acc + lanes for each token."""

    def seq(dot):
        return lambda b: [dot(b, acc, *job) for acc, job in zip(accs, emit(b), strict=True)]

    return _by_isa(context, builder, isa, isaty, seq(_dot_vnni), seq(_dot_avx2))


def _field(b, wv, shift):
    """The 2-bit field at `shift` of every byte: (wv >> shift) & 3."""
    return b.and_(b.lshr(wv, _splat(wv.type, shift)), _splat(wv.type, 3))


def _trit(b, p):
    """((p·3) >> 8) for bytes p, as [p ≥ 86] + [p ≥ 171] (3p ≥ 256k ⟺ p ≥ ⌈256k/3⌉; equal for all 256 bytes)."""
    one = b.zext(b.icmp_unsigned(">=", p, _splat(p.type, 86)), p.type)
    two = b.zext(b.icmp_unsigned(">=", p, _splat(p.type, 171)), p.type)
    return b.add(one, two)


def _times_pow3(b, v):
    """[v·3^n mod 256 for n < 5] by shifts and adds."""
    v3 = b.add(b.add(v, v), v)
    v9 = b.add(b.shl(v, _splat(v.type, 3)), v)
    v27 = b.add(b.shl(v3, _splat(v.type, 3)), v3)
    v81 = b.add(b.shl(v9, _splat(v.type, 3)), v9)
    return [v, v3, v9, v27, v81]


def _concat16(b, lo, hi):
    """Two <16 x i8> as one <32 x i8>, lo first."""
    return b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, 32), list(range(32))))


def _codes_tq2(b, ld_w):
    """TQ2_0 block: qs[32h + m] holds elements 128h + 32f + m at bits 2f. Returns (codes, activation offset)."""
    out = []
    for h in range(2):
        wv = ld_w(32 * h, _V32I8)
        out += [(_field(b, wv, 2 * f), 128 * h + 32 * f) for f in range(4)]
    return out


def _codes_tq2_pair(b, ld_w):
    """Two consecutive TQ2_0 blocks (132 bytes, 512 elements): the second block's codes from byte 66, elements 256.."""
    second = _codes_tq2(b, lambda off, vecty: ld_w(TQ2_0.BLOCK_BYTES + off, vecty))
    return _codes_tq2(b, ld_w) + [(codes, TQ2_0.BLOCK_ELEMS + off) for codes, off in second]


def _codes_i2s(nchunks):
    """I2_S: nchunks 32-byte chunks; byte p of chunk c holds elements 128c + 32g + p at bits 6 − 2g."""

    def codes(b, ld_w):
        out = []
        for c in range(nchunks):
            wv = ld_w(32 * c, _V32I8)
            out += [(_field(b, wv, 6 - 2 * g), 128 * c + 32 * g) for g in range(4)]
        return out

    return codes


def _codes_tq1(b, ld_w):
    """TQ1_0 block: trit n of qs[m] (m < 32) is element 32n+m, of qs[32+m] (m < 16) 160+16n+m, of qh[j] 240+4n+j."""
    v16 = ir.VectorType(_I8, 16)
    out = [(_trit(b, p), 32 * n) for n, p in enumerate(_times_pow3(b, ld_w(0, _V32I8)))]
    t1 = [_trit(b, p) for p in _times_pow3(b, ld_w(32, v16))]
    qh = ld_w(48, ir.VectorType(_I8, 4))
    qh = b.shuffle_vector(qh, qh, ir.Constant(ir.VectorType(_I32, 16), [j for _ in range(4) for j in range(4)]))
    th = _trit(b, b.mul(qh, ir.Constant(v16, [3**n for n in range(4) for _ in range(4)])))  # lane 4n + j
    return out + [(_concat16(b, t1[0], t1[1]), 160), (_concat16(b, t1[2], t1[3]), 192), (_concat16(b, t1[4], th), 224)]


def _arg_names(ntok: int) -> list[str]:
    stride = ntok > 1
    return ["acc", "w", "wi", "a", "ai"] + ["astride"] * stride + ["bsums", "bi"] + ["bstride"] * stride + ["isa"]


def _dot_codegen(make_codes, ntok: int):
    """Codegen of acc + lanes of Σ u·q minus Q8_K bsums pairs for the weight bytes at w[wi], decoded once, against
    the activations of ntok tokens at a[ai + n·astride :] (bsums at bsums[bi + n·bstride :])."""

    def codegen(context, builder, sig, args):
        v = dict(zip(_arg_names(ntok), zip(args, sig.args, strict=True), strict=True))

        def idx(name):
            return context.cast(builder, *v[name], types.intp) if name in v else ir.Constant(_I64, 0)

        w0, a0, astr, b0, bstr = idx("wi"), idx("ai"), idx("astride"), idx("bi"), idx("bstride")
        acc = v["acc"][0]
        accs = [acc] if ntok == 1 else [builder.extract_value(acc, n) for n in range(ntok)]

        def emit(b):
            def ld_w(off, vecty):
                return _load(context, b, v["w"][1], v["w"][0], b.add(w0, ir.Constant(_I64, off)), types.intp, vecty)

            codes = make_codes(b, ld_w)
            jobs = []
            for n in range(ntok):
                base = b.add(a0, b.mul(astr, ir.Constant(_I64, n)))
                pairs = [
                    (
                        u,
                        _load(
                            context, b, v["a"][1], v["a"][0], b.add(base, ir.Constant(_I64, off)), types.intp, _V32I8
                        ),
                    )
                    for u, off in codes
                ]
                bi = b.add(b0, b.mul(bstr, ir.Constant(_I64, n)))
                jobs.append((pairs, _load(context, b, v["bsums"][1], v["bsums"][0], bi, types.intp, _V16I16)))
            return jobs

        res = _dot_by_isa(context, builder, *v["isa"], accs, emit)
        return res[0] if ntok == 1 else context.make_tuple(builder, sig.return_type, res)

    return codegen


def _dot_intrinsic(what: str, make_codes, ntok: int):
    """An intrinsic over `make_codes` blocks for ntok tokens; arguments as _arg_names; returns I32x8 or a tuple."""
    acc_type = i32x8 if ntok == 1 else types.UniTuple(i32x8, ntok)

    def typer(typingctx, *args):
        v = dict(zip(_arg_names(ntok), args, strict=True))
        for name, dtype in (("w", types.uint8), ("a", types.int8), ("bsums", types.int16)):
            _c_array(v[name], what)
            if v[name].dtype != dtype:
                raise TypeError(f"{what}: {name} must be {dtype}, got {v[name].dtype}")
        if v["acc"] != acc_type:
            raise TypeError(f"{what}: acc must be {acc_type}, got {v['acc']}")
        return acc_type(*args), _dot_codegen(make_codes, ntok)

    return typer


# ---------------------------------------------------------------------------------------------------------------------
# ternary dot intrinsics

_TQ2, _TQ1, _I2S, _I2S2, _I2S4 = _codes_tq2, _codes_tq1, _codes_i2s(1), _codes_i2s(2), _codes_i2s(4)


@intrinsic
def dot_tq2_q8k(typingctx, acc, w, wi, a, ai, bsums, bi, isa):
    """dot_tq2 − (bsums[bi+2k] + bsums[bi+2k+1]) in lane k: ggml's L_k of one TQ2_0 · Q8_K block."""
    return _dot_intrinsic("dot_tq2_q8k", _TQ2, 1)(typingctx, acc, w, wi, a, ai, bsums, bi, isa)


@intrinsic
def dot_tq1_q8k(typingctx, acc, w, wi, a, ai, bsums, bi, isa):
    """dot_tq1 − (bsums[bi+2k] + bsums[bi+2k+1]) in lane k: ggml's L_k of one TQ1_0 · Q8_K block."""
    return _dot_intrinsic("dot_tq1_q8k", _TQ1, 1)(typingctx, acc, w, wi, a, ai, bsums, bi, isa)


@intrinsic
def dot_i2s_q8k(typingctx, acc, w, wi, a, ai, bsums, bi, isa):
    """Two I2_S chunks (64 bytes at w[wi], 256 elements) − (bsums[bi+2k] + bsums[bi+2k+1]) in lane k: ggml's L_k of
    the TQ2_0 block holding the same codes (I2_S byte p of chunk c holds elements with e mod 32 = p, like TQ2_0)."""
    return _dot_intrinsic("dot_i2s_q8k", _I2S2, 1)(typingctx, acc, w, wi, a, ai, bsums, bi, isa)


@intrinsic
def dot_tq2_q8k_t4(typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa):
    """dot_tq2_q8k for 4 tokens (activations at a[ai + n·astride], bsums at bsums[bi + n·bstride]), decoded once."""
    return _dot_intrinsic("dot_tq2_q8k_t4", _TQ2, 4)(
        typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa
    )


@intrinsic
def dot_tq1_q8k_t4(typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa):
    """dot_tq1_q8k for 4 tokens (activations at a[ai + n·astride], bsums at bsums[bi + n·bstride]), decoded once."""
    return _dot_intrinsic("dot_tq1_q8k_t4", _TQ1, 4)(
        typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa
    )


@intrinsic
def dot_i2s_q8k_t4(typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa):
    """dot_i2s_q8k for 4 tokens (activations at a[ai + n·astride], bsums at bsums[bi + n·bstride]), decoded once."""
    return _dot_intrinsic("dot_i2s_q8k_t4", _I2S2, 4)(
        typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa
    )


# ---------------------------------------------------------------------------------------------------------------------
# tile intrinsics of the bitnet profile: integer Σ u·q for R weight rows × N tokens over consecutive blocks

TILE_MADDUBS = 32  # vpmaddubsw sums an int16 lane of the AVX2 tile may add before widening: 32·768 < 2^15
TILE_BLOCKS_TQ = TILE_MADDUBS // 8  # a TQ2_0 / TQ1_0 block takes 8 vpmaddubsw per token and row
TILE_PAIRS_TQ2 = TILE_MADDUBS // 16  # two TQ2_0 blocks (tile_tq2x2's block) take 16
TILE_CHUNKS_I2S = TILE_MADDUBS // 4  # an I2_S chunk takes 4
TILE_QUADS_I2S = TILE_MADDUBS // 16  # four I2_S chunks (tile_i2s4's block) take 16


def _tree_add(b, vs):
    """Sum of the vectors `vs` as a balanced tree (short dependency chains; integer sums, so any order is exact)."""
    while len(vs) > 1:
        vs = [b.add(vs[i], vs[i + 1]) if i + 1 < len(vs) else vs[i] for i in range(0, len(vs), 2)]
    return vs[0]


def _tile_avx2(b, accs, rows, ntok, ld_act, j0, nblocks, make_codes, ld_w, pf):
    """accs[r·N + n] + lanes of rows × tokens over blocks j0 .. j0+nblocks-1: each block's vpmaddubsw products, summed
    as a tree, added into one int16 accumulator per (row, token) for the whole call, then one vpmaddwd with ones."""
    s16 = [cgutils.alloca_once_value(b, ir.Constant(_V16I16, None)) for _ in accs]
    with cgutils.for_range(b, nblocks) as loop:
        j = b.add(j0, loop.index)
        pf(j)
        codes = [make_codes(b, ld_w(r, j)) for r in range(rows)]
        prods = [[] for _ in accs]
        for i, (_, off) in enumerate(codes[0]):
            for n in range(ntok):
                q = ld_act(n, j, off)
                for r in range(rows):
                    prods[r * ntok + n].append(_maddubs(b, codes[r][i][0], q))
        for slot, p in zip(s16, prods, strict=True):
            b.store(b.add(b.load(slot), _tree_add(b, p)), slot)
    return [b.add(acc, _madd_ones(b, b.load(slot))) for acc, slot in zip(accs, s16, strict=True)]


def _tile_vnni(b, accs, rows, ntok, ld_act, j0, nblocks, make_codes, ld_w, pf):
    """The same lanes with vpdpbusd into int32, even and odd pairs in two chains (added at the end) for latency."""
    slots = [
        [cgutils.alloca_once_value(b, acc), cgutils.alloca_once_value(b, ir.Constant(_V8I32, None))] for acc in accs
    ]
    with cgutils.for_range(b, nblocks) as loop:
        j = b.add(j0, loop.index)
        pf(j)
        codes = [make_codes(b, ld_w(r, j)) for r in range(rows)]
        for i, (_, off) in enumerate(codes[0]):
            for n in range(ntok):
                q = ld_act(n, j, off)
                for r in range(rows):
                    slot = slots[r * ntok + n][i % 2]
                    b.store(_call(b, "llvm.x86.avx512.vpdpbusd.256", _V8I32, [b.load(slot), codes[r][i][0], q]), slot)
    return [b.add(b.load(even), b.load(odd)) for even, odd in slots]


def _tile_intrinsic(what: str, make_codes, block_bytes: int, block_elems: int):
    """Typer of `what`(acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa): acc + lanes of Σ u·q for the rows whose
    block 0 starts at w[wis[r]] (R = len(wis) rows, blocks `block_bytes` apart) and the N = len(acc) / R tokens at
    a[ai + n·astride + block_elems·j + e], over blocks j0 ≤ j < j0 + nblocks. The caller keeps nblocks within
    TILE_BLOCKS_TQ, TILE_PAIRS_TQ2, TILE_CHUNKS_I2S or TILE_QUADS_I2S: AVX2 keeps int16 partial sums over the call.
    acc[r·N + n] is the accumulator of row r and token n. A single-token call (N = 1: decode, which streams the rows)
    prefetches, with each block, the cache lines `ahead` bytes further on."""

    def typer(typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa):
        _c_array(w, what)
        _c_array(a, what)
        if w.dtype != types.uint8 or a.dtype != types.int8:
            raise TypeError(f"{what}: w must be uint8 and a int8, got {w.dtype}, {a.dtype}")
        if not (isinstance(wis, types.UniTuple) and isinstance(wis.dtype, types.Integer)):
            raise TypeError(f"{what}: wis must be a tuple of integer byte offsets, got {wis}")
        rows = wis.count
        if not (isinstance(acc, types.UniTuple) and acc.dtype == i32x8 and acc.count % rows == 0):
            raise TypeError(f"{what}: acc must be a tuple of I32x8, {rows} per token, got {acc}")
        ntok = acc.count // rows

        def codegen(context, builder, sig, args):
            acc_v, w_v, wis_v, a_v, ai_v, astr_v, j0_v, nb_v, ahead_v, isa_v = args
            _, wty, wisty, aty, aity, astrty, j0ty, nbty, aheadty, isaty = sig.args
            accs = [builder.extract_value(acc_v, k) for k in range(acc.count)]
            w0 = [context.cast(builder, builder.extract_value(wis_v, r), wisty.dtype, types.intp) for r in range(rows)]
            a0 = context.cast(builder, ai_v, aity, types.intp)
            astr = context.cast(builder, astr_v, astrty, types.intp)
            j0 = context.cast(builder, j0_v, j0ty, types.intp)
            nblocks = context.cast(builder, nb_v, nbty, types.intp)
            ahead = context.cast(builder, ahead_v, aheadty, types.intp)
            data = context.make_array(wty)(context, builder, value=w_v).data

            def ld_w(r, j):
                base = builder.add(w0[r], builder.mul(j, ir.Constant(_I64, block_bytes)))
                return lambda off, vecty: _load(
                    context, builder, wty, w_v, builder.add(base, ir.Constant(_I64, off)), types.intp, vecty
                )

            def ld_act(n, j, off):
                i = builder.add(a0, builder.mul(astr, ir.Constant(_I64, n)))
                i = builder.add(i, builder.add(builder.mul(j, ir.Constant(_I64, block_elems)), ir.Constant(_I64, off)))
                return _load(context, builder, aty, a_v, i, types.intp, _V32I8)

            def pf(j):
                if ntok > 1:  # rows shared by several tokens are read from cache after the first: no prefetch
                    return
                for r in range(rows):
                    base = builder.add(builder.add(w0[r], builder.mul(j, ir.Constant(_I64, block_bytes))), ahead)
                    for off in range(0, block_bytes, 64):
                        _prefetch(builder, builder.gep(data, [builder.add(base, ir.Constant(_I64, off))]))

            tile = (rows, ntok, ld_act, j0, nblocks, make_codes, ld_w, pf)
            vnni = _tile_vnni if host_has("avx512vnni", "avx512vl") else _tile_avx2
            out = _by_isa(
                context, builder, isa_v, isaty, lambda b: vnni(b, accs, *tile), lambda b: _tile_avx2(b, accs, *tile)
            )
            return context.make_tuple(builder, sig.return_type, out)

        return acc(acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa), codegen

    return typer


@intrinsic
def tile_tq2(typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa):
    """Integer lanes of TQ2_0 blocks for R rows × N tokens (_tile_intrinsic)."""
    return _tile_intrinsic("tile_tq2", _TQ2, TQ2_0.BLOCK_BYTES, TQ2_0.BLOCK_ELEMS)(
        typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa
    )


@intrinsic
def tile_tq2x2(typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa):
    """tile_tq2 on blocks of two TQ2_0 blocks (132 bytes, 512 elements): more work per step of the block loop."""
    return _tile_intrinsic("tile_tq2x2", _codes_tq2_pair, 2 * TQ2_0.BLOCK_BYTES, 2 * TQ2_0.BLOCK_ELEMS)(
        typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa
    )


@intrinsic
def tile_tq1(typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa):
    """Integer lanes of TQ1_0 blocks for R rows × N tokens (_tile_intrinsic)."""
    return _tile_intrinsic("tile_tq1", _TQ1, TQ1_0.BLOCK_BYTES, TQ1_0.BLOCK_ELEMS)(
        typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa
    )


@intrinsic
def tile_i2s(typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa):
    """Integer lanes of I2_S chunks (32 bytes, 128 elements each) for R rows × N tokens (_tile_intrinsic)."""
    return _tile_intrinsic("tile_i2s", _I2S, I2_S.BLOCK_BYTES, I2_S.BLOCK_ELEMS)(
        typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa
    )


@intrinsic
def tile_i2s4(typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa):
    """tile_i2s on blocks of four I2_S chunks (128 bytes, 512 elements): more work per step of the block loop."""
    return _tile_intrinsic("tile_i2s4", _I2S4, 4 * I2_S.BLOCK_BYTES, 4 * I2_S.BLOCK_ELEMS)(
        typingctx, acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa
    )
