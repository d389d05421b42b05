"""TL1 (bitnet.cpp type 38, ARM LUT kernels): 4 bits per column pair; the scale lives in `<name>_scale`."""

from __future__ import annotations

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError

TYPE = GGMLType.TL1


def nbytes(shape: tuple[int, ...]) -> int:
    """Payload bytes of a TL1 tensor: M*K/4 (the fork's ggml_nbytes adds 32, overlapping `_scale`)."""
    n = 1
    for d in shape:
        n *= d
    if n % 4:
        raise FormatError(f"TL1: {n} elements is not a multiple of 4")
    return n // 4
