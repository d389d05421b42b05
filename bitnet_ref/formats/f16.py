"""F16 (ggml type 1): IEEE binary16. f32 -> f16 rounds to nearest even (numpy's cast is ggml's); f16 -> f32 is exact.

`shape` arguments are ggml ne-order tuples (ne0 first, like `nbytes`); arrays are numpy order ((M, K) for ne = [K, M]).
Token embeddings of the official 2B-4T GGUF are F16 ([2560, 128256]).
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.formats import blocks

TYPE = GGMLType.F16
BLOCK_ELEMS = 1
BLOCK_BYTES = 2
DTYPE = np.dtype("<f2")


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    return blocks.nbytes(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, shape)


def encode(w: np.ndarray) -> np.ndarray:
    """Flat f16 bytes of a float32 array (round to nearest even; overflow gives inf like ggml)."""
    blocks.check_float32(TYPE.name, w)
    with np.errstate(over="ignore"):
        half = np.ascontiguousarray(w).astype(DTYPE)
    return half.reshape(-1).view(np.uint8)


def decode(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array in numpy order (ne reversed) from the bytes of an F16 tensor."""
    flat = blocks.raw_blocks(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, raw, shape).reshape(-1)
    return flat.view(DTYPE).astype(np.float32).reshape(blocks.numpy_shape(TYPE.name, shape))
