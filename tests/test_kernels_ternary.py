"""Ternary kernels and activation quantizers against plain numpy twins: integer paths and float epilogues exactly.

The twins decode the packed bytes straight from the layouts of docs/FORMATS.md §3.1 and §4, sum in int64 and redo every
float step in numpy float32 in the kernels' documented order (the FMA of the ggml profile exactly, with a round-to-odd
float64 sum). Outputs are compared with np.array_equal (so -0.0 == 0.0; no NaN is produced by these inputs).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from bitnet_ref.errors import FormatError
from bitnet_ref.kernels import actquant, intrinsics, scalar, ternary
from bitnet_ref.kernels.isa import ISA_NAMES, available_isas, host_features, isa_id

F32 = np.float32
ISAS = [isa_id(name) for name in available_isas()]
# (M, K, T): odd M, K = 256·odd (and 11 blocks: several tile calls of block pairs, one block left), T = 1, 2, 3, 5, 8
SHAPES = [(1, 256, 1), (17, 768, 2), (37, 1280, 3), (5, 512, 8), (3, 2816, 5)]


# ---------------------------------------------------------------------------------------------------------------------
# numpy twins: layouts


def f16_pairs(raw: np.ndarray) -> np.ndarray:
    """float32 values of little-endian f16 stored in the last axis (2 bytes)."""
    return np.ascontiguousarray(raw).view("<f2")[..., 0].astype(F32)


def trits(b: np.ndarray, n: int) -> np.ndarray:
    """Trits 0..n-1 of TQ1_0 bytes, stacked on a new axis -2: ((b·3^i mod 256)·3) >> 8."""
    b = b.astype(np.int64)[..., None, :]
    return ((b * 3 ** np.arange(n)[:, None]) % 256 * 3) >> 8


def codes_tq2_0(w: np.ndarray, M: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned codes (M, K) and block d (M, K/256) of TQ2_0 bytes."""
    blk = w[: M * K // 256 * 66].reshape(M, K // 256, 66)
    qs = blk[:, :, :64].reshape(M, K // 256, 2, 1, 32)
    codes = (qs >> np.array([0, 2, 4, 6]).reshape(4, 1)) & 3  # [m, b, half, field, byte] -> 128h + 32f + byte
    return codes.reshape(M, K).astype(np.int64), f16_pairs(blk[:, :, 64:66])


def codes_tq1_0(w: np.ndarray, M: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned codes (M, K) and block d (M, K/256) of TQ1_0 bytes."""
    blk = w[: M * K // 256 * 54].reshape(M, K // 256, 54)
    parts = [trits(blk[:, :, :32], 5), trits(blk[:, :, 32:48], 5), trits(blk[:, :, 48:52], 4)]
    codes = np.concatenate([p.reshape(M, K // 256, -1) for p in parts], axis=2)
    return codes.reshape(M, K), f16_pairs(blk[:, :, 52:54])


def codes_i2s(w: np.ndarray, M: int, K: int, block: int = 128) -> tuple[np.ndarray, np.float32]:
    """Unsigned codes (M, K) and the f32 scale of I2_S bytes (x86 128-element blocks, or ARM 64)."""
    q = w[: M * K // 4].reshape(-1, block // 4)
    codes = (q[:, None, :] >> np.array([6, 4, 2, 0]).reshape(4, 1)) & 3  # [block, g, p] -> B·block + (B/4)g + p
    return codes.reshape(M, K).astype(np.int64), w[M * K // 4 : M * K // 4 + 4].view("<f4")[0]


# ---------------------------------------------------------------------------------------------------------------------
# numpy twins: arithmetic


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 fma: exact product in f64, f64 sum rounded to odd, then to f32."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c = np.broadcast_to(c, p.shape).astype(np.float64)
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    fix = (err != 0) & ((s.view(np.int64) & 1) == 0)
    s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(F32)


def hsum8(a: np.ndarray) -> np.ndarray:
    """ggml hsum_float_8 over the last axis, float32."""
    return ((a[..., 4] + a[..., 0]) + (a[..., 6] + a[..., 2])) + ((a[..., 5] + a[..., 1]) + (a[..., 7] + a[..., 3]))


def twin_q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q8_K_ref in numpy."""
    T, K = x.shape
    xb = x.reshape(T, K // 256, 256)
    mx = np.take_along_axis(xb, np.abs(xb).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    zero = mx == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-127.0) / np.where(zero, F32(1), mx)
        qs = np.minimum(127, np.rint(iscale[..., None] * xb))
        d = F32(1.0) / iscale
    qs = np.where(zero[..., None], 0, qs).astype(np.int8)
    d = np.where(zero, F32(0), d).astype(F32)
    bsums = qs.astype(np.int64).reshape(T, K // 256, 16, 16).sum(-1).astype(np.int16)
    return qs.reshape(T, K), d, bsums.reshape(T, K // 16)


def twin_i8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bitnet.cpp quantize_row_i8_s in numpy."""
    amax = np.maximum(1e-5, np.abs(x.astype(np.float64)).max(axis=1))
    s = (127.0 / amax).astype(F32)
    q = np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8)
    return q, s, q.astype(np.int64).sum(1).astype(np.int32)


def twin_ggml(codes, dw, qs, dx, bsums) -> np.ndarray:
    """ggml x86 TQ vec_dot: 8 lanes per block, lane k = elements with (e mod 32) in [4k, 4k+3], fma, hsum8."""
    M, K = codes.shape
    T, nb = qs.shape[0], K // 256
    u = codes.reshape(M, nb, 8, 8, 4)
    q = qs.astype(np.int64).reshape(T, nb, 8, 8, 4)
    lanes = np.einsum("mbckj,tbckj->tmbk", u, q) - bsums.astype(np.int64).reshape(T, 1, nb, 8, 2).sum(-1)
    db = dx[:, None, :] * dw[None, :, :]  # f32 (T, M, nb)
    acc = np.zeros((T, M, 8), F32)
    for b in range(nb):
        acc = fma32(lanes[:, :, b, :].astype(F32), db[:, :, b, None], acc)
    return hsum8(acc)


def twin_d(fmt: str, scales, M: int, K: int) -> np.ndarray:
    """Block d (M, K/256) of the ggml twin: the TQ block ds, or for I2_S its TQ2_0 twin's f16(scale) everywhere."""
    if fmt.startswith("i2_s"):
        return np.full((M, K // 256), np.float16(scales), F32)
    return scales


def twin_tq_i8(codes, dw, q, s) -> np.ndarray:
    """bitnet TQ: per row, runs of consecutive blocks with equal d bits; D_run = Σ (u−1)·q over the run (exact);
    acc = Σ_runs f64(D_run)·f64(d_run) in f64, in block order; y = f32(acc) / s."""
    M, K = codes.shape
    T, nb = q.shape[0], K // 256
    D = np.einsum("mbe,tbe->tmb", (codes - 1).reshape(M, nb, 256), q.astype(np.int64).reshape(T, nb, 256))
    bits = dw.astype(np.float16).view(np.uint16)
    acc = np.zeros((T, M), np.float64)
    for m in range(M):
        b0 = 0
        while b0 < nb:
            b1 = b0 + 1
            while b1 < nb and bits[m, b1] == bits[m, b0]:
                b1 += 1
            acc[:, m] += D[:, m, b0:b1].sum(1).astype(np.float64) * np.float64(dw[m, b0])
            b0 = b1
    return acc.astype(F32) / s[:, None]


def twin_i2s(codes, scale, q, s, act_sum) -> np.ndarray:
    """bitnet.cpp I2_S: ((float)sumi − (float)act_sum) / s · scale in f32, sumi = Σ code·q."""
    sumi = q.astype(np.int64) @ codes.T  # (T, M)
    return (sumi.astype(F32) - act_sum.astype(F32)[:, None]) / s[:, None] * scale


# ---------------------------------------------------------------------------------------------------------------------
# inputs


def readonly(a: np.ndarray) -> np.ndarray:
    """The weights as the engine passes them: a read-only view (like a memmap opened 'r')."""
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def f16_bytes(v: np.ndarray) -> np.ndarray:
    """Little-endian f16 bytes of v, on a new last axis of 2."""
    return np.asarray(v, dtype="<f2").reshape(*np.shape(v), 1).view(np.uint8)


def special_codes(rng, M: int, K: int) -> np.ndarray:
    """Unsigned codes (M, K) in {0,1,2}: random rows, with whole blocks of all 0 / all 1 / all 2 codes."""
    codes = rng.integers(0, 3, (M, K // 256, 256))
    for b in range(K // 256):
        codes[(b * 5) % M, b, :] = b % 3
    if M > 2:
        codes[1] = 1  # an all-zero weight row
    return codes.reshape(M, K)


def block_ds(rng, M: int, nb: int) -> np.ndarray:
    """f16 block scales: absmax-like positives, some zero, negative and subnormal ones; rows 4i and 4i+1 have one d for
    all their blocks (one run, as converters write: the kernels' row-pair path), row 3 (M > 3) one d except for a
    zero block."""
    d = rng.uniform(0.001, 2.0, (M, nb)).astype(np.float16)
    d.flat[:: max(1, d.size // 3)] = 0
    d.flat[1::7] = -0.25
    d.flat[2::11] = np.float16(3e-7)  # subnormal
    one = np.arange(M) % 4 < 2
    d[one] = d[one, :1]
    if M > 3 and nb > 2:
        d[3] = d[3, 0] if d[3, 0] != 0 else np.float16(0.5)
        d[3, 1] = 0
    return d


def pack_tq2_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """TQ2_0 bytes from codes (M, K) and f16 d (M, K/256): qs[32h + m] holds 128h + 32f + m at bits 2f."""
    M, K = codes.shape
    c = codes.reshape(M, K // 256, 2, 4, 32).astype(np.uint8)
    qs = (c << np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)).sum(axis=3, dtype=np.uint8).reshape(M, K // 256, 64)
    return np.concatenate([qs, f16_bytes(d)], axis=2).reshape(-1)


def pack_tq1_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """TQ1_0 bytes from codes (M, K) and f16 d, with the reference encoder's byte = ceil(256·q/243)."""
    M, K = codes.shape
    c = codes.reshape(M, K // 256, 256).astype(np.int64)

    def bytes_of(t: np.ndarray, n: int) -> np.ndarray:  # t: [..., n, m] trits, trit 0 most significant
        q = (t * 3 ** np.arange(n - 1, -1, -1)[:, None]).sum(-2) * (3 ** (5 - n))
        return ((256 * q + 242) // 243).astype(np.uint8)

    qs0 = bytes_of(c[:, :, :160].reshape(M, -1, 5, 32), 5)
    qs1 = bytes_of(c[:, :, 160:240].reshape(M, -1, 5, 16), 5)
    qh = bytes_of(c[:, :, 240:].reshape(M, -1, 4, 4), 4)
    return np.concatenate([qs0, qs1, qh, f16_bytes(d)], axis=2).reshape(-1)


def pack_i2s(codes: np.ndarray, scale: float, block: int = 128) -> np.ndarray:
    """I2_S bytes from codes (M, K): byte (B/4)b + p holds Bb + p (bits 7-6), +B/4, +B/2, +3B/4; f32 scale; 28 zeros."""
    c = codes.reshape(-1, 4, block // 4).astype(np.uint8)
    packed = (c << np.array([6, 4, 2, 0], np.uint8).reshape(4, 1)).sum(axis=1, dtype=np.uint8).reshape(-1)
    return np.concatenate([packed, np.array([scale], "<f4").view(np.uint8), np.zeros(28, np.uint8)])


I2S_BLOCKS = {"i2_s": 128, "i2_s_arm": 64}


def activations(rng, T: int, K: int) -> np.ndarray:
    """float32 (T, K): normal rows with outliers, an all-zero block, an all-zero row (T > 2) and exact .5 ties."""
    x = rng.standard_normal((T, K)).astype(F32) * F32(3.0)
    x[:, 5] *= 40
    x[0, 256:512] = 0
    x[-1, :256] = np.arange(256, dtype=F32) * F32(0.5) - F32(63.5)  # half-integers -63.5 .. 64
    x[-1, 0] = F32(-127.0)  # Q8_K block 0: max = -127, iscale = 1, so the half-integers are exact rint ties
    if T > 2:
        x[1] = 0
    return x


def weights(fmt: str, rng, M: int, K: int, random_bytes: bool):
    """Packed bytes of `fmt` and the twin's (codes, scales); random_bytes also exercises code 3 and any byte."""
    nb = K // 256
    if fmt == "tq2_0":
        w = pack_tq2_0(special_codes(rng, M, K), block_ds(rng, M, nb))
        if random_bytes:
            w.reshape(M, nb, 66)[:, :, :64] = rng.integers(0, 256, (M, nb, 64))
        return readonly(w), codes_tq2_0(w, M, K)
    if fmt == "tq1_0":
        w = pack_tq1_0(special_codes(rng, M, K), block_ds(rng, M, nb))
        if random_bytes:
            w.reshape(M, nb, 54)[:, :, :52] = rng.integers(0, 256, (M, nb, 52))
        return readonly(w), codes_tq1_0(w, M, K)
    block = I2S_BLOCKS[fmt]
    w = pack_i2s(special_codes(rng, M, K), 0.7183, block)
    if random_bytes:
        w[: M * K // 4] = rng.integers(0, 256, M * K // 4)
    return readonly(w), codes_i2s(w, M, K, block)


# ---------------------------------------------------------------------------------------------------------------------
# tests: scalar helpers and activation quantization


@numba.njit(cache=True)
def _f16_all(out_hw, out_soft):
    for h in range(65536):
        out_hw[h] = intrinsics.f16_to_f32(h)
        out_soft[h] = intrinsics.f16_to_f32_soft(h)


def test_f16_to_f32_all_bit_patterns():
    """Both f16 decoders give numpy's bits for all 65536 patterns; F16C may quiet signaling NaNs (as ggml's does)."""
    hw, soft = np.empty(65536, F32), np.empty(65536, F32)
    _f16_all(hw, soft)
    want = np.arange(65536, dtype=np.uint16).view(np.float16).astype(F32)
    assert np.array_equal(soft.view(np.uint32), want.view(np.uint32))
    nan = np.isnan(want)
    assert np.array_equal(hw[~nan].view(np.uint32), want[~nan].view(np.uint32)) and np.isnan(hw[nan]).all()


@numba.njit(cache=True)
def _f16_encode(x, out_hw, out_soft):
    for i in range(x.size):
        out_hw[i] = intrinsics.f32_to_f16(x[i])
        out_soft[i] = intrinsics.f32_to_f16_soft(x[i])


def test_f32_to_f16_matches_numpy():
    """Both f16 encoders round like numpy's float16 cast (nearest even): every f16 value, the ties between neighbours
    and one f32 step either side of them, subnormals, the overflow edge, zeros, infinities; NaN gives the same NaN
    bits from both (quieted, as vcvtps2ph)."""
    f16 = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)  # +0 .. 65504, increasing
    ties = ((f16[:-1] + f16[1:]) / 2).astype(F32)  # exact in f32
    rng = np.random.default_rng(12)
    pos = np.concatenate(
        [
            f16.astype(F32),
            ties,
            np.nextafter(ties, F32(0)),
            np.nextafter(ties, F32(np.inf)),
            (rng.standard_normal(100_000) * 2.0 ** rng.integers(-30, 20, 100_000)).astype(F32),
            np.array([65519.99, 65520, 65536, 1e30, 1e-45, 2.0**-126, np.inf], F32),
        ]
    )
    x = np.concatenate([pos, -pos])
    hw, soft = np.empty(x.size, np.uint16), np.empty(x.size, np.uint16)
    _f16_encode(x, hw, soft)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(hw, want) and np.array_equal(soft, want)
    nans = np.array([0x7FC00000, 0x7F800001, 0xFFBFFFFF, 0x7FA5A000], np.uint32).view(F32)
    hw, soft = np.empty(4, np.uint16), np.empty(4, np.uint16)
    _f16_encode(nans, hw, soft)
    assert np.isnan(hw.view(np.float16)).all() and np.array_equal(hw, soft)


def test_round_f16_matches_numpy():
    """The f16 rounding (the I2_S twin's d; F16C or its portable fallback) equals numpy's float16 cast: normals,
    subnormals, exact ties, the overflow edge, zeros, infinities and NaN."""
    rng = np.random.default_rng(11)
    x = np.concatenate(
        [
            rng.standard_normal(200_000).astype(F32) * F32(3.0),
            (rng.standard_normal(50_000) * 2.0 ** rng.integers(-30, 17, 50_000)).astype(F32),
            np.arange(-4096, 4096, dtype=F32) * F32(2.0**-25),  # subnormal grid and its exact ties
            (np.arange(1024, 2048, dtype=F32) + F32(0.5)) * F32(2.0**-10),  # ties between normals
            np.array([65504, 65519.99, 65520, 65536, -65520, 0.0, -0.0, np.inf, -np.inf], F32),
        ]
    )
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(F32)
    got = np.array([scalar.round_f16(v) for v in x], F32)
    assert np.array_equal(got, want)
    assert np.isnan(scalar.round_f16(F32(np.nan)))
    assert np.array_equal(np.signbit(got), np.signbit(want))


def test_tq1_trit_rule():
    """The SIMD trit rule [p ≥ 86] + [p ≥ 171] equals docs/FORMATS.md §4's ((p·3^n mod 256)·3) >> 8 for every byte."""
    p = np.arange(256)
    assert np.array_equal((3 * p) >> 8, (p >= 86).astype(int) + (p >= 171))


def test_layouts_match_the_format_encoders():
    """The tests' packers agree with bitnet_ref.formats' encoders where those exist (same docs/FORMATS.md layouts)."""
    from bitnet_ref import formats

    rng = np.random.default_rng(0)
    t = rng.integers(-1, 2, (3, 512)).astype(np.int8)
    checked = 0
    for name, pack in (("tq2_0", pack_tq2_0), ("tq1_0", pack_tq1_0)):
        mod = formats.by_name(name)
        if hasattr(mod, "encode_ternary"):
            got = mod.encode_ternary(t, 0.5)
            want = pack(t.astype(np.int64) + 1, np.full((3, 2), 0.5, np.float16))
            assert np.array_equal(got, want), name
            checked += 1
    for layout in (formats.I2_S, formats.I2_S_ARM):
        want = pack_i2s(t.astype(np.int64) + 1, 0.5, layout.BLOCK_ELEMS)
        assert np.array_equal(layout.encode_ternary(t, 0.5), want), layout.NAME
        checked += 1
    assert checked == 4


@pytest.mark.parametrize("T,K", [(1, 256), (3, 768), (8, 1280), (13, 512)])  # serial up to 8 rows, then parallel
def test_quantize_q8_k_matches_ggml_reference(T, K):
    """Q8_K codes, d and bsums equal quantize_row_q8_K_ref, incl. zero blocks, half-even ties, negative maxima."""
    x = activations(np.random.default_rng(T), T, K)
    x[0, -256:] = -np.abs(x[0, -256:])  # a block whose max is negative: d > 0
    qs, d, bs = np.empty((T, K), np.int8), np.empty((T, K // 256), F32), np.empty((T, K // 16), np.int16)
    actquant.quantize_q8_k(x, qs, d, bs)
    want = twin_q8_k(x)
    assert np.array_equal(qs, want[0]) and np.array_equal(d, want[1]) and np.array_equal(bs, want[2])
    if K > 512:
        assert d[0, 1] == 0 and not qs[0, 256:512].any()


@pytest.mark.parametrize("T,K", [(1, 256), (3, 768), (8, 1280), (13, 512)])  # serial up to 8 rows, then parallel
def test_quantize_i8_rows_matches_bitnet_cpp(T, K):
    """Per-token absmax int8 equals quantize_row_i8_s, incl. a zero row (amax floor 1e-5) and exact ties."""
    x = activations(np.random.default_rng(10 + T), T, K)
    x[-1, :] = 0
    x[-1, :4] = [127.0, 0.5, 1.5, -2.5]  # s = 1: half-even ties
    q, s, a = np.empty((T, K), np.int8), np.empty(T, F32), np.empty(T, np.int32)
    actquant.quantize_i8_rows(x, q, s, a)
    want = twin_i8(x)
    assert np.array_equal(q, want[0]) and np.array_equal(s, want[1]) and np.array_equal(a, want[2])
    assert list(q[-1, :4]) == [127, 0, 2, -2]


# ---------------------------------------------------------------------------------------------------------------------
# tests: ternary products


def run_kernel(fmt: str, act: str, w, M: int, K: int, acts, isa: int, runs=None) -> np.ndarray:
    """Call matmul_<fmt>_<act> after the argument checks (with the TQ rows' one-run flags where given); returns out
    (T, M)."""
    out = np.full((acts[0].shape[0], M), np.nan, F32)
    ternary.check_matmul(fmt, act, w, M, K, *acts, out)
    fn = getattr(ternary, f"matmul_{fmt}_{act}".replace("i2_s", "i2s"))
    fn(w, M, K, *acts, out, isa, **({} if runs is None else {"runs": runs}))
    return out


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Exact equality, reporting the worst element."""
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        t, m = bad[0]
        raise AssertionError(
            f"{what}: {len(bad)} outputs differ; first (t={t}, m={m}): {got[t, m]!r} != {want[t, m]!r}"
        )


@pytest.mark.parametrize("fmt", ["tq2_0", "tq1_0", "i2_s", "i2_s_arm"])
@pytest.mark.parametrize("M,K,T", SHAPES)
def test_ggml_profile_matches_x86_lane_twin(fmt, M, K, T):
    """matmul_<fmt>_q8k equals the 8-lane AVX2 vec_dot twin on every ISA path, canonical and random bytes (I2_S:
    the TQ2_0 twin's product, d = f16(scale); the test scale 0.7183 is not f16-exact, so the rounding is seen)."""
    rng = np.random.default_rng(M * K + T)
    x = activations(rng, T, K)
    acts = twin_q8_k(x)
    for random_bytes in (False, True):
        w, (codes, scales) = weights(fmt, rng, M, K, random_bytes)
        want = twin_ggml(codes, twin_d(fmt, scales, M, K), *acts)
        for isa in ISAS:
            assert_same(run_kernel(fmt, "q8k", w, M, K, acts, isa), want, f"{fmt} q8k {ISA_NAMES[isa]} {M}x{K} T={T}")


@pytest.mark.parametrize("fmt", ["tq2_0", "tq1_0", "i2_s", "i2_s_arm"])
@pytest.mark.parametrize("M,K,T", SHAPES)
def test_bitnet_profile_matches_twin(fmt, M, K, T):
    """matmul_<fmt>_i8 equals the exact integer dot and the documented f32 epilogue on every ISA path."""
    rng = np.random.default_rng(M * K + T + 1)
    x = activations(rng, T, K)
    acts = twin_i8(x)
    q, s, act_sum = acts
    for random_bytes in (False, True):
        w, (codes, scales) = weights(fmt, rng, M, K, random_bytes)
        if fmt.startswith("i2_s"):
            want = twin_i2s(codes, scales, q, s, act_sum)
        else:
            want = twin_tq_i8(codes, scales, q, s)
        for isa in ISAS:
            assert_same(run_kernel(fmt, "i8", w, M, K, acts, isa), want, f"{fmt} i8 {ISA_NAMES[isa]} {M}x{K} T={T}")
            if fmt.startswith("tq"):  # with the one-run flags read at load time, as the engine calls it
                got = run_kernel(fmt, "i8", w, M, K, acts, isa, ternary.one_run_rows(fmt, w, M, K))
                assert_same(got, want, f"{fmt} i8 {ISA_NAMES[isa]} {M}x{K} T={T} runs")


@pytest.mark.parametrize("fmt", ["tq2_0", "tq1_0"])
def test_one_run_rows_flags_rows_of_one_d(fmt):
    """one_run_rows is 1 exactly where every block of the row has the same f16 d bits (-0.0 and +0.0 differ)."""
    rng = np.random.default_rng(11)
    M, K = 9, 1024
    d = block_ds(rng, M, K // 256)
    d[5] = np.float16(0.0)
    d[5, 2] = np.float16(-0.0)  # equal as floats, not as bits: two runs
    d[6] = np.float16(0.0)
    codes = special_codes(rng, M, K)
    w = readonly(pack_tq2_0(codes, d) if fmt == "tq2_0" else pack_tq1_0(codes, d))
    bits = d.view(np.uint16)
    want = (bits == bits[:, :1]).all(axis=1).astype(np.uint8)
    assert want.tolist()[:2] == [1, 1] and want[3] == 0 and want[5] == 0 and want[6] == 1
    assert ternary.one_run_rows(fmt, w, M, K).tolist() == want.tolist()


def test_one_run_rows_rejects_formats_without_block_d():
    with pytest.raises(FormatError, match="one_run_rows: 'i2_s'"):
        ternary.one_run_rows("i2_s", np.zeros(1024, np.uint8), 4, 256)


def test_i2s_odd_block_count():
    """I2_S rows of K = 128·odd (not a multiple of 256) work on every path."""
    rng = np.random.default_rng(7)
    M, K, T = 9, 384, 2
    codes = rng.integers(0, 3, (M, K))
    w = readonly(pack_i2s(codes, 1.5))
    acts = twin_i8(activations(rng, T, K))
    want = twin_i2s(codes, F32(1.5), *acts)
    for isa in ISAS:
        assert_same(run_kernel("i2_s", "i8", w, M, K, acts, isa), want, f"i2_s {ISA_NAMES[isa]}")


def test_results_do_not_depend_on_thread_count():
    """1 and 2 threads give identical outputs (every output is one thread's fixed-order sum)."""
    rng = np.random.default_rng(3)
    M, K, T = 37, 768, 3
    x = activations(rng, T, K)
    before = numba.get_num_threads()
    try:
        q8k, i8 = twin_q8_k(x), twin_i8(x)
        for fmt, act, acts in (("tq2_0", "q8k", q8k), ("tq1_0", "i8", i8), ("i2_s", "i8", i8), ("i2_s", "q8k", q8k)):
            w, _ = weights(fmt, rng, M, K, True)
            for isa in ISAS:
                outs = []
                for n in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                    numba.set_num_threads(n)
                    outs.append(run_kernel(fmt, act, w, M, K, acts, isa))
                    outs.append(run_kernel(fmt, act, w, M, K, tuple(a[:1] for a in acts), isa))
                assert_same(outs[0], outs[2], f"{fmt} {act} threads T={T}")
                assert_same(outs[1], outs[3], f"{fmt} {act} threads T=1")
    finally:
        numba.set_num_threads(before)


def test_prefill_equals_row_by_row_decode():
    """A T-row product equals T one-row products (packed decode path vs decoded-codes prefill path)."""
    rng = np.random.default_rng(4)
    M, K, T = 17, 512, 6  # one group of 4 tokens, then 2 single tokens
    x = activations(rng, T, K)
    q8k, i8 = twin_q8_k(x), twin_i8(x)
    cases = (("tq2_0", "q8k", q8k), ("tq1_0", "q8k", q8k), ("i2_s", "q8k", q8k))
    cases += (("tq2_0", "i8", i8), ("i2_s", "i8", i8))
    for fmt, act, acts in cases:
        w, _ = weights(fmt, rng, M, K, False)
        for isa in ISAS:
            full = run_kernel(fmt, act, w, M, K, acts, isa)
            rows = np.concatenate(
                [run_kernel(fmt, act, w, M, K, tuple(a[t : t + 1] for a in acts), isa) for t in range(T)]
            )
            assert_same(full, rows, f"{fmt} {act} {ISA_NAMES[isa]}")


def test_default_isa_is_reported():
    """kernel_isa() names the default path, which the host can run; kernels called without isa use it."""
    assert ternary.kernel_isa() in available_isas()
    rng = np.random.default_rng(5)
    w, (codes, scale) = weights("i2_s", rng, 3, 256, False)
    acts = twin_i8(activations(rng, 1, 256))
    out = np.empty((1, 3), F32)
    ternary.matmul_i2s_i8(w, 3, 256, *acts, out)
    assert_same(out, twin_i2s(codes, scale, *acts), "default isa")


@pytest.mark.parametrize(
    "fmt,M,K,nbytes",
    [
        ("tq2_0", 2, 384, 2 * 66),
        ("tq1_0", 2, 256, 53),
        ("i2_s", 2, 200, 132),
        ("tq2_0", 0, 256, 0),
        ("iq2_s", 1, 256, 99),
    ],
)
def test_check_weight_rejects_bad_shapes(fmt, M, K, nbytes):
    """K not a multiple of the block, too few bytes, no rows or an unknown format raise FormatError."""
    with pytest.raises(FormatError):
        ternary.check_weight(fmt, np.zeros(nbytes, np.uint8), M, K)


def test_check_matmul_rejects_bad_activations():
    """Wrong dtype, shape or a missing array raise FormatError naming the kernel."""
    w = np.zeros(66 * 2, np.uint8)
    q, s, a = np.zeros((1, 256), np.int8), np.zeros(1, F32), np.zeros(1, np.int32)
    ternary.check_matmul("tq2_0", "i8", w, 2, 256, q, s, a, np.zeros((1, 2), F32))
    for bad in ((q.astype(np.int16), s, a), (q, s.astype(np.float64), a), (q, s, a[:0]), (q, s)):
        with pytest.raises(FormatError):
            ternary.check_matmul("tq2_0", "i8", w, 2, 256, *bad, np.zeros((1, 2), F32))
    with pytest.raises(FormatError):
        ternary.check_matmul("tq2_0", "i8", w, 2, 256, q, s, a, np.zeros((2, 1), F32))
    with pytest.raises(FormatError):
        ternary.check_matmul("i2_s", "q8k", w, 2, 256, q, s, a, np.zeros((1, 2), F32))
    w384 = np.zeros(2 * 384 // 4 + 4, np.uint8)
    q384, d, bsums = np.zeros((1, 384), np.int8), np.zeros((1, 1), F32), np.zeros((1, 24), np.int16)
    with pytest.raises(FormatError, match="K must be a positive multiple of 256"):
        ternary.check_matmul("i2_s", "q8k", w384, 2, 384, q384, d, bsums, np.zeros((1, 2), F32))


# ---------------------------------------------------------------------------------------------------------------------
# other hosts: compiled in a subprocess with a different target (NUMBA_CPU_FEATURES), each with its own cache

_VNNI_COMPILE = """
from numba import types as ty
from bitnet_ref.kernels import ternary
ro, i8, f1, i1 = ty.Array(ty.uint8, 1, "C", readonly=True), ty.Array(ty.int8, 2, "C"), ty.float32[::1], ty.int32[::1]
f2, i16, n = ty.Array(ty.float32, 2, "C"), ty.Array(ty.int16, 2, "C"), ty.int64
i2s = (ternary.matmul_i2s_i8, (ro, n, n, i8, f1, i1, f2, n))
tq2 = (ternary.matmul_tq2_0_q8k, (ro, n, n, i8, f2, i16, f2, n))
i2s_q8k = (ternary.matmul_i2s_q8k, (ro, n, n, i8, f2, i16, f2, n))
for fn, sig in (i2s, tq2, i2s_q8k):
    fn.compile(sig)
    print(fn.__name__, ternary.kernel_isa(), fn.inspect_asm(sig).count("vpdpbusd"))
"""

_GENERIC_RUN = """
import sys
import numpy as np
sys.path.insert(0, "tests")
import test_kernels_ternary as tk
rng = np.random.default_rng(0)
M, K, T = 17, 512, 6
x = tk.activations(rng, T, K)
for fmt, act in (("tq2_0", "q8k"), ("tq1_0", "q8k"), ("i2_s", "q8k"), ("tq2_0", "i8"), ("i2_s", "i8")):
    acts = tk.twin_q8_k(x) if act == "q8k" else tk.twin_i8(x)
    w, (codes, sc) = tk.weights(fmt, rng, M, K, True)
    if act == "q8k":
        want = tk.twin_ggml(codes, tk.twin_d(fmt, sc, M, K), *acts)
    else:
        want = tk.twin_i2s(codes, sc, *acts) if fmt == "i2_s" else tk.twin_tq_i8(codes, sc, *acts[:2])
    tk.assert_same(tk.run_kernel(fmt, act, w, M, K, acts, 1), want, fmt + " " + act + " generic IR")
print("ok")
"""


def _run_with_features(tmp_path, code: str, edit) -> str:
    """Run `code` in a fresh interpreter whose numba targets the host features changed by `edit`."""
    import os
    import subprocess
    import sys

    from numba.core.codegen import get_host_cpu_features

    env = dict(os.environ, NUMBA_CPU_FEATURES=edit(get_host_cpu_features()), NUMBA_CACHE_DIR=str(tmp_path))
    env["NUMBA_CPU_NAME"] = env.get("NUMBA_CPU_NAME") or "znver4"
    env.pop("BITNET_KERNEL_ISA", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif("avx2" not in host_features(), reason="x86-64 host with AVX2 only")
def test_vnni_path_compiles_to_vpdpbusd(tmp_path):
    """On an avx512_vnni target (compile only: this host may not run it) the default ISA is VNNI and uses vpdpbusd."""

    def enable(f: str) -> str:
        for feat in ("avx512f", "avx512bw", "avx512dq", "avx512cd", "avx512vl", "avx512vnni"):
            f = f.replace("-" + feat + ",", "+" + feat + ",")
        return f

    for line in _run_with_features(tmp_path, _VNNI_COMPILE, enable).splitlines():
        name, isa, count = line.split()
        assert isa == "avx512vnni" and int(count) > 0, line


@pytest.mark.slow
@pytest.mark.skipif("avx2" not in host_features(), reason="x86-64 host with AVX2 only")
def test_generic_ir_path_without_avx2_fma_f16c(tmp_path):
    """Forced onto a host without AVX2/FMA/F16C, the SIMD kernels' generic LLVM fallbacks still match the twins."""

    def disable(f: str) -> str:
        for feat in ("avx2", "fma", "f16c"):
            f = f.replace("+" + feat + ",", "-" + feat + ",")
        return f

    assert _run_with_features(tmp_path, _GENERIC_RUN, disable).strip().endswith("ok")
