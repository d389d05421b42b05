"""GGUF writing: a streaming v3 (or v2) writer with mainline-tight offsets, in the layout gguf_reader reads."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bitnet_ref import formats
from bitnet_ref.constants import (
    GGML_MAX_DIMS,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSIONS,
    KEY_ALIGNMENT,
    TL_SCALE_SUFFIX,
    VALUE_DTYPES,
    GGMLType,
    ValueType,
)
from bitnet_ref.errors import (
    AlignmentError,
    DuplicateError,
    GGUFError,
    TensorShapeError,
    UnknownTypeError,
    UnsupportedVersionError,
    ValueKindError,
)
from bitnet_ref.errors import FormatError as _FormatError
from bitnet_ref.files import open_file
from bitnet_ref.gguf_reader import U32, U64, align

GGUF_WRITE_VERSION = 3
_DTYPE_VALUE_TYPES = {np.dtype(d): t for t, d in VALUE_DTYPES.items() if t != ValueType.BOOL} | {
    np.dtype(bool): ValueType.BOOL
}
_INT_VALUE_TYPES = (ValueType.INT32, ValueType.INT64, ValueType.UINT64)  # what a python int is written as, first fit
_ANY_TYPES: tuple[ValueType, ...] = ()


class _ValueEncoder:
    """Turns python/numpy values into GGUF value bytes, inferring types where none are given."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def value(self, value: object, types: tuple[ValueType, ...], field: str) -> tuple[ValueType, bytes]:
        """The value type and encoded bytes (without the leading type id) of one value."""
        types = types or self.infer(value, field)
        vtype = types[0]
        if vtype == ValueType.STRING:
            return vtype, self.string(value, field)
        if vtype == ValueType.ARRAY:
            return vtype, self.array(value, types[1:], field)
        return vtype, self.numbers(np.asarray(value), vtype, field, ndim=0).tobytes()

    def string(self, value: object, field: str) -> bytes:
        if not isinstance(value, str):
            raise ValueKindError(self.path, field, value, "a str for a STRING value")
        raw = value.encode("utf-8")
        return U64.pack(len(raw)) + raw

    def array(self, value: object, elem_types: tuple[ValueType, ...], field: str) -> bytes:
        """u32 element type, u64 count, elements."""
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise ValueKindError(self.path, field, value, "a list, tuple or 1-D numpy array for an ARRAY value")
        elem_types = elem_types or self.infer_elements(value, field)
        elem = elem_types[0]
        head = U32.pack(elem) + U64.pack(len(value))
        if elem == ValueType.STRING:
            return head + self.strings(value, field)
        if elem == ValueType.ARRAY:
            return head + b"".join(self.array(v, elem_types[1:], f"{field}[{i}]") for i, v in enumerate(value))
        return head + self.numbers(np.asarray(value), elem, field, ndim=1).tobytes()

    def strings(self, values: Sequence[object], field: str) -> bytes:
        """Many strings in one join (vocabularies of 100k+ entries)."""
        if not all(isinstance(v, str) for v in values):
            bad = next(v for v in values if not isinstance(v, str))
            raise ValueKindError(self.path, field, bad, "str elements for a STRING array")
        pack = U64.pack
        encoded = [v.encode("utf-8") for v in values]
        return b"".join([part for raw in encoded for part in (pack(len(raw)), raw)])

    def numbers(self, arr: np.ndarray, vtype: ValueType, field: str, ndim: int) -> np.ndarray:
        """Cast a scalar (ndim 0) or a 1-D array to the value type's little-endian dtype, refusing lossy casts."""
        target = np.dtype(VALUE_DTYPES[vtype])
        if arr.ndim != ndim or arr.dtype.kind not in "biuf":
            what = "a number" if ndim == 0 else "a 1-D array of numbers"
            raise ValueKindError(self.path, field, arr.tolist(), f"{what} for {vtype.name}")
        if vtype == ValueType.BOOL:
            ok = arr.dtype.kind == "b" or (arr.dtype.kind in "iu" and bool(np.isin(arr, (0, 1)).all()))
        elif target.kind in "iu":
            info = np.iinfo(target)
            in_range = arr.size == 0 or (int(arr.min()) >= info.min and int(arr.max()) <= info.max)
            ok = arr.dtype.kind in "biu" and in_range
        else:
            ok = True  # ints and floats to f32/f64 (rounding to f32 is what FLOAT32 means)
        if not ok:
            raise ValueKindError(self.path, field, arr if arr.ndim else arr.item(), f"values that fit {vtype.name}")
        return arr.astype(target)

    def infer(self, value: object, field: str) -> tuple[ValueType, ...]:
        """Type path: str STRING, bool BOOL, int INT32/INT64/UINT64, float FLOAT32, numpy by dtype, lists ARRAY."""
        if isinstance(value, str):
            return (ValueType.STRING,)
        if isinstance(value, (bool, np.bool_)):
            return (ValueType.BOOL,)
        if isinstance(value, (np.generic, np.ndarray)):
            vtype = _DTYPE_VALUE_TYPES.get(
                value.dtype.newbyteorder("<") if value.dtype.byteorder == ">" else value.dtype
            )
            if vtype is None:
                raise ValueKindError(self.path, field, str(value.dtype), "a dtype GGUF can store")
            return (ValueType.ARRAY, vtype) if isinstance(value, np.ndarray) else (vtype,)
        if isinstance(value, int):
            return (_int_value_type(value, self.path, field),)
        if isinstance(value, float):
            return (ValueType.FLOAT32,)
        if isinstance(value, (list, tuple)):
            return (ValueType.ARRAY, *self.infer_elements(value, field))
        raise ValueKindError(self.path, field, value, "str, bool, int, float, a numpy scalar/array or a list")

    def infer_elements(self, values: Sequence[object], field: str) -> tuple[ValueType, ...]:
        """Element type path shared by all elements of a list."""
        if isinstance(values, np.ndarray):
            return self.infer(values, field)[1:]
        if not len(values):
            raise ValueKindError(self.path, field, values, "explicit types for an empty list")
        if all(isinstance(v, str) for v in values):
            return (ValueType.STRING,)  # the common case (vocabularies), without a per-element inference
        paths = {self.infer(v, f"{field}[{i}]") for i, v in enumerate(values)}
        if len(paths) == 1:
            return paths.pop()
        if all(p[0] == ValueType.ARRAY for p in paths):
            return (ValueType.ARRAY,)  # each inner array is typed on its own
        scalars = {p[0] for p in paths if len(p) == 1}
        if len(scalars) == len(paths) and scalars <= {*_INT_VALUE_TYPES, ValueType.FLOAT32}:
            if ValueType.FLOAT32 in scalars:
                return (ValueType.FLOAT32,)
            return (max(scalars, key=_INT_VALUE_TYPES.index),)
        raise ValueKindError(self.path, field, sorted(t.name for p in paths for t in p), "elements of one type")


def _int_value_type(value: int, path: Path, field: str) -> ValueType:
    for vtype in _INT_VALUE_TYPES:
        info = np.iinfo(VALUE_DTYPES[vtype])
        if info.min <= value <= info.max:
            return vtype
    raise ValueKindError(path, field, value, "an int that fits INT64 or UINT64")


def _as_types(types: ValueType | Sequence[ValueType] | None) -> tuple[ValueType, ...]:
    if types is None:
        return _ANY_TYPES
    if isinstance(types, ValueType):
        return (types,)
    return tuple(ValueType(t) for t in types)


@dataclass(frozen=True)
class _PlannedTensor:
    name: str
    shape: tuple[int, ...]
    type: GGMLType
    nbytes: int
    offset: int  # relative to the data section


class GGUFWriter:
    """Streams a GGUF v3 file: add_kv/add_tensor, write_header, then write_tensor in add order; tight offsets."""

    def __init__(
        self, path: str | os.PathLike, alignment: int = GGUF_DEFAULT_ALIGNMENT, version: int = GGUF_WRITE_VERSION
    ) -> None:
        self.path = Path(path)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment >= 2**32:
            raise AlignmentError(self.path, "alignment", alignment, "a power of two that fits a u32")
        if version not in GGUF_VERSIONS:
            raise UnsupportedVersionError(self.path, "version", version, f"one of {GGUF_VERSIONS}")
        self.alignment = alignment
        self.version = version
        self._encoder = _ValueEncoder(self.path)
        self._kv: dict[str, bytes] = {}
        self._tensors: list[_PlannedTensor] = []
        self._names: set[str] = set()
        self._next_offset = 0
        self._written = 0
        self._header_done = False
        self._file: BinaryIO | None = open_file(self.path, "wb")

    def add_kv(self, key: str, value: object, types: ValueType | Sequence[ValueType] | None = None) -> None:
        """Add one metadata pair; types such as (ValueType.ARRAY, ValueType.UINT32) are inferred when None."""
        self._require_header(done=False, action=f"add_kv({key!r})")
        if key in self._kv:
            raise DuplicateError(self.path, "key", key, "each metadata key once")
        vtype, raw = self._encoder.value(value, _as_types(types), key)
        if key == KEY_ALIGNMENT and (vtype != ValueType.UINT32 or value != self.alignment):
            raise AlignmentError(
                self.path, KEY_ALIGNMENT, value, f"UINT32 {self.alignment}, the writer's alignment (set it there)"
            )
        self._kv[key] = self._encoder.string(key, "key") + U32.pack(vtype) + raw

    def add_tensor(self, name: str, shape: Sequence[int], type_id: int, nbytes: int | None = None) -> None:
        """Plan a tensor (ggml shape, ne0 first); nbytes, if given, must equal the format's size."""
        self._require_header(done=False, action=f"add_tensor({name!r})")
        if name in self._names:
            raise DuplicateError(self.path, "tensor", name, "each tensor name once")
        shape = tuple(int(d) for d in shape)
        if len(shape) > GGML_MAX_DIMS or any(d <= 0 for d in shape):
            raise TensorShapeError(self.path, f"tensor {name!r} shape", shape, f"1..{GGML_MAX_DIMS} positive dims")
        typ = self._tensor_type(name, type_id)
        size = self._tensor_nbytes(name, shape, typ)
        if nbytes is not None and nbytes != size:
            raise TensorShapeError(self.path, f"tensor {name!r} nbytes", nbytes, f"{size} ({typ.name} {shape})")
        self._tensors.append(_PlannedTensor(name, shape, typ, size, self._next_offset))
        self._names.add(name)
        self._next_offset += align(size, self.alignment)

    def _tensor_type(self, name: str, type_id: int) -> GGMLType:
        if type_id not in formats.REGISTRY:
            known = ", ".join(f"{k.name}={int(k)}" for k in formats.REGISTRY)
            raise UnknownTypeError(self.path, f"tensor {name!r} type", type_id, f"a writable type id ({known})")
        return GGMLType(type_id)

    def _tensor_nbytes(self, name: str, shape: tuple[int, ...], typ: GGMLType) -> int:
        try:
            return formats.get(typ).nbytes(shape)
        except _FormatError as e:
            raise TensorShapeError(self.path, f"tensor {name!r} shape", shape, str(e)) from None

    def write_header(self) -> None:
        """Write magic, counts, metadata and tensor infos, padded to the alignment."""
        self._require_header(done=False, action="write_header()")
        self._check_scale_tensors()
        if self.alignment != GGUF_DEFAULT_ALIGNMENT and KEY_ALIGNMENT not in self._kv:
            self.add_kv(KEY_ALIGNMENT, self.alignment, ValueType.UINT32)
        parts = [GGUF_MAGIC, U32.pack(self.version), U64.pack(len(self._tensors)), U64.pack(len(self._kv))]
        parts += self._kv.values()
        parts += [self._tensor_info(t) for t in self._tensors]
        header = b"".join(parts)
        self._file.write(header + bytes(align(len(header), self.alignment) - len(header)))
        self._header_done = True

    def _tensor_info(self, t: _PlannedTensor) -> bytes:
        dims = b"".join(U64.pack(d) for d in t.shape)
        return (
            self._encoder.string(t.name, "tensor name")
            + U32.pack(len(t.shape))
            + dims
            + U32.pack(t.type)
            + U64.pack(t.offset)
        )

    def _check_scale_tensors(self) -> None:
        """Every TL1/TL2 weight is followed by its 1-element F32 `<name>_scale` tensor (docs/FORMATS.md §3.5)."""
        for i, t in enumerate(self._tensors):
            if not formats.get(t.type).SCALE_TENSOR:
                continue
            nxt = self._tensors[i + 1] if i + 1 < len(self._tensors) else None
            ok = nxt is not None and nxt.name == t.name + TL_SCALE_SUFFIX and nxt.type == GGMLType.F32
            if not ok or math.prod(nxt.shape) != 1:
                found = None if nxt is None else (nxt.name, nxt.type.name, nxt.shape)
                raise TensorShapeError(
                    self.path, f"tensor after {t.name!r}", found, f"a 1-element F32 tensor {t.name + TL_SCALE_SUFFIX!r}"
                )

    def write_tensor(self, name: str, data: np.ndarray | bytes) -> None:
        """Write the next tensor's bytes (exactly its nbytes) and pad to the alignment."""
        t = self._next_tensor(name)
        raw = _as_bytes(data)
        if raw.nbytes != t.nbytes:
            raise TensorShapeError(
                self.path, f"tensor {name!r} data", raw.nbytes, f"{t.nbytes} bytes ({t.type.name} {t.shape})"
            )
        self._file.write(raw)
        self._finish_tensor(t)

    def write_tensor_chunks(self, name: str, chunks: Iterable[np.ndarray | bytes]) -> None:
        """Stream the next tensor's bytes in pieces (e.g. row blocks of a large embedding); they must add up to nbytes.

        A size error is found only while writing, so the file is unusable after one."""
        t = self._next_tensor(name)
        written = 0
        for chunk in chunks:
            raw = _as_bytes(chunk)
            written += raw.nbytes
            if written > t.nbytes:
                break
            self._file.write(raw)
        if written != t.nbytes:
            raise TensorShapeError(
                self.path,
                f"tensor {name!r} data",
                f">= {written} bytes" if written > t.nbytes else written,
                f"{t.nbytes} bytes ({t.type.name} {t.shape})",
            )
        self._finish_tensor(t)

    def _next_tensor(self, name: str) -> _PlannedTensor:
        self._require_header(done=True, action=f"write_tensor({name!r})")
        if self._written >= len(self._tensors):
            raise GGUFError(self.path, "write_tensor", name, "no more tensors: all planned tensors are written")
        t = self._tensors[self._written]
        if name != t.name:
            raise GGUFError(self.path, "write_tensor", name, f"the next tensor in add order, {t.name!r}")
        return t

    def _finish_tensor(self, t: _PlannedTensor) -> None:
        self._file.write(bytes(align(t.nbytes, self.alignment) - t.nbytes))
        self._written += 1

    def _require_header(self, done: bool, action: str) -> None:
        if self._file is None:
            raise GGUFError(self.path, action, "closed writer", "an open GGUFWriter")
        if self._header_done != done:
            expected = "after write_header()" if done else "before write_header()"
            raise GGUFError(self.path, action, "out of order", expected)

    def close(self) -> None:
        """Write the header if still pending, check that every planned tensor was written, and close the file."""
        if self._file is None:
            return
        try:
            if not self._header_done:
                self.write_header()
            if self._written < len(self._tensors):
                missing = self._tensors[self._written].name
                raise GGUFError(self.path, "tensor data", missing, "every added tensor written before close()")
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> GGUFWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:
            self._file.close()
            self._file = None


def _as_bytes(data: np.ndarray | bytes) -> memoryview:
    """A flat byte view of tensor data (little-endian, no copy when already contiguous)."""
    if isinstance(data, np.ndarray):
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    return memoryview(data).cast("B")
