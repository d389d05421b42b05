"""Verdict logic of crossval.verdict on hand-made activations (no engines involved)."""

import numpy as np
import pytest

from crossval import cases as C
from crossval import points as P
from crossval import thresholds as T
from crossval import verdict as V


@pytest.fixture(scope="module")
def th():
    return T.load_thresholds()


def _acts(n_layer=1, T=3, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((T, 8)).astype(np.float32) for k in P.all_points(n_layer)}


def _result(case, th, engine, ref, n_layer=1):
    res = V.CaseResult(case)
    V.compare_layers(res, engine, ref, P.all_points(n_layer), th)
    V.decide(res, th)
    return res


def test_bounds_lookup_order():
    """Matching overrides first (in file order; nmse point, then default), then the profile's point and default."""
    th = {"profiles": {"p": {"nmse": {"default": 1.0, "Qcur": 2.0}, "logits_r": 0.9, "greedy": "exact",
                             "overrides": [{"when": {"fmt": "bf16"}, "nmse": {"default": 3.0, "Kcur": 4.0}},
                                           {"when": {"preset": "small"}, "nmse": {"Kcur": 5.0}, "logits_r": 0.5},
                                           {"when": {"preset": "small", "fmt": "bf16"}, "logits_r": 0.1}]}}}
    tq2, bf16 = C.Case("tiny", "tq2_0", "hello", "p", 2), C.Case("tiny", "bf16", "hello", "p", 2)
    small, small_bf16 = C.Case("small", "tq2_0", "hello", "p", 2), C.Case("small", "bf16", "hello", "p", 2)
    assert T.nmse_bound(th, tq2, "Kcur") == 1.0
    assert T.nmse_bound(th, tq2, "Qcur") == 2.0
    assert T.nmse_bound(th, bf16, "Qcur") == 3.0
    assert T.nmse_bound(th, bf16, "Kcur") == 4.0
    assert T.nmse_bound(th, small, "Kcur") == 5.0 and T.nmse_bound(th, small, "Qcur") == 2.0
    assert T.setting(th, tq2, "logits_r") == 0.9 and T.setting(th, small, "logits_r") == 0.5
    assert T.setting(th, small_bf16, "logits_r") == 0.5  # the first match that has the key
    assert T.setting(th, small, "greedy") == "exact"
    th["profiles"]["p"]["overrides"].append({"when": {"prest": "x"}, "logits_r": 0.0})
    with pytest.raises(KeyError, match="'prest', which is not a case field"):
        T.setting(th, tq2, "greedy")


def test_first_divergence_names_layer_and_point(th):
    case = C.Case("tiny", "tq2_0", "hello", "ggml", 2)
    ref = _acts(n_layer=2)
    engine = {k: v.copy() for k, v in ref.items()}
    for key in [("ffn_down", 1), ("ffn_sub_out", 1), ("result_output", -1)]:
        engine[key] = engine[key] + 1.0
    res = _result(case, th, engine, ref, n_layer=2)
    assert res.verdict == V.FAIL and res.stage == "layers"
    assert res.location.startswith("first divergence: layer 1 ffn_sub_out, NMSE ")
    assert res.first["layer"] == 1 and res.first["point"] == "ffn_sub_out"
    assert len(res.positions) == len(P.all_points(2)) * 3


def test_expected_divergence_xfail_xpass_and_wrong_place(th):
    case = C.Case("tiny", "tq2_0", "hello", "ggml", 2, arch="bitnet-b1.58")
    ref = _acts()
    at_ffn = {k: v + (1.0 if k == ("ffn_sub_out", 0) else 0.0) for k, v in ref.items()}
    res = _result(case, th, at_ffn, ref)
    assert res.verdict == V.XFAIL and "microsoft/BitNet/issues/588" in res.location
    assert _result(case, th, ref, ref).verdict == V.XPASS
    at_attn = {k: v + (1.0 if k == ("kqv_out", 0) else 0.0) for k, v in ref.items()}
    wrong = _result(case, th, at_attn, ref)
    assert wrong.verdict == V.FAIL and "kqv_out" in wrong.location and "expected relu2" in wrong.location


def test_missing_point_fails_unless_declared_optional(th):
    case = C.Case("tiny", "tq2_0", "hello", "ggml", 2)
    ref = _acts()
    engine = {k: v for k, v in ref.items() if k != ("Vcur", 0)}
    res = _result(case, th, engine, ref)
    assert res.verdict == V.FAIL and res.location == "layer 0 Vcur not observed in bitnet_ref"
    optional = {**th, "optional": [{"id": "no-v", "when": {"fmt": "tq2_0"}, "points": ["Vcur"], "reason": "why"}]}
    res = _result(case, optional, engine, ref)
    assert res.verdict == V.PASS
    assert any(p["status"] == "not observed in bitnet_ref (optional, no-v: why)" for p in res.points)
    other = C.Case("tiny", "f16", "hello", "ggml", 2)
    assert _result(other, optional, engine, ref).verdict == V.FAIL


def test_approx_case_is_judged_by_the_approx_gate(th):
    """A ggml case on an unemulated path: tiny differences pass as APPROX with the reason; a real divergence still
    fails, naming the reason too."""
    case = C.Case("tiny", "f16", "hello", "ggml", 2)
    ref = _acts()
    near = {k: v * np.float32(1 + 1e-4) for k, v in ref.items()}  # NMSE 1e-8
    assert _result(case, th, near, ref).verdict == V.FAIL  # beyond the ggml profile's bit-level bound
    res = V.CaseResult(case, approx="llama.cpp used AMX for 7 weights (blk.0.attn_q.weight, ...)")
    assert res.gate == "approx"
    V.compare_layers(res, near, ref, P.all_points(1), th)
    V.decide(res, th)
    assert res.verdict == V.APPROX and res.location.startswith("llama.cpp used AMX")
    far = {k: v + (1.0 if k == ("Qcur", 0) else 0.0) for k, v in ref.items()}
    res = V.CaseResult(case, approx="llama.cpp used AMX for 7 weights")
    V.compare_layers(res, far, ref, P.all_points(1), th)
    V.decide(res, th)
    assert res.verdict == V.FAIL and "layer 0 Qcur" in res.location
    assert "approx gate: llama.cpp used AMX" in res.location


def test_error_result_names_the_failure():
    from crossval.isolated import ChildError

    err = ChildError("llama.cpp died with SIGSEGV during greedy (last output: x)", "a\nx", "SIGSEGV")
    res = V.error_result(C.Case("tiny", "q8_0", "hello", "ggml", 2), err, 1.5)
    assert res.verdict == V.ERROR and res.location.startswith("llama.cpp died with SIGSEGV")
    assert res.row()["verdict"] == "ERROR" and res.summary["error_tail"] == "a\nx"


@pytest.mark.parametrize(("noise", "message"), [(0.5, "logits: r "), (0.006, "logits: position 2 r ")])
def test_logits_and_greedy_gates(th, noise, message):
    case = C.Case("tiny", "tq2_0", "hello", "ggml", 2)
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((4, 50))
    res = V.CaseResult(case)
    noisy = ref.copy()
    noisy[2] += noise * rng.standard_normal(50)
    V.compare_logits(res, noisy, ref, th)
    V.compare_greedy(res, [1, 2, 3], [1, 2, 4], th)
    V.decide(res, th)
    assert res.verdict == V.FAIL and res.location.startswith(message), res.location
    assert [f[0] for f in res.failures] == ["logits", "greedy"]
    assert res.summary["logits_r_min_position"] == 2


def test_greedy_is_only_reported_in_the_bitnet_profile(th):
    bitnet = V.CaseResult(C.Case("tiny", "tq2_0", "hello", "bitnet", 2))
    V.compare_greedy(bitnet, [1, 2, 3], [1, 2, 4], th)
    assert bitnet.failures == [] and bitnet.summary["greedy_first_diff"] == 2


def test_quick_matrix_shape():
    quick = C.matrix(quick=True, user_model="")
    ids = [c.id for c in quick]
    assert len(ids) == len(set(ids))
    assert {c.fmt for c in quick} == set(C.FORMATS + C.LAYOUT_FORMATS) and {c.profile for c in quick} == set(C.PROFILES)
    assert {c.threads for c in quick} == {1, 2} and any(c.arch == "bitnet-b1.58" for c in quick)
    assert any(c.prompt == "long" for c in quick)
    full = C.matrix(user_model="")
    assert len(full) > len(quick) and {c.preset for c in full} == {"tiny", "small"}


def test_long_prompt_fills_to_target():
    text = C.long_prompt(lambda s: s.split(), 50)
    assert 40 < len(text.split()) <= 50


def test_a_user_i2s_model_is_read_in_the_layout_given(tmp_path):
    """BITNET_GGUF's I2_S layout is the caller's to say (--i2s-layout): its cases then read the file as ARM."""
    from bitnet_ref import synth

    path = synth.synth_model(tmp_path / "user.gguf", fmt="i2_s_arm")
    x86 = C.matrix(quick=True, user_model=str(path))
    arm = C.matrix(quick=True, user_model=str(path), user_i2s_layout="arm")
    assert {c.i2s_layout for c in x86 if c.user_path} == {"x86"}
    assert {(c.fmt, c.i2s_layout) for c in arm if c.user_path} == {("i2_s_arm", "arm")}
    assert len([c for c in arm if c.user_path]) == 6
