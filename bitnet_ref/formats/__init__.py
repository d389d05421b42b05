"""Weight formats: one class per ggml / bitnet.cpp tensor type (bitnet_ref.formats.base explains the contract), and
the registry from type id to class, the one list of the formats bitnet-ref knows."""

from __future__ import annotations

import numpy as np

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError
from bitnet_ref.formats.base import BlockFormat, Format, TernaryBlockFormat
from bitnet_ref.formats.floats import BF16, F16, F32
from bitnet_ref.formats.i2_s import I2_S, I2_S_ARM
from bitnet_ref.formats.iq2_s import IQ2_S
from bitnet_ref.formats.q8_0 import Q8_0
from bitnet_ref.formats.tl1 import TL1
from bitnet_ref.formats.tl2 import TL2
from bitnet_ref.formats.tq1_0 import TQ1_0
from bitnet_ref.formats.tq2_0 import TQ2_0

__all__ = [
    "BF16", "F16", "F32", "I2_S", "I2_S_ARM", "IQ2_S", "Q8_0", "TL1", "TL2", "TQ1_0", "TQ2_0",
    "BlockFormat", "Format", "TernaryBlockFormat",
    "REGISTRY", "TERNARY_TYPES", "SCALE_TENSOR_TYPES", "WRITABLE", "get", "by_name", "encode_ternary_weight",
]  # fmt: skip

REGISTRY: dict[GGMLType, type[Format]] = {
    f.TYPE: f for f in (F32, F16, BF16, Q8_0, TQ1_0, TQ2_0, IQ2_S, I2_S, TL1, TL2)
}

TERNARY_TYPES = tuple(t for t, f in REGISTRY.items() if f.TERNARY)

# types whose scale is a separate 1-element F32 tensor `<name>_scale` (bitnet.cpp's TL1, TL2)
SCALE_TENSOR_TYPES = tuple(t for t, f in REGISTRY.items() if f.SCALE_TENSOR)

# names of the formats whose files bitnet-ref writes (synthetic models: linears in the format, general.file_type)
WRITABLE = tuple(f.NAME for f in REGISTRY.values() if f.FILE_TYPE is not None)


def get(type_id: int) -> type[Format]:
    """Return the format class of a tensor type id, or raise FormatError naming the supported ids."""
    try:
        return REGISTRY[GGMLType(type_id)]
    except (ValueError, KeyError):
        known = ", ".join(f"{t.name}={int(t)}" for t in REGISTRY)
        raise FormatError(f"tensor type id {type_id} has no format class; supported: {known}") from None


def by_name(name: str) -> type[Format]:
    """Return the format class of a lower-case format name ("tq2_0"), or raise FormatError naming the known ones."""
    for f in REGISTRY.values():
        if f.NAME == name:
            return f
    raise FormatError(f"unknown format {name!r}; known: {', '.join(f.NAME for f in REGISTRY.values())}")


def encode_ternary_weight(fmt: type[Format], t: np.ndarray, scale: float) -> np.ndarray:
    """The bytes of the weights T·scale (int8 codes (M, K), one scale) in fmt: its own ternary encoder (TQ1_0, TQ2_0,
    I2_S), else the f32 values T·scale encoded (F32, F16, BF16, Q8_0)."""
    if hasattr(fmt, "encode_ternary"):
        return fmt.encode_ternary(t, scale)
    return fmt.encode(t.astype(np.float32) * np.float32(scale))
