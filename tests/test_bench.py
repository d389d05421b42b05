"""bench: roofline byte counting, bandwidth, summary statistics, baseline regression logic, a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import cases as C
from bench import roofline as R
from bench import run as B
from bench import stats as S
from bitnet_ref import formats
from bitnet_ref.config import ModelConfig
from bitnet_ref.constants import TENSOR_OUTPUT, TENSOR_TOKEN_EMBD, GGMLType
from reports.records import list_runs, read_run

FIXTURES = Path(__file__).parent / "fixtures" / "records"
TERNARY_2B4T = 2_084_044_800  # docs/PERFORMANCE.md §1: ternary weights of BitNet b1.58 2B-4T


def config_2b4t(tied: bool = True) -> ModelConfig:
    """ModelConfig of the 2B-4T shapes (no file needed)."""
    return ModelConfig(arch="bitnet", n_vocab=128256, n_ctx=4096, n_embd=2560, n_layer=30, n_ff=6912, n_head=20,
                       n_head_kv=5, head_dim=128, n_rot=128, rope_base=500000.0, rope_neox=True, rms_eps=1e-5,
                       ffn_act="silu", ffn_act_source="arch", tied_output=tied, bos_id=128000, eos_id=128001)


def test_roofline_2b4t_matches_performance_md() -> None:
    """1.178 GB/token (2-bit ternary + tied F16 head), 76.8 KB of f16 KV per position, ≈ 30 tok/s at 36 GB/s."""
    tensors = R.planned_tensors(config_2b4t().expected_tensors(), GGMLType.I2_S, GGMLType.F16)
    n_ternary = sum(int(np.prod(t.shape)) for t in tensors if t.type == GGMLType.I2_S)
    assert n_ternary == TERNARY_2B4T
    tb = R.token_bytes(tensors)
    assert tb.ternary == TERNARY_2B4T // 4 + 210 * 32  # 2 bits each + one 32-byte scale trailer per matrix
    assert tb.head == 128256 * 2560 * 2
    assert round((tb.ternary + tb.head) / 1e9, 3) == 1.178
    assert tb.kv_per_pos == 76_800
    assert tb.other == 30 * (3 * 2560 + 6912) * 4 + 2560 * 4  # f32 norms (the tied head holds the embedding row)
    assert 30 <= R.bound_tok_s(tb.weights, 36) < 31  # docs/PERFORMANCE.md §1: ≈ 30 tok/s at 36 GB/s
    assert 51 <= R.bound_tok_s(tb.weights, 62) <= 54
    tq2 = R.token_bytes(R.planned_tensors(config_2b4t().expected_tensors(), GGMLType.TQ2_0, GGMLType.F16))
    assert tq2.ternary == TERNARY_2B4T // 256 * 66  # TQ2_0: 2.0625 bits per weight
    assert tq2.at(100) == tq2.weights + 100 * 76_800


def test_roofline_untied_head_reads_one_embedding_row() -> None:
    shapes = config_2b4t(tied=False).expected_tensors()
    assert TENSOR_OUTPUT in shapes
    tb = R.token_bytes(R.planned_tensors(shapes, GGMLType.TQ2_0, GGMLType.F16))
    tied = R.token_bytes(R.planned_tensors(config_2b4t().expected_tensors(), GGMLType.TQ2_0, GGMLType.F16))
    assert tb.head == tied.head and tb.ternary == tied.ternary
    assert tb.other == tied.other + 2560 * 2  # plus one f16 embedding row


def test_roofline_of_a_file_counts_stored_bytes(tmp_path: Path) -> None:
    from bitnet_ref.gguf_reader import read_gguf
    from bitnet_ref.synth import synth_model

    path = synth_model(tmp_path / "tiny.gguf", preset="tiny", fmt="tq1_0")
    with read_gguf(path) as gguf:
        tensors = R.tensors_of(gguf)
        tb = R.token_bytes(tensors)
        embd = gguf.tensors[TENSOR_TOKEN_EMBD]
        ternary = sum(t.nbytes for t in gguf.tensors.values() if t.type in formats.TERNARY_TYPES)
    assert tb.ternary == ternary and tb.head == embd.nbytes
    assert tb.kv_per_pos == 2 * 2 * (2 * 64) * 2  # layers × (K, V) × n_head_kv·head_dim × f16


def test_bandwidth_measures_something() -> None:
    bw = R.measure_bandwidth(1, nbytes=16 << 20, passes=3)
    assert len(bw.samples) == 3 and bw.median > 0.5 and bw.best >= bw.median
    row = R.summarize([bw])[0]
    assert row["threads"] == 1 and row["min_gbps"] <= row["median_gbps"] <= row["max_gbps"]


def test_phases_are_named_by_their_capped_lengths() -> None:
    s = C.Settings()
    assert [p.name for p in s.phases(4096)] == ["pp128", "pp512", "tg128", "ttft"]
    tiny = s.phases(256)
    assert [(p.name, p.n) for p in tiny] == [("pp128", 128), ("pp256", 256), ("tg128", 128), ("ttft", 0)]
    assert C.context_for(tiny, 256) == 256 and C.context_for(s.phases(4096), 4096) == 512
    req = C.requests(tiny, n_vocab=512, bos=510, seed=0)
    assert req["pp256"]["tokens"][:128] == req["pp128"]["tokens"] and req["pp128"]["tokens"][0] == 510
    assert len(req["tg128"]["tokens"]) == 128 and req["ttft"]["kind"] == "ttft"


def _samples() -> pd.DataFrame:
    """Hand-made samples: two engines, two phases, a slow warm-up that must not count."""
    rows = []
    for engine, speed in (("bitnet_ref", 50.0), ("llama.cpp", 100.0)):
        for rep, jitter in enumerate((0.1, 0.9, 1.0, 1.1)):
            for metric, unit in (("tg128", "tok/s"), ("ttft", "ms")):
                value = speed * jitter if unit == "tok/s" else 1000 / (speed * jitter)
                rows.append({"case": "tiny/tq2_0", "model": "tiny", "fmt": "tq2_0", "threads": 2, "engine": engine,
                             "engine_threads": 2, "file": "same", "metric": metric, "unit": unit, "rep": rep,
                             "warmup": rep == 0, "value": value, "wall_s": 128 / value})
    return pd.DataFrame(rows)


def test_summarize_excludes_warmup_and_computes_speed_ratio() -> None:
    s = S.summarize(_samples()).set_index(["engine", "metric"])
    assert s.loc[("bitnet_ref", "tg128"), "n"] == 3
    assert s.loc[("bitnet_ref", "tg128"), "median"] == pytest.approx(50.0)
    assert s.loc[("bitnet_ref", "tg128"), "min"] == pytest.approx(45.0)
    assert s.loc[("bitnet_ref", "tg128"), "ratio"] == pytest.approx(0.5)
    assert s.loc[("bitnet_ref", "ttft"), "ratio"] == pytest.approx(0.5)  # ms: slower = longer = ratio < 1
    assert s.loc[("llama.cpp", "tg128"), "ratio"] == pytest.approx(1.0)


def _fixture_summary() -> pd.DataFrame:
    base = [r for r in list_runs(FIXTURES, "bench") if not (r / "regressions.csv").exists()][0]
    return read_run(base)[1]["summary"]


def test_baseline_unchanged_passes_and_planted_slowdown_is_flagged() -> None:
    base = _fixture_summary()
    assert S.compare_to_baseline(base, base).empty
    slow = base.copy()
    ref_tg = (slow["engine"] == "bitnet_ref") & slow["metric"].str.startswith("tg")
    slow.loc[ref_tg, ["median", "min", "max", "ratio"]] *= 0.5  # bitnet_ref decodes at half speed
    reg = S.compare_to_baseline(slow, base, tolerance=0.2, abs_tolerance=0.4)
    assert set(reg["metric"].str[:2]) == {"tg"} and set(reg["engine"]) == {"bitnet_ref"}
    assert (reg["change_pct"].round(6) == -50).all()
    flagged = reg[reg["status"] == "regression"]
    assert set(flagged["kind"]) == {"ratio", "absolute"} and "small/tq2_0" in set(flagged["case"])
    assert (flagged["noise_pct"] < 50).all() and (reg.loc[reg["status"] != "regression", "noise_pct"] >= 50).all()
    small = base.copy()
    small.loc[ref_tg, ["median", "ratio"]] *= 0.9  # within tolerance: not a regression
    assert S.compare_to_baseline(small, base).empty
    ttft = base.copy()
    ref_ttft = (ttft["engine"] == "bitnet_ref") & (ttft["metric"] == "ttft")
    ttft.loc[ref_ttft, "median"] *= 3  # three times longer to the first token
    assert set(S.compare_to_baseline(ttft, base)["metric"]) == {"ttft"}


def test_fixture_regression_run_flags_the_planted_slowdown() -> None:
    """The fixture pair: a recorded run, and the same samples with bitnet_ref's decode halved, compared by bench."""
    flagged = [r for r in list_runs(FIXTURES, "bench") if (r / "regressions.csv").exists()]
    assert len(flagged) == 1
    meta, tables = read_run(flagged[0])
    assert meta["verdict"] == "regression" and "planted slowdown" in meta["notes"][0]
    reg = tables["regressions"]
    assert set(reg["engine"]) == {"bitnet_ref"} and set(reg["metric"].str[:2]) == {"tg"}
    assert set(reg.loc[reg["status"] == "regression", "kind"]) == {"ratio", "absolute"}
    assert S.compare_to_baseline(tables["summary"], _fixture_summary()).shape == reg.shape


def test_drop_within_the_repetitions_spread_is_inconclusive() -> None:
    """A busy host: the baseline's repetitions spread over 80 %, so a 30 % drop is not called a regression."""
    row = {"case": "tiny/tq2_0", "threads": 2, "engine": "bitnet_ref", "metric": "tg128", "unit": "tok/s"}
    base = pd.DataFrame([{**row, "median": 100.0, "ratio": 0.5, "spread": 0.8, "ratio_spread": 0.9}])
    quiet = pd.DataFrame([{**row, "median": 100.0, "ratio": 0.5, "spread": 0.05, "ratio_spread": 0.1}])
    cur = pd.DataFrame([{**row, "median": 70.0, "ratio": 0.35, "spread": 0.05, "ratio_spread": 0.1}])
    assert set(S.compare_to_baseline(cur, base)["status"]) == {"inconclusive"}
    reg = S.compare_to_baseline(cur, quiet)
    assert list(reg["kind"]) == ["ratio"] and list(reg["status"]) == ["regression"]  # absolute: within 40 %
    assert B._verdict(reg, [], cur) == "regression" and B._verdict(reg.iloc[0:0], [], cur) == "pass"


def test_cli_rejects_unknown_names() -> None:
    with pytest.raises(SystemExit):
        B.main(["--formats", "q4_k"])


@pytest.mark.llama
def test_tiny_bench_end_to_end(tmp_path: Path) -> None:
    """One repetition of a shortened tiny run: both engines in their own processes, records, report, exit 0."""
    pytest.importorskip("llama_cpp")
    args = ["--quick", "--formats", "tq2_0", "--reps", "1", "--threads", "1", "--prompt", "32", "--gen", "16",
            "--engines", "bitnet_ref,llama.cpp", "--bandwidth-mb", "32", "--out", str(tmp_path)]
    assert B.main(args) == 0
    (run,) = list_runs(tmp_path, "bench")
    meta, tables = read_run(run)
    assert meta["verdict"] == "pass" and meta["notes"] == []
    s = tables["summary"]
    assert set(s["engine"]) == {"bitnet_ref", "llama.cpp"} and set(s["metric"]) == {"pp32", "tg16", "ttft"}
    assert (s["median"] > 0).all() and s["ratio"].notna().all()
    assert s.loc[s["metric"] == "tg16", "roofline_pct"].notna().all()
    st = tables["startup"]
    assert (st["peak_rss_mb"] > 10).all() and (st["load_s"] > 0).all()
    samples = tables["samples"]
    assert len(samples) == 2 * 3 * 2  # engines × phases × (warm-up + 1 rep)
    llama = samples[samples["engine"] == "llama.cpp"]
    assert (llama["counter_s"] > 0.5 * llama["wall_s"]).all()  # llama.cpp itself timed the work of every phase
    assert (run / "report.html").is_file() and (tmp_path / "index.html").is_file()
    json.loads((run / "run.json").read_text())
