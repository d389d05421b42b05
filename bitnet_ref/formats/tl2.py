"""TL2 (bitnet.cpp type 39, x86 LUT kernels): triples in 5 bits plus a 2-column tail; scale in `<name>_scale`."""

from __future__ import annotations

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError

TYPE = GGMLType.TL2


def nbytes(shape: tuple[int, ...]) -> int:
    """Allocation size F of a TL2 tensor as the converter computes it (FORMATS.md 3.4), without the 32-byte pad."""
    if len(shape) != 2:
        raise FormatError(f"TL2: expected a 2-D weight, got shape {shape}")
    k, m = shape
    if k < 256:
        raise FormatError(f"TL2: ne0 = {k} is smaller than 256")
    return (k - 256) * m // 3 * 5 // 8 + 256 * m // 2 * 4 // 8
