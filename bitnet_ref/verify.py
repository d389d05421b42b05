"""Full verification of a GGUF model: header, scales, config and tensor shapes, then every tensor decoded."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from bitnet_ref import formats
from bitnet_ref.config import ModelConfig
from bitnet_ref.constants import KEY_ARCHITECTURE, TL_SCALE_SUFFIX, GGMLType
from bitnet_ref.errors import BitnetRefError, FileAccessError, ScaleError
from bitnet_ref.formats import i2_s
from bitnet_ref.gguf_reader import GGUFFile, TensorInfo, read_gguf

CHUNK_ELEMENTS = 1 << 22  # verify decodes big tensors in row chunks of about this many elements
TERNARY_CHECKED = (GGMLType.TQ1_0, GGMLType.TQ2_0, GGMLType.I2_S)
TL_TYPES = (GGMLType.TL1, GGMLType.TL2)
_F16 = np.dtype("<f2")
_F32 = np.dtype("<f4")


class VerifyProblem(Exception):
    """The first problem verify found in a tensor's data (internal to verify)."""


@dataclass
class Verdict:
    """Outcome of verify: ok, or the stage and first problem; counts of what was checked."""

    file: str
    ok: bool = True
    stage: str = "done"
    problem: str | None = None
    arch: str | None = None
    n_tensors: int = 0
    n_ternary: int = 0
    elements: int = 0
    types: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        """One-line verdict."""
        if not self.ok:
            return f"FAIL {self.file}: {self.stage}: {self.problem}"
        types = ", ".join(f"{n} {t}" for t, n in self.types.items())
        ternary = (
            f"{self.n_ternary} ternary tensors in {{-1,0,1}}*scale with finite positive scales"
            if self.n_ternary
            else "no ternary tensors"
        )
        skipped = f" ({len(self.skipped)} TL tensors: scales only, codes not decoded)" if self.skipped else ""
        return (
            f"OK {self.file}: {self.arch}, {self.n_tensors} tensors ({types}), {self.elements:,} values decoded, "
            f"all finite, {ternary}{skipped} ({self.seconds:.1f} s)"
        )


def verify(path: Path) -> Verdict:
    """Read and validate the header, every scale, the config and tensor shapes, then decode every tensor."""
    start = time.perf_counter()
    v = Verdict(file=str(path))
    stage = "read"
    try:
        with read_gguf(path) as g:
            v.arch, v.n_tensors = g.metadata.get(KEY_ARCHITECTURE), len(g.tensors)
            v.types = dict(Counter(t.type.name for t in g.tensors.values()))
            stage = "scales"
            check_scales(g)
            stage = "config"
            ModelConfig.from_gguf(g).check_tensors(g)
            stage = "tensors"
            for info in g.tensors.values():
                v.elements += _verify_tensor(g, info, v)
    except FileAccessError:
        raise  # no file to judge: the path is wrong, which is the caller's error and not a verdict on a model
    except (BitnetRefError, VerifyProblem) as e:
        v.ok, v.stage, v.problem = False, stage, str(e)
    v.seconds = time.perf_counter() - start
    return v


def _verify_tensor(g: GGUFFile, info: TensorInfo, v: Verdict) -> int:
    """Decode one tensor chunk by chunk (values must be finite; ternary ones in {-1, 0, 1} * scale); returns the number
    of values decoded. TL1/TL2 codes are not decoded: their tiling is a build setting the file does not record."""
    if info.type in TL_TYPES:
        v.skipped.append(info.name)
        v.n_ternary += 1
        return 0
    fmt = formats.get(info.type)
    raw = g.tensor_bytes(info.name)
    if info.type == GGMLType.I2_S:
        _check_i2_s_codes(info, raw)
    for row0, chunk, shape in _row_chunks(info, raw):
        w = fmt.decode(chunk, shape)
        if info.type in TERNARY_CHECKED:
            _check_ternary(info, row0, w, fmt.ternary(chunk, shape), fmt.scales(chunk, shape))
        elif not np.isfinite(w).all():
            r, c = np.argwhere(~np.isfinite(w.reshape(-1, info.cols)))[0]
            raise VerifyProblem(f"tensor {info.name!r} row {row0 + r} col {c}: value {w.reshape(-1, info.cols)[r, c]}")
    v.n_ternary += info.type in TERNARY_CHECKED
    return info.n_elements


def _row_chunks(info: TensorInfo, raw: np.ndarray) -> Iterator[tuple[int, np.ndarray, tuple[int, ...]]]:
    """(first row, bytes, ggml shape) of consecutive row chunks; I2_S chunks carry the tensor's scale trailer."""
    k, rows = info.cols, info.rows
    if len(info.shape) < 2:
        yield 0, raw, info.shape
        return
    step = max(1, CHUNK_ELEMENTS // k)
    if info.type == GGMLType.I2_S:
        codes, trailer = raw[: info.n_elements // 4], raw[info.n_elements // 4 :]
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            yield r0, np.concatenate([codes[r0 * k // 4 : r1 * k // 4], trailer]), (k, r1 - r0)
        return
    row_bytes = formats.get(info.type).nbytes((k,))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        yield r0, raw[r0 * row_bytes : r1 * row_bytes], (k, r1 - r0)


def _check_ternary(info: TensorInfo, row0: int, w: np.ndarray, t: np.ndarray, scales: np.ndarray) -> None:
    """Codes are -1, 0 or 1; a block with a nonzero code has a finite positive scale; values are 0 or +-scale."""
    block = info.cols // scales.shape[-1] if scales.size > 1 else info.cols
    shape3 = (-1, info.cols // block, block)
    w3, t3 = w.reshape(shape3), t.reshape(shape3)
    d = np.broadcast_to(scales.reshape(-1), (w3.shape[0] * w3.shape[1],)).reshape(w3.shape[:2])
    bad = np.abs(t3.astype(np.int16)) > 1
    if bad.any():
        r, b, j = np.argwhere(bad)[0]
        raise VerifyProblem(
            f"tensor {info.name!r} row {row0 + r} col {b * block + j}: code value {t3[r, b, j]} (decodes to "
            f"{w3[r, b, j]}) is not in {{-1, 0, 1}}"
        )
    bad_scale = (t3 != 0).any(axis=2) & ~((d > 0) & np.isfinite(d))
    if bad_scale.any():
        r, b = np.argwhere(bad_scale)[0]
        raise VerifyProblem(f"tensor {info.name!r} row {row0 + r} block {b}: scale {d[r, b]} (expected finite, > 0)")
    a = np.abs(w3)
    bad = ~((a == 0) | (a == d[..., None]))
    if bad.any():
        r, b, j = np.argwhere(bad)[0]
        raise VerifyProblem(
            f"tensor {info.name!r} row {row0 + r} col {b * block + j}: value {w3[r, b, j]} is not in "
            f"{{-1, 0, 1}} * {d[r, b]}"
        )


def _check_i2_s_codes(info: TensorInfo, raw: np.ndarray) -> None:
    """I2_S code 3 is never written (the fork decodes it as 0, hiding it): find any."""
    codes = raw[: info.n_elements // 4]
    hits = np.flatnonzero((codes & (codes >> 1) & 0x55) != 0)
    if hits.size:
        byte = int(hits[0])
        raise VerifyProblem(
            f"tensor {info.name!r} byte {byte} (block {byte // (i2_s.BLOCK_X86 // 4)}) holds code 3, never written"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Scales of ternary tensors


def check_scales(gguf: GGUFFile) -> None:
    """Read every scale of every ternary tensor; ScaleError names the first negative, NaN or infinite one."""
    for info in gguf.tensors.values():
        if info.type in (GGMLType.TQ1_0, GGMLType.TQ2_0):
            _check(gguf, info.name, _block_scales(gguf.tensor_bytes(info.name), formats.get(info.type)), per_block=True)
        elif info.type == GGMLType.I2_S:
            _check(gguf, info.name, _i2_s_scale(gguf.tensor_bytes(info.name), info), per_block=False)
        elif info.type in TL_TYPES:
            _check(gguf, info.name + TL_SCALE_SUFFIX, _tl_scale(gguf, info), per_block=False)


def _block_scales(raw: np.ndarray, fmt: ModuleType) -> np.ndarray:
    """Strided view of each block's f16 d, the last field of a TQ1_0/TQ2_0 block."""
    n_blocks = raw.size // fmt.BLOCK_BYTES
    d_offset = fmt.BLOCK_BYTES - _F16.itemsize
    return np.ndarray((n_blocks,), dtype=_F16, buffer=raw, offset=d_offset, strides=(fmt.BLOCK_BYTES,))


def _i2_s_scale(raw: np.ndarray, info: TensorInfo) -> np.ndarray:
    """The f32 scale of an I2_S tensor, at byte n/4 (right after the codes, docs/FORMATS.md §3.1)."""
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
