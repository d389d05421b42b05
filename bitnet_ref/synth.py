"""Synthetic BitNet b1.58 models: realistic shapes and statistics, deterministic bytes, streamed to GGUF.

Weights of the 7 linears per layer are ternary T times a per-tensor absmean scale, as BitNet b1.58 training produces:
a master W ~ N(0, 1/K) is drawn, s = mean|W|, T = clamp(round(W / s), -1, 1), and the stored scale is s rounded to 8
significant bits, so it is exact in f16 and bf16: every format (F32, F16, BF16, TQ1_0, TQ2_0, I2_S) then holds exactly
the values T * scale (Q8_0 alone rounds them). Norm weights are 1 + N(0, 0.02^2) in F32; token embeddings are
N(0, (2/sqrt(n_embd))^2) rounded to f16 and stored F16 (F32 for the f32 format), the head tied to them.
IQ2_S, which has no zero level, holds the nearest values its codebook has (formats/iq2_s.py's encoder). TL1/TL2 files
get the tilings of `tl_tiling`, written beside the GGUF as bitnet.cpp's `<stem>.kernel_config.ini` (layout.py), and
each weight's 1-element F32 `<name>_scale` tensor holds its scale, as bitnet.cpp's converter writes them.
Each tensor has its own numpy Generator seeded from (seed, tensor name), so bytes do not depend on the order of work.
Files are written tensor by tensor (GGUFWriter), into a temporary file renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bitnet_ref import formats
from bitnet_ref.config import ModelConfig
from bitnet_ref.constants import (
    ARCH_BITNET,
    ARCH_BITNET_B158,
    KEY_ARCHITECTURE,
    KEY_BLOCK_COUNT,
    KEY_CONTEXT_LENGTH,
    KEY_EMBEDDING_LENGTH,
    KEY_FEED_FORWARD_LENGTH,
    KEY_FILE_TYPE,
    KEY_HEAD_COUNT,
    KEY_HEAD_COUNT_KV,
    KEY_NAME,
    KEY_RMS_EPS,
    KEY_ROPE_DIMENSION_COUNT,
    KEY_ROPE_FREQ_BASE,
    KEY_TOKENS,
    KEY_VOCAB_SIZE,
    TENSOR_TOKEN_EMBD,
    TL_SCALE_SUFFIX,
    ValueType,
)
from bitnet_ref.errors import ConfigError, FormatError
from bitnet_ref.files import atomic_path, file_sha256
from bitnet_ref.formats import F32, I2_S, I2_S_ARM, TQ2_0
from bitnet_ref.gguf_reader import read_gguf
from bitnet_ref.gguf_writer import GGUFWriter
from bitnet_ref.layout import Layout, kernel_config_text, read_layout, sidecar
from bitnet_ref.vocab import build_vocabulary

SYNTH_VERSION = 1  # bump whenever the bytes for the same arguments change; part of every cache key
ARCHS = (ARCH_BITNET, ARCH_BITNET_B158)
# the linears' format: a name ("tq2_0") of a format class with a FILE_TYPE, or "i2_s_arm" (I2_S in the ARM layout)
SYNTH_FORMATS: dict[str, type[formats.Format]] = {
    **{f.NAME: f for f in formats.REGISTRY.values() if f.FILE_TYPE is not None}, I2_S_ARM.NAME: I2_S_ARM
}
FORMATS = tuple(SYNTH_FORMATS)
TWIN_OF = (I2_S.TYPE, formats.TL1.TYPE, formats.TL2.TYPE)  # bitnet.cpp's types, which llama.cpp cannot load
RMS_EPS = 1e-5
NORM_NOISE = 0.02  # norm weights are 1 + N(0, NORM_NOISE^2)
EMBD_GAIN = 2.0  # embedding std = EMBD_GAIN / sqrt(n_embd): tied-head logits have std ~ EMBD_GAIN
SCALE_BITS = 8  # significant bits kept in a weight scale: exact in bf16 (8) and f16 (11)
EMBD_CHUNK_ROWS = 4096  # token_embd is drawn in chunks of this many rows, one Generator per chunk
KEY_SYNTH = "bitnet_ref.synth.{}"
KEY_TWIN_SOURCE = "bitnet_ref.twin.source"
TWIN_SUFFIX = f".{TQ2_0.NAME}-twin.gguf"
CACHE_ENV = "BITNET_REF_CACHE"  # overrides the cache root ~/.cache/bitnet-ref

Progress = Callable[[str, int, int], None]  # (tensor name just written, bytes written so far, total bytes)


@dataclass(frozen=True)
class Dims:
    """The dimensions a preset fixes and the CLI can override."""

    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_ctx: int
    rope_base: float


PRESETS = {
    "tiny": Dims(n_embd=256, n_ff=512, n_layer=2, n_head=4, n_head_kv=2, n_vocab=512, n_ctx=256, rope_base=500000.0),
    "small": Dims(
        n_embd=512, n_ff=1536, n_layer=4, n_head=8, n_head_kv=2, n_vocab=4096, n_ctx=1024, rope_base=500000.0
    ),
    "2b4t": Dims(
        n_embd=2560, n_ff=6912, n_layer=30, n_head=20, n_head_kv=5, n_vocab=128256, n_ctx=4096, rope_base=500000.0
    ),
}
DIM_NAMES = tuple(Dims.__dataclass_fields__)


def resolve_dims(preset: str, **dims: float | None) -> Dims:
    """The preset's dimensions with the given overrides (None means keep the preset's)."""
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r} is unknown; presets: {', '.join(PRESETS)}")
    unknown = sorted(set(dims) - set(DIM_NAMES))
    if unknown:
        raise ConfigError(f"unknown dimension(s) {', '.join(unknown)}; overridable: {', '.join(DIM_NAMES)}")
    given = {k: v for k, v in dims.items() if v is not None}
    for k, v in given.items():
        if k == "rope_base":
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not 0 < v < math.inf:
                raise ConfigError(f"rope_base = {v!r}; expected a positive finite number")
        elif isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ConfigError(f"{k} = {v!r}; expected a positive integer")
    resolved = replace(PRESETS[preset], **given)
    return replace(resolved, rope_base=float(resolved.rope_base))


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]  # ggml ne order
    fmt: type[formats.Format]
    kind: str  # "embd", "norm", "linear" or "scale" (a TL weight's `<name>_scale`)

    @property
    def nbytes(self) -> int:
        return self.fmt.nbytes(self.shape)


@dataclass(frozen=True)
class _Plan:
    """Everything a synthetic file holds, decided before any tensor is drawn."""

    seed: int
    metadata: list[tuple[str, object, tuple[ValueType, ...]]]
    tensors: list[_Tensor]


def synth_model(
    path: str | os.PathLike,
    *,
    preset: str = "tiny",
    fmt: str = "tq2_0",
    arch: str = ARCH_BITNET,
    seed: int = 0,
    vocab: str | os.PathLike | None = None,
    progress: Progress | None = None,
    **dims: float | None,
) -> Path:
    """Write a synthetic BitNet GGUF to path (streaming, atomically) and return the path."""
    plan = _plan(preset, fmt, arch, seed, vocab, dims)
    path = Path(path)
    tilings = _tilings(plan)
    if tilings:
        with atomic_path(sidecar(path)) as tmp:
            tmp.write_text(kernel_config_text(tilings), encoding="utf-8")
    with atomic_path(path) as tmp:
        _write(tmp, plan, progress)
    return path


def tl_tiling(fmt: type[formats.Format], m: int, k: int) -> tuple[int, int, int]:
    """The (BM, BK, bm) synthetic TL1/TL2 files use for an (M, K) weight: bm = 32, the largest BM of (256, 160, 128,
    64, 32) that divides M, and BK = the largest of (128, 64) dividing K (TL1) or 96 (TL2, bitnet.cpp's value)."""
    bm_tile = next((b for b in (256, 160, 128, 64, 32) if m % b == 0), 32)
    bks = (128, 64) if fmt is formats.TL1 else (96,)
    tiling = fmt.Tiling(bm_tile, next((b for b in bks if k % b == 0), bks[-1]), 32)
    tiling.check(m, k)
    return tiling.BM, tiling.BK, tiling.bm


def _tilings(plan: _Plan) -> tuple[tuple[int, int, int, int, int], ...]:
    """(M, K, BM, BK, bm) of every distinct TL weight shape of a plan, in first-use order."""
    rows: dict[tuple[int, int], tuple[int, int, int]] = {}
    for t in plan.tensors:
        if t.fmt.SCALE_TENSOR:
            k, m = t.shape
            rows.setdefault((m, k), tl_tiling(t.fmt, m, k))
    return tuple((*mk, *tiling) for mk, tiling in rows.items())


def cached_model(
    *,
    preset: str = "tiny",
    fmt: str = "tq2_0",
    arch: str = ARCH_BITNET,
    seed: int = 0,
    vocab: str | os.PathLike | None = None,
    progress: Progress | None = None,
    **dims: float | None,
) -> Path:
    """Path of the synthetic model for these arguments under the cache, generated on first use."""
    path = cache_path(preset=preset, fmt=fmt, arch=arch, seed=seed, vocab=vocab, **dims)
    if not path.exists() or (SYNTH_FORMATS[fmt].SCALE_TENSOR and not sidecar(path).exists()):
        path.parent.mkdir(parents=True, exist_ok=True)
        synth_model(path, preset=preset, fmt=fmt, arch=arch, seed=seed, vocab=vocab, progress=progress, **dims)
    return path


def cache_dir() -> Path:
    """Root of generated models: $BITNET_REF_CACHE or ~/.cache/bitnet-ref, with models/ below it."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bitnet-ref"
    return Path(root) / "models"


def cache_path(
    *,
    preset: str = "tiny",
    fmt: str = "tq2_0",
    arch: str = ARCH_BITNET,
    seed: int = 0,
    vocab: str | os.PathLike | None = None,
    **dims: float | None,
) -> Path:
    """Cache file name: readable arguments plus a short hash of all of them and SYNTH_VERSION."""
    resolved = resolve_dims(preset, **dims)
    _check_choice("fmt", fmt, FORMATS)
    _check_choice("arch", arch, ARCHS)
    key = {
        "version": SYNTH_VERSION,
        "preset": preset,
        "fmt": fmt,
        "arch": arch,
        "seed": int(seed),
        "dims": asdict(resolved),
        "vocab": file_sha256(vocab) if vocab is not None else None,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    custom = "" if resolved == PRESETS[preset] else "-custom"
    vocab_tag = "" if vocab is None else "-" + Path(vocab).stem
    return cache_dir() / f"{preset}{custom}-{arch}-{fmt}-seed{seed}{vocab_tag}-v{SYNTH_VERSION}-{digest}.gguf"


def tq2_0_twin(path: str | os.PathLike, layout: Layout | None = None, progress: Progress | None = None) -> Path:
    """A TQ2_0 copy with arch `bitnet` (llama.cpp-loadable) of a file with I2_S, TL1 or TL2 weights, cached beside it;
    `layout` says how those are read (default: layout.read_layout's, the x86 I2_S layout and the sidecar tilings).

    Ternary patterns are copied exactly; each block's d is fp16(scale) (TL: the `<name>_scale` tensor, which the copy
    drops), so the copy is lossless when the scale is f16-representable (every synthetic file) and within 2^-11
    relative otherwise."""
    src = Path(path)
    out = src.with_name(src.name.removesuffix(".gguf") + TWIN_SUFFIX)
    if out.exists() and out.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        return out
    with atomic_path(out) as tmp:
        _write_twin(src, tmp, layout, progress)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Planning


def _plan(
    preset: str, fmt: str, arch: str, seed: int, vocab: str | os.PathLike | None, dims: dict[str, float | None]
) -> _Plan:
    _check_choice("fmt", fmt, FORMATS)
    _check_choice("arch", arch, ARCHS)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed = {seed!r}; expected a non-negative integer")
    tokenizer = _vocab_file_kv(vocab) if vocab is not None else None
    if tokenizer is not None:
        n_tokens = len(tokenizer[KEY_TOKENS][0])
        if dims.get("n_vocab") not in (None, n_tokens):
            raise ConfigError(f"n_vocab = {dims['n_vocab']} but the vocabulary {vocab} has {n_tokens} tokens")
        dims = {**dims, "n_vocab": n_tokens}
    resolved = resolve_dims(preset, **dims)
    _check_blocks(resolved, fmt)
    if tokenizer is None:
        kv = [(k, v, t) for k, v, t in build_vocabulary(resolved.n_vocab).metadata()]
    else:
        kv = [(k, v, t) for k, (v, t) in tokenizer.items()]
    metadata = _arch_metadata(resolved, fmt, arch, preset, int(seed)) + kv
    config = ModelConfig.from_metadata({k: v for k, v, _ in metadata}, {}, where=f"synthetic {preset}")
    plan = _Plan(int(seed), metadata, _tensors(config, fmt))
    try:
        _tilings(plan)  # TL1/TL2: every weight shape must fit a tiling
    except FormatError as e:
        raise ConfigError(str(e)) from None
    return plan


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{what} = {value!r}; expected one of {', '.join(choices)}")


def _check_blocks(dims: Dims, fmt: str) -> None:
    """Every linear's K (n_embd, n_ff) must be a multiple of the format's block (TL1/TL2: _plan checks the tilings)."""
    cls = SYNTH_FORMATS[fmt]
    if cls.SCALE_TENSOR:
        return
    block = cls.BLOCK_ELEMS
    for name in ("n_embd", "n_ff"):
        value = getattr(dims, name)
        if value % block:
            raise ConfigError(f"{name} = {value} is not a multiple of {block}, which {fmt.upper()} rows need")


def _arch_metadata(dims: Dims, fmt: str, arch: str, preset: str, seed: int) -> list:
    """general.* and <arch>.* keys (docs/FORMATS.md §9) and the bitnet_ref.synth.* provenance keys."""
    u32, f32, s = (ValueType.UINT32,), (ValueType.FLOAT32,), (ValueType.STRING,)
    a = {"arch": arch}
    return [
        (KEY_ARCHITECTURE, arch, s),
        (KEY_NAME, f"bitnet-ref synthetic {preset}", s),
        (KEY_FILE_TYPE, int(SYNTH_FORMATS[fmt].FILE_TYPE), u32),
        (KEY_VOCAB_SIZE.format(**a), dims.n_vocab, u32),
        (KEY_CONTEXT_LENGTH.format(**a), dims.n_ctx, u32),
        (KEY_EMBEDDING_LENGTH.format(**a), dims.n_embd, u32),
        (KEY_BLOCK_COUNT.format(**a), dims.n_layer, u32),
        (KEY_FEED_FORWARD_LENGTH.format(**a), dims.n_ff, u32),
        (KEY_HEAD_COUNT.format(**a), dims.n_head, u32),
        (KEY_HEAD_COUNT_KV.format(**a), dims.n_head_kv, u32),
        (KEY_ROPE_DIMENSION_COUNT.format(**a), dims.n_embd // dims.n_head, u32),
        (KEY_ROPE_FREQ_BASE.format(**a), dims.rope_base, f32),
        (KEY_RMS_EPS.format(**a), RMS_EPS, f32),
        (KEY_SYNTH.format("version"), SYNTH_VERSION, u32),
        (KEY_SYNTH.format("preset"), preset, s),
        (KEY_SYNTH.format("format"), fmt, s),
        (KEY_SYNTH.format("seed"), seed, (ValueType.UINT64,)),
    ]


def _tensors(config: ModelConfig, fmt: str) -> list[_Tensor]:
    """The tensors of the file in writing order, with their types: F32 norms, F16 (or F32) embeddings."""
    embd_fmt = formats.F32 if fmt == F32.NAME else formats.F16
    linear = SYNTH_FORMATS[fmt]
    out = []
    for name, shape in config.expected_tensors().items():
        if name == TENSOR_TOKEN_EMBD:
            out.append(_Tensor(name, shape, embd_fmt, "embd"))
        elif len(shape) == 1:
            out.append(_Tensor(name, shape, formats.F32, "norm"))
        else:
            out.append(_Tensor(name, shape, linear, "linear"))
            if linear.SCALE_TENSOR:
                out.append(_Tensor(name + TL_SCALE_SUFFIX, (1,), formats.F32, "scale"))
    return out


def _vocab_file_kv(vocab: str | os.PathLike) -> dict[str, tuple[object, tuple[ValueType, ...]]]:
    """Every tokenizer.* key of a (vocab-only) GGUF, with its exact value types."""
    with read_gguf(vocab) as g:
        kv = {k: (v, g.value_types[k]) for k, v in g.metadata.items() if k.startswith("tokenizer.")}
    if KEY_TOKENS not in kv:
        raise ConfigError(f"{vocab}: no {KEY_TOKENS}; --vocab needs a GGUF with a tokenizer")
    return kv



# ----------------------------------------------------------------------------------------------------------------------
# Drawing and writing


def _write(path: Path, plan: _Plan, progress: Progress | None) -> None:
    total = sum(t.nbytes for t in plan.tensors)
    if progress is not None:
        progress("", 0, total)
    done = 0
    with GGUFWriter(path) as w:
        for key, value, types in plan.metadata:
            w.add_kv(key, value, types)
        for t in plan.tensors:
            w.add_tensor(t.name, t.shape, t.fmt.TYPE, t.nbytes)
        w.write_header()
        shapes = {t.name: t.shape for t in plan.tensors}
        for t in plan.tensors:
            shape = shapes[t.name.removesuffix(TL_SCALE_SUFFIX)] if t.kind == "scale" else t.shape
            w.write_tensor(t.name, tensor_bytes(t.name, shape, t.fmt, t.kind, plan.seed))
            done += t.nbytes
            if progress is not None:
                progress(t.name, done, total)


def tensor_bytes(name: str, shape: tuple[int, ...], fmt: type[formats.Format], kind: str, seed: int) -> np.ndarray:
    """The encoded bytes of one synthetic tensor (kind "embd", "norm", "linear", or "scale" with its weight's shape)."""
    if kind == "embd":
        return embedding(name, shape, seed, np.float32 if fmt is formats.F32 else np.float16).view(np.uint8)
    if kind == "norm":
        return fmt.encode(norm_weight(name, shape[0], seed))
    if kind == "scale":  # the converter's max|w| of the weight (shape is the weight's): its scale, for ternary x scale
        return np.array([ternary_weight(name.removesuffix(TL_SCALE_SUFFIX), shape, seed)[1]], np.float32)
    t, scale = ternary_weight(name, shape, seed)
    if fmt.SCALE_TENSOR:
        return fmt.encode_ternary(t, fmt.Tiling(*tl_tiling(fmt, *t.shape)))
    return formats.encode_ternary_weight(fmt, t, scale)


def rng_for(seed: int, name: str) -> np.random.Generator:
    """The Generator of one tensor (or chunk): seeded from (seed, name) only."""
    name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), name_key]))


def ternary_weight(name: str, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, float]:
    """(T int8 (M, K) in {-1, 0, 1}, scale) for a linear of ggml shape [K, M]: absmean ternarization of N(0, 1/K)."""
    k, m = shape
    w = rng_for(seed, name).standard_normal((m, k), dtype=np.float32)
    absmean = float(np.abs(w).sum(dtype=np.float32)) / w.size  # mean |W| of the N(0, 1) draw
    w *= np.float32(1.0 / absmean)
    np.rint(w, out=w)
    np.clip(w, -1, 1, out=w)
    return w.astype(np.int8), representable_scale(absmean / math.sqrt(k))


def representable_scale(x: float) -> float:
    """x rounded to SCALE_BITS significant bits (exact in bf16 and, in its normal range, f16)."""
    mantissa, exponent = math.frexp(x)
    return math.ldexp(round(mantissa * (1 << SCALE_BITS)) / (1 << SCALE_BITS), exponent)


def norm_weight(name: str, n: int, seed: int) -> np.ndarray:
    """RMSNorm weight: 1 + N(0, NORM_NOISE^2), float32."""
    return (1.0 + NORM_NOISE * rng_for(seed, name).standard_normal(n)).astype(np.float32)


def embedding(name: str, shape: tuple[int, ...], seed: int, dtype: type) -> np.ndarray:
    """Token embeddings (n_vocab, n_embd), N(0, (EMBD_GAIN/sqrt(n_embd))^2) rounded to f16, drawn in row chunks."""
    n_embd, n_vocab = shape
    std = np.float32(EMBD_GAIN / math.sqrt(n_embd))
    out = np.empty((n_vocab, n_embd), dtype=dtype)
    for chunk, r0 in enumerate(range(0, n_vocab, EMBD_CHUNK_ROWS)):
        r1 = min(r0 + EMBD_CHUNK_ROWS, n_vocab)
        x = rng_for(seed, f"{name}#{chunk}").standard_normal((r1 - r0, n_embd), dtype=np.float32) * std
        out[r0:r1] = x.astype(np.float16)
    return out


def _write_twin(src: Path, dst: Path, layout: Layout | None, progress: Progress | None) -> None:
    """Stream src's metadata (arch renamed to bitnet) and tensors (I2_S/TL1/TL2 re-encoded as TQ2_0, the TL
    `<name>_scale` tensors dropped) to dst."""
    with read_gguf(src) as g:
        arch = g.arch
        layout = layout or read_layout(g)
        if not any(t.type in TWIN_OF for t in g.tensors.values()):
            raise ConfigError(f"{src}: no I2_S, TL1 or TL2 tensors; tq2_0_twin copies such files")
        scale_tensors = {n + TL_SCALE_SUFFIX for n, t in g.tensors.items() if formats.get(t.type).SCALE_TENSOR}
        kept = {n: t for n, t in g.tensors.items() if n not in scale_tensors}
        types = {n: TQ2_0.TYPE if t.type in TWIN_OF else t.type for n, t in kept.items()}
        total = sum(formats.get(types[n]).nbytes(t.shape) for n, t in kept.items())
        if progress is not None:
            progress("", 0, total)
        with GGUFWriter(dst, alignment=g.alignment) as w:
            for key, value in g.metadata.items():
                w.add_kv(*_twin_kv(key, value, arch), g.value_types[key])
            w.add_kv(KEY_TWIN_SOURCE, src.name, ValueType.STRING)
            for n, t in kept.items():
                w.add_tensor(n, t.shape, types[n])
            w.write_header()
            done = 0
            for n, t in kept.items():
                raw = g.tensor_bytes(n)
                if t.type in TWIN_OF:
                    raw = TQ2_0.encode_ternary(*_ternary_and_scale(g, n, layout))
                w.write_tensor(n, raw)
                done += formats.get(types[n]).nbytes(t.shape)
                if progress is not None:
                    progress(n, done, total)


def _ternary_and_scale(g, name: str, layout: Layout) -> tuple[np.ndarray, float]:
    """(int8 ternary (M, K), scale) of an I2_S (in the layout's block layout), TL1 or TL2 weight."""
    t = g.tensors[name]
    raw = g.tensor_bytes(name)
    if t.type == I2_S.TYPE:
        fmt = layout.i2s_format
        return fmt.ternary(raw, t.shape), float(fmt.scales(raw, t.shape)[0])
    fmt = formats.get(t.type)
    tiling = fmt.Tiling(*layout.tiling(fmt, t.rows, t.cols))
    return fmt.ternary(raw, t.shape, tiling), float(g.tl_scale(name)[0])


def _twin_kv(key: str, value: object, arch: str) -> tuple[str, object]:
    """A metadata pair of the twin: arch bitnet, `<arch>.*` keys renamed to `bitnet.*`, file type TQ2_0."""
    if key == KEY_ARCHITECTURE:
        return key, ARCH_BITNET
    if key == KEY_FILE_TYPE:
        return key, int(TQ2_0.FILE_TYPE)
    if key == KEY_SYNTH.format("format"):
        return key, TQ2_0.NAME
    if key.startswith(arch + "."):
        return ARCH_BITNET + key[len(arch) :], value
    return key, value
