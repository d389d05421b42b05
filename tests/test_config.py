"""ModelConfig from small GGUF files written here: all three architectures, defaults, activation rules, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bitnet_ref.config import ModelConfig
from bitnet_ref.constants import GGMLType, ValueType
from bitnet_ref.errors import ConfigError
from bitnet_ref.gguf_reader import read_gguf
from bitnet_ref.gguf_writer import GGUFWriter

E, FF, HEADS, KV_HEADS, LAYERS, VOCAB, CTX = 64, 128, 4, 2, 2, 16, 32


def arch_keys(arch: str) -> dict[str, tuple[object, tuple[ValueType, ...]]]:
    u32, f32 = (ValueType.UINT32,), (ValueType.FLOAT32,)
    return {
        "general.architecture": (arch, (ValueType.STRING,)),
        f"{arch}.context_length": (CTX, u32),
        f"{arch}.embedding_length": (E, u32),
        f"{arch}.block_count": (LAYERS, u32),
        f"{arch}.feed_forward_length": (FF, u32),
        f"{arch}.attention.head_count": (HEADS, u32),
        f"{arch}.attention.head_count_kv": (KV_HEADS, u32),
        f"{arch}.rope.dimension_count": (E // HEADS, u32),
        f"{arch}.rope.freq_base": (500000.0, f32),
        f"{arch}.attention.layer_norm_rms_epsilon": (1e-5, f32),
        "tokenizer.ggml.model": ("gpt2", (ValueType.STRING,)),
        "tokenizer.ggml.tokens": ([f"t{i}" for i in range(VOCAB)], (ValueType.ARRAY, ValueType.STRING)),
        "tokenizer.ggml.merges": (["t 0"], (ValueType.ARRAY, ValueType.STRING)),
        "tokenizer.ggml.bos_token_id": (1, u32),
        "tokenizer.ggml.eos_token_id": (2, u32),
    }


def tensor_shapes(n_vocab: int = VOCAB) -> dict[str, tuple[int, ...]]:
    kv = E // HEADS * KV_HEADS
    out = {"token_embd.weight": (E, n_vocab), "output_norm.weight": (E,)}
    for i in range(LAYERS):
        out |= {
            f"blk.{i}.attn_norm.weight": (E,),
            f"blk.{i}.attn_q.weight": (E, E),
            f"blk.{i}.attn_k.weight": (E, kv),
            f"blk.{i}.attn_v.weight": (E, kv),
            f"blk.{i}.attn_sub_norm.weight": (E,),
            f"blk.{i}.attn_output.weight": (E, E),
            f"blk.{i}.ffn_norm.weight": (E,),
            f"blk.{i}.ffn_gate.weight": (E, FF),
            f"blk.{i}.ffn_up.weight": (E, FF),
            f"blk.{i}.ffn_sub_norm.weight": (FF,),
            f"blk.{i}.ffn_down.weight": (FF, E),
        }
    return out


@pytest.fixture
def write(tmp_path):
    """write(arch, set={key: value or (value, types)}, drop=[keys], tensors={name: shape or None}) -> GGUFFile."""
    opened = []

    def _write(arch="bitnet", set=None, drop=(), tensors=None):
        kv = arch_keys(arch)
        for key, value in (set or {}).items():
            kv[key] = (
                value if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], tuple) else (value, None)
            )
        shapes = tensor_shapes() | (tensors or {})
        path = tmp_path / f"m{len(opened)}.gguf"
        with GGUFWriter(path) as w:
            for key, (value, types) in kv.items():
                if key not in drop:
                    w.add_kv(key, value, types)
            live = {n: s for n, s in shapes.items() if s is not None}
            for name, shape in live.items():
                w.add_tensor(name, shape, GGMLType.F32)
            w.write_header()
            for name, shape in live.items():
                w.write_tensor(name, np.zeros(math.prod(shape), dtype=np.float32))
        g = read_gguf(path)
        opened.append(g)
        return g

    yield _write
    for g in opened:
        g.close()


@pytest.mark.parametrize(("arch", "act"), [("bitnet", "silu"), ("bitnet-25", "relu2"), ("bitnet-b1.58", "relu2")])
def test_each_architecture(write, arch, act):
    g = write(arch)
    c = ModelConfig.from_gguf(g)
    assert (c.arch, c.n_embd, c.n_ff, c.n_layer, c.n_head, c.n_head_kv) == (arch, E, FF, LAYERS, HEADS, KV_HEADS)
    assert (c.head_dim, c.n_rot, c.n_gqa, c.n_embd_kv, c.n_vocab, c.n_ctx) == (16, 16, 2, 32, VOCAB, CTX)
    assert c.rope_base == 500000.0 and c.rope_neox and c.rms_eps == pytest.approx(1e-5)
    assert (c.ffn_act, c.ffn_act_source) == (act, "arch")
    assert c.tied_output and (c.bos_id, c.eos_id) == (1, 2)
    c.check_tensors(g)


def test_llama_cpp_defaults_when_optional_keys_are_absent(write):
    drop = ["bitnet.attention.head_count_kv", "bitnet.rope.dimension_count", "bitnet.rope.freq_base"]
    kv = E // HEADS * HEADS  # head_count_kv defaults to head_count: K/V are as wide as Q
    tensors = {f"blk.{i}.attn_{p}.weight": (E, kv) for i in range(LAYERS) for p in "kv"}
    c = ModelConfig.from_gguf(write(drop=drop, tensors=tensors))
    assert (c.n_head_kv, c.n_rot, c.rope_base, c.head_dim) == (HEADS, E // HEADS, 10000.0, E // HEADS)
    sources = dict(c.sources)
    assert sources["n_head_kv"].startswith("default 4") and sources["rope_base"].startswith("default 10000")
    assert sources["n_rot"].startswith("default 16")


@pytest.mark.parametrize(
    ("arch", "value", "act"),
    [("bitnet", "relu2", "relu2"), ("bitnet-b1.58", "silu", "silu"), ("bitnet-25", "relu2", "relu2")],
)
def test_hidden_activation_key_wins_over_arch(write, arch, value, act):
    c = ModelConfig.from_gguf(write(arch, set={f"{arch}.hidden_activation": value}))
    assert (c.ffn_act, c.ffn_act_source) == (act, "key")
    assert f"{arch}.hidden_activation" in c.describe()["ffn_act_reason"]


def test_unknown_hidden_activation_is_an_error(write):
    with pytest.raises(ConfigError, match=r"bitnet\.hidden_activation = 'gelu'.*relu2"):
        ModelConfig.from_gguf(write(set={"bitnet.hidden_activation": "gelu"}))


def test_override_wins_over_key_and_arch(write):
    g = write("bitnet-b1.58", set={"bitnet-b1.58.hidden_activation": "relu2"})
    c = ModelConfig.from_gguf(g, ffn_act="silu")
    assert (c.ffn_act, c.ffn_act_source) == ("silu", "override")
    with pytest.raises(ConfigError, match="override 'gelu'"):
        ModelConfig.from_gguf(g, ffn_act="gelu")


def test_unsupported_architecture_names_the_supported_ones(write):
    g = write()
    md = dict(g.metadata, **{"general.architecture": "llama"})
    with pytest.raises(ConfigError, match="'llama' is not supported.*bitnet, bitnet-25, bitnet-b1.58"):
        ModelConfig.from_metadata(md, {})


@pytest.mark.parametrize(
    "key",
    [
        "bitnet.embedding_length",
        "bitnet.block_count",
        "bitnet.context_length",
        "bitnet.attention.layer_norm_rms_epsilon",
        "bitnet.attention.head_count",
        "bitnet.feed_forward_length",
    ],
)
def test_missing_required_key_is_named(write, key):
    with pytest.raises(ConfigError, match=f"required key {key} is missing"):
        ModelConfig.from_gguf(write(drop=[key]))


def test_head_counts_must_divide(write):
    with pytest.raises(ConfigError, match="embedding_length 64 is not a multiple of head_count 3"):
        ModelConfig.from_gguf(write(set={"bitnet.attention.head_count": 3}))
    with pytest.raises(ConfigError, match="head_count 4 is not a multiple of head_count_kv 3"):
        ModelConfig.from_gguf(write(set={"bitnet.attention.head_count_kv": 3}))


def test_bad_values_are_named(write):
    with pytest.raises(ConfigError, match=r"bitnet\.block_count = 'two'"):
        ModelConfig.from_gguf(write(set={"bitnet.block_count": "two"}))
    with pytest.raises(ConfigError, match="rope.dimension_count = 18"):
        ModelConfig.from_gguf(write(set={"bitnet.rope.dimension_count": (18, (ValueType.UINT32,))}))
    with pytest.raises(ConfigError, match="RoPE scaling 'yarn'"):
        ModelConfig.from_gguf(write(set={"bitnet.rope.scaling.type": "yarn"}))


def test_per_layer_arrays_must_be_uniform(write):
    arr = (ValueType.ARRAY, ValueType.INT32)
    c = ModelConfig.from_gguf(write(set={"bitnet.attention.head_count_kv": (np.array([2, 2], np.int32), arr)}))
    assert c.n_head_kv == 2
    with pytest.raises(ConfigError, match="uniform per-layer"):
        ModelConfig.from_gguf(write(set={"bitnet.attention.head_count_kv": (np.array([2, 4], np.int32), arr)}))


def test_vocab_size_from_tokens_then_key_then_embedding(write):
    c = ModelConfig.from_gguf(write(drop=["tokenizer.ggml.tokens"]))
    assert c.n_vocab == VOCAB and dict(c.sources)["n_vocab"] == "token_embd.weight ne1"
    c = ModelConfig.from_gguf(write(drop=["tokenizer.ggml.tokens"], set={"bitnet.vocab_size": 16}))
    assert dict(c.sources)["n_vocab"] == "key bitnet.vocab_size"


def test_special_ids_default_like_llama_cpp(write):
    c = ModelConfig.from_gguf(write(drop=["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]))
    assert (c.bos_id, c.eos_id) == (11, 11)  # llama.cpp's gpt2 defaults
    c = ModelConfig.from_gguf(write(set={"tokenizer.ggml.eos_token_id": (99, (ValueType.UINT32,))}))
    assert c.eos_id is None and "outside" in dict(c.sources)["eos_id"]


def test_untied_output_head(write):
    g = write(tensors={"output.weight": (E, VOCAB)})
    c = ModelConfig.from_gguf(g)
    assert not c.tied_output and c.describe()["output_head"] == "output.weight"
    c.check_tensors(g)


def test_check_tensors_names_missing_wrong_and_unexpected(write):
    g = write(tensors={"blk.1.ffn_down.weight": None, "blk.0.attn_k.weight": (E, E), "extra.weight": (4,)})
    c = ModelConfig.from_gguf(g)
    with pytest.raises(ConfigError) as e:
        c.check_tensors(g)
    msg = str(e.value)
    assert "missing blk.1.ffn_down.weight [128, 64]" in msg
    assert "blk.0.attn_k.weight has shape [64, 64], expected [64, 32]" in msg
    assert "unexpected tensor extra.weight [4] (F32)" in msg


def test_check_tensors_accepts_llama_cpp_optional_scales(write):
    g = write(tensors={"blk.0.attn_q.scale": (1,), "blk.1.ffn_down.scale": (1,)})
    ModelConfig.from_gguf(g).check_tensors(g)
    g = write(tensors={"blk.2.attn_q.scale": (1,), "blk.0.attn_norm.scale": (1,)})
    with pytest.raises(ConfigError, match="unexpected tensor blk.2.attn_q.scale.*unexpected tensor blk.0.attn_norm"):
        ModelConfig.from_gguf(g).check_tensors(g)


def test_vocab_mismatch_with_embedding_is_reported(write):
    g = write(tensors={"token_embd.weight": (E, VOCAB + 1)})
    with pytest.raises(ConfigError, match=r"token_embd.weight has shape \[64, 17\], expected \[64, 16\]"):
        ModelConfig.from_gguf(g).check_tensors(g)


def test_describe_is_complete_and_flags_2b4t_shapes_under_arch_bitnet(write):
    g = write()
    d = ModelConfig.from_gguf(g).describe()
    for key in (
        "ffn_act",
        "ffn_act_source",
        "rope",
        "rope_base",
        "rms_eps",
        "head_dim",
        "n_gqa",
        "tied_output",
        "n_vocab",
        "n_ctx",
        "attn_scale",
        "sources",
    ):
        assert key in d
    md = {k: v for k, v in g.metadata.items()}
    md |= {
        "bitnet.embedding_length": 2560,
        "bitnet.block_count": 30,
        "bitnet.feed_forward_length": 6912,
        "bitnet.attention.head_count": 20,
        "bitnet.attention.head_count_kv": 5,
        "bitnet.rope.dimension_count": 128,
    }
    d = ModelConfig.from_metadata(md, {}).describe()
    assert d["ffn_act"] == "silu" and "relu2" in d["ffn_act_note"]
