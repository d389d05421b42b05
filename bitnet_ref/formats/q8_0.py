"""Q8_0 (ggml type 8): 32 elements in 34 bytes, `d: f16` then `qs: i8[32]`; element j of a block is `d * qs[j]`.

Reference encoder (ggml-quants.c `quantize_row_q8_0_ref`, and gguf-py): `amax = max|x|`, `d = amax/127` (f32),
`id = 1/d` (0 when d = 0), `q = roundf(x*id)` (half away from zero), store `fp16(d)`. Not ternary.
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import FileType, GGMLType
from bitnet_ref.formats.base import BlockFormat, roundf


class Q8_0(BlockFormat):
    """Q8_0 blocks: an f16 scale and 32 signed bytes."""

    TYPE = GGMLType.Q8_0
    FILE_TYPE = FileType.MOSTLY_Q8_0
    VEC_DOT_TYPE = "q8_0"
    BLOCK_ELEMS = 32
    BLOCK_BYTES = 34
    Q_MAX = np.float32(127)
    # block layout: field -> byte range inside one 34-byte block
    D = slice(0, 2)  # f16 block scale
    QS = slice(2, 34)  # i8 quants, element j in byte 2 + j

    @classmethod
    def encode_blocks(cls, x: np.ndarray) -> np.ndarray:
        """Bit-exact with ggml's reference encoder."""
        amax = np.abs(x).max(axis=1, keepdims=True)
        d = amax / cls.Q_MAX
        inv_d = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        blocks = np.empty((x.shape[0], cls.BLOCK_BYTES), dtype=np.uint8)
        cls.store_f16(blocks, cls.D, d)  # amax/127 above 65504 stores inf, as in ggml
        blocks[:, cls.QS] = roundf(x * inv_d).astype(np.int8).view(np.uint8)
        return blocks

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """w = d * q; an inf or NaN d decodes to inf/NaN, as in ggml."""
        d = cls.load_f16(blocks, cls.D)  # (n_blocks, 1)
        q = blocks[:, cls.QS].view(np.int8).astype(np.float32)  # (n_blocks, 32)
        with np.errstate(invalid="ignore"):
            return q * d
