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
from bitnet_ref.errors import FormatError
from bitnet_ref.formats.q8_0 import roundf

TYPE = GGMLType.TQ1_0
BLOCK_ELEMS = 256
BLOCK_BYTES = 54
F16_MAX = 65504.0
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
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % BLOCK_ELEMS:
        raise FormatError(f"TQ1_0: ne0 = {shape[0]} is not a multiple of the block size {BLOCK_ELEMS}")
    return n // BLOCK_ELEMS * BLOCK_BYTES


def encode(w: np.ndarray) -> np.ndarray:
    """Flat TQ1_0 bytes of a finite float32 array (last axis = ne0), bit-exact with ggml's reference encoder."""
    x = _float_blocks(w)
    amax = np.abs(x).max(axis=1, keepdims=True)
    inv_amax = np.divide(np.float32(1), amax, out=np.zeros_like(amax), where=amax != 0)
    codes = (roundf(x * inv_amax) + 1).astype(np.uint8)
    return _pack(codes, amax)


def encode_ternary(t: np.ndarray, scale: float) -> np.ndarray:
    """Flat TQ1_0 bytes of int8 ternary t (M, K) times a scale: codes t + 1, d = fp16(f32(scale)) in nonzero blocks."""
    blocks = _ternary_blocks(t)
    s = _check_scale(scale)
    if s == 0:
        blocks = np.zeros_like(blocks)
    nonzero = (blocks != 0).any(axis=1, keepdims=True)
    d = np.where(nonzero, s, np.float32(0))
    return _pack((blocks + 1).astype(np.uint8), d)


def decode(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array in numpy order (ne reversed) from the bytes of a TQ1_0 tensor: w = d * (trit - 1)."""
    blocks = _raw_blocks(raw, shape)
    d = blocks[:, D].view("<f2").astype(np.float32)  # (n_blocks, 1)
    values = _trits(blocks).astype(np.int8) - 1
    with np.errstate(invalid="ignore"):  # an inf or NaN d decodes to inf/NaN, as in ggml
        return (d * values.astype(np.float32)).reshape(_numpy_shape(shape))


def ternary(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """int8 array (numpy order) of trit - 1 per element, in {-1, 0, +1}."""
    values = _trits(_raw_blocks(raw, shape)).astype(np.int8) - 1
    return values.reshape(_numpy_shape(shape))


def scales(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-block scales d as float32, numpy order with the last axis K/256 ((M, K/256) for a weight)."""
    blocks = _raw_blocks(raw, shape)
    d = blocks[:, D].view("<f2").astype(np.float32)
    return d.reshape(_numpy_shape(shape)[:-1] + (-1,))


def _trits(blocks: np.ndarray) -> np.ndarray:
    """(n_blocks, 256) trits 0..2 in element order: segment by segment, [trit n, byte m] -> start + n*lanes + m."""
    parts = []
    for field, n_trits in SEGMENTS:
        shifted = blocks[:, None, field] * TRIT_SHIFT[:n_trits, None]  # uint8: wraps mod 256
        parts.append(((shifted.astype(np.uint16) * 3) >> 8).reshape(blocks.shape[0], -1))
    return np.concatenate(parts, axis=1).astype(np.uint8)


def _pack(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Block bytes from (n_blocks, 256) codes 0..2 and (n_blocks, 1) f32 scales (stored as f16)."""
    blocks = np.empty((codes.shape[0], BLOCK_BYTES), dtype=np.uint8)
    start = 0
    for field, n_trits in SEGMENTS:
        lanes = field.stop - field.start
        trits = codes[:, start : start + n_trits * lanes].reshape(-1, n_trits, lanes).astype(np.uint16)
        q = (trits * TRIT_PLACE[:n_trits, None]).sum(axis=1, dtype=np.uint16)
        blocks[:, field] = ((q * 256 + (POW3_5 - 1)) // POW3_5).astype(np.uint8)
        start += n_trits * lanes
    with np.errstate(over="ignore"):  # amax above 65504 stores inf, as in ggml
        blocks[:, D] = d.astype("<f2").view(np.uint8)
    return blocks.reshape(-1)


def _float_blocks(w: np.ndarray) -> np.ndarray:
    if not isinstance(w, np.ndarray) or w.dtype != np.float32:
        raise FormatError(f"TQ1_0: encode needs a float32 array, got {getattr(w, 'dtype', type(w).__name__)}")
    if w.ndim == 0 or w.shape[-1] % BLOCK_ELEMS:
        raise FormatError(f"TQ1_0: array shape {w.shape}: last axis must be a multiple of {BLOCK_ELEMS}")
    if not np.isfinite(w).all():
        bad = np.unravel_index(np.argmin(np.isfinite(w)), w.shape)
        raise FormatError(f"TQ1_0: cannot encode non-finite value {w[bad]} at index {tuple(map(int, bad))}")
    return np.ascontiguousarray(w).reshape(-1, BLOCK_ELEMS)


def _ternary_blocks(t: np.ndarray) -> np.ndarray:
    if not isinstance(t, np.ndarray) or t.dtype != np.int8 or t.ndim != 2:
        what = f"{t.dtype} array of shape {t.shape}" if isinstance(t, np.ndarray) else type(t).__name__
        raise FormatError(f"TQ1_0: encode_ternary needs a 2-D int8 array (M, K), got {what}")
    if t.shape[1] % BLOCK_ELEMS:
        raise FormatError(f"TQ1_0: K = {t.shape[1]} is not a multiple of the block size {BLOCK_ELEMS}")
    bad = np.abs(t.astype(np.int16)) > 1
    if bad.any():
        m, k = np.argwhere(bad)[0]
        raise FormatError(f"TQ1_0: value {int(t[m, k])} at [{m}, {k}] is not ternary (-1, 0, +1)")
    return np.ascontiguousarray(t).reshape(-1, BLOCK_ELEMS)


def _check_scale(scale: float) -> np.float32:
    s = np.float32(scale)
    if not np.isfinite(s) or s < 0 or s > F16_MAX:
        raise FormatError(f"TQ1_0: scale {scale!r} must be finite, >= 0 and at most {F16_MAX} (f16 range)")
    return s


def _numpy_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 0 or any(int(d) <= 0 for d in shape):
        raise FormatError(f"TQ1_0: shape {tuple(shape)} must have one or more positive extents (ne order)")
    return tuple(int(d) for d in reversed(shape))


def _raw_blocks(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise FormatError(f"TQ1_0: raw bytes must be a uint8 array, got {getattr(raw, 'dtype', type(raw).__name__)}")
    _numpy_shape(shape)
    if raw.size != nbytes(shape):
        raise FormatError(f"TQ1_0: {raw.size} bytes given for shape {tuple(shape)}; expected {nbytes(shape)}")
    return raw.reshape(-1, BLOCK_BYTES)
