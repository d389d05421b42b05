"""TL1 (bitnet.cpp type 38, ARM LUT kernels): 4 bits per column pair in a tiled byte order; scale in `<name>_scale`.

Encoding: `t = sign(w)` (|w| < 1e-6 -> 0); columns (2p, 2p+1) of a row form `idx = 3*t[2p] + t[2p+1] + 4` in 0..8.
Byte order (docs/FORMATS.md §3.4; the converter's `process_tl1` is the ground truth), loops outermost first
`tm < M/BM, tk < K/BK, sm < BM/bm, sk < BK/by, m16 < bm/16, kq < by/4, r < 16` with `by = 256/bm`, one byte per step:
`row = tm*BM + sm*bm + 16*m16 + r`, `pair = tk*BK/2 + sk*by/2 + 2*kq`, `byte = idx[row][pair] << 4 | idx[row][pair+1]`.
The payload is M*K/4 bytes; the fork's ggml_nbytes adds 32, overlapping the `_scale` tensor.

Facts that matter for 2B-4T:
- The magnitude is not in the payload: the converter writes `scale = max|w|` as a separate 1-element F32 tensor
  `<weight name>_scale` right after the weight; readers pass it to `decode`.
- Nothing in the GGUF records (BM, BK, bm): they come from the build's `include/kernel_config.ini`, so the tiling is
  an explicit argument. `setup_env.py` maps 2B-4T to the bitnet_b1_58-3B shapes (SETUP_ENV_3B), which are not 2B-4T's
  real shapes (2560x2560, 640x2560, 6912x2560, 2560x6912), so no official TL1 file of 2B-4T can exist as written.
- TL1 runs one token at a time, and builds since bitnet.cpp 2fed9af (2026-01) set BITNET_ARM_TL1=OFF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bitnet_ref.constants import FORK_FILE_TYPE_TL1, GGMLType
from bitnet_ref.errors import FormatError
from bitnet_ref.formats.base import Format

LUT_WIDTH = 256  # by * bm: columns x rows of one compute step
ROWS_PER_STEP = 16  # r: rows per byte run


@dataclass(frozen=True)
class Tiling:
    """TL1 tiling of one (M, K) weight: BM rows per tile (`bm` key), BK columns per LUT block (`bk`), bm (`bmm`)."""

    BM: int
    BK: int
    bm: int

    @property
    def by(self) -> int:
        """Columns per compute step: 256 / bm."""
        return LUT_WIDTH // self.bm

    def check(self, m: int, k: int) -> None:
        """Raise FormatError unless this tiling divides an (M, K) weight the way process_tl1 needs."""
        rules = (
            (lambda: self.bm > 0 and self.bm % ROWS_PER_STEP == 0 and LUT_WIDTH % self.bm == 0, "16 | bm | 256"),
            (lambda: self.by % 4 == 0, "by = 256/bm is a multiple of 4"),
            (lambda: self.BM > 0 and self.BM % self.bm == 0 and m % self.BM == 0, "bm | BM | M"),
            (lambda: self.BK > 0 and self.BK % self.by == 0 and k % self.BK == 0, "by | BK | K"),
        )
        for ok, rule in rules:
            if not ok():
                raise FormatError(f"TL1: tiling {self} does not fit M = {m}, K = {k}: need {rule}")


class TL1(Format):
    """TL1 payloads: pair codes in the tiled byte order of a Tiling; the scale is the `<name>_scale` tensor."""

    TYPE = GGMLType.TL1
    FILE_TYPE = FORK_FILE_TYPE_TL1  # bitnet.cpp's numbering (docs/FORMATS.md §2)
    TERNARY = True
    # llama.cpp has no TL1 kernel; the only C++ that runs it is bitnet.cpp's LUT kernel, whose input is its own
    # per-token preprocessing (kernels/lut.py)
    VEC_DOT_TYPE = "i8_lut"
    SCALE_TENSOR = True
    Tiling = Tiling
    # bitnet_b1_58-3B tilings from setup_env.py (also what it uses for 2B-4T), keyed by (M, K)
    SETUP_ENV_3B = {
        (3200, 8640): Tiling(160, 64, 32),
        (3200, 3200): Tiling(320, 128, 64),
        (8640, 3200): Tiling(320, 64, 32),
    }
    LUT_WIDTH = LUT_WIDTH
    ROWS_PER_STEP = ROWS_PER_STEP
    PAIRS_PER_BYTE = 2
    N_PAIR_CODES = 9
    # (t[2p], t[2p+1]) of pair code idx = 3*t[2p] + t[2p+1] + 4
    PAIR_VALUES = np.array(
        [[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 0], [0, 1], [1, -1], [1, 0], [1, 1]],
        dtype=np.int8,
    )

    @classmethod
    def nbytes(cls, shape: tuple[int, ...]) -> int:
        """Payload bytes of a TL1 tensor: M*K/4 (the fork's ggml_nbytes adds 32, overlapping `_scale`)."""
        n = math.prod(shape)
        if n % 4:
            raise cls.error(f"{n} elements is not a multiple of 4")
        return n // 4

    @classmethod
    def encode_ternary(cls, t: np.ndarray, tiling: Tiling) -> np.ndarray:
        """TL1 payload bytes of int8 ternary t (M, K); the scale goes into the separate `<name>_scale` F32 tensor."""
        cls.check_ternary(t)
        m, k = t.shape
        tiling.check(m, k)
        idx = (3 * t[:, 0::2] + t[:, 1::2] + 4).astype(np.uint8)  # (M, K/2)
        row, pair = cls._byte_positions(m, k, tiling)
        return (idx[row, pair] << 4) | idx[row, pair + 1]

    @classmethod
    def ternary(cls, raw: np.ndarray, shape: tuple[int, ...], tiling: Tiling) -> np.ndarray:
        """int8 ternary matrix (M, K) of a TL1 payload laid out with `tiling`."""
        m, k = cls.matrix_shape(shape)
        tiling.check(m, k)
        payload = cls.raw_bytes(raw, shape)
        row, pair = cls._byte_positions(m, k, tiling)
        idx = np.empty((m, k // cls.PAIRS_PER_BYTE), dtype=np.uint8)
        idx[row, pair] = payload >> 4
        idx[row, pair + 1] = payload & 0xF
        if (idx >= cls.N_PAIR_CODES).any():
            r, p = np.argwhere(idx >= cls.N_PAIR_CODES)[0]
            raise cls.error(f"pair code {int(idx[r, p])} for row {r}, columns {2 * p}-{2 * p + 1}; expected 0..8")
        return cls.PAIR_VALUES[idx].reshape(m, k)

    @classmethod
    def decode(cls, raw: np.ndarray, shape: tuple[int, ...], scale: float, tiling: Tiling) -> np.ndarray:
        """Float32 (M, K) = scale * ternary; `scale` is the value of the `<name>_scale` tensor."""
        return cls.ternary(raw, shape, tiling).astype(np.float32) * np.float32(scale)

    @classmethod
    def _byte_positions(cls, m: int, k: int, tiling: Tiling) -> tuple[np.ndarray, np.ndarray]:
        """(row, pair) of the high nibble of every payload byte, in byte order (the low nibble is pair + 1)."""
        bm_, by = tiling.bm, tiling.by
        extents = (m // tiling.BM, k // tiling.BK, tiling.BM // bm_, tiling.BK // by, bm_ // ROWS_PER_STEP, by // 4, 16)
        tm, tk, sm, sk, m16, kq, r = np.ix_(*(np.arange(e) for e in extents))
        row = tm * tiling.BM + sm * bm_ + m16 * ROWS_PER_STEP + r
        pair = tk * (tiling.BK // 2) + sk * (by // 2) + 2 * kq
        return np.broadcast_to(row, extents).reshape(-1), np.broadcast_to(pair, extents).reshape(-1)
