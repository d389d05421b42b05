"""TL1 / TL2 LUT kernels and their activation quantizer against plain numpy twins, bit for bit.

The twins never look at the packed byte order or at lookup tables: they decode the weights with the format classes
(TL1.ternary / TL2.ternary, themselves tested against the converter's reshape chains in test_formats_tl.py), form the
products t·q in int64, sum them per BK block (TL2: per BK block of the three part and per 32-column tail block), wrap
each block sum to int16, add the blocks and redo the f32 epilogue f32(f32(f32(C) / s) · scale) in numpy. Outputs are
compared with np.array_equal / assert_array_equal.
"""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_ref.errors import FormatError
from bitnet_ref.formats import TL1, TL2
from bitnet_ref.kernels import actquant, lut

F32 = np.float32
SCALE = 0.8125  # the `<name>_scale` value the tests pass (exact in f32)

# (M, K, tiling): TL1 bm = 16, 32, 64 (by = 16, 8, 4); TL2 with a 64-column tail, with a 32-column tail, without tail
TL1_CASES = [
    (64, 128, TL1.Tiling(32, 64, 32)),
    (128, 256, TL1.Tiling(64, 128, 64)),
    (96, 96, TL1.Tiling(48, 32, 16)),
]
TL2_CASES = [
    (64, 256, TL2.Tiling(32, 96, 32)),  # three_k = 192, two_k = 64
    (64, 320, TL2.Tiling(64, 96, 32)),  # three_k = 288, two_k = 32
    (32, 288, TL2.Tiling(32, 96, 32)),  # three_k = 288, two_k = 0
    (64, 256, TL2.Tiling(32, 192, 32)),  # BK = 192: the largest shipped TL2 block
]


# ---------------------------------------------------------------------------------------------------------------------
# numpy twins


def twin_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, s, act_sum) of the TL preprocessing: s = f32(127) / max|x| in f32, q = rint(f32(x·s)); q = 0, s = inf where
    the quotient is not finite."""
    amax = np.abs(x).max(axis=1)
    with np.errstate(divide="ignore", over="ignore"):
        s = F32(127) / amax
    assert s.dtype == F32
    ok = np.isfinite(s)
    q = np.zeros(x.shape, np.int8)
    q[ok] = np.rint(x[ok] * s[ok, None]).astype(np.int8)
    s = np.where(ok, s, F32(np.inf)).astype(F32)
    return q, s, q.astype(np.int32).sum(axis=1, dtype=np.int32)


def wrap16(a: np.ndarray) -> np.ndarray:
    """Two's-complement int16 value of int64 sums."""
    return (a + 32768) % 65536 - 32768


def block_sums(t: np.ndarray, q: np.ndarray, block: int) -> np.ndarray:
    """int16-wrapped per-block sums of t·q: (T, M, K / block) for t (M, K), q (T, K)."""
    prod = q.astype(np.int64)[:, None, :] * t.astype(np.int64)[None, :, :]
    T, M, K = prod.shape
    return wrap16(prod.reshape(T, M, K // block, block).sum(axis=-1))


def twin_epilogue(c: np.ndarray, s: np.ndarray, scale: float) -> np.ndarray:
    """f32(f32(f32(int32 C) / s) · scale), per token row of C (T, M)."""
    y = c.astype(np.int32).astype(F32) / s[:, None]
    assert y.dtype == F32
    return (y * F32(scale)).astype(F32)


def twin_tl1(w: np.ndarray, M: int, K: int, tiling: TL1.Tiling, q: np.ndarray, s: np.ndarray, scale: float):
    """TL1 product from the decoded ternary matrix: int16 sums per BK block, int32 over blocks, f32 epilogue."""
    t = TL1.ternary(w, (K, M), tiling)
    return twin_epilogue(block_sums(t, q, tiling.BK).sum(axis=-1), s, scale)


def twin_tl2(w: np.ndarray, M: int, K: int, tiling: TL2.Tiling, q: np.ndarray, s: np.ndarray, scale: float):
    """TL2 product: int16 sums per BK block of the three part and per 32-column tail block, then the f32 epilogue."""
    t = TL2.ternary(w, (K, M), tiling)
    three_k, _ = tiling.split(K)
    c_three = block_sums(t[:, :three_k], q[:, :three_k], tiling.BK).sum(axis=-1)
    c_two = block_sums(t[:, three_k:], q[:, three_k:], TL2.TAIL_BK).sum(axis=-1)
    return twin_epilogue(c_three + c_two, s, scale)


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def weights(kind: str, M: int, K: int, rng: np.random.Generator) -> np.ndarray:
    """int8 ternary (M, K) of a named pattern."""
    if kind == "random":
        return rng.integers(-1, 2, (M, K)).astype(np.int8)
    if kind in ("minus", "zero", "plus"):
        return np.full((M, K), {"minus": -1, "zero": 0, "plus": 1}[kind], np.int8)
    t = rng.integers(-1, 2, (M, K)).astype(np.int8)  # "zero_rows": every third row and the last row zero
    t[::3] = 0
    t[-1] = 0
    return t


def activations(kind: str, T: int, K: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """int8 q (T, K) and f32 lut scales s (T,) of a named pattern ('random' goes through quantize_lut_rows)."""
    s = rng.uniform(0.5, 50, T).astype(F32)
    if kind == "random":
        x = (rng.standard_normal((T, K)) * rng.uniform(0.01, 20, (T, 1))).astype(F32)
        q, s, act_sum = np.empty((T, K), np.int8), np.empty(T, F32), np.empty(T, np.int32)
        actquant.quantize_lut_rows(x, q, s, act_sum)
        return q, s
    if kind == "alternating":
        return np.where(np.arange(T * K).reshape(T, K) % 3 == 1, -127, 127).astype(np.int8), s
    return np.full((T, K), {"max": 127, "min": -127, "int8_min": -128}[kind], np.int8), s


def run_tl1(w, M, K, tiling, q, s, scale=SCALE):
    out = np.full((q.shape[0], M), np.nan, F32)
    lut.check_tl("tl1", w, M, K, tiling, q, s, out)
    lut.matmul_tl1(w, M, K, tiling.BM, tiling.BK, tiling.bm, q, s, scale, out)
    return out


def run_tl2(w, M, K, tiling, q, s, scale=SCALE):
    out = np.full((q.shape[0], M), np.nan, F32)
    lut.check_tl("tl2", w, M, K, tiling, q, s, out)
    lut.matmul_tl2(w, M, K, tiling.BM, tiling.BK, tiling.bm, q, s, scale, out)
    return out


def exact(t: np.ndarray, q: np.ndarray, s: np.ndarray, scale: float = SCALE) -> np.ndarray:
    """Epilogue of the exact ternary dot Σ t·q (no int16 wrap)."""
    return twin_epilogue(q.astype(np.int64) @ t.astype(np.int64).T, s, scale)


# ---------------------------------------------------------------------------------------------------------------------
# quantize_lut_rows


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    T, K = x.shape
    q, s, act_sum = np.full((T, K), 99, np.int8), np.full(T, np.nan, F32), np.full(T, -1, np.int32)
    actquant.quantize_lut_rows(x, q, s, act_sum)
    return q, s, act_sum


@pytest.mark.parametrize("T", [1, 3, 11])  # 11 > SERIAL_ROWS: the parallel path
def test_quantize_matches_twin(T):
    rng = np.random.default_rng(T)
    x = (rng.standard_normal((T, 320)) * 10.0 ** rng.uniform(-30, 30, (T, 1))).astype(F32)
    x[0, 5] = -np.abs(x[0]).max() * 2  # a negative maximum
    q, s, act_sum = quantize(x)
    q2, s2, a2 = twin_quantize(x)
    np.testing.assert_array_equal(q, q2)
    assert s.tobytes() == s2.tobytes()
    np.testing.assert_array_equal(act_sum, a2)
    assert np.abs(q).max() == 127 and q.min() >= -127


def test_quantize_ties_round_half_even():
    # max|x| = 127 gives s = 1 exactly, 63.5 gives s = 2: every x·s below is exact, .5 ties round to even
    x = np.zeros((2, 16), F32)
    x[0, :10] = [127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 125.5, -126.5, 3.25]
    x[1, :8] = [-63.5, 0.25, 0.75, 1.25, -0.25, -0.75, 31.75, 62.75]
    q, s, act_sum = quantize(x)
    np.testing.assert_array_equal(s, F32([1, 2]))
    np.testing.assert_array_equal(q[0, :10], [127, 0, 2, 2, 0, -2, -2, 126, -126, 3])
    np.testing.assert_array_equal(q[1, :8], [-127, 0, 2, 2, 0, -2, 64, 126])
    np.testing.assert_array_equal(q[:, 10:], 0)
    np.testing.assert_array_equal(act_sum, q.astype(np.int32).sum(axis=1))
    q2, s2, a2 = twin_quantize(x)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_array_equal(act_sum, a2)


def test_quantize_zero_row_rule():
    # all-zero and -0.0 rows, and a row whose quotient 127/max overflows f32: q = 0, s = +inf
    x = np.ones((4, 64), F32)
    x[0] = 0
    x[1] = -0.0
    x[2] = 1e-38
    x[2, 3] = -2e-38
    q, s, act_sum = quantize(x)
    np.testing.assert_array_equal(q[:3], 0)
    assert np.all(np.isposinf(s[:3])) and s[3] == 127
    np.testing.assert_array_equal(act_sum, [0, 0, 0, 127 * 64])
    q2, s2, a2 = twin_quantize(x)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_array_equal(act_sum, a2)
    # such a row multiplies to +0, not NaN
    M, K, tiling = 32, 64, TL1.Tiling(32, 64, 32)
    w = TL1.encode_ternary(weights("random", M, K, np.random.default_rng(0)), tiling)
    out = run_tl1(w, M, K, tiling, q, s)
    assert not np.isnan(out).any()
    assert np.all(out[:3] == 0) and not np.signbit(out[:3]).any()


# ---------------------------------------------------------------------------------------------------------------------
# TL1 / TL2 products against the twins


@pytest.mark.parametrize("M, K, tiling", TL1_CASES)
@pytest.mark.parametrize("wkind", ["random", "minus", "zero", "plus", "zero_rows"])
@pytest.mark.parametrize("akind, T", [("random", 1), ("random", 3), ("max", 1), ("alternating", 3), ("min", 1)])
def test_tl1_matches_twin(M, K, tiling, wkind, akind, T):
    rng = np.random.default_rng(M + K + T)
    t = weights(wkind, M, K, rng)
    w = TL1.encode_ternary(t, tiling)
    q, s = activations(akind, T, K, rng)
    out = run_tl1(w, M, K, tiling, q, s)
    np.testing.assert_array_equal(out, twin_tl1(w, M, K, tiling, q, s, SCALE))
    np.testing.assert_array_equal(out, exact(t, q, s))  # 127·BK <= 32767: no int16 wrap, the exact ternary dot


@pytest.mark.parametrize("M, K, tiling", TL2_CASES)
@pytest.mark.parametrize("wkind", ["random", "minus", "zero", "plus", "zero_rows"])
@pytest.mark.parametrize("akind, T", [("random", 1), ("random", 3), ("max", 1), ("alternating", 3), ("min", 1)])
def test_tl2_matches_twin(M, K, tiling, wkind, akind, T):
    rng = np.random.default_rng(M + K + T)
    t = weights(wkind, M, K, rng)
    w = TL2.encode_ternary(t, tiling)
    q, s = activations(akind, T, K, rng)
    out = run_tl2(w, M, K, tiling, q, s)
    np.testing.assert_array_equal(out, twin_tl2(w, M, K, tiling, q, s, SCALE))
    np.testing.assert_array_equal(out, exact(t, q, s))  # 127·BK <= 32767: no int16 wrap, the exact ternary dot


@pytest.mark.parametrize("fmt", ["tl1", "tl2"])
def test_int8_min_activations(fmt):
    # q = -128 never comes out of quantize_lut_rows, but the int16 tables stay exact for any int8 input
    rng = np.random.default_rng(5)
    M, K, tiling = TL1_CASES[0] if fmt == "tl1" else TL2_CASES[1]
    fmt_cls, run, twin = (TL1, run_tl1, twin_tl1) if fmt == "tl1" else (TL2, run_tl2, twin_tl2)
    t = weights("random", M, K, rng)
    w = fmt_cls.encode_ternary(t, tiling)
    q, s = activations("int8_min", 2, K, rng)
    out = run(w, M, K, tiling, q, s)
    np.testing.assert_array_equal(out, twin(w, M, K, tiling, q, s, SCALE))
    np.testing.assert_array_equal(out, exact(t, q, s))


@pytest.mark.parametrize("fmt", ["tl1", "tl2"])
def test_tokens_are_independent(fmt):
    rng = np.random.default_rng(7)
    M, K, tiling = TL1_CASES[1] if fmt == "tl1" else TL2_CASES[0]
    fmt_cls, run = (TL1, run_tl1) if fmt == "tl1" else (TL2, run_tl2)
    w = fmt_cls.encode_ternary(weights("random", M, K, rng), tiling)
    q, s = activations("random", 3, K, rng)
    out = run(w, M, K, tiling, q, s)
    for i in range(3):
        np.testing.assert_array_equal(out[i : i + 1], run(w, M, K, tiling, q[i : i + 1], s[i : i + 1]))


def test_scale_is_rounded_to_f32():
    # a scale that is not an f32 (0.1) is rounded to f32 first, and the product is an f32 multiply
    rng = np.random.default_rng(11)
    M, K, tiling = TL1_CASES[0]
    w = TL1.encode_ternary(weights("random", M, K, rng), tiling)
    q, s = activations("random", 3, K, rng)
    out = run_tl1(w, M, K, tiling, q, s, 0.1)
    np.testing.assert_array_equal(out, twin_tl1(w, M, K, tiling, q, s, 0.1))
    y = twin_tl1(w, M, K, tiling, q, s, 1.0)  # f32(f32(C) / s)
    assert not np.array_equal(out, (y.astype(np.float64) * 0.1).astype(F32))  # an f64 scale would differ


# ---------------------------------------------------------------------------------------------------------------------
# int16 wrap-around inside one block (impossible for shipped configs; crafted here with large BK)


@pytest.mark.parametrize(
    "K, BK, wrapped",
    [
        (264, 264, 132 * 254 - 65536),  # 132 pairs of (+1,+1)·(127,127) = 33528 -> -32008
        (512, 512, 256 * 254 - 65536),  # 65024 -> -512
        (1024, 512, 2 * (256 * 254 - 65536)),  # two blocks, each wrapped
    ],
)
def test_tl1_int16_wrap(K, BK, wrapped):
    M, tiling = 32, TL1.Tiling(32, BK, 32)
    t = weights("plus", M, K, None)
    t[1::2] = -1  # odd rows: the negative wrap
    w = TL1.encode_ternary(t, tiling)
    q, s = activations("max", 2, K, np.random.default_rng(0))
    out = run_tl1(w, M, K, tiling, q, s)
    np.testing.assert_array_equal(out, twin_tl1(w, M, K, tiling, q, s, SCALE))
    c = np.where(np.arange(M) % 2 == 0, wrapped, -wrapped)
    np.testing.assert_array_equal(out, twin_epilogue(np.broadcast_to(c, (2, M)), s, SCALE))
    assert not np.array_equal(out, exact(t, q, s))


@pytest.mark.parametrize(
    "K, BK, wrapped",
    [
        (288, 288, 96 * 381 - 65536),  # 96 triples of (+,+,+)·(127,127,127) = 36576 -> -28960, no tail
        (320, 288, 96 * 381 - 65536 + 32 * 127),  # plus a 32-column tail (4064, no wrap)
    ],
)
def test_tl2_int16_wrap(K, BK, wrapped):
    M, tiling = 32, TL2.Tiling(32, BK, 32)
    t = weights("plus", M, K, None)
    t[1::2] = -1  # odd rows: sign bits set on every triple
    w = TL2.encode_ternary(t, tiling)
    q, s = activations("max", 2, K, np.random.default_rng(0))
    out = run_tl2(w, M, K, tiling, q, s)
    np.testing.assert_array_equal(out, twin_tl2(w, M, K, tiling, q, s, SCALE))
    c = np.where(np.arange(M) % 2 == 0, wrapped, -wrapped)
    np.testing.assert_array_equal(out, twin_epilogue(np.broadcast_to(c, (2, M)), s, SCALE))
    assert not np.array_equal(out, exact(t, q, s))


def test_largest_shipped_blocks_do_not_wrap():
    # TL1 BK = 128 (64 pairs · 254 = 16256) and TL2 BK = 192 (64 triples · 381 = 24384) at the extreme q = ±127
    for kind in ("max", "min"):
        M, K, tiling = 64, 256, TL1.Tiling(64, 128, 32)
        t = weights("plus", M, K, None)
        q, s = activations(kind, 1, K, np.random.default_rng(0))
        np.testing.assert_array_equal(run_tl1(TL1.encode_ternary(t, tiling), M, K, tiling, q, s), exact(t, q, s))
        M, K, tiling = TL2_CASES[3]
        t = weights("plus", M, K, None)
        q, s = activations(kind, 1, K, np.random.default_rng(0))
        np.testing.assert_array_equal(run_tl2(TL2.encode_ternary(t, tiling), M, K, tiling, q, s), exact(t, q, s))


def test_unused_codes_look_up_zero():
    # TL1 / tail pair codes 9..15 and TL2 magnitudes 14, 15 (never written by the converter) read table entries 0
    rng = np.random.default_rng(3)
    M, K, tiling = TL1_CASES[0]
    q, s = activations("random", 2, K, rng)
    out = run_tl1(np.full(M * K // 4, 0x9F, np.uint8), M, K, tiling, q, s)
    np.testing.assert_array_equal(out, 0)
    M, K, tiling = TL2_CASES[0]
    q, s = activations("random", 2, K, rng)
    w = rng.integers(0, 256, TL2.nbytes((K, M))).astype(np.uint8)  # random sign words
    three_k, two_k = tiling.split(K)
    w[: three_k * M // 6] = 0xEF
    tail = three_k * M // 6 + three_k * M // 24
    w[tail : tail + two_k * M // 4] = 0xAC
    out = run_tl2(w, M, K, tiling, q, s)
    np.testing.assert_array_equal(out, 0)


# ---------------------------------------------------------------------------------------------------------------------
# check_tl


def test_check_tl_rejects_bad_arguments():
    M, K, t1 = TL1_CASES[0]
    w1 = np.zeros(M * K // 4, np.uint8)
    M2, K2, t2 = TL2_CASES[0]
    w2 = np.zeros(TL2.nbytes((K2, M2)), np.uint8)
    q, s, out = np.zeros((2, K), np.int8), np.ones(2, F32), np.zeros((2, M), F32)
    lut.check_tl("tl1", w1, M, K, t1, q, s, out)
    lut.check_tl("tl2", w2, M2, K2, t2)
    bad = [
        (("tl3", w1, M, K, t1), "unknown format"),
        (("tl1", w1, M, K, t2), "TL1.Tiling"),
        (("tl1", w1, 0, K, t1), "positive"),
        (("tl1", w1, M, K, TL1.Tiling(32, 48, 32)), "does not fit"),  # 48 does not divide K = 128
        (("tl1", w1, M, K, TL1.Tiling(32, 64, 128)), "does not fit"),  # by = 2
        (("tl2", w2, M2, K2, TL2.Tiling(32, 100, 32)), "does not fit"),  # BK not a multiple of 24
        (("tl2", w2, M2, K2, TL2.Tiling(32, 72, 32)), "does not fit"),  # tail of 40 columns
        (("tl2", np.zeros(M2 * 224 // 4, np.uint8), M2, 224, TL2.Tiling(32, 96, 32)), "smaller than 256"),
        (("tl1", w1[:-1], M, K, t1), "bytes"),
        (("tl1", np.zeros(w1.size + 32, np.uint8), M, K, t1), "bytes"),
        (("tl2", w2[:-1], M2, K2, t2), "bytes"),
        (("tl1", w1.view(np.int8), M, K, t1), "uint8"),
        (("tl1", w1.reshape(M, -1), M, K, t1), "uint8"),
        (("tl1", w1, M, K, t1, q, s), "(q, s, out)"),
        (("tl1", w1, M, K, t1, q.astype(np.int16), s, out), " q:"),
        (("tl1", w1, M, K, t1, q, s[:1], out), " s:"),
        (("tl1", w1, M, K, t1, q, s, out[:, 1:]), " out:"),
        (("tl1", w1, M, K, t1, q[:, ::2], s, out), " q:"),
        (("tl1", w1, M, K, t1, q[0], s, out), "2-D"),
    ]
    for args, match in bad:
        with pytest.raises(FormatError, match=match.replace("(", r"\(").replace(")", r"\)")) as e:
            lut.check_tl(*args)
        assert "\n" not in str(e.value)
