"""SIMD building blocks for the ternary kernels: 8-lane int32/f32 vector values in numba, and intrinsics on them.

Every dot intrinsic rests on one primitive: 32 unsigned codes u (0..3) times 32 int8 activations q give 8 int32 lanes,
lane k = Σ_{j<4} u[4k+j]·q[4k+j]. With the 32 activations starting at a multiple of 32 inside a 256-block, lane k holds
the elements with (e mod 32) ∈ [4k, 4k+3]: exactly ggml's TQ lane grouping. Two x86 instruction sequences compute it:

- ISA_AVX2:        vpmaddubsw (u8×i8 pairs → i16), the vectors of a block added in int16, then one vpmaddwd with ones
                   (i16 pairs → i32), as ggml's AVX2 TQ kernels do. Exact: a vpmaddubsw sum is at most 2·3·128 = 768,
                   and a call adds at most 16 of them (plus Q8_K bsums ≤ 16·128), far below 2^15.
- ISA_AVX512VNNI:  vpdpbusd on 256-bit vectors (avx512vl): the four u8×i8 products of a lane added in int32.

Integer sums are exact in every sequence, so both (and the portable numba loops in ternary.py) give the same lanes
bit for bit. The sequence is chosen by the runtime argument `isa` of each dot intrinsic (a loop-invariant branch that
LLVM hoists); one the host (as numba's code generator sees it) cannot execute is replaced at compile time by generic
LLVM vector code with the same result, so every kernel compiles on every x86-64 host. `default_isa()` picks the
fastest sequence the host supports, once, unless $BITNET_KERNEL_ISA names one.

Weight decoding happens in registers: 2-bit fields by shift and mask (TQ2_0 low pair first, I2_S high pair first),
TQ1_0 trits by ggml's ×3^n in 8-bit adds and shifts, then [p ≥ 86] + [p ≥ 171] (= (3p) >> 8). The `_t4` intrinsics
decode a block once and multiply it with 4 token rows (prefill).

Float helpers follow ggml's x86 TQ vec_dot: `fma_lanes` is `_mm256_fmadd_ps` (one rounding, llvm.fma), `hsum8` is
`hsum_float_8`: ((a4+a0) + (a6+a2)) + ((a5+a1) + (a7+a3)). `f16_to_f32` is vcvtph2ps where the host has F16C.

Note: numba's cache tracks only the source file of each cached function; after editing this file, clear the
`ternary.*` entries of bitnet_ref/kernels/__pycache__ (or touch ternary.py) so the kernels are rebuilt.
"""

from __future__ import annotations

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic, models, register_model

from bitnet_ref.errors import ConfigError

ISA_PORTABLE = 0
ISA_AVX2 = 1
ISA_AVX512VNNI = 2
ISA_NAMES = ("portable", "avx2", "avx512vnni")
_ISA_FEATURES = {ISA_PORTABLE: (), ISA_AVX2: ("avx2",), ISA_AVX512VNNI: ("avx2", "avx512vnni", "avx512vl")}
ISA_ENV = "BITNET_KERNEL_ISA"

_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_V32I8 = ir.VectorType(_I8, 32)
_V16I16 = ir.VectorType(_I16, 16)
_V32I16 = ir.VectorType(_I16, 32)
_V8I32 = ir.VectorType(_I32, 8)
_V8F32 = ir.VectorType(_F32, 8)


def host_features() -> frozenset[str]:
    """CPU features numba's code generator targets (NUMBA_CPU_FEATURES if set, else the host's), without the '+'."""
    from numba.core import config

    flat = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return frozenset(f[1:] for f in flat.split(",") if f.startswith("+"))


def isa_supported(isa: int) -> bool:
    """True when the host can execute the instruction sequence of `isa` (portable always can)."""
    return all(f in host_features() for f in _ISA_FEATURES[isa])


def available_isas() -> tuple[str, ...]:
    """Names of the instruction sequences this host can run, slowest first."""
    return tuple(name for i, name in enumerate(ISA_NAMES) if isa_supported(i))


def isa_id(name: str) -> int:
    """The id of an ISA name; raises ConfigError for an unknown name or one this host cannot run."""
    if name not in ISA_NAMES:
        raise ConfigError(f"{ISA_ENV}: unknown kernel ISA {name!r}; expected one of {ISA_NAMES}")
    isa = ISA_NAMES.index(name)
    if not isa_supported(isa):
        raise ConfigError(f"{ISA_ENV}: kernel ISA {name!r} needs CPU features {_ISA_FEATURES[isa]}; host has not")
    return isa


def default_isa() -> int:
    """The ISA the kernels use unless told otherwise: $BITNET_KERNEL_ISA, else the fastest the host supports."""
    name = os.environ.get(ISA_ENV)
    if name:
        return isa_id(name)
    return ISA_NAMES.index(available_isas()[-1])


# ---------------------------------------------------------------------------------------------------------------------
# numba types for LLVM vectors held in registers


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


# ---------------------------------------------------------------------------------------------------------------------
# codegen helpers


def _has(context, *features: str) -> bool:
    flat = context.codegen()._get_host_cpu_features()
    have = {f[1:] for f in flat.split(",") if f.startswith("+")}
    return all(f in have for f in features)


def _c_array(ty, what: str) -> None:
    if not isinstance(ty, types.Array) or ty.layout != "C":
        raise TypeError(f"{what}: expected a C-contiguous array, got {ty}")


def _load(context, builder, aryty, ary, idx, idxty, vecty):
    """Unaligned load of a vector from `ary` starting at flat element index `idx`."""
    data = context.make_array(aryty)(context, builder, value=ary).data
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.load(builder.bitcast(builder.gep(data, [i]), vecty.as_pointer()), align=1)


def _splat(vecty, value):
    return ir.Constant(vecty, [value] * vecty.count)


def _call(builder, name: str, retty, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(retty, [a.type for a in args]), name)
    return builder.call(fn, args)


def _pairs_generic(builder, v, outty):
    """Add adjacent lanes (2i, 2i+1) of `v` after sign extension: the arithmetic of vpmaddwd with ones."""
    n = v.type.count
    ev = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n // 2), list(range(0, n, 2))))
    od = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n // 2), list(range(1, n, 2))))
    return builder.add(builder.sext(ev, outty), builder.sext(od, outty))


def _maddubs(context, builder, u, q):
    """u8 × i8 products summed in pairs into 16 int16 lanes (vpmaddubsw; generic IR without AVX2)."""
    if _has(context, "avx2"):
        return _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [u, q])
    prod = builder.mul(builder.zext(u, _V32I16), builder.sext(q, _V32I16))
    n = 32
    ev = builder.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(_I32, n // 2), list(range(0, n, 2))))
    od = builder.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(_I32, n // 2), list(range(1, n, 2))))
    return builder.add(ev, od)


def _madd_ones(context, builder, v16):
    """16 int16 lanes summed in pairs into 8 int32 lanes (vpmaddwd with ones; generic IR without AVX2)."""
    if _has(context, "avx2"):
        return _call(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [v16, _splat(_V16I16, 1)])
    return _pairs_generic(builder, v16, _V8I32)


def _dot_avx2(context, builder, acc, pairs, sub16):
    """acc + lanes of Σ u·q (− sub16) with vpmaddubsw, all partial sums in int16, one vpmaddwd to int32.

    Exact: |u·q pair sum| ≤ 2·3·128 = 768 per vpmaddubsw, at most 16 of them (12288) plus |sub16| ≤ 16·128 per lane.
    """
    s16 = None
    for u, q in pairs:
        p = _maddubs(context, builder, u, q)
        s16 = p if s16 is None else builder.add(s16, p)
    if sub16 is not None:
        s16 = builder.sub(s16, sub16)
    return builder.add(acc, _madd_ones(context, builder, s16))


def _dot_vnni(context, builder, acc, pairs, sub16):
    """acc + lanes of Σ u·q (− sub16) with vpdpbusd (the AVX2 arithmetic on a host without avx512vnni)."""
    if not _has(context, "avx512vnni", "avx512vl"):
        return _dot_avx2(context, builder, acc, pairs, sub16)
    for u, q in pairs:
        acc = _call(builder, "llvm.x86.avx512.vpdpbusd.256", _V8I32, [acc, u, q])
    if sub16 is not None:
        acc = builder.sub(acc, _madd_ones(context, builder, sub16))
    return acc


def _dot_by_isa(context, builder, isa, isaty, accs, emit):
    """Branch on the runtime `isa` (loop-invariant, so LLVM unswitches it) between the VNNI and AVX2 sequences.

    `emit(builder)` emits, in each branch, one (pairs, sub16) job per token: its (u, q) vector pairs and the optional
    int16 vector to subtract. Returns acc + lanes for each token.
    """
    is_vnni = builder.icmp_signed(
        "==", context.cast(builder, isa, isaty, types.int64), ir.Constant(_I64, ISA_AVX512VNNI)
    )
    with builder.if_else(is_vnni) as (then, other):
        with then:
            r_vnni = [_dot_vnni(context, builder, acc, *job) for acc, job in zip(accs, emit(builder), strict=True)]
            bb_vnni = builder.block
        with other:
            r_avx2 = [_dot_avx2(context, builder, acc, *job) for acc, job in zip(accs, emit(builder), strict=True)]
            bb_avx2 = builder.block
    out = []
    for rv, ra in zip(r_vnni, r_avx2, strict=True):
        phi = builder.phi(_V8I32)
        phi.add_incoming(rv, bb_vnni)
        phi.add_incoming(ra, bb_avx2)
        out.append(phi)
    return out


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


def _arg_names(ntok: int, with_bsums: bool) -> list[str]:
    names = ["acc", "w", "wi", "a", "ai"] + (["astride"] if ntok > 1 else [])
    if with_bsums:
        names += ["bsums", "bi"] + (["bstride"] if ntok > 1 else [])
    return names + ["isa"]


def _dot_codegen(make_codes, ntok: int, with_bsums: bool):
    """Codegen of acc + lanes of Σ u·q (minus Q8_K bsums pairs) for the weight bytes at w[wi], decoded once, against
    the activations of ntok tokens at a[ai + n·astride :] (bsums at bsums[bi + n·bstride :])."""

    def codegen(context, builder, sig, args):
        v = dict(zip(_arg_names(ntok, with_bsums), zip(args, sig.args, strict=True), strict=True))

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
                sub16 = None
                if with_bsums:
                    bi = b.add(b0, b.mul(bstr, ir.Constant(_I64, n)))
                    sub16 = _load(context, b, v["bsums"][1], v["bsums"][0], bi, types.intp, _V16I16)
                jobs.append((pairs, sub16))
            return jobs

        res = _dot_by_isa(context, builder, *v["isa"], accs, emit)
        return res[0] if ntok == 1 else context.make_tuple(builder, sig.return_type, res)

    return codegen


def _dot_intrinsic(what: str, make_codes, ntok: int, with_bsums: bool):
    """An intrinsic over `make_codes` blocks for ntok tokens; arguments as _arg_names; returns I32x8 or a tuple."""
    acc_type = i32x8 if ntok == 1 else types.UniTuple(i32x8, ntok)

    def typer(typingctx, *args):
        v = dict(zip(_arg_names(ntok, with_bsums), args, strict=True))
        for name, dtype in (("w", types.uint8), ("a", types.int8), ("bsums", types.int16)):
            if name in v:
                _c_array(v[name], what)
                if v[name].dtype != dtype:
                    raise TypeError(f"{what}: {name} must be {dtype}, got {v[name].dtype}")
        if v["acc"] != acc_type:
            raise TypeError(f"{what}: acc must be {acc_type}, got {v['acc']}")
        return acc_type(*args), _dot_codegen(make_codes, ntok, with_bsums)

    return typer


# ---------------------------------------------------------------------------------------------------------------------
# intrinsics


@intrinsic
def i32x8_zero(typingctx):
    """Eight int32 zeros."""
    return i32x8(), lambda context, builder, sig, args: ir.Constant(_V8I32, None)


@intrinsic
def f32x8_zero(typingctx):
    """Eight float32 +0.0."""
    return f32x8(), lambda context, builder, sig, args: ir.Constant(_V8F32, None)


_TQ2, _TQ1, _I2S, _I2S2, _I2S4 = _codes_tq2, _codes_tq1, _codes_i2s(1), _codes_i2s(2), _codes_i2s(4)


@intrinsic
def dot_tq2(typingctx, acc, w, wi, a, ai, isa):
    """acc + lanes of the TQ2_0 block at w[wi] (64 qs bytes) against a[ai : ai+256]."""
    return _dot_intrinsic("dot_tq2", _TQ2, 1, False)(typingctx, acc, w, wi, a, ai, isa)


@intrinsic
def dot_tq1(typingctx, acc, w, wi, a, ai, isa):
    """acc + lanes of the TQ1_0 block at w[wi] (48 qs bytes of 5 trits, 4 qh bytes of 4) against a[ai : ai+256]."""
    return _dot_intrinsic("dot_tq1", _TQ1, 1, False)(typingctx, acc, w, wi, a, ai, isa)


@intrinsic
def dot_tq2_q8k(typingctx, acc, w, wi, a, ai, bsums, bi, isa):
    """dot_tq2 − (bsums[bi+2k] + bsums[bi+2k+1]) in lane k: ggml's L_k of one TQ2_0 · Q8_K block."""
    return _dot_intrinsic("dot_tq2_q8k", _TQ2, 1, True)(typingctx, acc, w, wi, a, ai, bsums, bi, isa)


@intrinsic
def dot_tq1_q8k(typingctx, acc, w, wi, a, ai, bsums, bi, isa):
    """dot_tq1 − (bsums[bi+2k] + bsums[bi+2k+1]) in lane k: ggml's L_k of one TQ1_0 · Q8_K block."""
    return _dot_intrinsic("dot_tq1_q8k", _TQ1, 1, True)(typingctx, acc, w, wi, a, ai, bsums, bi, isa)


@intrinsic
def dot_i2s(typingctx, acc, w, wi, a, ai, isa):
    """acc + lanes of one I2_S chunk, 32 bytes at w[wi] (128 elements), against a[ai : ai+128]."""
    return _dot_intrinsic("dot_i2s", _I2S, 1, False)(typingctx, acc, w, wi, a, ai, isa)


@intrinsic
def dot_i2s4(typingctx, acc, w, wi, a, ai, isa):
    """acc + lanes of four I2_S chunks, 128 bytes at w[wi] (512 elements), against a[ai : ai+512]."""
    return _dot_intrinsic("dot_i2s4", _I2S4, 1, False)(typingctx, acc, w, wi, a, ai, isa)


@intrinsic
def dot_i2s_q8k(typingctx, acc, w, wi, a, ai, bsums, bi, isa):
    """Two I2_S chunks (64 bytes at w[wi], 256 elements) − (bsums[bi+2k] + bsums[bi+2k+1]) in lane k: ggml's L_k of
    the TQ2_0 block holding the same codes (I2_S byte p of chunk c holds elements with e mod 32 = p, like TQ2_0)."""
    return _dot_intrinsic("dot_i2s_q8k", _I2S2, 1, True)(typingctx, acc, w, wi, a, ai, bsums, bi, isa)


@intrinsic
def dot_tq2_t4(typingctx, acc, w, wi, a, ai, astride, isa):
    """dot_tq2 for 4 tokens at a[ai + n·astride] (acc a 4-tuple), the block decoded once."""
    return _dot_intrinsic("dot_tq2_t4", _TQ2, 4, False)(typingctx, acc, w, wi, a, ai, astride, isa)


@intrinsic
def dot_tq1_t4(typingctx, acc, w, wi, a, ai, astride, isa):
    """dot_tq1 for 4 tokens at a[ai + n·astride] (acc a 4-tuple), the block decoded once."""
    return _dot_intrinsic("dot_tq1_t4", _TQ1, 4, False)(typingctx, acc, w, wi, a, ai, astride, isa)


@intrinsic
def dot_tq2_q8k_t4(typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa):
    """dot_tq2_q8k for 4 tokens (activations at a[ai + n·astride], bsums at bsums[bi + n·bstride]), decoded once."""
    return _dot_intrinsic("dot_tq2_q8k_t4", _TQ2, 4, True)(
        typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa
    )


@intrinsic
def dot_tq1_q8k_t4(typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa):
    """dot_tq1_q8k for 4 tokens (activations at a[ai + n·astride], bsums at bsums[bi + n·bstride]), decoded once."""
    return _dot_intrinsic("dot_tq1_q8k_t4", _TQ1, 4, True)(
        typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa
    )


@intrinsic
def dot_i2s_q8k_t4(typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa):
    """dot_i2s_q8k for 4 tokens (activations at a[ai + n·astride], bsums at bsums[bi + n·bstride]), decoded once."""
    return _dot_intrinsic("dot_i2s_q8k_t4", _I2S2, 4, True)(
        typingctx, acc, w, wi, a, ai, astride, bsums, bi, bstride, isa
    )


@intrinsic
def dot_i2s_t4(typingctx, acc, w, wi, a, ai, astride, isa):
    """dot_i2s for 4 tokens at a[ai + n·astride] (acc a 4-tuple), the chunk decoded once."""
    return _dot_intrinsic("dot_i2s_t4", _I2S, 4, False)(typingctx, acc, w, wi, a, ai, astride, isa)


@intrinsic
def fma_lanes(typingctx, facc, lanes, d):
    """facc_k = fma(float(lanes_k), d, facc_k) with one rounding (llvm.fma.v8f32), d a float32 scalar."""

    def codegen(context, builder, sig, args):
        facc_, lanes_, d_ = args
        dv = context.cast(builder, d_, sig.args[2], types.float32)
        splat = builder.insert_element(ir.Constant(_V8F32, None), dv, ir.Constant(_I32, 0))
        splat = builder.shuffle_vector(splat, splat, ir.Constant(_V8I32, None))
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
def fma_f32(typingctx, a, b, c):
    """fma(a, b, c) on float32 with one rounding (llvm.fma.f32: hardware FMA, or libm's fmaf without it)."""

    def codegen(context, builder, sig, args):
        x = [context.cast(builder, v, t, types.float32) for v, t in zip(args, sig.args, strict=True)]
        return _call(builder, "llvm.fma.f32", _F32, x)

    return types.float32(types.float32, types.float32, types.float32), codegen


def _f16_codegen(hardware: bool):
    """Codegen of f16 bits -> float32: fpext half (vcvtph2ps) if `hardware` and the host has F16C, else integer ops."""

    def codegen(context, builder, sig, args):
        h16 = builder.trunc(context.cast(builder, args[0], sig.args[0], types.int64), _I16)
        if hardware and _has(context, "f16c"):
            return builder.fpext(builder.bitcast(h16, ir.HalfType()), _F32)
        h = builder.zext(h16, _I32)
        sign = builder.shl(builder.and_(h, ir.Constant(_I32, 0x8000)), ir.Constant(_I32, 16))
        em = builder.and_(h, ir.Constant(_I32, 0x7FFF))
        e = builder.lshr(em, ir.Constant(_I32, 10))
        bits = builder.add(builder.shl(em, ir.Constant(_I32, 13)), ir.Constant(_I32, 112 << 23))  # rebias 15 -> 127
        inf_nan = builder.icmp_unsigned("==", e, ir.Constant(_I32, 31))
        bits = builder.select(inf_nan, builder.add(bits, ir.Constant(_I32, 112 << 23)), bits)  # exponent 255
        normal = builder.bitcast(builder.or_(bits, sign), _F32)
        tiny = builder.fmul(builder.uitofp(em, _F32), ir.Constant(_F32, 2.0**-24))  # subnormal or zero, exact
        tiny = builder.bitcast(builder.or_(builder.bitcast(tiny, _I32), sign), _F32)
        return builder.select(builder.icmp_unsigned("==", e, ir.Constant(_I32, 0)), tiny, normal)

    return codegen


@intrinsic
def f16_to_f32(typingctx, bits):
    """The float32 value (exact) of the IEEE f16 whose bits are the low 16 bits of an integer (F16C if present)."""
    return types.float32(bits), _f16_codegen(True)


@intrinsic
def f16_to_f32_soft(typingctx, bits):
    """f16_to_f32 from integer operations only (the path of hosts without F16C)."""
    return types.float32(bits), _f16_codegen(False)


@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose IEEE bit pattern is the low 32 bits of an integer."""

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.uint32)
        return builder.bitcast(v, _F32)

    return types.float32(bits), codegen
