"""Full verification of a model (a GGUF, or an HF checkpoint as its weights are read): header, scales, config and tensor
shapes, then every tensor decoded."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitnet_ref import formats
from bitnet_ref.checkpoint import read_model_file
from bitnet_ref.config import ModelConfig
from bitnet_ref.constants import KEY_ARCHITECTURE, TL_SCALE_SUFFIX
from bitnet_ref.errors import BitnetRefError, ConfigError, FileAccessError, ScaleError
from bitnet_ref.formats import BlockFormat, Format
from bitnet_ref.gguf_reader import GGUFFile, TensorInfo
from bitnet_ref.layout import Layout, read_layout

CHUNK_ELEMENTS = 1 << 22  # verify decodes big tensors in row chunks of about this many elements


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
        skipped = f" ({len(self.skipped)} TL tensors with no tiling: scales only)" if self.skipped else ""
        return (
            f"OK {self.file}: {self.arch}, {self.n_tensors} tensors ({types}), {self.elements:,} values decoded, "
            f"all finite, {ternary}{skipped} ({self.seconds:.1f} s)"
        )


def verify(path: Path, kernel_config: Path | None = None) -> Verdict:
    """Read and validate the header, every scale, the config and tensor shapes, then decode every tensor (TL1/TL2
    with the tilings of `kernel_config` or the sidecar kernel_config.ini; without one only their scales)."""
    start = time.perf_counter()
    v = Verdict(file=str(path))
    stage = "read"
    try:
        with read_model_file(path) as g:
            v.arch, v.n_tensors = g.metadata.get(KEY_ARCHITECTURE), len(g.tensors)
            v.types = dict(Counter(t.type.name for t in g.tensors.values()))
            stage = "scales"
            check_scales(g)
            stage = "config"
            ModelConfig.from_gguf(g).check_tensors(g)
            stage = "layout"
            layout = read_layout(g, kernel_config=kernel_config)
            stage = "tensors"
            for info in g.tensors.values():
                v.elements += _verify_tensor(g, info, v, layout)
    except FileAccessError:
        raise  # no file to judge: the path is wrong, which is the caller's error and not a verdict on a model
    except (BitnetRefError, VerifyProblem) as e:
        v.ok, v.stage, v.problem = False, stage, str(e)
    v.seconds = time.perf_counter() - start
    return v


def _verify_tensor(g: GGUFFile, info: TensorInfo, v: Verdict, layout: Layout) -> int:
    """Decode one tensor chunk by chunk (values must be finite; ternary ones in {-1, 0, 1} * scale); returns the number
    of values decoded. TL1/TL2 codes are decoded whole with the layout's tiling (their scale tensor is checked apart);
    with none for their shape, they are skipped: the tiling is a build setting the file does not record."""
    fmt = formats.get(info.type)
    ternary = info.type in formats.TERNARY_TYPES
    if fmt.Tiling is not None:
        v.n_ternary += 1
        try:
            tiling = fmt.Tiling(*layout.tiling(fmt, info.rows, info.cols))
        except ConfigError:
            v.skipped.append(info.name)
            return 0
        fmt.ternary(g.tensor_bytes(info.name), info.shape, tiling)  # FormatError names a code out of range
        return info.n_elements
    raw = g.tensor_bytes(info.name)
    unwritten = fmt.unwritten_code(raw, info.shape)
    if unwritten is not None:
        raise VerifyProblem(f"tensor {info.name!r} {unwritten}")
    for row0, chunk, shape in _row_chunks(info, raw, fmt):
        w = fmt.decode(chunk, shape)
        if ternary:
            _check_ternary(info, row0, w, fmt.ternary(chunk, shape), fmt.scales(chunk, shape))
        elif not np.isfinite(w).all():
            r, c = np.argwhere(~np.isfinite(w.reshape(-1, info.cols)))[0]
            raise VerifyProblem(f"tensor {info.name!r} row {row0 + r} col {c}: value {w.reshape(-1, info.cols)[r, c]}")
    v.n_ternary += ternary
    return info.n_elements


def _row_chunks(
    info: TensorInfo, raw: np.ndarray, fmt: type[Format]
) -> Iterator[tuple[int, np.ndarray, tuple[int, ...]]]:
    """(first row, bytes, ggml shape) of consecutive row chunks, each a tensor of its own (`fmt.rows`)."""
    k, rows = info.cols, info.rows
    if len(info.shape) < 2:
        yield 0, raw, info.shape
        return
    step = max(1, CHUNK_ELEMENTS // k)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        yield r0, fmt.rows(raw, info.shape, r0, r1), (k, r1 - r0)


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


# ----------------------------------------------------------------------------------------------------------------------
# Scales of ternary tensors


def check_scales(gguf: GGUFFile) -> None:
    """Read every scale of every ternary tensor; ScaleError names the first negative, NaN or infinite one."""
    for info in gguf.tensors.values():
        fmt = formats.get(info.type)
        if fmt.SCALE_TENSOR:
            _check(gguf, info.name + TL_SCALE_SUFFIX, gguf.tl_scale(info.name), per_block=False)
        elif info.type in formats.TERNARY_TYPES:  # scales in the tensor: one per block, or one per tensor (I2_S)
            scales = fmt.stored_scales(gguf.tensor_bytes(info.name))
            _check(gguf, info.name, scales, per_block=issubclass(fmt, BlockFormat))


def _check(gguf: GGUFFile, name: str, scales: np.ndarray, per_block: bool) -> None:
    """ScaleError for the first scale that is negative, NaN or infinite."""
    bad = np.flatnonzero(~(scales >= 0) | np.isinf(scales))
    if bad.size:
        i = int(bad[0])
        where = f"tensor {name!r} block {i} scale d" if per_block else f"tensor {name!r} scale"
        raise ScaleError(gguf.path, where, float(scales[i]), "a finite, non-negative scale")
