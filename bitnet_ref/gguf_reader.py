"""GGUF reading: a validating, zero-copy reader of v2 and v3 files, and the layout primitives the writer shares.

Layout (docs/FORMATS.md §1): magic, u32 version, u64 n_tensors, u64 n_kv, the KV pairs, the tensor infos, zero
padding up to the alignment, then the data section; a tensor's stored offset is relative to the start of that
section. GGUF v1 used u32 counts and lengths; v2 made every count and length u64 and v3 only added big-endian files,
so v2 and v3 little-endian files share one layout, which is all this module reads (and bitnet_ref.gguf_writer
writes).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_ref import formats
from bitnet_ref.constants import (
    FORK_ONLY_ARCHS,
    GGML_MAX_DIMS,
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
from bitnet_ref.files import check_readable
from bitnet_ref.formats import TL2, Format

MAX_ARRAY_DEPTH = 8  # nested metadata arrays deeper than this are refused (no real file nests more than 2)
INT64_MAX = 2**63 - 1  # ggml stores ne[] and element counts as int64
FORK_TYPE_IDS = (GGMLType.I2_S, GGMLType.TL1)  # ids that only bitnet.cpp's fork writes (docs/FORMATS.md §2, rule 1)

U32 = struct.Struct("<I")  # the header's ids and counts are little-endian u32 and u64 (also used by gguf_writer)
U64 = struct.Struct("<Q")
_STRING_MIN_BYTES = U64.size  # a string is a u64 length and the bytes
_ARRAY_MIN_BYTES = U32.size + U64.size  # an array is a u32 element type, a u64 count and the elements
_KV_MIN_BYTES = _STRING_MIN_BYTES + U32.size + 1  # key, value type, at least one byte of value
_TENSOR_INFO_MIN_BYTES = _STRING_MIN_BYTES + U32.size + U32.size + U64.size  # name, n_dims, type, offset
_NO_DEFAULT = object()


def align(n: int, alignment: int) -> int:
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

    def tl_scale(self, weight_name: str) -> np.ndarray:
        """The 1-element f32 view of a TL1/TL2 weight's `<name>_scale` tensor (docs/FORMATS.md §3.5); ScaleError when
        there is no such 1-element F32 tensor."""
        name = weight_name + TL_SCALE_SUFFIX
        scale = self.tensors.get(name)
        if scale is None or scale.type != GGMLType.F32 or scale.n_elements != 1:
            found = None if scale is None else (scale.type.name, scale.shape)
            raise ScaleError(
                self.path, f"tensor {name!r}", found, f"a 1-element F32 tensor holding the scale of {weight_name!r}"
            )
        return self.tensor_bytes(name).view("<f4")

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
        return U32.unpack_from(self.buf, self.take(U32.size, field))[0]

    def u64(self, field: str) -> int:
        """Read a u64."""
        return U64.unpack_from(self.buf, self.take(U64.size, field))[0]

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
        buf, size, unpack = self.buf, self.size, U64.unpack_from
        out = []
        for i in range(count):
            if self.pos + U64.size > size:
                self.take(U64.size, f"{field}[{i}]")
            n = unpack(buf, self.pos)[0]
            start = self.pos + U64.size
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
            swapped = int.from_bytes(version.to_bytes(U32.size, "little"), "big")
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
        self.data_start = align(header.end, self.alignment)
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

    def _nbytes(self, t: _RawTensor, fmt: type[Format]) -> int:
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
        """TL2's size if context marks type 39 as bitnet.cpp's TL2; else it is mainline MXFP4 (docs/FORMATS.md §2)."""
        reasons = list(self.fork_reasons)
        if self._has_scale_tensor(t):
            reasons.append(f"a 1-element F32 tensor {t.name + TL_SCALE_SUFFIX!r} exists")
        if reasons:
            return self._nbytes(t, TL2)  # _check_bounds then confirms the extent
        room = self.room[t.name]
        tl2_size = _size_or_none(TL2, t.shape)
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


def _size_or_none(fmt: type[Format], shape: tuple[int, ...]) -> int | None:
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
