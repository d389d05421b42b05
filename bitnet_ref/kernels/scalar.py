"""Scalar primitives numba lacks, as LLVM intrinsics: fused multiply-add, bit casts, f16/bf16 conversion, libm calls.

Each compiles to one LLVM instruction or one libm call, so kernels stay plain loops that LLVM can vectorize
(`fpext half→float` becomes vcvtph2ps on F16C hosts, `llvm.fma.f32` becomes vfmadd). libm's cosf/sinf/expf/powf are
called by symbol name, which resolves to the process's glibc: the same code llama.cpp's CPU build calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

_F32 = ir.FloatType()
_HALF = ir.HalfType()


@intrinsic
def fma32(typingctx, a, b, c):
    """f32 a·b + c with a single rounding (llvm.fma.f32)."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 32 for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.fma", [_F32], ir.FunctionType(_F32, [_F32, _F32, _F32]))
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def f32_bits(typingctx, x):
    """The IEEE bits of an f32 as int32."""
    if not (isinstance(x, types.Float) and x.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, i):
    """The f32 whose IEEE bits are the int32 i."""
    if not (isinstance(i, types.Integer) and i.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _F32)

    return types.float32(i), codegen


@intrinsic
def f16_to_f32(typingctx, h):
    """Exact conversion of f16 bits (uint16) to f32."""
    if not (isinstance(h, types.Integer) and h.bitwidth == 16):
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], _HALF), _F32)

    return types.float32(h), codegen


@intrinsic
def f32_to_f16(typingctx, x):
    """f32 to f16 bits (uint16), round to nearest even (= F16C and numpy astype(float16))."""
    if not (isinstance(x, types.Float) and x.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], _HALF), ir.IntType(16))

    return types.uint16(types.float32), codegen


def _libm_unary(typingctx, x, symbol):
    """Typing and codegen of a call to libm's f32 -> f32 function `symbol`."""
    if not (isinstance(x, types.Float) and x.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32, [_F32]), symbol)
        return builder.call(fn, args)

    return types.float32(types.float32), codegen


@intrinsic
def cosf(typingctx, x):
    """glibc cosf."""
    return _libm_unary(typingctx, x, "cosf")


@intrinsic
def sinf(typingctx, x):
    """glibc sinf."""
    return _libm_unary(typingctx, x, "sinf")


@intrinsic
def expf(typingctx, x):
    """glibc expf."""
    return _libm_unary(typingctx, x, "expf")


_LIBM = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
_LIBM.powf.argtypes = [ctypes.c_float, ctypes.c_float]
_LIBM.powf.restype = ctypes.c_float


def powf(base: float, exponent: float) -> np.float32:
    """glibc powf on f32 arguments (called from Python once per forward, not from kernels)."""
    return np.float32(_LIBM.powf(np.float32(base), np.float32(exponent)))


@njit(cache=True, inline="always")
def round_f16(x):
    """x rounded to the nearest f16 (even on ties), as f32."""
    return f16_to_f32(f32_to_f16(x))


@njit(cache=True)
def round_f16_arith(x):
    """f32 x rounded to the nearest f16 (even on ties; ±inf past 65504), as f32, in plain arithmetic (no F16C needed):
    rint(x / ulp)·ulp in f64, ulp = 2^(e−11) for x = m·2^e (0.5 ≤ m < 1), at least 2^−24 (subnormals). All exact."""
    if not math.isfinite(x):
        return x
    _, e = math.frexp(np.float64(x))
    ulp = math.ldexp(1.0, max(e - 11, -24))
    r = np.rint(np.float64(x) / ulp) * ulp
    if abs(r) > 65504.0:
        return np.float32(math.copysign(math.inf, x))
    return np.float32(r)


@njit(cache=True, inline="always")
def bf16_to_f32(h):
    """Exact conversion of bf16 bits (uint16) to f32."""
    return bits_f32(np.int32(np.uint32(h) << np.uint32(16)))


@njit(cache=True, inline="always")
def round_bf16(x):
    """x rounded like ggml's fp32_to_bf16 (nearest even; NaN kept quiet), as f32."""
    u = np.uint32(f32_bits(x)) & np.uint32(0xFFFFFFFF)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        h = (u >> np.uint32(16)) | np.uint32(64)
    else:
        h = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return bits_f32(np.int32(h << np.uint32(16)))


def load(a, i):
    """Element i of a flat array as f32: f16 bits (uint16) are decoded, f32 passes through."""
    raise NotImplementedError  # replaced by the overload below inside numba


@overload(load, inline="always")
def _load_overload(a, i):
    if isinstance(a, types.Array) and a.dtype == types.uint16:
        return lambda a, i: f16_to_f32(a[i])
    if isinstance(a, types.Array) and a.dtype == types.float32:
        return lambda a, i: a[i]
    return None


def store(a, i, v):
    """Store the f32 v at element i: rounded to f16 bits into uint16 arrays, as is into f32 arrays."""
    raise NotImplementedError  # replaced by the overload below inside numba


@overload(store, inline="always")
def _store_overload(a, i, v):
    if isinstance(a, types.Array) and a.dtype == types.uint16:

        def impl(a, i, v):
            a[i] = f32_to_f16(v)

        return impl
    if isinstance(a, types.Array) and a.dtype == types.float32:

        def impl(a, i, v):
            a[i] = v

        return impl
    return None
