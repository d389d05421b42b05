"""Gated FFN activations (SwiGLU, relu²-GLU), residual add, and the expf variants they and the softmax use.

Three expf, chosen by Numerics.expf (EXP_KINDS):
- "ggml_v_expf": ggml applies its vector expf to full SIMD chunks of a row and libm expf to the row's `n mod lanes`
  tail (docs/NUMERICS.md §4.11); `lanes` = 8 (AVX2) or 16 (AVX-512) selects both the chunking and the variant.
- "libm": the process's libm expf, called per element.
- "glibc": `expf_glibc`, glibc's expf algorithm as its x86-64 FMA build computes it (the one glibc's ifunc picks on
  every host with FMA), written out here: bit for bit that libm's expf on such hosts (checked over all 2^32 inputs
  against glibc 2.36), the same numbers where the C library differs, and about twice as fast, being inlined.
"""

from __future__ import annotations

import decimal

import numpy as np
from numba import njit, prange

from bitnet_ref.kernels.actquant import SERIAL_ROWS
from bitnet_ref.kernels.intrinsics import (
    bits_f32,
    bits_f64,
    expf,
    expf_exp2_table_x8,
    f32_bits,
    f32x8_abs_bits_max,
    f32x8_load,
    f32x8_store,
    f64_bits,
    fma32,
    fma64,
)

EXP_LIBM, EXP_GGML, EXP_GLIBC = 0, 1, 2
EXP_KINDS = {"libm": EXP_LIBM, "ggml_v_expf": EXP_GGML, "glibc": EXP_GLIBC}  # Numerics.expf -> kernel argument

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


# glibc's expf (sysdeps/ieee754/flt-32/e_expf.c, 32-entry table): x·32/ln2 = k + r, |r| ≤ 1/2, and
# e^x = 2^(k/32)·2^(r/32) ≈ s·(C0·r³ + C1·r² + C2·r + 1), in double; the FMA build fuses every a·b + c below.
_EXP2_BITS = 5
_EXP2_N = 1 << _EXP2_BITS


def _exp2_table() -> np.ndarray:
    """T[i] = bits(2^(i/32), the nearest double) − i·2^47: 2^(k/32) is then the double of bits T[k mod 32] + k·2^47."""
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        nearest = [float(decimal.Decimal(2) ** (decimal.Decimal(i) / _EXP2_N)) for i in range(_EXP2_N)]
    bits = [int(np.float64(v).view(np.uint64)) for v in nearest]
    return np.array([(b - (i << (52 - _EXP2_BITS))) % 2**64 for i, b in enumerate(bits)], np.uint64)


_EXP2_TAB = _exp2_table()
_INV_LN2_N = float.fromhex("0x1.71547652b82fep+0") * _EXP2_N  # 32/ln2
_SHIFT = float.fromhex("0x1.8p52")  # adding it rounds to an integer in the low mantissa bits
_P0 = float.fromhex("0x1.c6af84b912394p-5") / _EXP2_N**3  # the polynomial's coefficients, scaled for r in 1/32 units
_P1 = float.fromhex("0x1.ebfce50fac4f3p-3") / _EXP2_N**2
_P2 = float.fromhex("0x1.62e42ff0c52d6p-1") / _EXP2_N
_BIG_TOP = 0x42A  # (bits >> 20) & 0x7ff above this: |x| ≥ 88, inf or nan (the special cases)
_OVERFLOW = np.float32(float.fromhex("0x1.62e42ep6"))  # above: +inf
_UNDERFLOW = np.float32(-float.fromhex("0x1.9fe368p6"))  # below: 0
_MAY_UNDERFLOW = np.float32(-float.fromhex("0x1.9d1d9ep6"))  # below: the least subnormal, 2^-149
_NEG_INF_BITS = np.int32(-8388608)  # 0xff800000


@njit(cache=True, inline="always")
def _expf_glibc_core(x):
    """The main path of glibc's expf, |x| < 88 (and, past the special cases, up to their bounds)."""
    xd = np.float64(x)
    kd = fma64(_INV_LN2_N, xd, _SHIFT)
    ki = f64_bits(kd)
    kd -= _SHIFT
    r = fma64(_INV_LN2_N, xd, -kd)
    s = bits_f64(_EXP2_TAB[ki & np.uint64(_EXP2_N - 1)] + (ki << np.uint64(52 - _EXP2_BITS)))
    z = fma64(r, _P0, _P1)
    y = fma64(z, r * r, fma64(r, _P2, 1.0))
    return np.float32(y * s)


@njit(cache=True, inline="always")
def expf_glibc(x):
    """glibc's expf of an f32 (module docstring): the special cases as glibc returns them, else the main path."""
    b = f32_bits(x)
    if ((b >> 20) & 0x7FF) <= _BIG_TOP:
        return _expf_glibc_core(x)
    if b == _NEG_INF_BITS:
        return np.float32(0)
    if ((b >> 20) & 0x7FF) > 0x7F7:  # inf or nan
        return x + x
    if x > _OVERFLOW:
        return np.float32(np.inf)
    if x < _UNDERFLOW:
        return np.float32(0)
    if x < _MAY_UNDERFLOW:
        return np.float32(2.0**-149)
    return _expf_glibc_core(x)


_MAIN_ABS_BITS = (_BIG_TOP + 1) << 20  # |x| bits below this: the main path (top 12 bits ≤ _BIG_TOP)


@njit(cache=True, inline="always")
def expf_glibc_inplace(a, n):
    """a[:n] = expf_glibc(a[:n]) for a C-contiguous f32 array: eight lanes at a time through the main path's vector
    form (intrinsics.expf_exp2_table_x8, the same operations per lane) where all eight are in its range, element by
    element otherwise. The same bits as expf_glibc on each element, in about 60 % of its time
    (docs/PERFORMANCE.md §11)."""
    n8 = n - n % 8
    for i in range(0, n8, 8):
        v = f32x8_load(a, i)
        if f32x8_abs_bits_max(v) < _MAIN_ABS_BITS:
            f32x8_store(a, i, expf_exp2_table_x8(v, _EXP2_TAB, _INV_LN2_N, _SHIFT, _P0, _P1, _P2))
        else:
            for k in range(i, i + 8):
                a[k] = expf_glibc(a[k])
    for k in range(n8, n):
        a[k] = expf_glibc(a[k])


@njit(cache=True, inline="always")
def exp_of(x, kind, lanes):
    """expf of kind EXP_GGML (one lane of ggml's SIMD expf for `lanes`), EXP_GLIBC or EXP_LIBM."""
    if kind == EXP_GGML:
        return v_expf(x, lanes)
    if kind == EXP_GLIBC:
        return expf_glibc(x)
    return expf(x)


@njit(cache=True, inline="always")
def exp_inplace(a, n, kind, lanes):
    """a[:n] = expf of kind `kind` (EXP_KINDS) of each element: glibc's through expf_glibc_inplace, the others one
    exp_of per element."""
    if kind == EXP_GLIBC:
        expf_glibc_inplace(a, n)
    else:
        for j in range(n):
            a[j] = exp_of(a[j], kind, lanes)


@njit(cache=True, inline="always")
def _swiglu_row(gate, up, lanes, exp, out, t):
    """Row t of swiglu; glibc's expf runs over the row's −gate first (expf_glibc_inplace), the same values."""
    n = gate.shape[1]
    if exp == EXP_GLIBC:
        e = np.empty(n, np.float32)
        for i in range(n):
            e[i] = -gate[t, i]
        expf_glibc_inplace(e, n)
        for i in range(n):
            out[t, i] = (gate[t, i] / (_ONE + e[i])) * up[t, i]
        return
    n_vec = n - n % lanes if exp == EXP_GGML else 0
    tail = EXP_LIBM if exp == EXP_GGML else exp  # ggml's tail past the full chunks is libm's
    for i in range(n):
        x = gate[t, i]
        e = exp_of(-x, exp if i < n_vec else tail, lanes)
        out[t, i] = (x / (_ONE + e)) * up[t, i]


@njit(cache=True, parallel=True)
def _swiglu_parallel(gate, up, lanes, exp, out):
    for t in prange(gate.shape[0]):
        _swiglu_row(gate, up, lanes, exp, out, t)


@njit(cache=True)
def swiglu(gate, up, lanes, exp, out):
    """out = silu(gate)·up per row, silu(x) = x / (1 + exp(−x)), with the expf of kind `exp` (EXP_KINDS; ggml's
    vector expf on full chunks and libm's on the tail). Elements are independent: rows beyond SERIAL_ROWS go over the
    thread pool (one expf per element, 3.5 M a 512-token layer of 2B-4T), with the same results."""
    if gate.shape[0] <= SERIAL_ROWS:
        for t in range(gate.shape[0]):
            _swiglu_row(gate, up, lanes, exp, out, t)
    else:
        _swiglu_parallel(gate, up, lanes, exp, out)


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
