"""Ternary matrix products read straight from packed TQ2_0 / TQ1_0 / I2_S bytes, with int8 activations.

Every kernel: `matmul_<fmt>_<act>(w, M, K, <activation arrays>, out, isa=DEFAULT_ISA)` (the TQ `*_i8` ones also take
`runs=None`) writes out[t, m] (f32 (T, M)) for weight row m < M (K elements) of the flat uint8 tensor bytes `w` (a
read-only memmap is fine) and token row t < T.
Parallel over output rows (prange); each output is one thread's fixed-order sum, so results do not depend on the
thread count, on T, or on `isa`. Weights are never expanded to float. Unsigned codes u ∈ {0,1,2} stand for u − 1;
code 3 (never written by encoders) computes as +2, like the reference kernels. `check_matmul` validates arguments.

Integer identity: Σ (u−1)·q = Σ u·q − Σ q, with Σ q from Q8_K's bsums (ggml), act_sum (bitnet: Σq of the token row)
or per-call block prefix sums (TQ rows of several runs).

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
- TQ2_0 / TQ1_0: a row's blocks form runs of consecutive blocks with the same f16 d bits; D_run = Σ (u_e−1)·q_e over
  the run (exact); acc = Σ_runs f64(D_run)·f64(d_run) in float64, runs in block order; y = f32(f32(acc) / s). A row
  of one run (every converted BitNet tensor: one d) is y = f32(f64(Σu·q − act_sum)·d) / s, the whole row in integer
  lanes; rows of several runs (per-block d) take the slower run-by-run loop. docs/NUMERICS.md §3 gives the reasons.

The ARM I2_S layout (64-element blocks, formats.I2_S_ARM) has its own `matmul_i2s_arm_*` with the same arithmetic:
the integer sums are over the same elements, only the byte order differs; they always take the portable path.

Two paths, chosen by `isa` (isa.ISA_*; `kernel_isa()` names the default):
- SIMD (avx2, avx512vnni): the packed bytes go straight into the intrinsics of intrinsics.py. ggml profile: tokens 4
  at a time, so that each weight block, decoded once in registers, feeds 4 token rows (then the rest one by one).
  bitnet profile: a work item is the row pair (p, p + ⌈M/2⌉) (_row_pair), in tiles of 2 weight rows × 4 tokens (tile_*
  intrinsics: each activation vector loaded once for both rows, integer lanes kept across blocks), then 2 rows × 1
  token, and a single last row where M is odd. Which TQ rows are one run comes from `runs` (one_run_rows, computed
  once when the engine loads the tensor). Single tokens (decode) stream every row once from memory, two distant rows
  side by side, and prefetch each stream PREFETCH_ROWS rows ahead as they go.
- portable: plain numba loops; a weight row is decoded once into planes (below) that every token row reuses.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bitnet_ref.errors import FormatError
from bitnet_ref.formats import I2_S, I2_S_ARM, TQ1_0, TQ2_0
from bitnet_ref.kernels.intrinsics import (
    TILE_BLOCKS_TQ,
    TILE_CHUNKS_I2S,
    TILE_PAIRS_TQ2,
    TILE_QUADS_I2S,
    bits_f32,
    dot_i2s_q8k,
    dot_i2s_q8k_t4,
    dot_tq1_q8k,
    dot_tq1_q8k_t4,
    dot_tq2_q8k,
    dot_tq2_q8k_t4,
    f16_to_f32,
    f32x8_fma,
    f32x8_zero,
    fma32,
    hsum8,
    hsum_i32,
    i32x8_zero,
    prefetch,
    tile_i2s,
    tile_i2s4,
    tile_tq1,
    tile_tq2,
    tile_tq2x2,
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
PREFETCH_ROWS = 8  # SIMD path, single tokens: the row this far ahead (in each stream) is prefetched while one is summed

DEFAULT_ISA = default_isa()


def kernel_isa() -> str:
    """Name of the instruction sequence the kernels use by default: 'avx512vnni', 'avx2' or 'portable'."""
    return ISA_NAMES[DEFAULT_ISA]


# ---------------------------------------------------------------------------------------------------------------------
# shared scalar helpers


@njit(cache=True, inline="always")
def _d_bits(w, o):
    """The f16 bits stored little-endian at w[o], w[o+1]."""
    return np.int64(w[o]) | (np.int64(w[o + 1]) << 8)


@njit(cache=True)
def _f16_at(w, o):
    """The f16 stored little-endian at w[o], w[o+1], as float32 (exact)."""
    return f16_to_f32(_d_bits(w, o))


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
def _i2s_epilogue(sumi, act_sum, s, scale):
    """bitnet.cpp's I2_S epilogue in float32: ((float)sumi − (float)act_sum) / s · scale."""
    return (np.float32(sumi) - np.float32(act_sum)) / s * scale


# ---------------------------------------------------------------------------------------------------------------------
# SIMD path: packed bytes straight into the dot intrinsics (intrinsics.py); a weight row stays in L1 across the token
# rows of a tile, and a tile's activations stay in L2 across the weight rows


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
        return dot_tq2_q8k_t4(_z4(), w, o, qs, ai, K, bsums, bi, K // 16, isa)
    if fmt == FMT_I2S:
        return dot_i2s_q8k_t4(_z4(), w, o, qs, ai, K, bsums, bi, K // 16, isa)
    return dot_tq1_q8k_t4(_z4(), w, o, qs, ai, K, bsums, bi, K // 16, isa)


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
    ahead = PREFETCH_ROWS * nb * bb  # single tokens prefetch the row this far on (rows a later item reads)
    for t in range(t4, t1):
        acc = f32x8_zero()
        for b in range(nb):
            o = row + bb * b
            prefetch(w, o + ahead)
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
def _tile(acc, w, wis, a, ai, astride, j0, nblocks, ahead, fmt, isa):
    """The fmt's tile intrinsic (intrinsics.tile_*): acc + integer lanes of blocks j0.. of rows wis and tokens a[ai]."""
    if fmt == FMT_TQ2_0:
        return tile_tq2(acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa)
    if fmt == FMT_TQ1_0:
        return tile_tq1(acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa)
    return tile_i2s(acc, w, wis, a, ai, astride, j0, nblocks, ahead, isa)


@njit(cache=True, inline="always")
def _tile_sum(acc, w, wis, a, ai, astride, b0, b1, fmt, isa, ahead):
    """acc + integer lanes of blocks b0..b1-1, in calls of as many blocks as the int16 partial sums allow. I2_S rows
    are always summed whole (b0 = 0): groups of four chunks by tile_i2s4, then the chunks left by tile_i2s; two rows
    of a single token go chunk by chunk (in groups of four they ran 10-15 % slower). TQ2_0 from block 0 and several
    tokens (acc holds more than one per row) go in pairs of blocks by tile_tq2x2, then the block left by tile_tq2;
    single tokens were no faster in pairs (docs/PERFORMANCE.md §9). Single tokens also prefetch the bytes `ahead`
    further on (the rows a later work item reads)."""
    if _is_i2s(fmt) and not (len(wis) == 2 and len(acc) == 2):
        n4 = b1 // 4
        for j in range(0, n4, TILE_QUADS_I2S):
            acc = tile_i2s4(acc, w, wis, a, ai, astride, j, min(TILE_QUADS_I2S, n4 - j), ahead, isa)
        b0 = 4 * n4
    elif fmt == FMT_TQ2_0 and b0 == 0 and len(acc) > len(wis):
        n2 = b1 // 2
        for j in range(0, n2, TILE_PAIRS_TQ2):
            acc = tile_tq2x2(acc, w, wis, a, ai, astride, j, min(TILE_PAIRS_TQ2, n2 - j), ahead, isa)
        b0 = 2 * n2
    step = TILE_BLOCKS_TQ if not _is_i2s(fmt) else TILE_CHUNKS_I2S
    for j in range(b0, b1, step):
        acc = _tile(acc, w, wis, a, ai, astride, j, min(step, b1 - j), ahead, fmt, isa)
    return acc


@njit(cache=True)
def _z1():
    return (i32x8_zero(),)


@njit(cache=True)
def _z2():
    z = i32x8_zero()
    return (z, z)


@njit(cache=True)
def _z4():
    z = i32x8_zero()
    return (z, z, z, z)


@njit(cache=True)
def _z8():
    z = i32x8_zero()
    return (z, z, z, z, z, z, z, z)


@njit(cache=True)
def _one_run_rows(w, M, K, fmt):
    """runs[m] = 1 where every block of TQ row m has the same d bits (one run), else 0 (uint8, (M,))."""
    nb = K // QK
    bb = TQ2_0_BYTES if fmt == FMT_TQ2_0 else TQ1_0_BYTES
    runs = np.ones(M, np.uint8)
    for m in range(M):
        row = m * nb * bb
        d0 = _d_bits(w, row + bb - 2)
        for b in range(1, nb):
            if _d_bits(w, row + bb * b + bb - 2) != d0:
                runs[m] = 0
                break
    return runs


@njit(cache=True, inline="always")
def _tq_out(acc, w, wis, bb, t, ntok, ms, s, act_sum, out):
    """Outputs (t.., ms[r]) of one-run TQ rows at byte offsets wis: y = f32(f64(Σu·q − Σq) · f64(d)) / s (the product
    is exact in f64)."""
    for r in range(len(wis)):
        d = np.float64(_f16_at(w, wis[r] + bb - 2))
        for n in range(ntok):
            D = hsum_i32(acc[r * ntok + n]) - act_sum[t + n]
            out[t + n, ms[r]] = np.float32(np.float64(D) * d) / s[t + n]


@njit(cache=True, inline="always")
def _tq_one_run(w, wis, ms, nb, bb, K, q, s, act_sum, out, fmt, isa, t0, t1, quad, single, ahead):
    """Rows at byte offsets wis (each of one run; outputs ms) × tokens t0..t1-1: 4 tokens per tile call (zero
    accumulators `quad`), then single tokens (zero accumulators `single`: all rows of wis in one tile, so that their
    streams are read side by side), which prefetch `ahead` bytes on."""
    t4 = t1 - (t1 - t0) % 4
    for t in range(t0, t4, 4):
        _tq_out(_tile_sum(quad, w, wis, q, t * K, K, 0, nb, fmt, isa, ahead), w, wis, bb, t, 4, ms, s, act_sum, out)
    for t in range(t4, t1):
        _tq_out(_tile_sum(single, w, wis, q, t * K, K, 0, nb, fmt, isa, ahead), w, wis, bb, t, 1, ms, s, act_sum, out)


@njit(cache=True)
def _tq_runs(w, row, m, nb, bb, K, q, s, qcum, out, fmt, isa, t0, t1, ahead):
    """Outputs (t0..t1-1, m) of a row of several runs: Σ over its runs of equal d bits, in block order, of
    f64(D_run)·f64(d_run), D_run = Σu·q − Σq over the run; y = f32(Σ) / s. Tokens 4 per tile call, then one by one."""
    acc = np.empty(4, np.float64)
    t4 = t1 - (t1 - t0) % 4
    t = t0
    while t < t1:
        ntok = 4 if t < t4 else 1
        acc[:] = 0.0
        b0 = 0
        while b0 < nb:
            bits = _d_bits(w, row + bb * b0 + bb - 2)
            b1 = b0 + 1
            while b1 < nb and _d_bits(w, row + bb * b1 + bb - 2) == bits:
                b1 += 1
            d = np.float64(f16_to_f32(bits))
            if ntok == 4:
                v = _tile_sum(_z4(), w, (row,), q, t * K, K, b0, b1, fmt, isa, ahead)
                for n in range(4):
                    acc[n] += np.float64(hsum_i32(v[n]) - (qcum[t + n, b1] - qcum[t + n, b0])) * d
            else:
                acc[0] += (
                    np.float64(
                        hsum_i32(_tile_sum(_z1(), w, (row,), q, t * K, K, b0, b1, fmt, isa, ahead)[0])
                        - (qcum[t, b1] - qcum[t, b0])
                    )
                    * d
                )
            b0 = b1
        for n in range(ntok):
            out[t + n, m] = np.float32(acc[n]) / s[t + n]
        t += ntok


@njit(cache=True, inline="always")
def _tq_i8_rows(w, m, m2, K, q, s, act_sum, qcum, out, fmt, isa, t0, t1, runs):
    """Outputs (t0..t1-1, m) and, where m2 ≥ 0, (t0..t1-1, m2) of the bitnet profile, TQ formats: rows of one run
    (runs[m] = 1) by the tile intrinsic (2 rows × 4 tokens, then 2 rows × 1 token, where both are), other rows run by
    run. Single tokens prefetch each row's stream PREFETCH_ROWS rows on."""
    nb = K // QK
    bb = TQ2_0_BYTES if fmt == FMT_TQ2_0 else TQ1_0_BYTES
    rb = nb * bb
    ahead = PREFETCH_ROWS * rb
    if m2 >= 0 and runs[m] != 0 and runs[m2] != 0:
        _tq_one_run(w, (m * rb, m2 * rb), (m, m2), nb, bb, K, q, s, act_sum, out, fmt, isa, t0, t1, _z8(), _z2(), ahead)
        return
    for r in (m, m2):
        if r < 0:
            continue
        if runs[r] != 0:
            _tq_one_run(w, (r * rb,), (r,), nb, bb, K, q, s, act_sum, out, fmt, isa, t0, t1, _z4(), _z1(), ahead)
        else:
            _tq_runs(w, r * rb, r, nb, bb, K, q, s, qcum, out, fmt, isa, t0, t1, ahead)


@njit(cache=True)
def _block_prefix(q, nb):
    """qcum[t, b] = Σ q[t, :256·b] (int64, (T, nb + 1)): Σq over any block range of a token row."""
    qcum = np.zeros((q.shape[0], nb + 1), np.int64)
    for t in range(q.shape[0]):
        for b in range(nb):
            part = np.int64(0)
            for e in range(QK * b, QK * (b + 1)):
                part += q[t, e]
            qcum[t, b + 1] = qcum[t, b] + part
    return qcum


@njit(cache=True, inline="always")
def _row_pair(p, M):
    """The rows of work item p < H = ceil(M/2) in the bitnet SIMD paths: p and p + H, or p and -1 where M is odd and p
    the last. The two rows lie half the matrix apart, so a single token streams two distant parts of memory at once
    (faster than one: docs/PERFORMANCE.md §9)."""
    m2 = np.int64(p) + (M + 1) // 2
    return np.int64(p), (m2 if m2 < M else np.int64(-1))


@njit(cache=True, parallel=True)
def _simd_tq_i8(w, M, K, q, s, act_sum, out, fmt, isa, runs, qcum):
    """bitnet profile, TQ formats, on the SIMD path: token tile by token tile, row pairs (_row_pair) in parallel; qcum
    is _block_prefix of q where a row has several runs. The caller computes it: an array expression in a parallel
    function is a parallel region of its own."""
    T = q.shape[0]
    for t0 in range(0, T, TOKEN_TILE):
        for p in prange((M + 1) // 2):
            t1 = min(T, t0 + TOKEN_TILE)
            m, m2 = _row_pair(p, M)
            _tq_i8_rows(w, m, m2, K, q, s, act_sum, qcum, out, fmt, isa, t0, t1, runs)


@njit(cache=True, inline="always")
def _i2s_out(acc, ms, t, ntok, s, act_sum, scale, out):
    """bitnet.cpp's I2_S epilogue for rows ms and tokens t.. of a tile."""
    for r in range(len(ms)):
        for n in range(ntok):
            out[t + n, ms[r]] = _i2s_epilogue(hsum_i32(acc[r * ntok + n]), act_sum[t + n], s[t + n], scale)


@njit(cache=True, inline="always")
def _i2s_tiles(w, wis, ms, nc, K, q, s, act_sum, out, isa, t0, t1, quad, single, ahead, scale):
    """I2_S rows at byte offsets wis (outputs ms) × tokens t0..t1-1: 4 tokens per tile call (zero accumulators `quad`),
    then single tokens (zero accumulators `single`, all rows in one tile), which prefetch `ahead` bytes on."""
    t4 = t1 - (t1 - t0) % 4
    for t in range(t0, t4, 4):
        acc = _tile_sum(quad, w, wis, q, t * K, K, 0, nc, FMT_I2S, isa, ahead)
        _i2s_out(acc, ms, t, 4, s, act_sum, scale, out)
    for t in range(t4, t1):
        acc = _tile_sum(single, w, wis, q, t * K, K, 0, nc, FMT_I2S, isa, ahead)
        _i2s_out(acc, ms, t, 1, s, act_sum, scale, out)


@njit(cache=True, inline="always")
def _i2s_rows(w, m, m2, K, q, s, act_sum, out, isa, t0, t1, scale):
    """Outputs (t0..t1-1, m) and, where m2 ≥ 0, (t0..t1-1, m2) of the bitnet profile, I2_S: 2 rows × 4 tokens per tile
    call, then 2 rows × 1 token, which prefetch each row's stream PREFETCH_ROWS rows on."""
    nc = K // I2S_BLOCK
    rb = K // 4
    ahead = PREFETCH_ROWS * rb
    if m2 >= 0:
        _i2s_tiles(w, (m * rb, m2 * rb), (m, m2), nc, K, q, s, act_sum, out, isa, t0, t1, _z8(), _z2(), ahead, scale)
    else:
        _i2s_tiles(w, (m * rb,), (m,), nc, K, q, s, act_sum, out, isa, t0, t1, _z4(), _z1(), ahead, scale)


@njit(cache=True, parallel=True)
def _simd_i2s(w, M, K, q, s, act_sum, out, isa):
    """bitnet profile, I2_S, on the SIMD path: token tile by token tile, row pairs (_row_pair) in parallel."""
    T = q.shape[0]
    scale = _i2s_scale(w, M, K)
    for t0 in range(0, T, TOKEN_TILE):
        for p in prange((M + 1) // 2):
            m, m2 = _row_pair(p, M)
            _i2s_rows(w, m, m2, K, q, s, act_sum, out, isa, t0, min(T, t0 + TOKEN_TILE), scale)


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
def _portable_i8(w, M, K, q, s, act_sum, out, fmt):
    """bitnet profile on the portable path."""
    F, bb, be = _layout(fmt)
    nblk = K // be
    ap = _act_planes(q, fmt, nblk, _field_elements(fmt))
    qsum = np.zeros((q.shape[0], nblk), np.int64)  # Σq of each block (TQ: D_b = Σu·q − Σq)
    for t in range(q.shape[0]):
        for e in range(K):
            qsum[t, e // be] += q[t, e]
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
                acc = np.float64(0.0)
                D = np.int64(0)
                for b in range(nblk):
                    D += _plane_dot(planes, ap[t], bb * b, bb * (b + 1)) - qsum[t, b]
                    bits = _d_bits(w, row + bb * b + bb - 2)
                    if b == nblk - 1 or _d_bits(w, row + bb * (b + 1) + bb - 2) != bits:  # the run ends
                        acc += np.float64(D) * np.float64(f16_to_f32(bits))
                        D = 0
                out[t, m] = np.float32(acc) / s[t]


# ---------------------------------------------------------------------------------------------------------------------
# public kernels: one per (format, activation kind), each choosing the portable or the SIMD path by `isa`


@njit(cache=True)
def _q8k(w, M, K, qs, d, bsums, out, fmt, isa):
    if isa == ISA_PORTABLE:
        _portable_q8k(w, M, K, qs, d, bsums, out, fmt)
    else:
        _simd_q8k(w, M, K, qs, d, bsums, out, fmt, isa)


@njit(cache=True)
def _tq_i8(w, M, K, q, s, act_sum, out, fmt, isa, runs):
    if isa == ISA_PORTABLE:
        _portable_i8(w, M, K, q, s, act_sum, out, fmt)
    else:
        r = _one_run_rows(w, M, K, fmt) if runs is None else runs
        qcum = _block_prefix(q, K // QK) if r.min() == 0 else np.zeros((q.shape[0], 1), np.int64)  # several runs
        _simd_tq_i8(w, M, K, q, s, act_sum, out, fmt, isa, r, qcum)


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
def matmul_tq2_0_i8(w, M, K, q, s, act_sum, out, isa=DEFAULT_ISA, runs=None):
    """out[t, m] = f32(Σ_runs f64(D_run)·f64(d_run)) / s[t] for TQ2_0 row m and int8 row t (D_run: the integer dot over
    a run of blocks with equal d bits): q i8 (T,K), s f32 (T,), act_sum i32 (T,). runs: one_run_rows of w, computed
    once at load time; without it each call reads every block's d first (a pass over the row before its dot)."""
    _tq_i8(w, M, K, q, s, act_sum, out, FMT_TQ2_0, isa, runs)


@njit(cache=True)
def matmul_tq1_0_i8(w, M, K, q, s, act_sum, out, isa=DEFAULT_ISA, runs=None):
    """matmul_tq2_0_i8 for TQ1_0 rows (arrays as there)."""
    _tq_i8(w, M, K, q, s, act_sum, out, FMT_TQ1_0, isa, runs)


def one_run_rows(fmt: str, w: np.ndarray, M: int, K: int) -> np.ndarray:
    """uint8 (M,): 1 where every block of row m of the TQ2_0 / TQ1_0 tensor w has the same d bits (the row is one run;
    every converted BitNet tensor has one d), else 0. The `runs` argument of matmul_tq*_i8."""
    if fmt not in (TQ2_0.NAME, TQ1_0.NAME):
        raise FormatError(f"one_run_rows: {fmt!r} has no per-block d; expected {TQ2_0.NAME} or {TQ1_0.NAME}")
    check_weight(fmt, w, M, K)
    return _one_run_rows(w, M, K, FMT_TQ2_0 if fmt == TQ2_0.NAME else FMT_TQ1_0)


@njit(cache=True)
def matmul_i2s_i8(w, M, K, q, s, act_sum, out, isa=DEFAULT_ISA):
    """out[t, m] = ((f32)Σu·q − (f32)act_sum[t]) / s[t] · scale for I2_S (x86 128-block) row m and int8 row t."""
    if isa == ISA_PORTABLE:
        _portable_i8(w, M, K, q, s, act_sum, out, FMT_I2S)
    else:
        _simd_i2s(w, M, K, q, s, act_sum, out, isa)


@njit(cache=True)
def matmul_i2s_arm_i8(w, M, K, q, s, act_sum, out, isa=DEFAULT_ISA):
    """matmul_i2s_i8 for the ARM 64-block layout (portable path whatever `isa`)."""
    _portable_i8(w, M, K, q, s, act_sum, out, FMT_I2S_ARM)


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
