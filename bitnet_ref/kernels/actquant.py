"""Activation quantization before the ternary products: ggml's Q8_K blocks and bitnet's per-token int8 absmax.

Both are exact reproductions of the C reference (bit for bit on finite input; NaN input gives unspecified codes):
- `quantize_q8_k`: ggml-quants.c `quantize_row_q8_K_ref` (ggml-base, scalar, no FMA), per 256-block.
- `quantize_i8_rows`: bitnet.cpp `quantize_row_i8_s`, per token row.
- `quantize_lut_rows`: bitnet.cpp's TL1/TL2 `ggml_preprocessor`, per token row (f32 127/max, no floor, no clamp; an
  all-zero row, where bitnet.cpp computes NaN, gets q = 0 and s = +inf, so the LUT kernels' outputs are 0).
Rows are independent: parallel over rows beyond SERIAL_ROWS, serial below (same results either way).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

QK = 256  # elements per Q8_K block
GROUP = 16  # elements per bsums entry
SERIAL_ROWS = 8  # up to this many rows one thread quantizes them all: waking the thread pool costs more


@njit(cache=True)
def _q8_k_block(x, qs, d, bsums, t, b):
    """One Q8_K block: signed max of the first largest |x|, iscale = −127/max, codes min(127, rint(iscale·x))."""
    o = QK * b
    amax = np.float32(0.0)
    mx = np.float32(0.0)
    for j in range(QK):
        v = x[t, o + j]
        if abs(v) > amax:
            amax = abs(v)
            mx = v
    if amax == 0:
        d[t, b] = 0
        qs[t, o : o + QK] = 0
        bsums[t, GROUP * b : GROUP * (b + 1)] = 0
        return
    iscale = np.float32(-127.0) / mx
    for g in range(QK // GROUP):
        s = 0
        for j in range(o + GROUP * g, o + GROUP * (g + 1)):
            c = min(127, np.int32(np.rint(iscale * x[t, j])))
            qs[t, j] = c
            s += c
        bsums[t, GROUP * b + g] = s
    d[t, b] = np.float32(1.0) / iscale


@njit(cache=True)
def _q8_k_row(x, qs, d, bsums, t):
    for b in range(x.shape[1] // QK):
        _q8_k_block(x, qs, d, bsums, t, b)


@njit(cache=True)
def _i8_row(x, q, s, act_sum, t):
    """bitnet.cpp quantize_row_i8_s of row t."""
    amax = 1e-5
    for k in range(x.shape[1]):
        amax = max(amax, abs(np.float64(x[t, k])))
    st = np.float32(127.0 / amax)
    total = 0
    for k in range(x.shape[1]):
        c = min(127, max(-128, np.int32(np.rint(x[t, k] * st))))
        q[t, k] = c
        total += c
    s[t] = st
    act_sum[t] = total


@njit(cache=True)
def _q8_k_serial(x, qs, d, bsums):
    for t in range(x.shape[0]):
        _q8_k_row(x, qs, d, bsums, t)


@njit(cache=True, parallel=True)
def _q8_k_parallel(x, qs, d, bsums):
    for t in prange(x.shape[0]):
        _q8_k_row(x, qs, d, bsums, t)


@njit(cache=True)
def _i8_serial(x, q, s, act_sum):
    for t in range(x.shape[0]):
        _i8_row(x, q, s, act_sum, t)


@njit(cache=True, parallel=True)
def _i8_parallel(x, q, s, act_sum):
    for t in prange(x.shape[0]):
        _i8_row(x, q, s, act_sum, t)


@njit(cache=True)
def quantize_q8_k(x, qs, d, bsums):
    """Q8_K of x f32 (T, K): qs i8 (T, K), d f32 (T, K/256), bsums i16 (T, K/16); ggml quantize_row_q8_K_ref exactly."""
    if x.shape[0] <= SERIAL_ROWS:
        _q8_k_serial(x, qs, d, bsums)
    else:
        _q8_k_parallel(x, qs, d, bsums)


@njit(cache=True)
def quantize_i8_rows(x, q, s, act_sum):
    """Per-token absmax int8 of x f32 (T, K): s = f32(127/max(1e-5, max|x|)) (double), q = clamp(rint(f32(x·s))), Σq."""
    if x.shape[0] <= SERIAL_ROWS:
        _i8_serial(x, q, s, act_sum)
    else:
        _i8_parallel(x, q, s, act_sum)


@njit(cache=True, error_model="numpy")
def _lut_row(x, q, s, act_sum, t):
    """ggml_preprocessor of token row t: s = f32(127)/max|x| (f32), q = rint(f32(x·s)); q = 0, s = +inf if s = inf."""
    K = x.shape[1]
    amax = np.float32(0.0)
    for k in range(K):
        amax = max(amax, abs(x[t, k]))
    st = np.float32(127.0) / amax if amax > 0 else np.float32(np.inf)
    if st == np.inf:
        for k in range(K):
            q[t, k] = 0
        s[t] = st
        act_sum[t] = 0
        return
    total = 0
    for k in range(K):
        c = np.int32(np.rint(x[t, k] * st))
        q[t, k] = c
        total += c
    s[t] = st
    act_sum[t] = total


@njit(cache=True)
def _lut_serial(x, q, s, act_sum):
    for t in range(x.shape[0]):
        _lut_row(x, q, s, act_sum, t)


@njit(cache=True, parallel=True)
def _lut_parallel(x, q, s, act_sum):
    for t in prange(x.shape[0]):
        _lut_row(x, q, s, act_sum, t)


@njit(cache=True)
def quantize_lut_rows(x, q, s, act_sum):
    """TL activations of x f32 (T, K): s = f32(127)/max|x| (one f32 division, no 1e-5 floor), q = rint(f32(x·s)) int8
    (T, K) with no clamp (|q| <= 127 by construction), act_sum = Σq. Where s is not finite (an all-zero row, or a max
    so small that the quotient overflows) bitnet.cpp goes on with inf and NaN codes; here q = 0 and s = +inf, so every
    product of that row is 0 / inf = +0. Finite input only."""
    if x.shape[0] <= SERIAL_ROWS:
        _lut_serial(x, q, s, act_sum)
    else:
        _lut_parallel(x, q, s, act_sum)
