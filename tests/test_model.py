"""Model: load, forward, KV cache, trace points, errors; and logits against llama.cpp (marked `llama`).

Tolerances stated here:
- "bitnet" profile: prefill of N tokens then decode gives exactly the logits of feeding the tokens one by one
  (every kernel of the profile uses one order for every batch width).
- "ggml" profile: llama.cpp's float matmuls switch from vec_dot (1 column) to tinyBLAS (≥ 2 columns), and the engine
  follows it, so prefill and one-by-one differ by float rounding: asserted max |Δ| ≤ 0.01·std(logits), r > 0.99999.
- Against llama.cpp (FA off, extra buffer types off, logits of every position): Pearson r > 0.999 asserted for F32,
  F16, BF16, Q8_0, TQ1_0, TQ2_0 and I2_S (engine on the I2_S file, llama.cpp on its lossless TQ2_0 twin). The ggml
  profile follows what the llama.cpp build reports it was compiled for (crossval.build.ReferenceBuild); where it
  emulates that build (x86 AVX2, AVX-512, AVX512_BF16), the logits are also asserted bit-identical for every format.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path

import numpy as np
import pytest

from bitnet_ref import synth
from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import ConfigError, ContextOverflowError, EngineError, TokenRangeError, UnsupportedFormatError
from bitnet_ref.formats import TQ2_0
from bitnet_ref.gguf_reader import read_gguf
from bitnet_ref.gguf_writer import GGUFWriter
from bitnet_ref.kernels import dense, ternary
from bitnet_ref.layout import read_layout, sidecar
from bitnet_ref.model import load_model
from bitnet_ref.numerics import PROFILES

LAYER_POINTS = (
    "attn_norm",
    "Qcur",
    "Kcur",
    "Vcur",
    "kqv_out",
    "attn_sub_norm",
    "attn_out",
    "ffn_inp",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_sub_out",
    "ffn_sub_norm",
    "ffn_down",
    "l_out",
)


def tiny(fmt: str) -> Path:
    """The cached tiny synthetic `bitnet` model in one format."""
    return synth.cached_model(preset="tiny", fmt=fmt, arch="bitnet", seed=0)


def tokens(n: int, n_vocab: int = 512, seed: int = 0) -> np.ndarray:
    """Seeded random token ids."""
    return np.random.default_rng(seed).integers(0, n_vocab, n).astype(np.int32)


def one_by_one(model, toks: np.ndarray) -> np.ndarray:
    """Logits of feeding toks one token at a time from position 0."""
    model.kv.reset()
    return np.concatenate([model.forward(toks[i : i + 1], i) for i in range(len(toks))])


# ----------------------------------------------------------------------------------------------------------------------
# prefill vs decode, KV cache


@pytest.mark.parametrize("fmt", ["f16", "tq2_0", "i2_s"])
def test_bitnet_profile_prefill_equals_one_by_one_exactly(fmt):
    m = load_model(tiny(fmt), "bitnet", n_threads=2)
    toks = tokens(20, m.config.n_vocab)
    full = m.forward(toks, 0)
    assert full.shape == (20, m.config.n_vocab) and full.dtype == np.float32
    assert np.array_equal(full, one_by_one(m, toks))
    m.kv.reset()
    split = np.concatenate([m.forward(toks[:12], 0), m.forward(toks[12:], 12)])
    assert np.array_equal(full, split)


@pytest.mark.parametrize("fmt", ["f16", "tq2_0"])
def test_ggml_profile_prefill_close_to_one_by_one(fmt):
    m = load_model(tiny(fmt), "ggml", n_threads=2)
    toks = tokens(16, m.config.n_vocab, seed=1)
    full = m.forward(toks, 0)
    step = one_by_one(m, toks)
    assert np.abs(full - step).max() <= 0.01 * full.std(), np.abs(full - step).max()
    assert np.corrcoef(full.ravel(), step.ravel())[0, 1] > 0.99999


def test_prefill_then_decode_matches_longer_prefill_last_row():
    m = load_model(tiny("tq2_0"), "bitnet", n_threads=1)
    toks = tokens(10, m.config.n_vocab, seed=2)
    last = m.forward(toks, 0, all_logits=False)
    assert last.shape == (1, m.config.n_vocab)
    m.kv.reset()
    full = m.forward(toks[:9], 0)
    nxt = m.forward(toks[9:], 9)
    assert np.array_equal(last, nxt)
    assert m.kv.n_past == 10 and full.shape[0] == 9


def test_kv_truncate_reset_and_rewind():
    m = load_model(tiny("f16"), "ggml", n_threads=2)
    a, b = tokens(8, 512, 3), tokens(4, 512, 4)
    first = m.forward(a, 0)
    cont = m.forward(b, 8)
    assert m.kv.n_past == 12
    m.kv.truncate(8)
    assert m.kv.n_past == 8
    assert np.array_equal(m.forward(b, 8), cont)
    assert np.array_equal(m.forward(b, 8), cont)  # start_pos < n_past rewinds the cache first
    m.kv.reset()
    assert m.kv.n_past == 0
    assert np.array_equal(m.forward(a, 0), first)
    with pytest.raises(EngineError):
        m.kv.truncate(9)


def test_ubatch_split_matches_llama_chunking():
    m = load_model(tiny("tq2_0"), "ggml", n_threads=2, n_ubatch=6)
    toks = tokens(14, 512, 5)
    chunked = m.forward(toks, 0)
    m.kv.reset()
    manual = np.concatenate([m.forward(toks[0:6], 0), m.forward(toks[6:12], 6), m.forward(toks[12:], 12)])
    assert np.array_equal(chunked, manual)


# ----------------------------------------------------------------------------------------------------------------------
# trace


def test_trace_points_names_shapes_and_last_layer_rows():
    m = load_model(tiny("tq1_0"), "ggml", n_threads=1)
    c = m.config
    seen = []
    m.forward(tokens(5), 0, all_logits=False, trace=lambda n, il, a: seen.append((n, il, a.shape, a.dtype)))
    names = [(n, il) for n, il, _, _ in seen]
    want = [(p, il) for il in range(c.n_layer) for p in LAYER_POINTS] + [("result_norm", -1), ("result_output", -1)]
    assert names == want
    widths = {
        "Kcur": c.n_embd_kv,
        "Vcur": c.n_embd_kv,
        "ffn_gate": c.n_ff,
        "ffn_up": c.n_ff,
        "ffn_sub_out": c.n_ff,
        "ffn_sub_norm": c.n_ff,
        "result_output": c.n_vocab,
    }
    last_rows = ("ffn_inp", "ffn_norm", "ffn_gate", "ffn_up", "ffn_sub_out", "ffn_sub_norm", "ffn_down", "l_out")
    for n, il, shape, dtype in seen:
        rows = 1 if (il == c.n_layer - 1 and n in last_rows) or il == -1 else 5
        assert shape == (rows, widths.get(n, c.n_embd)) and dtype == np.float32, (n, il, shape)


def test_trace_gets_copies():
    m = load_model(tiny("f16"), "ggml", n_threads=1)
    kept = {}
    m.forward(tokens(3), 0, trace=lambda n, il, a: kept.setdefault((n, il), a))
    out = m.forward(tokens(3, seed=9), 3)
    assert not np.array_equal(kept[("result_output", -1)], out)
    assert np.array_equal(kept[("result_output", -1)], kept[("result_output", -1)].copy())


# ----------------------------------------------------------------------------------------------------------------------
# .scale tensors


def _with_scales(src: Path, dst: Path, scales: dict[str, float], fold: bool) -> Path:
    """A copy of an F32 model with `<proj>.scale` tensors added (fold=False) or multiplied into the weights."""
    g = read_gguf(src)
    with GGUFWriter(dst) as w:
        for key, value in g.metadata.items():
            w.add_kv(key, value, g.value_types[key])
        for name, info in g.tensors.items():
            w.add_tensor(name, info.shape, info.type)
            if not fold and name in scales:
                w.add_tensor(name.removesuffix(".weight") + ".scale", (1,), GGMLType.F32)
        w.write_header()
        for name in g.tensors:
            data = np.array(g.tensor_bytes(name))
            if name in scales:
                if fold:
                    data = (data.view(np.float32) * np.float32(scales[name])).view(np.uint8)
                w.write_tensor(name, data)
                if not fold:
                    w.write_tensor(name.removesuffix(".weight") + ".scale", np.float32([scales[name]]).view(np.uint8))
            else:
                w.write_tensor(name, data)
    return dst


def test_scale_tensors_multiply_the_output(tmp_path):
    scales = {"blk.0.attn_v.weight": 2.0, "blk.1.ffn_gate.weight": 0.5, "blk.1.ffn_down.weight": 4.0}
    scaled = _with_scales(tiny("f32"), tmp_path / "scaled.gguf", scales, fold=False)
    folded = _with_scales(tiny("f32"), tmp_path / "folded.gguf", scales, fold=True)
    toks = tokens(6)
    a = load_model(scaled, "ggml", 1)
    assert a.weights.layers[0].attn_v.scale == 2.0 and a.weights.layers[0].attn_q.scale is None
    seen = {}
    la = a.forward(toks, 0, trace=lambda n, il, x: seen.setdefault((n, il), x))
    assert ("ffn_gate_s", 1) in seen and np.array_equal(
        seen[("ffn_gate", 1)] * np.float32(0.5), seen[("ffn_gate_s", 1)]
    )
    lb = load_model(folded, "ggml", 1).forward(toks, 0)
    assert np.array_equal(la, lb)  # powers of two commute with every rounding: exact


# ----------------------------------------------------------------------------------------------------------------------
# errors and description


def test_token_and_context_errors():
    m = load_model(tiny("tq2_0"), "ggml", n_threads=1, n_ctx=16)
    with pytest.raises(TokenRangeError, match="512"):
        m.forward(np.array([1, 512], np.int32), 0)
    with pytest.raises(TokenRangeError):
        m.forward(np.array([-1]), 0)
    with pytest.raises(TokenRangeError):
        m.forward(np.array([], np.int32), 0)
    with pytest.raises(TokenRangeError):
        m.forward(np.zeros((2, 2), np.int32), 0)
    with pytest.raises(ContextOverflowError, match="16"):
        m.forward(tokens(17), 0)
    m.forward(tokens(10), 0)
    with pytest.raises(ContextOverflowError):
        m.forward(tokens(7), 10)
    with pytest.raises(EngineError, match="n_past"):
        m.forward(tokens(1), 12)
    assert m.kv.n_past == 10


def test_bad_engine_settings():
    with pytest.raises(EngineError, match="n_threads"):
        load_model(tiny("tq2_0"), "ggml", n_threads=10_000)
    with pytest.raises(EngineError, match="n_ctx"):
        load_model(tiny("tq2_0"), "ggml", n_threads=1, n_ctx=0)
    with pytest.raises(ConfigError, match="numerics"):
        load_model(tiny("tq2_0"), "fastest", n_threads=1)


def test_unsupported_format_raised_at_load_naming_tensor_and_type():
    no_f16 = PROFILES["ggml"].replace(
        name="ggml-without-f16", activation=tuple(p for p in PROFILES["ggml"].activation if p[0] != "F16")
    )
    with pytest.raises(UnsupportedFormatError, match=r"blk\.0\.attn_q\.weight.*F16"):
        load_model(tiny("f16"), no_f16, n_threads=1)
    with pytest.raises(UnsupportedFormatError, match="token_embd"):
        load_model(tiny("tq2_0"), no_f16, n_threads=1)


def test_i2s_rows_of_128_blocks_need_256_under_ggml(tmp_path):
    """I2_S rows of K = 128·odd run in the bitnet profile; the ggml profile (Q8_K blocks of 256, what llama.cpp runs on
    the TQ2_0 twin) refuses them at load, naming the file, the tensor and K."""
    path = synth.synth_model(tmp_path / "i2s384.gguf", preset="tiny", fmt="i2_s", arch="bitnet", n_ff=384)
    m = load_model(path, "bitnet", n_threads=1)
    assert np.isfinite(m.forward(tokens(3), 0)).all()
    with pytest.raises(UnsupportedFormatError, match=r"i2s384\.gguf: tensor blk\.0\.ffn_down\.weight.*K = 384"):
        load_model(path, "ggml", n_threads=1)


def test_ffn_act_override_and_describe():
    m = load_model(tiny("tq2_0"), "ggml", n_threads=1, ffn_act="relu2")
    d = m.describe()
    assert d["ffn_act"] == "relu2" and d["ffn_act_source"] == "override"
    assert d["numerics"]["name"] == "ggml" and d["numerics"]["kv_dtype"] == "f16" and d["n_threads"] == 1
    assert "ggml:" in d["numerics_str"] and d["linear_types"]["TQ2_0"] == 7 * m.config.n_layer
    assert d["kernel_isa"] == ternary.kernel_isa() == ternary.ISA_NAMES[ternary.DEFAULT_ISA]  # what the kernels run
    silu = load_model(tiny("tq2_0"), "ggml", n_threads=1)
    assert silu.config.ffn_act == "silu" and silu.config.ffn_act_source == "arch"
    toks = tokens(4)
    assert not np.array_equal(m.forward(toks, 0), silu.forward(toks, 0))


@pytest.mark.parametrize("simd", ["avx2", "avx512", "avx512bf16"])
def test_bf16_dispatch_follows_simd(simd, monkeypatch):
    """BF16 weights run vdpbf16ps (and tinyBLAS's K step of 32) exactly when the profile emulates an AVX512_BF16
    build and the activations are bf16; the lane width follows simd."""
    calls = []
    real = dense.matmul_bf16

    def spy(w, M, K, x, tiled, lanes, dpbf16, out):
        calls.append((M, K, x.shape[0], tiled, lanes, dpbf16))
        real(w, M, K, x, tiled, lanes, dpbf16, out)

    monkeypatch.setattr(dense, "matmul_bf16", spy)
    m = load_model(tiny("bf16"), PROFILES["ggml"].replace(simd=simd), n_threads=1)
    toks = tokens(5, m.config.n_vocab, seed=6)
    prefill = m.forward(toks, 0)
    assert np.isfinite(m.forward(tokens(1, m.config.n_vocab, seed=7), 5)).all()
    assert {c[2] for c in calls} == {5, 1}  # a prefill (tinyBLAS where allowed) and a decode step (vec_dot)
    dp = simd == "avx512bf16"
    for M, K, T, tiled, lanes, dpbf16 in calls:
        assert lanes == m.numerics.lanes == (8 if simd == "avx2" else 16) and dpbf16 == dp
        assert tiled == (T >= 2 and M % 4 == 0 and K % (dense.DPBF16_KN if dp else lanes) == 0)
    calls.clear()
    load_model(tiny("bf16"), PROFILES["bitnet"].replace(simd=simd), n_threads=1).forward(toks, 0)
    assert not calls  # "bitnet": BF16 projections take the BitLinear int8 kernel (matmul_float_i8), never vdpbf16ps
    if dp:
        other = load_model(tiny("bf16"), PROFILES["ggml"].replace(simd="avx512"), n_threads=1).forward(toks, 0)
        assert not np.array_equal(prefill, other)  # the rounding differs...
        assert np.corrcoef(prefill.ravel(), other.ravel())[0, 1] > 0.99999  # ...by little


def test_numerics_profiles_are_explicit():
    g, b = PROFILES["ggml"], PROFILES["bitnet"]
    assert g.activation_for(GGMLType.TQ2_0) == "q8_k" and b.activation_for(GGMLType.TQ2_0) == "i8_token"
    assert g.activation_for(GGMLType.F16) == "f16" and b.activation_for(GGMLType.F16) == "none"
    assert g.activation_for(GGMLType.IQ2_S) == "q8_k" and b.activation_for(GGMLType.IQ2_S, bitlinear=True) == "i8_token"
    assert g.activation_for(GGMLType.TL1) == g.activation_for(GGMLType.TL2) == "i8_lut"  # bitnet.cpp's LUT input
    assert b.activation_for(GGMLType.TL2) == "i8_token"
    assert (g.kv_dtype, b.kv_dtype) == ("f16", "f32") and g.round_q_f16 and not b.round_softmax_f16
    assert g.lanes in (8, 16) and "\n" not in str(g) and str(b).startswith("bitnet:")
    assert [g.replace(simd=s).lanes for s in ("avx2", "avx512", "avx512bf16")] == [8, 16, 16]
    assert set(g.describe()) >= {"name", "activation", "kv_dtype", "rope_theta", "expf", "simd"}
    with pytest.raises(ConfigError, match="kv_dtype"):
        g.replace(kv_dtype="f8")


# ----------------------------------------------------------------------------------------------------------------------
# against llama.cpp (llama-cpp-python, flash attention off, logits of every position)


@functools.cache
def _silent_log(L):
    """A log sink that lives as long as the process: llama.cpp keeps calling it after any one LlamaRef is gone."""
    return L.llama_log_callback(lambda level, text, ud: None)


class LlamaRef:
    """llama.cpp through llama-cpp-python's low-level API: FA off, every position's logits, optional eval capture."""

    def __init__(self, path: Path, n_ctx: int = 256, n_threads: int = 2, capture: bool = False) -> None:
        L = pytest.importorskip("llama_cpp.llama_cpp")
        self.L = L
        L.llama_log_set(_silent_log(L), None)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.use_extra_bufts = False  # plain CPU buffers: CPU_REPACK / AMX would run other kernels than the profile's
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        assert self.model, path
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, 512, 512
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.flash_attn_type = 0
        self.nodes: dict[tuple[str, str], np.ndarray] = {}
        if capture:
            lib = L._lib
            lib.ggml_nbytes.argtypes, lib.ggml_nbytes.restype = [ctypes.c_void_p], ctypes.c_size_t
            lib.ggml_op_desc.argtypes, lib.ggml_op_desc.restype = [ctypes.c_void_p], ctypes.c_char_p
            self._cb = L.ggml_backend_sched_eval_callback(lambda t, ask, ud: ask or self._keep(lib, t))
            cp.cb_eval, cp.cb_eval_user_data = self._cb, None
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))

    def _keep(self, lib, t: int) -> bool:
        """Copy an f32 node (last node of each (name, op) wins); docs/NUMERICS.md §7 struct offsets."""
        if ctypes.c_int32.from_address(t).value == 0:
            name = ctypes.string_at(t + 256, 64).split(b"\0")[0].decode()
            ne = [ctypes.c_int64.from_address(t + 16 + 8 * i).value for i in range(4)]
            nb = [ctypes.c_size_t.from_address(t + 48 + 8 * i).value for i in range(4)]
            base = ctypes.c_void_p.from_address(t + 248).value
            raw = np.frombuffer((ctypes.c_char * lib.ggml_nbytes(t)).from_address(base), np.uint8)
            view = np.lib.stride_tricks.as_strided(
                raw.view(np.float32) if raw.size % 4 == 0 else raw, shape=ne[::-1], strides=nb[::-1]
            )
            self.nodes[(name, lib.ggml_op_desc(t).decode())] = np.array(view, np.float32)  # (ne3, ne2, ne1, ne0)
        return True

    def eval(self, toks: np.ndarray, pos0: int = 0) -> np.ndarray:
        """Logits (T, n_vocab) of every position of one batch."""
        L, n = self.L, len(toks)
        b = L.llama_batch_init(n, 0, 1)
        for i, tok in enumerate(toks):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(tok), pos0 + i, 1, 1
            b.seq_id[i][0] = 0
        b.n_tokens = n
        assert L.llama_decode(self.ctx, b) == 0
        out = np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(n * self.n_vocab,)).reshape(n, -1).copy()
        L.llama_batch_free(b)
        return out

    def close(self) -> None:
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def _compare(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = ours.astype(np.float64) - ref
    return {
        "r": float(np.corrcoef(ours.ravel(), ref.ravel())[0, 1]),
        "nmse": float(np.mean(d**2) / np.var(ref)),
        "max_abs": float(np.abs(d).max()),
        "exact": float(np.mean(ours == ref)),
    }


LLAMA_CASES = ["f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0", "iq2_s", "i2_s", "i2_s_arm", "tl1", "tl2"]
TWINNED = ("i2_s", "i2_s_arm", "tl1", "tl2")  # llama.cpp reads their TQ2_0 twin
LUT_FORMATS = ("tl1", "tl2")  # bitnet.cpp's LUT arithmetic in the ggml profile, not the twin's: close, not equal


def reference_build():
    """What this llama-cpp-python build was compiled for, and the emulation the ggml profile picks for it."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from crossval.build import ReferenceBuild

    return ReferenceBuild.from_system_info(llama_cpp.llama_print_system_info().decode())


def ggml_for(build):
    """The ggml profile following this build (the host's guess where the build is not emulated)."""
    return PROFILES["ggml"].replace(**build.numerics_changes())


@pytest.mark.llama
@pytest.mark.parametrize("fmt", LLAMA_CASES)
def test_logits_match_llama_cpp(fmt, record_property):
    path = tiny(fmt)
    i2s_layout = "arm" if fmt == "i2_s_arm" else "x86"
    ref_path = synth.tq2_0_twin(path, read_layout(read_gguf(path), i2s_layout)) if fmt in TWINNED else path
    build = reference_build()
    m = load_model(path, ggml_for(build), n_threads=2, i2s_layout=i2s_layout)
    ref = LlamaRef(ref_path)
    try:
        toks = tokens(48, m.config.n_vocab, seed=11)
        more = tokens(3, m.config.n_vocab, seed=12)
        ours = np.concatenate([m.forward(toks, 0)] + [m.forward(more[i : i + 1], 48 + i) for i in range(3)])
        theirs = np.concatenate([ref.eval(toks)] + [ref.eval(more[i : i + 1], 48 + i) for i in range(3)])
    finally:
        ref.close()
    stats = _compare(ours, theirs)
    for k, v in stats.items():
        record_property(k, v)
    print(f"{fmt}: " + " ".join(f"{k}={v:.7g}" for k, v in stats.items()))
    assert stats["r"] > 0.999, stats
    if build.simd is not None and fmt not in LUT_FORMATS:  # the profile emulates this build: every order and bit
        assert stats["exact"] == 1.0, (build.simd, stats)


@pytest.mark.llama
def test_trace_points_equal_llama_eval_callback_nodes():
    path = tiny("tq2_0")
    build = reference_build()
    m = load_model(path, ggml_for(build), n_threads=2)
    ref = LlamaRef(path, capture=True)
    toks = tokens(9, m.config.n_vocab, seed=13)
    try:
        ref.eval(toks)
    finally:
        ref.close()
    ours = {}
    m.forward(toks, 0, trace=lambda n, il, a: ours.setdefault(f"{n}-{il}" if il >= 0 else n, a))
    ops = {
        "Qcur": "ROPE",
        "Kcur": "ROPE",
        "Vcur": "MUL_MAT",
        "attn_out": "MUL_MAT",
        "ffn_gate": "MUL_MAT",
        "ffn_up": "MUL_MAT",
        "ffn_down": "MUL_MAT",
        "result_output": "MUL_MAT",
        "kqv_out": "CONT",
        "ffn_inp": "ADD",
        "l_out": "ADD",
        "ffn_sub_out": "SWIGLU",
    }
    checked = 0
    for key, arr in ours.items():
        point = key.rsplit("-", 1)[0] if key[-1].isdigit() else key
        node = ref.nodes.get((key, ops.get(point, "MUL")))
        assert node is not None, (key, sorted(k for k in ref.nodes if k[0] == key))
        if build.simd is not None:
            assert np.array_equal(arr.reshape(node.shape), node), (key, build.simd)
        assert math.isclose(np.corrcoef(arr.ravel(), node.ravel())[0, 1], 1.0, abs_tol=1e-3), key
        checked += 1
    assert checked == len(LAYER_POINTS) * m.config.n_layer + 2


def test_per_tensor_scale_formats_agree_bit_for_bit():
    """The same ternary weights with one scale per tensor: I2_S in the x86 and ARM layouts, TL1 and TL2 (tiled by
    their kernel_config.ini) give identical logits under the bitnet profile (exact integer sums, the same f32
    epilogue y = D / s · scale); the two I2_S layouts also under the ggml profile. An ARM file read as x86 does not."""
    toks = tokens(9, seed=32)

    def logits(fmt, profile, i2s_layout="x86"):
        m = load_model(tiny(fmt), profile, n_threads=2, i2s_layout=i2s_layout)
        return np.concatenate([m.forward(toks, 0), m.forward(toks[:1], len(toks))])

    want = logits("i2_s", "bitnet")
    for fmt in ("i2_s_arm", "tl1", "tl2"):
        got = logits(fmt, "bitnet", "arm" if fmt == "i2_s_arm" else "x86")
        assert np.array_equal(got, want), (fmt, float(np.abs(got - want).max()))
    assert np.array_equal(logits("i2_s_arm", "ggml", "arm"), logits("i2_s", "ggml"))
    assert not np.allclose(logits("i2_s_arm", "bitnet", "x86"), want, atol=1e-2)
    m = load_model(tiny("tl1"), "ggml", n_threads=2)
    assert m.layout.tilings and m.describe()["layout"]["kernel_config"] == str(sidecar(tiny("tl1")))
    assert m.weights.layers[0].attn_q.activation == "i8_lut" and m.weights.layers[0].attn_q.params[:3] in [
        tuple(t[2:]) for t in m.layout.tilings
    ]


def test_f16_fallbacks_inside_a_tq_file_are_bitlinears_too(tmp_path):
    """llama.cpp's converter writes F16 for rows it cannot quantize (1bitLLM-3B: K = 3200, 8640); such a projection
    inside a TQ2_0 file still quantizes its input per token: the mixed file's logits equal the all-TQ2_0 file's."""
    src = tiny("tq2_0")
    mixed = tmp_path / "mixed.gguf"
    fallback = ("blk.0.ffn_down.weight", "blk.1.attn_q.weight")
    with read_gguf(src) as g, GGUFWriter(mixed, alignment=g.alignment) as w:
        for key, value in g.metadata.items():
            w.add_kv(key, value, g.value_types[key])
        for name, t in g.tensors.items():
            w.add_tensor(name, t.shape, GGMLType.F16 if name in fallback else t.type)
        w.write_header()
        for name, t in g.tensors.items():
            raw = np.array(g.tensor_bytes(name))
            w.write_tensor(name, TQ2_0.decode(raw, t.shape).astype(np.float16) if name in fallback else raw)
    toks = tokens(9, seed=33)
    want = load_model(src, "bitnet", n_threads=2).forward(toks, 0)
    m = load_model(mixed, "bitnet", n_threads=2)
    assert m.weights.layers[0].ffn_down.type == GGMLType.F16 and m.weights.layers[0].ffn_down.activation == "i8_token"
    assert np.array_equal(m.forward(toks, 0), want)


def test_bitnet_profile_quantizes_bitlinear_inputs_whatever_the_storage():
    """BitLinear quantizes its input per token also when the ternary weights are stored as floats: F32, F16 and BF16
    files of the same weights give the TQ2_0 file's logits bit for bit (prefill and a decode step); the head stays
    unquantized (its activation kind is the weight type's own)."""
    toks = tokens(9, seed=31)
    want_model = load_model(tiny("tq2_0"), "bitnet", n_threads=2)
    want = np.concatenate([want_model.forward(toks, 0), want_model.forward(toks[:1], len(toks))])
    for fmt in ("f32", "f16", "bf16"):
        m = load_model(tiny(fmt), "bitnet", n_threads=2)
        assert {lin.activation for layer in m.weights.layers for lin in (layer.attn_q, layer.ffn_down)} == {"i8_token"}
        assert m.weights.output.activation == "none"
        got = np.concatenate([m.forward(toks, 0), m.forward(toks[:1], len(toks))])
        assert np.array_equal(got, want), (fmt, float(np.abs(got - want).max()))
