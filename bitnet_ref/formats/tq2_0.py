"""TQ2_0 (ggml type 35): 256 ternary elements in 66 bytes, `qs: u8[64]` then `d: f16`; 2 bits per element.

Byte `qs[32h + m]` (half h = 0, 1; lane m = 0..31) holds elements `128h + 32g + m` at bits `2g..2g+1`, g = 0..3 (least
significant pair first). Decode `w = d * (code - 1)`; code 3 would decode to +2 and is never written.
Reference encoder (ggml and gguf-py): `amax = max|x|` (f32), `d = fp16(amax)`, `code = roundf(x * (1/amax)) + 1`
using the f32 amax; an all-zero block gets d = 0 and codes 1. For ternary x scale input, d = fp16(scale) in every
nonzero block. 2B-4T fits: every K (2560, 6912) is a multiple of 256.
`shape` arguments are ggml ne-order tuples (ne0 first, like `nbytes`); arrays are numpy order ((M, K) for ne = [K, M]).
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.formats import blocks

TYPE = GGMLType.TQ2_0
BLOCK_ELEMS = 256
BLOCK_BYTES = 66
HALVES = 2  # each half of a block: 128 elements in 32 bytes
GROUPS = 4  # 2-bit groups per byte
LANES = 32  # bytes per half
SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)  # bit shift of group g
CODE_MASK = np.uint8(3)
F16_MAX = blocks.F16_MAX

# block layout: field -> byte range inside one 66-byte block
QS = slice(0, 64)  # 2-bit codes
D = slice(64, 66)  # f16 block scale


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    return blocks.nbytes(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, shape)


def encode(w: np.ndarray) -> np.ndarray:
    """Flat TQ2_0 bytes of a finite float32 array (last axis = ne0), bit-exact with ggml's reference encoder."""
    return blocks.encode_absmax(TYPE.name, BLOCK_ELEMS, w, _pack)


def encode_ternary(t: np.ndarray, scale: float) -> np.ndarray:
    """Flat TQ2_0 bytes of int8 ternary t (M, K) times a scale: codes t + 1, d = fp16(f32(scale)) in nonzero blocks."""
    return blocks.encode_scaled_ternary(TYPE.name, BLOCK_ELEMS, t, scale, _pack)


def decode(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array in numpy order (ne reversed) from the bytes of a TQ2_0 tensor: w = d * (code - 1)."""
    return blocks.decode_scaled_codes(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, raw, shape, D, _codes)


def ternary(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """int8 array (numpy order) of code - 1 per element: -1, 0, +1 (or 2 for the never-written code 3)."""
    return blocks.code_values(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, raw, shape, _codes)


def scales(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-block scales d as float32, numpy order with the last axis K/256 ((M, K/256) for a weight)."""
    return blocks.block_scales(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, raw, shape, D)


def _codes(packed: np.ndarray) -> np.ndarray:
    """(n_blocks, 256) 2-bit codes in element order: [block, half, group, lane] -> 128 half + 32 group + lane."""
    qs = packed[:, QS].reshape(-1, HALVES, 1, LANES)
    return ((qs >> SHIFTS.reshape(1, 1, GROUPS, 1)) & CODE_MASK).reshape(-1, BLOCK_ELEMS)


def _pack(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Block bytes from (n_blocks, 256) codes 0..2 and (n_blocks, 1) f32 scales (stored as f16)."""
    groups = codes.reshape(-1, HALVES, GROUPS, LANES) << SHIFTS.reshape(1, 1, GROUPS, 1)
    packed = np.empty((codes.shape[0], BLOCK_BYTES), dtype=np.uint8)
    packed[:, QS] = np.bitwise_or.reduce(groups, axis=2).reshape(-1, HALVES * LANES)
    blocks.store_f16(packed, D, d)  # amax above 65504 stores inf, as in ggml
    return packed.reshape(-1)
