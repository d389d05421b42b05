"""Q8_0 (ggml type 8): 32 elements in 34 bytes, `d: f16` then `qs: i8[32]`; element j of a block is `d * qs[j]`.

Reference encoder (ggml-quants.c `quantize_row_q8_0_ref`, and gguf-py): `amax = max|x|`, `d = amax/127` (f32),
`id = 1/d` (0 when d = 0), `q = roundf(x*id)` (half away from zero), store `fp16(d)`. Not ternary.
`shape` arguments are ggml ne-order tuples (ne0 first, like `nbytes`); arrays are numpy order ((M, K) for ne = [K, M]).
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError

TYPE = GGMLType.Q8_0
BLOCK_ELEMS = 32
BLOCK_BYTES = 34
Q_MAX = np.float32(127)

# block layout: field -> byte range inside one 34-byte block
D = slice(0, 2)  # f16 block scale
QS = slice(2, 34)  # i8 quants, element j in byte 2 + j


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % BLOCK_ELEMS:
        raise FormatError(f"Q8_0: ne0 = {shape[0]} is not a multiple of the block size {BLOCK_ELEMS}")
    return n // BLOCK_ELEMS * BLOCK_BYTES


def roundf(x: np.ndarray) -> np.ndarray:
    """C roundf on a float32 array: round half away from zero (the fraction x - trunc(x) is exact)."""
    whole = np.trunc(x)
    return whole + np.where(np.abs(x - whole) >= np.float32(0.5), np.sign(x), np.float32(0))


def encode(w: np.ndarray) -> np.ndarray:
    """Flat Q8_0 bytes of a finite float32 array (last axis = ne0), bit-exact with ggml's reference encoder."""
    x = _float_blocks(w)
    amax = np.abs(x).max(axis=1, keepdims=True)
    d = amax / Q_MAX
    inv_d = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    blocks = np.empty((x.shape[0], BLOCK_BYTES), dtype=np.uint8)
    with np.errstate(over="ignore"):  # amax/127 above 65504 stores inf, as in ggml
        blocks[:, D] = d.astype("<f2").view(np.uint8)
    blocks[:, QS] = roundf(x * inv_d).astype(np.int8).view(np.uint8)
    return blocks.reshape(-1)


def decode(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array in numpy order (ne reversed) from the bytes of a Q8_0 tensor: w = d * q."""
    blocks = _raw_blocks(raw, shape)
    d = blocks[:, D].view("<f2").astype(np.float32)  # (n_blocks, 1)
    q = blocks[:, QS].view(np.int8).astype(np.float32)  # (n_blocks, 32)
    with np.errstate(invalid="ignore"):  # an inf or NaN d decodes to inf/NaN, as in ggml
        return (q * d).reshape(_numpy_shape(shape))


def _float_blocks(w: np.ndarray) -> np.ndarray:
    if not isinstance(w, np.ndarray) or w.dtype != np.float32:
        raise FormatError(f"Q8_0: encode needs a float32 array, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.ndim == 0 or w.shape[-1] % BLOCK_ELEMS:
        raise FormatError(f"Q8_0: array shape {w.shape}: last axis must be a multiple of {BLOCK_ELEMS}")
    if not np.isfinite(w).all():
        bad = np.unravel_index(np.argmin(np.isfinite(w)), w.shape)
        raise FormatError(f"Q8_0: cannot encode non-finite value {w[bad]} at index {tuple(map(int, bad))}")
    return np.ascontiguousarray(w).reshape(-1, BLOCK_ELEMS)


def _numpy_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 0 or any(int(d) <= 0 for d in shape):
        raise FormatError(f"Q8_0: shape {tuple(shape)} must have one or more positive extents (ne order)")
    return tuple(int(d) for d in reversed(shape))


def _raw_blocks(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise FormatError(f"Q8_0: raw bytes must be a uint8 array, got {getattr(raw, 'dtype', type(raw).__name__)}")
    _numpy_shape(shape)
    if raw.size != nbytes(shape):
        raise FormatError(f"Q8_0: {raw.size} bytes given for shape {tuple(shape)}; expected {nbytes(shape)}")
    return raw.reshape(-1, BLOCK_BYTES)
