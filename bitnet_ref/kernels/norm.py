"""RMSNorm: y = x / sqrt(mean(x²) + eps) · w, one row per token.

Rows are independent: parallel over rows beyond SERIAL_ROWS, serial below (same results either way).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bitnet_ref.kernels.actquant import SERIAL_ROWS


@njit(cache=True, inline="always")
def _row(x, w, eps32, double_sum, out, t):
    """out[t] = (x[t] · 1/sqrtf(mean + eps)) · w; mean of f32 squares summed in a double (ggml) or in f32."""
    n = x.shape[1]
    if double_sum:
        acc = 0.0
        for i in range(n):
            acc += np.float64(x[t, i] * x[t, i])
        mean = np.float32(acc / n)
    else:
        acc32 = np.float32(0)
        for i in range(n):
            acc32 += x[t, i] * x[t, i]
        mean = acc32 / np.float32(n)
    scale = np.float32(1) / np.float32(np.sqrt(mean + eps32))
    for i in range(n):
        out[t, i] = (x[t, i] * scale) * w[i]


@njit(cache=True, parallel=True)
def _parallel(x, w, eps32, double_sum, out):
    for t in prange(x.shape[0]):
        _row(x, w, eps32, double_sum, out, t)


@njit(cache=True)
def rmsnorm(x, w, eps, double_sum, out):
    """out[t] = (x[t] · 1/sqrtf(mean + eps)) · w for every row t (out may be x); the mean of f32 squares is summed in
    a double (ggml) or in f32, in element order."""
    eps32 = np.float32(eps)
    if x.shape[0] <= SERIAL_ROWS:
        for t in range(x.shape[0]):
            _row(x, w, eps32, double_sum, out, t)
    else:
        _parallel(x, w, eps32, double_sum, out)
