"""The llama.cpp backend on a tiny synthetic model: capture, logits, tokenizer, cache clearing, errors."""

import numpy as np
import pytest

import crossval.llama_cpp_backend as llama_backend
from bitnet_ref.synth import cached_model
from crossval import points as P
from crossval.backends import BackendError

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def llama():
    path = cached_model(preset="tiny", fmt="tq2_0", arch="bitnet", seed=0)
    with llama_backend.LlamaCppBackend(path, n_threads=2) as backend:
        yield backend


def test_capture_every_point_with_shapes(llama):
    tokens = llama.tokenize("Hello world, once more.", True)
    cap = llama.capture(tokens, P.all_points(2))
    assert set(cap) == set(P.all_points(2))
    T = len(tokens)
    widths = {"Kcur": 128, "Vcur": 128, "ffn_gate": 512, "ffn_up": 512, "ffn_sub_out": 512, "ffn_sub_norm": 512,
              "result_output": 512}
    for (point, _), arr in cap.items():
        assert arr.shape == (T, widths.get(point, 256)) and arr.dtype == np.float32
    assert llama.ops_seen["Qcur-0"] == ["MUL_MAT", "RESHAPE", "ROPE"]
    # a captured value is the post-RoPE one: position 0 is unrotated, so ROPE == MUL_MAT there only
    logits = llama.eval(tokens)
    np.testing.assert_array_equal(cap[("result_output", P.HEAD_LAYER)], logits)


def test_cache_is_cleared_and_callback_changes_nothing(llama):
    tokens = llama.tokenize("The same prompt twice", True)
    first = llama.eval(tokens)
    llama.capture(tokens, [("ffn_sub_out", 0), ("l_out", 1)])
    np.testing.assert_array_equal(llama.eval(tokens), first)


def test_greedy_matches_batched_argmax(llama):
    tokens = llama.tokenize("Greedy", True)
    new, rows = llama.greedy(tokens, 3)
    assert len(new) == 3 and rows.shape == (3, llama.n_vocab)
    assert new[0] == int(np.argmax(llama.eval(tokens)[-1]))
    np.testing.assert_allclose(llama.eval(tokens + new[:2])[-1], rows[2], atol=1e-4)


def test_tokenize_special_and_bos(llama):
    with_bos = llama.tokenize("<|begin_of_text|>hi", False)
    assert with_bos[0] == llama.tokenize("", True)[0]
    assert llama.tokenize("", False) == []


def test_describe_records_matching_settings(llama):
    d = llama.describe()
    assert d["flash_attn_type"] == 0 and d["n_batch"] == d["n_ubatch"] >= 256 and d["n_threads"] == 2
    assert d["ggml_version"] and "CPU" in d["system_info"]


def test_unloadable_model_is_an_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(BackendError, match="cannot load"):
        llama_backend.LlamaCppBackend(bad)


def test_timing_configuration(llama):
    path = cached_model(preset="tiny", fmt="tq2_0", arch="bitnet", seed=0)
    tokens = llama.tokenize("Timing mode", True)
    with llama_backend.LlamaCppBackend(path, flash_attn=None, n_ubatch=64, eval_callback=False, perf=True) as fast:
        assert fast.describe()["flash_attn_type"] == -1 and fast.describe()["n_ubatch"] == 64
        fast.eval(tokens)
        assert fast.perf_counters(reset=True)["n_p_eval"] == len(tokens)
        with pytest.raises(BackendError, match="eval callback"):
            fast.capture(tokens, [("l_out", 0)])
