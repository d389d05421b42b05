"""F32 (ggml type 0): IEEE binary32, little-endian; used for norm weights and TL `_scale` tensors.

`shape` arguments are ggml ne-order tuples (ne0 = the contiguous axis first, like `nbytes`); arrays are numpy order,
so a weight with ne = [K, M] is the (M, K) array W[m][k].
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError

TYPE = GGMLType.F32
BLOCK_ELEMS = 1
BLOCK_BYTES = 4
DTYPE = np.dtype("<f4")


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % BLOCK_ELEMS:
        raise FormatError(f"F32: ne0 = {shape[0]} is not a multiple of the block size {BLOCK_ELEMS}")
    return n // BLOCK_ELEMS * BLOCK_BYTES


def encode(w: np.ndarray) -> np.ndarray:
    """Flat little-endian f32 bytes of a float32 array (last axis = ne0)."""
    _check_float32(w)
    return np.ascontiguousarray(w, dtype=DTYPE).reshape(-1).view(np.uint8)


def decode(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array in numpy order (ne reversed) viewing the bytes of an F32 tensor (zero-copy when aligned)."""
    flat = _raw_bytes(raw, shape)
    return flat.view(DTYPE).reshape(_numpy_shape(shape))


def _check_float32(w: np.ndarray) -> None:
    if not isinstance(w, np.ndarray) or w.dtype != np.float32:
        raise FormatError(f"F32: encode needs a float32 array, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.ndim == 0:
        raise FormatError("F32: encode needs an array with at least one axis, got a 0-d array")


def _numpy_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 0 or any(int(d) <= 0 for d in shape):
        raise FormatError(f"F32: shape {tuple(shape)} must have one or more positive extents (ne order)")
    return tuple(int(d) for d in reversed(shape))


def _raw_bytes(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise FormatError(f"F32: raw bytes must be a uint8 array, got {getattr(raw, 'dtype', type(raw).__name__)}")
    _numpy_shape(shape)
    if raw.size != nbytes(shape):
        raise FormatError(f"F32: {raw.size} bytes given for shape {tuple(shape)}; expected {nbytes(shape)}")
    return raw.reshape(-1)
