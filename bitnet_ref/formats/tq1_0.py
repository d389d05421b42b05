"""TQ1_0 (ggml type 34): 256 ternary elements in 54 bytes, `qs: u8[48]`, `qh: u8[4]`, `d: f16`; base-3 packing.

Each byte stores 5 trits (qh bytes: 4) as a fixed-point fraction of 3^5 = 243: trit n of byte B is
`((B * 3^n mod 256) * 3) >> 8` (0..2), value `trit - 1`. Element order, segment by segment (trit-major):
`qs[0:32]` holds elements `32n + m`, `qs[32:48]` holds `160 + 16n + m`, `qh[0:4]` holds `240 + 4n + j`.
Encoder: same d and codes as TQ2_0 (`d = fp16(amax)`, `code = roundf(x / amax) + 1`); a byte's value
`q = sum_n code_n * 3^(4-n)` (trit 0 most significant; qh bytes use n = 0..3) is stored as `(256q + 242) div 243`.
2B-4T fits: every K (2560, 6912) is a multiple of 256.
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import FileType, GGMLType
from bitnet_ref.formats.base import TernaryBlockFormat


class TQ1_0(TernaryBlockFormat):
    """TQ1_0 blocks: 48 + 4 bytes of base-3 trits, then the f16 d."""

    TYPE = GGMLType.TQ1_0
    FILE_TYPE = FileType.MOSTLY_TQ1_0
    TERNARY = True
    VEC_DOT_TYPE = "q8_k"
    BLOCK_ELEMS = 256
    BLOCK_BYTES = 54
    TRIT_SHIFT = np.array([1, 3, 9, 27, 81], dtype=np.uint8)  # 3^n: multiplying (mod 256) moves trit n to the top
    TRIT_PLACE = np.array([81, 27, 9, 3, 1], dtype=np.uint16)  # 3^(4-n): place value of trit n in a byte's q
    POW3_5 = 243
    # block layout: field -> byte range inside one 54-byte block
    QS_HEAD = slice(0, 32)  # 5 trits per byte: elements 0..159
    QS_TAIL = slice(32, 48)  # 5 trits per byte: elements 160..239
    QH = slice(48, 52)  # 4 trits per byte: elements 240..255
    D = slice(52, 54)  # f16 block scale
    SEGMENTS = ((QS_HEAD, 5), (QS_TAIL, 5), (QH, 4))  # (byte range, trits per byte) in element order

    @classmethod
    def unpack_codes(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 256) trits 0..2 in element order: segment by segment, [trit n, byte m] -> start + n*lanes + m."""
        parts = []
        for field, n_trits in cls.SEGMENTS:
            shifted = blocks[:, None, field] * cls.TRIT_SHIFT[:n_trits, None]  # uint8: wraps mod 256
            parts.append(((shifted.astype(np.uint16) * 3) >> 8).reshape(blocks.shape[0], -1))
        return np.concatenate(parts, axis=1).astype(np.uint8)

    @classmethod
    def pack_codes(cls, codes: np.ndarray, blocks: np.ndarray) -> None:
        """qs and qh from (n_blocks, 256) codes 0..2, segment by segment."""
        start = 0
        for field, n_trits in cls.SEGMENTS:
            lanes = field.stop - field.start
            trits = codes[:, start : start + n_trits * lanes].reshape(-1, n_trits, lanes).astype(np.uint16)
            q = (trits * cls.TRIT_PLACE[:n_trits, None]).sum(axis=1, dtype=np.uint16)
            blocks[:, field] = ((q * 256 + (cls.POW3_5 - 1)) // cls.POW3_5).astype(np.uint8)
            start += n_trits * lanes
