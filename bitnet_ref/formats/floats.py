"""The float element formats F32 (type 0), F16 (1) and BF16 (30): one element per "block", any value encodes.

Together because they share everything but the element codec: no block structure, NaN and inf encode like any
other value (ggml's conversions), and each codec is two lines. F32 is used for norm weights and TL `_scale` tensors;
the official 2B-4T GGUF stores token embeddings as F16 ([2560, 128256]).
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import FileType, GGMLType
from bitnet_ref.formats.base import BlockFormat


class FloatFormat(BlockFormat):
    """Elements stored one by one as DTYPE; encode accepts any float32 value (NaN, inf) and any last axis."""

    BLOCK_ELEMS = 1
    DTYPE: np.dtype

    @classmethod
    def encode(cls, w: np.ndarray) -> np.ndarray:
        """Flat little-endian bytes of a float32 array (last axis = ne0)."""
        cls.check_float32(w)
        return cls.encode_values(np.ascontiguousarray(w).reshape(-1))

    @classmethod
    def encode_values(cls, x: np.ndarray) -> np.ndarray:
        """Flat bytes of a flat float32 array."""
        raise NotImplementedError


class F32(FloatFormat):
    """IEEE binary32, little-endian; decode is a zero-copy view when the bytes are aligned."""

    TYPE = GGMLType.F32
    FILE_TYPE = FileType.ALL_F32
    VEC_DOT_TYPE = "none"
    BLOCK_BYTES = 4
    DTYPE = np.dtype("<f4")

    @classmethod
    def encode_values(cls, x: np.ndarray) -> np.ndarray:
        return x.astype(cls.DTYPE, copy=False).view(np.uint8)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return blocks.view(cls.DTYPE)


class F16(FloatFormat):
    """IEEE binary16: f32 -> f16 rounds to nearest even (numpy's cast is ggml's; overflow: inf), f16 -> f32 exact."""

    TYPE = GGMLType.F16
    FILE_TYPE = FileType.MOSTLY_F16
    VEC_DOT_TYPE = "f16"
    BLOCK_BYTES = 2
    DTYPE = np.dtype("<f2")

    @classmethod
    def encode_values(cls, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return x.astype(cls.DTYPE).view(np.uint8)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return blocks.view(cls.DTYPE).astype(np.float32)


class BF16(FloatFormat):
    """The top 16 bits of an f32, with ggml's `fp32_to_bf16` rounding (uint32 arithmetic).

    Encode: round to nearest even, `(u + 0x7fff + ((u >> 16) & 1)) >> 16`; a NaN keeps its top bits and is forced
    quiet, `(u >> 16) | 64`; subnormals are not flushed. Decode: `u16 << 16` (exact).
    """

    TYPE = GGMLType.BF16
    FILE_TYPE = FileType.MOSTLY_BF16
    VEC_DOT_TYPE = "bf16"
    BLOCK_BYTES = 2
    DTYPE = np.dtype("<u2")
    HALF_BITS = np.uint32(16)
    ABS_MASK = np.uint32(0x7FFFFFFF)
    INF_BITS = np.uint32(0x7F800000)
    ROUND_BIAS = np.uint32(0x7FFF)
    QUIET_BIT = np.uint32(64)  # bit 6 of the bf16 word: the top mantissa bit, which makes a NaN quiet

    @classmethod
    def encode_values(cls, x: np.ndarray) -> np.ndarray:
        u = x.astype("<f4", copy=False).view("<u4")
        is_nan = (u & cls.ABS_MASK) > cls.INF_BITS
        lsb = (u >> cls.HALF_BITS) & np.uint32(1)
        rounded = (u + cls.ROUND_BIAS + lsb) >> cls.HALF_BITS  # only NaN words can wrap here; np.where drops them
        quiet_nan = (u >> cls.HALF_BITS) | cls.QUIET_BIT
        return np.where(is_nan, quiet_nan, rounded).astype(cls.DTYPE).view(np.uint8)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return (blocks.view(cls.DTYPE).astype(np.uint32) << cls.HALF_BITS).view(np.float32)
