"""Causal grouped-query attention over the KV cache, flash attention off (docs/NUMERICS.md §4.9).

Cache layout per layer: K (n_ctx, n_head_kv·head_dim) and V transposed (n_head_kv·head_dim, n_ctx), either f16 bits
(uint16) or f32. For query t at position p = start_pos + t and head h (KV head h // n_gqa):
    s_j = dot(K_j, q)                         j ≤ p; q rounded to f16 first if round_q
    w_j = s_j · scale ; softmax over j ≤ p    (masked cells are exact zeros)
    out = Σ_j P_j · V_j                        P rounded to f16 first if round_p
The dots use ggml's vec_dot order for one query (T = 1) and the tinyBLAS order for T ≥ 2 (`tiled_kq`: needs
head_dim % lanes == 0; `tiled_kqv`: needs head_dim % 4 == 0). ggml pads n_kv to a multiple of 256; the padded cells
only add exact zeros, and every chunk boundary of the padded length is a multiple of the chunk widths, so iterating
over j ≤ p in the same lane positions (zero-padded to a whole chunk) is the same arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from bitnet_ref.kernels.activation import v_expf
from bitnet_ref.kernels.dense import VEC_F16, reduce_tiled, tiled_dot, vec_dot
from bitnet_ref.kernels.intrinsics import expf
from bitnet_ref.kernels.scalar import load, round_f16, store

PARALLEL_WORK = 1 << 20  # query·cell·dim products from which attention uses the thread pool


class AttentionSettings(NamedTuple):
    """The shapes and arithmetic choices of one attention call (numba takes it as one typed tuple)."""

    n_head: int
    n_head_kv: int
    head_dim: int
    scale: np.float32  # 1.0f / sqrtf(head_dim), as ggml computes it
    tiled_kq: bool  # q·K in tinyBLAS order (≥ 2 queries, head_dim % lanes == 0), else vec_dot order
    tiled_kqv: bool  # P·V in tinyBLAS order (≥ 2 queries, head_dim % 4 == 0), else vec_dot order
    lanes: int  # f32 lanes of ggml's float kernels: 8 (AVX2) or 16 (AVX-512)
    round_q: bool  # q rounded to f16 before q·K
    round_p: bool  # softmax probabilities rounded to f16 before P·V
    ggml_exp: bool  # ggml's SIMD expf in the softmax (else libm expf)
    double_sum: bool  # softmax chunk sums added in double (ggml) (else one f32 sum)


@njit(cache=True)
def store_kv(k, v, start_pos, k_cache, v_cache):
    """Write K rows (T, n_kv·hd) at positions start_pos.. and V transposed; f16 caches round (SET_ROWS)."""
    T, width = k.shape
    for t in range(T):
        p = start_pos + t
        for i in range(width):
            store(k_cache[p], i, k[t, i])
            store(v_cache[i], p, v[t, i])


@njit(cache=True, inline="always")
def _softmax(w, n, lanes, ggml_exp, double_sum, chunk):
    """In place: w[:n] = softmax(w[:n]); ggml: v_expf per lane chunk, chunk sums (hsum) added in double."""
    mx = w[0]
    for j in range(1, n):
        mx = max(mx, w[j])
    if double_sum:
        total = 0.0
        for base in range(0, n, lanes):
            for c in range(lanes):
                j = base + c
                chunk[c] = (v_expf(w[j] - mx, lanes) if ggml_exp else expf(w[j] - mx)) if j < n else np.float32(0)
                if j < n:
                    w[j] = chunk[c]
            total += np.float64(reduce_tiled(chunk, 0, lanes))
        inv = np.float32(1.0 / total)
        for j in range(n):
            w[j] = w[j] * inv
    else:
        total32 = np.float32(0)
        for j in range(n):
            w[j] = v_expf(w[j] - mx, lanes) if ggml_exp else expf(w[j] - mx)
            total32 += w[j]
        for j in range(n):
            w[j] = w[j] / total32


@njit(cache=True)
def _attend_head(q, k_cache, v_cache, t, h, start_pos, n_pad, s, out):
    """out[t, head h] for query t at position start_pos + t (one work item of attend); s: AttentionSettings."""
    head_dim, lanes = s.head_dim, s.lanes
    g = h // (s.n_head // s.n_head_kv)
    n = start_pos + t + 1
    qh = np.empty(head_dim, np.float32)
    w = np.zeros(n_pad, np.float32)
    vrow = np.zeros(n_pad, np.float32)
    acc = np.empty(64, np.float32)
    chunk = np.empty(16, np.float32)
    for d in range(head_dim):
        x = q[t, h * head_dim + d]
        qh[d] = round_f16(x) if s.round_q else x
    for j in range(n):  # s_j = K_j · q, scaled (the cache row is read in place: f16 bits decode exactly on load)
        if s.tiled_kq:
            kq = tiled_dot(k_cache[j], g * head_dim, qh, 0, head_dim, lanes, acc)
        else:
            kq = vec_dot(k_cache[j], g * head_dim, qh, 0, head_dim, lanes, VEC_F16, acc)
        w[j] = kq * s.scale
    _softmax(w, n, lanes, s.ggml_exp, s.double_sum, chunk)
    if s.round_p:
        for j in range(n):
            w[j] = round_f16(w[j])
    n_dot = ((n + lanes - 1) // lanes) * lanes if s.tiled_kqv else n_pad
    for d in range(head_dim):  # out_d = Σ_j P_j · V_j,d over the (zero-padded) cells
        vi = g * head_dim + d
        for j in range(n):
            vrow[j] = load(v_cache[vi], j)
        if s.tiled_kqv:
            out[t, h * head_dim + d] = tiled_dot(vrow, 0, w, 0, n_dot, lanes, acc)
        else:
            out[t, h * head_dim + d] = vec_dot(vrow, 0, w, 0, n_dot, lanes, VEC_F16, acc)


@njit(cache=True, parallel=True)
def _attend_parallel(q, k_cache, v_cache, start_pos, n_pad, s, out):
    """attend with one work item per (query, head) spread over the thread pool."""
    for th in prange(q.shape[0] * s.n_head):
        _attend_head(q, k_cache, v_cache, th // s.n_head, th % s.n_head, start_pos, n_pad, s, out)


@njit(cache=True)
def attend(q, k_cache, v_cache, start_pos, s, out):
    """out (T, n_head·hd) = causal softmax(q·Kᵀ·scale)·V per head over cache cells 0..start_pos+t; s: the call's
    AttentionSettings.

    Small problems (a decode step at short context) run on the calling thread: a parallel region costs more there.
    """
    T = q.shape[0]
    width = 4 * s.lanes
    n_pad = ((start_pos + T + width - 1) // width) * width
    if T * (start_pos + T) * s.n_head * s.head_dim >= PARALLEL_WORK:
        _attend_parallel(q, k_cache, v_cache, start_pos, n_pad, s, out)
        return
    for th in range(T * s.n_head):
        _attend_head(q, k_cache, v_cache, th // s.n_head, th % s.n_head, start_pos, n_pad, s, out)
