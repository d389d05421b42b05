"""TL1 / TL2 layouts against an index-array replay of bitnet.cpp's converter reshape chains.

The converter (utils/convert-hf-to-gguf-bitnet.py: process_tl1, preprocess_three_weights_tl2,
preprocess_two_weights_tl2) lays bytes out by a chain of reshape/transpose steps. Here each chain is written as a table
of (shape, axes) steps and replayed on arrays of element indices, which says which pair / triple every nibble and sign
bit holds. The format classes compute the same positions from the loop formulas of docs/FORMATS.md §3.4; the tests check
that both give the same bytes and that decoding inverts them.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bitnet_ref.errors import FormatError
from bitnet_ref.formats import TL1, TL2

Steps = list[tuple[tuple[int, ...], tuple[int, ...] | None]]


def replay(a: np.ndarray, steps: Steps) -> np.ndarray:
    """Apply reshape (then transpose, when axes are given) steps in order."""
    for shape, axes in steps:
        a = a.reshape(shape)
        if axes is not None:
            a = a.transpose(axes)
    return a


def tile_steps(m: int, k_units: int, BM: int, BK_units: int, bm: int, by_units: int) -> Steps:
    """The steps shared by all three chains, on a (M, K/unit) array, ending at [tm, tk, sm, sk, row, unit]."""
    t = (m // BM, k_units // BK_units)
    return [
        ((m // BM, BM, k_units), (0, 2, 1)),
        ((*t, BK_units, BM), (0, 1, 3, 2)),
        ((*t, BM // bm, bm, BK_units), (0, 1, 2, 4, 3)),
        ((*t, BM // bm, BK_units // by_units, by_units, bm), (0, 1, 2, 3, 5, 4)),
    ]


def tl1_nibbles(m: int, k: int, tiling: TL1.Tiling) -> np.ndarray:
    """process_tl1 on pair indices: (M*K/4, 2) flat pair index of the high / low nibble of every byte."""
    BM, BK, bm, by = tiling.BM, tiling.BK, tiling.bm, tiling.by
    t = (m // BM, k // BK, BM // bm, BK // by)
    steps = tile_steps(m, k // 2, BM, BK // 2, bm, by // 2) + [
        ((*t, bm // 16, 16, by // 2), (0, 1, 2, 3, 4, 6, 5)),
        ((*t, bm // 16, by // 4, 2, 16), (0, 1, 2, 3, 4, 5, 7, 6)),
        ((m * k // 64, 16, 2), None),
    ]
    return replay(np.arange(m * k // 2).reshape(m, k // 2), steps).reshape(-1, 2)


def grouped_nibbles(m: int, k_units: int, BM: int, BK_units: int, by_units: int) -> np.ndarray:
    """The TL2 magnitude / tail chain on unit indices: (n_bytes, 2) with the converter's 32-row byte permutation."""
    bm = TL2.GROUP_ROWS
    a = replay(np.arange(m * k_units).reshape(m, k_units), tile_steps(m, k_units, BM, BK_units, bm, by_units))
    a = np.ascontiguousarray(a.transpose(0, 1, 2, 3, 5, 4)).reshape(-1, 2, bm // 8, 8)  # [group, nibble, run, 8]
    a = a[:, :, [0, 2, 1, 3], :]  # the converter swaps byte runs 1 and 2 of every 32-byte group
    return a.reshape(-1, 2, bm).transpose(0, 2, 1).reshape(-1, 2)


def tl2_sign_bits(m: int, three_k: int, tiling: TL2.Tiling) -> np.ndarray:
    """preprocess_three_weights_tl2's sign chain on triple indices: (n_words, 16 bits from bit 15 down)."""
    BM, BK, bm, by = tiling.BM, tiling.BK, tiling.bm, tiling.by
    units, BK_units = three_k // 3, BK // 3
    t = (m // BM, three_k // BK, BM // bm, BK // (by * 4))
    steps = tile_steps(m, units, BM, BK_units, bm, by // 3)[:3] + [
        ((*t, by // 3 * 4, bm), (0, 1, 2, 3, 5, 4)),
        ((*t, bm, by // 3 * 4), (0, 1, 2, 3, 5, 4)),
        ((*t, by // 3 * 8, bm // 2), None),
    ]
    a = replay(np.arange(m * units).reshape(m, units), steps)  # [..., bit i, word c]
    return np.ascontiguousarray(np.moveaxis(a, -1, -2)).reshape(-1, 16)


def pack_nibbles(codes: np.ndarray, nibbles: np.ndarray) -> np.ndarray:
    flat = codes.reshape(-1)
    return ((flat[nibbles[:, 0]] << 4) | flat[nibbles[:, 1]]).astype(np.uint8)


def tl1_reference(t: np.ndarray, tiling: TL1.Tiling) -> np.ndarray:
    """TL1 payload by the converter's rules: pair codes 3*t0 + t1 + 4 laid out by process_tl1."""
    m, k = t.shape
    idx = 3 * t[:, 0::2].astype(np.int64) + t[:, 1::2] + 4
    return pack_nibbles(idx, tl1_nibbles(m, k, tiling))


def tl2_reference(t: np.ndarray, tiling: TL2.Tiling) -> np.ndarray:
    """TL2 bytes by the converter's rules: magnitudes, sign words, tail pairs, zero padding to F."""
    m, k = t.shape
    three_k = k // tiling.BK * tiling.BK
    v = 9 * t[:, 0:three_k:3].astype(np.int64) + 3 * t[:, 1:three_k:3] + t[:, 2:three_k:3]
    mags = pack_nibbles(np.abs(v), grouped_nibbles(m, three_k // 3, tiling.BM, tiling.BK // 3, tiling.by // 3))
    bits = (v < 0).reshape(-1)[tl2_sign_bits(m, three_k, tiling)]
    words = (bits.astype(np.uint16) << np.arange(15, -1, -1, dtype=np.uint16)).sum(axis=1, dtype=np.uint16)
    tail = t[:, three_k:].astype(np.int64)
    idx = 3 * tail[:, 0::2] + tail[:, 1::2] + 4
    tails = pack_nibbles(idx, grouped_nibbles(m, (k - three_k) // 2, tiling.BM, TL2.TAIL_BK // 2, 2))
    payload = np.concatenate([mags, words.astype("<u2").view(np.uint8), tails])
    return np.pad(payload, (0, TL2.nbytes((k, m)) - payload.size))


def random_ternary(m: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, (m, k), dtype=np.int8)


TL1_CASES = [
    (64, 128, TL1.Tiling(32, 64, 32)),
    (128, 256, TL1.Tiling(64, 128, 64)),
    (96, 192, TL1.Tiling(48, 16, 16)),
    (3200, 3200, TL1.SETUP_ENV_3B[(3200, 3200)]),
]
TL2_CASES = [
    (64, 288, TL2.Tiling(32, 96, 32)),  # two_k = 0
    (64, 320, TL2.Tiling(64, 96, 32)),  # two_k = 32
    (96, 448, TL2.Tiling(96, 192, 32)),  # two_k = 64
    (3200, 3200, TL2.SETUP_ENV_3B[(3200, 3200)]),  # the checked-in kernel_config.ini: three_k 3168, two_k 32
]


@pytest.mark.parametrize("m, k, tiling", TL1_CASES, ids=str)
def test_tl1_matches_process_tl1(m: int, k: int, tiling: TL1.Tiling) -> None:
    t = random_ternary(m, k, seed=m + k)
    expected = tl1_reference(t, tiling)
    raw = TL1.encode_ternary(t, tiling)
    assert raw.size == TL1.nbytes((k, m)) == m * k // 4
    assert np.array_equal(raw, expected), f"first differing byte {np.argmax(raw != expected)}"
    assert np.array_equal(TL1.ternary(expected, (k, m), tiling), t)


@pytest.mark.parametrize("m, k, tiling", TL2_CASES, ids=str)
def test_tl2_matches_preprocess_weights_tl2(m: int, k: int, tiling: TL2.Tiling) -> None:
    t = random_ternary(m, k, seed=m * k)
    expected = tl2_reference(t, tiling)
    raw = TL2.encode_ternary(t, tiling)
    assert raw.size == TL2.nbytes((k, m))
    assert np.array_equal(raw, expected), f"first differing byte {np.argmax(raw != expected)}"
    assert np.array_equal(TL2.ternary(expected, (k, m), tiling), t)


def test_tl2_sign_bits_by_hand() -> None:
    # docs/FORMATS.md §3.4: bit 15-i of word c is the sign of triple i div 2 in row c + 16*(i mod 2)
    tiling = TL2.Tiling(32, 96, 32)
    t = np.zeros((32, 288), dtype=np.int8)
    t[17, 3 * 2] = -1  # row 17 = c 1 + 16, triple 2: i = 5 in word 1
    raw = TL2.encode_ternary(t, tiling)
    n_mag = 288 * 32 // 6
    words = raw[n_mag : n_mag + 288 * 32 // 24].view("<u2")
    assert words[1] == 1 << (15 - 5) and np.count_nonzero(words) == 1
    magnitudes = raw[:n_mag]
    # row 17 lives in byte 8 + 1 of its 32-byte group (bytes 8..15 hold rows 16..23); triple 2 = sk 1, high nibble
    assert magnitudes[32 * 1 + 9] == 9 << 4 and np.count_nonzero(magnitudes) == 1


def test_tl1_pair_code_by_hand() -> None:
    tiling = TL1.Tiling(16, 16, 16)  # by = 16: one step covers 16 rows x 16 columns
    t = np.zeros((16, 16), dtype=np.int8)
    t[3, 4:8] = [1, -1, 0, 1]  # pairs 2 and 3 of row 3: codes 6 and 5, byte kq = 1, r = 3
    raw = TL1.encode_ternary(t, tiling)
    assert raw[16 * 1 + 3] == (6 << 4 | 5)
    assert np.all(np.delete(raw, 19) == 0x44)


@settings(max_examples=25, deadline=None)
@given(
    bm=st.sampled_from([16, 32, 64]),
    bm_per_BM=st.integers(1, 3),
    tiles=st.integers(1, 3),
    by_per_BK=st.integers(1, 3),
    blocks=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_tl1_round_trip_any_tiling(bm: int, bm_per_BM: int, tiles: int, by_per_BK: int, blocks: int, seed: int) -> None:
    BM, BK = bm * bm_per_BM, (256 // bm) * by_per_BK
    m, k = BM * tiles, BK * blocks
    tiling = TL1.Tiling(BM, BK, bm)
    t = random_ternary(m, k, seed)
    raw = TL1.encode_ternary(t, tiling)
    assert np.array_equal(raw, tl1_reference(t, tiling))
    assert np.array_equal(TL1.decode(raw, (k, m), 0.5, tiling), t.astype(np.float32) * np.float32(0.5))


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(1, 3),
    tiles=st.integers(1, 2),
    bk24=st.integers(1, 12),
    blocks=st.integers(1, 4),
    tail_32=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_tl2_round_trip_any_tiling(groups: int, tiles: int, bk24: int, blocks: int, tail_32: int, seed: int) -> None:
    BM, BK = 32 * groups, 24 * bk24
    m, k = BM * tiles, BK * blocks + 32 * tail_32
    assume(tail_32 * 32 < BK and k >= 256)
    tiling = TL2.Tiling(BM, BK, 32)
    assume(tiling.payload_bytes(m, k) <= TL2.nbytes((k, m)))
    t = random_ternary(m, k, seed)
    raw = TL2.encode_ternary(t, tiling)
    assert np.array_equal(raw, tl2_reference(t, tiling))
    assert np.array_equal(TL2.decode(raw, (k, m), 2.0, tiling), t.astype(np.float32) * np.float32(2.0))


def test_tl_decoders_reject_codes_that_are_never_written() -> None:
    tiling1 = TL1.Tiling(32, 64, 32)
    raw = TL1.encode_ternary(np.zeros((32, 64), dtype=np.int8), tiling1)
    raw[0] = 0x94
    with pytest.raises(FormatError, match="pair code 9"):
        TL1.ternary(raw, (64, 32), tiling1)
    tiling2 = TL2.Tiling(32, 96, 32)
    raw = TL2.encode_ternary(np.zeros((32, 288), dtype=np.int8), tiling2)
    raw[0] = 0xE0
    with pytest.raises(FormatError, match="magnitude 14"):
        TL2.ternary(raw, (288, 32), tiling2)


def test_tl_tilings_are_checked() -> None:
    t = np.zeros((64, 256), dtype=np.int8)
    with pytest.raises(FormatError, match="bm \\| BM \\| M"):
        TL1.encode_ternary(t, TL1.Tiling(48, 64, 32))
    with pytest.raises(FormatError, match="16 \\| bm \\| 256"):
        TL1.encode_ternary(t, TL1.Tiling(48, 64, 24))
    with pytest.raises(FormatError, match="bm = 32"):
        TL2.encode_ternary(np.zeros((64, 288), dtype=np.int8), TL2.Tiling(64, 96, 64))
    with pytest.raises(FormatError, match="multiple of 32"):
        TL2.encode_ternary(np.zeros((64, 304), dtype=np.int8), TL2.Tiling(64, 96, 32))
    with pytest.raises(FormatError, match="value -2"):
        TL2.encode_ternary(np.full((64, 288), -2, dtype=np.int8), TL2.Tiling(64, 96, 32))
    with pytest.raises(FormatError, match="bytes given"):
        TL1.decode(np.zeros(10, dtype=np.uint8), (256, 64), 1.0, TL1.Tiling(64, 64, 32))


def test_setup_env_tilings_fit_their_shapes() -> None:
    for (m, k), tiling in TL1.SETUP_ENV_3B.items():
        tiling.check(m, k)
    for (m, k), tiling in TL2.SETUP_ENV_3B.items():
        tiling.check(m, k)
    assert (2560, 2560) not in TL2.SETUP_ENV_3B  # 2B-4T shapes have no setup_env tiling
