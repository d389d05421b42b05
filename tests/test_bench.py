"""bench: roofline byte counting, bandwidth, summary statistics, baseline regression logic, progress output, several
numerics profiles in one run, the kernel micro-benchmark's table, a tiny end-to-end run."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from bench import cases as C
from bench import kernels as K
from bench import roofline as R
from bench import run as B
from bench import stats as S
from bench import worker as W
from bitnet_ref import formats
from bitnet_ref.config import ModelConfig
from bitnet_ref.constants import TENSOR_OUTPUT, TENSOR_TOKEN_EMBD, GGMLType
from reports.records import list_runs, read_run

FIXTURES = Path(__file__).parent / "fixtures" / "records"
LINE = re.compile(r"^\d\d:\d\d:\d\d \[(\d+)/(\d+)\] (.+)$")  # a finished step, as a non-terminal shows it
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


def test_step_count_covers_loads_warmups_repetitions_and_bandwidth() -> None:
    s = C.Settings(threads=(1, 2), reps=2, engines=(C.REF, C.LLAMA), numerics=("ggml", "bitnet"))
    assert s.steps(4) == 3 * (1 + 3 * 4)  # 3 engines × (load + (warm-up + 2 reps) × 4 phases)
    # 2 cases (4 and 3 phases) × 2 thread counts, plus the bandwidth at the start and at the end
    assert B.total_steps([4, 3], s) == 2 * (3 * (1 + 3 * 4) + 3 * (1 + 3 * 3)) + 2
    assert B.total_steps([4], C.Settings(threads=(2,), reps=5, engines=(C.REF,))) == 1 + 6 * 4 + 2


def test_engines_one_per_numerics_profile() -> None:
    one = C.Settings(numerics=("ggml",)).engine_specs()
    assert [e.name for e in one] == ["bitnet_ref", "llama.cpp", "llama.cpp[fa=off]"]  # old records' name
    assert [e.numerics for e in one] == ["ggml", None, None]
    two = C.Settings(numerics=("ggml", "bitnet")).engine_specs()
    assert [e.name for e in two] == ["bitnet_ref[ggml]", "bitnet_ref[bitnet]", "llama.cpp", "llama.cpp[fa=off]"]
    assert [(e.backend, e.numerics) for e in two[:2]] == [(C.REF, "ggml"), (C.REF, "bitnet")]
    assert C.engine_spec("bitnet_ref[bitnet]") == two[1] and C.engine_spec("llama.cpp[fa=off]") == two[3]
    assert C.engine_spec("bitnet_ref").backend == C.REF
    assert [C.is_ref(e.name) for e in two] == [True, True, False, False] and not C.is_ref("bitnet_refx")


def test_numerics_profiles_are_validated(capsys: pytest.CaptureFixture) -> None:
    def numerics(text: str) -> tuple[str, ...]:
        return B.settings_from(B.parser().parse_args(["--numerics", text])).numerics

    assert numerics("ggml") == ("ggml",) and numerics("ggml,bitnet") == ("ggml", "bitnet")
    assert set(numerics("all")) == {"ggml", "bitnet"} and numerics("bitnet,bitnet") == ("bitnet",)
    with pytest.raises(SystemExit) as e:
        B.main(["--numerics", "ggml,fast"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "unknown numerics profiles ['fast']" in err[-1] and "'ggml'" in err[-1]
    with pytest.raises(SystemExit):
        B.main(["--numerics", ","])


class FakeWorker:
    """A stand-in engine process: each engine takes its own time per phase; llama.cpp[fa=off] fails to load."""

    WALL = {"bitnet_ref[ggml]": 1.0, "bitnet_ref[bitnet]": 2.0, "llama.cpp": 0.5}

    def __init__(self, engine: C.EngineSpec, threads: int):
        self.engine, self.threads = engine, threads
        self.ready = {"import_s": 0.1, "load_s": 0.25, "rss_after_load_mb": 1.0, "describe": {"name": engine.name}}

    @classmethod
    def start(cls, engine: C.EngineSpec, path: Path, threads: int, n_ctx: int, extra_bufts: bool) -> FakeWorker:
        if engine.name == C.LLAMA_FA_OFF:
            raise W.EngineError("planted load failure")
        return cls(engine, threads)

    def run(self, request: dict) -> dict:
        return {"wall_s": self.WALL[self.engine.name], "n": request.get("n", 20), "counter_s": float("nan")}

    def stop(self) -> dict:
        return {"peak_rss_mb": 2.0}

    def close(self) -> None:
        pass


@pytest.fixture
def tiny_case() -> C.Case:
    from bitnet_ref.synth import cached_model

    path = Path(cached_model(preset="tiny", fmt="tq2_0", arch="bitnet", seed=0))
    return C.Case("tiny", "tq2_0", path, path)


def test_two_profiles_measured_side_by_side_with_plain_progress_lines(monkeypatch, tiny_case) -> None:
    """Without a terminal every step is one timestamped line with its figure; a load that fails is counted, its
    engine's phases are skipped in the count; both profiles get ratios against llama.cpp and a roofline row."""
    monkeypatch.setattr(B, "Worker", FakeWorker)
    settings = C.Settings(threads=(1,), reps=2, prompt_tokens=(32,), gen_tokens=16, numerics=("ggml", "bitnet"))
    out = io.StringIO()
    with B.Reporter(Console(file=out, width=80)) as progress:
        assert progress.bar is None  # not a terminal: no bar, lines
        progress.plan(B.total_steps([3], settings))
        res = B.measure_case(tiny_case, 1, settings, progress)
    assert progress.done == settings.steps(3) == 4 * (1 + 3 * 3)
    lines = out.getvalue().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed) and [int(m[1]) for m in parsed] == list(range(1, 4 + 3 * 3 * 3 + 1))
    assert {m[2] for m in parsed} == {str(progress.total)} and progress.total == 42
    steps = [m[3] for m in parsed]
    assert steps[:4] == ["tiny/tq2_0 1T load bitnet_ref[ggml]: 0.25 s", "tiny/tq2_0 1T load bitnet_ref[bitnet]: 0.25 s",
                         "tiny/tq2_0 1T load llama.cpp: 0.25 s", "tiny/tq2_0 1T load llama.cpp[fa=off]: failed"]
    assert steps[4] == "tiny/tq2_0 1T warm-up pp32 bitnet_ref[ggml]: 32 tok/s"
    assert "tiny/tq2_0 1T rep 2/2 tg16 bitnet_ref[bitnet]: 8 tok/s" in steps
    assert steps[-1] == "tiny/tq2_0 1T rep 2/2 ttft llama.cpp: 500 ms"
    assert res.notes == ["tiny/tq2_0 1T: llama.cpp[fa=off] skipped: planted load failure"]
    s = S.summarize(pd.DataFrame(res.samples)).set_index(["engine", "metric"])
    assert s.loc[("bitnet_ref[ggml]", "tg16"), "ratio"] == pytest.approx(0.5)
    assert s.loc[("bitnet_ref[bitnet]", "tg16"), "ratio"] == pytest.approx(0.25)
    assert s.loc[("bitnet_ref[bitnet]", "ttft"), "ratio"] == pytest.approx(0.25)
    roof = S.roofline_tables([tiny_case], s.reset_index(), pd.DataFrame([{"threads": 1, "median_gbps": 10.0}]))
    assert set(roof["engine"]) == set(FakeWorker.WALL) and (roof["roofline_pct"] > 0).all()
    assert roof.set_index("engine").loc["bitnet_ref[ggml]", "decode_tok_s"] == pytest.approx(16.0)


def test_progress_bar_on_a_terminal_counts_steps() -> None:
    with B.Reporter(Console(file=io.StringIO(), force_terminal=True)) as progress:
        progress.plan(3)
        with progress.step("tiny/tq2_0 2T rep 1/5 tg128 bitnet_ref[ggml]") as step:
            step.figure = "12.3 tok/s"
        with pytest.raises(W.EngineError), progress.step("tiny/tq2_0 2T rep 1/5 tg128 llama.cpp"):
            raise W.EngineError("planted")
        task = progress.bar.tasks[0]
        assert (task.completed, task.total) == (2, 3) and "llama.cpp" in task.description
        progress.reach(3)
        assert progress.bar.tasks[0].finished


def test_baseline_check_covers_every_profile() -> None:
    rows = []
    for engine, median in (("bitnet_ref[ggml]", 50.0), ("bitnet_ref[bitnet]", 40.0), ("llama.cpp", 100.0)):
        rows.append({"case": "tiny/tq2_0", "threads": 2, "engine": engine, "metric": "tg128", "unit": "tok/s",
                     "median": median, "ratio": median / 100, "spread": 0.01, "ratio_spread": 0.02})
    base = pd.DataFrame(rows)
    assert S.compare_to_baseline(base, base).empty
    slow = base.copy()
    slow.loc[slow["engine"] == "bitnet_ref[bitnet]", ["median", "ratio"]] *= 0.5
    reg = S.compare_to_baseline(slow, base)
    assert set(reg["engine"]) == {"bitnet_ref[bitnet]"} and set(reg["kind"]) == {"ratio", "absolute"}
    assert set(reg["status"]) == {"regression"}
    single = base.assign(engine=base["engine"].replace({"bitnet_ref[bitnet]": "bitnet_ref"}))
    assert S.compare_to_baseline(slow, single).empty  # matched by name: the renamed profile has no baseline


def test_bitnet_ref_description_says_profile_isa_and_cpu_features() -> None:
    from bitnet_ref.kernels import ternary

    backend = SimpleNamespace(describe=lambda: {"backend": "bitnet_ref", "kernel_isa": ternary.kernel_isa()})
    desc = W._describe(backend, C.engine_spec("bitnet_ref[bitnet]"))
    assert desc["numerics_profile"] == "bitnet" and desc["engine"]["numerics"] == "bitnet"
    assert desc["kernel_isa"] == ternary.kernel_isa() and desc["kernel_isa"] in desc["kernel_isas_available"]
    assert set(desc["cpu_features"]) == set(W.CPU_FEATURES)
    assert desc["cpu_features"]["avx2"] == ("avx2" in desc["kernel_isas_available"])


def test_kernel_table_shows_percent_of_the_bus() -> None:
    header = K.decode_header(["portable", "avx2"])
    row = K.decode_row("tq2_0", "q8k", 2560, 6912, 2, [5.0, 12.5], 25.0)
    assert row.split()[-4:] == ["5.0", "20%", "12.5", "50%"]
    assert header.split()[-4:] == ["portable", "%bus", "avx2", "%bus"] and len(header) == len(row)
    assert K.bus_line({1: 12.04, 2: 21.96}) == "bus (streaming read, median): 1T 12.0 GB/s, 2T 22.0 GB/s"


@pytest.mark.llama
def test_tiny_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One repetition of a shortened tiny run, both numerics profiles: every engine in its own process, a line per
    step, records that say what ran, report, exit 0."""
    pytest.importorskip("llama_cpp")
    args = ["--quick", "--formats", "tq2_0", "--reps", "1", "--threads", "1", "--prompt", "32", "--gen", "16",
            "--engines", "bitnet_ref,llama.cpp", "--numerics", "ggml,bitnet", "--bandwidth-mb", "32",
            "--out", str(tmp_path)]
    assert B.main(args) == 0
    out = capsys.readouterr().out
    steps = [m for m in map(LINE.match, out.splitlines()) if m]
    assert len(steps) == int(steps[0][2]) == 3 * (1 + 2 * 3) + 2  # engines × (load + 2 × phases) + bandwidth × 2
    assert "kernel ISA" in out and "llama.cpp: CPU :" in out
    (run,) = list_runs(tmp_path, "bench")
    meta, tables = read_run(run)
    assert meta["verdict"] == "pass" and meta["notes"] == []
    s = tables["summary"]
    assert set(s["engine"]) == {"bitnet_ref[ggml]", "bitnet_ref[bitnet]", "llama.cpp"}
    assert set(s["metric"]) == {"pp32", "tg16", "ttft"}
    assert (s["median"] > 0).all() and s["ratio"].notna().all()
    assert s.loc[s["metric"] == "tg16", "roofline_pct"].notna().all()
    st = tables["startup"]
    assert (st["peak_rss_mb"] > 10).all() and (st["load_s"] > 0).all()
    samples = tables["samples"]
    assert len(samples) == 3 * 3 * 2  # engines × phases × (warm-up + 1 rep)
    llama = samples[samples["engine"] == "llama.cpp"]
    assert (llama["counter_s"] > 0.5 * llama["wall_s"]).all()  # llama.cpp itself timed the work of every phase
    engines = meta["engines"]
    for profile in ("ggml", "bitnet"):
        desc = engines[f"tiny/tq2_0 1T bitnet_ref[{profile}]"]
        assert desc["numerics_profile"] == desc["numerics"]["name"] == profile
        assert desc["kernel_isa"] in desc["kernel_isas_available"] and "avx2" in desc["cpu_features"]
    desc = engines["tiny/tq2_0 1T llama.cpp"]
    assert desc["system_info"].startswith("CPU :") and desc["build"]["system_info"] == desc["system_info"]
    assert (run / "report.html").is_file() and (tmp_path / "index.html").is_file()
    assert "bitnet_ref[bitnet]" in (run / "report.html").read_text()
    json.loads((run / "run.json").read_text())
