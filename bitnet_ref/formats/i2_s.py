"""I2_S (bitnet.cpp type 36): 2-bit ternary codes in blocks, one f32 scale per tensor, a 32-byte trailer.

Bytes of a tensor with n = M*K elements: `[0, n/4)` codes, 4 per byte; `[n/4, n/4+4)` the f32 scale;
`[n/4+4, n/4+32)` padding (converters write zeros; `quantize_i2_s` leaves it uninitialised).
Codes: 0 -> -1, 1 -> 0, 2 -> +1; 3 is never written and decodes to 0 like the fork. `w = scale * (code - 1)`.
Element order (flat i = m*K + k, cut into blocks of B elements in B/4 bytes): element j of block b sits in byte
`(B/4)*b + (j mod B/4)` at bit shift `6 - 2*(j div B/4)`, most significant pair first.
- B = 128 (class I2_S, the registry's): the canonical x86 layout of every published file, e.g. the official 2B-4T
  GGUF (all 210 weights I2_S, K = 2560 or 6912; stored scale = absmean of the bf16 masters).
- B = 64 (class I2_S_ARM): the ARM NEON layout of builds after bitnet.cpp commit 112f853; nothing in a file records
  which one it is, so the variant is an explicit choice (`I2_S.with_block(64)`), never guessed.
Rows start on block boundaries, so K % B == 0 is required.
"""

from __future__ import annotations

import math

import numpy as np

from bitnet_ref.constants import FORK_FILE_TYPE_I2_S, GGMLType
from bitnet_ref.formats.base import Format


class I2_S(Format):
    """I2_S, x86 128-element blocks of 32 code bytes; the per-tensor scale sits in the trailer after the codes."""

    TYPE = GGMLType.I2_S
    FILE_TYPE = FORK_FILE_TYPE_I2_S  # bitnet.cpp's numbering (docs/FORMATS.md §2)
    TERNARY = True
    VEC_DOT_TYPE = "q8_k"  # what llama.cpp computes on the file's lossless TQ2_0 twin (d = f16(scale) per block)
    BLOCK_ELEMS = 128
    BLOCK_BYTES = 32
    BLOCKS = (128, 64)  # the x86 and ARM layouts (with_block)
    CODES_PER_BYTE = 4
    TRAILER_BYTES = 32
    SCALE = slice(0, 4)  # f32 scale, at the start of the trailer (byte n/4 of the tensor)
    SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8)  # bit shift of group g = j div (B/4)
    CODE_MASK = np.uint8(3)
    CODE_VALUES = np.array([-1, 0, 1, 0], dtype=np.int8)  # value of codes 0..3 (3 is never written)

    @classmethod
    def with_block(cls, block: int) -> type[I2_S]:
        """The layout with `block` elements per block: I2_S (128, x86) or I2_S_ARM (64)."""
        layouts = {layout.BLOCK_ELEMS: layout for layout in (I2_S, I2_S_ARM)}
        if block not in layouts:
            raise cls.error(f"block = {block!r}; expected {I2_S.BLOCK_ELEMS} (x86) or {I2_S_ARM.BLOCK_ELEMS} (ARM)")
        return layouts[block]

    @classmethod
    def nbytes(cls, shape: tuple[int, ...]) -> int:
        """Bytes of an I2_S tensor: n/4 codes + 32 (f32 scale and padding)."""
        n = math.prod(shape)
        if n % cls.CODES_PER_BYTE:
            raise cls.error(f"{n} elements is not a multiple of 4")
        return n // cls.CODES_PER_BYTE + cls.TRAILER_BYTES

    @classmethod
    def encode_ternary(cls, t: np.ndarray, scale: float) -> np.ndarray:
        """I2_S bytes of int8 ternary t (M, K) and a per-tensor scale: codes t + 1, f32 scale, 28 zero bytes."""
        cls.check_ternary(t, cls.BLOCK_ELEMS)
        s = np.float32(scale)
        if not np.isfinite(s) or s < 0:
            raise cls.error(f"scale {scale!r} must be finite and >= 0")
        codes = (t + 1).astype(np.uint8).reshape(-1, cls.CODES_PER_BYTE, cls.BLOCK_BYTES)  # [block, g, p]
        packed = np.bitwise_or.reduce(codes << cls.SHIFTS[:, None], axis=1)  # byte p holds elements p, p+B/4, ...
        m, k = t.shape
        out = np.zeros(cls.nbytes((k, m)), dtype=np.uint8)
        out[: packed.size] = packed.reshape(-1)
        out[cls._scale_bytes((k, m))] = np.array([s], dtype="<f4").view(np.uint8)
        return out

    @classmethod
    def ternary(cls, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """int8 ternary matrix (M, K) of an I2_S tensor, read with this class's block layout."""
        m, k = cls.matrix_shape(shape)
        if k % cls.BLOCK_ELEMS:
            raise cls.error(f"K = {k} is not a multiple of the block size {cls.BLOCK_ELEMS}")
        flat = cls.raw_bytes(raw, shape)
        q = flat[: m * k // cls.CODES_PER_BYTE].reshape(-1, 1, cls.BLOCK_BYTES)  # one row per block
        codes = (q >> cls.SHIFTS[:, None]) & cls.CODE_MASK  # [block, g, p] -> element B*block + (B/4)*g + p
        return cls.CODE_VALUES[codes].reshape(m, k)

    @classmethod
    def scales(cls, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The per-tensor scale as a float32 array of one element (the f32 at byte n/4)."""
        cls.matrix_shape(shape)
        return cls.raw_bytes(raw, shape)[cls._scale_bytes(shape)].view("<f4").astype(np.float32)

    @classmethod
    def stored_scales(cls, raw: np.ndarray) -> np.ndarray:
        """The scale as stored (f32, one element) in a whole tensor's bytes, a view that needs no shape."""
        at = raw.size - cls.TRAILER_BYTES
        return raw[at + cls.SCALE.start : at + cls.SCALE.stop].view("<f4")

    @classmethod
    def decode(cls, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Float32 (M, K) = scale * ternary."""
        return cls.ternary(raw, shape).astype(np.float32) * cls.scales(raw, shape)[0]

    @classmethod
    def rows(cls, raw: np.ndarray, shape: tuple[int, ...], r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of a weight [K, M] as an I2_S tensor [K, r1 - r0] of its own: their codes and the trailer."""
        k = shape[0]
        codes_end = math.prod(shape) // cls.CODES_PER_BYTE
        per_row = k // cls.CODES_PER_BYTE
        return np.concatenate([raw[r0 * per_row : r1 * per_row], raw[codes_end : codes_end + cls.TRAILER_BYTES]])

    @classmethod
    def unwritten_code(cls, raw: np.ndarray, shape: tuple[int, ...]) -> str | None:
        """Where code 3, which is never written (the fork decodes it as 0, hiding it), first occurs; None if nowhere."""
        codes = raw[: math.prod(shape) // cls.CODES_PER_BYTE]
        hits = np.flatnonzero((codes & (codes >> 1) & 0x55) != 0)
        if not hits.size:
            return None
        byte = int(hits[0])
        return f"byte {byte} (block {byte // cls.BLOCK_BYTES}) holds code 3, never written"

    @classmethod
    def _scale_bytes(cls, shape: tuple[int, ...]) -> slice:
        """Byte range of the f32 scale in a tensor of ggml shape `shape`."""
        at = cls.nbytes(shape) - cls.TRAILER_BYTES
        return slice(at + cls.SCALE.start, at + cls.SCALE.stop)


class I2_S_ARM(I2_S):
    """I2_S in the ARM NEON layout of bitnet.cpp builds after 112f853: 64-element blocks of 16 code bytes."""

    NAME = "i2_s_arm"  # a layout of type I2_S, never a type of its own: the registry maps I2_S to the x86 class
    BLOCK_ELEMS = 64
    BLOCK_BYTES = 16
