"""IQ2_S matrix products read straight from the packed blocks (formats/iq2_s.py: d, grid indices, signs, scales).

`matmul_iq2s_<act>(w, M, K, <activation arrays>, out)` writes out[t, m] (f32 (T, M)) for weight row m (K elements,
K/256 blocks of 82 bytes) of the flat uint8 tensor bytes `w` and token row t. Parallel over output rows; every output
is one thread's fixed-order sum, so results do not depend on the thread count. Per block, element e of sub-block ib
(32 elements) has the signed grid value v_e = ±grid[idx][j] (|v| ≤ 43) and the odd scale ls = 2·nibble + 1 of its
16-element half; the block's weights are w_e = d·ls·v_e / 8.

ggml profile (`matmul_iq2s_q8k`, Q8_K activations from `quantize_q8_k`), what llama.cpp's x86 build computes; the
path depends on the number of token rows T (ggml's ne11), as in ggml-cpu's mul_mat (docs/NUMERICS.md §4.5):
- T < TILED_MIN_ROWS: `ggml_vec_dot_iq2_s_q8_K` (AVX2 code, which AVX-512 builds run too): per 256-block b, 8 int32
  lanes L_k = Σ_ib ls(ib, k < 4 ? low : high) · Σ_{j<4} v_e·q_e over elements e = 32·ib + 4k + j (exact);
  d_b = f32(f16→f32(d_w) · d_x[b]); acc_k = fma(d_b, f32(L_k), acc_k) in block order; y = 0.125f · hsum8(acc).
- T ≥ TILED_MIN_ROWS: the tiled kernel (ggml-cpu/tiled, on unless GGML_CPU_TILED_MM=0 in llama.cpp's environment):
  per block S_b = Σ_h ls_h · Σ_{e in half h} v_e·q_e (exact int32, may exceed 2^24); d0 = f16→f32(d_w) · 0.125 (exact);
  buf = fma(f32(d0 · f32(S_b)), d_x[b], buf) in block order from +0 (f32(S) rounds to nearest even); y = buf.
  The AVX2 kernel has that FMA explicitly; GCC contracts the AVX-512 VNNI kernel's mul + add into the same one.

bitnet profile (`matmul_iq2s_i8`, per-token int8 from `quantize_i8_rows`): the row decoded exactly to f32 as
formats.IQ2_S.decode does, then dense.bitlinear_dots (exact products summed in f64 in order, rounded once, / s).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bitnet_ref.errors import FormatError
from bitnet_ref.formats import IQ2_S
from bitnet_ref.kernels.dense import ROW_BLOCK, bitlinear_dots
from bitnet_ref.kernels.intrinsics import f16_to_f32, fma32

QK = IQ2_S.BLOCK_ELEMS  # 256
BLOCK_BYTES = IQ2_S.BLOCK_BYTES  # 82: d f16 @0, qs u8[32] @2, signs u8[32] @34, qh u8[8] @66, scales u8[8] @74
QS, SIGNS, QH, SCALES = IQ2_S.QS.start, IQ2_S.SIGNS.start, IQ2_S.QH.start, IQ2_S.SCALES.start
GRID = IQ2_S.GRID_U8  # (1024, 8) magnitudes 8, 25, 43
MAX_K = 65536
TILED_MIN_ROWS = 8  # ggml_tiled_min_batch: ne11 >= 8 takes the tiled kernel


@njit(cache=True)
def _block_d(w, o):
    return f16_to_f32(np.int64(w[o]) | (np.int64(w[o + 1]) << 8))


@njit(cache=True)
def _decode_block(w, o, v, ls, e0, h0):
    """Signed grid values v[e0 + e] (int8) and odd scales ls[h0 + h] (one per 16 elements) of the block at byte o."""
    for ib in range(8):
        sc = w[o + SCALES + ib]
        ls[h0 + 2 * ib] = 2 * np.int32(sc & 15) + 1
        ls[h0 + 2 * ib + 1] = 2 * np.int32(sc >> 4) + 1
        for grp in range(4):
            idx = np.int64(w[o + QS + 4 * ib + grp]) | ((np.int64(w[o + QH + ib]) >> (2 * grp)) & 3) << 8
            sg = w[o + SIGNS + 4 * ib + grp]
            for j in range(8):
                g = np.int8(GRID[idx, j])
                v[e0 + 32 * ib + 8 * grp + j] = -g if (sg >> j) & 1 else g


@njit(cache=True)
def _lanes(v, ls, q, t, e0, h0, lanes):
    """lanes[k] = L_k of one block: Σ_ib ls · Σ_{j<4} v·q over elements 32·ib + 4k + j."""
    for k in range(8):
        total = np.int32(0)
        for ib in range(8):
            e = e0 + 32 * ib + 4 * k
            part = np.int32(0)
            for j in range(4):
                part += np.int32(v[e + j]) * np.int32(q[t, e + j])
            total += ls[h0 + 2 * ib + (k >> 2)] * part
        lanes[k] = total


@njit(cache=True, parallel=True)
def matmul_iq2s_q8k(w, M, K, qs, dx, bsums, out):
    """out[t, m] = ggml x86 vec_dot_iq2_s_q8_K(IQ2_S row m, Q8_K row t); qs i8 (T,K), dx f32 (T,K/256), bsums i16."""
    nb = K // QK
    for blk in prange((M + ROW_BLOCK - 1) // ROW_BLOCK):
        v = np.empty(K, np.int8)
        ls = np.empty(K // 16, np.int32)
        dw = np.empty(nb, np.float32)
        lanes = np.empty(8, np.int32)
        acc = np.empty(8, np.float32)
        for m in range(blk * ROW_BLOCK, min(M, (blk + 1) * ROW_BLOCK)):
            for b in range(nb):
                o = (m * nb + b) * BLOCK_BYTES
                dw[b] = _block_d(w, o)
                _decode_block(w, o, v, ls, QK * b, 16 * b)
            for t in range(qs.shape[0]):
                if qs.shape[0] >= TILED_MIN_ROWS:
                    out[t, m] = _tiled_dot(v, ls, dw, qs, dx, t, nb, lanes)
                    continue
                acc[:] = 0
                for b in range(nb):
                    _lanes(v, ls, qs, t, QK * b, 16 * b, lanes)
                    d = np.float32(dw[b] * dx[t, b])
                    for k in range(8):
                        acc[k] = fma32(d, np.float32(lanes[k]), acc[k])
                hs = ((acc[4] + acc[0]) + (acc[6] + acc[2])) + ((acc[5] + acc[1]) + (acc[7] + acc[3]))
                out[t, m] = np.float32(0.125) * hs


@njit(cache=True)
def _tiled_dot(v, ls, dw, qs, dx, t, nb, lanes):
    """One output of ggml's tiled IQ2_S kernel: buf = fma(f32(d0·f32(S_b)), d_x[b], buf) over the blocks in order."""
    buf = np.float32(0.0)
    for b in range(nb):
        _lanes(v, ls, qs, t, QK * b, 16 * b, lanes)
        S = np.int32(0)
        for k in range(8):
            S += lanes[k]
        d0 = np.float32(dw[b] * np.float32(0.125))
        buf = fma32(np.float32(d0 * np.float32(S)), dx[t, b], buf)
    return buf


@njit(cache=True)
def _decode_row_f32(w, m, nb, v, ls, row):
    """Row m decoded to f32 as formats.IQ2_S.decode: w = f32(f32(f32(d·(0.5 + s))·0.25)·grid)·sign."""
    for b in range(nb):
        o = (m * nb + b) * BLOCK_BYTES
        d = _block_d(w, o)
        _decode_block(w, o, v, ls, QK * b, 16 * b)
        for h in range(16):
            s = np.float32((ls[16 * b + h] - 1) // 2)
            db = np.float32(np.float32(d * (np.float32(0.5) + s)) * np.float32(0.25))
            for e in range(QK * b + 16 * h, QK * b + 16 * (h + 1)):
                g = np.float32(abs(np.int32(v[e])))
                x = np.float32(db * g)
                row[e] = -x if v[e] < 0 else x


@njit(cache=True, parallel=True)
def matmul_iq2s_i8(w, M, K, q, s, act_sum, out):
    """out[t, m] = bitlinear_dots(decoded IQ2_S row m, int8 row t) / s[t]; q i8 (T,K), s f32 (T,), act_sum unused."""
    nb = K // QK
    for blk in prange((M + ROW_BLOCK - 1) // ROW_BLOCK):
        v = np.empty(K, np.int8)
        ls = np.empty(K // 16, np.int32)
        row = np.empty(K, np.float32)
        for m in range(blk * ROW_BLOCK, min(M, (blk + 1) * ROW_BLOCK)):
            _decode_row_f32(w, m, nb, v, ls, row)
            bitlinear_dots(row, q, s, m, out)


def check_weight(w: np.ndarray, M: int, K: int) -> None:
    """Raise FormatError unless `w` holds an M x K IQ2_S tensor the kernels can read."""
    if M < 1 or K < QK or K % QK or K > MAX_K:
        raise FormatError(f"iq2_s: K = {K}, M = {M}; K must be a positive multiple of {QK}, at most {MAX_K}")
    need = M * (K // QK) * BLOCK_BYTES
    if not isinstance(w, np.ndarray) or w.dtype != np.uint8 or w.ndim != 1 or not w.flags.c_contiguous:
        raise FormatError(f"iq2_s: weight bytes must be a flat C-contiguous uint8 array, got {getattr(w, 'dtype', w)}")
    if w.size < need:
        raise FormatError(f"iq2_s: weight has {w.size} bytes; {M} x {K} needs {need}")
