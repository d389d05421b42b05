"""A Hugging Face BitNet checkpoint folder read as the engine reads a GGUF (docs/FORMATS.md §10).

A folder with config.json (`BitNetForCausalLM`, `quantization_config.quant_method = "bitnet"`), safetensors (one file
or sharded) and tokenizer.json. `Checkpoint` answers what GGUFFile answers — GGUF metadata keys, tensors by GGUF
name with ggml shapes and types, their bytes — so ModelConfig, the weights loader, Tokenizer and verify take either.
Float tensors (embedding, head, norms) are zero-copy views into the memory-mapped safetensors. The seven BitLinear
weights of a layer become I2_S bytes (ternary codes and one f32 scale per tensor) computed once at load, as
transformers computes them (integrations/bitnet.py):
- online (`autobitlinear`, mode online): float masters W; `inv = 1 / max(mean|W|, 1e-5)` in f32,
  `T = clamp(round_half_even(W·inv), -1, 1)`, weight `T / inv`: scale `f32(1 / inv)`.
- offline (`bitlinear`, the 2B-4T layout): uint8 (out/4, in), byte row r holds output rows r + j·out/4 in its bit pairs
  j = 0..3 as value + 1; the output is DIVIDED by `weight_scale`: scale `f32(1 / weight_scale)`.
- offline `autobitlinear`: the same packed codes, the output MULTIPLIED by `weight_scale`.
Rows whose length is not a multiple of I2_S's 128-element block are stored as F32 `T·scale`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_ref import formats
from bitnet_ref.constants import (
    ARCH_BITNET,
    KEY_ARCHITECTURE,
    KEY_BLOCK_COUNT,
    KEY_CONTEXT_LENGTH,
    KEY_EMBEDDING_LENGTH,
    KEY_FEED_FORWARD_LENGTH,
    KEY_HEAD_COUNT,
    KEY_HEAD_COUNT_KV,
    KEY_HIDDEN_ACTIVATION,
    KEY_KEY_LENGTH,
    KEY_NAME,
    KEY_RMS_EPS,
    KEY_ROPE_FREQ_BASE,
    KEY_VALUE_LENGTH,
    KEY_VOCAB_SIZE,
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
    GGMLType,
)
from bitnet_ref.errors import CheckpointError, GGUFError, ScaleError
from bitnet_ref.files import read_json_object
from bitnet_ref.formats import BF16, F32, I2_S
from bitnet_ref.gguf_reader import GGUFFile, TensorInfo, read_gguf
from bitnet_ref.hf_vocab import TOKENIZER_JSON, TOKENIZER_MODEL, read_tokenizer_json, read_tokenizer_model
from bitnet_ref.safetensors import SafetensorsFiles, read_safetensors

CONFIG_JSON = "config.json"
ARCHITECTURES = ("BitNetForCausalLM",)
HIDDEN_ACTS = ("silu", "relu2")  # transformers' ACT2FN names, which are also the engine's
WEIGHT_QUANT_FLOOR = np.float32(1e-5)  # transformers' WeightQuant: mean|W| clamped from below
PACKED_PER_BYTE = 4  # transformers' VALUES_PER_ITEM
DTYPE_TYPES = {"F32": GGMLType.F32, "F16": GGMLType.F16, "BF16": GGMLType.BF16}
TOP = {"model.embed_tokens.weight": TENSOR_TOKEN_EMBD, "model.norm.weight": TENSOR_OUTPUT_NORM,
       "lm_head.weight": TENSOR_OUTPUT}
PER_LAYER = {
    "input_layernorm": TENSOR_ATTN_NORM,
    "self_attn.q_proj": TENSOR_ATTN_Q,
    "self_attn.k_proj": TENSOR_ATTN_K,
    "self_attn.v_proj": TENSOR_ATTN_V,
    "self_attn.attn_sub_norm": TENSOR_ATTN_SUB_NORM,
    "self_attn.o_proj": TENSOR_ATTN_OUTPUT,
    "post_attention_layernorm": TENSOR_FFN_NORM,
    "mlp.gate_proj": TENSOR_FFN_GATE,
    "mlp.up_proj": TENSOR_FFN_UP,
    "mlp.ffn_sub_norm": TENSOR_FFN_SUB_NORM,
    "mlp.down_proj": TENSOR_FFN_DOWN,
}
_NO_DEFAULT = object()
BITLINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def read_model_file(path: str | Path) -> GGUFFile | Checkpoint:
    """A model as the engine reads it: a checkpoint folder, or else a GGUF file."""
    return read_checkpoint(path) if Path(path).is_dir() else read_gguf(path)


@dataclass(frozen=True)
class Quantization:
    """How the checkpoint stores its BitLinear weights (quantization_config)."""

    mode: str  # "online" (float masters) or "offline" (packed uint8 + weight_scale)
    linear_class: str  # "autobitlinear" or "bitlinear"

    @property
    def divides(self) -> bool:
        """Whether the output is divided by weight_scale (bitlinear) rather than multiplied (autobitlinear)."""
        return self.linear_class == "bitlinear"

    def describe(self) -> str:
        """One line for records."""
        if self.mode == "online":
            return "online: float masters ternarized at load (absmean, as transformers' AutoBitLinear)"
        op = "divided by" if self.divides else "multiplied by"
        return f"offline {self.linear_class}: packed uint8 codes, output {op} weight_scale"


class Checkpoint:
    """An open HF BitNet checkpoint with GGUFFile's interface: metadata, tensors (GGUF names), tensor_bytes."""

    def __init__(self, path: Path, hf_config: dict, files: SafetensorsFiles, quant: Quantization,
                 names: dict[str, str], metadata: dict[str, object]) -> None:
        self.path = path
        self.hf_config = hf_config
        self.files = files
        self.quant = quant
        self.names = names  # GGUF name -> checkpoint name
        self.metadata = metadata
        self.bitlinears = {name for name, hf in names.items() if _is_bitlinear(hf)}  # GGUF names of the 7 per layer
        self.tensors = {name: self._info(name) for name in names}
        self._bytes: dict[str, np.ndarray] = {}

    def _info(self, name: str) -> TensorInfo:
        """GGUF view of one tensor: ggml shape (innermost first) and the type its bytes will have."""
        t = self.files.tensors[self.names[name]]
        shape = tuple(reversed(t.shape))
        if name in self.bitlinears:
            m, k = self.linear_shape(name)
            shape = (k, m)
            fmt = I2_S if k % I2_S.BLOCK_ELEMS == 0 else F32
            return TensorInfo(name, shape, fmt.TYPE, 0, fmt.nbytes(shape))
        return TensorInfo(name, shape, DTYPE_TYPES[t.dtype], 0, t.end - t.begin)

    def linear_shape(self, name: str) -> tuple[int, int]:
        """(out, in) of a BitLinear weight, unpacked."""
        shape = self.files.tensors[self.names[name]].shape
        packed = self.quant.mode == "offline"
        return (shape[0] * PACKED_PER_BYTE if packed else shape[0]), shape[1]

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The tensor's bytes in its GGUF type: a view for float tensors, I2_S (or F32) made once for BitLinears."""
        if name not in self.tensors:
            raise GGUFError(self.path, "tensor", name, f"one of the checkpoint's {len(self.tensors)} tensor names")
        if name not in self.bitlinears:
            return self.files.array(self.names[name]).reshape(-1).view(np.uint8)
        if name not in self._bytes:
            fmt = formats.get(self.tensors[name].type)
            self._bytes[name] = formats.encode_ternary_weight(fmt, *self.ternary(name))
        return self._bytes[name]

    def ternary(self, name: str) -> tuple[np.ndarray, float]:
        """A BitLinear's ternary codes (out, in) int8 and the f32 scale its output is multiplied by."""
        hf = self.names[name]
        if self.quant.mode == "online":
            w = _as_f32(self.files.array(hf), self.files.tensors[hf].dtype)
            if not np.isfinite(w).all():
                r, c = np.argwhere(~np.isfinite(w))[0]
                raise CheckpointError(self.path, f"tensor {hf!r} row {r} col {c}", float(w[r, c]), "a finite weight")
            return ternarize(w)
        t = unpack_codes(self.files.array(hf))
        bad = np.argwhere(t > 1)
        if bad.size:
            r, c = bad[0]
            raise CheckpointError(self.path, f"tensor {hf!r} row {r % (len(t) // PACKED_PER_BYTE)} col {c}", 3,
                                  "a packed code 0, 1 or 2 (for -1, 0, +1)")
        return t, self._packed_scale(hf)

    def _packed_scale(self, hf: str) -> float:
        """The f32 scale of a packed weight from its weight_scale (inverted where the output is divided by it)."""
        scale_name = hf.removesuffix(".weight") + ".weight_scale"
        if scale_name not in self.files.tensors:
            raise ScaleError(self.path, f"tensor {scale_name!r}", "missing", f"the weight_scale of {hf!r}")
        raw = self.files.array(scale_name)
        ws = _as_f32(raw, self.files.tensors[scale_name].dtype).reshape(-1)
        if ws.size != 1 or not np.isfinite(ws[0]) or ws[0] <= 0:
            raise ScaleError(self.path, f"tensor {scale_name!r}", ws.tolist()[:4], "one finite positive value")
        return float(np.float32(1) / ws[0]) if self.quant.divides else float(ws[0])

    def get(self, key: str, default: object = _NO_DEFAULT) -> object:
        """Metadata value for a GGUF key; default when given and the key is absent, else a GGUFError."""
        if key in self.metadata:
            return self.metadata[key]
        if default is _NO_DEFAULT:
            raise GGUFError(self.path, key, "missing", "a metadata key the checkpoint provides")
        return default

    @property
    def arch(self) -> str:
        """The GGUF architecture this checkpoint is read as."""
        return ARCH_BITNET

    def describe(self) -> dict[str, object]:
        """What the checkpoint is and how it was read, for records."""
        return {"kind": "hf-checkpoint", "path": str(self.path), "architectures": self.hf_config.get("architectures"),
                "hidden_act": self.hf_config.get("hidden_act"), "weights": self.quant.describe(),
                "files": sorted({t.path.name for t in self.files.tensors.values()})}

    def close(self) -> None:
        """Drop the mappings and the made BitLinear bytes."""
        self.files.close()
        self._bytes.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {self.quant.mode}, {len(self.tensors)} tensors)"


# ----------------------------------------------------------------------------------------------------------------------
# Weights: transformers' ternarization and packing


def _is_bitlinear(hf_name: str) -> bool:
    """Whether a checkpoint tensor is one of a layer's seven BitLinear weights."""
    parts = hf_name.split(".")
    return len(parts) > 2 and parts[-1] == "weight" and parts[-2] in BITLINEARS


def _as_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    """A stored float array as f32 (BF16 bits widened exactly, by the BF16 format's decode)."""
    if dtype == "BF16":
        return BF16.decode_blocks(a)
    return a.astype(np.float32)


def ternarize(w: np.ndarray) -> tuple[np.ndarray, float]:
    """transformers' WeightQuant on f32 masters: codes round(W·inv) clamped to ±1, scale f32(1/inv)."""
    mean = np.float32(np.abs(w, dtype=np.float64).mean()) if w.size else np.float32(0)
    inv = np.float32(1) / max(mean, WEIGHT_QUANT_FLOOR)
    t = np.clip(np.rint(w * inv), -1, 1).astype(np.int8)
    return t, float(np.float32(1) / inv)


def unpack_codes(packed: np.ndarray) -> np.ndarray:
    """Ternary (out, in) int8 of a packed uint8 (out/4, in): bit pair j of byte row r is row r + j·out/4, value + 1."""
    rows = [((packed >> (2 * j)) & 3).astype(np.int8) - 1 for j in range(PACKED_PER_BYTE)]
    return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------------------------------------------------------
# Reading a folder


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint folder: config.json checked, safetensors mapped, tensors named, tokenizer read."""
    path = Path(path)
    hf = _config_json(path / CONFIG_JSON)
    quant = _quantization(path / CONFIG_JSON, hf)
    files = read_safetensors(path)
    names = _names(path, hf, files)
    n_vocab = files.tensors["model.embed_tokens.weight"].shape[0]
    metadata = _metadata(path, hf, n_vocab)
    bos, eos = _token_id(hf, "bos_token_id"), _token_id(hf, "eos_token_id")
    if (path / TOKENIZER_MODEL).exists():
        metadata.update(read_tokenizer_model(path / TOKENIZER_MODEL, n_vocab))
    else:
        metadata.update(read_tokenizer_json(path / TOKENIZER_JSON, n_vocab, bos, eos))
    checkpoint = Checkpoint(path, hf, files, quant, names, metadata)
    for name in checkpoint.bitlinears:
        _check_linear(checkpoint, name)
    return checkpoint


def _config_json(path: Path) -> dict:
    """config.json of a BitNetForCausalLM checkpoint."""
    hf = read_json_object(path)
    archs = hf.get("architectures")
    if not isinstance(archs, list) or not set(archs) & set(ARCHITECTURES):
        raise CheckpointError(path, "architectures", archs, f"a list naming {ARCHITECTURES[0]}")
    if hf.get("hidden_act") not in HIDDEN_ACTS:
        raise CheckpointError(path, "hidden_act", hf.get("hidden_act"), f"one of {HIDDEN_ACTS}")
    return hf


def _quantization(path: Path, hf: dict) -> Quantization:
    """The BitLinear storage the quantization_config names; anything transformers would run otherwise is refused."""
    qc = hf.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != "bitnet":
        raise CheckpointError(path, "quantization_config", qc,
                              "quant_method 'bitnet' (without it transformers runs a plain float model)")
    mode, cls = qc.get("quantization_mode", "offline"), qc.get("linear_class", "bitlinear")
    if (cls, mode) not in (("autobitlinear", "online"), ("autobitlinear", "offline"), ("bitlinear", "offline")):
        raise CheckpointError(path, "quantization_config linear_class/quantization_mode", f"{cls}/{mode}",
                              "autobitlinear/online, autobitlinear/offline or bitlinear/offline")
    if qc.get("use_rms_norm"):
        raise CheckpointError(path, "quantization_config.use_rms_norm", True, "false (an RMSNorm inside every "
                              "BitLinear is not part of the BitNet b1.58 graph bitnet_ref runs)")
    skipped = [m for m in qc.get("modules_to_not_convert") or [] if any(b in m for b in BITLINEARS)]
    if skipped:
        raise CheckpointError(path, "quantization_config.modules_to_not_convert", skipped,
                              "no BitLinear projection left unquantized")
    return Quantization(mode, cls)


def _names(path: Path, hf: dict, files: SafetensorsFiles) -> dict[str, str]:
    """GGUF name -> checkpoint name of every tensor; an unknown tensor (a bias, say) is refused, not ignored."""
    names: dict[str, str] = {}
    for hf_name in files.tensors:
        gguf = _gguf_name(hf_name)
        if gguf is None and not hf_name.endswith((".weight_scale", ".rotary_emb.inv_freq")):
            raise CheckpointError(path, "tensor", hf_name, "a BitNetForCausalLM weight (no biases, no other modules)")
        if gguf is not None:
            names[gguf] = hf_name
    if TENSOR_OUTPUT in names and hf.get("tie_word_embeddings", False):
        del names[TENSOR_OUTPUT]  # transformers ties lm_head to the embedding and ignores the stored copy
    if TENSOR_TOKEN_EMBD not in names:
        raise CheckpointError(path, "tensor", "model.embed_tokens.weight", "present")
    if TENSOR_OUTPUT not in names and not hf.get("tie_word_embeddings", False):
        raise CheckpointError(path / CONFIG_JSON, "tie_word_embeddings", hf.get("tie_word_embeddings", False),
                              "true when there is no lm_head.weight (transformers would initialise a random head)")
    for hf_name in names.values():
        dtype = files.tensors[hf_name].dtype
        if not _is_bitlinear(hf_name) and dtype not in DTYPE_TYPES:
            raise CheckpointError(path, f"tensor {hf_name!r} dtype", dtype, f"one of {sorted(DTYPE_TYPES)}")
    return names


def _gguf_name(hf_name: str) -> str | None:
    """The GGUF name of a checkpoint tensor name (None for names outside the model)."""
    if hf_name in TOP:
        return TOP[hf_name]
    parts = hf_name.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"] or not parts[2].isdigit() or parts[-1] != "weight":
        return None
    template = PER_LAYER.get(".".join(parts[3:-1]))
    return None if template is None else template.format(i=int(parts[2]))


def _check_linear(checkpoint: Checkpoint, name: str) -> None:
    """A BitLinear weight's stored dtype fits its layout (uint8 codes offline, floats online)."""
    hf = checkpoint.names[name]
    dtype = checkpoint.files.tensors[hf].dtype
    want = ("U8",) if checkpoint.quant.mode == "offline" else tuple(DTYPE_TYPES)
    if dtype not in want:
        raise CheckpointError(checkpoint.path, f"tensor {hf!r} dtype", dtype,
                              f"{' or '.join(want)} for quantization_mode {checkpoint.quant.mode}")


def _metadata(path: Path, hf: dict, n_vocab: int) -> dict[str, object]:
    """The GGUF keys of arch `bitnet` that config.json determines; hidden_activation always written."""
    where = path / CONFIG_JSON

    def need(key: str, kind: type = int) -> object:
        value = hf.get(key)
        if type(value) is not kind and not (kind is float and type(value) is int):
            raise CheckpointError(where, key, value, f"a {kind.__name__}")
        return value

    n_embd, n_head = need("hidden_size"), need("num_attention_heads")
    md: dict[str, object] = {
        KEY_ARCHITECTURE: ARCH_BITNET,
        KEY_NAME: path.name,
        KEY_CONTEXT_LENGTH.format(arch=ARCH_BITNET): need("max_position_embeddings"),
        KEY_EMBEDDING_LENGTH.format(arch=ARCH_BITNET): n_embd,
        KEY_FEED_FORWARD_LENGTH.format(arch=ARCH_BITNET): need("intermediate_size"),
        KEY_BLOCK_COUNT.format(arch=ARCH_BITNET): need("num_hidden_layers"),
        KEY_HEAD_COUNT.format(arch=ARCH_BITNET): n_head,
        KEY_HEAD_COUNT_KV.format(arch=ARCH_BITNET): hf.get("num_key_value_heads") or n_head,
        KEY_RMS_EPS.format(arch=ARCH_BITNET): float(need("rms_norm_eps", float)),
        KEY_ROPE_FREQ_BASE.format(arch=ARCH_BITNET): _rope_theta(where, hf),
        KEY_VOCAB_SIZE.format(arch=ARCH_BITNET): n_vocab,
        KEY_HIDDEN_ACTIVATION.format(arch=ARCH_BITNET): hf["hidden_act"],
    }
    if hf.get("head_dim") is not None:
        md[KEY_KEY_LENGTH.format(arch=ARCH_BITNET)] = md[KEY_VALUE_LENGTH.format(arch=ARCH_BITNET)] = need("head_dim")
    return md


def _rope_theta(where: Path, hf: dict) -> float:
    """RoPE base from rope_parameters (transformers 5) or rope_theta; scaled RoPE is refused."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise CheckpointError(where, "rope_type", kind, "'default' (no RoPE scaling)")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or theta <= 0:
        raise CheckpointError(where, "rope_theta", theta, "a positive number")
    return float(theta)


def _token_id(hf: dict, key: str) -> int | None:
    """A special token id from config.json (the first of a list, as the GGUF holds one)."""
    value = hf.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None
