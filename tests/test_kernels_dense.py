"""Float dots and matmuls (F32, F16, BF16 incl. AVX512_BF16's vdpbf16ps, Q8_0) against their numpy twins, bit for bit,
in ggml's vec_dot and tinyBLAS orders for 8 and 16 lanes (docs/NUMERICS.md §4.4, §4.5, docs/NUMERICS-AVX512.md §2)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from float_twins import (  # the numpy twins and helpers these tests compare with
    F32,
    F32_MIN_NORMAL,
    F64,
    LANES,
    assert_same_bits,
    bf16_values,
    bits_values,
    fma_f32_exact,
    read_only,
    round_f32_exact,
    twin_bitlinear,
    twin_matmul,
    twin_matmul_q8_0,
    twin_quantize_q8_0,
    twin_tiled_dot,
    twin_tiled_dot_dpbf16,
    twin_vec_dot,
    twin_vec_dot_dpbf16,
)
from numba import njit

from bitnet_ref.formats import BF16, F16, Q8_0
from bitnet_ref.kernels import dense

# ----------------------------------------------------------------------------------------------------------------------
# tests: dots and matmuls


@njit(cache=True)
def _dots(a, b, lanes, variant, tiled):
    """Every row of a dotted with b by dense.vec_dot / dense.tiled_dot."""
    acc = np.empty(64, np.float32)
    out = np.empty(a.shape[0], np.float32)
    for m in range(a.shape[0]):
        if tiled:
            out[m] = dense.tiled_dot(a[m], 0, b, 0, a.shape[1], lanes, acc)
        else:
            out[m] = dense.vec_dot(a[m], 0, b, 0, a.shape[1], lanes, variant, acc)
    return out


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("n", [32, 64, 100, 77, 257, 2563])
def test_vec_and_tiled_dots_match_twins(lanes, n):
    dots = _dots
    rng = np.random.default_rng(n + lanes)
    a = (rng.standard_normal((40, n)) * rng.uniform(0.1, 100, (40, 1))).astype(F32)
    b = rng.standard_normal(n).astype(F32)
    bf16_variant = dense.VEC_BF16_AVX512 if lanes == 16 else dense.VEC_BF16_AVX2
    for variant in (dense.VEC_F16, dense.VEC_F32, bf16_variant):
        assert_same_bits(dots(a, b, lanes, variant, False), twin_vec_dot(a, b, lanes, variant), f"vec_dot {variant}")
    if n % lanes == 0:
        assert_same_bits(dots(a, b, lanes, 0, True), twin_tiled_dot(a, b, lanes), "tiled_dot")


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("M", [37, 36])
def test_matmul_f16_f32_bf16_match_twins(lanes, T, M):
    rng = np.random.default_rng(10 * T + lanes + M)
    K = 96
    w = (rng.standard_normal((M, K)) * 0.5).astype(F32)
    x = rng.standard_normal((T, K)).astype(F32)
    tiled = dense.use_tiled("ggml", T, M, K, lanes)
    assert tiled == (T >= 2 and M % 4 == 0)
    cases = (
        ("f16", F16, dense.round_rows_f16, dense.VEC_F16),
        ("bf16", BF16, dense.round_rows_bf16, dense.VEC_BF16_AVX512 if lanes == 16 else dense.VEC_BF16_AVX2),
    )
    for name, fmt, rounding, variant in cases:
        raw = read_only(fmt.encode(w).view(np.uint16))
        wf = fmt.decode(raw.view(np.uint8), (K, M))
        xr = np.empty_like(x)
        rounding(x, xr)
        out = np.full((T, M), np.nan, F32)
        if name == "f16":
            dense.matmul_f16(raw, M, K, xr, tiled, lanes, out)
        else:
            dense.matmul_bf16(raw, M, K, xr, tiled, lanes, False, out)  # without AVX512_BF16: lanes-wide FMA
        assert_same_bits(out, twin_matmul(wf, xr, tiled, lanes, variant), f"matmul_{name} T={T} M={M}")
    out = np.full((T, M), np.nan, F32)
    dense.matmul_f32(read_only(w.reshape(-1)), M, K, x, tiled, lanes, out)
    assert_same_bits(out, twin_matmul(w, x, tiled, lanes, dense.VEC_F32), f"matmul_f32 T={T}")


def test_use_tiled_rule():
    assert not dense.use_tiled("ggml", 1, 128, 64, 8)
    assert dense.use_tiled("ggml", 2, 128, 64, 8)
    assert not dense.use_tiled("ggml", 2, 130, 64, 8)  # M % 4 != 0: tinyBLAS declines
    assert not dense.use_tiled("ggml", 2, 128, 68, 8)  # K % lanes != 0
    assert not dense.use_tiled("fixed", 5, 128, 64, 8)
    assert dense.use_tiled("ggml", 2, 128, 96, dense.DPBF16_KN)  # BF16 with vdpbf16ps: steps of 32
    assert not dense.use_tiled("ggml", 2, 128, 80, dense.DPBF16_KN)  # K % 32 != 0: vec_dot, though 80 % 16 == 0


def test_round_rows_match_numpy():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((3, 50)) * 1e3).astype(F32)
    x[0, :3] = [np.inf, np.nan, 1e-40]
    out = np.empty_like(x)
    dense.round_rows_f16(x, out)
    with np.errstate(over="ignore"):
        assert_same_bits(out, x.astype(np.float16).astype(F32), "f16 rounding")
    dense.round_rows_bf16(x, out)
    assert_same_bits(out, BF16.decode(BF16.encode(x), (50, 3)), "bf16 rounding")


def test_q8_0_quantize_and_matmul_match_twins():
    rng = np.random.default_rng(7)
    M, K, T = 12, 128, 3
    w = rng.standard_normal((M, K)).astype(F32)
    raw = Q8_0.encode(w)
    x = rng.standard_normal((T, K)).astype(F32)
    x[1, :32] = 0  # an all-zero block
    qs, d = np.empty((T, K), np.int8), np.empty((T, K // 32), F32)
    dense.quantize_q8_0(x, qs, d)
    tq, td = twin_quantize_q8_0(x)
    assert np.array_equal(qs, tq)
    assert_same_bits(d, td, "q8_0 d")
    out = np.empty((T, M), F32)
    dense.matmul_q8_0(read_only(raw), M, K, qs, d, out)
    assert_same_bits(out, twin_matmul_q8_0(raw, M, K, qs, d), "matmul_q8_0")
    out32 = np.empty((T, M), F32)
    dense.matmul_q8_0_f32(read_only(raw), M, K, x, 8, out32)
    wf = Q8_0.decode(raw, (K, M))
    assert_same_bits(out32, twin_matmul(wf, x, False, 8, dense.VEC_F32), "matmul_q8_0_f32")


# ----------------------------------------------------------------------------------------------------------------------
# tests: BF16 on builds with AVX512_BF16 (vdpbf16ps)


@njit(cache=True)
def _dots_dpbf16(a, b, tiled):
    """Every row of a dotted with b by vec_dot(VEC_BF16_DPBF16) or tiled_dot_dpbf16."""
    acc = np.empty(64, np.float32)
    out = np.empty(a.shape[0], np.float32)
    for m in range(a.shape[0]):
        if tiled:
            out[m] = dense.tiled_dot_dpbf16(a[m], 0, b, 0, a.shape[1], acc)
        else:
            out[m] = dense.vec_dot(a[m], 0, b, 0, a.shape[1], 16, dense.VEC_BF16_DPBF16, acc)
    return out


def test_dpbf16_twin_rounding_is_exact():
    """The twin's fast path (float64 sum, TwoSum-checked) agrees with rounding from fractions everywhere, extreme
    exponent gaps, ties and f32 denormal results included."""
    rng = np.random.default_rng(20)
    n = 4000
    a = bf16_values(rng.standard_normal(n) * np.exp2(rng.integers(-70, 40, n)))
    b = bf16_values(rng.standard_normal(n) * np.exp2(rng.integers(-70, 40, n)))
    c = (rng.standard_normal(n) * np.exp2(rng.integers(-130, 60, n))).astype(F32)
    c[:500] = -(a[:500].astype(F64) * b[:500]).astype(F32)  # cancellations, exact zeros
    c[500:1000] = np.nextafter(c[500:1000], F32(np.inf))
    a[1000:1100], b[1000:1100], c[1000:1100] = F32(1), bits_values(0x3380), F32(1)  # 1 + 2^-24: a tie, stays 1
    got = fma_f32_exact(a, b, c)
    exact = [Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i])) for i in range(n)]
    nonzero = np.array([x != 0 for x in exact])
    assert_same_bits(got[nonzero], np.array([round_f32_exact(x) for x in exact if x], F32), "fma_f32_exact")
    assert (~nonzero).sum() > 100 and np.all(got[~nonzero] == 0) and not np.signbit(got[~nonzero]).any()  # x − x = +0
    p = a.astype(F64) * b
    assert ((p + c) - p != c).sum() > 100  # the fractions path was taken
    assert np.all(got[1000:1100] == 1) and (np.abs(got) < F32_MIN_NORMAL).any()


@pytest.mark.parametrize("n", [64, 77, 128, 2560, 2563])
def test_dpbf16_dots_match_twins(n):
    rng = np.random.default_rng(30 + n)
    a = rng.standard_normal((20, n)) * rng.uniform(0.01, 100, (20, 1))
    b = rng.standard_normal(n)
    b[::7] *= 2.0**-64
    a[3] = 0  # an all-zero row
    a[4, ::3] *= -(2.0**-63)  # with b[::7]: products in the f32 denormal range
    a[8] = rng.standard_normal(n) * 2.0**-125  # denormal inputs, and sums around 2^-126 that get flushed
    a, b = bf16_values(a), bf16_values(b)
    a[5] = bits_values(rng.integers(0, 128, n) | (rng.integers(0, 2, n) << 15))  # denormal (and ±0) inputs only
    a[6, : n // 2] = bits_values(0x8000)  # -0
    assert (np.abs(a[8][a[8] != 0]) < F32_MIN_NORMAL).any()
    vec = _dots_dpbf16(a, b, False)
    assert_same_bits(vec, twin_vec_dot_dpbf16(a, b), f"vec_dot dpbf16 n={n}")
    if n % 64 == 0:
        assert vec[5] == 0 and vec[3] == 0  # denormal inputs read as zero (the scalar leftovers would not)
    if n % dense.DPBF16_KN == 0:
        assert_same_bits(_dots_dpbf16(a, b, True), twin_tiled_dot_dpbf16(a, b), f"tiled_dot dpbf16 n={n}")


def test_dpbf16_lane_semantics_by_hand():
    """Cases whose results are known without a twin (odd element first, one rounding per addition, denormal inputs read
    as zero, denormal sums flushed to signed zero); the tiled kernel and its twin both have to give them."""

    def lane0(chunks):
        """Rows of 64 bf16 (a, b) where only lane 0 is set: chunk c is ((a_even, b_even), (a_odd, b_odd))."""
        a, b = np.zeros((1, 64), F32), np.zeros(64, F32)
        for c, ((ae, be), (ao, bo)) in enumerate(chunks):
            a[0, 32 * c : 32 * c + 2] = ae, ao
            b[32 * c : 32 * c + 2] = be, bo
        return a, b

    p = 2.0 ** np.arange(-140, 120, dtype=F64)  # p[i + 140] = 2^i, all exact bf16 values (as f64)
    two = lambda i: F32(p[i + 140])  # noqa: E731
    cases = [
        # order: acc 1, then 1 − 1 = 0 and 0 + 2^-30 (even element first would give (1 + 2^-30) − 1 = 0)
        ([((1, 1), (0, 0)), ((two(-30), 1), (-1, 1))], two(-30)),
        # one rounding per addition: 1 + 2^-24 is a tie (→ 1), twice; one rounding of 1 + 2^-23 would keep it
        ([((1, 1), (0, 0)), ((two(-24), 1), (two(-24), 1))], F32(1)),
        # a product in the denormal range (2^-130, from normal inputs) is flushed
        ([((0, 0), (two(-65), two(-65))), ((0, 0), (0, 0))], F32(0)),
        # a sum in the denormal range: 2^-125 − 1.5·2^-126 = 2^-127 is flushed
        ([((two(-60), two(-65)), (0, 0)), ((0, 0), (F32(-1.5) * two(-63), two(-63)))], F32(0)),
        # a denormal input (bf16 0x0001 = 2^-133) reads as zero: not 2^-133 · 2^100
        ([((bits_values(0x0001), two(100)), (0, 0)), ((0, 0), (0, 0))], F32(0)),
    ]
    for chunks, want in cases:
        a, b = lane0(chunks)
        assert_same_bits(_dots_dpbf16(a, b, True), np.array([want], F32), f"tiled dpbf16 {chunks}")
        assert_same_bits(twin_tiled_dot_dpbf16(a, b), np.array([want], F32), f"twin dpbf16 {chunks}")
    a = np.zeros((1, 64), F32)  # every lane ends at -0: −2^-130 flushed to −0, then −0 + (−0)
    a[0, 1::2] = -two(-65)
    a[0, 0::2] = F32(-0.0)
    b = np.full(64, two(-65), F32)
    assert np.signbit(_dots_dpbf16(a, b, True)[0]) and np.signbit(twin_tiled_dot_dpbf16(a, b)[0])
    # ggml_vec_dot_bf16 adds the R16 sums to a double that starts at +0.0: no −0 comes out
    assert _dots_dpbf16(a, b, False)[0] == 0 and not np.signbit(_dots_dpbf16(a, b, False)[0])
    assert not np.signbit(twin_vec_dot_dpbf16(a, b)[0])


@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("M,K", [(36, 128), (37, 96), (36, 80), (8, 77)])
def test_matmul_bf16_dpbf16_matches_twin(T, M, K):
    rng = np.random.default_rng(100 * T + K)
    w = (rng.standard_normal((M, K)) * rng.uniform(0.05, 5, (M, 1))).astype(F32)
    w[1] = 0
    x = rng.standard_normal((T, K)).astype(F32)
    raw = BF16.encode(w)
    wf = BF16.decode(raw, (K, M))
    xr = np.empty_like(x)
    dense.round_rows_bf16(x, xr)
    tiled = dense.use_tiled("ggml", T, M, K, dense.DPBF16_KN)
    assert tiled == (T >= 2 and (M, K) == (36, 128))  # K = 80: tinyBLAS takes it in f32 lanes, not with vdpbf16ps
    out = np.full((T, M), np.nan, F32)
    dense.matmul_bf16(read_only(raw.view(np.uint16)), M, K, xr, tiled, 16, True, out)
    assert_same_bits(out, twin_matmul(wf, xr, tiled, 16, dense.VEC_BF16_DPBF16), f"matmul_bf16 dpbf16 T={T} K={K}")


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("K", [256, 320, 96])
def test_bitlinear_float_weights_match_twin(T, K):
    """The bitnet profile's BitLinear on F32, F16, BF16 and Q8_0 weights: int8 rows times the decoded weights, f32
    sums over 256-blocks in order, one division by the token's scale."""
    rng = np.random.default_rng(21)
    M = 19
    w = (rng.standard_normal((M, K)) * 0.05).astype(F32)
    q = rng.integers(-128, 128, (T, K)).astype(np.int8)
    s = (rng.random(T) * 100 + 1).astype(F32)
    bf = bf16_values(w)
    cases = [("f32", w.reshape(-1), w), ("f16", w.astype(np.float16).view(np.uint16).reshape(-1),
                                        w.astype(np.float16).astype(F32))]
    for name, data, wf in cases:
        out = np.full((T, M), np.nan, F32)
        dense.matmul_float_i8(read_only(data), M, K, False, q, s, out)
        assert_same_bits(out, twin_bitlinear(wf, q, s), f"bitlinear {name} K={K}")
    out = np.full((T, M), np.nan, F32)
    dense.matmul_float_i8(read_only(BF16.encode(w).view(np.uint16)), M, K, True, q, s, out)
    assert_same_bits(out, twin_bitlinear(bf, q, s), f"bitlinear bf16 K={K}")
    if K % 32 == 0:
        raw = Q8_0.encode(w)
        out = np.full((T, M), np.nan, F32)
        dense.matmul_q8_0_i8(read_only(raw), M, K, q, s, out)
        assert_same_bits(out, twin_bitlinear(Q8_0.decode(raw, (K, M)), q, s), f"bitlinear q8_0 K={K}")
