"""F16 (ggml type 1): IEEE binary16. f32 -> f16 rounds to nearest even (numpy's cast is ggml's); f16 -> f32 is exact.

`shape` arguments are ggml ne-order tuples (ne0 first, like `nbytes`); arrays are numpy order ((M, K) for ne = [K, M]).
Token embeddings of the official 2B-4T GGUF are F16 ([2560, 128256]).
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError

TYPE = GGMLType.F16
BLOCK_ELEMS = 1
BLOCK_BYTES = 2
DTYPE = np.dtype("<f2")


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % BLOCK_ELEMS:
        raise FormatError(f"F16: ne0 = {shape[0]} is not a multiple of the block size {BLOCK_ELEMS}")
    return n // BLOCK_ELEMS * BLOCK_BYTES


def encode(w: np.ndarray) -> np.ndarray:
    """Flat f16 bytes of a float32 array (round to nearest even; overflow gives inf like ggml)."""
    _check_float32(w)
    with np.errstate(over="ignore"):
        half = np.ascontiguousarray(w).astype(DTYPE)
    return half.reshape(-1).view(np.uint8)


def decode(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array in numpy order (ne reversed) from the bytes of an F16 tensor."""
    flat = _raw_bytes(raw, shape)
    return flat.view(DTYPE).astype(np.float32).reshape(_numpy_shape(shape))


def _check_float32(w: np.ndarray) -> None:
    if not isinstance(w, np.ndarray) or w.dtype != np.float32:
        raise FormatError(f"F16: encode needs a float32 array, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.ndim == 0:
        raise FormatError("F16: encode needs an array with at least one axis, got a 0-d array")


def _numpy_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 0 or any(int(d) <= 0 for d in shape):
        raise FormatError(f"F16: shape {tuple(shape)} must have one or more positive extents (ne order)")
    return tuple(int(d) for d in reversed(shape))


def _raw_bytes(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise FormatError(f"F16: raw bytes must be a uint8 array, got {getattr(raw, 'dtype', type(raw).__name__)}")
    _numpy_shape(shape)
    if raw.size != nbytes(shape):
        raise FormatError(f"F16: {raw.size} bytes given for shape {tuple(shape)}; expected {nbytes(shape)}")
    return raw.reshape(-1)
