"""`python -m crossval --corpus`: the statistics against plain numpy, llama-perplexity's chunking, the mode end to end
against llama.cpp on the tiny synthetic model (bit-exact under the ggml profile), its records, report and errors."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import crossval.llama_cpp_backend as llama_backend
from bitnet_ref.files import file_sha256
from bitnet_ref.synth import cached_model
from crossval import corpus as K
from crossval import run as R
from crossval.backends import BackendError
from reports import records
from reports.corpus_report import render_corpus
from reports.html import build_report

CTX = 64  # tokens per chunk in the end-to-end runs: 31 scored tokens a chunk
SENTENCES = (
    "BitNet b1.58 stores every weight as minus one, zero or one, with one scale per tensor.",
    "The reference engine and llama.cpp must agree layer by layer, position by position.",
    "Numbers like 2560, 6912 and 128256 describe the shapes of the official model.",
    "A careful harness shows where two implementations part, not only that they do.",
)


# -- plain numpy twins ----------------------------------------------------------------------------------------------


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def _twin_stats(base: np.ndarray, other: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    lp, lq = _log_softmax(base), _log_softmax(other)
    kld = np.array([sum(np.exp(a) * (a - b) for a, b in zip(p, q, strict=True)) for p, q in zip(lp, lq, strict=True)])
    rows = np.arange(len(targets))
    nll_b, nll_o = -lp[rows, targets], -lq[rows, targets]
    return {"kld": kld, "top1": base.argmax(1) == other.argmax(1), "nll_base": nll_b, "nll_other": nll_o,
            "p_diff": np.exp(-nll_o) - np.exp(-nll_b)}


def _llama_percentile(values: np.ndarray, fraction: float) -> float:
    """llama-perplexity's percentile lambda on sorted values."""
    v = np.sort(values)
    p = fraction * (len(v) - 1)
    ip = int(p)
    p -= ip
    return (1 - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)]


def _random_logits(n: int, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 3, (n, vocab)).astype(np.float32)
    other = (base + rng.normal(0, 0.3, (n, vocab))).astype(np.float32)
    return base, other, rng.integers(0, vocab, n)


# -- statistics -----------------------------------------------------------------------------------------------------


def test_identical_logits_have_zero_kld_and_full_agreement():
    base, _, targets = _random_logits(40, 300, seed=1)
    s = K.token_stats(base, base.copy(), targets)
    assert np.array_equal(s["kld"], np.zeros(40)) and s["top1"].all() and not s["p_diff"].any()
    np.testing.assert_array_equal(s["nll_base"], s["nll_other"])


def test_two_token_case_by_hand():
    """P = (1/2, 1/2); Q = (3/4, 1/4) or (1/4, 3/4): KL = ½ ln(4/3) both times, the argmax agrees only for the first
    (a tie takes the first token, as llama-perplexity's strict >)."""
    base = np.zeros((2, 2), np.float32)
    other = np.array([[np.log(3), 0], [0, np.log(3)]], np.float32)
    s = K.token_stats(base, other, np.array([0, 0]))
    np.testing.assert_allclose(s["kld"], 0.5 * np.log(4 / 3), rtol=1e-6)
    assert s["top1"].tolist() == [True, False]
    np.testing.assert_allclose(s["nll_base"], np.log(2), rtol=1e-12)
    np.testing.assert_allclose(s["nll_other"], [-np.log(0.75), -np.log(0.25)], rtol=1e-6)
    np.testing.assert_allclose(s["p_diff"], [0.25, -0.25], rtol=1e-6)


def test_token_stats_match_numpy_twin_across_row_blocks():
    base, other, targets = _random_logits(K.ROW_BLOCK * 2 + 7, 257, seed=2)
    ours, twin = K.token_stats(base, other, targets), _twin_stats(base, other, targets)
    for key in K.FIELDS:
        np.testing.assert_allclose(ours[key], twin[key], rtol=1e-10, atol=1e-15, err_msg=key)
    with pytest.raises(ValueError, match="do not match"):
        K.token_stats(base, other[:-1], targets)


def test_summary_matches_plain_numpy():
    base, other, targets = _random_logits(200, 64, seed=3)
    stats = K.token_stats(base, other, targets)
    got = K.stat_values(K.summarize(stats, "A", "B"))
    n = 200
    kld, nb, no = stats["kld"], stats["nll_base"], stats["nll_other"]
    se = lambda x: np.std(x) / np.sqrt(n - 1)  # noqa: E731
    rows = {r["stat"]: r for r in K.summarize(stats, "A", "B")}
    assert got["tokens"] == n
    np.testing.assert_allclose([got["kld_mean"], rows["kld_mean"]["error"]], [kld.mean(), se(kld)], rtol=1e-12)
    assert got["kld_max"] == kld.max() and got["kld_min"] == kld.min() and got["kld_median"] == np.median(kld)
    for q in K.PERCENTILES:
        np.testing.assert_allclose(got[f"kld_p{q:g}"], _llama_percentile(kld, q / 100), rtol=1e-12, err_msg=str(q))
    np.testing.assert_allclose(got["ppl_base"], np.exp(nb.mean()), rtol=1e-12)
    np.testing.assert_allclose(rows["ppl_other"]["error"], np.exp(no.mean()) * se(no), rtol=1e-12)
    np.testing.assert_allclose(got["ln_ppl_ratio"], no.mean() - nb.mean(), rtol=1e-12)
    np.testing.assert_allclose(got["nll_cor"], 100 * np.corrcoef(no, nb)[0, 1], rtol=1e-10)
    top = np.mean(base.argmax(1) == other.argmax(1))
    np.testing.assert_allclose([got["same_top"], rows["same_top"]["error"]],
                               [100 * top, 100 * np.sqrt(top * (1 - top) / (n - 1))], rtol=1e-12)
    np.testing.assert_allclose(got["p_diff_rms"], 100 * np.sqrt(np.mean(stats["p_diff"] ** 2)), rtol=1e-12)
    assert 0 < top < 1 and rows["tokens"]["label"] == "scored tokens" and rows["ppl_other"]["label"] == "PPL(B)"


def test_percentiles_interpolate_and_small_counts_have_no_error():
    values = np.arange(101, dtype=np.float64)  # percentile q lands on the value q
    stats = {"kld": values, "top1": np.ones(101, bool), "nll_base": values, "nll_other": values,
             "p_diff": np.zeros(101)}
    got = K.stat_values(K.summarize(stats))
    for q in K.PERCENTILES:
        assert got[f"kld_p{q:g}"] == pytest.approx(q, abs=1e-12)
    assert got["kld_median"] == 50 and got["kld_max"] == 100 and got["kld_min"] == 0
    assert got["same_top"] == 100.0 and got["nll_cor"] == pytest.approx(100.0)
    assert K.mean_and_error(np.arange(10.0)) == (4.5, 0.0)  # llama-perplexity: no error for 10 values or fewer
    assert K.mean_and_error(np.arange(11.0))[1] == pytest.approx(np.std(np.arange(11.0)) / np.sqrt(10))


# -- chunking -------------------------------------------------------------------------------------------------------


def test_chunks_replace_the_first_token_by_bos_and_drop_the_tail():
    tokens = list(range(100, 120))  # 20 tokens: 3 chunks of 6, 2 left over
    chunks = K.make_chunks(tokens, 6, bos=1)
    assert chunks == [[1, 101, 102, 103, 104, 105], [1, 107, 108, 109, 110, 111], [1, 113, 114, 115, 116, 117]]
    assert K.make_chunks(tokens, 6, bos=1, n_chunks=2) == chunks[:2]
    assert K.make_chunks(tokens, 6, bos=None)[1] == tokens[6:12]
    assert K.make_chunks(tokens, 21, bos=1) == []
    assert tokens[0] == 100  # the input is not modified


def test_second_half_is_scored():
    assert list(K.scored_positions(6)) == [3, 4]
    assert len(K.scored_positions(512)) == 255 and K.scored_positions(512).start == 256  # llama-perplexity's count


class _Fake:
    """An engine whose logits at position j favour the token at j + 1 (so a misaligned target shows), and which
    perturbs the rows it is told to."""

    name = "fake"

    def __init__(self, vocab: int, noisy_rows=(), ids=(1, 5, 6, 7)):
        self.vocab, self.noisy_rows, self.ids = vocab, set(noisy_rows), list(ids)

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        return ([1] if add_bos else []) + (self.ids[1:] if text else [])

    def eval(self, tokens: list[int]) -> np.ndarray:
        logits = np.zeros((len(tokens), self.vocab), np.float32)
        for j in range(len(tokens) - 1):
            logits[j, tokens[j + 1]] = 20.0
        for j in self.noisy_rows:
            logits[j] += np.random.default_rng(j).normal(0, 1, self.vocab).astype(np.float32)
        return logits


def test_score_uses_the_second_half_and_the_next_token():
    chunk = [1, *range(10, 25)]  # 16 tokens: positions 8..14 scored
    noisy = [0, 3, 7, 15, 10]  # only row 10 is scored
    pair = K.Comparison({"a": _Fake(32), "b": _Fake(32, noisy_rows=noisy)}, ("a", "b"), 16)
    stats, seconds = pair.score(chunk)
    assert stats["kld"].size == 7 and len(seconds) == 2
    assert np.flatnonzero(stats["kld"]).tolist() == [10 - 8]
    assert (stats["nll_base"] < 1e-6).all()  # each scored row predicted its own next token


def test_tokenizer_mismatch_names_the_first_difference():
    pair = K.Comparison({"a": _Fake(32), "b": _Fake(32, ids=(1, 5, 9, 7))}, ("a", "b"), 16)
    with pytest.raises(BackendError, match="tokenizers differ at token 2 of 4/4: a 6, b 9"):
        pair.tokenize("some text")
    assert K.Comparison({"a": _Fake(32), "b": _Fake(32)}, ("a", "b"), 16).tokenize("x") == ([1, 5, 6, 7], 1)
    assert K.first_mismatch([1, 2], [1, 2, 3]) == 2 and K.first_mismatch([1, 2], [1, 2]) is None


def test_engine_pairs():
    assert K.parse_engines("llama.cpp,bitnet_ref") == ("llama.cpp", "bitnet_ref")
    with pytest.raises(BackendError, match="both engines are 'bitnet_ref'"):
        K.parse_engines("bitnet_ref,bitnet_ref")
    with pytest.raises(BackendError, match="expected two of bitnet_ref, llama.cpp, transformers"):
        K.parse_engines("bitnet_ref,vllm")


# -- end to end -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """Generated text: the sentences cycled, enough for 3 chunks of CTX tokens on the tiny model's vocabulary."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(SENTENCES[i % len(SENTENCES)] for i in range(12)) + "\n", encoding="utf-8")
    return path


def _run(tmp_path, corpus_file, *extra: str) -> tuple[int, dict, dict]:
    status = R.main(["--corpus", str(corpus_file), "--ctx", str(CTX), "--chunks", "3", "--out", str(tmp_path),
                     *extra])
    (path,) = records.list_runs(tmp_path, kind=K.KIND)
    meta, tables = records.read_run(path)
    return status, meta, tables


def test_bitnet_profile_against_llama_cpp(tmp_path, corpus_file, capsys):
    status, meta, tables = _run(tmp_path, corpus_file)
    out = capsys.readouterr().out
    assert status == 0 and meta["complete"] and meta["verdict"] == "ok", out
    assert meta["engines"] == {"base": "llama.cpp", "other": "bitnet_ref[bitnet]"}
    assert meta["model"]["sha256"] == file_sha256(K.default_model())
    assert set(meta["backends"]) == {"llama.cpp", "bitnet_ref"} and meta["n_chunks"] == 3
    tok = tables["tokens"]
    assert len(tok) == 3 * (CTX - 1 - CTX // 2) and list(tok.columns) == ["chunk", "position", "token", *K.FIELDS]
    assert tok["position"].min() == CTX // 2 and tok["position"].max() == CTX - 2
    s = tables["summary"].set_index("stat")["value"]
    assert 0 < s["kld_mean"] < 0.01 and s["same_top"] > 80 and s["kld_max"] >= s["kld_p99"] >= s["kld_median"]
    np.testing.assert_allclose(s["kld_mean"], tok["kld"].mean(), rtol=1e-12)
    np.testing.assert_allclose(s["ppl_base"], np.exp(tok["nll_base"].mean()), rtol=1e-12)
    assert len(tables["chunks"]) == 3
    assert "Mean KLD" in out and "chunk 3/3" in out and "PPL(bitnet_ref[bitnet])" in out
    report = (meta_path := records.list_runs(tmp_path, kind=K.KIND)[0]) / "report.html"
    html = report.read_text()
    assert all(f'id="{sid}"' in html for sid in ("verdict", "statistics", "distribution", "chunks", "provenance"))
    assert html.count("data:image/png;base64,") == 2 and "Same top p %" in html
    assert meta_path.name in (tmp_path / "index.html").read_text()


def test_ggml_profile_is_bit_exact_with_llama_cpp(tmp_path, corpus_file):
    """TQ2_0 under the ggml profile gives llama.cpp's logits bit for bit: KLD exactly 0, same top token everywhere;
    --max-kld 0 then passes."""
    status, meta, tables = _run(tmp_path, corpus_file, "--numerics", "ggml", "--max-kld", "0", "--no-report")
    assert status == 0 and meta["verdict"] == "pass"
    tok = tables["tokens"]
    assert (tok["kld"] == 0).all() and tok["top1"].all() and (tok["nll_base"] == tok["nll_other"]).all()
    s = tables["summary"].set_index("stat")["value"]
    assert s["kld_mean"] == 0 and s["kld_max"] == 0 and s["same_top"] == 100 and s["ppl_base"] == s["ppl_other"]
    assert meta["build"]["emulated_simd"] and not (tmp_path / "index.html").exists()


def test_max_kld_gate_fails(tmp_path, corpus_file, capsys):
    status, meta, _ = _run(tmp_path, corpus_file, "--max-kld", "1e-12", "--ctx", "16", "--no-report")
    assert status == 1 and meta["verdict"] == "fail" and meta["n_ctx"] == 16
    assert "> --max-kld 1e-12" in capsys.readouterr().out


class CrashOnSecondChunk(llama_backend.LlamaCppBackend):
    """llama.cpp that dies with SIGSEGV when asked for its second chunk (built in the child by the test below)."""

    def __init__(self, path, **kwargs):
        self.chunks = 0
        super().__init__(path, **kwargs)

    def eval(self, tokens):
        self.chunks += len(tokens) > 1
        if self.chunks == 2:
            print("about to crash on chunk 2", flush=True)
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().eval(tokens)


def test_child_crash_is_an_error_with_records_kept(tmp_path, corpus_file, capsys, monkeypatch):
    monkeypatch.setitem(K.ISOLATED, "llama.cpp", f"{__name__}:CrashOnSecondChunk")
    status, meta, tables = _run(tmp_path, corpus_file)
    out = capsys.readouterr().out
    assert status == 1 and meta["complete"] and meta["verdict"] == "error"
    assert "llama.cpp died with SIGSEGV during eval" in meta["error"] and "about to crash" in meta["error_tail"]
    assert "Traceback" not in out and "ERROR" in out and "about to crash on chunk 2" in out
    assert len(tables["chunks"]) == 1 and len(tables["tokens"]) == CTX - 1 - CTX // 2
    html = (records.list_runs(tmp_path, kind=K.KIND)[0] / "report.html").read_text()
    assert "ERROR" in html and "SIGSEGV" in html


def test_unfinished_run_renders_from_journals(tmp_path):
    stats = K.token_stats(*_random_logits(31, 16, seed=4))
    rows = K.summarize(stats, "llama.cpp", "bitnet_ref[bitnet]")
    rec = K.Recorder(tmp_path, {"engines": {"base": "llama.cpp", "other": "bitnet_ref[bitnet]"}, "n_chunks": 3})
    rec.add(0, stats, list(range(CTX)), K.chunk_row(0, stats, [0.1, 0.2]), rows)
    meta, tables = records.read_run(rec.run.path)
    assert "summary" not in tables and set(tables) == {"tokens", "chunks"}
    html = render_corpus(meta, tables)
    assert "INCOMPLETE" in html and "after 1 of 3 chunks" in html and "Mean KLD" in html
    assert build_report(rec.run.path).is_file()


# -- errors ---------------------------------------------------------------------------------------------------------


def _error_line(capsys) -> str:
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_corpus_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert R.main(["--corpus", str(missing), "--out", str(tmp_path)]) == 1
    assert _error_line(capsys) == f"error: {missing}: cannot read: No such file or directory"
    assert not (tmp_path / K.KIND).exists()


def test_same_engine_twice_is_one_line(tmp_path, corpus_file, capsys):
    assert R.main(["--corpus", str(corpus_file), "--engines", "llama.cpp,llama.cpp", "--out", str(tmp_path)]) == 1
    assert _error_line(capsys) == "error: both engines are 'llama.cpp'; a cross-check needs two engines"


def test_llama_cpp_on_i2_s_is_an_error_naming_why(tmp_path, corpus_file, capsys):
    model = cached_model(preset="tiny", fmt="i2_s")
    assert R.main(["--corpus", str(corpus_file), "--model", str(model), "--out", str(tmp_path)]) == 1
    line = _error_line(capsys)
    assert line.startswith(f"error: llama.cpp cannot load {model}: it holds I2_S weights"), line


def test_non_utf8_corpus_and_bad_ctx(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    assert R.main(["--corpus", str(bad), "--out", str(tmp_path)]) == 1
    assert "cannot read: not UTF-8 text (byte 3" in _error_line(capsys)
    bad.write_text("fine", encoding="utf-8")
    assert R.main(["--corpus", str(bad), "--ctx", "100000", "--out", str(tmp_path)]) == 1
    assert "--ctx 100000: a chunk needs 4 to 256 tokens" in _error_line(capsys)
