"""RMSNorm: y = x / sqrt(mean(x²) + eps) · w, one row per token.

Rows are independent: parallel over groups of ROW_GROUP rows beyond SERIAL_ROWS, serial below (same results either
way). Each row's sum of squares is one sequential chain of adds in element order; a group runs its rows' chains side
by side, so that their latencies overlap (the order within each row is unchanged). Rows short of a group go one by one.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bitnet_ref.kernels.actquant import SERIAL_ROWS

ROW_GROUP = 8  # rows whose sums of squares one thread runs side by side


@njit(cache=True, inline="always")
def _rows(x, w, eps32, double_sum, out, t0, g):
    """out[t] = (x[t] · 1/sqrtf(mean + eps)) · w for the g rows t0.. (g = 1 or ROW_GROUP, a constant at each call);
    mean of f32 squares summed in a double (ggml) or in f32, each row in element order."""
    n = x.shape[1]
    acc = np.zeros(ROW_GROUP, np.float64)
    acc32 = np.zeros(ROW_GROUP, np.float32)
    for i in range(n):
        for r in range(g):
            v = x[t0 + r, i]
            if double_sum:
                acc[r] += np.float64(v * v)
            else:
                acc32[r] += v * v
    for r in range(g):
        mean = np.float32(acc[r] / n) if double_sum else acc32[r] / np.float32(n)
        scale = np.float32(1) / np.float32(np.sqrt(mean + eps32))
        for i in range(n):
            out[t0 + r, i] = (x[t0 + r, i] * scale) * w[i]


@njit(cache=True, inline="always")
def _group(x, w, eps32, double_sum, out, t0):
    """Rows t0..t0+ROW_GROUP-1 side by side, or one by one where fewer remain."""
    if t0 + ROW_GROUP <= x.shape[0]:
        _rows(x, w, eps32, double_sum, out, t0, ROW_GROUP)
    else:
        for t in range(t0, x.shape[0]):
            _rows(x, w, eps32, double_sum, out, t, 1)


@njit(cache=True, parallel=True)
def _parallel(x, w, eps32, double_sum, out):
    for g in prange((x.shape[0] + ROW_GROUP - 1) // ROW_GROUP):
        _group(x, w, eps32, double_sum, out, g * ROW_GROUP)


@njit(cache=True)
def rmsnorm(x, w, eps, double_sum, out):
    """out[t] = (x[t] · 1/sqrtf(mean + eps)) · w for every row t (out may be x); the mean of f32 squares is summed in
    a double (ggml) or in f32, in element order."""
    eps32 = np.float32(eps)
    if x.shape[0] <= SERIAL_ROWS:
        for t0 in range(0, x.shape[0], ROW_GROUP):
            _group(x, w, eps32, double_sum, out, t0)
    else:
        _parallel(x, w, eps32, double_sum, out)
