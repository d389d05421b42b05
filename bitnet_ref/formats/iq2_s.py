"""IQ2_S: d f16 @0, qs u8[64] @2, qh u8[8] @66, scales u8[8] @74 per 256 elements (codebook)."""

from __future__ import annotations

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError

TYPE = GGMLType.IQ2_S
BLOCK_ELEMS = 256
BLOCK_BYTES = 82


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of a tensor with ggml shape `shape` (ne0 first)."""
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % BLOCK_ELEMS:
        raise FormatError(f"IQ2_S: ne0 = {shape[0]} is not a multiple of the block size {BLOCK_ELEMS}")
    return n // BLOCK_ELEMS * BLOCK_BYTES
