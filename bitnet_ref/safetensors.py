"""safetensors reading: a validating, zero-copy reader of one file or of a sharded set (docs/FORMATS.md §10).

Layout of a file: a little-endian u64 N, then N bytes of JSON mapping each tensor name to `{"dtype", "shape",
"data_offsets": [begin, end]}` (offsets relative to the data section after the header; an optional
`"__metadata__"` of strings), then the data, row-major. A sharded checkpoint has `model.safetensors.index.json`
whose `weight_map` names the shard of every tensor. Every header field is checked before it sizes anything.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_ref.errors import CheckpointError
from bitnet_ref.files import check_readable, read_json_object

HEADER_LEN = struct.Struct("<Q")
MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses larger headers too
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}  # BF16 is read as its uint16 bits
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class Tensor:
    """One stored tensor: its file, dtype name, shape (outermost first) and absolute byte range."""

    path: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


class SafetensorsFiles:
    """The tensors of one or more safetensors files, each file memory-mapped once; `array(name)` is a read-only view."""

    def __init__(self, folder: Path, tensors: dict[str, Tensor]) -> None:
        self.folder = folder
        self.tensors = tensors
        self._maps: dict[Path, np.memmap] = {}

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy view in its stored dtype (BF16 as uint16 bits) and shape."""
        t = self.tensors.get(name)
        if t is None:
            raise CheckpointError(self.folder, "tensor", name, f"one of the {len(self.tensors)} tensor names")
        data = self._maps.get(t.path)
        if data is None:
            data = self._maps[t.path] = np.memmap(t.path, dtype=np.uint8, mode="r")
        return data[t.begin : t.end].view(DTYPES[t.dtype]).reshape(t.shape)

    def close(self) -> None:
        """Drop the mappings; views handed out stay valid."""
        self._maps.clear()


def read_safetensors(folder: Path) -> SafetensorsFiles:
    """The tensors of a checkpoint folder: the shards its index names, else its single model.safetensors."""
    index = folder / INDEX_NAME
    if index.exists():
        return SafetensorsFiles(folder, _sharded(index))
    single = folder / SINGLE_NAME
    if single.exists():
        return SafetensorsFiles(folder, read_header(single))
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    raise CheckpointError(folder, "weights", found or "none",
                          f"{SINGLE_NAME}, or {INDEX_NAME} naming the shards")


def _sharded(index: Path) -> dict[str, Tensor]:
    """Every tensor of the shards an index names; each name must be in the shard the index says."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(index, "weight_map", type(weight_map).__name__, "an object of tensor name -> shard file")
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard:
            raise CheckpointError(index, "weight_map", shard, "a file name in the checkpoint folder")
        for name, t in read_header(index.parent / shard).items():
            if weight_map.get(name) != shard:
                raise CheckpointError(index, f"weight_map[{name!r}]", weight_map.get(name), f"{shard}, which holds it")
            tensors[name] = t
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(index, f"weight_map[{missing[0]!r}]", weight_map[missing[0]], "a shard that holds it")
    return tensors


def read_header(path: str | os.PathLike) -> dict[str, Tensor]:
    """The validated tensor table of one safetensors file: names, dtypes, shapes, absolute byte ranges."""
    path = Path(path)
    size = check_readable(path)
    with open(path, "rb") as f:
        head = f.read(HEADER_LEN.size)
        if len(head) < HEADER_LEN.size:
            raise CheckpointError(path, "header length", f"{len(head)} bytes", "an 8-byte little-endian u64")
        (n,) = HEADER_LEN.unpack(head)
        if n > min(MAX_HEADER_BYTES, size - HEADER_LEN.size):
            raise CheckpointError(path, "header length", n, f"at most {min(MAX_HEADER_BYTES, size - 8)} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, "header", str(e), "a UTF-8 JSON object") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "header", type(header).__name__, "a JSON object")
    start = HEADER_LEN.size + n
    header.pop("__metadata__", None)
    tensors = {name: _tensor(path, name, entry, start, size) for name, entry in header.items()}
    _check_overlaps(path, tensors)
    return tensors


def _tensor(path: Path, name: str, entry: object, start: int, size: int) -> Tensor:
    """One header entry, checked: a known dtype, a shape of non-negative ints, offsets that fit it and the file."""
    if not isinstance(entry, dict):
        raise CheckpointError(path, f"tensor {name!r}", type(entry).__name__, "an object with dtype, shape, offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise CheckpointError(path, f"tensor {name!r} dtype", dtype, f"one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(path, f"tensor {name!r} shape", shape, "a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= size - start):
        raise CheckpointError(path, f"tensor {name!r} data_offsets", offsets,
                              f"[begin, end] with 0 <= begin <= end <= {size - start} (the data section)")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(path, f"tensor {name!r} data_offsets", offsets,
                              f"{nbytes} bytes for {dtype} of shape {tuple(shape)}")
    return Tensor(path, dtype, tuple(shape), start + offsets[0], start + offsets[1])


def _check_overlaps(path: Path, tensors: dict[str, Tensor]) -> None:
    """No two tensors share bytes."""
    spans = sorted((t.begin, t.end, name) for name, t in tensors.items() if t.end > t.begin)
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise CheckpointError(path, f"tensor {b!r} data_offsets", begin, f"bytes that do not overlap tensor {a!r}")
