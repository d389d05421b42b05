"""IQ2_S kernels against numpy twins, bit for bit: ggml's AVX2 vec_dot_iq2_s_q8_K lanes (ggml profile) and the
decoded-row BitLinear product (bitnet profile)."""

from __future__ import annotations

import numpy as np
import pytest
from float_twins import F32, assert_same_bits, fma, read_only, twin_bitlinear

from bitnet_ref.errors import FormatError
from bitnet_ref.formats import IQ2_S
from bitnet_ref.kernels import actquant, iq2s


def _fields(raw: np.ndarray, M: int, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d_w f32 (M, nb), v int32 (M, K) signed grid values, ls int32 (M, K/16) odd scales) straight from the bytes."""
    nb = K // 256
    b = raw.reshape(M * nb, IQ2_S.BLOCK_BYTES)
    d = b[:, 0:2].copy().view("<f2").astype(F32).reshape(M, nb)
    idx = b[:, 2:34].astype(np.int64).reshape(-1, 8, 4) | (((b[:, 66:74, None] >> np.array([0, 2, 4, 6])) & 3) << 8)
    mags = IQ2_S.GRID_U8[idx].astype(np.int32)  # (blocks, ib, l, j)
    neg = (b[:, 34:66].reshape(-1, 8, 4, 1) >> np.arange(8)) & 1
    v = np.where(neg == 1, -mags, mags).reshape(M, K)
    nib = np.stack([b[:, 74:82] & 15, b[:, 74:82] >> 4], axis=2).astype(np.int32)  # (blocks, ib, half)
    return d, v, (2 * nib + 1).reshape(M, K // 16)


def twin_q8k(raw, M, K, qs, dx):
    """ggml_vec_dot_iq2_s_q8_K's AVX2 lanes below 8 token rows, the tiled kernel from 8 on (docs/NUMERICS.md §4.5)."""
    d, v, ls = _fields(raw, M, K)
    T, nb = qs.shape[0], K // 256
    out = np.empty((T, M), F32)
    for t in range(T):
        for m in range(M):
            if T >= 8:
                buf = F32(0)
                for b in range(nb):
                    e = slice(256 * b, 256 * (b + 1))
                    S = (ls[m, 16 * b : 16 * (b + 1)] * (v[m, e] * qs[t, e]).reshape(16, 16).sum(axis=1)).sum()
                    P = F32(F32(d[m, b] * F32(0.125)) * F32(S))
                    buf = fma(P, dx[t, b], buf)
                out[t, m] = buf
                continue
            acc = np.zeros(8, F32)
            for b in range(nb):
                e = (256 * b + 32 * np.arange(8)[:, None, None] + 4 * np.arange(8)[None, :, None] + np.arange(4))
                part = (v[m][e] * qs[t][e].astype(np.int32)).sum(axis=2)  # (ib, k)
                scale = ls[m][16 * b + 2 * np.arange(8)[:, None] + (np.arange(8)[None, :] >= 4)]
                lanes = (scale * part).sum(axis=0)
                db = F32(d[m, b] * dx[t, b])
                acc = fma(np.full(8, db, F32), lanes.astype(F32), acc)
            lo = F32(F32(acc[4] + acc[0]) + F32(acc[6] + acc[2]))
            hs = F32(lo + F32(F32(acc[5] + acc[1]) + F32(acc[7] + acc[3])))
            out[t, m] = F32(F32(0.125) * hs)
    return out


def _weights(rng, M, K, kind):
    if kind == "gauss":
        x = rng.standard_normal((M, K)).astype(F32) * F32(0.02)
        raw = IQ2_S.encode(x)
        return raw
    blocks = rng.integers(0, 256, (M * K // 256, IQ2_S.BLOCK_BYTES), dtype=np.uint8)
    blocks[:, 0:2] = np.float16(rng.uniform(-1, 1)).reshape(1).view(np.uint8)  # a finite d, any sign
    if kind == "zero":  # d = 0 in every block: all-zero rows
        blocks[:, 0:2] = 0
    if kind == "max":  # every grid value 43, all scales 15, every sign negative: the largest integer sums
        blocks[:, 2:34] = 255
        blocks[:, 66:74] = 255
        blocks[:, 74:82] = 255
        blocks[:, 34:66] = 255
    return blocks.reshape(-1)


@pytest.mark.parametrize("kind", ["gauss", "random", "zero", "max"])
@pytest.mark.parametrize("T, M, K", [(1, 3, 256), (3, 17, 512), (7, 8, 768), (8, 5, 512), (11, 17, 256)])
def test_iq2s_kernels_match_twins(kind, T, M, K):
    rng = np.random.default_rng(T * 1000 + M + K)
    raw = read_only(_weights(rng, M, K, kind))
    x = rng.standard_normal((T, K)).astype(F32)
    if kind == "max":
        x[:] = -1  # q = ±127 everywhere
    x[0, :256] = 0  # an all-zero Q8_K block (d = 0) and zeros in the per-token row
    qs, dx, bs = np.zeros((T, K), np.int8), np.zeros((T, K // 256), F32), np.zeros((T, K // 16), np.int16)
    actquant.quantize_q8_k(x, qs, dx, bs)
    out = np.full((T, M), np.nan, F32)
    iq2s.matmul_iq2s_q8k(raw, M, K, qs, dx, bs, out)
    assert_same_bits(out, twin_q8k(raw, M, K, qs, dx), "iq2s q8k")
    q, s, act_sum = np.zeros((T, K), np.int8), np.zeros(T, F32), np.zeros(T, np.int32)
    actquant.quantize_i8_rows(x, q, s, act_sum)
    iq2s.matmul_iq2s_i8(raw, M, K, q, s, act_sum, out)
    wf = IQ2_S.decode(np.asarray(raw), (K, M))
    assert_same_bits(out, twin_bitlinear(wf, q, s), "iq2s i8")


def test_iq2s_check_weight_names_the_problem():
    with pytest.raises(FormatError, match="multiple of 256"):
        iq2s.check_weight(np.zeros(82, np.uint8), 1, 100)
    with pytest.raises(FormatError, match="needs 164"):
        iq2s.check_weight(np.zeros(82, np.uint8), 2, 256)


def test_iq2s_encoder_round_trip_is_close_and_zero_is_exact():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 256)).astype(F32)
    y = IQ2_S.decode(IQ2_S.encode(x), (256, 64))
    assert np.sqrt(((y - x) ** 2).mean() / (x**2).mean()) < 0.3
    assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.95
    assert (np.sign(y) == np.sign(x)).all()
    assert not IQ2_S.decode(IQ2_S.encode(np.zeros((2, 256), F32)), (256, 2)).any()
