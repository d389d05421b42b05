"""I2_S (bitnet.cpp type 36): 2-bit ternary codes in blocks, one f32 scale per tensor, a 32-byte trailer.

Bytes of a tensor with n = M*K elements: `[0, n/4)` codes, 4 per byte; `[n/4, n/4+4)` the f32 scale;
`[n/4+4, n/4+32)` padding (converters write zeros; `quantize_i2_s` leaves it uninitialised).
Codes: 0 -> -1, 1 -> 0, 2 -> +1; 3 is never written and decodes to 0 like the fork. `w = scale * (code - 1)`.
Element order (flat i = m*K + k, cut into blocks of B elements in B/4 bytes): element j of block b sits in byte
`(B/4)*b + (j mod B/4)` at bit shift `6 - 2*(j div B/4)`, most significant pair first.
- B = 128 (default): the canonical x86 layout of every published file, e.g. the official 2B-4T GGUF
  (all 210 weights I2_S, K = 2560 or 6912; stored scale = absmean of the bf16 masters).
- B = 64: the ARM NEON layout of builds after bitnet.cpp commit 112f853; nothing in a file records which one it is,
  so the variant is an explicit argument, never guessed.
Rows start on block boundaries, so K % B == 0 is required. `shape` is ggml ne order ([K, M], like `nbytes`);
arrays are numpy order (M, K).
"""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError
from bitnet_ref.formats import blocks

TYPE = GGMLType.I2_S
TRAILER_BYTES = 32
SCALE_BYTES = 4
BLOCK_X86 = 128
BLOCK_ARM = 64
BLOCKS = (BLOCK_X86, BLOCK_ARM)
CODES_PER_BYTE = 4
SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8)  # bit shift of group g = j div (B/4)
CODE_MASK = np.uint8(3)
CODE_VALUES = np.array([-1, 0, 1, 0], dtype=np.int8)  # value of codes 0..3 (3 is never written)


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of an I2_S tensor: n/4 codes + 32 (f32 scale and padding)."""
    n = 1
    for d in shape:
        n *= d
    if n % 4:
        raise FormatError(f"I2_S: {n} elements is not a multiple of 4")
    return n // 4 + TRAILER_BYTES


def encode_ternary(t: np.ndarray, scale: float, block: int = BLOCK_X86) -> np.ndarray:
    """I2_S bytes of int8 ternary t (M, K) and a per-tensor scale: codes t + 1, f32 scale, 28 zero bytes."""
    _check_block(block)
    blocks.check_ternary(TYPE.name, t, block)
    s = np.float32(scale)
    if not np.isfinite(s) or s < 0:
        raise FormatError(f"I2_S: scale {scale!r} must be finite and >= 0")
    codes = (t + 1).astype(np.uint8).reshape(-1, CODES_PER_BYTE, block // CODES_PER_BYTE)  # [block, g, p]
    packed = np.bitwise_or.reduce(codes << SHIFTS[:, None], axis=1)  # byte p holds elements p, p+B/4, ...
    m, k = t.shape
    out = np.zeros(nbytes((k, m)), dtype=np.uint8)
    n_code_bytes = m * k // CODES_PER_BYTE
    out[:n_code_bytes] = packed.reshape(-1)
    out[n_code_bytes : n_code_bytes + SCALE_BYTES] = np.array([s], dtype="<f4").view(np.uint8)
    return out


def ternary(raw: np.ndarray, shape: tuple[int, ...], block: int = BLOCK_X86) -> np.ndarray:
    """int8 ternary matrix (M, K) of an I2_S tensor, read with the given block layout (128 x86, 64 ARM)."""
    m, k = blocks.matrix_shape(TYPE.name, shape)
    _check_block(block)
    if k % block:
        raise FormatError(f"I2_S: K = {k} is not a multiple of the block size {block}")
    flat = blocks.raw_bytes(TYPE.name, raw, shape, nbytes)
    q = flat[: m * k // CODES_PER_BYTE].reshape(-1, 1, block // CODES_PER_BYTE)  # one row per block
    codes = (q >> SHIFTS[:, None]) & CODE_MASK  # [block, g, p] -> element B*block + (B/4)*g + p
    return CODE_VALUES[codes].reshape(m, k)


def scales(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The per-tensor scale as a float32 array of one element (the f32 at byte n/4)."""
    m, k = blocks.matrix_shape(TYPE.name, shape)
    flat = blocks.raw_bytes(TYPE.name, raw, shape, nbytes)
    at = m * k // CODES_PER_BYTE
    return flat[at : at + SCALE_BYTES].view("<f4").astype(np.float32)


def decode(raw: np.ndarray, shape: tuple[int, ...], block: int = BLOCK_X86) -> np.ndarray:
    """Float32 (M, K) = scale * ternary, with the given block layout (128 x86 default, 64 the ARM variant)."""
    t = ternary(raw, shape, block)
    return t.astype(np.float32) * scales(raw, shape)[0]


def _check_block(block: int) -> None:
    if block not in BLOCKS:
        raise FormatError(f"I2_S: block = {block!r}; expected {BLOCK_X86} (x86) or {BLOCK_ARM} (ARM)")
