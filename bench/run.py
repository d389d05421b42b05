"""Side-by-side timing of bitnet_ref and llama.cpp on the same GGUF, the same threads and the same tokens.

Method: each engine runs in its own process (crossval.isolated, the mechanism crossval runs its reference with: a
crash or hang is an error for that engine, and its peak RSS is its own), loads once, runs one
warm-up of every phase (the first call pays numba's compile or cache load), then `reps` repetitions in which the
engines alternate phase by phase (A B C A B C …) so that the host's bandwidth swings hit every engine alike.
Phases: prefill of 128 and 512 tokens (logits of the last position only), decode of 128 single-token steps, and
time to first token (tokenize a text prompt + prefill). Records go to out/bench/<run-id>/ (reports.records).
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench import roofline
from bitnet_ref.errors import BitnetRefError, ConfigError
from crossval.isolated import ChildError, Isolated

REF = "bitnet_ref"
LLAMA = "llama.cpp"
LLAMA_FA_OFF = "llama.cpp[fa=off]"
ENGINE_NAMES = (REF, LLAMA, LLAMA_FA_OFF)
PRESETS = ("tiny", "small", "2b4t")
FORMATS = ("tq2_0", "tq1_0", "f16", "i2_s")
DEFAULT_MODELS = ("small", "2b4t")
DEFAULT_FORMATS = ("tq2_0", "i2_s")
TOLERANCE = 0.20  # a median more than 20 % worse than the baseline's is a regression
NOISY = 0.5  # interquartile range / median above this: the host was busy during the repetitions
READY_TIMEOUT_S = 900.0  # loading a 2B model and compiling every kernel cold on 2 cores
STEP_TIMEOUT_S = 900.0
TTFT_TEXT = (
    "The quick brown fox jumps over the lazy dog. A ternary network stores each weight as minus one, zero or one, "
    "so a matrix product becomes additions and subtractions, and the speed of decoding is set by how fast the "
    "machine can stream the weights from memory. "
)


@dataclass(frozen=True)
class EngineSpec:
    """One engine configuration: its display name, its backend and llama.cpp's flash-attention setting."""

    name: str
    backend: str  # "bitnet_ref" | "llama.cpp"
    flash_attn: str | None = None  # llama.cpp: "auto" (its default, fastest) | "off" (the crossval configuration)


BACKEND_MODULES = {  # imported (and timed) before the model loads
    REF: ("crossval.backends", "bitnet_ref.model"),
    LLAMA: ("crossval.llama_cpp_backend",),
}
ENGINES = {
    REF: EngineSpec(REF, REF),
    LLAMA: EngineSpec(LLAMA, LLAMA, "auto"),
    LLAMA_FA_OFF: EngineSpec(LLAMA_FA_OFF, LLAMA, "off"),
}


@dataclass(frozen=True)
class Phase:
    """One timed phase: prefill of n tokens, decode of n steps, or time to first token of a text prompt."""

    name: str
    kind: str  # "prefill" | "decode" | "ttft"
    n: int

    @property
    def unit(self) -> str:
        """tok/s for throughput phases, ms for time to first token."""
        return "ms" if self.kind == "ttft" else "tok/s"


@dataclass(frozen=True)
class Case:
    """One model file: preset (or 'user') and format, the file bitnet_ref reads and the one llama.cpp reads."""

    model: str
    fmt: str
    path: Path
    llama_path: Path

    @property
    def name(self) -> str:
        """'<model>/<fmt>'."""
        return f"{self.model}/{self.fmt}"

    def file_for(self, engine: EngineSpec) -> Path:
        """The GGUF an engine reads."""
        return self.path if engine.backend == REF else self.llama_path

    def file_note(self, engine: EngineSpec) -> str:
        """'same', or which twin llama.cpp reads instead (I2_S: its lossless TQ2_0 twin)."""
        return "same" if self.file_for(engine) == self.path else "TQ2_0 twin of the I2_S file"


@dataclass(frozen=True)
class Settings:
    """Everything a run measures with; written into run.json."""

    threads: tuple[int, ...] = (2,)
    reps: int = 5
    prompt_tokens: tuple[int, ...] = (128, 512)
    gen_tokens: int = 128
    engines: tuple[str, ...] = ENGINE_NAMES
    numerics: str = "ggml"
    extra_bufts: bool = True  # llama.cpp's extra buffer types (CPU_REPACK, AMX): on, as people run it
    ref_threads: int | None = None  # override bitnet_ref's threads only (e.g. to plant a slowdown)
    seed: int = 0
    bandwidth_bytes: int = roofline.BUFFER_BYTES

    def phases(self, n_ctx: int) -> list[Phase]:
        """The phases, named by their token counts once capped to the model's context (tiny: pp512 -> pp256)."""
        lengths = dict.fromkeys(min(n, n_ctx) for n in self.prompt_tokens)
        out = [Phase(f"pp{n}", "prefill", n) for n in lengths]
        gen = min(self.gen_tokens, n_ctx)
        return out + [Phase(f"tg{gen}", "decode", gen), Phase("ttft", "ttft", 0)]


# ---------------------------------------------------------------- the engine process


def _open_backend(engine: EngineSpec, path: str, n_threads: int, numerics: str, n_ctx: int,
                  extra_bufts: bool) -> object:
    """Load one engine through the crossval backends, both with a KV cache of n_ctx positions."""
    if engine.backend == REF:
        from crossval.backends import BitnetRefBackend

        return BitnetRefBackend(path, numerics=numerics, n_threads=n_threads, n_ctx=n_ctx)
    from crossval.llama_cpp_backend import LlamaCppBackend

    backend = LlamaCppBackend(path, n_threads=n_threads, n_ctx=n_ctx, flash_attn=False, extra_bufts=extra_bufts,
                              echo_log=True)
    _timing_context(backend, n_ctx, engine.flash_attn)
    return backend


def _timing_context(backend: object, n_ctx: int, flash_attn: str | None) -> None:
    """Swap the crossval backend's context for a timing one: no eval callback (it costs a Python call per graph
    node), perf counters on; flash attention auto with llama.cpp's default batch sizes, or the crossval
    configuration (flash attention off, one ubatch per prompt). The weights' buffer types were read on the first
    decode of the crossval context."""
    import llama_cpp.llama_cpp as L

    cp = L.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_threads = cp.n_threads_batch = backend.n_threads
    cp.no_perf = False
    if flash_attn == "off":
        cp.n_batch = cp.n_ubatch = n_ctx
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    else:
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_AUTO
    ctx = L.llama_init_from_model(backend.model, cp)
    if not ctx:
        raise EngineError(f"llama.cpp: no timing context for {backend.path}")
    L.llama_free(backend.ctx)
    backend.ctx = ctx


def _llama_perf(backend: object, reset: bool) -> float:
    """llama.cpp's own time for the evals since the last reset (prompt + generation), in seconds."""
    import llama_cpp.llama_cpp as L

    if reset:
        L.llama_perf_context_reset(backend.ctx)
        return 0.0
    data = L.llama_perf_context(backend.ctx)
    return (data.t_p_eval_ms + data.t_eval_ms) / 1e3


def _describe(backend: object, engine: EngineSpec) -> dict:
    """The backend's description, corrected for the timing context bench put in place (llama.cpp)."""
    desc = backend.describe()
    if engine.backend == LLAMA:
        from crossval import llama_cpp_backend as LB
        from crossval.build import ReferenceBuild

        log = getattr(getattr(LB, "_Log", None), "lines", [])  # llama.cpp's log says what "auto" resolved to
        resolved = [line.strip() for line in log if "Flash Attention" in line]
        desc.update({"flash_attn_type": engine.flash_attn, "flash_attn_resolved": resolved[-1] if resolved else None,
                     "eval_callback": False, "perf_counters": True,
                     "build": ReferenceBuild.from_system_info(desc["system_info"]).describe()})
    return desc


def _proc_mb(field_name: str) -> float:
    """A memory figure of this process from /proc/self/status in MB (VmRSS now, VmHWM peak)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _compile_timer() -> object:
    """A numba listener that adds up the time of every JIT compilation from now on (cache loads excluded)."""
    from numba.core import event

    timer = event.TimingListener()
    event.register("numba:compile", timer)
    return timer


def _numba_stats(timer: object) -> dict:
    """Seconds numba spent compiling, and how many bitnet_ref functions were compiled vs loaded from its cache."""
    import sys

    from numba.core.registry import CPUDispatcher

    compiled = cached = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("bitnet_ref") or module is None:
            continue
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher) and obj.signatures:
                cached += sum(obj.stats.cache_hits.values())
                compiled += sum(obj.stats.cache_misses.values())
    seconds = timer.duration if timer.done else 0.0
    return {"compile_s": seconds, "kernels_compiled": compiled, "kernels_from_cache": cached}


def _run_phase(backend: object, msg: dict, is_llama: bool) -> dict:
    """Time one phase on a loaded backend. greedy(tokens, k) makes exactly k forward passes from an empty cache, the
    first over all of `tokens` (logits of the last position only), the rest one token each."""
    kind = msg["kind"]
    if is_llama:
        _llama_perf(backend, reset=True)
    t0 = time.perf_counter()
    if kind == "prefill":
        out, _ = backend.greedy(msg["tokens"], 1)
        n = len(msg["tokens"])
    elif kind == "decode":
        out, _ = backend.greedy(msg["tokens"][:1], msg["n"])  # n single-token forward passes
        n = msg["n"]
    else:
        ids = backend.tokenize(msg["text"], True)
        out, _ = backend.greedy(ids, 1)  # text -> ids -> prefill -> the first token
        n = len(ids)
    wall = time.perf_counter() - t0
    if len(out) != (msg["n"] if kind == "decode" else 1):
        raise EngineError(f"greedy returned {len(out)} tokens for a {kind} phase")
    return {"wall_s": wall, "n": n, "counter_s": _llama_perf(backend, reset=False) if is_llama else float("nan")}


class TimedEngine:
    """One engine loaded for timing, inside its own process (crossval.isolated runs it): the parent calls `ready`,
    then `run` per phase, then `final`."""

    def __init__(self, engine: EngineSpec, path: str, n_threads: int, numerics: str, n_ctx: int,
                 extra_bufts: bool):
        self.timer = _compile_timer() if engine.backend == REF else None
        self.is_llama = engine.backend == LLAMA
        t0 = time.perf_counter()
        for module in BACKEND_MODULES[engine.backend]:
            importlib.import_module(module)
        t1 = time.perf_counter()
        self.backend = _open_backend(engine, path, n_threads, numerics, n_ctx, extra_bufts)
        self.info = {"import_s": t1 - t0, "load_s": time.perf_counter() - t1, "rss_after_load_mb": _proc_mb("VmRSS"),
                     "describe": _describe(self.backend, engine)}

    def ready(self) -> dict:
        """Import and load times, RSS after load, the engine's description."""
        return self.info

    def run(self, msg: dict) -> dict:
        """Time one phase."""
        return _run_phase(self.backend, msg, self.is_llama)

    def final(self) -> dict:
        """Peak RSS and numba's compile/cache figures."""
        stats = _numba_stats(self.timer) if self.timer is not None else {}
        return {"peak_rss_mb": _proc_mb("VmHWM"), **stats}


class EngineError(RuntimeError):
    """An engine process failed to load, crashed, or timed out."""


@dataclass
class Worker:
    """The parent's handle on one engine process."""

    engine: EngineSpec
    threads: int
    child: Isolated
    ready: dict = field(default_factory=dict)

    @classmethod
    def start(cls, engine: EngineSpec, path: Path, threads: int, numerics: str, n_ctx: int,
              extra_bufts: bool) -> Worker:
        """Spawn the engine's process and wait until its model is loaded."""
        kwargs = {"engine": engine, "path": str(path), "n_threads": threads, "numerics": numerics, "n_ctx": n_ctx,
                  "extra_bufts": extra_bufts}
        try:
            child = Isolated("bench.run:TimedEngine", kwargs, name=engine.name, timeout=READY_TIMEOUT_S)
            worker = cls(engine, threads, child)
            worker.ready = worker._call("ready")
        except ChildError as err:
            raise EngineError(f"{engine.name} could not load {path}: {err}\n{err.tail}") from err
        return worker

    def _call(self, method: str, *args, timeout: float = STEP_TIMEOUT_S):
        """A call into the engine's process; its crash, hang or error is an EngineError."""
        try:
            return self.child.call(method, *args, timeout=timeout)
        except ChildError as err:
            raise EngineError(f"{self.engine.name} {method}: {err}\n{err.tail}") from err

    def run(self, request: dict) -> dict:
        """Run one phase in the engine's process and return its timing."""
        return self._call("run", request)

    def stop(self) -> dict:
        """Ask for the final figures (peak RSS, numba cache use) and end the process."""
        try:
            return self._call("final", timeout=60.0)
        finally:
            self.close()

    def close(self) -> None:
        """End the engine's process."""
        self.child.close()


# ---------------------------------------------------------------- cases and measurement


def _fmt_of(path: Path) -> str:
    """The weight format of a user's GGUF: its most common ternary matrix type, else its most common matrix type."""
    from bitnet_ref import formats
    from bitnet_ref.gguf_file import read_gguf

    with read_gguf(path) as gguf:
        matrices = [t.type for t in gguf.tensors.values() if len(t.shape) > 1]
        types = [t for t in matrices if t in formats.TERNARY_TYPES] or matrices
    return max(set(types), key=types.count).name.lower()


def _case(model: str, fmt: str, path: Path) -> Case:
    """A case; an I2_S file is read by llama.cpp through its lossless TQ2_0 twin."""
    if fmt == "i2_s":
        from bitnet_ref.synth import tq2_0_twin

        return Case(model, fmt, path, Path(tq2_0_twin(path)))
    return Case(model, fmt, path, path)


def build_cases(models: Sequence[str], fmts: Sequence[str], user_gguf: str | None = None) -> list[Case]:
    """The cases to measure: the user's GGUF (BITNET_GGUF) alone, else every preset × format, built once and cached."""
    if user_gguf:
        path = Path(user_gguf)
        return [_case("user", _fmt_of(path), path)]
    from bitnet_ref.synth import cached_model

    cases = []
    for model in models:
        for fmt in fmts:
            cases.append(_case(model, fmt, Path(cached_model(preset=model, fmt=fmt, arch="bitnet", seed=0))))
    return cases


def _config(path: Path) -> object:
    """ModelConfig of a GGUF (n_ctx, n_vocab, bos_id)."""
    from bitnet_ref.config import ModelConfig
    from bitnet_ref.gguf_file import read_gguf

    with read_gguf(path) as gguf:
        return ModelConfig.from_gguf(gguf)


def _case_info(case: Case) -> dict:
    """A case for run.json: its files (path, bytes, sha256) and the model's configuration."""
    from crossval.run import sha256

    paths = dict.fromkeys((case.path, case.llama_path))
    files = {str(p): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in paths}
    return {"case": case.name, "path": str(case.path), "llama_path": str(case.llama_path), "files": files,
            "config": _config(case.path).describe()}


def _requests(phases: Sequence[Phase], n_vocab: int, bos: int | None, seed: int) -> dict[str, dict]:
    """The identical inputs every engine gets: seeded random prompt ids after BOS, and the TTFT text."""
    rng = np.random.default_rng(seed)
    longest = max([p.n for p in phases if p.kind != "ttft"], default=1)
    ids = [int(bos if bos is not None else 0)] + [int(t) for t in rng.integers(0, n_vocab, longest - 1)]
    out = {}
    for p in phases:
        if p.kind == "ttft":
            out[p.name] = {"kind": "ttft", "text": TTFT_TEXT}
        else:
            out[p.name] = {"kind": p.kind, "tokens": ids[: p.n], "n": p.n}
    return out


def _context_for(phases: Sequence[Phase], n_ctx_train: int) -> int:
    """The KV length both engines allocate: the longest phase rounded up to 256 (TTFT prompts are short),
    at most the model's training context."""
    longest = max(max((p.n for p in phases), default=1), 256)
    return min(-(-longest // 256) * 256, n_ctx_train)


def _value(phase: Phase, reply: dict) -> float:
    """The reported figure of one timing: tok/s, or ms for time to first token."""
    return reply["wall_s"] * 1e3 if phase.kind == "ttft" else reply["n"] / reply["wall_s"]


@dataclass
class CaseResult:
    """What one case × thread count produced."""

    samples: list[dict] = field(default_factory=list)
    startup: list[dict] = field(default_factory=list)
    engines: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _first_last(err: Exception) -> str:
    """An error's first line and, for a child traceback, its last (the exception itself)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} … {lines[-1].strip()}"


def _start_workers(case: Case, threads: int, settings: Settings, n_ctx: int,
                   say: Callable[[str], None]) -> tuple[list, list]:
    """Start each engine's process in turn (loads do not overlap); engines that fail to load are noted, not fatal."""
    workers, notes = [], []
    for name in settings.engines:
        spec = ENGINES[name]
        n = settings.ref_threads if spec.backend == REF and settings.ref_threads else threads
        say(f"{case.name} {threads}T: loading {name}")
        try:
            workers.append(Worker.start(spec, case.file_for(spec), n, settings.numerics, n_ctx, settings.extra_bufts))
        except EngineError as err:
            notes.append(f"{case.name} {threads}T: {name} skipped: {_first_last(err)}")
    return workers, notes


def _sample(base: dict, case: Case, w: Worker, phase: Phase, rep: int, reply: dict, seq: int) -> dict:
    """One row of the samples table."""
    return {**base, "engine": w.engine.name, "engine_threads": w.threads, "file": case.file_note(w.engine),
            "metric": phase.name, "unit": phase.unit, "rep": rep, "warmup": rep == 0, "n_tokens": reply["n"],
            "wall_s": reply["wall_s"], "counter_s": reply["counter_s"], "value": _value(phase, reply), "seq": seq}


def _stop(base: dict, case: Case, w: Worker, result: CaseResult) -> None:
    """Collect a worker's final figures into the startup rows and its description."""
    final = w.stop()
    result.startup.append({**base, "engine": w.engine.name, "engine_threads": w.threads,
                           "file": case.file_note(w.engine), "import_s": w.ready["import_s"],
                           "load_s": w.ready["load_s"],
                           "rss_after_load_mb": w.ready["rss_after_load_mb"], **final})
    result.engines[f"{case.name} {base['threads']}T {w.engine.name}"] = w.ready["describe"]


def measure_case(case: Case, threads: int, settings: Settings, say: Callable[[str], None]) -> CaseResult:
    """One warm-up, then `reps` repetitions alternating engines phase by phase; each engine in its own process."""
    cfg = _config(case.path)
    phases = settings.phases(cfg.n_ctx)
    requests = _requests(phases, cfg.n_vocab, cfg.bos_id, settings.seed)
    result = CaseResult()
    n_ctx = _context_for(phases, cfg.n_ctx)
    workers, result.notes = _start_workers(case, threads, settings, n_ctx, say)
    base = {"case": case.name, "model": case.model, "fmt": case.fmt, "threads": threads}
    try:
        for rep in range(settings.reps + 1):  # rep 0 is the warm-up
            label = "warm-up" if rep == 0 else f"rep {rep}/{settings.reps}"
            for phase in phases:
                for w in workers:
                    say(f"{case.name} {threads}T: {label} {phase.name} {w.engine.name}")
                    reply = w.run(requests[phase.name])
                    result.samples.append(_sample(base, case, w, phase, rep, reply, len(result.samples)))
        for w in workers:
            _stop(base, case, w, result)
    finally:
        for w in workers:
            w.close()
    return result


# ---------------------------------------------------------------- tables


GROUP = ["case", "model", "fmt", "threads", "engine", "engine_threads", "file", "metric", "unit"]


def summarize(samples: pd.DataFrame) -> pd.DataFrame:
    """Median, min, max and quartiles per case × threads × engine × phase over the repetitions (warm-up excluded);
    the speed ratio to llama.cpp (flash attention auto) on the same case, threads and phase (> 1: faster); the
    interquartile spread of each figure and of its ratio."""
    timed = samples[~samples["warmup"].astype(bool)]
    s = timed.groupby(GROUP, sort=False)["value"].agg(
        n="count", median="median", min="min", max="max", q25=lambda v: v.quantile(0.25),
        q75=lambda v: v.quantile(0.75)).reset_index()
    ref = s[s["engine"] == LLAMA].set_index(["case", "threads", "metric"])["median"]
    key = pd.MultiIndex.from_frame(s[["case", "threads", "metric"]])
    llama = pd.Series(ref.reindex(key).to_numpy(), index=s.index)
    s["ratio"] = np.where(s["unit"] == "ms", llama / s["median"], s["median"] / llama)
    s["spread"] = (s["q75"] - s["q25"]) / s["median"]  # interquartile: one disturbed repetition does not count
    llama_spread = s[s["engine"] == LLAMA].set_index(["case", "threads", "metric"])["spread"]
    s["ratio_spread"] = s["spread"] + llama_spread.reindex(key).to_numpy()  # a ratio carries both engines' noise
    return s


def startup_table(samples: pd.DataFrame, startup: pd.DataFrame) -> pd.DataFrame:
    """Per engine process: load time, the warm-up's time and its excess over the steady median (numba compile or
    cache load, first touch of the mmapped weights, host noise), RSS."""
    if startup.empty:
        return startup
    keys = ["case", "threads", "engine"]
    warm = samples[samples["warmup"].astype(bool)].groupby(keys + ["metric"])["wall_s"].sum()
    steady = samples[~samples["warmup"].astype(bool)].groupby(keys + ["metric"])["wall_s"].median()
    extra = (warm - steady).clip(lower=0).groupby(level=keys).sum().rename("first_call_extra_s")
    first = warm.groupby(level=keys).sum().rename("first_calls_s")
    return startup.join(first, on=keys).join(extra, on=keys)


def roofline_tables(cases: Sequence[Case], summary: pd.DataFrame, bandwidth: pd.DataFrame) -> pd.DataFrame:
    """Bytes per decoded token for each engine's file, the bound at the measured bandwidth, decode % of it."""
    from bitnet_ref.gguf_file import read_gguf

    by_case = {c.name: c for c in cases}
    bw = bandwidth.groupby("threads")["median_gbps"].median()
    rows = []
    for rec in summary[summary["metric"].str.startswith("tg")].to_dict("records"):
        case = by_case[rec["case"]]
        with read_gguf(case.file_for(ENGINES[rec["engine"]])) as gguf:
            tb = roofline.token_bytes(roofline.tensors_of(gguf))
        per_token = tb.at((_gen_tokens(rec["metric"]) - 1) / 2)  # mean KV length over the decode
        gbps = float(bw.get(rec["engine_threads"], np.nan))
        bound = roofline.bound_tok_s(per_token, gbps)
        rows.append({"case": rec["case"], "threads": rec["threads"], "engine": rec["engine"], "file": rec["file"],
                     "ternary_mb": tb.ternary / 1e6, "head_mb": tb.head / 1e6, "other_mb": tb.other / 1e6,
                     "kv_kb_per_pos": tb.kv_per_pos / 1e3, "mb_per_token": per_token / 1e6, "gbps": gbps,
                     "bound_tok_s": bound, "decode_tok_s": rec["median"], "roofline_pct": 100 * rec["median"] / bound})
    return pd.DataFrame(rows)


def _gen_tokens(metric: str) -> int:
    """128 from 'tg128'."""
    return int(metric[2:])


def with_roofline(summary: pd.DataFrame, roof: pd.DataFrame) -> pd.DataFrame:
    """The summary with % of roofline on its decode rows."""
    if roof.empty:
        return summary.assign(roofline_pct=np.nan)
    pct = roof.set_index(["case", "threads", "engine"])["roofline_pct"]
    key = pd.MultiIndex.from_frame(summary[["case", "threads", "engine"]])
    values = pd.Series(pct.reindex(key).to_numpy(), index=summary.index)
    return summary.assign(roofline_pct=values.where(summary["metric"].str.startswith("tg")))


# ---------------------------------------------------------------- baseline


def compare_to_baseline(current: pd.DataFrame, baseline: pd.DataFrame, tolerance: float = TOLERANCE,
                        abs_tolerance: float = 2 * TOLERANCE) -> pd.DataFrame:
    """bitnet_ref medians worse than the baseline's: its speed ratio to llama.cpp by more than `tolerance`, or its own
    speed by more than `abs_tolerance`. A drop beyond the tolerance but within the repetitions' own spread (either
    run) is "inconclusive", not a regression: on a busy host two unchanged runs differ that much. One row each."""
    keys = ["case", "threads", "engine", "metric"]
    cur = current[current["engine"] == REF].set_index(keys)
    base = baseline[baseline["engine"] == REF].set_index(keys)
    rows = []
    for key in cur.index.intersection(base.index):
        c, b = cur.loc[key], base.loc[key]
        speed = (b["median"] / c["median"]) if c["unit"] == "ms" else (c["median"] / b["median"])
        checks = [("ratio", b["ratio"], c["ratio"], c["ratio"] / b["ratio"], tolerance, _noise(c, b, "ratio_spread")),
                  ("absolute", b["median"], c["median"], speed, abs_tolerance, _noise(c, b, "spread"))]
        for kind, old, new, rel, tol, noise in checks:
            if pd.notna(rel) and rel < 1 - tol:
                status = "regression" if rel < 1 - max(tol, noise) else "inconclusive"
                rows.append({**dict(zip(keys, key, strict=True)), "kind": kind, "status": status, "baseline": old,
                             "current": new, "change_pct": 100 * (rel - 1), "tolerance_pct": 100 * tol,
                             "noise_pct": 100 * noise})
    cols = keys + ["kind", "status", "baseline", "current", "change_pct", "tolerance_pct", "noise_pct"]
    return pd.DataFrame(rows, columns=cols)


def _noise(current: pd.Series, baseline: pd.Series, column: str) -> float:
    """The larger relative spread of the two runs' repetitions for one figure (0 when not recorded)."""
    values = [row.get(column) for row in (current, baseline)]
    return max([float(v) for v in values if v is not None and pd.notna(v)], default=0.0)


def resolve_baseline(ref: str, out_root: Path) -> Path:
    """A baseline given as a run folder, or as a run id under out/bench/."""
    path = Path(ref)
    if (path / "run.json").is_file():
        return path
    candidate = out_root / "bench" / ref
    if (candidate / "run.json").is_file():
        return candidate
    raise ConfigError(f"baseline {ref!r}: neither a run folder nor a run id under {out_root / 'bench'}")


# ---------------------------------------------------------------- the run


def _bandwidth(settings: Settings, when: str) -> list[dict]:
    """Streaming read bandwidth at every thread count the engines use (capped to numba's thread pool)."""
    import numba

    counts = set(settings.threads) | ({settings.ref_threads} if settings.ref_threads else set())
    rows = []
    for n in sorted(counts):
        usable = min(n, numba.config.NUMBA_NUM_THREADS)
        bw = roofline.measure_bandwidth(usable, settings.bandwidth_bytes)
        rows += [{"when": when, **r, "threads": n} for r in roofline.summarize([bw])]
    return rows


@dataclass
class Outcome:
    """What a bench run produced: its folder, tables, regressions and verdict."""

    path: Path
    summary: pd.DataFrame
    regressions: pd.DataFrame
    verdict: str
    notes: list[str]


def _collect(cases: Sequence[Case], settings: Settings, say: Callable[[str], None]) -> tuple[CaseResult, list[str]]:
    """Measure every case at every thread count; a case that fails is noted and skipped."""
    total = CaseResult()
    for case in cases:
        for threads in settings.threads:
            try:
                res = measure_case(case, threads, settings, say)
            except EngineError as err:
                total.notes.append(f"{case.name} {threads}T failed: {_first_last(err)}")
                continue
            total.samples += res.samples
            total.startup += res.startup
            total.engines.update(res.engines)
            total.notes += res.notes
    return total, total.notes


def _verdict(regressions: pd.DataFrame, notes: list[str], summary: pd.DataFrame) -> str:
    """'error' when nothing or not everything ran, 'regression' when the baseline check flagged, else 'pass'."""
    if summary.empty or any("failed" in n or "skipped" in n for n in notes):
        return "error"
    flagged = not regressions.empty and (regressions["status"] == "regression").any()
    return "regression" if flagged else "pass"


def run_bench(cases: Sequence[Case], settings: Settings, out_root: Path, say: Callable[[str], None],
              baseline: Path | None = None, tolerance: float = TOLERANCE,
              abs_tolerance: float = 2 * TOLERANCE) -> Outcome:
    """Measure, then write run.json and the tables (samples, summary, startup, bandwidth, roofline, regressions)."""
    from reports.records import new_run, provenance, read_run

    run = new_run("bench", out_root)
    run.write_meta({"provenance": provenance(), "settings": asdict(settings), "verdict": "running",
                    "cases": [_case_info(c) for c in cases]})
    say("measuring streaming read bandwidth")
    bw_rows = _bandwidth(settings, "start")
    res, notes = _collect(cases, settings, say)
    if settings.ref_threads:
        notes.append(f"bitnet_ref ran with {settings.ref_threads} threads (--ref-threads); llama.cpp with each "
                     "case's thread count")
    bw_rows += _bandwidth(settings, "end")
    bandwidth = pd.DataFrame(bw_rows)
    samples = pd.DataFrame(res.samples)
    summary = summarize(samples) if not samples.empty else pd.DataFrame(columns=GROUP + ["median", "ratio"])
    roof = roofline_tables(cases, summary, bandwidth) if not samples.empty else pd.DataFrame()
    summary = with_roofline(summary, roof)
    regressions = pd.DataFrame()
    meta: dict = {}
    if baseline is not None:
        base_meta, base_tables = read_run(baseline)
        regressions = compare_to_baseline(summary, base_tables["summary"], tolerance, abs_tolerance)
        meta["baseline"] = {"run_id": base_meta.get("run_id"), "path": str(baseline), "tolerance": tolerance,
                            "abs_tolerance": abs_tolerance}
        run.write_table("regressions", regressions)
    tables = {"samples": samples, "summary": summary, "startup": startup_table(samples, pd.DataFrame(res.startup)),
              "bandwidth": bandwidth, "roofline": roof}
    for name, df in tables.items():
        run.write_table(name, df)
    verdict = _verdict(regressions, notes, summary)
    run.write_meta({**meta, "engines": res.engines, "notes": notes, "verdict": verdict,
                    "finished": pd.Timestamp.now(tz="UTC").isoformat()})
    return Outcome(run.path, summary, regressions, verdict, notes)


# ---------------------------------------------------------------- command line


def _ints(text: str) -> tuple[int, ...]:
    """'1,2' -> (1, 2)."""
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """'a,b' checked against the allowed names ('all' = every one)."""
    names = tuple(allowed) if text == "all" else tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad}; choose from {list(allowed)} or 'all'")
    return names


def parser() -> argparse.ArgumentParser:
    """The `python -m bench` options."""
    p = argparse.ArgumentParser(prog="python -m bench", description="bitnet_ref vs llama.cpp, same file and threads.")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"presets {PRESETS} or 'all'")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS), help=f"{FORMATS} or 'all'")
    p.add_argument("--threads", default="2", help="thread counts, e.g. 1,2 for a sweep (default 2)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions after the warm-up (default 5)")
    p.add_argument("--prompt", default="128,512", help="prefill lengths (default 128,512)")
    p.add_argument("--gen", type=int, default=128, help="decode steps (default 128)")
    p.add_argument("--engines", default=",".join(ENGINE_NAMES), help=f"{ENGINE_NAMES} or 'all'")
    p.add_argument("--numerics", default="ggml", help="bitnet_ref numerics profile (default ggml)")
    p.add_argument("--ref-threads", type=int, default=None, help="give bitnet_ref this many threads instead")
    p.add_argument("--extra-bufts", action=argparse.BooleanOptionalAction, default=True,
                   help="llama.cpp's extra buffer types (CPU_REPACK, AMX) for the weights, as llama.cpp runs by "
                        "default (default on; recorded)")
    p.add_argument("--quick", action="store_true", help="tiny preset only (CI smoke, < 3 minutes)")
    p.add_argument("--out", default="out", help="records root (default out)")
    p.add_argument("--baseline", default=None, help="a bench run folder or id to check for regressions")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="allowed drop of the ratio (default 0.2)")
    p.add_argument("--abs-tolerance", type=float, default=2 * TOLERANCE, help="allowed drop of bitnet_ref's speed")
    p.add_argument("--bandwidth-mb", type=int, default=roofline.BUFFER_BYTES >> 20,
                   help="buffer of the bandwidth measurement (default 256, ≫ L3)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from parsed options."""
    return Settings(threads=_ints(args.threads), reps=args.reps, prompt_tokens=_ints(args.prompt),
                    gen_tokens=args.gen, engines=_names(args.engines, ENGINE_NAMES, "engines"),
                    numerics=args.numerics, extra_bufts=args.extra_bufts, ref_threads=args.ref_threads,
                    bandwidth_bytes=args.bandwidth_mb << 20)


def _cell(row: pd.Series | None, ratio: bool) -> str:
    """'median ×ratio' over '[min–max]' for the console table."""
    if row is None:
        return "–"
    head = _num(row["median"]) + (f" [bold]×{row['ratio']:.2f}[/]" if ratio and pd.notna(row["ratio"]) else "")
    return f"{head}\n[dim]{_num(row['min'])}–{_num(row['max'])}[/]"


def _num(value: float) -> str:
    """Three significant digits, no exponent for large values."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def summary_table(summary: pd.DataFrame) -> object:
    """The console table: per case, threads and engine, each phase's median with ×ratio and range, % roofline."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="bench: median ×(speed vs llama.cpp, flash attn auto) / min–max", title_justify="left")
    t.add_column("case")
    t.add_column("T", justify="right")
    t.add_column("engine")
    metrics = list(dict.fromkeys(summary["metric"]))
    for m in metrics:
        t.add_column(f"{m} {summary.loc[summary['metric'] == m, 'unit'].iloc[0]}", justify="right")
    t.add_column("roof", justify="right")
    twins = False
    for (case, threads, engine, file), sub in summary.groupby(["case", "threads", "engine", "file"], sort=False):
        by = sub.set_index("metric")
        cells = [_cell(by.loc[m] if m in by.index else None, engine != LLAMA) for m in metrics]
        roof = sub["roofline_pct"].dropna()
        twins |= file != "same"
        name = escape(engine) + ("*" if file != "same" else "")
        t.add_row(case, str(threads), name, *cells, f"{roof.iloc[0]:.0f}%" if len(roof) else "–")
    if twins:
        t.caption = "* reads the lossless TQ2_0 twin of the I2_S file (llama.cpp cannot load I2_S)"
    return t


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 = done, 1 = a regression against --baseline (or a path that is not there), 2 = an engine
    or case failed."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    ap = parser()
    args = ap.parse_args(argv)
    console = Console()
    out_root = Path(args.out)
    try:
        settings = settings_from(args)
        models = ("tiny",) if args.quick else _names(args.models, PRESETS, "models")
        fmts = _names(args.formats, FORMATS, "formats")
        baseline = resolve_baseline(args.baseline, out_root) if args.baseline else None
    except ConfigError as err:  # a path that is not there: one line, like every other subcommand
        console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 1
    except (argparse.ArgumentTypeError, ValueError) as err:
        ap.error(str(err))
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("building models", total=None)

        def say(text: str) -> None:
            progress.update(task, description=text)

        try:
            cases = build_cases(models, fmts, os.environ.get("BITNET_GGUF"))
        except BitnetRefError as err:
            progress.stop()
            console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
            return 1
        outcome = run_bench(cases, settings, out_root, say, baseline, args.tolerance, args.abs_tolerance)
    if not outcome.summary.empty:
        console.print(summary_table(outcome.summary))
    for note in outcome.notes:
        console.print(f"[yellow]note:[/] {note}")
    noisy = outcome.summary[outcome.summary["spread"] > NOISY] if "spread" in outcome.summary else []
    if len(noisy):
        console.print(f"[yellow]{len(noisy)} of {len(outcome.summary)} figures have an interquartile spread over "
                      f"{NOISY:.0%} across repetitions (busy host?): compare ratios, not absolute speeds, or rerun")
    for r in outcome.regressions.to_dict("records"):
        color = "red" if r["status"] == "regression" else "yellow"
        console.print(f"[{color}]{r['status']}[/] {r['case']} {r['threads']}T {r['metric']} {r['kind']}: "
                      f"{r['baseline']:.3g} → {r['current']:.3g} ({r['change_pct']:+.0f}%, tolerance "
                      f"{r['tolerance_pct']:.0f}%, repetitions' spread {r['noise_pct']:.0f}%)")
    console.print(f"records: {outcome.path}")
    if not args.no_report:
        from reports.html import build_index, build_report

        console.print(f"report: {build_report(outcome.path)}")
        console.print(f"index: {build_index(out_root)}")
    return {"pass": 0, "regression": 1}.get(outcome.verdict, 2)
