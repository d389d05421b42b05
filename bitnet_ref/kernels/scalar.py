"""Scalar float helpers in plain numba on top of intrinsics.py: f16/bf16 rounding and decoding, f16-or-f32 element
access (`load`, `store`), and glibc's powf for Python callers.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
from numba import njit, types
from numba.extending import overload

from bitnet_ref.kernels.intrinsics import bits_f32, f16_to_f32, f32_bits, f32_to_f16

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
