"""The CUDA kernels of the `bitnet` profile's forward pass: pure @cuda.jit functions on device arrays and scalars.

One thread per output element (or per row where the CPU engine sums a whole row in order), launched over a 1-D grid
by `launch`. Every float sum runs in the CPU engine's sequential order with arith.py's once-rounded operations
(docs/GPU.md §2), so that the logits are the CPU engine's; integer sums are exact. Packed weights are read in place:
TQ2_0 and TQ1_0 blocks with their f16 d, I2_S (x86 128-element blocks) with its per-tensor scale passed in.
Unsigned codes u in {0,1,2} stand for u − 1; code 3 computes as +2, like the CPU kernels.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from bitnet_ref.cuda.arith import add, device, div, expf, fma, mul, rint, sqrt, sub
from bitnet_ref.kernels.ternary import I2S_BLOCK, QK, TQ1_0_BYTES, TQ2_0_BYTES  # the CPU kernels' layout numbers

THREADS = 128  # threads per block of every launch
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_NEG_INF = np.float32(-np.inf)
_INF = np.float32(np.inf)
_NAN = np.float32(np.nan)
_TWO_M24 = np.float32(2.0**-24)
_TWO_M25 = np.float32(2.0**-25)


def launch(kernel, n: int, *args) -> None:
    """Run `kernel` over n threads (THREADS per block); kernels return early past n."""
    if n > 0:
        kernel[(n + THREADS - 1) // THREADS, THREADS](*args)


# ---------------------------------------------------------------------------------------------------------------------
# scalar helpers


@device
def f16_bits_to_f32(bits):
    """The f32 value of IEEE half bits (exact, integer operations and power-of-two products only)."""
    b = int(bits)
    e = (b >> 10) & 31
    man = b & 1023
    if e == 0:
        v = mul(np.float32(man), _TWO_M24)
    elif e == 31:
        v = _INF if man == 0 else _NAN
    else:
        v = mul(mul(np.float32(1024 + man), np.float32(1 << e)), _TWO_M25)
    return -v if b & 0x8000 else v


@device
def weight_value(w, i, is_f16):
    """Element i of a float weight: f16 bits (uint16 array) decoded, or the f32 as stored."""
    if is_f16:
        return f16_bits_to_f32(w[i])
    return np.float32(w[i])


@device
def _f16_bits(w, o):
    """The bits of the f16 stored little-endian at w[o], w[o+1]."""
    return int(w[o]) | (int(w[o + 1]) << 8)


@device
def _block_d(w, o):
    """The f16 d stored little-endian at w[o], w[o+1]."""
    return f16_bits_to_f32(_f16_bits(w, o))


# ---------------------------------------------------------------------------------------------------------------------
# rows: embedding, RMSNorm, per-token int8 quantization


@cuda.jit
def embed(tokens, table, is_f16, h):
    """h[t, i] = row tokens[t] of the embedding table (n_vocab·n_embd f16 bits or f32), decoded exactly."""
    idx = cuda.grid(1)
    T, n = h.shape
    if idx >= T * n:
        return
    t, i = idx // n, idx % n
    h[t, i] = weight_value(table, int(tokens[t]) * n + i, is_f16)


@cuda.jit
def rmsnorm(x, w, eps, out):
    """out[t] = (x[t] · 1/sqrt(mean(x[t]²) + eps)) · w, one thread per row, the squares summed in order in f32."""
    t = cuda.grid(1)
    T, n = x.shape
    if t >= T:
        return
    acc = _ZERO
    for i in range(n):
        acc = add(acc, mul(x[t, i], x[t, i]))
    mean = div(acc, np.float32(n))
    scale = div(_ONE, sqrt(add(mean, eps)))
    for i in range(n):
        out[t, i] = mul(mul(x[t, i], scale), w[i])


@cuda.jit
def quantize_i8(x, q, s, act_sum):
    """Per-token absmax int8 of row t: s = f32(127 / max(1e-5, max|x|)) (double), q = clamp(rint(f32(x·s))), Σq."""
    t = cuda.grid(1)
    T, n = x.shape
    if t >= T:
        return
    amax = 1e-5
    for k in range(n):
        amax = max(amax, abs(np.float64(x[t, k])))
    st = np.float32(127.0 / amax)
    total = 0
    for k in range(n):
        c = min(127, max(-128, int(rint(mul(x[t, k], st)))))
        q[t, k] = c
        total += c
    s[t] = st
    act_sum[t] = total


# ---------------------------------------------------------------------------------------------------------------------
# ternary matmuls, out (T, M) = BitLinear(W (M, K) packed, int8 rows q (T, K) with scales s); one thread per output


@device
def _tq2_block(w, o, q, t, e):
    """Σ (u − 1)·q over the TQ2_0 block at byte o (elements e..e+255): byte qs[32h + l] holds elements
    e + 128h + 32g + l at bits 2g."""
    D = 0
    for j in range(64):
        byte = int(w[o + j])
        e0 = e + 128 * (j // 32) + j % 32
        for g in range(4):
            D += (((byte >> (2 * g)) & 3) - 1) * int(q[t, e0 + 32 * g])
    return D


@device
def _tq1_segment(w, o, q, t, e0, nbytes, ntrits, lanes):
    """Σ (trit − 1)·q over one TQ1_0 segment: byte j holds trit n of element e0 + lanes·n + j."""
    D = 0
    for j in range(nbytes):
        byte = int(w[o + j])
        pw = 1
        for n in range(ntrits):
            trit = (((byte * pw) & 255) * 3) >> 8
            D += (trit - 1) * int(q[t, e0 + lanes * n + j])
            pw *= 3
    return D


@device
def _tq1_block(w, o, q, t, e):
    """Σ (trit − 1)·q over the TQ1_0 block at byte o (qs[0:32]: e + 32n + j, qs[32:48]: e + 160 + 16n + j,
    qh: e + 240 + 4n + j)."""
    D = _tq1_segment(w, o, q, t, e, 32, 5, 32)
    D += _tq1_segment(w, o + 32, q, t, e + 160, 16, 5, 16)
    return D + _tq1_segment(w, o + 48, q, t, e + 240, 4, 4, 4)


@device
def _tq_row(w, m, K, q, t, tq1):
    """Row m of a TQ2_0 (tq1 False) or TQ1_0 weight against q[t]: the blocks in runs of equal d bits, in order;
    acc = acc + f64(D_run)·f64(d_run) in float64 (the product is exact, so a contracted FMA rounds the same), returned
    rounded once to f32."""
    nb = K // QK
    bb = TQ1_0_BYTES if tq1 else TQ2_0_BYTES
    acc = np.float64(0.0)
    D = 0
    for b in range(nb):
        o = (m * nb + b) * bb
        D += _tq1_block(w, o, q, t, QK * b) if tq1 else _tq2_block(w, o, q, t, QK * b)
        if b == nb - 1 or _f16_bits(w, o + 2 * bb - 2) != _f16_bits(w, o + bb - 2):  # the run ends
            acc += np.float64(D) * np.float64(_block_d(w, o + bb - 2))
            D = 0
    return np.float32(acc)


@cuda.jit
def matmul_tq2_0(w, M, K, q, s, out):
    """TQ2_0: D_b = Σ_{e in block b} (u_e − 1)·q_e exact, summed over runs of equal d; f32(Σ f64(D_run)·f64(d)) / s."""
    idx = cuda.grid(1)
    if idx >= q.shape[0] * M:
        return
    t, m = idx // M, idx % M
    out[t, m] = div(_tq_row(w, m, K, q, t, False), s[t])


@cuda.jit
def matmul_tq1_0(w, M, K, q, s, out):
    """TQ1_0: the TQ2_0 arithmetic on base-3 trits (_tq1_block)."""
    idx = cuda.grid(1)
    if idx >= q.shape[0] * M:
        return
    t, m = idx // M, idx % M
    out[t, m] = div(_tq_row(w, m, K, q, t, True), s[t])


@cuda.jit
def matmul_i2s(w, M, K, q, s, act_sum, scale, out):
    """I2_S (x86): sumi = Σ u·q over the row, exact; out = f32(f32(f32(sumi) − f32(act_sum)) / s) · scale."""
    idx = cuda.grid(1)
    if idx >= q.shape[0] * M:
        return
    t, m = idx // M, idx % M
    row = m * (K // 4)
    sumi = 0
    for c in range(K // I2S_BLOCK):
        for p in range(32):  # byte p of chunk c holds elements 128c + 32g + p at bits 6 − 2g
            byte = int(w[row + 32 * c + p])
            e0 = I2S_BLOCK * c + p
            for g in range(4):
                sumi += ((byte >> (6 - 2 * g)) & 3) * int(q[t, e0 + 32 * g])
    out[t, m] = mul(div(sub(np.float32(sumi), np.float32(act_sum[t])), s[t]), scale)


# ---------------------------------------------------------------------------------------------------------------------
# the float head: ggml's vec_dot order with `lanes`-wide registers (the CPU profile's "fixed" float_dot)


@device
def _reduce_vec(a, lanes):
    """Horizontal sum of a[0:lanes] as GGML_F32_VEC_REDUCE ends it (the AVX-512 or the AVX2 tree)."""
    if lanes == 16:
        g0 = add(add(a[0], a[8]), add(a[4], a[12]))
        g1 = add(add(a[1], a[9]), add(a[5], a[13]))
        g2 = add(add(a[2], a[10]), add(a[6], a[14]))
        g3 = add(add(a[3], a[11]), add(a[7], a[15]))
        return add(add(g0, g2), add(g1, g3))
    t0 = add(a[0], a[4])
    t1 = add(a[1], a[5])
    t2 = add(a[2], a[6])
    t3 = add(a[3], a[7])
    return add(add(t0, t1), add(t2, t3))


@cuda.jit
def head(w, is_f16, M, K, x, lanes, out):
    """out[t, m] = W[m]·x[t]: 4·lanes FMA accumulators over full chunks, folded, reduced; the leftovers added in
    double (f16 weights) or in f32 (f32 weights: GCC's pieces of 8 and 4 unfused, the last < 4 fused)."""
    idx = cuda.grid(1)
    T = x.shape[0]
    if idx >= T * M:
        return
    t, m = idx // M, idx % M
    acc = cuda.local.array(64, np.float32)
    width = 4 * lanes
    nfull = K - K % width
    for j in range(width):
        acc[j] = _ZERO
    for c in range(0, nfull, width):
        for j in range(width):
            acc[j] = fma(weight_value(w, m * K + c + j, is_f16), x[t, c + j], acc[j])
    for j in range(lanes):
        acc[j] = add(add(acc[j], acc[2 * lanes + j]), add(acc[lanes + j], acc[3 * lanes + j]))
    reduced = _reduce_vec(acc, lanes)
    if is_f16:
        total = np.float64(reduced)
        for i in range(nfull, K):
            total += np.float64(mul(weight_value(w, m * K + i, is_f16), x[t, i]))
        out[t, m] = np.float32(total)
        return
    left = K - nfull
    n_unfused = nfull + (left // 8) * 8 + (4 if left % 8 >= 4 else 0)
    total32 = reduced
    for i in range(nfull, n_unfused):
        total32 = add(total32, mul(weight_value(w, m * K + i, is_f16), x[t, i]))
    for i in range(n_unfused, K):
        total32 = fma(weight_value(w, m * K + i, is_f16), x[t, i], total32)
    out[t, m] = total32


# ---------------------------------------------------------------------------------------------------------------------
# RoPE, KV cache, attention


@cuda.jit
def rope_neox(x, pos0, n_head, head_dim, n_rot, cos_table, sin_table):
    """In place on x (T, n_head·head_dim): out = x·cos + rotate_half(x)·sin unfused, cos and sin of the position's
    angles from the tables (n_ctx, n_rot/2) the host computed with libm (rope.direct_tables); one thread per (token,
    head, pair i < n_rot/2); dims past n_rot are untouched."""
    idx = cuda.grid(1)
    half = n_rot // 2
    T = x.shape[0]
    if idx >= T * n_head * half:
        return
    t, h, i = idx // (n_head * half), (idx // half) % n_head, idx % half
    c, sn = cos_table[pos0 + t, i], sin_table[pos0 + t, i]
    lo, hi = h * head_dim + i, h * head_dim + i + half
    x0, x1 = x[t, lo], x[t, hi]
    x[t, lo] = sub(mul(x0, c), mul(x1, sn))
    x[t, hi] = add(mul(x1, c), mul(x0, sn))


@cuda.jit
def store_kv(k, v, pos0, k_cache, v_cache):
    """k_cache[pos0 + t] = k[t], v_cache[pos0 + t] = v[t] (f32 caches (n_ctx, n_head_kv·head_dim), by position)."""
    idx = cuda.grid(1)
    T, width = k.shape
    if idx >= T * width:
        return
    t, i = idx // width, idx % width
    k_cache[pos0 + t, i] = k[t, i]
    v_cache[pos0 + t, i] = v[t, i]


@cuda.jit
def attn_scores(q, k_cache, pos0, n_gqa, head_dim, scale, p):
    """p[t, h, j] = f32(Σ_d q_d·K_j,d, d ascending) · scale for keys j ≤ pos0 + t; one thread per (t, h, j)."""
    idx = cuda.grid(1)
    T, n_head, n_keys = q.shape[0], p.shape[1], pos0 + q.shape[0]
    if idx >= T * n_head * n_keys:
        return
    t, h, j = idx // (n_head * n_keys), (idx // n_keys) % n_head, idx % n_keys
    if j > pos0 + t:
        return
    qo, ko = h * head_dim, (h // n_gqa) * head_dim
    acc = _ZERO
    for d in range(head_dim):
        acc = add(acc, mul(q[t, qo + d], k_cache[j, ko + d]))
    p[t, h, j] = mul(acc, scale)


@cuda.jit
def attn_softmax(p, T, pos0):
    """In place over keys j ≤ pos0 + t of p[t, h]: e_j = expf(w_j − max), Σ e_j in j order, P_j = e_j / Σ."""
    idx = cuda.grid(1)
    n_head = p.shape[1]
    if idx >= T * n_head:
        return
    t, h = idx // n_head, idx % n_head
    n = pos0 + t + 1
    mx = _NEG_INF
    for j in range(n):
        mx = max(mx, p[t, h, j])
    total = _ZERO
    for j in range(n):
        e = expf(sub(p[t, h, j], mx))
        p[t, h, j] = e
        total = add(total, e)
    for j in range(n):
        p[t, h, j] = div(p[t, h, j], total)


@cuda.jit
def attn_values(p, v_cache, pos0, n_gqa, head_dim, out):
    """out[t, h·hd + d] = Σ_j P_j·V_j,d over keys j ≤ pos0 + t in ascending order; one thread per (t, h, d)."""
    idx = cuda.grid(1)
    T, width = out.shape
    if idx >= T * width:
        return
    t, c = idx // width, idx % width
    h, d = c // head_dim, c % head_dim
    vo = (h // n_gqa) * head_dim + d
    acc = _ZERO
    for j in range(pos0 + t + 1):
        acc = add(acc, mul(p[t, h, j], v_cache[j, vo]))
    out[t, c] = acc


# ---------------------------------------------------------------------------------------------------------------------
# elementwise: gated activations, residual add, a linear's `.scale`


@cuda.jit
def swiglu(gate, up, out):
    """out = (x / (1 + expf(−x)))·up, x = gate."""
    idx = cuda.grid(1)
    T, n = gate.shape
    if idx >= T * n:
        return
    t, i = idx // n, idx % n
    x = gate[t, i]
    out[t, i] = mul(div(x, add(_ONE, expf(-x))), up[t, i])


@cuda.jit
def relu2_glu(gate, up, out):
    """out = relu(gate)²·up (BitNet b1.58 2B-4T's FFN activation)."""
    idx = cuda.grid(1)
    T, n = gate.shape
    if idx >= T * n:
        return
    t, i = idx // n, idx % n
    r = max(gate[t, i], _ZERO)
    out[t, i] = mul(mul(r, r), up[t, i])


@cuda.jit
def add_rows(a, b, out):
    """out = a + b elementwise (residual connections)."""
    idx = cuda.grid(1)
    T, n = a.shape
    if idx >= T * n:
        return
    t, i = idx // n, idx % n
    out[t, i] = add(a[t, i], b[t, i])


@cuda.jit
def scale_rows(x, s):
    """x *= s in place (a linear's optional one-element `.scale`)."""
    idx = cuda.grid(1)
    T, n = x.shape
    if idx >= T * n:
        return
    t, i = idx // n, idx % n
    x[t, i] = mul(x[t, i], s)
