"""Ternary matrix products read straight from packed TQ2_0 / TQ1_0 / I2_S bytes, with int8 activations.

Every kernel: `matmul_<fmt>_<act>(w, M, K, <activation arrays>, out, isa=DEFAULT_ISA)` writes out[t, m] (f32 (T, M))
for weight row m < M (K elements) of the flat uint8 tensor bytes `w` (a read-only memmap is fine) and token row t < T.
Parallel over output rows (prange); each output is one thread's fixed-order sum, so results do not depend on the
thread count, on T, or on `isa`. Weights are never expanded to float. Unsigned codes u ∈ {0,1,2} stand for u − 1;
code 3 (never written by encoders) computes as +2, like the reference kernels. `check_matmul` validates arguments.

Integer identity: Σ (u−1)·q = Σ u·q − Σ q, with Σ q from Q8_K's bsums (ggml), act_sum (I2_S) or per-call block sums.

ggml profile (`*_q8k`, activations from `quantize_q8_k`), what llama.cpp's x86 AVX2 `vec_dot_tq{1,2}_0_q8_K` computes:
per 256-block b, 8 int32 lanes L_k = Σ_{e: (e mod 32) ∈ [4k,4k+3]} u_e·q_e − (bsums[16b+2k] + bsums[16b+2k+1]);
d_b = f32(d_x[b] · f16→f32(d_w[b])); acc_k = fma(f32(L_k), d_b, acc_k) in block order (one rounding, llvm.fma);
y = ((acc4+acc0) + (acc6+acc2)) + ((acc5+acc1) + (acc7+acc3)) in f32.
I2_S under the ggml profile (`matmul_i2s_q8k`) is that TQ2_0 product on the file llama.cpp loads instead, the TQ2_0
twin (synth.tq2_0_twin): the same codes, every block's d_w = f16(per-tensor scale). K must be a multiple of 256.

bitnet profile (`*_i8`, activations from `quantize_i8_rows`: q, s, act_sum):
- I2_S (x86 128-block layout): sumi = Σ u·q over the row (exact); y = f32(f32(f32(sumi) − f32(act_sum)) / s) · scale,
  f32 ops in this order as bitnet.cpp; the f32 per-tensor scale is read from the tensor bytes at M·K/4. bitnet.cpp's
  AVX2 int16 lane wrap (docs/NUMERICS.md §5.1, adversarial inputs only) is not emulated: sums are exact.
- TQ2_0 / TQ1_0: D_b = Σ_{e in block b} (u_e−1)·q_e (exact); acc = +0f;
  for b in order: acc = f32(acc + f32(f32(D_b)·d_b)) with d_b the block's f16 d; y = f32(acc / s).
  act_sum is unused (per-block Σq is computed once per call).

The ARM I2_S layout (64-element blocks, formats.I2_S_ARM) has its own `matmul_i2s_arm_*` with the same arithmetic:
the integer sums are over the same elements, only the byte order differs; they always take the portable path.

Two paths, chosen by `isa` (isa.ISA_*; `kernel_isa()` names the default):
- SIMD (avx2, avx512vnni): the packed bytes go straight into the dot intrinsics of intrinsics.py; tokens are taken 4
  at a time so that each weight block, decoded once in registers, feeds 4 token rows (then the rest one by one).
- portable: plain numba loops; a weight row is decoded once into planes (below) that every token row reuses.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bitnet_ref.errors import FormatError
from bitnet_ref.formats import I2_S, I2_S_ARM, TQ1_0, TQ2_0
from bitnet_ref.kernels.intrinsics import (
    bits_f32,
    dot_i2s,
    dot_i2s4,
    dot_i2s_q8k,
    dot_i2s_q8k_t4,
    dot_i2s_t4,
    dot_tq1,
    dot_tq1_q8k,
    dot_tq1_q8k_t4,
    dot_tq1_t4,
    dot_tq2,
    dot_tq2_q8k,
    dot_tq2_q8k_t4,
    dot_tq2_t4,
    f16_to_f32,
    f32x8_fma,
    f32x8_zero,
    fma32,
    hsum8,
    hsum_i32,
    i32x8_zero,
)
from bitnet_ref.kernels.isa import ISA_NAMES, ISA_PORTABLE, default_isa
from bitnet_ref.kernels.scalar import round_f16

QK = TQ2_0.BLOCK_ELEMS  # elements per TQ / Q8_K block (256)
TQ2_0_BYTES = TQ2_0.BLOCK_BYTES  # 66: qs u8[64] @0, d f16 @64
TQ1_0_BYTES = TQ1_0.BLOCK_BYTES  # 54: qs u8[48] @0, qh u8[4] @48, d f16 @52
I2S_BLOCK = I2_S.BLOCK_ELEMS  # elements per I2_S (x86) block (128), in I2_S.BLOCK_BYTES = 32 bytes
I2S_ARM_BLOCK = I2_S_ARM.BLOCK_ELEMS  # elements per I2_S ARM block (64), in 16 bytes
FMT_TQ2_0, FMT_TQ1_0, FMT_I2S, FMT_I2S_ARM = 0, 1, 2, 3
ROWS_PER_TASK = 16  # weight rows per parallel task of the portable path (one plane scratch per task)
TOKEN_TILE = 64  # SIMD path: token rows whose activations (64·K bytes) stay in L2 while every weight row passes

DEFAULT_ISA = default_isa()


def kernel_isa() -> str:
    """Name of the instruction sequence the kernels use by default: 'avx512vnni', 'avx2' or 'portable'."""
    return ISA_NAMES[DEFAULT_ISA]


# ---------------------------------------------------------------------------------------------------------------------
# shared scalar helpers


@njit(cache=True)
def _f16_at(w, o):
    """The f16 stored little-endian at w[o], w[o+1], as float32 (exact)."""
    return f16_to_f32(np.int64(w[o]) | (np.int64(w[o + 1]) << 8))


@njit(cache=True)
def _i2s_scale(w, M, K):
    """The f32 per-tensor I2_S scale stored little-endian at byte M·K/4."""
    o = M * K // 4
    bits = np.int64(w[o]) | (np.int64(w[o + 1]) << 8) | (np.int64(w[o + 2]) << 16) | (np.int64(w[o + 3]) << 24)
    return bits_f32(bits)


@njit(cache=True)
def _q8k_block_bytes(fmt):
    """Bytes of one 256-element block in the ggml-profile kernels: TQ2_0 66, TQ1_0 54, I2_S two 32-byte chunks."""
    if fmt == FMT_TQ2_0:
        return TQ2_0_BYTES
    if fmt == FMT_TQ1_0:
        return TQ1_0_BYTES
    return QK // 4


@njit(cache=True)
def _is_i2s(fmt):
    return fmt == FMT_I2S or fmt == FMT_I2S_ARM


@njit(cache=True)
def _twin_d(w, M, K, fmt):
    """I2_S: the d of every block of its TQ2_0 twin, f16(scale) as f32; 0 for the TQ formats (d is in each block)."""
    if _is_i2s(fmt):
        return round_f16(_i2s_scale(w, M, K))
    return np.float32(0.0)


@njit(cache=True)
def _block_d(w, o, bb, fmt, d_twin):
    """The f16 d of the 256-block at byte o (its last two bytes), or the I2_S twin's d."""
    if _is_i2s(fmt):
        return d_twin
    return _f16_at(w, o + bb - 2)


@njit(cache=True)
def _tq_i8_epilogue(sumi_b, qsum_b, d_b, acc):
    """One block of the bitnet TQ epilogue: acc + f32(f32(Σu·q − Σq) · d_b), all float32."""
    return acc + np.float32(sumi_b - qsum_b) * d_b


@njit(cache=True)
def _i2s_epilogue(sumi, act_sum, s, scale):
    """bitnet.cpp's I2_S epilogue in float32: ((float)sumi − (float)act_sum) / s · scale."""
    return (np.float32(sumi) - np.float32(act_sum)) / s * scale


@njit(cache=True, parallel=True)
def _block_sums(q, nb):
    """Σ q over each 256-block of each token row: int32 (T, nb)."""
    out = np.empty((q.shape[0], nb), np.int32)
    for t in prange(q.shape[0]):
        for b in range(nb):
            out[t, b] = q[t, QK * b : QK * (b + 1)].astype(np.int32).sum()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# SIMD path: packed bytes straight into the dot intrinsics (intrinsics.py); a weight row stays in L1 across the token
# rows of a tile, and a tile's activations stay in L2 across the weight rows


@njit(cache=True)
def _zeros4():
    """Four I32x8 zero accumulators."""
    z = i32x8_zero()
    return (z, z, z, z)


@njit(cache=True)
def _q8k_block(w, o, qs, ai, bsums, bi, fmt, isa):
    """ggml lanes L_k of the 256-block at byte o and one Q8_K token (activations at qs[ai], bsums at bsums[bi])."""
    if fmt == FMT_TQ2_0:
        return dot_tq2_q8k(i32x8_zero(), w, o, qs, ai, bsums, bi, isa)
    if fmt == FMT_I2S:
        return dot_i2s_q8k(i32x8_zero(), w, o, qs, ai, bsums, bi, isa)
    return dot_tq1_q8k(i32x8_zero(), w, o, qs, ai, bsums, bi, isa)


@njit(cache=True)
def _q8k_block4(w, o, qs, ai, K, bsums, bi, fmt, isa):
    """_q8k_block for 4 consecutive tokens, the weight block decoded once."""
    if fmt == FMT_TQ2_0:
        return dot_tq2_q8k_t4(_zeros4(), w, o, qs, ai, K, bsums, bi, K // 16, isa)
    if fmt == FMT_I2S:
        return dot_i2s_q8k_t4(_zeros4(), w, o, qs, ai, K, bsums, bi, K // 16, isa)
    return dot_tq1_q8k_t4(_zeros4(), w, o, qs, ai, K, bsums, bi, K // 16, isa)


@njit(cache=True)
def _i8_block(w, o, q, ai, fmt, isa):
    """Σ u·q of the TQ block at byte o and one int8 token at q[ai]."""
    if fmt == FMT_TQ2_0:
        return hsum_i32(dot_tq2(i32x8_zero(), w, o, q, ai, isa))
    return hsum_i32(dot_tq1(i32x8_zero(), w, o, q, ai, isa))


@njit(cache=True)
def _i8_block4(w, o, q, ai, K, fmt, isa):
    """_i8_block for 4 consecutive tokens, the weight block decoded once."""
    if fmt == FMT_TQ2_0:
        v = dot_tq2_t4(_zeros4(), w, o, q, ai, K, isa)
    else:
        v = dot_tq1_t4(_zeros4(), w, o, q, ai, K, isa)
    return hsum_i32(v[0]), hsum_i32(v[1]), hsum_i32(v[2]), hsum_i32(v[3])


@njit(cache=True, inline="always")
def _q8k_rows(w, m, K, qs, dx, bsums, out, fmt, isa, t0, t1, d_twin):
    """Outputs (t0..t1-1, m) of the ggml profile: tokens in groups of 4 share each decoded block, then one by one."""
    nb = K // QK
    bb = _q8k_block_bytes(fmt)
    row = m * nb * bb
    t4 = t1 - (t1 - t0) % 4
    for t in range(t0, t4, 4):
        f0 = f1 = f2 = f3 = f32x8_zero()
        for b in range(nb):
            o = row + bb * b
            v = _q8k_block4(w, o, qs, t * K + QK * b, K, bsums, t * (K // 16) + 16 * b, fmt, isa)
            dw = _block_d(w, o, bb, fmt, d_twin)
            f0 = f32x8_fma(f0, v[0], np.float32(dx[t, b] * dw))
            f1 = f32x8_fma(f1, v[1], np.float32(dx[t + 1, b] * dw))
            f2 = f32x8_fma(f2, v[2], np.float32(dx[t + 2, b] * dw))
            f3 = f32x8_fma(f3, v[3], np.float32(dx[t + 3, b] * dw))
        out[t, m] = hsum8(f0)
        out[t + 1, m] = hsum8(f1)
        out[t + 2, m] = hsum8(f2)
        out[t + 3, m] = hsum8(f3)
    for t in range(t4, t1):
        acc = f32x8_zero()
        for b in range(nb):
            o = row + bb * b
            v = _q8k_block(w, o, qs, t * K + QK * b, bsums, t * (K // 16) + 16 * b, fmt, isa)
            acc = f32x8_fma(acc, v, np.float32(dx[t, b] * _block_d(w, o, bb, fmt, d_twin)))
        out[t, m] = hsum8(acc)


@njit(cache=True, parallel=True)
def _simd_q8k(w, M, K, qs, dx, bsums, out, fmt, isa):
    """ggml profile on the SIMD path, token tile by token tile."""
    T = qs.shape[0]
    d_twin = _twin_d(w, M, K, fmt)
    for t0 in range(0, T, TOKEN_TILE):
        for m in prange(M):
            _q8k_rows(w, m, K, qs, dx, bsums, out, fmt, isa, t0, min(T, t0 + TOKEN_TILE), d_twin)


@njit(cache=True, inline="always")
def _tq_i8_rows(w, m, K, q, s, qsum, out, fmt, isa, t0, t1):
    """Outputs (t0..t1-1, m) of the bitnet profile, TQ formats: tokens in groups of 4, then one by one."""
    nb = K // QK
    bb = TQ2_0_BYTES if fmt == FMT_TQ2_0 else TQ1_0_BYTES
    row = m * nb * bb
    t4 = t1 - (t1 - t0) % 4
    for t in range(t0, t4, 4):
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for b in range(nb):
            o = row + bb * b
            s0, s1, s2, s3 = _i8_block4(w, o, q, t * K + QK * b, K, fmt, isa)
            dw = _f16_at(w, o + bb - 2)
            a0 = _tq_i8_epilogue(s0, qsum[t, b], dw, a0)
            a1 = _tq_i8_epilogue(s1, qsum[t + 1, b], dw, a1)
            a2 = _tq_i8_epilogue(s2, qsum[t + 2, b], dw, a2)
            a3 = _tq_i8_epilogue(s3, qsum[t + 3, b], dw, a3)
        out[t, m] = a0 / s[t]
        out[t + 1, m] = a1 / s[t + 1]
        out[t + 2, m] = a2 / s[t + 2]
        out[t + 3, m] = a3 / s[t + 3]
    for t in range(t4, t1):
        acc = np.float32(0.0)
        for b in range(nb):
            o = row + bb * b
            acc = _tq_i8_epilogue(_i8_block(w, o, q, t * K + QK * b, fmt, isa), qsum[t, b], _f16_at(w, o + bb - 2), acc)
        out[t, m] = acc / s[t]


@njit(cache=True, parallel=True)
def _simd_tq_i8(w, M, K, q, s, qsum, out, fmt, isa):
    """bitnet profile, TQ formats, on the SIMD path, token tile by token tile."""
    T = q.shape[0]
    for t0 in range(0, T, TOKEN_TILE):
        for m in prange(M):
            _tq_i8_rows(w, m, K, q, s, qsum, out, fmt, isa, t0, min(T, t0 + TOKEN_TILE))


@njit(cache=True, inline="always")
def _i2s_rows(w, m, K, q, s, act_sum, out, isa, t0, t1, scale):
    """Outputs (t0..t1-1, m) of the bitnet profile, I2_S: tokens in groups of 4 share each decoded chunk, then one
    by one (four 32-byte chunks per intrinsic call)."""
    nc = K // I2S_BLOCK
    row = m * (K // 4)
    t4 = t1 - (t1 - t0) % 4
    for t in range(t0, t4, 4):
        v = _zeros4()
        for c in range(nc):
            v = dot_i2s_t4(v, w, row + 32 * c, q, t * K + I2S_BLOCK * c, K, isa)
        for n in range(4):
            out[t + n, m] = _i2s_epilogue(hsum_i32(v[n]), act_sum[t + n], s[t + n], scale)
    for t in range(t4, t1):
        v1 = i32x8_zero()
        for c in range(0, nc - 3, 4):
            v1 = dot_i2s4(v1, w, row + 32 * c, q, t * K + I2S_BLOCK * c, isa)
        for c in range(nc - nc % 4, nc):
            v1 = dot_i2s(v1, w, row + 32 * c, q, t * K + I2S_BLOCK * c, isa)
        out[t, m] = _i2s_epilogue(hsum_i32(v1), act_sum[t], s[t], scale)


@njit(cache=True, parallel=True)
def _simd_i2s(w, M, K, q, s, act_sum, out, isa):
    """bitnet profile, I2_S, on the SIMD path, token tile by token tile."""
    T = q.shape[0]
    scale = _i2s_scale(w, M, K)
    for t0 in range(0, T, TOKEN_TILE):
        for m in prange(M):
            _i2s_rows(w, m, K, q, s, act_sum, out, isa, t0, min(T, t0 + TOKEN_TILE), scale)


# ---------------------------------------------------------------------------------------------------------------------
# portable path: plain numba loops. A weight row is decoded once into "planes" in its packed byte order,
# planes[f, i] = field f (2-bit code, or TQ1_0 trit) of row byte i, and multiplied with activation planes permuted
# into the same order once per call (zeros where a byte field holds no element: the f16 d bytes, TQ1_0 qh trit 4).
# Contiguous loops over slices (indices from 0) let LLVM vectorize; numba's negative-index wraparound blocks it.


@njit(cache=True)
def _layout(fmt):
    """(fields per byte, bytes per block, elements per block) of a packed format."""
    if fmt == FMT_TQ2_0:
        return 4, TQ2_0_BYTES, QK
    if fmt == FMT_TQ1_0:
        return 5, TQ1_0_BYTES, QK
    if fmt == FMT_I2S_ARM:
        return 4, 16, I2S_ARM_BLOCK
    return 4, 32, I2S_BLOCK


@njit(cache=True)
def _field_elements(fmt):
    """E (fields, block bytes): the block element held by field f of block byte j, or -1 (docs/FORMATS.md §3.1, §4)."""
    F, bb, _ = _layout(fmt)
    E = np.full((F, bb), -1, np.int64)
    for f in range(F):
        for j in range(bb):
            if fmt == FMT_TQ2_0 and j < 64:
                E[f, j] = 128 * (j // 32) + 32 * f + j % 32
            elif fmt == FMT_TQ1_0 and j < 32:
                E[f, j] = 32 * f + j
            elif fmt == FMT_TQ1_0 and j < 48:
                E[f, j] = 160 + 16 * f + j - 32
            elif fmt == FMT_TQ1_0 and j < 52 and f < 4:
                E[f, j] = 240 + 4 * f + j - 48
            elif fmt == FMT_I2S:
                E[f, j] = 32 * f + j
            elif fmt == FMT_I2S_ARM:
                E[f, j] = 16 * f + j
    return E


@njit(cache=True)
def _act_planes(a, fmt, nblk, E):
    """Activation planes (T, fields, nblk·block bytes) int8 in the packed byte order, 0 where E is -1."""
    F, bb, be = _layout(fmt)
    ap = np.zeros((a.shape[0], F, nblk * bb), np.int8)
    for t in range(a.shape[0]):
        for f in range(F):
            for b in range(nblk):
                for j in range(bb):
                    if E[f, j] >= 0:
                        ap[t, f, bb * b + j] = a[t, be * b + E[f, j]]
    return ap


@njit(cache=True)
def _weight_planes(w, row, fmt, planes):
    """planes[f, i] = field f of w[row + i]: 2-bit codes (TQ2_0 low pair first, I2_S high pair first) or trits."""
    nbytes = planes.shape[1]
    src = w[row : row + nbytes]
    if fmt == FMT_TQ1_0:
        pw = 1
        for n in range(5):  # trit n: ((byte·3^n mod 256)·3) >> 8
            dst = planes[n]
            for i in range(nbytes):
                dst[i] = (((np.int32(src[i]) * pw) & 255) * 3) >> 8
            pw *= 3
        return
    for f in range(4):
        sh = 2 * f if fmt == FMT_TQ2_0 else 6 - 2 * f
        dst = planes[f]
        for i in range(nbytes):
            dst[i] = (src[i] >> sh) & 3


@njit(cache=True)
def _plane_dot(planes, ap, lo, hi):
    """Σ_f Σ_{lo ≤ i < hi} planes[f, i]·ap[f, i], exact."""
    s = np.int32(0)  # int32 accumulation (exact: |Σ| < 3·128·5·K) lets LLVM use vpmaddwd
    for f in range(planes.shape[0]):
        u = planes[f, lo:hi]
        x = ap[f, lo:hi]
        for i in range(hi - lo):
            s = np.int32(s + np.int32(u[i]) * np.int32(x[i]))
    return s


@njit(cache=True)
def _dot4(u, x, i):
    """Σ u[i+j]·x[i+j] for j < 4."""
    s = np.int32(0)
    for j in range(4):
        s = np.int32(s + np.int32(u[i + j]) * np.int32(x[i + j]))
    return s


@njit(cache=True)
def _plane_lanes(planes, ap, lo, fmt, lanes):
    """lanes[k] += Σ planes·ap over the elements e of the 256-block at plane byte lo with (e mod 32) in [4k, 4k+3]."""
    if fmt == FMT_I2S_ARM:  # byte j of chunk c (16 bytes), field f: element 64c + 16f + j, e mod 32 = 16(f mod 2) + j
        for f in range(4):
            u = planes[f, lo : lo + 64]
            x = ap[f, lo : lo + 64]
            for c in range(4):
                for kk in range(4):
                    lanes[4 * (f & 1) + kk] += _dot4(u, x, 16 * c + 4 * kk)
        return
    if fmt != FMT_TQ1_0:  # TQ2_0 qs byte j, I2_S byte j of two chunks: elements with e mod 32 = j mod 32
        for f in range(4):
            u = planes[f, lo : lo + 64]
            x = ap[f, lo : lo + 64]
            for k in range(8):
                lanes[k] += _dot4(u, x, 4 * k) + _dot4(u, x, 32 + 4 * k)
        return
    for n in range(5):  # TQ1_0, trit n
        u = planes[n, lo : lo + 52]
        x = ap[n, lo : lo + 52]
        for k in range(8):  # qs[m], m < 32: element 32n + m
            lanes[k] += _dot4(u, x, 4 * k)
        for k in range(4):  # qs[32 + m], m < 16: element 160 + 16n + m, e mod 32 = 16·(n mod 2) + m
            lanes[4 * (n & 1) + k] += _dot4(u, x, 32 + 4 * k)
        if n < 4:  # qh[j]: element 240 + 4n + j, e mod 32 = 16 + 4n + j
            lanes[4 + n] += _dot4(u, x, 48)


@njit(cache=True, parallel=True)
def _portable_q8k(w, M, K, qs, dx, bsums, out, fmt):
    """ggml profile on the portable path."""
    F, _, be = _layout(fmt)
    nb = K // QK
    bb = _q8k_block_bytes(fmt)
    d_twin = _twin_d(w, M, K, fmt)
    ap = _act_planes(qs, fmt, K // be, _field_elements(fmt))
    for task in prange((M + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        planes = np.empty((F, nb * bb), np.uint8)
        lanes = np.empty(8, np.int32)
        facc = np.empty(8, np.float32)
        for m in range(task * ROWS_PER_TASK, min(M, (task + 1) * ROWS_PER_TASK)):
            row = m * nb * bb
            _weight_planes(w, row, fmt, planes)
            for t in range(qs.shape[0]):
                facc[:] = 0
                for b in range(nb):
                    for k in range(8):
                        lanes[k] = -(np.int32(bsums[t, 16 * b + 2 * k]) + np.int32(bsums[t, 16 * b + 2 * k + 1]))
                    _plane_lanes(planes, ap[t], bb * b, fmt, lanes)
                    db = np.float32(dx[t, b] * _block_d(w, row + bb * b, bb, fmt, d_twin))
                    for k in range(8):
                        facc[k] = fma32(np.float32(lanes[k]), db, facc[k])
                out[t, m] = ((facc[4] + facc[0]) + (facc[6] + facc[2])) + ((facc[5] + facc[1]) + (facc[7] + facc[3]))


@njit(cache=True, parallel=True)
def _portable_i8(w, M, K, q, s, act_sum, qsum, out, fmt):
    """bitnet profile on the portable path (qsum: per-block Σq for the TQ formats)."""
    F, bb, be = _layout(fmt)
    nblk = K // be
    ap = _act_planes(q, fmt, nblk, _field_elements(fmt))
    scale = _i2s_scale(w, M, K) if _is_i2s(fmt) else np.float32(0.0)
    for task in prange((M + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        planes = np.empty((F, nblk * bb), np.uint8)
        for m in range(task * ROWS_PER_TASK, min(M, (task + 1) * ROWS_PER_TASK)):
            row = m * nblk * bb
            _weight_planes(w, row, fmt, planes)
            for t in range(q.shape[0]):
                if _is_i2s(fmt):
                    out[t, m] = _i2s_epilogue(_plane_dot(planes, ap[t], 0, nblk * bb), act_sum[t], s[t], scale)
                    continue
                acc = np.float32(0.0)
                for b in range(nblk):
                    sumi = _plane_dot(planes, ap[t], bb * b, bb * (b + 1))
                    acc = _tq_i8_epilogue(sumi, qsum[t, b], _f16_at(w, row + bb * b + bb - 2), acc)
                out[t, m] = acc / s[t]


# ---------------------------------------------------------------------------------------------------------------------
# public kernels: one per (format, activation kind), each choosing the portable or the SIMD path by `isa`


@njit(cache=True)
def _q8k(w, M, K, qs, d, bsums, out, fmt, isa):
    if isa == ISA_PORTABLE:
        _portable_q8k(w, M, K, qs, d, bsums, out, fmt)
    else:
        _simd_q8k(w, M, K, qs, d, bsums, out, fmt, isa)


@njit(cache=True)
def _tq_i8(w, M, K, q, s, act_sum, out, fmt, isa):
    qsum = _block_sums(q, K // QK)
    if isa == ISA_PORTABLE:
        _portable_i8(w, M, K, q, s, act_sum, qsum, out, fmt)
    else:
        _simd_tq_i8(w, M, K, q, s, qsum, out, fmt, isa)


@njit(cache=True)
def matmul_tq2_0_q8k(w, M, K, qs, d, bsums, out, isa=DEFAULT_ISA):
    """out[t, m] = ggml x86 vec_dot_tq2_0_q8_K(TQ2_0 row m, Q8_K row t); qs i8 (T,K), d f32 (T,K/256), bsums i16."""
    _q8k(w, M, K, qs, d, bsums, out, FMT_TQ2_0, isa)


@njit(cache=True)
def matmul_tq1_0_q8k(w, M, K, qs, d, bsums, out, isa=DEFAULT_ISA):
    """out[t, m] = ggml x86 vec_dot_tq1_0_q8_K of TQ1_0 row m with Q8_K row t (arrays as matmul_tq2_0_q8k)."""
    _q8k(w, M, K, qs, d, bsums, out, FMT_TQ1_0, isa)


@njit(cache=True)
def matmul_i2s_q8k(w, M, K, qs, d, bsums, out, isa=DEFAULT_ISA):
    """out[t, m] = ggml x86 vec_dot_tq2_0_q8_K of the TQ2_0 twin of I2_S row m with Q8_K row t (arrays as tq2_0)."""
    _q8k(w, M, K, qs, d, bsums, out, FMT_I2S, isa)


@njit(cache=True)
def matmul_i2s_arm_q8k(w, M, K, qs, d, bsums, out, isa=DEFAULT_ISA):
    """matmul_i2s_q8k for the ARM 64-block layout (portable path whatever `isa`: a checking layout, not a fast one)."""
    _portable_q8k(w, M, K, qs, d, bsums, out, FMT_I2S_ARM)


@njit(cache=True)
def matmul_tq2_0_i8(w, M, K, q, s, act_sum, out, isa=DEFAULT_ISA):
    """out[t, m] = Σ_b f32(d_b)·D_b / s[t] (f32, block order), TQ2_0 row m, int8 row t: q i8 (T,K), s f32 (T,)."""
    _tq_i8(w, M, K, q, s, act_sum, out, FMT_TQ2_0, isa)


@njit(cache=True)
def matmul_tq1_0_i8(w, M, K, q, s, act_sum, out, isa=DEFAULT_ISA):
    """out[t, m] = Σ_b f32(d_b)·D_b / s[t] (f32, block order) for TQ1_0 row m and int8 row t (arrays as tq2_0)."""
    _tq_i8(w, M, K, q, s, act_sum, out, FMT_TQ1_0, isa)


@njit(cache=True)
def matmul_i2s_i8(w, M, K, q, s, act_sum, out, isa=DEFAULT_ISA):
    """out[t, m] = ((f32)Σu·q − (f32)act_sum[t]) / s[t] · scale for I2_S (x86 128-block) row m and int8 row t."""
    if isa == ISA_PORTABLE:
        _portable_i8(w, M, K, q, s, act_sum, np.empty((0, 0), np.int32), out, FMT_I2S)
    else:
        _simd_i2s(w, M, K, q, s, act_sum, out, isa)


@njit(cache=True)
def matmul_i2s_arm_i8(w, M, K, q, s, act_sum, out, isa=DEFAULT_ISA):
    """matmul_i2s_i8 for the ARM 64-block layout (portable path whatever `isa`)."""
    _portable_i8(w, M, K, q, s, act_sum, np.empty((0, 0), np.int32), out, FMT_I2S_ARM)


# ---------------------------------------------------------------------------------------------------------------------
# argument checks (Python; the engine runs them once per weight at load time)

FORMATS = (TQ2_0.NAME, TQ1_0.NAME, I2_S.NAME, I2_S_ARM.NAME)  # the `fmt` names check_weight / check_matmul take
MAX_K = 65536  # keeps every int->f32 conversion of the epilogues exact


def weight_nbytes(fmt: str, M: int, K: int) -> int:
    """Bytes the kernels read from a `fmt` tensor of M rows of K elements."""
    if fmt == "tq2_0":
        return M * (K // QK) * TQ2_0_BYTES
    if fmt == "tq1_0":
        return M * (K // QK) * TQ1_0_BYTES
    return M * K // 4 + 4


def _check_array(what: str, a: np.ndarray, dtype, shape: tuple[int, ...]) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous:
        got = (type(a).__name__, getattr(a, "dtype", None), getattr(a, "shape", None))
        raise FormatError(f"{what}: expected a C-contiguous {np.dtype(dtype)} array of shape {shape}, got {got}")


def check_weight(fmt: str, w: np.ndarray, M: int, K: int, act: str = "i8") -> None:
    """Raise FormatError unless `w` holds an M x K `fmt` tensor that matmul_<fmt>_<act> can read (size, K a multiple
    of the weight block and, for Q8_K activations, of 256)."""
    if fmt not in FORMATS:
        raise FormatError(f"ternary kernel: unknown format {fmt!r}; expected one of {FORMATS}")
    block = {I2_S.NAME: I2S_BLOCK, I2_S_ARM.NAME: I2S_ARM_BLOCK}.get(fmt, QK) if act != "q8k" else QK
    if M < 1 or K < block or K % block or K > MAX_K:
        raise FormatError(f"{fmt}: K = {K}, M = {M}; K must be a positive multiple of {block}, at most {MAX_K}")
    need = weight_nbytes(fmt, M, K)
    if not isinstance(w, np.ndarray) or w.dtype != np.uint8 or w.ndim != 1 or not w.flags.c_contiguous:
        raise FormatError(f"{fmt}: weight bytes must be a flat C-contiguous uint8 array, got {getattr(w, 'dtype', w)}")
    if w.size < need:
        raise FormatError(f"{fmt}: weight has {w.size} bytes; {M} x {K} needs {need}")


def check_matmul(fmt: str, act: str, w: np.ndarray, M: int, K: int, *arrays: np.ndarray) -> None:
    """Raise FormatError unless (w, M, K, *activation arrays, out) fit matmul_<fmt>_<act> ('q8k' or 'i8')."""
    check_weight(fmt, w, M, K, act)
    *acts, out = arrays
    T = acts[0].shape[0] if isinstance(acts[0], np.ndarray) and acts[0].ndim == 2 else -1
    if act == "q8k" and len(acts) == 3:
        specs = (("qs", np.int8, (T, K)), ("d", np.float32, (T, K // QK)), ("bsums", np.int16, (T, K // 16)))
    elif act == "i8" and len(acts) == 3:
        specs = (("q", np.int8, (T, K)), ("s", np.float32, (T,)), ("act_sum", np.int32, (T,)))
    else:
        raise FormatError(f"no kernel matmul_{fmt}_{act} taking {len(acts)} activation arrays")
    if T < 1:
        raise FormatError(f"matmul_{fmt}_{act}: activations must be 2-D with at least one token row")
    for (name, dtype, shape), a in zip(specs, acts, strict=True):
        _check_array(f"matmul_{fmt}_{act} {name}", a, dtype, shape)
    _check_array(f"matmul_{fmt}_{act} out", out, np.float32, (T, M))
