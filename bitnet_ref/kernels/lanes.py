"""Lane-wise FMA accumulation as explicit LLVM vector code: the inner loop of ggml's float dot products.

ggml's F16/F32/BF16 dots keep `width` independent f32 accumulators (4 registers of L lanes for vec_dot, one register
for tinyBLAS) and add chunk after chunk into them with FMA: acc[j] = fma(a[c·width + j], b[c·width + j], acc[j]).
Each lane is one sequential chain, so the result does not depend on how lanes are grouped into machine registers;
here they are held as <8 x float> values in registers for the whole loop (numba's own loop over a heap array of
accumulators reloads them every chunk and falls back to scalar code when it cannot prove the arrays do not alias).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_F32 = ir.FloatType()
_V8F32 = ir.VectorType(_F32, 8)


_V8I16 = ir.VectorType(ir.IntType(16), 8)
_V8HALF = ir.VectorType(ir.HalfType(), 8)


def _load8(context, builder, aryty, ary, offset):
    """<8 x float> at element `offset` of a contiguous array: f32 loaded as is, f16 bits (uint16) converted exactly."""
    data = context.make_array(aryty)(context, builder, ary).data
    ptr = builder.gep(data, [offset])
    if aryty.dtype == types.uint16:
        bits = builder.load(builder.bitcast(ptr, _V8I16.as_pointer()), align=2)
        return builder.fpext(builder.bitcast(bits, _V8HALF), _V8F32)
    return builder.load(builder.bitcast(ptr, _V8F32.as_pointer()), align=4)


def _make_fma_loop(nvec: int):
    """Intrinsic fma_loop(a, ao, b, bo, nchunks, acc): acc[j] = fma(a[ao+c·W+j], b[bo+c·W+j], acc[j]), W = 8·nvec.

    a is f32 or f16 bits (uint16, decoded exactly on load), b and acc are f32; all C-contiguous.
    """

    @intrinsic
    def fma_loop(typingctx, a, ao, b, bo, nchunks, acc):
        def ok(t, dtypes):
            return isinstance(t, types.Array) and t.dtype in dtypes and t.layout == "C"

        if not (ok(a, (types.float32, types.uint16)) and ok(b, (types.float32,)) and ok(acc, (types.float32,))):
            return None
        sig = types.void(a, types.intp, b, types.intp, types.intp, acc)

        def codegen(context, builder, signature, args):
            aty, _, bty, _, _, accty = signature.args
            a_v, ao_v, b_v, bo_v, n_v, acc_v = args
            i64 = ir.IntType(64)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8F32, [_V8F32] * 3), "llvm.fma.v8f32"
            )
            slots = [cgutils.alloca_once(builder, _V8F32) for _ in range(nvec)]
            for v, slot in enumerate(slots):
                builder.store(_load8(context, builder, accty, acc_v, ir.Constant(i64, 8 * v)), slot)
            width = ir.Constant(i64, 8 * nvec)
            with cgutils.for_range(builder, n_v) as loop:
                base = builder.mul(loop.index, width)
                for v, slot in enumerate(slots):
                    off = builder.add(base, ir.Constant(i64, 8 * v))
                    av = _load8(context, builder, aty, a_v, builder.add(ao_v, off))
                    bv = _load8(context, builder, bty, b_v, builder.add(bo_v, off))
                    builder.store(builder.call(fma, [av, bv, builder.load(slot)]), slot)
            data = context.make_array(accty)(context, builder, acc_v).data
            for v, slot in enumerate(slots):
                ptr = builder.bitcast(builder.gep(data, [ir.Constant(i64, 8 * v)]), _V8F32.as_pointer())
                builder.store(builder.load(slot), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return fma_loop


_fma_loop_8 = _make_fma_loop(1)
_fma_loop_16 = _make_fma_loop(2)
_fma_loop_32 = _make_fma_loop(4)
_fma_loop_64 = _make_fma_loop(8)


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
