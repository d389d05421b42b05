"""BF16 (ggml type 30): the top 16 bits of an f32, with ggml's `fp32_to_bf16` rounding (uint32 arithmetic).

Encode: round to nearest even, `(u + 0x7fff + ((u >> 16) & 1)) >> 16`; a NaN keeps its top bits and is forced quiet,
`(u >> 16) | 64`; subnormals are not flushed. Decode: `u16 << 16` (exact).
`shape` arguments are ggml ne-order tuples (ne0 first, like `nbytes`); arrays are numpy order ((M, K) for ne = [K, M]).
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.formats import blocks

TYPE = GGMLType.BF16
BLOCK_ELEMS = 1
BLOCK_BYTES = 2
DTYPE = np.dtype("<u2")
HALF_BITS = np.uint32(16)
ABS_MASK = np.uint32(0x7FFFFFFF)
INF_BITS = np.uint32(0x7F800000)
ROUND_BIAS = np.uint32(0x7FFF)
QUIET_BIT = np.uint32(64)  # bit 6 of the bf16 word: the top mantissa bit, which makes a NaN quiet


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    return blocks.nbytes(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, shape)


def encode(w: np.ndarray) -> np.ndarray:
    """Flat bf16 bytes of a float32 array, rounded exactly as ggml's fp32_to_bf16."""
    blocks.check_float32(TYPE.name, w)
    u = np.ascontiguousarray(w, dtype="<f4").reshape(-1).view("<u4")
    is_nan = (u & ABS_MASK) > INF_BITS
    lsb = (u >> HALF_BITS) & np.uint32(1)
    rounded = (u + ROUND_BIAS + lsb) >> HALF_BITS  # only NaN words can wrap here; np.where drops them
    quiet_nan = (u >> HALF_BITS) | QUIET_BIT
    return np.where(is_nan, quiet_nan, rounded).astype(DTYPE).view(np.uint8)


def decode(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array in numpy order (ne reversed) from the bytes of a BF16 tensor."""
    flat = blocks.raw_blocks(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, raw, shape).reshape(-1)
    u = flat.view(DTYPE).astype(np.uint32) << HALF_BITS
    return u.view(np.float32).reshape(blocks.numpy_shape(TYPE.name, shape))
