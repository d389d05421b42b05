"""Weight formats: one module per ggml / bitnet.cpp tensor type, and the registry from type id to module."""

from __future__ import annotations

from types import ModuleType

from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import FormatError
from bitnet_ref.formats import bf16, f16, f32, i2_s, iq2_s, q8_0, tl1, tl2, tq1_0, tq2_0

REGISTRY: dict[GGMLType, ModuleType] = {m.TYPE: m for m in (f32, f16, bf16, q8_0, tq1_0, tq2_0, iq2_s, i2_s, tl1, tl2)}

TERNARY_TYPES = (GGMLType.TQ1_0, GGMLType.TQ2_0, GGMLType.I2_S, GGMLType.TL1, GGMLType.TL2)


def get(type_id: int) -> ModuleType:
    """Return the format module for a tensor type id, or raise FormatError naming the supported ids."""
    try:
        return REGISTRY[GGMLType(type_id)]
    except (ValueError, KeyError):
        known = ", ".join(f"{t.name}={int(t)}" for t in REGISTRY)
        raise FormatError(f"tensor type id {type_id} has no format module; supported: {known}") from None
