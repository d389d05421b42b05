"""F32 (ggml type 0): IEEE binary32, little-endian; used for norm weights and TL `_scale` tensors.

`shape` arguments are ggml ne-order tuples (ne0 = the contiguous axis first, like `nbytes`); arrays are numpy order,
so a weight with ne = [K, M] is the (M, K) array W[m][k].
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.formats import blocks

TYPE = GGMLType.F32
BLOCK_ELEMS = 1
BLOCK_BYTES = 4
DTYPE = np.dtype("<f4")


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    return blocks.nbytes(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, shape)


def encode(w: np.ndarray) -> np.ndarray:
    """Flat little-endian f32 bytes of a float32 array (last axis = ne0)."""
    blocks.check_float32(TYPE.name, w)
    return np.ascontiguousarray(w, dtype=DTYPE).reshape(-1).view(np.uint8)


def decode(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array in numpy order (ne reversed) viewing the bytes of an F32 tensor (zero-copy when aligned)."""
    flat = blocks.raw_blocks(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, raw, shape).reshape(-1)
    return flat.view(DTYPE).reshape(blocks.numpy_shape(TYPE.name, shape))
