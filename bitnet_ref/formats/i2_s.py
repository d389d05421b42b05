"""I2_S (bitnet.cpp type 36): 2-bit codes in 128-element blocks, one f32 scale per tensor, 32-byte trailer."""

from __future__ import annotations

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError

TYPE = GGMLType.I2_S
TRAILER_BYTES = 32


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of an I2_S tensor: n/4 codes + 32 (f32 scale and padding)."""
    n = 1
    for d in shape:
        n *= d
    if n % 4:
        raise FormatError(f"I2_S: {n} elements is not a multiple of 4")
    return n // 4 + TRAILER_BYTES
