"""The bitnet_ref backend behind crossval's Backend protocol, and the refusal to compare an engine with itself."""

import numpy as np
import pytest

from bitnet_ref.synth import cached_model
from crossval import points as P
from crossval.backends import Backend, BackendError, BitnetRefBackend, check_distinct


@pytest.fixture(scope="module")
def engine():
    return BitnetRefBackend(cached_model(preset="tiny", fmt="tq2_0", arch="bitnet", seed=0), n_threads=2, n_ctx=256)


def test_protocol_and_capture(engine):
    assert isinstance(engine, Backend)
    tokens = engine.tokenize("Hello world, once more.", True)
    cap = engine.capture(tokens, P.all_points(2))
    assert set(cap) == set(P.all_points(2))
    assert all(a.shape[0] == len(tokens) and a.dtype == np.float32 for a in cap.values())
    np.testing.assert_array_equal(cap[("result_output", P.HEAD_LAYER)], engine.eval(tokens))
    assert set(engine.capture(tokens, [("l_out", 1)])) == {("l_out", 1)}


def test_greedy_agrees_with_batched_eval(engine):
    tokens = engine.tokenize("Greedy", True)
    new, rows = engine.greedy(tokens, 3)
    assert len(new) == 3 and rows.shape == (3, engine.config.n_vocab)
    assert new == [int(np.argmax(r)) for r in rows]
    assert new[0] == int(np.argmax(engine.eval(tokens)[-1]))


def test_describe_names_numerics_and_threads(engine):
    d = engine.describe()
    assert d["backend"] == "bitnet_ref" and d["n_threads"] == 2 and d["numerics"]["name"] == "ggml"


def test_same_engine_twice_is_refused(engine):
    with pytest.raises(BackendError, match="two engines"):
        check_distinct(engine, engine)


def test_unloadable_model_is_an_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(BackendError, match="cannot load"):
        BitnetRefBackend(bad)
