"""What every weight format shares: the Format contract, fixed-size blocks (BlockFormat) and the TQ family.

A format is a class used as is (never instantiated), in the manner of gguf-py's `gguf/quants.py`: class attributes
give its layout (TYPE, BLOCK_ELEMS elements in BLOCK_BYTES bytes, the named byte fields of a block as slices), and
classmethods work on a tensor's bytes seen as a `(n_blocks, BLOCK_BYTES)` view. A block format writes only
`encode_blocks` / `decode_blocks` (and its fields); sizes, checks, views and error messages come from here.
`shape` arguments are ggml ne-order tuples (ne0 = the contiguous axis first); arrays are numpy order, so a weight with
ne = [K, M] is the (M, K) array W[m][k]. Every error is a FormatError whose message starts with the format's name.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from bitnet_ref.constants import FileType, GGMLType
from bitnet_ref.errors import FormatError

F16_MAX = 65504.0


def roundf(x: np.ndarray) -> np.ndarray:
    """C roundf on a float32 array: round half away from zero (the fraction x - trunc(x) is exact)."""
    whole = np.trunc(x)
    return whole + np.where(np.abs(x - whole) >= np.float32(0.5), np.sign(x), np.float32(0))


class Format:
    """A tensor format. Subclasses set TYPE and implement `nbytes` and `decode`; the rest is optional:
    `encode(w)` (float32 in), `encode_ternary(t, scale)`, `ternary(raw, shape)`, `scales(raw, shape)` (ternary ones)."""

    TYPE: ClassVar[GGMLType]
    NAME: ClassVar[str]  # lower-case type name, the name users and file names use ("tq2_0")
    FILE_TYPE: ClassVar[FileType | int | None] = None  # general.file_type of a file this project writes in it
    SCALE_TENSOR: ClassVar[bool] = False  # the scale is a separate 1-element F32 tensor `<name>_scale` (TL1, TL2)
    TERNARY: ClassVar[bool] = False  # the weights are ternary codes times a scale (BitNet's own formats)
    # the activation kind llama.cpp's CPU build converts a matmul's input to for this weight type (type_traits_cpu's
    # vec_dot_type; numerics.ACTIVATION_KINDS), or bitnet.cpp's where only it runs the type (TL1, TL2); None: none
    VEC_DOT_TYPE: ClassVar[str | None] = None
    Tiling: ClassVar[type | None] = None  # a byte order set by the build, not the file (TL1, TL2): its parameters

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if "TYPE" in cls.__dict__:
            cls.NAME = cls.TYPE.name.lower()

    @classmethod
    def nbytes(cls, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor with ggml shape `shape`."""
        raise NotImplementedError

    @classmethod
    def decode(cls, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Float32 array in numpy order (ne reversed) from a tensor's bytes."""
        raise NotImplementedError

    @classmethod
    def rows(cls, raw: np.ndarray, shape: tuple[int, ...], r0: int, r1: int) -> np.ndarray:
        """The bytes of rows r0..r1 of a weight [K, M] as a tensor [K, r1 - r0] of its own."""
        raise cls.error("rows cannot be cut out of a tensor; decode it whole")

    @classmethod
    def unwritten_code(cls, raw: np.ndarray, shape: tuple[int, ...]) -> str | None:
        """Where a code that no encoder writes and decoding hides first occurs (I2_S: code 3 reads as 0); None."""
        return None

    # --- checks, shared by the subclasses -------------------------------------------------------------------------

    @classmethod
    def raw_bytes(cls, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Flat view of a tensor's bytes after checking dtype (uint8) and size (`nbytes(shape)`)."""
        cls._check_uint8(raw)
        expected = cls.nbytes(shape)
        if raw.size != expected:
            raise cls.error(f"{raw.size} bytes given for shape {tuple(shape)}; expected {expected}")
        return raw.reshape(-1)

    @classmethod
    def error(cls, message: str) -> FormatError:
        """A FormatError whose message starts with the format's name."""
        return FormatError(f"{cls.TYPE.name}: {message}")

    @classmethod
    def _check_uint8(cls, raw: np.ndarray) -> None:
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
            got = getattr(raw, "dtype", type(raw).__name__)
            raise cls.error(f"raw bytes must be a uint8 array, got {got}")

    @classmethod
    def numpy_shape(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Numpy-order shape (ne reversed) of a ggml shape with one or more positive extents."""
        if len(shape) == 0 or any(int(d) <= 0 for d in shape):
            raise cls.error(f"shape {tuple(shape)} must have one or more positive extents (ne order)")
        return tuple(int(d) for d in reversed(shape))

    @classmethod
    def matrix_shape(cls, shape: tuple[int, ...]) -> tuple[int, int]:
        """(M, K) of a 2-D weight with ggml shape [K, M]."""
        if len(shape) != 2 or any(int(d) <= 0 for d in shape):
            raise cls.error(f"shape {tuple(shape)} must be a 2-D weight [K, M] (ne order) with positive extents")
        k, m = (int(d) for d in shape)
        return m, k

    @classmethod
    def check_float32(cls, w: np.ndarray) -> None:
        """Raise unless `w` is a float32 array with at least one axis."""
        cls._check_float32_dtype(w)
        if w.ndim == 0:
            raise cls.error("encode needs an array with at least one axis, got a 0-d array")

    @classmethod
    def _check_float32_dtype(cls, w: np.ndarray) -> None:
        if not isinstance(w, np.ndarray) or w.dtype != np.float32:
            raise cls.error(f"encode needs a float32 array, got {getattr(w, 'dtype', type(w).__name__)}")

    @classmethod
    def check_ternary(cls, t: np.ndarray, block: int | None = None) -> None:
        """Raise unless `t` is a 2-D int8 array (M, K) of -1, 0, +1 (and K a multiple of `block` when given)."""
        if not isinstance(t, np.ndarray) or t.dtype != np.int8 or t.ndim != 2:
            what = f"{t.dtype} array of shape {t.shape}" if isinstance(t, np.ndarray) else type(t).__name__
            raise cls.error(f"encode_ternary needs a 2-D int8 array (M, K), got {what}")
        if block is not None and t.shape[1] % block:
            raise cls.error(f"K = {t.shape[1]} is not a multiple of the block size {block}")
        bad = np.abs(t.astype(np.int16)) > 1
        if bad.any():
            m, k = np.argwhere(bad)[0]
            raise cls.error(f"value {int(t[m, k])} at [{m}, {k}] is not ternary (-1, 0, +1)")


class BlockFormat(Format):
    """Fixed-size blocks along ne0: BLOCK_ELEMS elements in BLOCK_BYTES bytes, each block self-contained (its scale
    inside it). Subclasses write `decode_blocks` and, if they encode, `encode_blocks`."""

    BLOCK_ELEMS: ClassVar[int]
    BLOCK_BYTES: ClassVar[int]

    @classmethod
    def encode_blocks(cls, x: np.ndarray) -> np.ndarray:
        """(n_blocks, BLOCK_BYTES) uint8 from (n_blocks, BLOCK_ELEMS) finite float32."""
        raise cls.error("no encoder (write this format with ggml's own quantizer)")

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, BLOCK_ELEMS) float32 from (n_blocks, BLOCK_BYTES) uint8."""
        raise NotImplementedError

    @classmethod
    def nbytes(cls, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor with ggml shape `shape`: n / BLOCK_ELEMS blocks (ne0 must be a multiple of the block)."""
        if shape and shape[0] % cls.BLOCK_ELEMS:
            raise cls.error(f"ne0 = {shape[0]} is not a multiple of the block size {cls.BLOCK_ELEMS}")
        return math.prod(shape) // cls.BLOCK_ELEMS * cls.BLOCK_BYTES

    @classmethod
    def encode(cls, w: np.ndarray) -> np.ndarray:
        """Flat bytes of a finite float32 array (last axis = ne0, a multiple of BLOCK_ELEMS)."""
        return cls.encode_blocks(cls.float_blocks(w)).reshape(-1)

    @classmethod
    def decode(cls, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Float32 array in numpy order (ne reversed) from a tensor's bytes."""
        return cls.decode_blocks(cls.blocks(raw, shape)).reshape(cls.numpy_shape(shape))

    @classmethod
    def rows(cls, raw: np.ndarray, shape: tuple[int, ...], r0: int, r1: int) -> np.ndarray:
        """The bytes of rows r0..r1 of a weight [K, M] (a view)."""
        row_bytes = cls.nbytes((shape[0],))
        return raw[r0 * row_bytes : r1 * row_bytes]

    @classmethod
    def blocks(cls, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """(n_blocks, BLOCK_BYTES) view of a tensor's bytes, after dtype, shape and size checks."""
        cls._check_uint8(raw)
        cls.numpy_shape(shape)
        return cls.raw_bytes(raw, shape).reshape(-1, cls.BLOCK_BYTES)

    @classmethod
    def float_blocks(cls, w: np.ndarray) -> np.ndarray:
        """(n_blocks, BLOCK_ELEMS) float32 view of a finite float32 array whose last axis is a multiple of the block."""
        cls._check_float32_dtype(w)
        if w.ndim == 0 or w.shape[-1] % cls.BLOCK_ELEMS:
            raise cls.error(f"array shape {w.shape}: last axis must be a multiple of {cls.BLOCK_ELEMS}")
        if not np.isfinite(w).all():
            bad = np.unravel_index(np.argmin(np.isfinite(w)), w.shape)
            raise cls.error(f"cannot encode non-finite value {w[bad]} at index {tuple(map(int, bad))}")
        return np.ascontiguousarray(w).reshape(-1, cls.BLOCK_ELEMS)

    @staticmethod
    def load_f16(blocks: np.ndarray, field: slice) -> np.ndarray:
        """(n_blocks, 1) float32 of the f16 stored in `field` of every block."""
        return blocks[:, field].view("<f2").astype(np.float32)

    @staticmethod
    def store_f16(blocks: np.ndarray, field: slice, d: np.ndarray) -> None:
        """Store (n_blocks, 1) f32 values as f16 into `field`; values above 65504 store inf, as in ggml."""
        with np.errstate(over="ignore"):
            blocks[:, field] = d.astype("<f2").view(np.uint8)


class TernaryBlockFormat(BlockFormat):
    """Ternary blocks with one f16 scale d each (TQ1_0, TQ2_0): w = d * (code - 1), codes 0..2.
    Subclasses give the field D and how codes sit in a block: `pack_codes` and `unpack_codes`."""

    D: ClassVar[slice]  # f16 block scale

    @classmethod
    def pack_codes(cls, codes: np.ndarray, blocks: np.ndarray) -> None:
        """Write (n_blocks, BLOCK_ELEMS) codes 0..2 into the code fields of (n_blocks, BLOCK_BYTES) blocks."""
        raise NotImplementedError

    @classmethod
    def unpack_codes(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, BLOCK_ELEMS) codes in element order."""
        raise NotImplementedError

    @classmethod
    def encode_blocks(cls, x: np.ndarray) -> np.ndarray:
        """ggml's reference encoder: `d = fp16(amax)`, `code = roundf(x * (1/amax)) + 1` (all-zero block: d = 0)."""
        amax = np.abs(x).max(axis=1, keepdims=True)
        inv_amax = np.divide(np.float32(1), amax, out=np.zeros_like(amax), where=amax != 0)
        return cls._pack((roundf(x * inv_amax) + 1).astype(np.uint8), amax)

    @classmethod
    def encode_ternary(cls, t: np.ndarray, scale: float) -> np.ndarray:
        """Flat bytes of int8 ternary t (M, K) times a scale: codes t + 1, d = fp16(f32(scale)) in nonzero blocks
        (0 elsewhere, and everywhere when scale = 0)."""
        cls.check_ternary(t, cls.BLOCK_ELEMS)
        values = np.ascontiguousarray(t).reshape(-1, cls.BLOCK_ELEMS)
        s = np.float32(scale)
        if not np.isfinite(s) or s < 0 or s > F16_MAX:
            raise cls.error(f"scale {scale!r} must be finite, >= 0 and at most {F16_MAX} (f16 range)")
        if s == 0:
            values = np.zeros_like(values)
        d = np.where((values != 0).any(axis=1, keepdims=True), s, np.float32(0))
        return cls._pack((values + 1).astype(np.uint8), d).reshape(-1)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """w = d * (code - 1); an inf or NaN d decodes to inf/NaN, as in ggml."""
        values = cls.unpack_codes(blocks).astype(np.int8) - 1
        with np.errstate(invalid="ignore"):
            return cls.load_f16(blocks, cls.D) * values.astype(np.float32)

    @classmethod
    def ternary(cls, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """int8 array (numpy order) of code - 1 per element."""
        values = cls.unpack_codes(cls.blocks(raw, shape)).astype(np.int8) - 1
        return values.reshape(cls.numpy_shape(shape))

    @classmethod
    def scales(cls, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Per-block scales d as float32, numpy order with the last axis ne0 / BLOCK_ELEMS ((M, K/256) for a weight)."""
        d = cls.load_f16(cls.blocks(raw, shape), cls.D)
        return d.reshape(cls.numpy_shape(shape)[:-1] + (-1,))

    @classmethod
    def stored_scales(cls, raw: np.ndarray) -> np.ndarray:
        """Every block's d as stored (f16), a zero-copy strided view that needs no shape (for checks of a file)."""
        n_blocks = raw.size // cls.BLOCK_BYTES
        return np.ndarray((n_blocks,), dtype="<f2", buffer=raw, offset=cls.D.start, strides=(cls.BLOCK_BYTES,))

    @classmethod
    def _pack(cls, codes: np.ndarray, d: np.ndarray) -> np.ndarray:
        """(n_blocks, BLOCK_BYTES) from codes 0..2 and (n_blocks, 1) f32 scales (stored as f16; above 65504: inf)."""
        blocks = np.empty((codes.shape[0], cls.BLOCK_BYTES), dtype=np.uint8)
        cls.pack_codes(codes, blocks)
        cls.store_f16(blocks, cls.D, d)
        return blocks
