"""TL2 (bitnet.cpp type 39, x86 LUT kernels): column triples in 4+1 bits plus a 2-column tail; scale in `<name>_scale`.

Encoding: `t = sign(w)` (|w| < 1e-6 -> 0). With `three_k = (K div BK)*BK` and `two_k = K - three_k`:
- three part, columns `[0, three_k)`: triple u = columns (3u, 3u+1, 3u+2) gives `v = 9*t0 + 3*t1 + t2` in -13..13,
  stored as a 4-bit magnitude |v| and a sign bit (1 if v < 0);
- two part, columns `[three_k, K)`: pair code `idx = 3*t[2p] + t[2p+1] + 4` in 0..8, as in TL1.
Payload = magnitudes (three_k*M/6 bytes), then sign words (three_k*M/24), then the tail (two_k*M/4), zero-padded to the
converter's allocation `F = (K-256)*M//3*5//8 + 256*M//2*4//8` (= `nbytes`). Byte order (docs/FORMATS.md §3.4; the
converter's `preprocess_three_weights_tl2` / `preprocess_two_weights_tl2` are the ground truth), bm = 32, by = 6:
- magnitudes: loops `tm, tk < three_k/BK, sm < BM/32, sk < BK/6`, one 32-byte group each; byte b holds row
  `tm*BM + sm*32 + ROW_OF_BYTE[b]`, triples `tk*BK/3 + 2*sk` (high nibble) and `+1` (low nibble);
- signs: loops `tm, tk, sm, q < BK/24`, 16 little-endian u16 words c; bit 15-i of word c is the sign of triple
  `tk*BK/3 + 8q + i div 2` in row `tm*BM + sm*32 + c + 16*(i mod 2)`;
- tail (BK = 32, by = 4): loops `tm, tk < two_k/32, sm, sk < 8`, 32-byte groups; byte b holds row
  `tm*BM + sm*32 + ROW_OF_BYTE[b]`, pairs `tk*16 + 2*sk` (high nibble) and `+1` (low nibble) of the tail columns.

Facts that matter for 2B-4T:
- The magnitude is not in the payload: the converter writes `scale = max|w|` as a separate 1-element F32 tensor
  `<weight name>_scale` right after the weight (the fork reads it at `data + round_up(F, 32)`); readers pass it to
  `decode`.
- Nothing in the GGUF records (BM, BK, bm): they come from the build's `include/kernel_config.ini`, so the tiling is
  an explicit argument. `setup_env.py` maps 2B-4T to the bitnet_b1_58-3B shapes (SETUP_ENV_3B), not 2B-4T's real
  shapes (2560x2560, 640x2560, 6912x2560, 2560x6912), so no official TL2 file of 2B-4T can exist as written.
- Type id 39 is MXFP4 in mainline ggml; builds since bitnet.cpp 2fed9af (2026-01) set BITNET_X86_TL2=OFF.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitnet_ref.constants import FORK_FILE_TYPE_TL2, GGMLType
from bitnet_ref.errors import FormatError
from bitnet_ref.formats.base import Format

LUT_WIDTH = 192  # by * bm of the three part
GROUP_ROWS = 32  # bm: rows of one 32-byte group (TL2 requires bm = 32)
TAIL_BK = 32  # BK of the two part


@dataclass(frozen=True)
class Tiling:
    """TL2 tiling of one (M, K) weight: BM rows per tile (`bm` key), BK columns per LUT block (`bk`), bm (`bmm`)."""

    BM: int
    BK: int
    bm: int

    @property
    def by(self) -> int:
        """Columns per compute step of the three part: 192 / bm = 6 (two triples)."""
        return LUT_WIDTH // self.bm

    def check(self, m: int, k: int) -> None:
        """Raise FormatError unless this tiling divides an (M, K) weight the way the TL2 converter needs."""
        rules = (
            (lambda: self.bm == GROUP_ROWS, "bm = 32"),
            (lambda: self.BM > 0 and self.BM % GROUP_ROWS == 0 and m % self.BM == 0, "32 | BM | M"),
            (lambda: self.BK > 0 and self.BK % 24 == 0 and k >= self.BK, "24 | BK <= K (8 triples per sign word)"),
            (lambda: (k % self.BK) % TAIL_BK == 0, "K mod BK is a multiple of 32 (the two-column tail)"),
            (lambda: self.payload_bytes(m, k) <= TL2.nbytes((k, m)), "the payload fits the converter's allocation F"),
        )
        for ok, rule in rules:
            if not ok():
                raise FormatError(f"TL2: tiling {self} does not fit M = {m}, K = {k}: need {rule}")

    def split(self, k: int) -> tuple[int, int]:
        """(three_k, two_k): columns of the three part and of the two-column tail."""
        three_k = k // self.BK * self.BK
        return three_k, k - three_k

    def payload_bytes(self, m: int, k: int) -> int:
        """Bytes actually written before the zero padding: magnitudes + sign words + tail."""
        three_k, two_k = self.split(k)
        return three_k * m // 6 + three_k * m // 24 + two_k * m // 4


class TL2(Format):
    """TL2 payloads: triple magnitudes, sign words and a pair-code tail in the tiled order of a Tiling, zero-padded
    to the converter's allocation; the scale is the `<name>_scale` tensor."""

    TYPE = GGMLType.TL2
    FILE_TYPE = FORK_FILE_TYPE_TL2  # bitnet.cpp's numbering (docs/FORMATS.md §2)
    TERNARY = True
    # llama.cpp has no TL2 kernel; the only C++ that runs it is bitnet.cpp's LUT kernel, whose input is its own
    # per-token preprocessing (kernels/lut.py)
    VEC_DOT_TYPE = "i8_lut"
    SCALE_TENSOR = True
    Tiling = Tiling
    # bitnet_b1_58-3B tilings from setup_env.py (also what it uses for 2B-4T), keyed by (M, K)
    SETUP_ENV_3B = {
        (3200, 8640): Tiling(160, 96, 32),
        (3200, 3200): Tiling(320, 96, 32),
        (8640, 3200): Tiling(320, 96, 32),
    }
    LUT_WIDTH = LUT_WIDTH
    GROUP_ROWS = GROUP_ROWS
    TAIL_BK = TAIL_BK
    TRIPLES_PER_SIGN_WORD = 8  # a sign group (16 words x 16 bits) covers 32 rows x 8 triples
    SIGN_WORDS = 16  # c: u16 words per sign group
    TAIL_PAIRS_PER_GROUP = 8  # sk of the two part: BK/by = 32/4
    N_MAGNITUDES = 14  # |v| in 0..13
    N_PAIR_CODES = 9
    # row (inside a 32-row group) of byte b of a 32-byte group: bytes 8..15 hold rows 16..23, bytes 16..23 rows 8..15
    ROW_OF_BYTE = (np.array([0, 2, 1, 3]).repeat(8) * 8 + np.tile(np.arange(8), 4)).astype(np.int64)
    # (t0, t1, t2) of v + 13 where v = 9*t0 + 3*t1 + t2
    TRIPLE_VALUES = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=np.int8)
    # (t[2p], t[2p+1]) of pair code idx = 3*t[2p] + t[2p+1] + 4
    PAIR_VALUES = np.array([[a, b] for a in (-1, 0, 1) for b in (-1, 0, 1)], dtype=np.int8)

    @classmethod
    def nbytes(cls, shape: tuple[int, ...]) -> int:
        """Allocation size F of a TL2 tensor, as the converter computes it (docs/FORMATS.md §3.4), without the pad."""
        if len(shape) != 2:
            raise cls.error(f"expected a 2-D weight, got shape {shape}")
        k, m = shape
        if k < 256:
            raise cls.error(f"ne0 = {k} is smaller than 256")
        return (k - 256) * m // 3 * 5 // 8 + 256 * m // 2 * 4 // 8

    @classmethod
    def encode_ternary(cls, t: np.ndarray, tiling: Tiling) -> np.ndarray:
        """TL2 bytes (F of them) of int8 ternary t (M, K); the scale goes into the separate `<name>_scale` tensor."""
        cls.check_ternary(t)
        m, k = t.shape
        tiling.check(m, k)
        three_k, two_k = tiling.split(k)
        v = (9 * t[:, 0:three_k:3] + 3 * t[:, 1:three_k:3] + t[:, 2:three_k:3]).astype(np.int8)  # (M, three_k/3)
        magnitude, negative = np.abs(v).astype(np.uint8), (v < 0).astype(np.uint16)
        row, trip = cls._magnitude_positions(m, three_k, tiling)
        magnitudes = (magnitude[row, trip] << 4) | magnitude[row, trip + 1]
        row, trip, shift = cls._sign_positions(m, three_k, tiling)
        words = np.bitwise_or.reduce((negative[row, trip] << shift).reshape(-1, 16), axis=1).astype("<u2")
        tail = t[:, three_k:]
        idx = (3 * tail[:, 0::2] + tail[:, 1::2] + 4).astype(np.uint8)  # (M, two_k/2)
        row, pair = cls._tail_positions(m, two_k, tiling)
        out = np.zeros(cls.nbytes((k, m)), dtype=np.uint8)
        parts = (magnitudes, words.view(np.uint8), (idx[row, pair] << 4) | idx[row, pair + 1])
        np.concatenate(parts, out=out[: tiling.payload_bytes(m, k)])
        return out

    @classmethod
    def ternary(cls, raw: np.ndarray, shape: tuple[int, ...], tiling: Tiling) -> np.ndarray:
        """int8 ternary matrix (M, K) of a TL2 tensor laid out with `tiling`."""
        m, k = cls.matrix_shape(shape)
        tiling.check(m, k)
        three_k, two_k = tiling.split(k)
        flat = cls.raw_bytes(raw, shape)
        n_mag, n_sign = three_k * m // 6, three_k * m // 24
        t = np.empty((m, k), dtype=np.int8)
        t[:, :three_k] = cls._three_part(flat[:n_mag], flat[n_mag : n_mag + n_sign], m, three_k, tiling)
        t[:, three_k:] = cls._two_part(flat[n_mag + n_sign : n_mag + n_sign + two_k * m // 4], m, two_k, tiling)
        return t

    @classmethod
    def decode(cls, raw: np.ndarray, shape: tuple[int, ...], scale: float, tiling: Tiling) -> np.ndarray:
        """Float32 (M, K) = scale * ternary; `scale` is the value of the `<name>_scale` tensor."""
        return cls.ternary(raw, shape, tiling).astype(np.float32) * np.float32(scale)

    @classmethod
    def _three_part(
        cls, mag_bytes: np.ndarray, sign_bytes: np.ndarray, m: int, three_k: int, tiling: Tiling
    ) -> np.ndarray:
        """int8 (M, three_k) from the magnitude bytes and the sign words."""
        magnitude = np.empty((m, three_k // 3), dtype=np.int8)
        row, trip = cls._magnitude_positions(m, three_k, tiling)
        magnitude[row, trip] = mag_bytes >> 4
        magnitude[row, trip + 1] = mag_bytes & 0xF
        if (magnitude >= cls.N_MAGNITUDES).any():
            r, u = np.argwhere(magnitude >= cls.N_MAGNITUDES)[0]
            raise cls.error(f"triple magnitude {int(magnitude[r, u])} for row {r}, triple {u}; expected 0..13")
        negative = np.empty((m, three_k // 3), dtype=bool)
        row, trip, shift = cls._sign_positions(m, three_k, tiling)
        words = sign_bytes.view("<u2").astype(np.int64)
        negative[row, trip] = (np.repeat(words, 16) >> shift) & 1
        v = np.where(negative, -magnitude, magnitude)
        return cls.TRIPLE_VALUES[v + 13].reshape(m, three_k)

    @classmethod
    def _two_part(cls, tail_bytes: np.ndarray, m: int, two_k: int, tiling: Tiling) -> np.ndarray:
        """int8 (M, two_k) from the tail bytes."""
        idx = np.empty((m, two_k // 2), dtype=np.uint8)
        row, pair = cls._tail_positions(m, two_k, tiling)
        idx[row, pair] = tail_bytes >> 4
        idx[row, pair + 1] = tail_bytes & 0xF
        if (idx >= cls.N_PAIR_CODES).any():
            r, p = np.argwhere(idx >= cls.N_PAIR_CODES)[0]
            raise cls.error(f"tail pair code {int(idx[r, p])} for row {r}, tail pair {p}; expected 0..8")
        return cls.PAIR_VALUES[idx].reshape(m, two_k)

    @classmethod
    def _magnitude_positions(cls, m: int, three_k: int, tiling: Tiling) -> tuple[np.ndarray, np.ndarray]:
        """(row, triple) of the high nibble of every magnitude byte, in byte order (the low nibble is triple + 1)."""
        (tm, tk, sm, sk, b), shape = _loops(
            m // tiling.BM, three_k // tiling.BK, tiling.BM // GROUP_ROWS, tiling.BK // tiling.by, GROUP_ROWS
        )
        row = tm * tiling.BM + sm * GROUP_ROWS + cls.ROW_OF_BYTE[b]
        trip = tk * (tiling.BK // 3) + 2 * sk
        return _flat(shape, row, trip)

    @classmethod
    def _sign_positions(cls, m: int, three_k: int, tiling: Tiling) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, triple, bit shift) of every sign bit, word by word (16 bits per word, bit 15 first)."""
        (tm, tk, sm, q, c, i), shape = _loops(
            m // tiling.BM, three_k // tiling.BK, tiling.BM // GROUP_ROWS, tiling.BK // 24, cls.SIGN_WORDS, 16
        )
        row = tm * tiling.BM + sm * GROUP_ROWS + c + 16 * (i % 2)
        trip = tk * (tiling.BK // 3) + cls.TRIPLES_PER_SIGN_WORD * q + i // 2
        return _flat(shape, row, trip, 15 - i)

    @classmethod
    def _tail_positions(cls, m: int, two_k: int, tiling: Tiling) -> tuple[np.ndarray, np.ndarray]:
        """(row, pair) of the high nibble of every tail byte, in byte order (the low nibble is pair + 1)."""
        (tm, tk, sm, sk, b), shape = _loops(
            m // tiling.BM, two_k // TAIL_BK, tiling.BM // GROUP_ROWS, cls.TAIL_PAIRS_PER_GROUP, GROUP_ROWS
        )
        row = tm * tiling.BM + sm * GROUP_ROWS + cls.ROW_OF_BYTE[b]
        pair = tk * (TAIL_BK // 2) + 2 * sk
        return _flat(shape, row, pair)


def _loops(*extents: int) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
    """Open index grids for a loop nest (outermost first) and its full shape."""
    return np.ix_(*(np.arange(e) for e in extents)), extents


def _flat(shape: tuple[int, ...], *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.broadcast_to(a, shape).reshape(-1) for a in arrays)
