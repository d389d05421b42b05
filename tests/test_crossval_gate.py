"""The CI gate: the quick crossval matrix against llama.cpp must pass (expected divergences aside), every case's
logits must correlate at r > 0.999, and the ggml profile must reach its near-bit bound."""

import pytest

import crossval.llama_cpp_backend  # noqa: F401  (a hard dependency: the gate fails, never skips, without it)
from crossval import run as R
from reports import records

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("crossval")
    status = R.main(["--quick", "--out", str(out)])
    (path,) = records.list_runs(out, kind="crossval")
    meta, tables = records.read_run(path)
    return status, meta, tables


def test_quick_matrix_exits_zero(quick_run):
    status, meta, tables = quick_run
    bad = tables["cases"].query("verdict in ['FAIL', 'XPASS']")
    assert status == 0 and meta["verdict"] == "pass", bad[["case", "verdict", "location"]].to_string()


def test_every_case_logits_r_above_0_999(quick_run):
    _, _, tables = quick_run
    cases = tables["cases"].query("verdict == 'PASS'")
    assert len(cases) >= 15
    low = cases[(cases.logits_r <= 0.999) | (cases.logits_r_min < cases.logits_r_position_bound)]
    assert low.empty, low[["case", "logits_r", "logits_r_min"]].to_string()


def test_ggml_profile_is_near_bit_level(quick_run):
    _, meta, tables = quick_run
    cases = tables["cases"].query("verdict == 'PASS' and profile == 'ggml'")
    ggml_bound = meta["thresholds"]["profiles"]["ggml"]["logits_r"]
    assert not cases.empty and (cases.logits_r_min >= ggml_bound).all(), cases[["case", "logits_r_min"]]
    assert "i2_s" in set(cases.fmt)  # I2_S: the engine on the I2_S file, llama.cpp on its TQ2_0 twin
    assert (cases.greedy_match.astype(bool)).all()


def test_tokenizer_parity_and_expected_divergence(quick_run):
    _, meta, tables = quick_run
    cases = tables["cases"]
    assert not (cases.stage == "tokenizer").any()
    xfail = cases.query("verdict == 'XFAIL'")
    assert len(xfail) == 1 and xfail.location.iloc[0].startswith("first divergence: layer 0 ffn_sub_out")
    assert meta["provenance"]["git_sha"] is None or len(meta["provenance"]["git_sha"]) == 40
    assert set(tables) == {"cases", "points", "positions", "logits", "topk", "worst_logits"}
    assert {"case", "layer", "point", "position", "nmse"} <= set(tables["positions"].columns)
