"""TQ2_0: qs u8[64] @0, d f16 @64 per 256 ternary elements (2 bits each)."""

from __future__ import annotations

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError

TYPE = GGMLType.TQ2_0
BLOCK_ELEMS = 256
BLOCK_BYTES = 66


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % BLOCK_ELEMS:
        raise FormatError(f"TQ2_0: ne0 = {shape[0]} is not a multiple of the block size {BLOCK_ELEMS}")
    return n // BLOCK_ELEMS * BLOCK_BYTES
