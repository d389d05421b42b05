"""Tiny Hugging Face BitNet checkpoints for tests, written with transformers' own classes.

`write_checkpoint` builds a `BitNetForCausalLM` from a `BitNetConfig`, sets seeded random master weights, saves it with
`save_pretrained` (so tensor names, config.json and sharding are what transformers writes) and, for the packed layouts,
rewrites the saved linears as transformers' `pack_weights` packs them. The tokenizer is the Llama 3 BPE vocabulary of
`tests/fixtures/vocab/ggml-vocab-llama-bpe.gguf` as an HF `tokenizer.json`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import BitNetConfig, BitNetForCausalLM
from transformers.integrations.bitnet import pack_weights

from bitnet_ref.gguf_reader import read_gguf

VOCAB_GGUF = Path(__file__).parent / "fixtures" / "vocab" / "ggml-vocab-llama-bpe.gguf"
SPM_GGUF = VOCAB_GGUF.with_name("ggml-vocab-llama-spm.gguf")
SMALL_VOCAB = 2048  # ordinary tokens that vocab="small" keeps; the 256 control tokens follow them
TOKEN_TYPE_CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL
# The pre-tokenizer split of Meta's Llama 3 tokenizer.json (llama.cpp's `llama-bpe` pre-tokenizer).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QUANT_CONFIGS = {
    "online": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"},
    "packed": {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"},
    "packed-autobitlinear": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"},
}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def write_checkpoint(out_dir: str | Path, *, layout: str = "online", hidden_act: str = "silu", n_embd: int = 256,
                     n_ff: int = 512, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2, vocab: str = "llama-bpe",
                     seed: int = 0, dtype: str = "float32", shards: int = 1, tie: bool = True,
                     rope_theta: float = 10000.0, eps: float = 1e-5) -> Path:
    """Write a BitNet checkpoint directory (config, safetensors, tokenizer) and return its path.

    layout: "online" (float masters, autobitlinear online), "packed" (2B-4T: uint8 codes, weight_scale = 1/m that
    BitLinear divides by) or "packed-autobitlinear" (uint8 codes, weight_scale = m that AutoBitLinear multiplies by).
    vocab: "llama-bpe" (128256 tokens), "small" (its first SMALL_VOCAB tokens and the control tokens), or "llama-spm"
    (the 32000 sentencepiece pieces of SPM_GGUF as tokenizer.model, the kind llama.cpp's BitNet converter reads, with
    the tokenizer.json transformers makes of it).
    shards > 1 asks save_pretrained for about that many files (model-0000N-of-0000M.safetensors + index).
    """
    if layout not in QUANT_CONFIGS:
        raise ValueError(f"layout {layout!r} is not one of {sorted(QUANT_CONFIGS)}")
    out = Path(out_dir)
    tokens, merges, specials, (bos, eos) = read_vocab(vocab)
    config = BitNetConfig(
        vocab_size=len(tokens), hidden_size=n_embd, intermediate_size=n_ff, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_head_kv, hidden_act=hidden_act, rms_norm_eps=eps,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, tie_word_embeddings=tie,
        bos_token_id=bos, eos_token_id=eos, max_position_embeddings=2048)
    model = BitNetForCausalLM(config)
    set_masters(model, seed)
    model.to(DTYPES[dtype])
    model.config.quantization_config = QUANT_CONFIGS[layout]
    model.save_pretrained(out, max_shard_size=_shard_bytes(model, shards))
    if layout != "online":
        pack_checkpoint(out, scale_divides=layout == "packed")
    if vocab == "llama-spm":
        write_spm_tokenizer(out)
    else:
        write_tokenizer(out, tokens, merges, specials, bos, eos)
    return out


def set_masters(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with seeded float32 masters: linears N(0, 1/in), norms 1 + N(0, 0.02²), embeddings
    and an untied head N(0, (2/√n_embd)²); drawn in name order from one torch.Generator (a tied head is the
    embedding)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            draw = torch.randn(param.shape, generator=gen)
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.02 * draw)
            elif name in ("model.embed_tokens.weight", "lm_head.weight"):
                param.copy_(draw * (2 / param.shape[1] ** 0.5))
            else:
                param.copy_(draw / param.shape[1] ** 0.5)


def ternary(weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Absmean ternary codes of a master and its scale m = max(mean|W|, 1e-5), computed in float32 as transformers'
    online WeightQuant computes them (round(W · (1/m)), half to even, clamped to ±1)."""
    w = weight.float()
    m = w.abs().mean().clamp(min=1e-5)
    return (w * (1.0 / m)).round().clamp(-1, 1), float(m)


def pack_checkpoint(out: Path, *, scale_divides: bool) -> None:
    """Rewrite every linear `*.weight` of a saved float checkpoint as transformers' uint8 packing of its ternary codes,
    plus a `*.weight_scale` of shape (1,): 1/m where BitLinear divides by it, else m (AutoBitLinear multiplies)."""
    index_path = out / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    files = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
    total = 0
    for file in files:
        tensors = load_file(out / file)
        for name in [n for n in tensors if n.removesuffix(".weight").endswith(LINEARS)]:
            master = tensors[name]
            codes, m = ternary(master)
            tensors[name] = pack_weights(codes.to(torch.int8))
            scale = torch.tensor([1.0 / m if scale_divides else m], dtype=torch.float32).to(master.dtype)
            tensors[name + "_scale"] = scale
            if index:
                index["weight_map"][name + "_scale"] = file
        save_file(tensors, out / file, metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    if index:
        index["metadata"]["total_size"] = total
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _shard_bytes(model: torch.nn.Module, shards: int) -> int:
    """A max_shard_size that makes save_pretrained write about `shards` files (never one tensor per file)."""
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return total // shards + 1 if shards > 1 else 2 * total + 1


def read_vocab(vocab: str) -> tuple[list[str], list[tuple[str, str]], list[str], tuple[int, int]]:
    """(tokens, merges, control tokens, (bos, eos)) of the llama-bpe fixture, or of its "small" cut: the first
    SMALL_VOCAB tokens, the merges among them, then the control tokens renumbered after them."""
    if vocab not in ("llama-bpe", "small", "llama-spm"):
        raise ValueError(f"vocab {vocab!r} is not 'llama-bpe', 'small' or 'llama-spm'")
    with read_gguf(SPM_GGUF if vocab == "llama-spm" else VOCAB_GGUF) as gguf:
        tokens = list(gguf.get("tokenizer.ggml.tokens"))
        merges = [tuple(m.split(" ", 1)) for m in gguf.get("tokenizer.ggml.merges", [])]
        types = list(gguf.get("tokenizer.ggml.token_type"))
        bos, eos = int(gguf.get("tokenizer.ggml.bos_token_id")), int(gguf.get("tokenizer.ggml.eos_token_id"))
    control = [i for i, t in enumerate(types) if t == TOKEN_TYPE_CONTROL]
    if vocab == "small":
        kept = tokens[:SMALL_VOCAB]
        known = set(kept)
        merges = [(a, b) for a, b in merges if a in known and b in known and a + b in known]
        renumber = {old: SMALL_VOCAB + k for k, old in enumerate(control)}
        tokens, bos, eos = kept + [tokens[i] for i in control], renumber[bos], renumber[eos]
        control = list(renumber.values())
    return tokens, merges, [tokens[i] for i in control], (bos, eos)


def write_tokenizer(out: Path, tokens: list[str], merges: list[tuple[str, str]], specials: list[str], bos: int,
                    eos: int) -> None:
    """tokenizer.json (byte-level BPE with the Llama 3 split, as Meta's), tokenizer_config.json and
    special_tokens_map.json, so that transformers.AutoTokenizer.from_pretrained(out) works."""
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=True)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B",
                                      special_tokens=[(tokens[bos], bos)]),
    ])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": tokens[bos], "eos_token": tokens[eos]}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 2048,
              "clean_up_tokenization_spaces": False, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


BITLINEAR_INPUTS = ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")  # what the 7 BitLinears quantize


def int8_codes(x: np.ndarray) -> np.ndarray:
    """Per-token absmax int8 codes of (n_tokens, width) activations, as every BitLinear quantizes its input."""
    x = x.astype(np.float32)
    scale = np.float32(127) / np.maximum(np.abs(x).max(axis=1, keepdims=True), np.float32(1e-5))
    return np.clip(np.rint(x * scale), -128, 127)


def code_flips(a: dict, b: dict, n_layer: int) -> list[tuple[str, int, int]]:
    """(point, layer, position) where two engines' captures give different int8 codes to a BitLinear: where one
    engine's activation sat within float noise of a rounding boundary, everything after legitimately differs."""
    flips = []
    for layer in range(n_layer):
        for point in BITLINEAR_INPUTS:
            rows = np.flatnonzero((int8_codes(a[(point, layer)]) != int8_codes(b[(point, layer)])).any(axis=1))
            flips += [(point, layer, int(t)) for t in rows]
    return flips


def _varint(n: int) -> bytes:
    """A protobuf varint (negative ints as 10-byte two's complement)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value: bytes | int | float) -> bytes:
    """One protobuf field: bytes length-delimited, ints varint, floats fixed32."""
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(value)


def write_tokenizer_model(out: Path, vocab_gguf: Path) -> Path:
    """A sentencepiece tokenizer.model (ModelProto: BPE pieces with scores and types, byte fallback, trainer ids,
    add_dummy_prefix) holding the vocabulary of a `llama` GGUF vocab file."""
    with read_gguf(vocab_gguf) as g:
        pieces = zip(g.get("tokenizer.ggml.tokens"), g.get("tokenizer.ggml.scores"), g.get("tokenizer.ggml.token_type"),
                     strict=True)
        ids = [int(g.get(f"tokenizer.ggml.{k}_token_id")) for k in ("unknown", "bos", "eos")]
    proto = b"".join(_field(1, _field(1, t.encode()) + _field(2, float(s)) + _field(3, int(k))) for t, s, k in pieces)
    trainer = _field(3, 2) + _field(35, 1) + b"".join(_field(40 + i, v) for i, v in enumerate([*ids, -1]))
    proto += _field(2, trainer) + _field(3, _field(1, b"identity") + _field(3, 1))
    (out / "tokenizer.model").write_bytes(proto)
    return out / "tokenizer.model"


def write_spm_tokenizer(out: Path) -> None:
    """tokenizer.model of SPM_GGUF's vocabulary, and the tokenizer.json and tokenizer_config.json transformers' own
    LlamaTokenizer makes of it (with sentencepiece and protobuf)."""
    from transformers import LlamaTokenizer

    write_tokenizer_model(out, SPM_GGUF)
    LlamaTokenizer.from_pretrained(str(out)).save_pretrained(str(out))

