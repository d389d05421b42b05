"""transformers as a crossval reference: the tiny HF checkpoints of hf_builders load back as transformers reads them,
and HFBackend computes what an independent numpy twin of BitNet b1.58 (docs/NUMERICS.md §3) computes, in process and
in a child process."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_builders import LINEARS, QUANT_CONFIGS, VOCAB_GGUF, code_flips, write_checkpoint
from safetensors.torch import load_file
from transformers import BitNetForCausalLM
from transformers.integrations.bitnet import AutoBitLinear, BitLinear, unpack_weights

from bitnet_ref.gguf_reader import read_gguf
from bitnet_ref.tokenizer import Tokenizer
from crossval import points as P
from crossval.backends import BackendError
from crossval.hf_backend import HFBackend
from crossval.isolated import IsolatedBackend

TOL = 1e-4  # max|Δ|/rms between HFBackend and the twin
TOKENS = [7, 301, 1917, 11, 433, 596, 264, 1296]
CORPUS = ["Hello world", "It's 12345 apples, isn't it?", " leading  spaces\n\nand\ttabs", "naïve café — 東京 🚀",
          "<|begin_of_text|>User: hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>"]
# (layout, hidden_act, master dtype) of the twin checks: relu2 cases with bf16 masters, as 2B-4T ships
CASES = [(layout, *act_dtype) for layout in QUANT_CONFIGS for act_dtype in (("silu", "float32"), ("relu2", "bfloat16"))]


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """Tiny checkpoints on the small vocabulary, written once per session: ckpt(layout, act, **options) -> path."""
    made: dict[tuple, Path] = {}

    def get(layout: str, act: str = "relu2", **options) -> Path:
        key = (layout, act, *sorted(options.items()))
        if key not in made:
            out = tmp_path_factory.mktemp(f"hf-{layout}-{act}")
            made[key] = write_checkpoint(out, layout=layout, hidden_act=act, vocab="small", **options)
        return made[key]

    return get


@pytest.fixture(scope="session")
def full_vocab(tmp_path_factory) -> Path:
    """A packed relu2 checkpoint with the whole llama-bpe vocabulary (128256 tokens), like 2B-4T's layout."""
    return write_checkpoint(tmp_path_factory.mktemp("hf-full"), layout="packed", vocab="llama-bpe")


@pytest.fixture(scope="session")
def backend(ckpt) -> HFBackend:
    """HFBackend in this process on the packed relu2 checkpoint."""
    return HFBackend(ckpt("packed"), n_threads=2)


# -- the numpy twin ------------------------------------------------------------------------------------------------


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint (one file or shards) as numpy: floats as f32, packed codes as uint8."""
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        for name, t in load_file(file).items():
            out[name] = t.numpy() if t.dtype == torch.uint8 else t.float().numpy()
    return out


def unpack(packed: np.ndarray) -> np.ndarray:
    """Ternary codes (out, in) from uint8 (out/4, in): bit pair i of byte row r is output row r + i·out/4, value + 1."""
    shifts = np.arange(4, dtype=np.uint8)[:, None, None] * 2
    return (((packed[None] >> shifts) & 3).reshape(-1, packed.shape[1])).astype(np.float32) - 1


def twin_ternary(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Absmean codes and scale of a float master: T = clamp(round(W / m)), m = max(mean|W|, 1e-5)."""
    m = np.maximum(np.mean(np.abs(w), dtype=np.float32), np.float32(1e-5))
    return np.clip(np.round(w * (np.float32(1) / m)), -1, 1), m


def bitlinear(x: np.ndarray, tensors: dict, name: str, quant: dict) -> np.ndarray:
    """One BitLinear: per-token absmax int8 activations (half to even), ternary weights, one scale per tensor."""
    s = np.float32(127) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(1e-5))
    q = np.clip(np.round(x * s), -128, 127)
    w = tensors[name + ".weight"]
    if quant["quantization_mode"] == "online":
        codes, m = twin_ternary(w)
        return (q / s) @ (codes / (np.float32(1) / m)).T
    codes, ws = unpack(w), tensors[name + ".weight_scale"][0]
    if quant["linear_class"] == "bitlinear":
        return (q @ codes.T) / (ws * s)  # 2B-4T: the output is divided by weight_scale
    return ((q / s) @ codes.T) * ws  # AutoBitLinear offline: multiplied


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x · rsqrt(mean(x²) + ε) · weight, in f32."""
    return weight * (x / np.sqrt(np.mean(x * x, -1, keepdims=True) + np.float32(eps)))


def rope_neox(x: np.ndarray, theta: float) -> np.ndarray:
    """NEOX RoPE of (n_tokens, n_heads, head_dim) at positions 0..n-1: halves rotated with one frequency each."""
    n, _, hd = x.shape
    inv_freq = np.float32(1) / np.float32(theta) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd))
    angle = np.arange(n, dtype=np.float32)[:, None] * inv_freq  # (n, hd/2)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal GQA softmax attention of (n, heads, hd) q over (n, kv_heads, hd) k/v; q head j uses kv head j div g."""
    n, n_head, hd = q.shape
    group = n_head // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) * np.float32(hd**-0.5)
    scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v).reshape(n, n_head * hd)


def twin_layer(h: np.ndarray, w: dict, cfg: dict, pre: str, forced: dict | None) -> dict[str, np.ndarray]:
    """One decoder layer on its input h (n_tokens, n_embd): every capture point by name. With `forced` (another
    engine's values of this layer's points) each step reads its inputs from there instead of from the steps before."""
    quant, eps, hd = cfg["quantization_config"], cfg["rms_norm_eps"], cfg["hidden_size"] // cfg["num_attention_heads"]
    act = {"silu": lambda z: z / (1 + np.exp(-z)), "relu2": lambda z: np.maximum(z, 0) ** 2}[cfg["hidden_act"]]

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return rms_norm(x, w[pre + name + ".weight"], eps)

    def lin(x: np.ndarray, name: str) -> np.ndarray:
        return bitlinear(x, w, pre + name, quant)

    def rope(x: np.ndarray) -> np.ndarray:
        return rope_neox(x.reshape(len(x), -1, hd), cfg["rope_parameters"]["rope_theta"]).reshape(len(x), -1)

    pt: dict[str, np.ndarray] = {}
    x = (forced or pt).__getitem__  # a step's input: the forced value, or this twin's own
    pt["attn_norm"] = norm(h, "input_layernorm")
    q, k, v = (lin(x("attn_norm"), f"self_attn.{p}_proj") for p in "qkv")
    pt["Qcur"], pt["Kcur"], pt["Vcur"] = rope(q), rope(k), v
    pt["kqv_out"] = attention(*(x(name).reshape(len(h), -1, hd) for name in ("Qcur", "Kcur", "Vcur")))
    pt["attn_sub_norm"] = norm(x("kqv_out"), "self_attn.attn_sub_norm")  # BitNet: a norm before o_proj
    pt["attn_out"] = lin(x("attn_sub_norm"), "self_attn.o_proj")
    pt["ffn_inp"] = h + x("attn_out")
    pt["ffn_norm"] = norm(x("ffn_inp"), "post_attention_layernorm")
    pt["ffn_gate"], pt["ffn_up"] = lin(x("ffn_norm"), "mlp.gate_proj"), lin(x("ffn_norm"), "mlp.up_proj")
    pt["ffn_sub_out"] = act(x("ffn_gate")) * x("ffn_up")  # relu² (2B-4T) or SiLU
    pt["ffn_sub_norm"] = norm(x("ffn_sub_out"), "mlp.ffn_sub_norm")  # BitNet: a norm before down_proj
    pt["ffn_down"] = lin(x("ffn_sub_norm"), "mlp.down_proj")
    pt["l_out"] = x("ffn_inp") + x("ffn_down")
    return pt


def twin_forward(path: Path, tokens: list[int], forced: dict | None = None) -> dict[tuple[str, int], np.ndarray]:
    """The BitNet b1.58 forward of a checkpoint directory: every capture point, (point, layer) -> (n_tokens, width).

    With `forced` (another engine's capture of every point) each step reads its inputs from there: every point is
    then checked on its own, without what came before it.
    """
    cfg = json.loads((path / "config.json").read_text())
    w, head = read_tensors(path), P.HEAD_LAYER
    out: dict[tuple[str, int], np.ndarray] = {}
    h = w["model.embed_tokens.weight"][tokens]  # (n_tokens, n_embd)
    for il in range(cfg["num_hidden_layers"]):
        mine = {name: forced[(name, il)] for name in P.LAYER_POINTS} if forced else None
        pt = twin_layer(h, w, cfg, f"model.layers.{il}.", mine)
        out.update({(name, il): value for name, value in pt.items()})
        h = (mine or pt)["l_out"]
    out[("result_norm", head)] = rms_norm(h, w["model.norm.weight"], cfg["rms_norm_eps"])
    embd = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    out[("result_output", head)] = (forced or out)[("result_norm", head)] @ embd.T  # the head is not quantized
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / rms(b)."""
    return float(np.abs(a - b).max() / np.sqrt(np.mean(b.astype(np.float64) ** 2)))


# -- the builders --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(QUANT_CONFIGS))
def test_config_json_is_what_transformers_writes(ckpt, layout):
    cfg = json.loads((ckpt(layout, "silu") / "config.json").read_text())
    assert cfg["architectures"] == ["BitNetForCausalLM"] and cfg["model_type"] == "bitnet"
    assert cfg["quantization_config"] == QUANT_CONFIGS[layout]
    assert (cfg["hidden_act"], cfg["dtype"], cfg["tie_word_embeddings"]) == ("silu", "float32", True)
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (256, 512, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (4, 2, 2048 + 256)
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}


@pytest.mark.parametrize("layout", ["packed", "packed-autobitlinear"])
def test_packed_codes_are_the_masters_ternary_codes(ckpt, layout):
    masters, packed = read_tensors(ckpt("online")), read_tensors(ckpt(layout))
    names = [f"model.layers.{il}.{lin}.weight" for il in range(2) for lin in LINEARS]
    for name in names:
        codes, m = twin_ternary(masters[name])
        assert packed[name].dtype == np.uint8 and packed[name].shape == (codes.shape[0] // 4, codes.shape[1]), name
        np.testing.assert_array_equal(unpack(packed[name]), codes, err_msg=name)
        theirs = unpack_weights(torch.from_numpy(packed[name]), dtype=torch.float32).numpy()
        np.testing.assert_array_equal(theirs, codes, err_msg=f"{name}: transformers' unpack_weights")
        scale = packed[name + "_scale"]
        assert scale.shape == (1,), name
        np.testing.assert_allclose(scale[0], 1 / m if layout == "packed" else m, rtol=1e-6, err_msg=name)
    assert 0.2 < np.mean(unpack(packed[names[0]]) == 0) < 0.5  # the absmean codes are not trivial


@pytest.mark.parametrize("layout", list(QUANT_CONFIGS))
def test_transformers_loads_each_layout_with_its_linear_class(ckpt, layout):
    model = BitNetForCausalLM.from_pretrained(ckpt(layout), dtype=torch.float32)
    q_proj = model.model.layers[0].self_attn.q_proj
    if layout == "packed":
        assert isinstance(q_proj, BitLinear) and q_proj.weight.dtype == torch.uint8
    else:
        assert isinstance(q_proj, AutoBitLinear) and q_proj.online_quant == (layout == "online")
    if layout == "packed-autobitlinear":  # unpacked on load
        codes = unpack(read_tensors(ckpt(layout))["model.layers.0.self_attn.q_proj.weight"])
        np.testing.assert_array_equal(q_proj.weight.detach().numpy(), codes)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight


def test_shards_and_bf16_masters_load_to_the_same_model(ckpt):
    one, three = ckpt("packed", dtype="bfloat16"), ckpt("packed", dtype="bfloat16", shards=3)
    index = json.loads((three / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in three.glob("*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(index["weight_map"]) == set(read_tensors(one)) and set(index["weight_map"].values()) == set(files)
    assert json.loads((three / "config.json").read_text())["dtype"] == "bfloat16"
    a, b = read_tensors(one), read_tensors(three)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(HFBackend(one).eval(TOKENS), HFBackend(three).eval(TOKENS))


def test_full_vocabulary_tokenizes_like_the_gguf(full_vocab):
    """The default vocabulary: transformers' tokenizer on the written tokenizer.json gives bitnet_ref's
    (llama.cpp-verified) ids for the same GGUF vocabulary, special tokens included."""
    backend = HFBackend(full_vocab)
    with read_gguf(VOCAB_GGUF) as gguf:
        ref = Tokenizer.from_gguf(gguf)
    assert (backend.tokenizer.bos_token_id, backend.tokenizer.eos_token_id, len(backend.tokenizer)) == (
        128000, 128001, 128256)
    for text in CORPUS:
        ids = backend.tokenize(text, True)
        assert ids == list(ref.encode(text, add_bos=True, parse_special=True)), text
        assert backend.tokenizer.decode(ids[1:]) == text
    assert backend.eval(ids).shape == (len(ids), 128256)


# -- HFBackend against the twin -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "act", "dtype"), CASES)
def test_every_point_and_the_logits_equal_the_numpy_twin(ckpt, layout, act, dtype):
    """Each point from transformers' own inputs to it (twin_forward's `forced`), then end to end.

    Forced, the quantizers see the same inputs and agree to float order (~3e-6) on any seed. End to end agrees as
    closely unless an ulp of difference upstream moves one int8 activation across a rounding boundary; everything
    after it then differs by ~5e-2 (sweeps of 12-token prompts here: 10 of 96 seed × checkpoint pairs end to end;
    forced, 24 of 24 within 3e-6). Which activations sit that close depends on the host's float order (torch's
    kernels differ by ISA), so the end-to-end bound is asserted where both give every BitLinear the same int8 codes
    (checked, not assumed), and logits r ≥ 0.9999 where a code flipped.
    """
    path = ckpt(layout, act, dtype=dtype)
    backend = HFBackend(path)
    logits, got = backend.eval(TOKENS), backend.capture(TOKENS, P.all_points(2))
    forced = twin_forward(path, TOKENS, forced=got)
    for key in P.all_points(2):
        err = rel_err(got[key], forced[key])
        assert err <= TOL, f"{layout} {act} {dtype} {key}: max|Δ|/rms {err:.2e} from the forced twin"
    twin_points = twin_forward(path, TOKENS)
    twin = twin_points[("result_output", P.HEAD_LAYER)]
    assert logits.shape == (len(TOKENS), 2304) and logits.dtype == np.float32
    err, flips = rel_err(logits, twin), code_flips(got, twin_points, 2)
    if flips:
        assert np.corrcoef(logits.ravel(), twin.ravel())[0, 1] >= 0.9999, f"{layout} {act} {dtype}: {flips}"
    else:
        assert err <= TOL, f"{layout} {act} {dtype}: logits max|Δ|/rms {err:.2e} end to end, no int8 code flipped"


def test_untied_head_equals_the_twin(ckpt):
    path = ckpt("online", "silu", tie=False)
    assert "lm_head.weight" in read_tensors(path)
    backend = HFBackend(path)
    twin_points = twin_forward(path, TOKENS)
    twin = twin_points[("result_output", P.HEAD_LAYER)]
    logits = backend.eval(TOKENS)
    if code_flips(backend.capture(TOKENS, P.all_points(2)), twin_points, 2):
        assert np.corrcoef(logits.ravel(), twin.ravel())[0, 1] >= 0.9999
    else:
        assert rel_err(logits, twin) <= TOL


def test_capture_gives_the_requested_points_at_their_widths(backend):
    points = P.all_points(2)
    got = backend.capture(TOKENS, points + [("attn_norm", 2), ("no_such_point", 0)])
    assert set(got) == set(points)
    widths = {"Kcur": 128, "Vcur": 128, "ffn_gate": 512, "ffn_up": 512, "ffn_sub_out": 512, "ffn_sub_norm": 512,
              "result_output": 2304}
    for key in points:
        assert got[key].shape == (len(TOKENS), widths.get(key[0], 256)) and got[key].dtype == np.float32, key
    np.testing.assert_array_equal(got[("result_output", P.HEAD_LAYER)], backend.eval(TOKENS))
    assert backend.capture(TOKENS, [("Vcur", 1)]).keys() == {("Vcur", 1)}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in backend.model.modules())


def test_greedy_is_the_argmax_of_eval(backend):
    ids, rows = backend.greedy(TOKENS, 4)
    full = backend.eval(TOKENS + ids[:-1])[len(TOKENS) - 1:]
    assert ids == [int(i) for i in full.argmax(-1)]
    assert rows.shape == (4, 2304) and rel_err(rows, full) <= TOL
    assert backend.greedy(TOKENS, 0)[1].shape == (0, 2304)


def test_eval_is_causal(backend):
    longer = backend.eval(TOKENS + [5, 6, 7])
    assert rel_err(backend.eval(TOKENS), longer[: len(TOKENS)]) <= 1e-6


def test_tokenize_parses_specials_and_prepends_bos(backend):
    assert backend.tokenize("Hi<|eot_id|>", True) == [2048, 39, 72, 2048 + 9]
    assert backend.tokenize("Hi", False) == [39, 72]


def test_describe_records_what_decides_the_numbers(backend):
    d = backend.describe()
    assert d["backend"] == "transformers" and d["dtype"] == "float32" and d["attn_implementation"] == "eager"
    assert d["quantization_config"]["linear_class"] == "bitlinear" and d["hidden_act"] == "relu2"
    assert d["transformers"] == metadata.version("transformers") and d["torch"].startswith("2.") and d["n_threads"] == 2
    assert d["torch_compile"] is False and d["dynamo_disabled"] is True
    json.dumps(d)


def test_too_many_tokens_and_unloadable_checkpoints_are_errors(ckpt, tmp_path):
    with pytest.raises(BackendError, match="exceed n_ctx 4"):
        HFBackend(ckpt("packed"), n_ctx=4).eval(TOKENS)
    with pytest.raises(BackendError, match="not a checkpoint directory"):
        HFBackend(tmp_path / "missing")
    (tmp_path / "config.json").write_text('{"model_type": "bitnet", "architectures": ["BitNetForCausalLM"]}')
    with pytest.raises(BackendError, match=f"cannot load {tmp_path}: OSError: .*model.safetensors") as info:
        HFBackend(tmp_path)
    assert "\n" not in str(info.value)


def test_isolated_child_computes_the_same(backend, ckpt):
    child = IsolatedBackend("crossval.hf_backend:HFBackend", {"path": str(ckpt("packed")), "n_threads": 2},
                            name="transformers", timeout=300)
    try:
        np.testing.assert_array_equal(child.eval(TOKENS), backend.eval(TOKENS))
        assert child.tokenize("Hi<|eot_id|>", True) == backend.tokenize("Hi<|eot_id|>", True)
        got = child.capture(TOKENS, [("Qcur", 1), ("l_out", 0)])
        np.testing.assert_array_equal(got[("Qcur", 1)], backend.capture(TOKENS, [("Qcur", 1)])[("Qcur", 1)])
        assert child.greedy(TOKENS, 2)[0] == backend.greedy(TOKENS, 2)[0]
        assert child.describe()["dynamo_disabled"] is True
    finally:
        child.close()
