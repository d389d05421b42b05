"""Q8_0 (ggml type 8): 32 elements in 34 bytes, `d: f16` then `qs: i8[32]`; element j of a block is `d * qs[j]`.

Reference encoder (ggml-quants.c `quantize_row_q8_0_ref`, and gguf-py): `amax = max|x|`, `d = amax/127` (f32),
`id = 1/d` (0 when d = 0), `q = roundf(x*id)` (half away from zero), store `fp16(d)`. Not ternary.
`shape` arguments are ggml ne-order tuples (ne0 first, like `nbytes`); arrays are numpy order ((M, K) for ne = [K, M]).
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.formats import blocks
from bitnet_ref.formats.blocks import roundf  # public here too: q8_0.roundf

TYPE = GGMLType.Q8_0
BLOCK_ELEMS = 32
BLOCK_BYTES = 34
Q_MAX = np.float32(127)

# block layout: field -> byte range inside one 34-byte block
D = slice(0, 2)  # f16 block scale
QS = slice(2, 34)  # i8 quants, element j in byte 2 + j


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    return blocks.nbytes(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, shape)


def encode(w: np.ndarray) -> np.ndarray:
    """Flat Q8_0 bytes of a finite float32 array (last axis = ne0), bit-exact with ggml's reference encoder."""
    x = blocks.float_blocks(TYPE.name, BLOCK_ELEMS, w)
    amax = np.abs(x).max(axis=1, keepdims=True)
    d = amax / Q_MAX
    inv_d = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    packed = np.empty((x.shape[0], BLOCK_BYTES), dtype=np.uint8)
    blocks.store_f16(packed, D, d)  # amax/127 above 65504 stores inf, as in ggml
    packed[:, QS] = roundf(x * inv_d).astype(np.int8).view(np.uint8)
    return packed.reshape(-1)


def decode(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array in numpy order (ne reversed) from the bytes of a Q8_0 tensor: w = d * q."""
    packed = blocks.raw_blocks(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, raw, shape)
    d = blocks.load_f16(packed, D)  # (n_blocks, 1)
    q = packed[:, QS].view(np.int8).astype(np.float32)  # (n_blocks, 32)
    with np.errstate(invalid="ignore"):  # an inf or NaN d decodes to inf/NaN, as in ggml
        return (q * d).reshape(blocks.numpy_shape(TYPE.name, shape))
