"""Causal grouped-query attention over the KV cache, flash attention off (docs/NUMERICS.md §4.9).

Cache layout per layer (kv_layout): K (n_ctx, n_head_kv·head_dim) and V transposed (n_head_kv·head_dim, n_ctx), either
f16 bits (uint16) or f32; for the blocked order K in tiles of 16 positions and V by position, f32. For query t at
position p = start_pos + t and head h (KV head h // n_gqa):
    s_j = dot(K_j, q)                         j ≤ p; q rounded to f16 first if round_q
    w_j = s_j · scale ; softmax over j ≤ p    (masked cells are exact zeros)
    out = Σ_j P_j · V_j                        P rounded to f16 first if round_p
Two orders, chosen by the settings' `blocked` (Numerics.attention):
- ggml's ("ggml"): the dots in ggml's vec_dot order for one query (T = 1) and the tinyBLAS order for T ≥ 2
  (`tiled_kq`: needs head_dim % lanes == 0; `tiled_kqv`: needs head_dim % 4 == 0), one (query, head) at a time. ggml
  pads n_kv to a multiple of 256; the padded cells only add exact zeros, and every chunk boundary of the padded length
  is a multiple of the chunk widths, so iterating over j ≤ p in the same lane positions (zero-padded to a whole chunk)
  is the same arithmetic.
- blocked ("blocked", f32 cache, no f16 rounding, glibc's or libm's expf, f32 sums): every sum in plain sequential
  order, s_j = f32 Σ_d q_d·K_j,d (d ascending, one rounding per multiply and per add), w_j = s_j·scale, softmax with
  e_j = expf(w_j − max) (the settings' exp), Σ e_j in j order, P_j = e_j / Σ, out_d = Σ_j P_j·V_j,d (j ascending).
  The sums stay in that order and still vectorize: the scores over the keys j (K stored in (dim, key) tiles of 16
  positions, read in place), the outputs over d (V stored by position). Work items are a KV head × a block of
  QUERY_BLOCK queries (× the n_gqa heads that share the head), whose K and V stay in cache while every row of the block
  reads them. Independent of the block size and thread count.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from bitnet_ref.kernels.activation import exp_inplace, exp_of
from bitnet_ref.kernels.dense import VEC_F16, reduce_tiled, tiled_dot, vec_dot
from bitnet_ref.kernels.intrinsics import f32x8_load, f32x8_mul_add, f32x8_store, f32x8_zero
from bitnet_ref.kernels.scalar import load, round_f16, store

PARALLEL_WORK = 1 << 14  # query·cell·dim products from which attention uses the thread pool
QUERY_BLOCK = 16  # blocked order: queries per work item (× n_gqa heads = the vector of rows)
KEY_TILE = 16  # blocked order: positions per K cache tile (the keys of one pair of 8-lane score registers)


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
    exp: int  # the softmax's expf: activation.EXP_GGML (ggml's SIMD expf), EXP_LIBM or EXP_GLIBC
    double_sum: bool  # softmax chunk sums added in double (ggml) (else one f32 sum)
    blocked: bool  # the blocked sequential order (f32 cache only; the fields above ggml's then unused)


@njit(cache=True)
def store_kv(k, v, start_pos, k_cache, v_cache, blocked):
    """Write K rows (T, n_kv·hd) at positions start_pos.. and V transposed (ggml's layout; f16 caches round, as
    SET_ROWS), or for the blocked order K into its key tiles and V rows (kv_layout)."""
    T, width = k.shape
    for t in range(T):
        p = start_pos + t
        for i in range(width):
            if blocked:
                store(k_cache[p // KEY_TILE * width + i], p % KEY_TILE, k[t, i])
                store(v_cache[p], i, v[t, i])
            else:
                store(k_cache[p], i, k[t, i])
                store(v_cache[i], p, v[t, i])


def kv_layout(n_ctx: int, width: int, blocked: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of one layer's K and V cache: ggml's K (n_ctx, width) and V transposed (width, n_ctx), or for the
    blocked order K in tiles of KEY_TILE positions (n_tiles·width, KEY_TILE), tile i rows i·width.. a (dim, key)
    matrix, and V (n_ctx, width) by position, so that both of its sums read contiguous memory."""
    if blocked:
        return ((n_ctx + KEY_TILE - 1) // KEY_TILE * width, KEY_TILE), (n_ctx, width)
    return (n_ctx, width), (width, n_ctx)


@njit(cache=True, inline="always")
def _softmax(w, n, lanes, exp, double_sum, chunk):
    """In place: w[:n] = softmax(w[:n]); ggml: v_expf per lane chunk, chunk sums (hsum) added in double."""
    mx = w[0]
    for j in range(1, n):
        mx = max(mx, w[j])
    if double_sum:
        total = 0.0
        for base in range(0, n, lanes):
            for c in range(lanes):
                j = base + c
                chunk[c] = exp_of(w[j] - mx, exp, lanes) if j < n else np.float32(0)
                if j < n:
                    w[j] = chunk[c]
            total += np.float64(reduce_tiled(chunk, 0, lanes))
        inv = np.float32(1.0 / total)
        for j in range(n):
            w[j] = w[j] * inv
    else:
        total32 = np.float32(0)
        for j in range(n):
            w[j] = exp_of(w[j] - mx, exp, lanes)
            total32 += w[j]
        for j in range(n):
            w[j] = w[j] / total32


@njit(cache=True)
def _attend_group(q, k_cache, v_cache, t, g, start_pos, n_pad, s, out):
    """out[t, heads of KV head g] for query t at position start_pos + t (one work item of attend): each head's scores
    and softmax, then every V row decoded once for the n_gqa heads that read it; s: AttentionSettings."""
    head_dim, lanes = s.head_dim, s.lanes
    n_gqa = s.n_head // s.n_head_kv
    n = start_pos + t + 1
    qh = np.empty(head_dim, np.float32)
    w = np.zeros((n_gqa, n_pad), np.float32)
    vrow = np.zeros(n_pad, np.float32)
    acc = np.empty(64, np.float32)
    chunk = np.empty(16, np.float32)
    for i in range(n_gqa):
        h = g * n_gqa + i
        for d in range(head_dim):
            x = q[t, h * head_dim + d]
            qh[d] = round_f16(x) if s.round_q else x
        wi = w[i]
        for j in range(n):  # s_j = K_j · q, scaled (the cache row is read in place: f16 bits decode exactly on load)
            if s.tiled_kq:
                kq = tiled_dot(k_cache[j], g * head_dim, qh, 0, head_dim, lanes, acc)
            else:
                kq = vec_dot(k_cache[j], g * head_dim, qh, 0, head_dim, lanes, VEC_F16, acc)
            wi[j] = kq * s.scale
        _softmax(wi, n, lanes, s.exp, s.double_sum, chunk)
        if s.round_p:
            for j in range(n):
                wi[j] = round_f16(wi[j])
    n_dot = ((n + lanes - 1) // lanes) * lanes if s.tiled_kqv else n_pad
    for d in range(head_dim):  # out_d = Σ_j P_j · V_j,d over the (zero-padded) cells
        vi = g * head_dim + d
        for j in range(n):
            vrow[j] = load(v_cache[vi], j)
        for i in range(n_gqa):
            h = g * n_gqa + i
            if s.tiled_kqv:
                out[t, h * head_dim + d] = tiled_dot(vrow, 0, w[i], 0, n_dot, lanes, acc)
            else:
                out[t, h * head_dim + d] = vec_dot(vrow, 0, w[i], 0, n_dot, lanes, VEC_F16, acc)


@njit(cache=True, parallel=True)
def _attend_parallel(q, k_cache, v_cache, start_pos, n_pad, s, out):
    """attend with one work item per (query, KV head) spread over the thread pool."""
    for tg in prange(q.shape[0] * s.n_head_kv):
        _attend_group(q, k_cache, v_cache, tg // s.n_head_kv, tg % s.n_head_kv, start_pos, n_pad, s, out)


@njit(cache=True, inline="always")
def _row(r, R, t0, g, n_gqa, hd):
    """Query index and first column of row min(r, R−1) of a block in a (T, n_head·hd) array."""
    r = min(r, R - 1)
    return t0 + r // n_gqa, (g * n_gqa + r % n_gqa) * hd


@njit(cache=True)
def _attend_block(q, k_tiles, v_cache, g, t0, t1, start_pos, s, out):
    """Blocked order: out rows of queries t0..t1-1 for the n_gqa heads of KV head g (row r = (t − t0)·n_gqa + head);
    k_tiles (n_tiles·n_kv·hd, KEY_TILE) holds K in tiles of 16 positions, v_cache (n_ctx, n_kv·hd) V by position
    (all C-contiguous f32). Rows go 4 at a time with 16 keys (scores; a tile read in place, the cells of the last one
    past the block's keys overwritten below) or 16 dims (outputs) in two registers, each lane one sequential sum; dims
    left over (head_dim not a multiple of 16) are summed one by one in the same order."""
    hd = s.head_dim
    n_gqa = s.n_head // s.n_head_kv
    R = (t1 - t0) * n_gqa
    n = start_pos + t1  # keys 0..n-1 cover every query of the block
    width = v_cache.shape[1]
    n16 = (n + KEY_TILE - 1) // KEY_TILE * KEY_TILE
    p = np.zeros((R, n16), np.float32)  # scores, then probabilities; cells past a row's position are set to 0
    for jc in range(0, n, KEY_TILE):  # s_j = Σ_d q_d·K_j,d, d ascending
        kb = ((jc // KEY_TILE) * width + g * hd) * KEY_TILE  # the (d, key) matrix of keys jc..jc+15 of KV head g
        for r0 in range(0, R, 4):
            u0, c0 = _row(r0, R, t0, g, n_gqa, hd)
            u1, c1 = _row(r0 + 1, R, t0, g, n_gqa, hd)
            u2, c2 = _row(r0 + 2, R, t0, g, n_gqa, hd)
            u3, c3 = _row(r0 + 3, R, t0, g, n_gqa, hd)
            if jc > start_pos + u3:  # past every position of the group
                continue
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = f32x8_zero()
            q0, q1, q2, q3 = q[u0, c0:], q[u1, c1:], q[u2, c2:], q[u3, c3:]
            for d in range(hd):
                ka, kc = f32x8_load(k_tiles, kb + KEY_TILE * d), f32x8_load(k_tiles, kb + KEY_TILE * d + 8)
                du = np.uint64(d)  # an unsigned index: no negative-index wraparound in the loop
                x0, x1, x2, x3 = q0[du], q1[du], q2[du], q3[du]
                a0, b0 = f32x8_mul_add(a0, x0, ka), f32x8_mul_add(b0, x0, kc)
                a1, b1 = f32x8_mul_add(a1, x1, ka), f32x8_mul_add(b1, x1, kc)
                a2, b2 = f32x8_mul_add(a2, x2, ka), f32x8_mul_add(b2, x2, kc)
                a3, b3 = f32x8_mul_add(a3, x3, ka), f32x8_mul_add(b3, x3, kc)
            for k, (a, b) in enumerate(((a0, b0), (a1, b1), (a2, b2), (a3, b3))):
                if r0 + k < R:
                    f32x8_store(p, (r0 + k) * n16 + jc, a)
                    f32x8_store(p, (r0 + k) * n16 + jc + 8, b)
    for r in range(R):
        p[r, start_pos + t0 + r // n_gqa + 1 :] = 0  # cells past the row's position
    for r in range(R):
        n_r = start_pos + t0 + r // n_gqa + 1
        pr = p[r, :n_r]
        mx = np.float32(-np.inf)
        for j in range(n_r):
            pr[j] = pr[j] * s.scale
            mx = max(mx, pr[j])
        for j in range(n_r):
            pr[j] = pr[j] - mx
        exp_inplace(pr, n_r, s.exp, s.lanes)
        total = np.float32(0)
        for j in range(n_r):
            total += pr[j]
        for j in range(n_r):
            pr[j] = pr[j] / total
    ow = out.shape[1]
    for dc in range(0, hd - hd % 16, 16):  # out_d = Σ_j P_j·V_j,d, j ascending
        vc0 = g * hd + dc
        for r0 in range(0, R, 4):
            u0, c0 = _row(r0, R, t0, g, n_gqa, hd)
            u1, c1 = _row(r0 + 1, R, t0, g, n_gqa, hd)
            u2, c2 = _row(r0 + 2, R, t0, g, n_gqa, hd)
            u3, c3 = _row(r0 + 3, R, t0, g, n_gqa, hd)
            p0, p1, p2, p3 = p[min(r0, R - 1)], p[min(r0 + 1, R - 1)], p[min(r0 + 2, R - 1)], p[min(r0 + 3, R - 1)]
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = f32x8_zero()
            for j in range(n):
                va, vc = f32x8_load(v_cache, j * width + vc0), f32x8_load(v_cache, j * width + vc0 + 8)
                a0, b0 = f32x8_mul_add(a0, p0[j], va), f32x8_mul_add(b0, p0[j], vc)
                a1, b1 = f32x8_mul_add(a1, p1[j], va), f32x8_mul_add(b1, p1[j], vc)
                a2, b2 = f32x8_mul_add(a2, p2[j], va), f32x8_mul_add(b2, p2[j], vc)
                a3, b3 = f32x8_mul_add(a3, p3[j], va), f32x8_mul_add(b3, p3[j], vc)
            for k, (a, b, u, c) in enumerate(((a0, b0, u0, c0), (a1, b1, u1, c1), (a2, b2, u2, c2), (a3, b3, u3, c3))):
                if r0 + k < R:
                    f32x8_store(out, u * ow + c + dc, a)
                    f32x8_store(out, u * ow + c + dc + 8, b)
    for r in range(R):
        t, c = _row(r, R, t0, g, n_gqa, hd)
        for d in range(hd - hd % 16, hd):
            acc = np.float32(0)
            for j in range(n):
                acc += p[r, j] * v_cache[j, g * hd + d]
            out[t, c + d] = acc


@njit(cache=True, inline="always")
def _work_item(item, nqb, n_kv):
    """(KV head, query block) of work item `item` of the blocked order. A block's cost grows with its last position,
    and the thread pool gives each thread a contiguous range of items, so the items take the query blocks from both
    ends in turn (0, nqb−1, 1, nqb−2, ..., each for every KV head): any contiguous range holds about as many late
    blocks as early ones."""
    k, g = item // n_kv, item % n_kv
    return g, (k // 2 if k % 2 == 0 else nqb - 1 - k // 2)


@njit(cache=True, parallel=True)
def _attend_blocked(q, k_tiles, v_cache, start_pos, s, out):
    """The blocked order over (KV head, query block) work items spread over the thread pool (_work_item)."""
    T = q.shape[0]
    nqb = (T + QUERY_BLOCK - 1) // QUERY_BLOCK
    for item in prange(s.n_head_kv * nqb):
        g, qb = _work_item(item, nqb, s.n_head_kv)
        _attend_block(q, k_tiles, v_cache, g, qb * QUERY_BLOCK, min(T, (qb + 1) * QUERY_BLOCK), start_pos, s, out)


@njit(cache=True)
def attend(q, k_cache, v_cache, start_pos, s, out):
    """out (T, n_head·hd) = causal softmax(q·Kᵀ·scale)·V per head over cache cells 0..start_pos+t; s: the call's
    AttentionSettings.

    Small problems (a decode step at short context) run on the calling thread: a parallel region costs more there.
    """
    T = q.shape[0]
    if s.blocked:
        if T * (start_pos + T) * s.n_head * s.head_dim >= PARALLEL_WORK:
            _attend_blocked(q, k_cache, v_cache, start_pos, s, out)
        else:
            for g in range(s.n_head_kv):
                _attend_block(q, k_cache, v_cache, g, 0, T, start_pos, s, out)
        return
    width = 4 * s.lanes
    n_pad = ((start_pos + T + width - 1) // width) * width
    if T * (start_pos + T) * s.n_head * s.head_dim >= PARALLEL_WORK:
        _attend_parallel(q, k_cache, v_cache, start_pos, n_pad, s, out)
        return
    for tg in range(T * s.n_head_kv):
        _attend_group(q, k_cache, v_cache, tg // s.n_head_kv, tg % s.n_head_kv, start_pos, n_pad, s, out)
