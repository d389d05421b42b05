"""The harness proves it can fail: bitnet_ref with one planted fault at a time must fail crossval, and the verdict
must name the layer and point where the fault first shows. Faults are planted by monkeypatching the engine's kernel
modules here, in the test only (model.py looks kernels up on their modules at call time)."""

import dataclasses

import numpy as np
import pytest

import crossval.llama_cpp_backend as llama_backend
from bitnet_ref import formats, linear
from bitnet_ref.kernels import attention, norm, rope
from crossval import cases as C
from crossval import thresholds as T
from crossval import verdict as V
from crossval.backends import BitnetRefBackend

pytestmark = pytest.mark.llama

N_CTX = 256


@pytest.fixture(scope="module")
def th():
    return T.load_thresholds()


@pytest.fixture(scope="module")
def refs():
    """One llama.cpp backend per model, shared by the tests of this module."""
    opened = {}

    def get(case):
        if case.fmt not in opened:
            path = C.llama_model(case, C.engine_model(case))
            opened[case.fmt] = llama_backend.LlamaCppBackend(path, n_threads=2, n_ctx=N_CTX)
        return opened[case.fmt]

    yield get
    for backend in opened.values():
        backend.close()


def _verdict(case, refs, th, **engine_kw):
    engine = BitnetRefBackend(C.engine_model(case), numerics=case.profile, n_threads=2, n_ctx=N_CTX, **engine_kw)
    return V.compare_case(case, engine, refs(case), th, engine.config.n_layer, N_CTX)


def _assert_located(res, layer, point):
    assert res.verdict == V.FAIL, res.location
    assert res.first is not None and (res.first["layer"], res.first["point"]) == (layer, point), res.location
    assert res.location.startswith(f"first divergence: layer {layer} {point}, NMSE ")


def _case(fmt="tq2_0", profile="ggml"):
    return C.Case("tiny", fmt, "mixed", profile, 2, n_greedy=2)


@pytest.mark.parametrize(("fmt", "profile"), [("tq2_0", "ggml"), ("tq2_0", "bitnet"), ("i2_s", "ggml")])
def test_unplanted_engine_passes(refs, th, fmt, profile):
    res = _verdict(_case(fmt, profile), refs, th)
    assert res.verdict == V.PASS, res.location


@pytest.mark.parametrize("profile", ["ggml", "bitnet"])
def test_relu2_instead_of_silu(refs, th, profile):
    """The explicit ffn_act parameter: the engine runs relu² where llama.cpp runs SiLU."""
    _assert_located(_verdict(_case(profile=profile), refs, th, ffn_act="relu2"), 0, "ffn_sub_out")


def _interleaved_rope(x, positions, n_head, head_dim, n_rot, freqs, out):
    """GPT-J pairing (2i, 2i+1) instead of NEOX (i, i + n_rot/2); freqs[i] = θ^(−2i/n_rot)."""
    tmp = np.array(x, np.float32)
    i = np.arange(n_rot // 2)
    theta = positions[:, None].astype(np.float64) * np.asarray(freqs, np.float64)[None, :]
    c, s = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    for h in range(n_head):
        a, b = tmp[:, h * head_dim + 2 * i], tmp[:, h * head_dim + 2 * i + 1]
        out[:, h * head_dim + 2 * i] = a * c - b * s
        out[:, h * head_dim + 2 * i + 1] = a * s + b * c


@pytest.mark.parametrize("profile", ["ggml", "bitnet"])
def test_interleaved_rope(refs, th, monkeypatch, profile):
    def iterative(x, positions, n_head, head_dim, n_rot, theta_scale, out):
        freqs = np.float64(theta_scale) ** np.arange(n_rot // 2)
        _interleaved_rope(x, positions, n_head, head_dim, n_rot, freqs, out)

    monkeypatch.setattr(rope, "neox", iterative)  # ggml profile
    monkeypatch.setattr(rope, "neox_direct", _interleaved_rope)  # bitnet profile
    _assert_located(_verdict(_case(profile=profile), refs, th), 0, "Qcur")


@pytest.mark.parametrize(("which", "layer", "profile"),
                         [("attn_sub_norm", 0, "ggml"), ("ffn_sub_norm", 1, "ggml"), ("ffn_sub_norm", 0, "bitnet")])
def test_sub_norm_skipped(refs, th, monkeypatch, which, layer, profile):
    """One sub-norm of one layer passes its input through untouched."""
    case = _case(profile=profile)
    engine = BitnetRefBackend(C.engine_model(case), numerics=profile, n_threads=2, n_ctx=N_CTX)
    skipped = getattr(engine.model.weights.layers[layer], which)
    real = norm.rmsnorm

    def rmsnorm(x, w, eps, double_sum, out):
        if w is skipped:
            out[:] = x
        else:
            real(x, w, eps, double_sum, out)

    monkeypatch.setattr(norm, "rmsnorm", rmsnorm)
    res = V.compare_case(case, engine, refs(case), th, engine.config.n_layer, N_CTX)
    _assert_located(res, layer, which)


@pytest.mark.parametrize("profile", ["ggml", "bitnet"])
def test_attention_off_by_one_position(refs, th, monkeypatch, profile):
    """Every query also sees the next cell (the causal mask shifted by one)."""
    real = attention.attend
    monkeypatch.setattr(attention, "attend", lambda q, k, v, start_pos, *rest: real(q, k, v, start_pos + 1, *rest))
    _assert_located(_verdict(_case(profile=profile), refs, th), 0, "kqv_out")


def _reverse_pairs(codes):
    """The 4 two-bit codes of each byte in the opposite order."""
    return ((codes & 3) << 6) | (((codes >> 2) & 3) << 4) | (((codes >> 4) & 3) << 2) | (codes >> 6)


@pytest.mark.parametrize("profile", ["ggml", "bitnet"])
def test_i2s_bit_order_reversed(refs, th, monkeypatch, profile):
    """The I2_S kernel reads each byte's codes least significant pair first (the file stores MSB first)."""

    def flipped(real):
        def run(lin, act, numerics, out):
            w = np.array(lin.data)
            n = lin.rows * lin.cols // 4
            w[:n] = _reverse_pairs(w[:n])
            real(dataclasses.replace(lin, data=w), act, numerics, out)

        return run

    for kind in ("i8_token", "q8_k"):  # bitnet profile: per-token int8; ggml profile: Q8_K
        key = (formats.I2_S, kind, linear.CPU)
        monkeypatch.setitem(linear.KERNELS, key, flipped(linear.KERNELS[key]))
    _assert_located(_verdict(_case("i2_s", profile), refs, th), 0, "Qcur")


def test_q8k_sign_convention_flipped(refs, th, monkeypatch):
    """Q8_K codes keep ggml's sign flip (largest |x| -> -127) but d is taken as +max/127, not 1/(-127/max)."""
    real = linear.ACTIVATIONS["q8_k"]

    def wrong_sign(x, qs, d, bsums):
        real.fill(x, qs, d, bsums)
        np.negative(d, out=d)

    monkeypatch.setitem(linear.ACTIVATIONS, "q8_k", dataclasses.replace(real, fill=wrong_sign))
    _assert_located(_verdict(_case(), refs, th), 0, "Qcur")


def test_relu2_model_is_the_known_upstream_divergence(refs, th):
    """A bitnet-b1.58 (relu²) model that llama.cpp runs as `bitnet` (SiLU): XFAIL at layer 0's FFN, with the links."""
    case = C.Case("tiny", "tq2_0", "hello", "ggml", 2, arch="bitnet-b1.58", n_greedy=2)
    engine = BitnetRefBackend(C.engine_model(case), numerics="ggml", n_threads=2, n_ctx=N_CTX)
    assert engine.config.ffn_act == "relu2"
    with llama_backend.LlamaCppBackend(C.llama_model(case, C.engine_model(case)), n_threads=2, n_ctx=N_CTX) as ref:
        res = V.compare_case(case, engine, ref, th, engine.config.n_layer, N_CTX)
    assert res.verdict == V.XFAIL, res.location
    assert (res.first["layer"], res.first["point"]) == (0, "ffn_sub_out")
    assert "microsoft/BitNet/issues/588" in res.location and "602" in res.location
    assert (res.summary["ffn_act_engine"], res.summary["ffn_act_ref"]) == ("relu2", "silu")
    attn = [p for p in res.points if p["layer"] == 0 and p["point"] in ("Qcur", "kqv_out", "ffn_gate", "ffn_up")]
    assert attn and all(p["status"] == "ok" for p in attn)
