"""Weight formats: bit-exact against gguf-py, hand-worked I2_S blocks, round trips and typed errors."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError
from bitnet_ref.formats import BF16, F16, F32, I2_S, I2_S_ARM, IQ2_S, Q8_0, REGISTRY, TERNARY_TYPES, TQ1_0, TQ2_0

M, K = 1024, 1024  # 1,048,576 values per bit-exact comparison
TQ_BLOCK = 256
TQ_FORMATS = {GQ.TQ1_0: TQ1_0, GQ.TQ2_0: TQ2_0}
F16_MAX = 65504.0


def assert_identical(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Same shape and the same bits (so -0.0 != 0.0 and NaN payloads count); name the first differing element."""
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    a = np.ascontiguousarray(ours).view(np.uint8 if ours.dtype == np.uint8 else np.uint32)
    b = np.ascontiguousarray(theirs).view(np.uint8 if theirs.dtype == np.uint8 else np.uint32)
    diff = np.argwhere(a != b)
    if diff.size:
        at = tuple(int(i) for i in diff[0])
        pytest.fail(f"{what}: {len(diff)} of {a.size} differ; first at {at}: {ours[at]!r} vs {theirs[at]!r}")


def ggml_shape(w: np.ndarray) -> tuple[int, ...]:
    """ne-order shape of a numpy array."""
    return tuple(reversed(w.shape))


def gguf_bytes(w: np.ndarray, qtype: GQ) -> np.ndarray:
    """gguf-py's encoding of w as flat uint8."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(gq.quantize(w, qtype)).view(np.uint8).reshape(-1)


def gguf_values(raw: np.ndarray, w_shape: tuple[int, ...], qtype: GQ) -> np.ndarray:
    """gguf-py's decoding of flat bytes into a numpy-order float32 array."""
    rows = raw.reshape(w_shape[0], -1)
    if qtype == GQ.F16:
        rows = rows.view(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        return gq.dequantize(rows, qtype).reshape(w_shape)


def ternary_blocks(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """int8 (m, k) ternary matrix whose 256-blocks cycle through: random, all 0, all -1, all +1, sparse, one +-1."""
    t = rng.integers(-1, 2, (m * k // TQ_BLOCK, TQ_BLOCK), dtype=np.int8)
    kind = np.arange(t.shape[0]) % 6
    t[kind == 1] = 0
    t[kind == 2] = -1
    t[kind == 3] = 1
    t[kind == 4] *= (rng.random((np.sum(kind == 4), TQ_BLOCK)) < 0.05).astype(np.int8)
    single = np.flatnonzero(kind == 5)
    t[single] = 0
    t[single, rng.integers(0, TQ_BLOCK, single.size)] = rng.choice(np.array([-1, 1], dtype=np.int8), single.size)
    return t.reshape(m, k)


def block_scales(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """f32 scale per block cycling through: f16-representable, not representable, negative of each, tiny, huge."""
    base = np.exp(rng.uniform(-9, 3, n_blocks)).astype(np.float32)
    kind = (np.arange(n_blocks) // 6) % 7  # not in step with the ternary kinds, so every pair occurs
    s = base.copy()
    s[kind == 0] = base[kind == 0].astype(np.float16).astype(np.float32)
    s[kind == 2] = -base[kind == 2].astype(np.float16).astype(np.float32)
    s[kind == 3] = -base[kind == 3]
    s[kind == 4] = rng.uniform(1e-8, 1e-5, np.sum(kind == 4))  # f16 subnormal or zero
    s[kind == 5] = rng.uniform(1e4, F16_MAX, np.sum(kind == 5))
    s[kind == 6] = np.float32(1.0)
    return s


@pytest.fixture(scope="module")
def ternary_times_scales() -> np.ndarray:
    """1M float32 values: ternary blocks of every kind times per-block scales of every kind."""
    rng = np.random.default_rng(20240601)
    t = ternary_blocks(rng, M, K).reshape(-1, TQ_BLOCK).astype(np.float32)
    return (t * block_scales(rng, t.shape[0])[:, None]).reshape(M, K)


@pytest.fixture(scope="module")
def random_floats() -> np.ndarray:
    """1M float32 values: normals with per-row magnitudes from 1e-6 to 1e4, plus exact rounding ties."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((M, K)) * np.exp(rng.uniform(-14, 9, (M, 1)))).astype(np.float32)
    q8_ties = rng.integers(-127, 127, (8, 32)).astype(np.float32) + np.float32(0.5)
    q8_ties[:, 0] = 127  # amax 127: d = 1, id = 1, so x*id = k + 0.5 exactly
    w[0, :256] = q8_ties.reshape(-1)
    w[1, :256] = np.tile(np.array([1.0, 0.5, -0.5, 0.25, -0.75, 0.0], np.float32), 43)[:256]  # TQ: x/amax = +-0.5
    w[2, :256] = 0
    return w


# --- F32, F16, BF16 -------------------------------------------------------------------------------------------


def special_floats(rng: np.random.Generator) -> np.ndarray:
    """1M float32 values from random bit patterns (every NaN, inf, subnormal) plus f16/bf16 rounding boundaries."""
    bits = rng.integers(0, 2**32, M * K, dtype=np.uint64).astype(np.uint32)
    halfway = np.arange(0, 2**16, dtype=np.uint32) << 16 | np.uint32(0x8000)  # bf16 ties
    bits[: halfway.size] = halfway
    f16_ties = (np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32).view(np.uint32)) + (1 << 12)
    bits[halfway.size : 2 * halfway.size] = f16_ties
    return bits.view(np.float32).reshape(M, K)


@pytest.mark.parametrize("fmt, qtype", [(F32, GQ.F32), (F16, GQ.F16), (BF16, GQ.BF16)], ids=["F32", "F16", "BF16"])
def test_float_formats_bit_exact_with_gguf(fmt, qtype) -> None:
    w = special_floats(np.random.default_rng(3))
    ours = fmt.encode(w)
    assert ours.dtype == np.uint8 and ours.size == fmt.nbytes(ggml_shape(w))
    assert_identical(ours, gguf_bytes(w, qtype), f"{qtype.name} encode")
    assert_identical(fmt.decode(ours, ggml_shape(w)), gguf_values(ours, w.shape, qtype), f"{qtype.name} decode")


def test_bf16_rounding_by_hand() -> None:
    u = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x7FC00001, 0x7F800001, 0xFF800000, 0x00000001], np.uint32)
    words = BF16.encode(u.view(np.float32)).view("<u2")
    # tie to even (down), tie to even (up), below half, quiet NaN kept, signalling NaN quietened, -inf, subnormal
    assert words.tolist() == [0x3F80, 0x3F82, 0x3F80, 0x7FC0, 0x7FC0, 0xFF80, 0x0000]


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32, allow_nan=True)))
def test_bf16_and_f16_match_gguf_on_any_float(w: np.ndarray) -> None:
    for fmt, qtype in ((BF16, GQ.BF16), (F16, GQ.F16)):
        assert_identical(fmt.encode(w), gguf_bytes(w, qtype), f"{qtype.name} encode")


def test_f32_decode_is_a_view_in_numpy_order() -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = F32.encode(w)
    out = F32.decode(raw, (4, 3))
    assert out.shape == (3, 4) and np.shares_memory(out, raw)
    assert_identical(out, w, "F32 round trip")
    assert F32.decode(F32.encode(w[0]), (4,)).shape == (4,)


# --- Q8_0, TQ1_0, TQ2_0 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [GQ.Q8_0, GQ.TQ1_0, GQ.TQ2_0], ids=lambda q: q.name)
@pytest.mark.parametrize("data", ["ternary_times_scales", "random_floats"])
def test_block_formats_bit_exact_with_gguf(qtype: GQ, data: str, request) -> None:
    w = request.getfixturevalue(data)
    fmt = {GQ.Q8_0: Q8_0, **TQ_FORMATS}[qtype]
    ours = fmt.encode(w)
    assert_identical(ours, gguf_bytes(w, qtype), f"{qtype.name} encode of {w.size} {data}")
    assert_identical(fmt.decode(ours, ggml_shape(w)), gguf_values(ours, w.shape, qtype), f"{qtype.name} decode")


@pytest.mark.parametrize(
    "fmt, qtype, d_bytes",
    [(Q8_0, GQ.Q8_0, Q8_0.D), (TQ1_0, GQ.TQ1_0, TQ1_0.D), (TQ2_0, GQ.TQ2_0, TQ2_0.D), (IQ2_S, GQ.IQ2_S, IQ2_S.D)],
    ids=["Q8_0", "TQ1_0", "TQ2_0", "IQ2_S"],
)
def test_decode_random_bytes_like_gguf(fmt, qtype: GQ, d_bytes: slice) -> None:
    rng = np.random.default_rng(11)
    rows, cols = 256, 4 * 256
    raw = rng.integers(0, 256, fmt.nbytes((cols, rows)), dtype=np.uint8)
    blocks = raw.reshape(-1, fmt.BLOCK_BYTES)
    d = (rng.standard_normal(blocks.shape[0]) * np.exp(rng.uniform(-12, 8, blocks.shape[0]))).astype(np.float16)
    blocks[:, d_bytes] = d.view(np.uint8).reshape(-1, 2)  # a finite d in every block
    ours = fmt.decode(raw, (cols, rows))
    assert_identical(ours, gguf_values(raw, (rows, cols), qtype), f"{qtype.name} decode of random bytes")


@pytest.mark.parametrize("fmt", [TQ1_0, TQ2_0], ids=["TQ1_0", "TQ2_0"])
@pytest.mark.parametrize("scale", [0.5, 0.0123, 1.0, 3.0e-6, 1e-8, 65504.0, 0.0])
def test_tq_encode_ternary_equals_encode_of_product(fmt, scale: float) -> None:
    t = ternary_blocks(np.random.default_rng(5), 32, 1024)
    s = np.float32(scale)
    raw = fmt.encode_ternary(t, scale)
    assert_identical(raw, fmt.encode(t.astype(np.float32) * s), f"encode_ternary(t, {scale})")
    stored = t if scale else np.zeros_like(t)  # a zero scale stores the all-zero tensor
    d = np.float32(np.float16(s))
    assert_identical(fmt.decode(raw, (1024, 32)), stored.astype(np.float32) * d, "decode = fp16(scale) * t")
    assert np.array_equal(fmt.ternary(raw, (1024, 32)), stored)
    nonzero = (stored.reshape(32, 4, TQ_BLOCK) != 0).any(axis=2)
    assert_identical(fmt.scales(raw, (1024, 32)), np.where(nonzero, d, np.float32(0)), "per-block d")


def test_tq2_0_block_by_hand() -> None:
    t = np.zeros((1, 256), dtype=np.int8)
    t[0, [0, 32, 64, 96]] = [1, -1, 1, -1]  # byte 0, groups 0..3 (bits 1-0, 3-2, 5-4, 7-6)
    t[0, 128 + 32 + 5] = 1  # half 1, group 1, lane 5: byte 32 + 5, bits 3-2
    raw = TQ2_0.encode_ternary(t, 1.0)
    qs = raw[TQ2_0.QS]
    assert qs[0] == (2 | 0 << 2 | 2 << 4 | 0 << 6)
    assert qs[37] == (1 | 2 << 2 | 1 << 4 | 1 << 6)
    assert np.all(np.delete(qs, [0, 37]) == 0x55)
    assert raw[TQ2_0.D].tolist() == [0x00, 0x3C]  # f16 1.0


def test_tq1_0_block_by_hand() -> None:
    t = np.zeros((1, 256), dtype=np.int8)
    t[0, [0, 32, 64, 96, 128]] = [1, 1, 1, 1, 1]  # all 5 trits of qs[0] are code 2
    t[0, 240 + 4 * 3 + 2] = -1  # qh[2], trit 3
    raw = TQ1_0.encode_ternary(t, 1.0)
    assert raw[0] == (256 * 242 + 242) // 243  # q = 2*(81+27+9+3+1)
    assert raw[1] == (256 * 121 + 242) // 243  # all trits code 1: q = 121
    assert raw[TQ1_0.QH][2] == (256 * (81 + 27 + 9 + 0) + 242) // 243
    assert np.array_equal(TQ1_0.ternary(raw, (256, 1)), t)


# --- IQ2_S ----------------------------------------------------------------------------------------------------


def test_iq2_s_grid_comes_from_gguf() -> None:
    assert IQ2_S.GRID.shape == (1024, 8)
    assert set(np.unique(IQ2_S.GRID).tolist()) == {8.0, 25.0, 43.0}


def test_iq2_s_block_by_hand() -> None:
    raw = np.zeros(IQ2_S.BLOCK_BYTES, dtype=np.uint8)
    raw[IQ2_S.D] = np.frombuffer(np.float16(2.0).tobytes(), np.uint8)
    raw[IQ2_S.QS][5] = 0x34  # ib 1, l 1
    raw[IQ2_S.QH][1] = 0b1100  # bits 8-9 of group l = 1: 3
    raw[IQ2_S.SCALES][1] = 0x73  # low nibble 3 for l < 2
    raw[IQ2_S.SIGNS][5] = 0b10000001  # negate j = 0 and j = 7
    w = IQ2_S.decode(raw, (256,))
    db = 2.0 * (0.5 + 3) * 0.25
    expected = db * IQ2_S.GRID[0x334] * np.array([-1, 1, 1, 1, 1, 1, 1, -1])
    assert_identical(w[40:48], expected.astype(np.float32), "ib 1, l 1")


# --- I2_S -----------------------------------------------------------------------------------------------------


def i2_s_codes(t: np.ndarray) -> np.ndarray:
    return (t + 1).astype(np.uint8)


def test_i2_s_x86_block_by_hand() -> None:
    # docs/FORMATS.md §3.1: byte p of a block holds elements p (bits 7-6), p+32 (5-4), p+64 (3-2), p+96 (1-0)
    t = np.zeros((2, 128), dtype=np.int8)
    t[0, :32], t[0, 64:96], t[0, 96:] = 1, -1, 1  # row 0 = block 0: codes 2, 1, 0, 2 in every byte
    t[1, 37] = 1  # block 1, element 37: byte 32 + 5, bits 5-4
    t[1, 127] = -1  # block 1, element 127: byte 32 + 31, bits 1-0
    raw = I2_S.encode_ternary(t, 0.5)
    assert raw.size == 2 * 128 // 4 + 32
    assert np.all(raw[:32] == (2 << 6 | 1 << 4 | 0 << 2 | 2))  # 0x92
    block1 = raw[32:64]
    assert block1[5] == (1 << 6 | 2 << 4 | 1 << 2 | 1)  # 0x65
    assert block1[31] == (1 << 6 | 1 << 4 | 1 << 2 | 0)  # 0x54
    assert np.all(np.delete(block1, [5, 31]) == 0x55)
    assert raw[64:68].tolist() == [0x00, 0x00, 0x00, 0x3F]  # f32 0.5, little-endian
    assert not raw[68:].any()
    assert I2_S.scales(raw, (128, 2)).tolist() == [0.5]
    assert_identical(I2_S.decode(raw, (128, 2)), t.astype(np.float32) * np.float32(0.5), "decode")


def test_i2_s_arm_block_by_hand() -> None:
    # docs/FORMATS.md §3.2: byte p of a 64-block holds elements p (7-6), p+16 (5-4), p+32 (3-2), p+48 (1-0)
    t = np.zeros((1, 128), dtype=np.int8)
    t[0, 37] = 1  # block 0, element 37 = 32 + 5: byte 5, bits 3-2
    t[0, 64 + 16] = -1  # block 1, element 16: byte 16 + 0, bits 5-4
    raw = I2_S_ARM.encode_ternary(t, 2.0)
    assert raw[5] == (1 << 6 | 1 << 4 | 2 << 2 | 1)  # 0x59
    assert raw[16] == (1 << 6 | 0 << 4 | 1 << 2 | 1)  # 0x45
    assert np.all(np.delete(raw[:32], [5, 16]) == 0x55)
    assert np.array_equal(I2_S_ARM.ternary(raw, (128, 1)), t)


def test_i2_s_matches_the_spec_reshape_chain() -> None:
    rng = np.random.default_rng(2)
    t = rng.integers(-1, 2, (24, 384), dtype=np.int8)
    raw = I2_S.encode_ternary(t, 1.5)
    q = raw[: t.size // 4].reshape(-1, 32)  # docs/FORMATS.md §3.1 decode recipe, verbatim
    code = (q[:, None, :] >> np.array([6, 4, 2, 0], dtype=np.uint8)[:, None]) & 3
    assert np.array_equal(code.reshape(24, 384).astype(np.int8) - 1, t)


def test_i2_s_code_3_decodes_to_zero() -> None:
    raw = I2_S.encode_ternary(np.ones((1, 128), dtype=np.int8), 1.0)
    raw[0] = 0xFF  # elements 0, 32, 64, 96 get code 3
    t = I2_S.ternary(raw, (128, 1))
    assert t[0, [0, 32, 64, 96]].tolist() == [0, 0, 0, 0] and t.sum() == 124


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 5),
    k_blocks=st.integers(1, 4),
    block=st.sampled_from(I2_S.BLOCKS),
    scale=st.floats(0, 1e6, width=32),
    seed=st.integers(0, 2**32 - 1),
)
def test_i2_s_round_trip(m: int, k_blocks: int, block: int, scale: float, seed: int) -> None:
    k = k_blocks * 128
    t = np.random.default_rng(seed).integers(-1, 2, (m, k), dtype=np.int8)
    layout = I2_S.with_block(block)
    raw = layout.encode_ternary(t, scale)
    assert raw.size == layout.nbytes((k, m))
    assert np.array_equal(layout.ternary(raw, (k, m)), t)
    assert_identical(layout.decode(raw, (k, m)), t.astype(np.float32) * np.float32(scale), "decode")


def test_i2_s_128_layout_read_as_64_is_wrong() -> None:
    t = np.random.default_rng(9).integers(-1, 2, (16, 256), dtype=np.int8)
    raw = I2_S.encode_ternary(t, 1.0)
    wrong = I2_S_ARM.ternary(raw, (256, 16))
    assert not np.array_equal(wrong, t)
    assert np.mean(wrong == t) < 0.6  # about a third of the elements agree by chance
    assert np.array_equal(np.sort(wrong, axis=None), np.sort(t, axis=None))  # same codes, scrambled order


# --- registry and errors --------------------------------------------------------------------------------------


def test_every_registered_format_decodes_and_ternary_formats_encode() -> None:
    for type_id, fmt in REGISTRY.items():
        assert fmt.TYPE == type_id and callable(fmt.decode) and callable(fmt.nbytes)
    for type_id in TERNARY_TYPES:
        assert callable(REGISTRY[type_id].encode_ternary) and callable(REGISTRY[type_id].ternary)
    for type_id in (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.TQ1_0, GGMLType.TQ2_0):
        assert callable(REGISTRY[type_id].encode)


ENCODERS = [F32, F16, BF16, Q8_0, TQ1_0, TQ2_0]
BLOCK_ENCODERS = [Q8_0, TQ1_0, TQ2_0]
DECODERS = [F32, F16, BF16, Q8_0, TQ1_0, TQ2_0, IQ2_S, I2_S]
TERNARY_ENCODERS = [TQ1_0, TQ2_0, I2_S]


@pytest.mark.parametrize("fmt", ENCODERS, ids=lambda f: f.TYPE.name)
def test_encode_rejects_wrong_dtype(fmt) -> None:
    with pytest.raises(FormatError, match="float64"):
        fmt.encode(np.zeros((2, 256), dtype=np.float64))


@pytest.mark.parametrize("fmt", BLOCK_ENCODERS, ids=lambda f: f.TYPE.name)
def test_encode_rejects_partial_blocks_and_non_finite(fmt) -> None:
    with pytest.raises(FormatError, match=r"\(2, 80\)"):
        fmt.encode(np.zeros((2, 80), dtype=np.float32))
    w = np.zeros((2, 256), dtype=np.float32)
    w[1, 7] = np.inf
    with pytest.raises(FormatError, match=r"inf at index \(1, 7\)"):
        fmt.encode(w)


@pytest.mark.parametrize("fmt", DECODERS, ids=lambda f: f.TYPE.name)
def test_decode_rejects_wrong_size_dtype_and_shape(fmt) -> None:
    shape = (256, 2)
    raw = np.zeros(fmt.nbytes(shape), dtype=np.uint8)
    with pytest.raises(FormatError, match=f"{raw.size - 1} bytes"):
        fmt.decode(raw[:-1], shape)
    with pytest.raises(FormatError, match="int8"):
        fmt.decode(raw.view(np.int8), shape)
    with pytest.raises(FormatError, match=r"\(256, 0\)"):
        fmt.decode(raw, (256, 0))


@pytest.mark.parametrize("fmt", [Q8_0, TQ1_0, TQ2_0, IQ2_S], ids=lambda f: f.TYPE.name)
def test_block_decode_rejects_ne0_not_a_multiple_of_the_block(fmt) -> None:
    with pytest.raises(FormatError, match="ne0 = 48"):
        fmt.decode(np.zeros(10 * fmt.BLOCK_BYTES, dtype=np.uint8), (48, 10 * fmt.BLOCK_ELEMS // 48 + 1))


@pytest.mark.parametrize("fmt", TERNARY_ENCODERS, ids=lambda f: f.TYPE.name)
def test_encode_ternary_rejects_bad_input(fmt) -> None:
    t = np.zeros((2, 256), dtype=np.int8)
    t[1, 3] = 2
    with pytest.raises(FormatError, match=r"value 2 at \[1, 3\]"):
        fmt.encode_ternary(t, 1.0)
    with pytest.raises(FormatError, match="int16"):
        fmt.encode_ternary(np.zeros((2, 256), dtype=np.int16), 1.0)
    with pytest.raises(FormatError, match=r"shape \(256,\)"):
        fmt.encode_ternary(np.zeros(256, dtype=np.int8), 1.0)
    with pytest.raises(FormatError, match="K = 96"):
        fmt.encode_ternary(np.zeros((2, 96), dtype=np.int8), 1.0)
    for scale in (-1.0, float("nan"), float("inf")):
        with pytest.raises(FormatError, match="scale"):
            fmt.encode_ternary(np.zeros((2, 256), dtype=np.int8), scale)


def test_i2_s_rejects_unknown_block_and_k_not_a_multiple() -> None:
    t = np.zeros((2, 192), dtype=np.int8)
    with pytest.raises(FormatError, match="block = 32"):
        I2_S.with_block(32).encode_ternary(np.zeros((2, 256), dtype=np.int8), 1.0)
    with pytest.raises(FormatError, match="K = 192"):
        I2_S.encode_ternary(t, 1.0)
    raw = I2_S_ARM.encode_ternary(t, 1.0)
    with pytest.raises(FormatError, match="K = 192"):
        I2_S.decode(raw, (192, 2))
    with pytest.raises(FormatError, match=r"shape \(192, 2, 1\)"):
        I2_S.decode(raw, (192, 2, 1))


def test_tq_scale_beyond_f16_is_rejected() -> None:
    with pytest.raises(FormatError, match="70000"):
        TQ2_0.encode_ternary(np.zeros((1, 256), dtype=np.int8), 70000.0)
