"""HF checkpoint folders read as the engine reads a GGUF: safetensors validation, transformers' ternarization and
packing (numpy twins), config.json and tokenizer.json mapping, the faithful converter, and the CLI on folders."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hf_builders import SPM_GGUF, VOCAB_GGUF, write_checkpoint, write_tokenizer_model
from safetensors.numpy import load_file, save_file

from bitnet_ref import formats
from bitnet_ref.checkpoint import read_checkpoint, ternarize, unpack_codes
from bitnet_ref.cli import main as cli_main
from bitnet_ref.config import ModelConfig
from bitnet_ref.convert import convert_checkpoint
from bitnet_ref.errors import CheckpointError, EngineError, FileAccessError
from bitnet_ref.gguf_reader import read_gguf
from bitnet_ref.hf_vocab import read_tokenizer_model
from bitnet_ref.model import load_model
from bitnet_ref.safetensors import read_header, read_safetensors
from bitnet_ref.tokenizer import Tokenizer
from crossval.cases import CORPUS, PROMPTS

DIMS = {"n_embd": 256, "n_ff": 512, "n_layer": 2, "n_head": 4, "n_head_kv": 2}


@pytest.fixture(scope="module")
def online(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("online"), layout="online", hidden_act="silu", vocab="small",
                            **DIMS)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("packed"), layout="packed", hidden_act="relu2", vocab="small",
                            shards=2, **DIMS)


def copy_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint folder to edit."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def edit_config(folder: Path, **changes: object) -> None:
    """Change config.json fields (None removes one)."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))


# -- numpy twins of transformers' weight handling ------------------------------------------------------------------


def twin_ternarize(w: np.ndarray) -> tuple[np.ndarray, float]:
    """WeightQuant element by element: inv = 1/max(mean|W|, 1e-5) in f32, codes round-half-even(W·inv) in ±1."""
    inv = np.float32(1.0) / np.float32(max(np.float32(np.mean(np.abs(w.astype(np.float64)))), np.float32(1e-5)))
    t = np.empty(w.shape, np.int8)
    for idx, x in np.ndenumerate(w):
        t[idx] = max(-1, min(1, int(np.rint(np.float32(x) * inv))))
    return t, float(np.float32(1.0) / inv)


def twin_unpack(packed: np.ndarray) -> np.ndarray:
    """unpack_weights as its docstring reads: bit pair j of byte (r, c) is element (r + j·rows, c), minus 1."""
    rows, cols = packed.shape
    out = np.zeros((4 * rows, cols), np.int8)
    for r in range(rows):
        for c in range(cols):
            for j in range(4):
                out[r + j * rows, c] = ((int(packed[r, c]) >> (2 * j)) & 3) - 1
    return out


@pytest.mark.parametrize("shape", [(8, 16), (64, 256), (1, 4)])
def test_ternarize_matches_twin(shape):
    rng = np.random.default_rng(sum(shape))
    w = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    w.flat[0] = 0.0
    t, scale = ternarize(w)
    tt, ts = twin_ternarize(w)
    assert np.array_equal(t, tt) and scale == ts


def test_ternarize_all_zero_floor():
    t, scale = ternarize(np.zeros((4, 8), np.float32))
    assert not t.any() and scale == pytest.approx(1e-5, rel=1e-6)


def test_unpack_matches_twin_and_transformers_example():
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (4, 6), dtype=np.uint8) & 0b10101010  # codes 0 and 2 only in the high bits
    packed |= rng.integers(0, 2, (4, 6), dtype=np.uint8) * 0b01010101 & ~(packed >> 1) & 0b01010101
    assert np.array_equal(unpack_codes(packed), twin_unpack(packed))
    example = np.array([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], np.uint8)  # transformers' docstring
    expect = [[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]]
    assert unpack_codes(example).tolist() == expect


# -- safetensors ---------------------------------------------------------------------------------------------------


def write_raw(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file from a header dict and data bytes, unchecked."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_safetensors_views_equal_library(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(5, dtype=np.uint8)}
    save_file(arrays, str(tmp_path / "model.safetensors"))
    files = read_safetensors(tmp_path)
    for name, a in load_file(str(tmp_path / "model.safetensors")).items():
        assert np.array_equal(files.array(name), a) and files.array(name).dtype == a.dtype


@pytest.mark.parametrize("header, data, field", [
    ({"x": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "dtype"),
    ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8, "data_offsets"),
    ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "data_offsets"),
    ({"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "y": {"dtype": "U8", "shape": [4],
      "data_offsets": [2, 6]}}, b"\0" * 8, "data_offsets"),
    ({"x": "nope"}, b"", "tensor 'x'"),
])
def test_safetensors_bad_headers_are_one_line_errors(tmp_path, header, data, field):
    path = write_raw(tmp_path / "model.safetensors", header, data)
    with pytest.raises(CheckpointError) as e:
        read_header(path)
    assert str(path) in str(e.value) and field in str(e.value) and "\n" not in str(e.value)


def test_safetensors_header_length_beyond_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        read_header(path)
    path.write_bytes(b"\1\2")
    with pytest.raises(CheckpointError, match="header length"):
        read_header(path)


def test_sharded_index_must_match_shards(packed, tmp_path):
    bad = copy_checkpoint(packed, tmp_path / "bad")
    path = bad / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    index["weight_map"]["model.extra.weight"] = "model-00009-of-00009.safetensors"
    path.write_text(json.dumps(index))
    with pytest.raises(FileAccessError, match="model-00009-of-00009.safetensors: cannot read"):
        read_checkpoint(bad)
    del index["weight_map"]["model.extra.weight"]
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "model-00002-of-00002.safetensors" if "00001" in index["weight_map"][name] else \
        "model-00001-of-00002.safetensors"
    path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"weight_map\\['{name}'\\]"):
        read_checkpoint(bad)


# -- the checkpoint as a GGUF --------------------------------------------------------------------------------------


def test_packed_codes_and_scales_as_transformers_reads_them(packed):
    with read_checkpoint(packed) as ck:
        assert len(ck.files.tensors) > 0 and len({t.path for t in ck.files.tensors.values()}) == 2  # two shards
        t, scale = ck.ternary("blk.1.ffn_down.weight")
        raw = ck.files.array("model.layers.1.mlp.down_proj.weight")
        ws = ck.files.array("model.layers.1.mlp.down_proj.weight_scale").astype(np.float32)[0]
        assert np.array_equal(t, twin_unpack(raw)) and scale == pytest.approx(1.0 / ws, rel=1e-7)
        info = ck.tensors["blk.1.ffn_down.weight"]
        assert info.shape == (DIMS["n_ff"], DIMS["n_embd"]) and info.type.name == "I2_S"


def test_config_and_tokenizer_from_folder(online):
    with read_checkpoint(online) as ck, read_gguf(VOCAB_GGUF) as vocab:
        cfg = ModelConfig.from_gguf(ck)
        hf = json.loads((online / "config.json").read_text())
        assert (cfg.n_embd, cfg.n_ff, cfg.n_layer, cfg.n_head, cfg.n_head_kv) == tuple(DIMS.values())
        assert cfg.ffn_act == hf["hidden_act"] and cfg.tied_output and cfg.bos_id == hf["bos_token_id"]
        ours = Tokenizer.from_gguf(ck)
        assert ours.n_vocab == hf["vocab_size"] and ours.pre == "llama-bpe"
        full = Tokenizer.from_gguf(vocab)
        for text in [*CORPUS, PROMPTS["mixed"]]:
            ids = ours.encode(text, add_bos=True)
            assert ours.decode(ids[1:]) == full.decode(full.encode(text, add_bos=False))


def test_transformers_tokenizer_agrees(online):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(online))
    with read_checkpoint(online) as ck:
        ours = Tokenizer.from_gguf(ck)
    for text in [*CORPUS, PROMPTS["mixed"], PROMPTS["hello"]]:
        assert ours.encode(text, add_bos=True) == hf.encode(text), text


@pytest.mark.parametrize("change, field", [
    ({"quantization_config": None}, "quantization_config"),
    ({"quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "online"}},
     "linear_class/quantization_mode"),
    ({"quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                              "quantization_mode": "online", "use_rms_norm": True}}, "use_rms_norm"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"architectures": ["LlamaForCausalLM"]}, "architectures"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0}}, "rope_type"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
    ({"hidden_size": "256"}, "hidden_size"),
])
def test_config_json_problems_are_one_line_errors(online, tmp_path, change, field):
    bad = copy_checkpoint(online, tmp_path / "bad")
    edit_config(bad, **change)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(bad)
    assert field in str(e.value) and "config.json" in str(e.value) and "\n" not in str(e.value)


def test_unknown_tensor_and_bad_codes_are_refused(packed, tmp_path):
    bad = copy_checkpoint(packed, tmp_path / "bias")
    shard = sorted(bad.glob("model-*.safetensors"))[0]
    arrays = load_file(str(shard))
    arrays["model.layers.0.self_attn.q_proj.bias"] = np.zeros(DIMS["n_embd"], np.float32)
    save_file(arrays, str(shard), metadata={"format": "pt"})
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.self_attn.q_proj.bias"] = shard.name
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="q_proj.bias"):
        read_checkpoint(bad)
    three = copy_checkpoint(packed, tmp_path / "code3")
    for shard in three.glob("model-*.safetensors"):
        arrays = load_file(str(shard))
        if "model.layers.0.mlp.up_proj.weight" in arrays:
            arrays["model.layers.0.mlp.up_proj.weight"][1, 2] = 0b11
            save_file(arrays, str(shard), metadata={"format": "pt"})
    with read_checkpoint(three) as ck, pytest.raises(CheckpointError, match="row 1 col 2"):
        ck.tensor_bytes("blk.0.ffn_up.weight")


def test_nan_master_is_named(online, tmp_path):
    bad = copy_checkpoint(online, tmp_path / "nan")
    arrays = load_file(str(bad / "model.safetensors"))
    arrays["model.layers.1.self_attn.k_proj.weight"][3, 5] = np.nan
    save_file(arrays, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with read_checkpoint(bad) as ck, pytest.raises(CheckpointError, match="k_proj.weight.*row 3 col 5"):
        ck.tensor_bytes("blk.1.attn_k.weight")


# -- the engine on a folder, and the faithful converter ------------------------------------------------------------


def test_model_on_folder_equals_its_i2_s_conversion(packed, tmp_path):
    gguf = convert_checkpoint(packed, tmp_path / "m.gguf", "i2_s").path
    tokens = np.array([1, 17, 300, 5, 99, 1000, 3], np.int32)
    a = load_model(packed, numerics="bitnet").forward(tokens, 0, all_logits=True)
    b = load_model(gguf, numerics="bitnet").forward(tokens, 0, all_logits=True)
    assert np.array_equal(a, b)
    with read_gguf(gguf) as g:
        assert g.get("bitnet.hidden_activation") == "relu2"


@pytest.mark.parametrize("fmt", ["tq2_0", "tq1_0", "f32"])
def test_converted_weights_are_the_checkpoints(online, tmp_path, fmt):
    path = convert_checkpoint(online, tmp_path / f"m-{fmt}.gguf", fmt).path
    with read_checkpoint(online) as ck, read_gguf(path) as g:
        for name in ck.bitlinears:
            t, scale = ck.ternary(name)
            info = g.tensors[name]
            w = formats.get(info.type).decode(g.tensor_bytes(name), info.shape)
            assert np.array_equal(np.sign(w).astype(np.int8), t), name
            nz = np.abs(w[t != 0])
            assert np.all(np.abs(nz / scale - 1) <= 2.0**-11), name  # f16 d rounds the scale at most this much


def test_i2s_layout_on_folder_is_an_error(online):
    with pytest.raises(EngineError, match="no I2_S layout"):
        load_model(online, i2s_layout="arm")


def test_cli_on_folders(online, tmp_path, capsys):
    assert cli_main(["inspect", str(online)]) == 0
    assert "HF checkpoint" in capsys.readouterr().out
    assert cli_main(["verify", str(online)]) == 0
    assert capsys.readouterr().out.startswith("OK ")
    assert cli_main(["generate", "-m", str(online), "-p", "Hello", "-n", "4", "--numerics", "bitnet",
                     "--temp", "0"]) == 0
    assert cli_main(["convert", str(online), "-o", str(tmp_path / "c.gguf"), "--format", "tq2_0"]) == 0
    assert "BitLinear weights TQ2_0" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["verify", str(empty)]) == 1
    out = capsys.readouterr().err.strip()
    assert "config.json" in out and "cannot read" in out and len(out.splitlines()) == 1


# -- tokenizer.model -----------------------------------------------------------------------------------------------



def test_tokenizer_model_reads_like_the_gguf_and_sentencepiece(tmp_path):
    import sentencepiece

    path = write_tokenizer_model(tmp_path, SPM_GGUF)
    meta = read_tokenizer_model(path, 32000)
    with read_gguf(SPM_GGUF) as g:
        ref = Tokenizer.from_gguf(g)
        assert meta["tokenizer.ggml.tokens"] == list(g.get("tokenizer.ggml.tokens"))
        assert meta["tokenizer.ggml.token_type"] == list(g.get("tokenizer.ggml.token_type"))
    ours = Tokenizer(meta)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    assert sp.vocab_size() == 32000 and (sp.bos_id(), sp.eos_id(), sp.unk_id()) == (1, 2, 0)
    for text in [*CORPUS, PROMPTS["mixed"]]:
        assert ours.encode(text, add_bos=True) == ref.encode(text, add_bos=True), text
    padded = read_tokenizer_model(path, 32003)
    assert padded["tokenizer.ggml.tokens"][-1] == "[PAD32002]" and padded["tokenizer.ggml.token_type"][-1] == 5


def test_tokenizer_model_problems_are_one_line_errors(online, tmp_path):
    path = write_tokenizer_model(tmp_path, SPM_GGUF)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        read_tokenizer_model(path, 32000)
    ck = copy_checkpoint(online, tmp_path / "ck")
    write_tokenizer_model(ck, SPM_GGUF)  # read before tokenizer.json; 32000 pieces do not fit 2304 rows
    with pytest.raises(CheckpointError, match="pieces = 32000; expected 1 to 2304"):
        read_checkpoint(ck)
