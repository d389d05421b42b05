"""Build GGUF bytes in memory for tests, field by field, with every field overridable (hostile files included).

Independent of bitnet_ref's writer on purpose: the encoding here follows docs/FORMATS.md §1 directly, so round trips
through it test the reader against the spec, not against the writer's own mistakes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_ref.constants import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, VALUE_DTYPES, GGMLType, ValueType
from bitnet_ref.formats import get as get_format

GGUF_VERSION = 3


def u32(v: int) -> bytes:
    """Little-endian u32."""
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    """Little-endian u64."""
    return struct.pack("<Q", v)


def string(s: str | bytes) -> bytes:
    """GGUF string: u64 byte length + bytes (str is UTF-8 encoded; bytes go in raw, invalid UTF-8 allowed)."""
    raw = s.encode("utf-8") if isinstance(s, str) else s
    return u64(len(raw)) + raw


def scalar(vtype: ValueType, value: object) -> bytes:
    """Bytes of one fixed-size value."""
    return np.asarray(value, dtype=VALUE_DTYPES[vtype]).tobytes()


def array(elem: ValueType, values: Sequence[object], inner: ValueType | None = None) -> bytes:
    """Array body: u32 element type, u64 count, elements. Nested arrays: values are (inner_elem, values) pairs."""
    body = u32(elem) + u64(len(values))
    if elem == ValueType.STRING:
        return body + b"".join(string(v) for v in values)
    if elem == ValueType.ARRAY:
        return body + b"".join(array(e, vs) for e, vs in values)
    return body + np.asarray(values, dtype=VALUE_DTYPES[elem]).tobytes()


def value(vtype: ValueType, v: object, elem: ValueType | None = None) -> bytes:
    """Value bytes of any type (without the leading type id)."""
    if vtype == ValueType.STRING:
        return string(v)
    if vtype == ValueType.ARRAY:
        return array(elem, v)
    return scalar(vtype, v)


def kv(
    key: str | bytes, vtype: int, v: object = None, elem: ValueType | None = None, raw: bytes | None = None
) -> bytes:
    """One KV pair; raw replaces the encoded value (for hostile files)."""
    body = raw if raw is not None else value(ValueType(vtype), v, elem)
    return string(key) + u32(vtype) + body


def pad(n: int, alignment: int = GGUF_DEFAULT_ALIGNMENT) -> int:
    """n rounded up to the alignment."""
    return -(-n // alignment) * alignment


@dataclass
class TensorSpec:
    """A tensor to build: data None means zeros of the format's size, b"" writes none; offset None packs tightly."""

    name: str | bytes
    shape: tuple[int, ...]
    type_id: int
    data: bytes | None = None
    offset: int | None = None
    n_dims: int | None = None

    def nbytes(self) -> int:
        """Byte size of the data written for this tensor."""
        if self.data is not None:
            return len(self.data)
        return get_format(self.type_id).nbytes(self.shape)


def tensor_info(t: TensorSpec, offset: int) -> bytes:
    """Tensor info bytes: name, n_dims, ne[], type, offset."""
    n_dims = len(t.shape) if t.n_dims is None else t.n_dims
    return string(t.name) + u32(n_dims) + b"".join(u64(d) for d in t.shape) + u32(t.type_id) + u64(offset)


def tight_offsets(tensors: Iterable[TensorSpec], alignment: int) -> list[int]:
    """Mainline's packing: each offset is the previous one plus the previous size padded to the alignment."""
    offsets, at = [], 0
    for t in tensors:
        offsets.append(at if t.offset is None else t.offset)
        at += pad(t.nbytes(), alignment)
    return offsets


def build(
    kvs: Sequence[bytes] = (),
    tensors: Sequence[TensorSpec] = (),
    *,
    magic: bytes = GGUF_MAGIC,
    version: int = GGUF_VERSION,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = GGUF_DEFAULT_ALIGNMENT,
) -> bytes:
    """A whole GGUF file. `alignment` only places data; add the general.alignment KV yourself when it is not 32."""
    offsets = tight_offsets(tensors, alignment)
    head = magic + u32(version) + u64(len(tensors) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs)
    head += b"".join(tensor_info(t, off) for t, off in zip(tensors, offsets, strict=True))
    out = bytearray(head + bytes(pad(len(head), alignment) - len(head)))
    data_start = len(out)
    for t, off in zip(tensors, offsets, strict=True):
        data = t.data if t.data is not None else bytes(t.nbytes())
        if not data:
            continue
        end = data_start + off + len(data)
        out.extend(bytes(max(0, end - len(out))))
        out[data_start + off : end] = data
    return bytes(out + bytes(pad(len(out), alignment) - len(out)))


def write(path: Path, data: bytes) -> Path:
    """Write bytes to path and return it."""
    path.write_bytes(data)
    return path


def f32_bytes(values: Sequence[float]) -> bytes:
    """Little-endian f32 bytes."""
    return np.asarray(values, dtype="<f4").tobytes()


def tq_blocks(fmt: GGMLType, scales: Sequence[float]) -> bytes:
    """TQ1_0/TQ2_0 blocks with zero codes and the given f16 d per block (d is each block's last field)."""
    mod = get_format(fmt)
    blocks = np.zeros((len(scales), mod.BLOCK_BYTES), dtype=np.uint8)
    blocks[:, -2:] = np.asarray(scales, dtype="<f2").view(np.uint8).reshape(-1, 2)
    return blocks.tobytes()


def i2_s_bytes(n: int, scale: float) -> bytes:
    """I2_S tensor of n elements: codes 1 (zero weights), f32 scale at n/4, zero padding."""
    mod = get_format(GGMLType.I2_S)
    out = bytearray(b"\x55" * (n // 4) + bytes(mod.TRAILER_BYTES))
    out[n // 4 : n // 4 + 4] = f32_bytes([scale])
    return bytes(out)


def small_valid_file() -> bytes:
    """A small file with several value types, a nested array and four tensors (F32, F16, Q8_0, TQ2_0)."""
    kvs = [
        kv("general.architecture", ValueType.STRING, "bitnet"),
        kv("general.name", ValueType.STRING, "tiny"),
        kv("bitnet.block_count", ValueType.UINT32, 2),
        kv("bitnet.attention.layer_norm_rms_epsilon", ValueType.FLOAT32, 1e-5),
        kv("tokenizer.ggml.tokens", ValueType.ARRAY, ["a", "b", "cd"], elem=ValueType.STRING),
        kv("tokenizer.ggml.token_type", ValueType.ARRAY, [1, 1, 3], elem=ValueType.INT32),
        kv(
            "test.nested", ValueType.ARRAY, [(ValueType.INT8, [1, -2]), (ValueType.STRING, ["x"])], elem=ValueType.ARRAY
        ),
        kv("test.flag", ValueType.BOOL, True),
    ]
    tensors = [
        TensorSpec("norm.weight", (8,), GGMLType.F32, f32_bytes(np.arange(8))),
        TensorSpec("emb.weight", (32, 2), GGMLType.F16),
        TensorSpec("q8.weight", (32, 1), GGMLType.Q8_0),
        TensorSpec("tq.weight", (256, 2), GGMLType.TQ2_0, tq_blocks(GGMLType.TQ2_0, [0.5, 0.25])),
    ]
    return build(kvs, tensors)
