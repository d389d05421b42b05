"""Gated FFN activations (SwiGLU, relu²-GLU), residual add, and ggml's SIMD expf they and the softmax use.

ggml applies its vector expf to full SIMD chunks of a row and libm expf to the row's `n mod lanes` tail
(docs/NUMERICS.md §4.11); `lanes` = 8 (AVX2) or 16 (AVX-512) selects both the chunking and the expf variant.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bitnet_ref.kernels.actquant import SERIAL_ROWS
from bitnet_ref.kernels.intrinsics import bits_f32, expf, f32_bits, fma32

_ROUNDER = np.float32(float.fromhex("0x1.8p23"))
_LOG2E = np.float32(float.fromhex("0x1.715476p0"))
_LN2_HI = np.float32(float.fromhex("0x1.62E4p-1"))
_LN2_LO = np.float32(float.fromhex("0x1.7F7D1Cp-20"))
_C5 = np.float32(float.fromhex("0x1.0E4020p-7"))
_C4 = np.float32(float.fromhex("0x1.573E2Ep-5"))
_C3 = np.float32(float.fromhex("0x1.555E66p-3"))
_C2 = np.float32(float.fromhex("0x1.FFFDB6p-2"))
_C1 = np.float32(float.fromhex("0x1.FFFFECp-1"))
_ONE = np.float32(1.0)


@njit(cache=True, inline="always")
def _expf_reduce(x):
    """Shared front of ggml_v_expf: n = round(x·log2e), b = x − n·ln2 (two FMAs), polynomial pieces."""
    z = fma32(x, _LOG2E, _ROUNDER)
    n = z - _ROUNDER
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))
    u = b * b
    p = fma32(fma32(_C5, b, _C4), u, fma32(_C3, b, _C2))
    return z, n, b, u, p


@njit(cache=True)
def v_expf_avx2(x):
    """One lane of ggml_v_expf (AVX2 + FMA), bit-exact."""
    z, n, b, u, p = _expf_reduce(x)
    j = fma32(p, u, _C1 * b)
    e = np.int32(np.int64(f32_bits(z)) << 23)  # n shifted into the exponent field (wraps like epi32)
    k = bits_f32(np.int32(np.int64(e) + 0x3F800000))  # 2^n for |n| <= 126
    if not abs(n) > np.float32(126):
        return fma32(j, k, k)
    g = np.int32(-2113929216) if n <= np.float32(0) else np.int32(0)  # 0x82000000 where n <= 0
    s1 = bits_f32(np.int32(np.int64(g) + 0x7F000000))
    if abs(n) > np.float32(192):
        return s1 * s1
    s2 = bits_f32(np.int32(np.int64(e) - np.int64(g)))
    return fma32(s2, j, s2) * s1


@njit(cache=True)
def v_expf_avx512(x):
    """One lane of ggml_v_expf (AVX-512F), bit-exact: j·2^n by scalef, 0 or +inf beyond |n| > 192."""
    z, n, b, u, p = _expf_reduce(x)
    j = fma32(p, u, fma32(_C1, b, _ONE))
    if abs(n) > np.float32(192):
        return np.float32(0) if n <= np.float32(0) else np.float32(np.inf)
    return np.float32(np.float64(j) * 2.0 ** np.float64(n))


@njit(cache=True, inline="always")
def v_expf(x, lanes):
    """ggml's SIMD expf for a lane width: 8 → AVX2 variant, 16 → AVX-512 variant."""
    if lanes == 16:
        return v_expf_avx512(x)
    return v_expf_avx2(x)


@njit(cache=True, inline="always")
def _swiglu_row(gate, up, lanes, ggml_exp, out, t):
    """Row t of swiglu."""
    n = gate.shape[1]
    n_vec = n - n % lanes if ggml_exp else 0
    for i in range(n):
        x = gate[t, i]
        e = v_expf(-x, lanes) if i < n_vec else expf(-x)
        out[t, i] = (x / (_ONE + e)) * up[t, i]


@njit(cache=True, parallel=True)
def _swiglu_parallel(gate, up, lanes, ggml_exp, out):
    for t in prange(gate.shape[0]):
        _swiglu_row(gate, up, lanes, ggml_exp, out, t)


@njit(cache=True)
def swiglu(gate, up, lanes, ggml_exp, out):
    """out = silu(gate)·up per row, silu(x) = x / (1 + exp(−x)); ggml's vector expf on full chunks if ggml_exp.
    Elements are independent: rows beyond SERIAL_ROWS go over the thread pool (one expf per element, 3.5 M a
    512-token layer of 2B-4T), with the same results."""
    if gate.shape[0] <= SERIAL_ROWS:
        for t in range(gate.shape[0]):
            _swiglu_row(gate, up, lanes, ggml_exp, out, t)
    else:
        _swiglu_parallel(gate, up, lanes, ggml_exp, out)


@njit(cache=True)
def relu2_glu(gate, up, out):
    """out = relu(gate)²·up per element (BitNet b1.58 2B-4T's FFN activation)."""
    T, n = gate.shape
    for t in range(T):
        for i in range(n):
            r = max(gate[t, i], np.float32(0))
            out[t, i] = (r * r) * up[t, i]


@njit(cache=True)
def add(a, b, out):
    """out = a + b elementwise (residual connections), one f32 add per element."""
    T, n = a.shape
    for t in range(T):
        for i in range(n):
            out[t, i] = a[t, i] + b[t, i]


@njit(cache=True)
def scale(x, s):
    """x *= s in place (a linear's optional `.scale` tensor, a one-element f32 broadcast)."""
    T, n = x.shape
    for t in range(T):
        for i in range(n):
            x[t, i] = x[t, i] * s
