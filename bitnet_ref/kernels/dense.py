"""Float-weight linears (F32, F16, BF16, Q8_0) in ggml's accumulation orders, the tied F16 head included.

out[t, m] = Σ_k W[m, k] · x[t, k]. Weights stay in the memory-mapped file: F16/BF16 as uint16 bits, F32 as f32,
Q8_0 as raw blocks. One activation row (decode) dots the F16 bits directly (vcvtph2ps inside the FMA loop); with
more rows each weight row is decoded once into a small f32 scratch row and dotted with every activation row.

Reduction orders (docs/NUMERICS.md §4.4, §4.5; L = 8 lanes on AVX2, 16 on AVX-512; `vec_dot` variants for the AVX2
trees of docs/NUMERICS-AVX2.md §1, §2, §3):
- "vec" (ggml_vec_dot_f16/f32, one activation column): 4 accumulators of L lanes over full chunks of 4L elements
  (FMA), combined (a0+a2)+(a1+a3), reduced by `reduce_vec`, then the K mod 4L leftovers (in double for F16/BF16,
  in f32 for F32).
- "tiled" (llamafile tinyBLAS, ≥ 2 columns when K % KN == 0 and M % 4 == 0): one L-lane FMA accumulator over steps
  of KN = L, reduced by `reduce_tiled`.
Products of f16 (or bf16) values are exact in f32, so FMA and mul+add agree there; F32 weights need the FMA.

BF16 on a build with AVX512_BF16 (`VEC_BF16_DPBF16`, `tiled_dot_dpbf16`) runs vdpbf16ps instead: f32 lane i of a
register takes the bf16 pair (2i, 2i+1) of a 32-element chunk, adds the odd product first, then the even one, each
sum rounded once, with denormal inputs read as zero and denormal sums flushed to signed zero (checked bit for bit
against the instruction on an AVX512_BF16 host; adding the even element first, not flushing, or rounding once all
differ). ggml_vec_dot_bf16 keeps two such registers over chunks of 64, reduces each with R16 into a double and
adds the n mod 64 leftovers there as f32 products; tinyBLAS keeps one over steps of KN = 32 and reduces it with R16.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bitnet_ref.formats import Q8_0
from bitnet_ref.kernels.intrinsics import bits_f32, f16_to_f32, f32_bits, fma32, fma_lanes, fma_lanes_x2
from bitnet_ref.kernels.scalar import bf16_to_f32, load, round_bf16, round_f16

ROW_BLOCK = 16  # rows decoded per scratch allocation in the parallel loops
Q8_0_BLOCK = Q8_0.BLOCK_ELEMS  # 32
Q8_0_BYTES = Q8_0.BLOCK_BYTES  # 34: d f16 @0, qs i8[32] @2

# vec_dot reduction variants
VEC_F16 = 0  # ggml_vec_dot_f16: 4 accumulators, reduce_vec, leftovers added in double
VEC_F32 = 3  # ggml_vec_dot_f32: the same tree, but the total and the leftovers stay in f32
VEC_BF16_AVX2 = 1  # ggml_vec_dot_bf16 AVX2: 4 accumulators of 8, reduce_tiled (hsum), leftovers in double
VEC_BF16_AVX512 = 2  # ggml_vec_dot_bf16 AVX-512F: 2 accumulators of 16, each reduced, summed in double
VEC_BF16_DPBF16 = 4  # ggml_vec_dot_bf16 AVX512_BF16: 2 vdpbf16ps accumulators over chunks of 64, summed in double

DPBF16_KN = 32  # bf16 elements per vdpbf16ps register: tinyBLAS's K step for BF16 under AVX512_BF16
_F32_MIN_NORMAL = np.float32(2.0**-126)
_F32_SIGN = np.int32(-(2**31))


@njit(cache=True, inline="always")
def _r8_pairs_adjacent(a, o):
    """AVX2 hadd tree of GGML_F32x8_REDUCE: t_i = a_i + a_{i+4}; (t0+t1) + (t2+t3)."""
    t0 = a[o] + a[o + 4]
    t1 = a[o + 1] + a[o + 5]
    t2 = a[o + 2] + a[o + 6]
    t3 = a[o + 3] + a[o + 7]
    return (t0 + t1) + (t2 + t3)


@njit(cache=True, inline="always")
def _r8_pairs_strided(a, o):
    """AVX2 movehl/movehdup tree (tinyBLAS hsum, softmax): t_i = a_i + a_{i+4}; (t0+t2) + (t1+t3)."""
    t0 = a[o] + a[o + 4]
    t1 = a[o + 1] + a[o + 5]
    t2 = a[o + 2] + a[o + 6]
    t3 = a[o + 3] + a[o + 7]
    return (t0 + t2) + (t1 + t3)


@njit(cache=True, inline="always")
def _r16(a, o):
    """GCC's _mm512_reduce_add_ps: h_i = a_i + a_{i+8}, g_i = h_i + h_{i+4}, (g0+g2) + (g1+g3)."""
    g0 = (a[o] + a[o + 8]) + (a[o + 4] + a[o + 12])
    g1 = (a[o + 1] + a[o + 9]) + (a[o + 5] + a[o + 13])
    g2 = (a[o + 2] + a[o + 10]) + (a[o + 6] + a[o + 14])
    g3 = (a[o + 3] + a[o + 11]) + (a[o + 7] + a[o + 15])
    return (g0 + g2) + (g1 + g3)


@njit(cache=True, inline="always")
def reduce_vec(a, o, lanes):
    """Horizontal sum of one register a[o:o+lanes] as GGML_F32_VEC_REDUCE ends it."""
    if lanes == 16:
        return _r16(a, o)
    return _r8_pairs_adjacent(a, o)


@njit(cache=True, inline="always")
def reduce_tiled(a, o, lanes):
    """Horizontal sum of one register a[o:o+lanes] as tinyBLAS's hsum and ggml's softmax do it."""
    if lanes == 16:
        return _r16(a, o)
    return _r8_pairs_strided(a, o)


@njit(cache=True, inline="always")
def _ftz(v):
    """v, or a zero of v's sign where v is an f32 denormal (vdpbf16ps reads and writes denormals as zero)."""
    if abs(v) < _F32_MIN_NORMAL:
        return bits_f32(np.int32(f32_bits(v) & _F32_SIGN))
    return v


@njit(cache=True, inline="always")
def _dpbf16_lane(acc, a, ao, b, bo):
    """One f32 lane of vdpbf16ps on the bf16 pairs a[ao:ao+2], b[bo:bo+2] (as f32): odd product first, each sum
    rounded once (fma32: a bf16 product is exact) and flushed."""
    acc = _ftz(acc)
    acc = _ftz(fma32(_ftz(a[ao + 1]), _ftz(b[bo + 1]), acc))
    return _ftz(fma32(_ftz(a[ao]), _ftz(b[bo]), acc))


@njit(cache=True, inline="always")
def _dpbf16_chunks(a, ao, b, bo, nchunks, stride, acc, o):
    """acc[o:o+16] = vdpbf16ps(acc, ·, ·) over 32 bf16 values at ao + c·stride (and bo + c·stride), c < nchunks."""
    for c in range(nchunks):
        base = c * stride
        for i in range(16):
            acc[o + i] = _dpbf16_lane(acc[o + i], a, ao + base + 2 * i, b, bo + base + 2 * i)


@njit(cache=True, inline="always")
def _vec_dot_dpbf16(a, ao, b, bo, n, acc):
    """ggml_vec_dot_bf16 with AVX512_BF16 on bf16 values held as f32 (a, b f32; acc ≥ 32 f32)."""
    nfull = n - n % 64
    for j in range(32):
        acc[j] = np.float32(0)
    _dpbf16_chunks(a, ao, b, bo, nfull // 64, 64, acc, 0)  # c1: elements i..i+31 of each chunk of 64
    _dpbf16_chunks(a, ao + 32, b, bo + 32, nfull // 64, 64, acc, 16)  # c2: elements i+32..i+63
    # ggml's double sumf starts at +0.0: a register that sums to -0 (flushed lanes keep their sign) gives +0
    total = np.float64(0)
    total += np.float64(_r16(acc, 0))
    total += np.float64(_r16(acc, 16))
    for i in range(nfull, n):
        total += np.float64(a[ao + i] * b[bo + i])  # scalar leftovers: f32 product, no flushing
    return np.float32(total)


@njit(cache=True, inline="always")
def vec_dot(a, ao, b, bo, n, lanes, variant, acc):
    """ggml vec_dot of a[ao:ao+n]·b[bo:bo+n] in the order of `variant`; a f32 or f16 bits, b f32; acc ≥ 4·lanes f32
    (VEC_BF16_DPBF16: a f32, acc ≥ 32)."""
    if variant == VEC_BF16_DPBF16:
        return _vec_dot_dpbf16(a, ao, b, bo, n, acc)
    width = (2 if variant == VEC_BF16_AVX512 else 4) * lanes
    for j in range(width):
        acc[j] = np.float32(0)
    fma_lanes(a, ao, b, bo, n // width, width, acc)
    return _vec_total(a, ao, b, bo, n, lanes, variant, acc, 0)


@njit(cache=True, inline="always")
def vec_dot_f16_x2(a, ao, ao2, b, bo, n, lanes, acc):
    """vec_dot (VEC_F16) of two rows a[ao:ao+n] and a[ao2:ao2+n] with b, their chunks loaded side by side: two memory
    streams in flight, which lets a single-token head read at the bus's speed (docs/PERFORMANCE.md §10). Each row's
    result is bit for bit vec_dot's; acc ≥ 8·lanes."""
    width = 4 * lanes
    for j in range(2 * width):
        acc[j] = np.float32(0)
    fma_lanes_x2(a, ao, ao2, b, bo, n // width, width, acc)
    return _vec_total(a, ao, b, bo, n, lanes, VEC_F16, acc, 0), _vec_total(a, ao2, b, bo, n, lanes, VEC_F16, acc, width)


@njit(cache=True, inline="always")
def _vec_total(a, ao, b, bo, n, lanes, variant, acc, o):
    """The rest of vec_dot once the accumulators acc[o:o+width] hold the full chunks: their reduction in `variant`'s
    tree, then the leftover elements."""
    width = (2 if variant == VEC_BF16_AVX512 else 4) * lanes
    nfull = n - n % width
    if variant == VEC_BF16_AVX512:
        total = np.float64(_r16(acc, o)) + np.float64(_r16(acc, o + 16))
    else:
        for j in range(o, o + lanes):
            acc[j] = (acc[j] + acc[2 * lanes + j]) + (acc[lanes + j] + acc[3 * lanes + j])
        if variant == VEC_BF16_AVX2:
            total = np.float64(_r8_pairs_strided(acc, o))
        else:
            total = np.float64(reduce_vec(acc, o, lanes))
    if variant == VEC_F32:
        # GCC vectorizes this leftover loop in pieces of 8 and 4 (mul, then in-order adds) and fuses the last < 4
        left = n - nfull
        n_unfused = nfull + (left // 8) * 8 + (4 if left % 8 >= 4 else 0)
        total32 = np.float32(total)
        for i in range(nfull, n_unfused):
            total32 = total32 + load(a, ao + i) * b[bo + i]
        for i in range(n_unfused, n):
            total32 = fma32(load(a, ao + i), b[bo + i], total32)
        return total32
    for i in range(nfull, n):
        total += np.float64(load(a, ao + i) * b[bo + i])
    return np.float32(total)


@njit(cache=True, inline="always")
def tiled_dot(a, ao, b, bo, n, lanes, acc):
    """tinyBLAS dot of a[ao:ao+n]·b[bo:bo+n]: one lanes-wide FMA accumulator over steps of lanes (n % lanes == 0)."""
    for j in range(lanes):
        acc[j] = np.float32(0)
    fma_lanes(a, ao, b, bo, n // lanes, lanes, acc)
    return reduce_tiled(acc, 0, lanes)


@njit(cache=True, inline="always")
def tiled_dot_dpbf16(a, ao, b, bo, n, acc):
    """tinyBLAS<32, __m512, __m512bh> dot of bf16 values held as f32: one vdpbf16ps accumulator over steps of
    DPBF16_KN (n % 32 == 0), then R16."""
    for j in range(16):
        acc[j] = np.float32(0)
    _dpbf16_chunks(a, ao, b, bo, n // DPBF16_KN, DPBF16_KN, acc, 0)
    return _r16(acc, 0)


@njit(cache=True, inline="always")
def _dot_columns(row, ro, x, m, tiled, lanes, variant, acc, out):
    """out[t, m] = row[ro:ro+K] · x[t] for every activation row t, in the vec or tiled order of `variant`."""
    T, K = x.shape
    xf = x.reshape(T * K)
    for t in range(T):
        if tiled and variant == VEC_BF16_DPBF16:
            out[t, m] = tiled_dot_dpbf16(row, ro, xf, t * K, K, acc)
        elif tiled:
            out[t, m] = tiled_dot(row, ro, xf, t * K, K, lanes, acc)
        else:
            out[t, m] = vec_dot(row, ro, xf, t * K, K, lanes, variant, acc)


@njit(cache=True)
def _rows_f16(w, lo, hi, K, x, tiled, lanes, out):
    """Rows lo..hi of matmul_f16: one activation row dots the f16 bits directly, more decode each row once."""
    T = x.shape[0]
    acc = np.empty(128, np.float32)
    if T == 1 and not tiled:
        xf = x.reshape(K)
        half = (hi - lo) // 2
        for m in range(lo, lo + half):  # rows m and m + half side by side: two streams (vec_dot_f16_x2)
            out[0, m], out[0, m + half] = vec_dot_f16_x2(w, m * K, (m + half) * K, xf, 0, K, lanes, acc)
        for m in range(lo + 2 * half, hi):
            out[0, m] = vec_dot(w, m * K, xf, 0, K, lanes, VEC_F16, acc)
        return
    row = np.empty(K, np.float32)
    for m in range(lo, hi):
        for k in range(K):
            row[k] = f16_to_f32(w[m * K + k])
        _dot_columns(row, 0, x, m, tiled, lanes, VEC_F16, acc, out)


@njit(cache=True)
def _rows_f32(w, lo, hi, K, x, tiled, lanes, out):
    """Rows lo..hi of matmul_f32."""
    acc = np.empty(64, np.float32)
    for m in range(lo, hi):
        _dot_columns(w, m * K, x, m, tiled, lanes, VEC_F32, acc, out)


@njit(cache=True)
def _rows_bf16(w, lo, hi, K, x, tiled, lanes, dpbf16, out):
    """Rows lo..hi of matmul_bf16 (each row decoded once into f32 scratch)."""
    if dpbf16:
        variant = VEC_BF16_DPBF16
    else:
        variant = VEC_BF16_AVX512 if lanes == 16 else VEC_BF16_AVX2
    row = np.empty(K, np.float32)
    acc = np.empty(64, np.float32)
    for m in range(lo, hi):
        for k in range(K):
            row[k] = bf16_to_f32(w[m * K + k])
        _dot_columns(row, 0, x, m, tiled, lanes, variant, acc, out)


@njit(cache=True, parallel=True)
def matmul_f16(w, M, K, x, tiled, lanes, out):
    """out (T, M) = W·xᵀ for F16 weights w (uint16 bits, M·K), x f32 (T, K)."""
    for blk in prange((M + ROW_BLOCK - 1) // ROW_BLOCK):
        _rows_f16(w, blk * ROW_BLOCK, min(M, (blk + 1) * ROW_BLOCK), K, x, tiled, lanes, out)


@njit(cache=True, parallel=True)
def matmul_f32(w, M, K, x, tiled, lanes, out):
    """out (T, M) = W·xᵀ for F32 weights w (f32, M·K), x f32 (T, K)."""
    for blk in prange((M + ROW_BLOCK - 1) // ROW_BLOCK):
        _rows_f32(w, blk * ROW_BLOCK, min(M, (blk + 1) * ROW_BLOCK), K, x, tiled, lanes, out)


@njit(cache=True, parallel=True)
def matmul_bf16(w, M, K, x, tiled, lanes, dpbf16, out):
    """out (T, M) = W·xᵀ for BF16 weights w (uint16 bits, M·K), x f32 (T, K) (bf16-rounded by the caller);
    dpbf16: the AVX512_BF16 orders (vdpbf16ps; tiled needs K % DPBF16_KN == 0), else the lanes-wide FMA orders."""
    for blk in prange((M + ROW_BLOCK - 1) // ROW_BLOCK):
        _rows_bf16(w, blk * ROW_BLOCK, min(M, (blk + 1) * ROW_BLOCK), K, x, tiled, lanes, dpbf16, out)


@njit(cache=True)
def round_rows_f16(x, out):
    """out = x rounded to f16 (RNE), kept as f32: ggml's F16 vec_dot_type conversion."""
    T, n = x.shape
    for t in range(T):
        for i in range(n):
            out[t, i] = round_f16(x[t, i])


@njit(cache=True)
def round_rows_bf16(x, out):
    """out = x rounded to bf16 (ggml's fp32_to_bf16), kept as f32."""
    T, n = x.shape
    for t in range(T):
        for i in range(n):
            out[t, i] = round_bf16(x[t, i])


@njit(cache=True)
def quantize_q8_0(x, qs, d):
    """ggml-cpu's x86 quantize_row_q8_0 per 32-block: d = fp16(amax/127), q = rint(x·(127/amax)) half-even."""
    T, K = x.shape
    nb = K // Q8_0_BLOCK
    for t in range(T):
        for b in range(nb):
            amax = np.float32(0)
            for j in range(Q8_0_BLOCK):
                amax = max(amax, abs(x[t, b * Q8_0_BLOCK + j]))
            d[t, b] = round_f16(amax / np.float32(127))
            inv = np.float32(127) / amax if amax != np.float32(0) else np.float32(0)
            for j in range(Q8_0_BLOCK):
                qs[t, b * Q8_0_BLOCK + j] = np.int8(np.rint(x[t, b * Q8_0_BLOCK + j] * inv))


@njit(cache=True, inline="always")
def _f16_le(w, o):
    """The f16 stored little-endian at bytes w[o], w[o+1], as f32 (exact)."""
    return f16_to_f32(np.uint16(np.int32(w[o]) | (np.int32(w[o + 1]) << 8)))


@njit(cache=True)
def _rows_q8_0(w, lo, hi, K, qs, d, out):
    """Rows lo..hi of matmul_q8_0."""
    nb = K // Q8_0_BLOCK
    acc = np.empty(8, np.float32)
    for m in range(lo, hi):
        row = m * nb * Q8_0_BYTES
        for t in range(qs.shape[0]):
            for j in range(8):
                acc[j] = np.float32(0)
            for b in range(nb):
                off = row + b * Q8_0_BYTES
                db = _f16_le(w, off) * d[t, b]
                for j in range(8):
                    lane = np.int32(0)
                    for e in range(4 * j, 4 * j + 4):
                        lane += np.int32(np.int8(w[off + 2 + e])) * np.int32(qs[t, b * Q8_0_BLOCK + e])
                    acc[j] = fma32(db, np.float32(lane), acc[j])
            out[t, m] = _r8_pairs_strided(acc, 0)


@njit(cache=True, parallel=True)
def matmul_q8_0(w, M, K, qs, d, out):
    """out (T, M) for Q8_0 weights (raw blocks) and Q8_0 activations: AVX2 vec_dot and tinyBLAS_Q0 share this order.

    8 int32 lanes per block, lane l = Σ of elements 4l..4l+3; acc_l = fma(f32(d_w·d_x), lane, acc_l); 8-lane hsum.
    """
    for blk in prange((M + ROW_BLOCK - 1) // ROW_BLOCK):
        _rows_q8_0(w, blk * ROW_BLOCK, min(M, (blk + 1) * ROW_BLOCK), K, qs, d, out)


@njit(cache=True)
def _rows_q8_0_f32(w, lo, hi, K, x, lanes, out):
    """Rows lo..hi of matmul_q8_0_f32 (each row decoded exactly into f32 scratch)."""
    nb = K // Q8_0_BLOCK
    row = np.empty(K, np.float32)
    acc = np.empty(64, np.float32)
    for m in range(lo, hi):
        for b in range(nb):
            off = (m * nb + b) * Q8_0_BYTES
            dw = _f16_le(w, off)
            for e in range(Q8_0_BLOCK):
                row[b * Q8_0_BLOCK + e] = dw * np.float32(np.int8(w[off + 2 + e]))
        _dot_columns(row, 0, x, m, False, lanes, VEC_F32, acc, out)


@njit(cache=True, parallel=True)
def matmul_q8_0_f32(w, M, K, x, lanes, out):
    """out (T, M) for Q8_0 weights decoded exactly (d·q) against f32 activations, vec order for every T."""
    for blk in prange((M + ROW_BLOCK - 1) // ROW_BLOCK):
        _rows_q8_0_f32(w, blk * ROW_BLOCK, min(M, (blk + 1) * ROW_BLOCK), K, x, lanes, out)


def use_tiled(float_dot: str, T: int, M: int, K: int, kn: int) -> bool:
    """Whether ggml would run this matmul through tinyBLAS: ≥ 2 columns, K % kn == 0 and M % 4 == 0, with kn the
    tinyBLAS K step (the lane count for f32/f16/bf16 FMA, DPBF16_KN for BF16 with AVX512_BF16)."""
    return float_dot == "ggml" and T >= 2 and K % kn == 0 and M % 4 == 0


# -- BitLinear on float weights (the bitnet profile) --------------------------------------------------------------
# BitLinear quantizes its input per token whatever the weights' storage (docs/NUMERICS.md §3). With int8 codes q and
# scale s, out[t, m] = f32(Σ_k f64(W[m, k])·f64(q[t, k])) / s[t]: exact products summed in float64 in k order, rounded
# once to f32, then one f32 division. For ternary weights t·scale the float64 sum is exact (scale · an integer below
# 2^25), so F32/F16/BF16/Q8_0 storage gives bit for bit what the TQ kernels give on the same weights (their order:
# f64(D_run)·f64(d) per run of equal block scales, rounded once, / s).


@njit(cache=True, inline="always")
def bitlinear_dots(row, q, s, m, out):
    """out[t, m] for every token t, from one decoded weight row (K,) and int8 rows q (T, K), scales s (T,)."""
    T, K = q.shape
    for t in range(T):
        acc = np.float64(0)
        for k in range(K):
            acc += np.float64(row[k]) * np.float64(q[t, k])
        out[t, m] = np.float32(acc) / s[t]


@njit(cache=True, parallel=True)
def matmul_float_i8(w, M, K, bf16, q, s, out):
    """out (T, M) for F32 weights (f32), F16 weights (uint16 bits) or BF16 weights (uint16 bits, bf16 = True)
    against per-token int8 activations."""
    for blk in prange((M + ROW_BLOCK - 1) // ROW_BLOCK):
        row = np.empty(K, np.float32)
        for m in range(blk * ROW_BLOCK, min(M, (blk + 1) * ROW_BLOCK)):
            for k in range(K):
                row[k] = bf16_to_f32(w[m * K + k]) if bf16 else load(w, m * K + k)
            bitlinear_dots(row, q, s, m, out)


@njit(cache=True, parallel=True)
def matmul_q8_0_i8(w, M, K, q, s, out):
    """out (T, M) for Q8_0 weights (raw blocks, decoded exactly to d·q) against per-token int8 activations."""
    nb = K // Q8_0_BLOCK
    for blk in prange((M + ROW_BLOCK - 1) // ROW_BLOCK):
        row = np.empty(K, np.float32)
        for m in range(blk * ROW_BLOCK, min(M, (blk + 1) * ROW_BLOCK)):
            for b in range(nb):
                off = (m * nb + b) * Q8_0_BYTES
                dw = _f16_le(w, off)
                for e in range(Q8_0_BLOCK):
                    row[b * Q8_0_BLOCK + e] = dw * np.float32(np.int8(w[off + 2 + e]))
            bitlinear_dots(row, q, s, m, out)
