"""TQ2_0 (ggml type 35): 256 ternary elements in 66 bytes, `qs: u8[64]` then `d: f16`; 2 bits per element.

Byte `qs[32h + m]` (half h = 0, 1; lane m = 0..31) holds elements `128h + 32g + m` at bits `2g..2g+1`, g = 0..3 (least
significant pair first). Decode `w = d * (code - 1)`; code 3 would decode to +2 and is never written.
Reference encoder (ggml and gguf-py): `amax = max|x|` (f32), `d = fp16(amax)`, `code = roundf(x * (1/amax)) + 1`
using the f32 amax; an all-zero block gets d = 0 and codes 1. For ternary x scale input, d = fp16(scale) in every
nonzero block. 2B-4T fits: every K (2560, 6912) is a multiple of 256.
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import FileType, GGMLType
from bitnet_ref.formats.base import TernaryBlockFormat


class TQ2_0(TernaryBlockFormat):
    """TQ2_0 blocks: 64 bytes of 2-bit codes, then the f16 d."""

    TYPE = GGMLType.TQ2_0
    FILE_TYPE = FileType.MOSTLY_TQ2_0
    TERNARY = True
    VEC_DOT_TYPE = "q8_k"
    BLOCK_ELEMS = 256
    BLOCK_BYTES = 66
    HALVES = 2  # each half of a block: 128 elements in 32 bytes
    GROUPS = 4  # 2-bit groups per byte
    LANES = 32  # bytes per half
    SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)  # bit shift of group g
    CODE_MASK = np.uint8(3)
    # block layout: field -> byte range inside one 66-byte block
    QS = slice(0, 64)  # 2-bit codes
    D = slice(64, 66)  # f16 block scale

    @classmethod
    def unpack_codes(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 256) 2-bit codes in element order: [block, half, group, lane] -> 128 half + 32 group + lane."""
        qs = blocks[:, cls.QS].reshape(-1, cls.HALVES, 1, cls.LANES)
        return ((qs >> cls.SHIFTS.reshape(1, 1, cls.GROUPS, 1)) & cls.CODE_MASK).reshape(-1, cls.BLOCK_ELEMS)

    @classmethod
    def pack_codes(cls, codes: np.ndarray, blocks: np.ndarray) -> None:
        """qs from (n_blocks, 256) codes 0..2: the groups of a byte OR-ed together."""
        groups = codes.reshape(-1, cls.HALVES, cls.GROUPS, cls.LANES) << cls.SHIFTS.reshape(1, 1, cls.GROUPS, 1)
        blocks[:, cls.QS] = np.bitwise_or.reduce(groups, axis=2).reshape(-1, cls.HALVES * cls.LANES)
