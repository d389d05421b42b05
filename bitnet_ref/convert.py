"""A faithful HF checkpoint → GGUF conversion: the model transformers computes, in a file llama.cpp reads.

What it keeps that llama.cpp's converter (0.3.36) loses (docs/FORMATS.md §10): `bitnet.hidden_activation` from
config.json's hidden_act (without it llama.cpp runs SiLU), and the scales of packed checkpoints (the ternary codes
and `weight_scale` as transformers applies them, never ternarized twice). Each BitLinear is written as T·s in the
chosen format: TQ1_0/TQ2_0 (an f16 d per 256-block), I2_S (one f32 scale), or F32/F16/BF16 values; a weight whose
rows do not fit the format's block is written F16, as llama.cpp's converter does. Embedding and head keep the
checkpoint's float type; norms are F32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitnet_ref import formats
from bitnet_ref.checkpoint import Checkpoint, read_checkpoint
from bitnet_ref.constants import KEY_FILE_TYPE, GGMLType, ValueType
from bitnet_ref.errors import ConfigError
from bitnet_ref.files import atomic_path
from bitnet_ref.formats import F16, F32
from bitnet_ref.gguf_writer import GGUFWriter

FORMATS = ("tq2_0", "tq1_0", "i2_s", "f32", "f16", "bf16")
FALLBACK = F16


@dataclass
class Conversion:
    """What a conversion wrote: the file, the format, and the weights that fell back to F16."""

    path: Path
    fmt: str
    n_tensors: int = 0
    fallbacks: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for people."""
        fb = f"; {len(self.fallbacks)} weights in F16 (rows not a multiple of the block)" if self.fallbacks else ""
        return f"wrote {self.path}: {self.n_tensors} tensors, BitLinear weights {self.fmt.upper()}{fb}"


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, fmt: str = "tq2_0") -> Conversion:
    """Write the checkpoint folder src as a GGUF at dst with its BitLinear weights in fmt."""
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r}; expected one of {', '.join(FORMATS)}")
    target = formats.REGISTRY[GGMLType[fmt.upper()]]
    out = Conversion(Path(dst), fmt)
    with read_checkpoint(src) as ck, atomic_path(Path(dst)) as tmp, GGUFWriter(tmp) as w:
        types = {name: _type_of(ck, name, target, out) for name in ck.tensors}
        for key, value in ck.metadata.items():
            w.add_kv(key, value, value_types(key, value))
        w.add_kv(KEY_FILE_TYPE, int(target.FILE_TYPE), ValueType.UINT32)
        for name, info in ck.tensors.items():
            w.add_tensor(name, info.shape, types[name].TYPE)
        w.write_header()
        for name in ck.tensors:
            w.write_tensor(name, _encoded(ck, name, types[name]))
        out.n_tensors = len(ck.tensors)
    return out


def _type_of(ck: Checkpoint, name: str, target: type[formats.Format], out: Conversion) -> type[formats.Format]:
    """The format a tensor is written in: the target for BitLinears (F16 when its rows do not fit), F32 for norms,
    the stored float type for the embedding and head."""
    info = ck.tensors[name]
    if name in ck.bitlinears:
        if info.cols % getattr(target, "BLOCK_ELEMS", 1):
            out.fallbacks.append(name)
            return FALLBACK
        return target
    return F32 if len(info.shape) == 1 else formats.get(info.type)


def _encoded(ck: Checkpoint, name: str, fmt: type[formats.Format]) -> np.ndarray:
    """The bytes of one tensor in fmt."""
    if name in ck.bitlinears:
        return formats.encode_ternary_weight(fmt, *ck.ternary(name))
    info = ck.tensors[name]
    raw = ck.tensor_bytes(name)
    if fmt is F32 and info.type != GGMLType.F32:
        return F32.encode(formats.get(info.type).decode(raw, info.shape).reshape(-1))
    return raw


def value_types(key: str, value: object) -> tuple[ValueType, ...] | None:
    """GGUF value types as llama.cpp's converter writes them (u32 ints, f32 floats, i32 token types; None: inferred)."""
    if isinstance(value, float):
        return (ValueType.FLOAT32,)
    if isinstance(value, bool):
        return (ValueType.BOOL,)
    if isinstance(value, int):
        return (ValueType.UINT32,)
    if isinstance(value, list) and value and isinstance(value[0], int) and key.endswith("token_type"):
        return (ValueType.ARRAY, ValueType.INT32)
    return None
