"""Shared machinery of block formats: shape checks, block views, scale checks.

Plain functions; each takes the format's name (the prefix of every error message, e.g. "TQ2_0") and, where it
matters, the format's BLOCK_ELEMS and BLOCK_BYTES. A format module keeps only its own layout (constants, field
slices) and its pack/unpack, and calls these for everything else.
`shape` arguments are ggml ne-order tuples (ne0 first); arrays are numpy order ((M, K) for ne = [K, M]).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bitnet_ref.errors import FormatError

F16_MAX = 65504.0

# pack(codes (n_blocks, BLOCK_ELEMS) uint8 0..2, d (n_blocks, 1) f32) -> flat block bytes
Pack = Callable[[np.ndarray, np.ndarray], np.ndarray]
# unpack(blocks (n_blocks, BLOCK_BYTES) uint8) -> (n_blocks, BLOCK_ELEMS) codes in element order
Unpack = Callable[[np.ndarray], np.ndarray]


def roundf(x: np.ndarray) -> np.ndarray:
    """C roundf on a float32 array: round half away from zero (the fraction x - trunc(x) is exact)."""
    whole = np.trunc(x)
    return whole + np.where(np.abs(x - whole) >= np.float32(0.5), np.sign(x), np.float32(0))


# --- sizes and shapes ---------------------------------------------------------------------------------------------


def nbytes(name: str, block_elems: int, block_bytes: int, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first) in a format of fixed-size blocks along ne0."""
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % block_elems:
        raise FormatError(f"{name}: ne0 = {shape[0]} is not a multiple of the block size {block_elems}")
    return n // block_elems * block_bytes


def numpy_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Numpy-order shape (ne reversed) of a ggml shape with one or more positive extents."""
    if len(shape) == 0 or any(int(d) <= 0 for d in shape):
        raise FormatError(f"{name}: shape {tuple(shape)} must have one or more positive extents (ne order)")
    return tuple(int(d) for d in reversed(shape))


def matrix_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """(M, K) of a 2-D weight with ggml shape [K, M]."""
    if len(shape) != 2 or any(int(d) <= 0 for d in shape):
        raise FormatError(f"{name}: shape {tuple(shape)} must be a 2-D weight [K, M] (ne order) with positive extents")
    k, m = (int(d) for d in shape)
    return m, k


# --- raw bytes ----------------------------------------------------------------------------------------------------


def raw_bytes(
    name: str, raw: np.ndarray, shape: tuple[int, ...], size_of: Callable[[tuple[int, ...]], int]
) -> np.ndarray:
    """Flat view of a tensor's bytes after checking dtype (uint8) and size (`size_of(shape)`, the format's nbytes)."""
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise FormatError(f"{name}: raw bytes must be a uint8 array, got {getattr(raw, 'dtype', type(raw).__name__)}")
    expected = size_of(shape)
    if raw.size != expected:
        raise FormatError(f"{name}: {raw.size} bytes given for shape {tuple(shape)}; expected {expected}")
    return raw.reshape(-1)


def raw_blocks(name: str, block_elems: int, block_bytes: int, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(n_blocks, BLOCK_BYTES) view of a block-format tensor's bytes, after dtype, shape and size checks."""

    def size_of(s: tuple[int, ...]) -> int:
        numpy_shape(name, s)
        return nbytes(name, block_elems, block_bytes, s)

    return raw_bytes(name, raw, shape, size_of).reshape(-1, block_bytes)


def load_f16(blocks: np.ndarray, field: slice) -> np.ndarray:
    """(n_blocks, 1) float32 of the f16 scale stored in `field` of every block."""
    return blocks[:, field].view("<f2").astype(np.float32)


def store_f16(blocks: np.ndarray, field: slice, d: np.ndarray) -> None:
    """Store (n_blocks, 1) f32 scales as f16 into `field`; values above 65504 store inf, as in ggml."""
    with np.errstate(over="ignore"):
        blocks[:, field] = d.astype("<f2").view(np.uint8)


# --- inputs to encoders -------------------------------------------------------------------------------------------


def check_float32(name: str, w: np.ndarray) -> None:
    """Raise unless `w` is a float32 array with at least one axis."""
    _check_float32_dtype(name, w)
    if w.ndim == 0:
        raise FormatError(f"{name}: encode needs an array with at least one axis, got a 0-d array")


def float_blocks(name: str, block_elems: int, w: np.ndarray) -> np.ndarray:
    """(n_blocks, BLOCK_ELEMS) float32 view of a finite float32 array whose last axis is a multiple of the block."""
    _check_float32_dtype(name, w)
    if w.ndim == 0 or w.shape[-1] % block_elems:
        raise FormatError(f"{name}: array shape {w.shape}: last axis must be a multiple of {block_elems}")
    if not np.isfinite(w).all():
        bad = np.unravel_index(np.argmin(np.isfinite(w)), w.shape)
        raise FormatError(f"{name}: cannot encode non-finite value {w[bad]} at index {tuple(map(int, bad))}")
    return np.ascontiguousarray(w).reshape(-1, block_elems)


def check_ternary(name: str, t: np.ndarray, block_elems: int | None = None) -> None:
    """Raise unless `t` is a 2-D int8 array (M, K) of -1, 0, +1 (and K a multiple of `block_elems` when given)."""
    if not isinstance(t, np.ndarray) or t.dtype != np.int8 or t.ndim != 2:
        what = f"{t.dtype} array of shape {t.shape}" if isinstance(t, np.ndarray) else type(t).__name__
        raise FormatError(f"{name}: encode_ternary needs a 2-D int8 array (M, K), got {what}")
    if block_elems is not None and t.shape[1] % block_elems:
        raise FormatError(f"{name}: K = {t.shape[1]} is not a multiple of the block size {block_elems}")
    bad = np.abs(t.astype(np.int16)) > 1
    if bad.any():
        m, k = np.argwhere(bad)[0]
        raise FormatError(f"{name}: value {int(t[m, k])} at [{m}, {k}] is not ternary (-1, 0, +1)")


def ternary_blocks(name: str, block_elems: int, t: np.ndarray) -> np.ndarray:
    """(n_blocks, BLOCK_ELEMS) int8 view of a checked ternary matrix (M, K)."""
    check_ternary(name, t, block_elems)
    return np.ascontiguousarray(t).reshape(-1, block_elems)


def check_scale(name: str, scale: float) -> np.float32:
    """f32(scale), which must be finite, >= 0 and within the f16 range."""
    s = np.float32(scale)
    if not np.isfinite(s) or s < 0 or s > F16_MAX:
        raise FormatError(f"{name}: scale {scale!r} must be finite, >= 0 and at most {F16_MAX} (f16 range)")
    return s


def _check_float32_dtype(name: str, w: np.ndarray) -> None:
    if not isinstance(w, np.ndarray) or w.dtype != np.float32:
        raise FormatError(f"{name}: encode needs a float32 array, got {getattr(w, 'dtype', type(w).__name__)}")


# --- ternary block formats with one f16 scale d per block (TQ1_0, TQ2_0): w = d * (code - 1) ----------------------


def encode_absmax(name: str, block_elems: int, w: np.ndarray, pack: Pack) -> np.ndarray:
    """ggml's reference encoder: `d = fp16(amax)`, `code = roundf(x * (1/amax)) + 1` (all-zero block: d = 0)."""
    x = float_blocks(name, block_elems, w)
    amax = np.abs(x).max(axis=1, keepdims=True)
    inv_amax = np.divide(np.float32(1), amax, out=np.zeros_like(amax), where=amax != 0)
    codes = (roundf(x * inv_amax) + 1).astype(np.uint8)
    return pack(codes, amax)


def encode_scaled_ternary(name: str, block_elems: int, t: np.ndarray, scale: float, pack: Pack) -> np.ndarray:
    """Codes t + 1 and d = fp16(f32(scale)) in nonzero blocks (0 elsewhere, and everywhere when scale = 0)."""
    blocks = ternary_blocks(name, block_elems, t)
    s = check_scale(name, scale)
    if s == 0:
        blocks = np.zeros_like(blocks)
    nonzero = (blocks != 0).any(axis=1, keepdims=True)
    d = np.where(nonzero, s, np.float32(0))
    return pack((blocks + 1).astype(np.uint8), d)


def decode_scaled_codes(
    name: str,
    block_elems: int,
    block_bytes: int,
    raw: np.ndarray,
    shape: tuple[int, ...],
    d_field: slice,
    unpack: Unpack,
) -> np.ndarray:
    """Float32 array (numpy order) w = d * (code - 1) of a block format with an f16 d in `d_field`."""
    blocks = raw_blocks(name, block_elems, block_bytes, raw, shape)
    d = load_f16(blocks, d_field)  # (n_blocks, 1)
    values = unpack(blocks).astype(np.int8) - 1
    with np.errstate(invalid="ignore"):  # an inf or NaN d decodes to inf/NaN, as in ggml
        return (d * values.astype(np.float32)).reshape(numpy_shape(name, shape))


def code_values(
    name: str, block_elems: int, block_bytes: int, raw: np.ndarray, shape: tuple[int, ...], unpack: Unpack
) -> np.ndarray:
    """int8 array (numpy order) of code - 1 per element."""
    values = unpack(raw_blocks(name, block_elems, block_bytes, raw, shape)).astype(np.int8) - 1
    return values.reshape(numpy_shape(name, shape))


def block_scales(
    name: str, block_elems: int, block_bytes: int, raw: np.ndarray, shape: tuple[int, ...], d_field: slice
) -> np.ndarray:
    """Per-block f16 scales as float32, numpy order with the last axis ne0 / BLOCK_ELEMS."""
    d = load_f16(raw_blocks(name, block_elems, block_bytes, raw, shape), d_field)
    return d.reshape(numpy_shape(name, shape)[:-1] + (-1,))
