"""RMSNorm: y = x / sqrt(mean(x²) + eps) · w, one row per token."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def rmsnorm(x, w, eps, double_sum, out):
    """out[t] = (x[t] · 1/sqrtf(mean + eps)) · w; mean of f32 squares summed in a double (ggml) or in f32."""
    T, n = x.shape
    eps32 = np.float32(eps)
    for t in range(T):
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
