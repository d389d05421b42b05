"""GGUF files: a validating, zero-copy reader (v2 and v3) and a streaming writer with mainline-tight offsets.

Layout (FORMATS.md §1): magic, u32 version, u64 n_tensors, u64 n_kv, the KV pairs, the tensor infos, zero padding up
to the alignment, then the data section; a tensor's stored offset is relative to the start of that section. GGUF v1
used u32 counts and lengths; v2 made every count and length u64 and v3 only added big-endian files, so v2 and v3
little-endian files share one layout, which is all this module reads and writes.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np

from bitnet_ref import formats
from bitnet_ref.constants import (
    FORK_ONLY_ARCHS,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSIONS,
    KEY_ALIGNMENT,
    KEY_ARCHITECTURE,
    KEY_FILE_TYPE,
    MXFP4_BLOCK_BYTES,
    MXFP4_BLOCK_ELEMS,
    MXFP4_TYPE_ID,
    TL_SCALE_SUFFIX,
    VALUE_DTYPES,
    GGMLType,
    ValueType,
)
from bitnet_ref.errors import (
    AlignmentError,
    BadMagicError,
    CountError,
    DuplicateError,
    FileAccessError,
    GGUFError,
    ScaleError,
    TensorBoundsError,
    TensorShapeError,
    TruncatedError,
    UnknownTypeError,
    UnsupportedVersionError,
    ValueKindError,
)
from bitnet_ref.errors import FormatError as _FormatError
from bitnet_ref.formats import i2_s, tl2

GGUF_WRITE_VERSION = 3
GGML_MAX_DIMS = 4  # ggml tensors have at most 4 dimensions
MAX_ARRAY_DEPTH = 8  # nested metadata arrays deeper than this are refused (no real file nests more than 2)
INT64_MAX = 2**63 - 1  # ggml stores ne[] and element counts as int64
FORK_TYPE_IDS = (GGMLType.I2_S, GGMLType.TL1)  # ids that only bitnet.cpp's fork writes (FORMATS.md §2, rule 1)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F16 = np.dtype("<f2")
_F32 = np.dtype("<f4")
_STRING_MIN_BYTES = _U64.size  # a string is a u64 length and the bytes
_ARRAY_MIN_BYTES = _U32.size + _U64.size  # an array is a u32 element type, a u64 count and the elements
_KV_MIN_BYTES = _STRING_MIN_BYTES + _U32.size + 1  # key, value type, at least one byte of value
_TENSOR_INFO_MIN_BYTES = _STRING_MIN_BYTES + _U32.size + _U32.size + _U64.size  # name, n_dims, type, offset
_NO_DEFAULT = object()


def _align(n: int, alignment: int) -> int:
    """Round n up to a multiple of alignment."""
    return -(-n // alignment) * alignment


def _min_value_bytes(vtype: ValueType) -> int:
    """Fewest bytes one value of this type occupies in a file."""
    if vtype == ValueType.STRING:
        return _STRING_MIN_BYTES
    if vtype == ValueType.ARRAY:
        return _ARRAY_MIN_BYTES
    return np.dtype(VALUE_DTYPES[vtype]).itemsize


# ----------------------------------------------------------------------------------------------------------------------
# Public data


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: ggml shape (ne0 first), resolved type, absolute data offset and byte size."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        """Number of elements (1 for a 0-d tensor)."""
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        """Number of rows: the product of ne1 and above."""
        return math.prod(self.shape[1:])

    @property
    def cols(self) -> int:
        """Row length ne0 (the contiguous axis)."""
        return self.shape[0] if self.shape else 1


class GGUFFile:
    """An open, validated GGUF file: metadata, tensor infos, and zero-copy read-only views of tensor data."""

    def __init__(
        self,
        path: Path,
        data: np.memmap | None,
        version: int,
        alignment: int,
        data_start: int,
        metadata: dict[str, object],
        value_types: dict[str, tuple[ValueType, ...]],
        tensors: dict[str, TensorInfo],
    ) -> None:
        self.path = path
        self.version = version
        self.alignment = alignment
        self.data_start = data_start
        self.metadata = metadata
        self.value_types = value_types
        self.tensors = tensors
        self._data = data

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Read-only uint8 memmap view of exactly the tensor's nbytes (no copy)."""
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(self.path, "tensor", name, f"one of the file's {len(self.tensors)} tensor names")
        if self._data is None:
            raise GGUFError(self.path, "file", "closed", "an open GGUFFile")
        return self._data[info.offset : info.offset + info.nbytes]

    def get(self, key: str, default: object = _NO_DEFAULT) -> object:
        """Metadata value for key; default when given and the key is absent, else a GGUFError."""
        if key in self.metadata:
            return self.metadata[key]
        if default is _NO_DEFAULT:
            raise GGUFError(self.path, key, "missing", "a metadata key present in the file")
        return default

    @property
    def arch(self) -> str:
        """The value of general.architecture."""
        arch = self.get(KEY_ARCHITECTURE)
        if not isinstance(arch, str):
            raise ValueKindError(self.path, KEY_ARCHITECTURE, arch, "a string")
        return arch

    def close(self) -> None:
        """Drop this object's reference to the mapping; views already handed out stay valid."""
        self._data = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"


# ----------------------------------------------------------------------------------------------------------------------
# Reading: a cursor over the mapped bytes, the header parser, then the tensor layout


class _Cursor:
    """Little-endian reads over a byte buffer; every read checks that the bytes exist."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.path = path
        self.pos = 0
        self.size = len(buf)

    def remaining(self) -> int:
        """Bytes left after the cursor."""
        return self.size - self.pos

    def take(self, n: int, field: str) -> int:
        """Advance past n bytes and return where they start; TruncatedError if the file ends first."""
        if n > self.size - self.pos:
            raise TruncatedError(
                self.path, field, f"end of file at byte {self.size}", f"{n} bytes at offset {self.pos}"
            )
        start = self.pos
        self.pos += n
        return start

    def u32(self, field: str) -> int:
        """Read a u32."""
        return _U32.unpack_from(self.buf, self.take(_U32.size, field))[0]

    def u64(self, field: str) -> int:
        """Read a u64."""
        return _U64.unpack_from(self.buf, self.take(_U64.size, field))[0]

    def count(self, field: str, min_item_bytes: int, items: str) -> int:
        """Read a u64 count and check that that many items of at least min_item_bytes fit in the rest of the file."""
        n = self.u64(field)
        if n * min_item_bytes > self.remaining():
            raise CountError(
                self.path,
                field,
                n,
                f"at most {self.remaining() // min_item_bytes} {items} ({self.remaining()} bytes remain in the file)",
            )
        return n

    def string(self, field: str) -> str:
        """Read a u64-length-prefixed UTF-8 string."""
        n = self.count(field, 1, "bytes of string")
        start = self.take(n, field)
        try:
            return str(self.buf[start : start + n], "utf-8")
        except UnicodeDecodeError as e:
            raw = bytes(self.buf[start : start + min(n, 64)])
            raise ValueKindError(self.path, field, raw, f"valid UTF-8 ({e.reason} at byte {e.start})") from None

    def strings(self, count: int, field: str) -> list[str]:
        """Read count strings (the hot loop of vocabulary arrays)."""
        buf, size, unpack = self.buf, self.size, _U64.unpack_from
        out = []
        for i in range(count):
            if self.pos + _U64.size > size:
                self.take(_U64.size, f"{field}[{i}]")
            n = unpack(buf, self.pos)[0]
            start = self.pos + _U64.size
            if n > size - start:
                self.string(f"{field}[{i}]")
            try:
                out.append(str(buf[start : start + n], "utf-8"))
            except UnicodeDecodeError:
                self.string(f"{field}[{i}]")
            self.pos = start + n
        return out

    def array(self, vtype: ValueType, count: int, field: str) -> np.ndarray:
        """Copy count fixed-size values out of the buffer."""
        dtype = np.dtype(VALUE_DTYPES[vtype])
        start = self.take(count * dtype.itemsize, field)
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).copy()


@dataclass(frozen=True)
class _RawTensor:
    """A tensor info as stored: type id not yet resolved, offset relative to the data section."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int


@dataclass(frozen=True)
class _Header:
    """Everything before the data section."""

    version: int
    metadata: dict[str, object]
    value_types: dict[str, tuple[ValueType, ...]]
    tensors: list[_RawTensor]
    end: int


class _HeaderParser:
    """Parses and validates magic, version, counts, KV pairs and tensor infos."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.cur = _Cursor(buf, path)
        self.path = path

    def parse(self) -> _Header:
        """Read the whole header."""
        self._magic()
        version = self._version()
        n_tensors = self.cur.count(
            "tensor_count", _TENSOR_INFO_MIN_BYTES, f"tensor infos of >= {_TENSOR_INFO_MIN_BYTES} bytes"
        )
        n_kv = self.cur.count("kv_count", _KV_MIN_BYTES, f"KV pairs of >= {_KV_MIN_BYTES} bytes")
        if n_tensors * _TENSOR_INFO_MIN_BYTES + n_kv * _KV_MIN_BYTES > self.cur.remaining():
            raise CountError(
                self.path,
                "tensor_count + kv_count",
                (n_tensors, n_kv),
                f"together at most {self.cur.remaining()} bytes",
            )
        metadata, value_types = self._metadata(n_kv)
        tensors = self._tensor_infos(n_tensors)
        return _Header(version, metadata, value_types, tensors, self.cur.pos)

    def _magic(self) -> None:
        start = self.cur.take(len(GGUF_MAGIC), "magic")
        magic = bytes(self.cur.buf[start : start + len(GGUF_MAGIC)])
        if magic != GGUF_MAGIC:
            raise BadMagicError(self.path, "magic", magic, f"{GGUF_MAGIC!r} (not a GGUF file)")

    def _version(self) -> int:
        version = self.cur.u32("version")
        if version not in GGUF_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(_U32.size, "little"), "big")
            hint = " (this looks like a big-endian file)" if swapped in GGUF_VERSIONS else ""
            raise UnsupportedVersionError(self.path, "version", version, f"one of {GGUF_VERSIONS}{hint}")
        return version

    def _metadata(self, n_kv: int) -> tuple[dict[str, object], dict[str, tuple[ValueType, ...]]]:
        metadata: dict[str, object] = {}
        value_types: dict[str, tuple[ValueType, ...]] = {}
        for i in range(n_kv):
            key = self.cur.string(f"kv #{i} key")
            if key in metadata:
                raise DuplicateError(self.path, f"kv #{i} key", key, "each metadata key once")
            vtype = self._value_type(f"{key} (value type)")
            metadata[key], value_types[key] = self._value(vtype, key, depth=0)
        return metadata, value_types

    def _value_type(self, field: str) -> ValueType:
        raw = self.cur.u32(field)
        try:
            return ValueType(raw)
        except ValueError:
            known = ", ".join(f"{t.name}={int(t)}" for t in ValueType)
            raise UnknownTypeError(self.path, field, raw, f"a GGUF value type ({known})") from None

    def _value(self, vtype: ValueType, field: str, depth: int) -> tuple[object, tuple[ValueType, ...]]:
        """Read one value; returns it and its type path, e.g. (ARRAY, INT32)."""
        if vtype == ValueType.STRING:
            return self.cur.string(field), (vtype,)
        if vtype == ValueType.ARRAY:
            return self._array(field, depth + 1)
        value = self.cur.array(vtype, 1, field)
        if vtype == ValueType.BOOL:
            return self._bools(value, field, scalar=True)[0].item(), (vtype,)
        return value[0].item(), (vtype,)

    def _array(self, field: str, depth: int) -> tuple[object, tuple[ValueType, ...]]:
        if depth > MAX_ARRAY_DEPTH:
            raise CountError(self.path, field, depth, f"at most {MAX_ARRAY_DEPTH} nested arrays")
        elem = self._value_type(f"{field} (array element type)")
        size = _min_value_bytes(elem)
        count = self.cur.count(f"{field} (array count)", size, f"{elem.name} elements of >= {size} bytes")
        if elem == ValueType.STRING:
            return self.cur.strings(count, field), (ValueType.ARRAY, elem)
        if elem == ValueType.ARRAY:
            items = [self._array(f"{field}[{i}]", depth + 1) for i in range(count)]
            return [v for v, _ in items], (ValueType.ARRAY, *_common_prefix([t for _, t in items], elem))
        values = self.cur.array(elem, count, field)
        if elem == ValueType.BOOL:
            values = self._bools(values, field, scalar=False)
        return values, (ValueType.ARRAY, elem)

    def _bools(self, raw: np.ndarray, field: str, scalar: bool) -> np.ndarray:
        bad = np.flatnonzero(raw > 1)
        if bad.size:
            where = field if scalar else f"{field}[{bad[0]}]"
            raise ValueKindError(self.path, where, int(raw[bad[0]]), "a bool byte, 0 or 1")
        return raw.astype(bool)

    def _tensor_infos(self, n_tensors: int) -> list[_RawTensor]:
        infos: list[_RawTensor] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = self.cur.string(f"tensor #{i} name")
            if name in seen:
                raise DuplicateError(self.path, f"tensor #{i} name", name, "each tensor name once")
            seen.add(name)
            shape = self._shape(name)
            type_id = self.cur.u32(f"tensor {name!r} type")
            offset = self.cur.u64(f"tensor {name!r} offset")
            infos.append(_RawTensor(name, shape, type_id, offset))
        return infos

    def _shape(self, name: str) -> tuple[int, ...]:
        n_dims = self.cur.u32(f"tensor {name!r} n_dims")
        if n_dims > GGML_MAX_DIMS:
            raise CountError(self.path, f"tensor {name!r} n_dims", n_dims, f"at most {GGML_MAX_DIMS} (GGML_MAX_DIMS)")
        shape = tuple(self.cur.u64(f"tensor {name!r} ne[{j}]") for j in range(n_dims))
        for j, ne in enumerate(shape):
            if not 0 < ne <= INT64_MAX:
                raise TensorShapeError(self.path, f"tensor {name!r} ne[{j}]", ne, f"1 .. {INT64_MAX}")
        if math.prod(shape) > INT64_MAX:
            raise TensorShapeError(self.path, f"tensor {name!r} shape", shape, f"at most {INT64_MAX} elements")
        return shape


def _common_prefix(paths: list[tuple[ValueType, ...]], elem: ValueType) -> tuple[ValueType, ...]:
    """Type path shared by all elements of a nested array (just the element type when they differ or are absent)."""
    if not paths:
        return (elem,)
    prefix = paths[0]
    for p in paths[1:]:
        n = 0
        while n < min(len(prefix), len(p)) and prefix[n] == p[n]:
            n += 1
        prefix = prefix[:n]
    return prefix or (elem,)


def _alignment(header: _Header, path: Path) -> int:
    """general.alignment (u32, a power of two) or the default 32."""
    if KEY_ALIGNMENT not in header.metadata:
        return GGUF_DEFAULT_ALIGNMENT
    value = header.metadata[KEY_ALIGNMENT]
    if header.value_types[KEY_ALIGNMENT] != (ValueType.UINT32,):
        kinds = "/".join(t.name for t in header.value_types[KEY_ALIGNMENT])
        raise AlignmentError(path, KEY_ALIGNMENT, value, f"a UINT32 value, not {kinds}")
    if value <= 0 or value & (value - 1):
        raise AlignmentError(path, KEY_ALIGNMENT, value, "a power of two")
    return value


class _Layout:
    """Resolves tensor types (ids 36-39 included) and checks alignment, sizes and bounds of the data section."""

    def __init__(self, header: _Header, path: Path, file_size: int) -> None:
        self.header = header
        self.path = path
        self.alignment = _alignment(header, path)
        self.data_start = _align(header.end, self.alignment)
        self.data_size = file_size - self.data_start
        self.by_name = {t.name: t for t in header.tensors}
        self.room = self._room()
        self.fork_reasons = self._fork_reasons()

    def tensors(self) -> dict[str, TensorInfo]:
        """Validated TensorInfos in file order."""
        for t in self.header.tensors:
            if t.offset % self.alignment:
                raise AlignmentError(
                    self.path, f"tensor {t.name!r} offset", t.offset, f"a multiple of the alignment {self.alignment}"
                )
        resolved = [self._resolve(t) for t in self.header.tensors]
        infos = {t.name: TensorInfo(t.name, t.shape, typ, self.data_start + t.offset, nb) for t, typ, nb in resolved}
        self._check_bounds(resolved)
        return infos

    def _room(self) -> dict[str, int]:
        """Bytes from each tensor's offset to the next tensor's offset (or the end of the file)."""
        order = sorted(self.header.tensors, key=lambda t: t.offset)
        ends = [t.offset for t in order[1:]] + [self.data_size]
        return {t.name: end - t.offset for t, end in zip(order, ends, strict=False)}

    def _fork_reasons(self) -> list[str]:
        reasons = []
        fork_tensor = next((t for t in self.header.tensors if t.type_id in FORK_TYPE_IDS), None)
        if fork_tensor is not None:
            kind = GGMLType(fork_tensor.type_id).name
            reasons.append(f"tensor {fork_tensor.name!r} has type {fork_tensor.type_id} ({kind}, bitnet.cpp only)")
        arch = self.header.metadata.get(KEY_ARCHITECTURE)
        if arch in FORK_ONLY_ARCHS:
            reasons.append(f"architecture {arch!r} exists only in bitnet.cpp")
        return reasons

    def _resolve(self, t: _RawTensor) -> tuple[_RawTensor, GGMLType, int]:
        """The tensor's type and formula byte size."""
        if t.type_id == GGMLType.I8_S:
            raise UnknownTypeError(
                self.path,
                f"tensor {t.name!r} type",
                t.type_id,
                "a stored type: 37 is I8_S, bitnet.cpp's runtime int8 activation type, which never appears in files",
            )
        if t.type_id == MXFP4_TYPE_ID:
            return t, GGMLType.TL2, self._resolve_39(t)
        if t.type_id not in formats.REGISTRY:
            known = ", ".join(f"{k.name}={int(k)}" for k in formats.REGISTRY)
            raise UnknownTypeError(self.path, f"tensor {t.name!r} type", t.type_id, f"a supported type id ({known})")
        typ = GGMLType(t.type_id)
        return t, typ, self._nbytes(t, formats.get(typ))

    def _nbytes(self, t: _RawTensor, fmt: ModuleType) -> int:
        try:
            return fmt.nbytes(t.shape)
        except _FormatError as e:
            raise TensorShapeError(
                self.path, f"tensor {t.name!r} shape", t.shape, f"a shape {fmt.TYPE.name} can hold: {e}"
            ) from None

    def _has_scale_tensor(self, t: _RawTensor) -> bool:
        s = self.by_name.get(t.name + TL_SCALE_SUFFIX)
        return s is not None and s.type_id == GGMLType.F32 and math.prod(s.shape) == 1

    def _resolve_39(self, t: _RawTensor) -> int:
        """TL2's size if context marks type 39 as bitnet.cpp's TL2; else it is mainline MXFP4 (FORMATS.md §2)."""
        reasons = list(self.fork_reasons)
        if self._has_scale_tensor(t):
            reasons.append(f"a 1-element F32 tensor {t.name + TL_SCALE_SUFFIX!r} exists")
        if reasons:
            return self._nbytes(t, tl2)  # _check_bounds then confirms the extent
        room = self.room[t.name]
        tl2_size = _size_or_none(tl2, t.shape)
        mxfp4_size = _mxfp4_nbytes(t.shape)
        sizes = ", ".join(
            f"{kind} {'cannot hold this shape' if size is None else f'would take {size} bytes'}"
            for kind, size in (("TL2", tl2_size), ("MXFP4", mxfp4_size))
        )
        sizes += f"; {room} bytes lie before the next tensor"
        undecided = ""
        if tl2_size is not None and tl2_size <= room and (mxfp4_size is None or mxfp4_size > room):
            undecided = " Its bytes fit TL2 but not MXFP4, so the type cannot be decided from this file."
        raise UnknownTypeError(
            self.path,
            f"tensor {t.name!r} type",
            t.type_id,
            "a supported type. Type 39 is MXFP4 in mainline ggml, which bitnet-ref does not read. It could not be "
            f"bitnet.cpp's TL2: there is no 1-element F32 tensor {t.name + TL_SCALE_SUFFIX!r}, no I2_S/TL1 tensor, and "
            f"architecture {self.header.metadata.get(KEY_ARCHITECTURE)!r} is not one of {FORK_ONLY_ARCHS} "
            f"(general.file_type = {self.header.metadata.get(KEY_FILE_TYPE)!r}; {sizes}).{undecided}",
        )

    def _check_bounds(self, resolved: list[tuple[_RawTensor, GGMLType, int]]) -> None:
        """Each tensor's [offset, offset + nbytes) ends before the next tensor's offset and inside the file."""
        order = sorted(resolved, key=lambda r: r[0].offset)
        for i, (t, typ, nbytes) in enumerate(order):
            end = t.offset + nbytes
            size = f"{typ.name} {t.shape} takes {nbytes} bytes"
            if i + 1 < len(order) and end > order[i + 1][0].offset:
                nxt = order[i + 1][0]
                raise TensorBoundsError(
                    self.path,
                    f"tensor {t.name!r} data",
                    (t.offset, end),
                    f"no overlap with tensor {nxt.name!r} at relative offset {nxt.offset} ({size})",
                )
            if end > self.data_size:
                raise TensorBoundsError(
                    self.path,
                    f"tensor {t.name!r} data",
                    (self.data_start + t.offset, self.data_start + end),
                    f"inside the file, which ends at byte {self.data_start + self.data_size} ({size}; truncated?)",
                )


def _size_or_none(fmt: ModuleType, shape: tuple[int, ...]) -> int | None:
    try:
        return fmt.nbytes(shape)
    except _FormatError:
        return None


def _mxfp4_nbytes(shape: tuple[int, ...]) -> int | None:
    if not shape or shape[0] % MXFP4_BLOCK_ELEMS:
        return None
    return math.prod(shape) // MXFP4_BLOCK_ELEMS * MXFP4_BLOCK_BYTES


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open and fully validate a GGUF file's header; tensor data is mapped, never read."""
    path = Path(path)
    size = check_readable(path)
    if size < len(GGUF_MAGIC):
        raise BadMagicError(path, "magic", f"a {size}-byte file", f"{GGUF_MAGIC!r} (not a GGUF file)")
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as e:
        raise FileAccessError(path, "read", e) from None
    header = _HeaderParser(memoryview(data), path).parse()
    layout = _Layout(header, path, size)
    tensors = layout.tensors()
    return GGUFFile(
        path, data, header.version, layout.alignment, layout.data_start, header.metadata, header.value_types, tensors
    )


# ----------------------------------------------------------------------------------------------------------------------
# Opening files: a missing path, a directory or a FIFO is a FileAccessError naming the file, never a bare OSError


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "not a regular file")


def check_readable(path: Path) -> int:
    """Size of path, which must be an existing regular file (a FIFO would block a reader forever)."""
    try:
        st = path.stat()
    except NotADirectoryError as e:
        blocker = next((p for p in reversed(path.parents) if p.is_file()), None)  # the file used as a folder
        raise FileAccessError(path, "read", e if blocker is None else f"{blocker} is a file, not a directory") from None
    except OSError as e:
        raise FileAccessError(path, "read", e) from None
    if not stat.S_ISREG(st.st_mode):
        raise FileAccessError(path, "read", f"it is {_kind(st.st_mode)}, not a regular file")
    return st.st_size


def check_writable(path: Path) -> None:
    """FileAccessError unless path's folder exists and path is absent or a regular file (checked before writing)."""
    folder = path.parent
    if not folder.is_dir():
        reason = "is not a directory" if folder.exists() else "does not exist"
        raise FileAccessError(path, "write", f"its folder {folder} {reason}")
    if path.exists() and not path.is_file():
        raise FileAccessError(path, "write", f"it is {_kind(path.stat().st_mode)}, not a regular file")


def open_file(path: str | os.PathLike, mode: str) -> BinaryIO:
    """open(path, mode) for "rb" or "wb", with every failure a FileAccessError naming the path."""
    path = Path(path)
    action = "read" if mode.startswith("r") else "write"
    if action == "read":
        check_readable(path)
    else:
        check_writable(path)
    try:
        return open(path, mode)
    except OSError as e:
        raise FileAccessError(path, action, e) from None


# ----------------------------------------------------------------------------------------------------------------------
# Scales of ternary tensors


def check_scales(gguf: GGUFFile) -> None:
    """Read every scale of every ternary tensor; ScaleError names the first negative, NaN or infinite one."""
    for info in gguf.tensors.values():
        if info.type in (GGMLType.TQ1_0, GGMLType.TQ2_0):
            _check(gguf, info.name, _block_scales(gguf.tensor_bytes(info.name), formats.get(info.type)), per_block=True)
        elif info.type == GGMLType.I2_S:
            _check(gguf, info.name, _i2_s_scale(gguf.tensor_bytes(info.name), info), per_block=False)
        elif info.type in (GGMLType.TL1, GGMLType.TL2):
            _check(gguf, info.name + TL_SCALE_SUFFIX, _tl_scale(gguf, info), per_block=False)


def _block_scales(raw: np.ndarray, fmt: ModuleType) -> np.ndarray:
    """Strided view of each block's f16 d, the last field of a TQ1_0/TQ2_0 block."""
    n_blocks = raw.size // fmt.BLOCK_BYTES
    d_offset = fmt.BLOCK_BYTES - _F16.itemsize
    return np.ndarray((n_blocks,), dtype=_F16, buffer=raw, offset=d_offset, strides=(fmt.BLOCK_BYTES,))


def _i2_s_scale(raw: np.ndarray, info: TensorInfo) -> np.ndarray:
    """The f32 scale of an I2_S tensor, at byte n/4 (right after the codes, FORMATS.md §3.1)."""
    start = info.nbytes - i2_s.TRAILER_BYTES
    return raw[start : start + _F32.itemsize].view(_F32)


def _tl_scale(gguf: GGUFFile, info: TensorInfo) -> np.ndarray:
    """The value of the `<name>_scale` tensor of a TL1/TL2 weight."""
    scale = gguf.tensors.get(info.name + TL_SCALE_SUFFIX)
    if scale is None or scale.type != GGMLType.F32 or scale.n_elements != 1:
        found = None if scale is None else (scale.type.name, scale.shape)
        raise ScaleError(
            gguf.path,
            f"tensor {info.name + TL_SCALE_SUFFIX!r}",
            found,
            f"a 1-element F32 tensor holding the scale of {info.name!r}",
        )
    return gguf.tensor_bytes(scale.name).view(_F32)


def _check(gguf: GGUFFile, name: str, scales: np.ndarray, per_block: bool) -> None:
    """ScaleError for the first scale that is negative, NaN or infinite."""
    bad = np.flatnonzero(~(scales >= 0) | np.isinf(scales))
    if bad.size:
        i = int(bad[0])
        where = f"tensor {name!r} block {i} scale d" if per_block else f"tensor {name!r} scale"
        raise ScaleError(gguf.path, where, float(scales[i]), "a finite, non-negative scale")


# ----------------------------------------------------------------------------------------------------------------------
# Writing


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
        return _U64.pack(len(raw)) + raw

    def array(self, value: object, elem_types: tuple[ValueType, ...], field: str) -> bytes:
        """u32 element type, u64 count, elements."""
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise ValueKindError(self.path, field, value, "a list, tuple or 1-D numpy array for an ARRAY value")
        elem_types = elem_types or self.infer_elements(value, field)
        elem = elem_types[0]
        head = _U32.pack(elem) + _U64.pack(len(value))
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
        pack = _U64.pack
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
        self._kv[key] = self._encoder.string(key, "key") + _U32.pack(vtype) + raw

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
        self._next_offset += _align(size, self.alignment)

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
        parts = [GGUF_MAGIC, _U32.pack(self.version), _U64.pack(len(self._tensors)), _U64.pack(len(self._kv))]
        parts += self._kv.values()
        parts += [self._tensor_info(t) for t in self._tensors]
        header = b"".join(parts)
        self._file.write(header + bytes(_align(len(header), self.alignment) - len(header)))
        self._header_done = True

    def _tensor_info(self, t: _PlannedTensor) -> bytes:
        dims = b"".join(_U64.pack(d) for d in t.shape)
        return (
            self._encoder.string(t.name, "tensor name")
            + _U32.pack(len(t.shape))
            + dims
            + _U32.pack(t.type)
            + _U64.pack(t.offset)
        )

    def _check_scale_tensors(self) -> None:
        """Every TL1/TL2 weight is followed by its 1-element F32 `<name>_scale` tensor (FORMATS.md §3.5)."""
        for i, t in enumerate(self._tensors):
            if t.type not in (GGMLType.TL1, GGMLType.TL2):
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
        self._file.write(bytes(_align(t.nbytes, self.alignment) - t.nbytes))
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
