"""ModelConfig: a BitNet GGUF's hyperparameters, every default and derived choice explicit (docs/FORMATS.md §8, §9).

Defaults follow llama.cpp (as vendored by llama-cpp-python 0.3.36) for `general.architecture = "bitnet"`:
head_count_kv = head_count, key_length = value_length = n_embd / n_head, rope.dimension_count = head_dim,
rope.freq_base = 10000; the fork architectures `bitnet-25` and `bitnet-b1.58` read the same keys under their own prefix.
FFN activation (docs/NUMERICS.md §11): an explicit override, else `<arch>.hidden_activation` ("relu2" or "silu"), else
the architecture (`bitnet`: SiLU, as llama.cpp computes it; `bitnet-25` / `bitnet-b1.58`: relu², as 2B-4T was trained).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from bitnet_ref.constants import (
    ARCH_BITNET,
    KEY_ARCHITECTURE,
    KEY_BLOCK_COUNT,
    KEY_BOS_ID,
    KEY_CONTEXT_LENGTH,
    KEY_EMBEDDING_LENGTH,
    KEY_EOS_ID,
    KEY_FEED_FORWARD_LENGTH,
    KEY_HEAD_COUNT,
    KEY_HEAD_COUNT_KV,
    KEY_HIDDEN_ACTIVATION,
    KEY_KEY_LENGTH,
    KEY_RMS_EPS,
    KEY_ROPE_DIMENSION_COUNT,
    KEY_ROPE_FREQ_BASE,
    KEY_ROPE_SCALING_FACTOR,
    KEY_ROPE_SCALING_TYPE,
    KEY_TOKENIZER_MODEL,
    KEY_TOKENS,
    KEY_VALUE_LENGTH,
    KEY_VOCAB_SIZE,
    SUPPORTED_ARCHS,
    TENSOR_ATTN_K,
    TENSOR_ATTN_NORM,
    TENSOR_ATTN_OUTPUT,
    TENSOR_ATTN_Q,
    TENSOR_ATTN_SUB_NORM,
    TENSOR_ATTN_V,
    TENSOR_FFN_DOWN,
    TENSOR_FFN_GATE,
    TENSOR_FFN_NORM,
    TENSOR_FFN_SUB_NORM,
    TENSOR_FFN_UP,
    TENSOR_OUTPUT,
    TENSOR_OUTPUT_NORM,
    TENSOR_TOKEN_EMBD,
    TL_SCALE_SUFFIX,
    GGMLType,
)
from bitnet_ref.errors import ConfigError
from bitnet_ref.formats import SCALE_TENSOR_TYPES

if TYPE_CHECKING:
    from bitnet_ref.gguf_reader import GGUFFile

FFN_ACTS = ("silu", "relu2")
ROPE_FREQ_BASE_DEFAULT = 10000.0
# llama.cpp's special-token defaults per tokenizer model when the GGUF sets none (llama-vocab.cpp)
DEFAULT_SPECIAL_IDS = {"gpt2": (11, 11), "llama": (1, 2)}
# The 7 ternary linears of a layer; llama.cpp's `bitnet` arch accepts an optional 1-element `<proj>.scale` each.
LINEARS = (
    TENSOR_ATTN_Q,
    TENSOR_ATTN_K,
    TENSOR_ATTN_V,
    TENSOR_ATTN_OUTPUT,
    TENSOR_FFN_GATE,
    TENSOR_FFN_UP,
    TENSOR_FFN_DOWN,
)
_LINEAR_SCALE = re.compile(r"blk\.(\d+)\.(" + "|".join(p.split(".")[2] for p in LINEARS) + r")\.scale")
HF_2B4T_DIMS = {"n_embd": 2560, "n_layer": 30, "n_ff": 6912, "n_head": 20, "n_head_kv": 5}


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a BitNet b1.58 model and every choice derived from them; `sources` says where each is from."""

    arch: str
    n_vocab: int
    n_ctx: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    rope_neox: bool
    rms_eps: float
    ffn_act: str
    ffn_act_source: str
    tied_output: bool
    bos_id: int | None
    eos_id: int | None
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def n_gqa(self) -> int:
        """Query heads per KV head."""
        return self.n_head // self.n_head_kv

    @property
    def n_embd_kv(self) -> int:
        """Width of K and V: head_dim * n_head_kv."""
        return self.head_dim * self.n_head_kv

    @classmethod
    def from_gguf(cls, gguf: GGUFFile, ffn_act: str | None = None) -> ModelConfig:
        """Config of an open GGUFFile; ffn_act ("silu"/"relu2") overrides the key and architecture rules."""
        shapes = {name: info.shape for name, info in gguf.tensors.items()}
        return cls.from_metadata(gguf.metadata, shapes, ffn_act=ffn_act, where=str(gguf.path))

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, object],
        tensor_shapes: Mapping[str, tuple[int, ...]],
        ffn_act: str | None = None,
        where: str = "<metadata>",
    ) -> ModelConfig:
        """Config from GGUF metadata and tensor shapes (ne order); ConfigError names the key, value and file."""
        return _Reader(metadata, tensor_shapes, where).config(ffn_act)

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the model needs, name -> ggml shape (ne0 first): token_embd, output_norm, then each layer's."""
        e, kv, ff = self.n_embd, self.n_embd_kv, self.n_ff
        q = self.head_dim * self.n_head
        out = {TENSOR_TOKEN_EMBD: (e, self.n_vocab), TENSOR_OUTPUT_NORM: (e,)}
        if not self.tied_output:
            out[TENSOR_OUTPUT] = (e, self.n_vocab)
        for i in range(self.n_layer):
            layer = {
                TENSOR_ATTN_NORM: (e,),
                TENSOR_ATTN_Q: (e, q),
                TENSOR_ATTN_K: (e, kv),
                TENSOR_ATTN_V: (e, kv),
                TENSOR_ATTN_SUB_NORM: (q,),
                TENSOR_ATTN_OUTPUT: (q, e),
                TENSOR_FFN_NORM: (e,),
                TENSOR_FFN_GATE: (e, ff),
                TENSOR_FFN_UP: (e, ff),
                TENSOR_FFN_SUB_NORM: (ff,),
                TENSOR_FFN_DOWN: (ff, e),
            }
            out.update({name.format(i=i): shape for name, shape in layer.items()})
        return out

    def check_tensors(self, gguf: GGUFFile) -> None:
        """ConfigError unless the file has every expected tensor with its shape and nothing else (optional extras:
        llama.cpp's 1-element `blk.N.<proj>.scale`, and the `<weight>_scale` tensor of a TL1/TL2 weight)."""
        problems = tensor_problems(self, {n: (i.shape, i.type) for n, i in gguf.tensors.items()})
        if problems:
            shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            raise ConfigError(f"{gguf.path}: tensors do not match the {self.arch} config: {shown}")

    def describe(self) -> dict[str, object]:
        """Every hyperparameter and derived choice, printable, with where each came from."""
        d = asdict(self)
        d.pop("sources")
        d.update(
            n_gqa=self.n_gqa,
            n_embd_kv=self.n_embd_kv,
            rope="NEOX (pairs j, j + n_rot/2)" if self.rope_neox else "NORM (adjacent pairs)",
            attn_scale=1.0 / math.sqrt(self.head_dim),
            ffn_act_reason=self._act_reason(),
            output_head="token_embd (tied)" if self.tied_output else "output.weight",
            sources=dict(self.sources),
        )
        if self.arch == ARCH_BITNET and self.ffn_act == "silu" and self._looks_2b4t():
            d["ffn_act_note"] = (
                "these are BitNet b1.58 2B-4T's shapes: it was trained with relu2; llama.cpp computes SiLU for "
                "arch bitnet (pass ffn_act='relu2' for the model's own semantics)"
            )
        return d

    def _act_reason(self) -> str:
        return dict(self.sources).get("ffn_act", self.ffn_act_source)

    def _looks_2b4t(self) -> bool:
        return all(getattr(self, k) == v for k, v in HF_2B4T_DIMS.items())


def tensor_problems(config: ModelConfig, tensors: Mapping[str, tuple[tuple[int, ...], int]]) -> list[str]:
    """Human-readable mismatches between a config and a file's tensors (name -> (ne shape, type id))."""
    expected = config.expected_tensors()
    problems = [f"missing {name} {list(shape)}" for name, shape in expected.items() if name not in tensors]
    for name, (shape, type_id) in tensors.items():
        want = expected.get(name) or _optional_shape(config, name, tensors)
        if want is None:
            problems.append(f"unexpected tensor {name} {list(shape)} ({_type_name(type_id)})")
        elif tuple(shape) not in _same_shapes(want):
            problems.append(f"{name} has shape {list(shape)}, expected {list(want)}")
    return problems


def _optional_shape(
    config: ModelConfig, name: str, tensors: Mapping[str, tuple[tuple[int, ...], int]]
) -> tuple[int, ...] | None:
    """Shape of an allowed optional tensor, or None when the name is not one."""
    if name.endswith(TL_SCALE_SUFFIX):
        weight = tensors.get(name.removesuffix(TL_SCALE_SUFFIX))
        return (1,) if weight is not None and weight[1] in SCALE_TENSOR_TYPES else None
    m = _LINEAR_SCALE.fullmatch(name)
    return (1,) if m and int(m.group(1)) < config.n_layer else None


def _same_shapes(shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """A 1-element shape may be written as (), (1,) or (1, 1)."""
    return {(), (1,), (1, 1)} if shape == (1,) else {shape}


def _type_name(type_id: int) -> str:
    try:
        return GGMLType(type_id).name
    except ValueError:
        return f"type {type_id}"


class _Reader:
    """Reads and validates one architecture's keys; each accessor records where its value came from."""

    def __init__(self, metadata: Mapping[str, object], shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
        self.md = metadata
        self.shapes = shapes
        self.where = where
        self.sources: dict[str, str] = {}
        self.arch = self._arch()

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.where}: {what}")

    def _arch(self) -> str:
        arch = self.md.get(KEY_ARCHITECTURE)
        if arch not in SUPPORTED_ARCHS:
            raise self.fail(
                f"{KEY_ARCHITECTURE} = {arch!r} is not supported; supported architectures: {', '.join(SUPPORTED_ARCHS)}"
            )
        return arch

    def key(self, template: str) -> str:
        return template.format(arch=self.arch)

    def int_value(self, field: str, template: str, default: int | None = None, why: str = "") -> int:
        """A positive integer key (a per-layer array must be uniform); default (recorded) when absent."""
        key = self.key(template)
        if key not in self.md:
            if default is None:
                raise self.fail(
                    f"required key {key} is missing (architecture {self.arch}; supported architectures: "
                    f"{', '.join(SUPPORTED_ARCHS)})"
                )
            self.sources[field] = f"default {default} ({why}; {key} absent)"
            return default
        value = _uniform(self.md[key])
        if value is None or isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise self.fail(f"{key} = {self.md[key]!r}; expected a positive integer (or a uniform per-layer array)")
        self.sources[field] = f"key {key}"
        return int(value)

    def float_value(self, field: str, template: str, default: float | None = None, why: str = "") -> float:
        """A positive finite float key; default (recorded) when absent."""
        key = self.key(template)
        if key not in self.md:
            if default is None:
                raise self.fail(f"required key {key} is missing (architecture {self.arch})")
            self.sources[field] = f"default {default:g} ({why}; {key} absent)"
            return default
        value = self.md[key]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value < math.inf:
            raise self.fail(f"{key} = {value!r}; expected a positive finite number")
        self.sources[field] = f"key {key}"
        return float(value)

    def config(self, ffn_act: str | None) -> ModelConfig:
        n_embd = self.int_value("n_embd", KEY_EMBEDDING_LENGTH)
        n_head = self.int_value("n_head", KEY_HEAD_COUNT)
        n_head_kv = self.int_value("n_head_kv", KEY_HEAD_COUNT_KV, n_head, "llama.cpp: head_count")
        self._check_heads(n_embd, n_head, n_head_kv)
        head_dim = self._head_dim(n_embd, n_head)
        n_rot = self.int_value("n_rot", KEY_ROPE_DIMENSION_COUNT, head_dim, "llama.cpp: head_dim")
        if n_rot > head_dim or n_rot % 2:
            raise self.fail(f"{self.key(KEY_ROPE_DIMENSION_COUNT)} = {n_rot}; expected an even number <= {head_dim}")
        self._check_rope_scaling()
        act, act_source = self._ffn_act(ffn_act)
        n_vocab = self._n_vocab()
        bos_id, eos_id = self._special_ids(n_vocab)
        return ModelConfig(
            arch=self.arch,
            n_vocab=n_vocab,
            n_ctx=self.int_value("n_ctx", KEY_CONTEXT_LENGTH),
            n_embd=n_embd,
            n_layer=self.int_value("n_layer", KEY_BLOCK_COUNT),
            n_ff=self.int_value("n_ff", KEY_FEED_FORWARD_LENGTH),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_rot=n_rot,
            rope_base=self.float_value("rope_base", KEY_ROPE_FREQ_BASE, ROPE_FREQ_BASE_DEFAULT, "llama.cpp default"),
            rope_neox=True,
            rms_eps=self.float_value("rms_eps", KEY_RMS_EPS),
            ffn_act=act,
            ffn_act_source=act_source,
            tied_output=self._tied(),
            bos_id=bos_id,
            eos_id=eos_id,
            sources=tuple(self.sources.items()) + (("rope_neox", f"architecture {self.arch} uses NEOX RoPE"),),
        )

    def _check_heads(self, n_embd: int, n_head: int, n_head_kv: int) -> None:
        if n_embd % n_head:
            raise self.fail(f"embedding_length {n_embd} is not a multiple of head_count {n_head}")
        if n_head % n_head_kv:
            raise self.fail(f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")

    def _head_dim(self, n_embd: int, n_head: int) -> int:
        k = self.int_value("head_dim", KEY_KEY_LENGTH, n_embd // n_head, "llama.cpp: embedding_length / head_count")
        v = self.int_value("value_length", KEY_VALUE_LENGTH, k, "llama.cpp: key_length")
        if v != k or k * n_head != n_embd:
            raise self.fail(
                f"key_length {k}, value_length {v}, head_count {n_head}, embedding_length {n_embd}: only "
                "key_length = value_length = embedding_length / head_count is supported"
            )
        return k

    def _check_rope_scaling(self) -> None:
        kind = self.md.get(self.key(KEY_ROPE_SCALING_TYPE), "none")
        factor = self.md.get(self.key(KEY_ROPE_SCALING_FACTOR), 0.0)
        if kind not in ("none", "linear") or factor not in (0.0, 1.0):
            raise self.fail(f"RoPE scaling {kind!r} with factor {factor!r} is not supported (none, or linear 1.0)")

    def _ffn_act(self, override: str | None) -> tuple[str, str]:
        key = self.key(KEY_HIDDEN_ACTIVATION)
        if override is not None:
            if override not in FFN_ACTS:
                raise self.fail(f"ffn_act override {override!r}; expected one of {FFN_ACTS}")
            self.sources["ffn_act"] = f"override ffn_act={override!r}"
            return override, "override"
        if key in self.md:
            value = self.md[key]
            if value not in FFN_ACTS:
                raise self.fail(f"{key} = {value!r}; supported values: {', '.join(FFN_ACTS)}")
            self.sources["ffn_act"] = f"key {key} = {value!r}"
            return value, "key"
        if self.arch == ARCH_BITNET:
            self.sources["ffn_act"] = "architecture bitnet: SiLU, as llama.cpp computes it (no hidden_activation key)"
            return "silu", "arch"
        self.sources["ffn_act"] = (
            f"architecture {self.arch}: relu2 (bitnet.cpp build_bitnet_158; no hidden_activation key)"
        )
        return "relu2", "arch"

    def _n_vocab(self) -> int:
        tokens = self.md.get(KEY_TOKENS)
        if tokens is not None:
            self.sources["n_vocab"] = f"len({KEY_TOKENS})"
            return len(tokens)
        if self.key(KEY_VOCAB_SIZE) in self.md:
            return self.int_value("n_vocab", KEY_VOCAB_SIZE)
        embd = self.shapes.get(TENSOR_TOKEN_EMBD)
        if embd is None or len(embd) != 2:
            raise self.fail(f"no vocabulary size: no {KEY_TOKENS}, no {self.key(KEY_VOCAB_SIZE)}, no 2-D token_embd")
        self.sources["n_vocab"] = f"{TENSOR_TOKEN_EMBD} ne1"
        return int(embd[1])

    def _special_ids(self, n_vocab: int) -> tuple[int | None, int | None]:
        model = self.md.get(KEY_TOKENIZER_MODEL)
        defaults = DEFAULT_SPECIAL_IDS.get(model, (None, None))
        ids = []
        for field, key, default in (("bos_id", KEY_BOS_ID, defaults[0]), ("eos_id", KEY_EOS_ID, defaults[1])):
            value = self.md.get(key, default)
            src = f"key {key}" if key in self.md else f"llama.cpp default for tokenizer {model!r}"
            if value is not None and not 0 <= int(value) < n_vocab:
                src, value = f"{src}: {value} is outside [0, {n_vocab}), disabled as llama.cpp does", None
            self.sources[field] = src
            ids.append(None if value is None else int(value))
        return ids[0], ids[1]

    def _tied(self) -> bool:
        tied = TENSOR_OUTPUT not in self.shapes
        self.sources["tied_output"] = "no output.weight: the head is token_embd" if tied else "output.weight present"
        return tied


def _uniform(value: object) -> object:
    """A scalar, or the common value of a per-layer array (None when the layers differ or it is empty)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        values = {int(v) for v in value} if len(value) else set()
        return values.pop() if len(values) == 1 else None
    return value
