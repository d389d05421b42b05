"""TQ1_0 (ggml type 34): 256 ternary elements in 54 bytes, `qs: u8[48]`, `qh: u8[4]`, `d: f16`; base-3 packing.

Each byte stores 5 trits (qh bytes: 4) as a fixed-point fraction of 3^5 = 243: trit n of byte B is
`((B * 3^n mod 256) * 3) >> 8` (0..2), value `trit - 1`. Element order, segment by segment (trit-major):
`qs[0:32]` holds elements `32n + m`, `qs[32:48]` holds `160 + 16n + m`, `qh[0:4]` holds `240 + 4n + j`.
Encoder: same d and codes as TQ2_0 (`d = fp16(amax)`, `code = roundf(x / amax) + 1`); a byte's value
`q = sum_n code_n * 3^(4-n)` (trit 0 most significant; qh bytes use n = 0..3) is stored as `(256q + 242) div 243`.
2B-4T fits: every K (2560, 6912) is a multiple of 256. `shape` arguments are ggml ne-order tuples (ne0 first, like
`nbytes`); arrays are numpy order ((M, K) for ne = [K, M]).
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.formats import blocks

TYPE = GGMLType.TQ1_0
BLOCK_ELEMS = 256
BLOCK_BYTES = 54
F16_MAX = blocks.F16_MAX
TRIT_SHIFT = np.array([1, 3, 9, 27, 81], dtype=np.uint8)  # 3^n: multiplying (mod 256) moves trit n to the top
TRIT_PLACE = np.array([81, 27, 9, 3, 1], dtype=np.uint16)  # 3^(4-n): place value of trit n in a byte's q
POW3_5 = 243

# block layout: field -> byte range inside one 54-byte block
QS_HEAD = slice(0, 32)  # 5 trits per byte: elements 0..159
QS_TAIL = slice(32, 48)  # 5 trits per byte: elements 160..239
QH = slice(48, 52)  # 4 trits per byte: elements 240..255
D = slice(52, 54)  # f16 block scale
# (byte range, trits per byte) in element order
SEGMENTS = ((QS_HEAD, 5), (QS_TAIL, 5), (QH, 4))


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    return blocks.nbytes(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, shape)


def encode(w: np.ndarray) -> np.ndarray:
    """Flat TQ1_0 bytes of a finite float32 array (last axis = ne0), bit-exact with ggml's reference encoder."""
    return blocks.encode_absmax(TYPE.name, BLOCK_ELEMS, w, _pack)


def encode_ternary(t: np.ndarray, scale: float) -> np.ndarray:
    """Flat TQ1_0 bytes of int8 ternary t (M, K) times a scale: codes t + 1, d = fp16(f32(scale)) in nonzero blocks."""
    return blocks.encode_scaled_ternary(TYPE.name, BLOCK_ELEMS, t, scale, _pack)


def decode(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array in numpy order (ne reversed) from the bytes of a TQ1_0 tensor: w = d * (trit - 1)."""
    return blocks.decode_scaled_codes(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, raw, shape, D, _trits)


def ternary(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """int8 array (numpy order) of trit - 1 per element, in {-1, 0, +1}."""
    return blocks.code_values(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, raw, shape, _trits)


def scales(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-block scales d as float32, numpy order with the last axis K/256 ((M, K/256) for a weight)."""
    return blocks.block_scales(TYPE.name, BLOCK_ELEMS, BLOCK_BYTES, raw, shape, D)


def _trits(packed: np.ndarray) -> np.ndarray:
    """(n_blocks, 256) trits 0..2 in element order: segment by segment, [trit n, byte m] -> start + n*lanes + m."""
    parts = []
    for field, n_trits in SEGMENTS:
        shifted = packed[:, None, field] * TRIT_SHIFT[:n_trits, None]  # uint8: wraps mod 256
        parts.append(((shifted.astype(np.uint16) * 3) >> 8).reshape(packed.shape[0], -1))
    return np.concatenate(parts, axis=1).astype(np.uint8)


def _pack(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Block bytes from (n_blocks, 256) codes 0..2 and (n_blocks, 1) f32 scales (stored as f16)."""
    packed = np.empty((codes.shape[0], BLOCK_BYTES), dtype=np.uint8)
    start = 0
    for field, n_trits in SEGMENTS:
        lanes = field.stop - field.start
        trits = codes[:, start : start + n_trits * lanes].reshape(-1, n_trits, lanes).astype(np.uint16)
        q = (trits * TRIT_PLACE[:n_trits, None]).sum(axis=1, dtype=np.uint16)
        packed[:, field] = ((q * 256 + (POW3_5 - 1)) // POW3_5).astype(np.uint8)
        start += n_trits * lanes
    blocks.store_f16(packed, D, d)  # amax above 65504 stores inf, as in ggml
    return packed.reshape(-1)
