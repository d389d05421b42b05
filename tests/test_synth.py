"""Synthetic models: determinism, every format, ternary x scale values, vocabularies, twins, cache, llama.cpp."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bitnet_ref import formats, synth
from bitnet_ref.bpe import byte_to_unicode, encode_bytes
from bitnet_ref.config import ModelConfig
from bitnet_ref.constants import GGMLType, TokenType, ValueType
from bitnet_ref.errors import ConfigError, FileAccessError
from bitnet_ref.gguf_reader import read_gguf
from bitnet_ref.layout import read_layout, sidecar
from bitnet_ref.verify import check_scales
from bitnet_ref.vocab import TRAINING_TEXT, build_vocabulary

VOCAB_GGUF = Path(__file__).resolve().parent / "fixtures" / "vocab" / "ggml-vocab-llama-bpe.gguf"
EXACT_FORMATS = ("f32", "f16", "bf16", "tq1_0", "tq2_0", "i2_s")  # hold exactly T * scale
LINEAR = "blk.1.ffn_down.weight"


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny preset in every format: fmt -> path (i2_s with arch bitnet-b1.58, the others bitnet)."""
    d = tmp_path_factory.mktemp("tiny")
    return {
        fmt: synth.synth_model(d / f"{fmt}.gguf", fmt=fmt, arch="bitnet-b1.58" if fmt == "i2_s" else "bitnet")
        for fmt in synth.FORMATS
    }


def decoded(path, name):
    with read_gguf(path) as g:
        info = g.tensors[name]
        return formats.get(info.type).decode(np.array(g.tensor_bytes(name)), info.shape), info.type


def test_same_arguments_same_bytes_and_seed_changes_them(tmp_path, tiny):
    again = synth.synth_model(tmp_path / "again.gguf", fmt="tq2_0")
    assert sha(again) == sha(tiny["tq2_0"])
    other = synth.synth_model(tmp_path / "other.gguf", fmt="tq2_0", seed=1)
    assert sha(other) != sha(tiny["tq2_0"])
    assert not np.array_equal(decoded(other, LINEAR)[0], decoded(again, LINEAR)[0])


def test_tensor_draws_depend_only_on_seed_and_name():
    a, sa = synth.ternary_weight("blk.0.attn_q.weight", (256, 64), 7)
    b, sb = synth.ternary_weight("blk.0.attn_q.weight", (256, 64), 7)
    c, _ = synth.ternary_weight("blk.0.attn_k.weight", (256, 64), 7)
    assert np.array_equal(a, b) and sa == sb and not np.array_equal(a, c)


@pytest.mark.parametrize("fmt", synth.FORMATS)
def test_every_format_reads_back_valid(tiny, fmt):
    with read_gguf(tiny[fmt]) as g:
        check_scales(g)
        c = ModelConfig.from_gguf(g)
        c.check_tensors(g)
        dims = synth.PRESETS["tiny"]
        assert (c.n_embd, c.n_ff, c.n_layer, c.n_head, c.n_head_kv, c.n_vocab, c.n_ctx) == (
            dims.n_embd,
            dims.n_ff,
            dims.n_layer,
            dims.n_head,
            dims.n_head_kv,
            dims.n_vocab,
            dims.n_ctx,
        )
        assert c.rope_base == 500000.0 and c.rms_eps == pytest.approx(1e-5) and c.tied_output
        assert g.metadata["general.file_type"] == synth.SYNTH_FORMATS[fmt].FILE_TYPE
        assert g.tensors[LINEAR].type == synth.SYNTH_FORMATS[fmt].TYPE
        assert g.tensors["token_embd.weight"].type == (GGMLType.F32 if fmt == "f32" else GGMLType.F16)
        assert g.tensors["blk.0.attn_norm.weight"].type == GGMLType.F32


def test_i2_s_keys_use_the_fork_architecture(tiny):
    with read_gguf(tiny["i2_s"]) as g:
        assert g.arch == "bitnet-b1.58"
        assert g.metadata["bitnet-b1.58.embedding_length"] == 256
        assert not any(k.startswith("bitnet.") for k in g.metadata)
        assert ModelConfig.from_gguf(g).ffn_act == "relu2"


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.0.attn_k.weight", LINEAR])
def test_linears_are_exactly_ternary_times_scale_in_every_exact_format(tiny, name):
    with read_gguf(tiny["f32"]) as g:
        shape = g.tensors[name].shape
    t, scale = synth.ternary_weight(name, shape, 0)
    assert set(np.unique(t)) == {-1, 0, 1} and 0.25 < np.mean(t == 0) < 0.37  # absmean rounding: ~31% zeros
    assert float(np.float16(scale)) == scale and synth.representable_scale(scale) == scale
    assert scale == pytest.approx(0.7979 / np.sqrt(shape[0]), rel=0.01)  # mean|N(0, 1/K)|
    want = t.astype(np.float32) * np.float32(scale)
    for fmt in EXACT_FORMATS:
        w, _ = decoded(tiny[fmt], name)
        assert np.array_equal(w, want), fmt
    w, _ = decoded(tiny["q8_0"], name)  # Q8_0 rounds: 127 * fp16(scale / 127)
    assert np.allclose(w, want, rtol=2e-3, atol=0)


def test_norms_and_embeddings(tiny):
    norm, typ = decoded(tiny["tq2_0"], "blk.0.ffn_sub_norm.weight")
    assert typ == GGMLType.F32 and norm.shape == (512,) and abs(norm.mean() - 1) < 0.01 and 0.01 < norm.std() < 0.03
    e16, _ = decoded(tiny["tq2_0"], "token_embd.weight")
    e32, _ = decoded(tiny["f32"], "token_embd.weight")
    assert e16.shape == (512, 256) and np.array_equal(e16, e32)
    assert e16.std() == pytest.approx(2 / 16, rel=0.05)


def test_dimension_overrides_and_their_validation(tmp_path):
    p = synth.synth_model(
        tmp_path / "o.gguf",
        fmt="f16",
        n_layer=1,
        n_head=2,
        n_head_kv=1,
        n_vocab=300,
        n_ctx=64,
        n_embd=128,
        n_ff=256,
        rope_base=10000.0,
    )
    with read_gguf(p) as g:
        c = ModelConfig.from_gguf(g)
    assert (c.n_layer, c.n_head, c.n_head_kv, c.n_vocab, c.n_ctx, c.n_embd, c.n_ff, c.rope_base) == (
        1,
        2,
        1,
        300,
        64,
        128,
        256,
        10000.0,
    )
    with pytest.raises(ConfigError, match="n_embd = 128 is not a multiple of 256, which TQ2_0"):
        synth.synth_model(tmp_path / "x.gguf", fmt="tq2_0", n_embd=128)
    with pytest.raises(ConfigError, match="not a multiple of head_count_kv 3"):
        synth.synth_model(tmp_path / "x.gguf", n_head_kv=3)
    with pytest.raises(ConfigError, match="preset 'huge' is unknown"):
        synth.synth_model(tmp_path / "x.gguf", preset="huge")
    with pytest.raises(ConfigError, match="unknown dimension"):
        synth.synth_model(tmp_path / "x.gguf", n_expert=2)
    assert not list(tmp_path.glob(".*tmp"))  # a failed write leaves no temporary file


def test_builtin_vocabulary_is_consistent_byte_level_bpe():
    for n in (258, 512, 4096, 128256):
        v = build_vocabulary(n)
        assert v.n_vocab == n == len(set(v.tokens)) == len(v.token_types)
        assert v.tokens[:256] == tuple(byte_to_unicode().values())
        assert v.tokens[v.bos_id] == "<|begin_of_text|>" and v.tokens[v.eos_id] == "<|end_of_text|>"
        assert v.token_types[-2:] == (TokenType.CONTROL,) * 2 and set(v.token_types[:-2]) == {TokenType.NORMAL}
        known = set(v.tokens[:256])
        for merge in v.merges:
            a, b = merge.split(" ")
            assert a in known and b in known, merge  # a merge only joins tokens that exist before it
            known.add(a + b)
        assert known == set(v.tokens[:-2])
    assert build_vocabulary(512).tokens[256:260] == build_vocabulary(4096).tokens[256:260]  # a prefix of each other
    with pytest.raises(ConfigError, match="at least 258"):
        build_vocabulary(100)


def test_builtin_vocabulary_is_embedded(tiny):
    v = build_vocabulary(512)
    with read_gguf(tiny["tq2_0"]) as g:
        md = g.metadata
        assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "llama-bpe"
        assert tuple(md["tokenizer.ggml.tokens"]) == v.tokens and tuple(md["tokenizer.ggml.merges"]) == v.merges
        assert g.value_types["tokenizer.ggml.token_type"] == (ValueType.ARRAY, ValueType.INT32)
        assert (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"]) == (510, 511)


def test_vocab_file_is_copied_exactly(tmp_path):
    dims = dict(n_embd=64, n_ff=64, n_head=2, n_head_kv=1, n_layer=1)
    p = synth.synth_model(tmp_path / "v.gguf", fmt="f16", vocab=VOCAB_GGUF, **dims)
    with read_gguf(VOCAB_GGUF) as src, read_gguf(p) as g:
        keys = [k for k in src.metadata if k.startswith("tokenizer.")]
        assert keys and all(k in g.metadata for k in keys)
        for k in keys:
            assert g.value_types[k] == src.value_types[k], k
            a, b = src.metadata[k], g.metadata[k]
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b, k
        c = ModelConfig.from_gguf(g)
        assert c.n_vocab == 128256 and (c.bos_id, c.eos_id) == (128000, 128001)
        assert g.tensors["token_embd.weight"].shape == (64, 128256)
    with pytest.raises(ConfigError, match="n_vocab = 512 but the vocabulary"):
        synth.synth_model(tmp_path / "x.gguf", vocab=VOCAB_GGUF, n_vocab=512)


def test_bad_paths_are_file_access_errors_and_leave_nothing_behind(tmp_path):
    with pytest.raises(FileAccessError, match="no-dir/x.gguf: cannot write: its folder .*no-dir does not exist"):
        synth.synth_model(tmp_path / "no-dir" / "x.gguf")
    with pytest.raises(FileAccessError, match="cannot write: it is a directory"):
        synth.synth_model(tmp_path)
    with pytest.raises(FileAccessError, match="missing.gguf: cannot read: No such file"):
        synth.cache_path(vocab=tmp_path / "missing.gguf")  # the vocab file's digest is part of the cache key
    with pytest.raises(FileAccessError, match="missing.gguf: cannot read: No such file"):
        synth.synth_model(tmp_path / "x.gguf", vocab=tmp_path / "missing.gguf")
    assert not list(tmp_path.iterdir())


def test_tq2_0_twin_is_lossless_and_cached(tiny):
    twin = synth.tq2_0_twin(tiny["i2_s"])
    with read_gguf(twin) as g, read_gguf(tiny["i2_s"]) as src:
        assert g.arch == "bitnet" and g.metadata["general.file_type"] == 37
        assert g.metadata["bitnet.embedding_length"] == 256 and not any(
            k.startswith("bitnet-b1.58") for k in g.metadata
        )
        assert list(g.tensors) == list(src.tensors)
        for name, info in src.tensors.items():
            want = formats.get(info.type).decode(np.array(src.tensor_bytes(name)), info.shape)
            t = g.tensors[name]
            assert t.type == (GGMLType.TQ2_0 if info.type == GGMLType.I2_S else info.type)
            assert np.array_equal(formats.get(t.type).decode(np.array(g.tensor_bytes(name)), t.shape), want), name
        assert ModelConfig.from_gguf(g).ffn_act == "silu"
    mtime = twin.stat().st_mtime_ns
    assert synth.tq2_0_twin(tiny["i2_s"]) == twin and twin.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="no I2_S, TL1 or TL2 tensors"):
        synth.tq2_0_twin(tiny["tq2_0"])


@pytest.mark.parametrize("fmt", ["i2_s_arm", "tl1", "tl2"])
def test_layouts_the_file_does_not_record_read_back_and_twin(tiny, fmt):
    """The ARM I2_S layout (told) and TL1/TL2 tiles (tiled by the sidecar kernel_config.ini) hold exactly the drawn
    T x scale; the TQ2_0 twin copies them losslessly and drops the TL `_scale` tensors; read in the other I2_S
    layout, the ARM file's codes land on other elements."""
    path = tiny[fmt]
    layout_name = "arm" if fmt == "i2_s_arm" else "x86"
    with read_gguf(path) as g:
        lay = read_layout(g, layout_name)
        assert bool(lay.tilings) == (fmt != "i2_s_arm")
        assert (lay.kernel_config == str(sidecar(path))) == bool(lay.tilings)
        info = g.tensors[LINEAR]
        t, scale = synth.ternary_weight(LINEAR, info.shape, 0)
        raw = np.array(g.tensor_bytes(LINEAR))
        if fmt == "i2_s_arm":
            assert np.array_equal(formats.I2_S_ARM.ternary(raw, info.shape), t)
            assert not np.array_equal(formats.I2_S.ternary(raw, info.shape), t)
        else:
            fmt_cls = formats.by_name(fmt)
            tiling = fmt_cls.Tiling(*lay.tiling(fmt_cls, info.rows, info.cols))
            assert np.array_equal(fmt_cls.ternary(raw, info.shape, tiling), t)
            assert g.tensor_bytes(LINEAR + "_scale").view(np.float32)[0] == np.float32(scale)
    twin = synth.tq2_0_twin(path, lay)
    with read_gguf(twin) as g:
        assert not any(n.endswith("_scale") for n in g.tensors) and g.tensors[LINEAR].type == GGMLType.TQ2_0
        assert np.array_equal(formats.TQ2_0.ternary(np.array(g.tensor_bytes(LINEAR)), info.shape), t)
        assert formats.TQ2_0.scales(np.array(g.tensor_bytes(LINEAR)), info.shape).max() == np.float32(scale)


def test_tl_files_without_their_tiling_are_refused(tiny, tmp_path):
    """A TL file whose kernel_config.ini is not beside it (nor given) cannot be read: a one-line ConfigError."""
    lone = tmp_path / "lone.gguf"
    lone.write_bytes(tiny["tl2"].read_bytes())
    with pytest.raises(ConfigError, match=r"TL2 weight of shape M = \d+, K = \d+: no tiling"):
        synth.tq2_0_twin(lone)
    assert not list(tmp_path.glob("*twin*"))


def test_cached_model_keys_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv(synth.CACHE_ENV, str(tmp_path))
    p = synth.cached_model(preset="tiny", fmt="tq1_0", arch="bitnet", seed=3)
    assert p.parent == tmp_path / "models" and p.name.startswith("tiny-bitnet-tq1_0-seed3-v1-")
    mtime = p.stat().st_mtime_ns
    assert synth.cached_model(preset="tiny", fmt="tq1_0", arch="bitnet", seed=3) == p
    assert p.stat().st_mtime_ns == mtime
    q = synth.cache_path(preset="tiny", fmt="tq1_0", arch="bitnet", seed=3, n_layer=1)
    assert q != p and "custom" in q.name
    assert synth.cache_path(preset="tiny", fmt="tq1_0", arch="bitnet", seed=3, n_layer=2) == p  # same as the preset


# ----------------------------------------------------------------------------------------------------------------------
# llama.cpp loads the `bitnet` files and tokenizes with the built-in vocabulary like the training text expects


def llama(path):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, logits_all=True, verbose=False)


@pytest.mark.llama
@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0"])
def test_llama_cpp_loads_and_decodes_one_token(tiny, fmt):
    m = llama(tiny[fmt])
    assert m.n_vocab() == 512 and m.token_bos() == 510
    m.eval([m.token_bos()])
    logits = np.asarray(m.scores[0])
    assert np.isfinite(logits).all() and 0.5 < logits.std() < 10


@pytest.mark.llama
def test_llama_cpp_loads_the_twin_with_the_same_logits_as_the_tq2_0_file(tiny):
    out = []
    for path in (synth.tq2_0_twin(tiny["i2_s"]), tiny["tq2_0"]):
        m = llama(path)
        m.eval([m.token_bos(), 300])
        out.append(np.asarray(m.scores[:2]).copy())
    assert np.array_equal(out[0], out[1])


@pytest.mark.llama
def test_llama_cpp_tokenizes_with_the_builtin_merges(tiny):
    m = llama(tiny["tq2_0"])
    text = TRAINING_TEXT.encode()
    ids = m.tokenize(text, add_bos=False)
    assert m.detokenize(ids) == text
    assert len(ids) < 0.6 * len(text)  # the learned merges are used
    v = build_vocabulary(512)
    assert m.tokenize(b" the", add_bos=False) == [v.tokens.index(encode_bytes(" the"))]


@pytest.mark.slow
def test_2b4t_shapes_streamed_with_few_layers(tmp_path):
    p = synth.synth_model(tmp_path / "2b4t.gguf", preset="2b4t", fmt="tq2_0", n_layer=1)
    with read_gguf(p) as g:
        c = ModelConfig.from_gguf(g)
        c.check_tensors(g)
        assert (c.n_embd, c.n_ff, c.n_head, c.n_head_kv, c.n_vocab, c.n_ctx, c.rope_base) == (
            2560,
            6912,
            20,
            5,
            128256,
            4096,
            500000.0,
        )
        assert g.tensors["blk.0.ffn_down.weight"].shape == (6912, 2560)
    m = llama(p)
    m.eval([m.token_bos()])
    assert np.isfinite(np.asarray(m.scores[0])).all()
