"""`crossval --hf DIR --gguf FILE` on checkpoints written with transformers' classes: a faithful conversion passes;
the two conversion losses llama.cpp's converter produces (docs/FORMATS.md §10) fail and are named; bitnet_ref on a
checkpoint computes what transformers computes."""

from __future__ import annotations

import json
from pathlib import Path

import llama_converter
import numpy as np
import pytest
from hf_builders import code_flips, write_checkpoint

from bitnet_ref import formats
from bitnet_ref.checkpoint import read_checkpoint
from bitnet_ref.constants import KEY_FILE_TYPE, KEY_HIDDEN_ACTIVATION, ValueType
from bitnet_ref.convert import convert_checkpoint, value_types
from bitnet_ref.formats import F32, TQ2_0
from bitnet_ref.gguf_writer import GGUFWriter
from crossval import points as P
from crossval import run as crossval_run
from crossval.backends import BitnetRefBackend
from crossval.cases import PROMPTS
from crossval.hf_backend import HFBackend
from reports.records import read_run

pytestmark = pytest.mark.llama
DIMS = {"n_embd": 256, "n_ff": 512, "n_layer": 2, "n_head": 4, "n_head_kv": 2, "vocab": "small"}
KINDS = {"online-silu": ("online", "silu"), "online-relu2": ("online", "relu2"), "packed-silu": ("packed", "silu"),
         "packed-relu2": ("packed", "relu2")}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {k: write_checkpoint(root / k, layout=layout, hidden_act=act, **DIMS) for k, (layout, act) in KINDS.items()}


def lossy_conversion(src: Path, dst: Path, *, drop_activation: bool = False, ternarize_twice: bool = False,
                     changed: dict | None = None) -> Path:
    """A TQ2_0 GGUF with what llama.cpp's converter loses: no hidden_activation key, and/or every BitLinear's scale
    multiplied by its fraction of non-zero codes (packed codes ternarized again: mean|T·s| = s·frac); `changed`
    replaces metadata values."""
    with read_checkpoint(src) as ck, GGUFWriter(dst) as w:
        for key, value in ck.metadata.items():
            if not (drop_activation and key == KEY_HIDDEN_ACTIVATION.format(arch="bitnet")):
                value = (changed or {}).get(key, value)
                w.add_kv(key, value, value_types(key, value))
        w.add_kv(KEY_FILE_TYPE, int(TQ2_0.FILE_TYPE), ValueType.UINT32)
        for name, info in ck.tensors.items():
            w.add_tensor(name, info.shape, TQ2_0.TYPE if name in ck.bitlinears else F32.TYPE)
        w.write_header()
        for name, info in ck.tensors.items():
            if name in ck.bitlinears:
                t, scale = ck.ternary(name)
                w.write_tensor(name, TQ2_0.encode_ternary(t, scale * (np.mean(t != 0) if ternarize_twice else 1)))
            else:
                values = formats.get(info.type).decode(ck.tensor_bytes(name), info.shape)
                w.write_tensor(name, F32.encode(values.reshape(-1)))
    return dst


def run_check(hf: Path, gguf: Path, out: Path) -> tuple[int, dict, dict]:
    """Exit status, run.json and tables of one conversion check."""
    rc = crossval_run.main(["--hf", str(hf), "--gguf", str(gguf), "--out", str(out)])
    run_dir = next((out / "conversion").iterdir())
    meta, tables = read_run(run_dir)
    assert (run_dir / "report.html").is_file()
    assert not [f for f in meta["findings"] if f["stage"] == "engines"], meta["findings"]  # every engine answered
    return rc, meta, tables


def test_faithful_conversion_passes(checkpoints, tmp_path):
    gguf = convert_checkpoint(checkpoints["online-silu"], tmp_path / "m.gguf", "tq2_0").path
    rc, meta, tables = run_check(checkpoints["online-silu"], gguf, tmp_path / "out")
    assert rc == 0 and meta["verdict"] == "pass" and not meta["findings"]
    assert set(tables["logits"]["pair"]) == {"transformers", "bitnet_ref[gguf]", "llama.cpp"}
    w = tables["weights"]
    bit = w[w["kind"] == "bitlinear"]
    assert len(bit) == 14 and (bit["code_agreement"] == 1).all() and (abs(bit["scale_ratio"] - 1) < 1e-3).all()


def test_relu2_without_its_activation_fails_and_names_it(checkpoints, tmp_path):
    gguf = lossy_conversion(checkpoints["online-relu2"], tmp_path / "m.gguf", drop_activation=True)
    rc, meta, _ = run_check(checkpoints["online-relu2"], gguf, tmp_path / "out")
    texts = [f["finding"] for f in meta["findings"]]
    assert rc == 1 and meta["verdict"] == "fail"
    assert "hidden_act relu2 in config.json, no hidden_activation in the GGUF: llama.cpp runs SiLU" in texts
    assert any("bitnet_ref[gguf] parts from the checkpoint's model at layer 0 ffn_sub_out" in t for t in texts)


def test_relu2_with_its_activation_is_faithful_llama_cpp_expected_to_diverge(checkpoints, tmp_path):
    gguf = convert_checkpoint(checkpoints["packed-relu2"], tmp_path / "m.gguf", "tq2_0").path
    rc, meta, _ = run_check(checkpoints["packed-relu2"], gguf, tmp_path / "out")
    assert rc == 0 and meta["verdict"] == "pass"
    assert meta["findings"] and all(f["expected"] == "relu2-run-as-silu" for f in meta["findings"])
    assert all("llama.cpp parts from the checkpoint's model at layer 0 ffn_sub" in f["finding"]
               for f in meta["findings"])


def test_packed_weights_ternarized_twice_fail_with_their_scale_ratio(checkpoints, tmp_path):
    src = checkpoints["packed-silu"]
    gguf = lossy_conversion(src, tmp_path / "m.gguf", ternarize_twice=True)
    rc, meta, tables = run_check(src, gguf, tmp_path / "out")
    with read_checkpoint(src) as ck:
        t, _ = ck.ternary("blk.0.attn_q.weight")
    frac = float(np.mean(t != 0))
    texts = [f["finding"] for f in meta["findings"]]
    assert rc == 1 and f"attn_q of layer 0: GGUF scale = {frac:.3f} × checkpoint scale" in texts
    assert "and 6 more tensors" in texts  # 14 BitLinears: 8 named, 6 more
    assert any("bitnet_ref[gguf] parts from the checkpoint's model at layer 0" in t for t in texts)


def test_wrong_rope_base_and_pre_tokenizer_are_named(checkpoints, tmp_path):
    src = checkpoints["online-silu"]
    gguf = lossy_conversion(src, tmp_path / "m.gguf", changed={"bitnet.rope.freq_base": 500000.0,
                                                               "tokenizer.ggml.pre": "gpt-2"})
    rc, meta, _ = run_check(src, gguf, tmp_path / "out")
    texts = [f["finding"] for f in meta["findings"]]
    assert rc == 1 and "rope_theta 10000.0 in config.json, rope.freq_base 500000.0 in the GGUF" in texts
    tok = [t for f, t in zip(meta["findings"], texts, strict=True) if f["stage"] == "tokenizer"]
    assert any("bitnet_ref[gguf]" in t for t in tok) and any("llama.cpp" in t for t in tok)
    assert not any("transformers" in t for t in tok)  # it reads the checkpoint's own tokenizer.json


def test_missing_gguf_is_one_line(checkpoints, tmp_path, capsys):
    assert crossval_run.main(["--hf", str(checkpoints["online-silu"]), "--gguf", str(tmp_path / "no.gguf"),
                              "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out.strip()
    assert out.startswith("error:") and "no.gguf: cannot read" in out


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("prompt", ["hello", "mixed"])
def test_engine_on_checkpoint_equals_transformers(checkpoints, kind, prompt):
    """max|Δ|/rms ≤ 1e-3 at every position, for both layouts and activations, wherever both engines give every
    BitLinear the same int8 codes. Where an activation sits within float noise of a rounding boundary the two round
    it apart (which ones depends on the host's float order), and the logits then move by up to a few percent on a
    256-wide model: there the bitnet profile's gates hold (logits r ≥ 0.999, ≥ 0.995 at every position)."""
    path = checkpoints[kind]
    ours = BitnetRefBackend(path, numerics="bitnet", n_ctx=256)
    ref = HFBackend(path, n_threads=2, n_ctx=256)
    assert json.loads((path / "config.json").read_text())["hidden_act"] == ours.config.ffn_act
    tokens = ours.tokenize(PROMPTS[prompt], True)
    assert tokens == ref.tokenize(PROMPTS[prompt], True)
    a, b = ours.eval(tokens), ref.eval(tokens)
    flips = code_flips(ours.capture(tokens, P.all_points(2)), ref.capture(tokens, P.all_points(2)), 2)
    if flips:
        r = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)]
        assert min(r) >= 0.995 and np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999, f"{kind}: {flips[:3]}"
    else:
        rel = np.abs(a - b).max(axis=1) / np.sqrt((b.astype(np.float64) ** 2).mean(axis=1))
        assert rel.max() <= 1e-3, f"{kind}: max|Δ|/rms {rel.max():.2e} at position {int(rel.argmax())}"


# -- llama.cpp's own converter -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spm_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints with a sentencepiece vocabulary (tokenizer.model), which llama.cpp's BitNet converter requires."""
    root = tmp_path_factory.mktemp("spm")
    return {k: write_checkpoint(root / k, layout=layout, hidden_act=act, **{**DIMS, "vocab": "llama-spm"})
            for k, (layout, act) in (("online-silu", ("online", "silu")), ("packed-relu2", ("packed", "relu2")))}


def test_llama_cpp_converter_stops_on_transformers_names(spm_checkpoints, tmp_path):
    done = llama_converter.convert(spm_checkpoints["online-silu"], tmp_path / "m.gguf")
    assert done.returncode != 0 and "Can not map tensor 'model.layers.0." in done.stderr


def test_llama_cpp_converter_on_an_online_silu_checkpoint_is_faithful(spm_checkpoints, tmp_path):
    src = spm_checkpoints["online-silu"]
    done = llama_converter.convert(llama_converter.with_1bitllm_names(src, tmp_path / "in"), tmp_path / "m.gguf")
    assert done.returncode == 0, done.stderr[-2000:]
    rc, meta, tables = run_check(src, tmp_path / "m.gguf", tmp_path / "out")
    assert rc == 0 and meta["verdict"] == "pass", meta["findings"]
    assert all(f["expected"] == "tokenizer-implementations" for f in meta["findings"])
    assert (tables["weights"].query("kind == 'bitlinear'")["code_agreement"] == 1).all()


def test_llama_cpp_converter_loses_a_packed_relu2_checkpoints_activation_and_scales(spm_checkpoints, tmp_path):
    src = spm_checkpoints["packed-relu2"]
    lazy = llama_converter.convert(llama_converter.with_1bitllm_names(src, tmp_path / "in"), tmp_path / "lazy.gguf")
    assert lazy.returncode != 0 and "is not on the expected device meta" in lazy.stderr  # its default mode crashes
    done = llama_converter.convert(tmp_path / "in", tmp_path / "m.gguf", no_lazy=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rc, meta, _ = run_check(src, tmp_path / "m.gguf", tmp_path / "out")
    texts = [f["finding"] for f in meta["findings"] if not f["expected"]]
    with read_checkpoint(src) as ck:
        t, _ = ck.ternary("blk.0.attn_q.weight")
    assert rc == 1 and "hidden_act relu2 in config.json, no hidden_activation in the GGUF: llama.cpp runs SiLU" in texts
    assert f"attn_q of layer 0: GGUF scale = {np.mean(t != 0):.3f} × checkpoint scale" in texts


def test_corpus_mode_on_a_checkpoint_against_transformers(checkpoints, tmp_path):
    """`crossval --corpus` with transformers as the base and bitnet_ref on the same checkpoint folder: the same model
    twice, so KLD is tiny and the top token nearly always the same; the folder is identified by its files."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join([PROMPTS["mixed"], PROMPTS["hello"]] * 12), encoding="utf-8")
    src = checkpoints["online-silu"]
    status = crossval_run.main(["--corpus", str(corpus), "--model", str(src), "--engines", "transformers,bitnet_ref",
                                "--ctx", "64", "--chunks", "2", "--out", str(tmp_path / "out"), "--no-report"])
    run_dir = next((tmp_path / "out" / "corpus").iterdir())
    meta, tables = read_run(run_dir)
    assert status == 0 and meta["engines"] == {"base": "transformers", "other": "bitnet_ref[bitnet]"}
    assert meta["model"]["files"] == sorted(p.name for p in src.iterdir()) and len(meta["model"]["sha256"]) == 64
    s = tables["summary"].set_index("stat")["value"]
    assert s["kld_mean"] < 1e-3 and s["same_top"] > 95 and len(tables["tokens"]) == 2 * (64 - 1 - 32)
