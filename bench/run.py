"""Side-by-side timing of bitnet_ref and llama.cpp on the same GGUF, threads and tokens: the run and its command line.

Method: each engine runs in its own process (crossval.isolated, the mechanism crossval runs its reference with: a
crash or hang is an error for that engine, and its peak RSS is its own), loads once, runs one
warm-up of every phase (the first call pays numba's compile or cache load), then `reps` repetitions in which the
engines alternate phase by phase (A B C A B C …) so that the host's bandwidth swings hit every engine alike.
Phases: prefill of 128 and 512 tokens (logits of the last position only), decode of 128 single-token steps, and
time to first token (tokenize a text prompt + prefill). `--numerics ggml,bitnet` runs bitnet_ref once per profile,
as engines of their own ('bitnet_ref[ggml]', 'bitnet_ref[bitnet]') in the same alternation. Progress: a bar with
the step count and the time left on a terminal, else one timestamped line per step. Records go to
out/bench/<run-id>/ (reports.records).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape

from bench import cases as C
from bench import roofline
from bench import stats as S
from bench.worker import EngineError, Worker, kernel_host, llama_system_info
from bitnet_ref import cuda
from bitnet_ref.device import DEVICES, resolve_device
from bitnet_ref.errors import BitnetRefError, ConfigError, DeviceError

BANDWIDTH_STEPS = 2  # the streaming read bandwidth, measured at the start and at the end of a run
ETA_WINDOW_S = 24 * 3600.0  # the time left is estimated from every step so far (steps differ a lot in length)

# ---------------------------------------------------------------- progress


@dataclass
class Step:
    """One step of a run while it runs; the code doing it sets `figure` (e.g. '12.3 tok/s') once it has one."""

    label: str
    figure: str = ""


class Reporter:
    """Progress of a run: on a terminal a bar (current step, done/total, elapsed, time left), else one timestamped
    line per finished step, so that a CI log shows the run advance."""

    def __init__(self, console: Console):
        self.console = console
        self.total = 0  # set by plan() once the cases are known
        self.done = 0
        self.bar = None
        self.task = None

    def __enter__(self) -> Reporter:
        if self.console.is_terminal:
            from rich import progress as rp

            self.bar = rp.Progress(rp.SpinnerColumn(), rp.TextColumn("{task.description}"), rp.BarColumn(),
                                   rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(),
                                   console=self.console, transient=True, speed_estimate_period=ETA_WINDOW_S)
            self.bar.start()
            self.task = self.bar.add_task("", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def plan(self, total: int) -> None:
        """The number of steps the run will take."""
        self.total = total
        self._show()

    def say(self, text: str) -> None:
        """A message that stays: printed above the bar, or as a timestamped line."""
        if self.bar is not None:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self._line(text)

    @contextmanager
    def step(self, label: str) -> Iterator[Step]:
        """A step while it runs (the bar shows its label); when it ends it is counted and, without a terminal,
        printed with its figure ('failed' when it raised)."""
        current = Step(label)
        if self.bar is not None:
            self.bar.update(self.task, description=escape(label))
        try:
            yield current
        except Exception:
            current.figure = "failed"
            raise
        finally:
            self.done += 1
            if self.bar is None:
                self._line(f"[{self.done}/{self.total}] {label}" + (f": {current.figure}" if current.figure else ""))
            self._show()

    def reach(self, done: int) -> None:
        """Count the steps that will not run (an engine that did not load, a case that failed) as done."""
        self.done = max(self.done, done)
        self._show()

    def _show(self) -> None:
        """Bring the bar up to date."""
        if self.bar is not None:
            self.bar.update(self.task, total=self.total or None, completed=self.done)

    def _line(self, text: str) -> None:
        """One line with the time of day."""
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False, soft_wrap=True)


def total_steps(phase_counts: Sequence[int], settings: C.Settings) -> int:
    """Steps of a run whose cases have these numbers of phases: every case at every thread count (loads, warm-ups,
    repetitions of every engine), and the two bandwidth measurements."""
    return len(settings.threads) * sum(settings.steps(n) for n in phase_counts) + BANDWIDTH_STEPS


# ---------------------------------------------------------------- measurement


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


def _start_workers(case: C.Case, threads: int, settings: C.Settings, n_ctx: int,
                   progress: Reporter) -> tuple[list, list]:
    """Start each engine's process in turn (loads do not overlap); engines that fail to load are noted, not fatal."""
    workers, notes = [], []
    for spec in settings.engine_specs():
        n = settings.ref_threads if spec.backend == C.REF and settings.ref_threads else threads
        try:
            with progress.step(f"{case.name} {threads}T load {spec.name}") as step:
                workers.append(Worker.start(spec, case.file_for(spec), n, n_ctx, settings.extra_bufts))
                step.figure = f"{workers[-1].ready['load_s']:.2f} s"
        except EngineError as err:
            notes.append(f"{case.name} {threads}T: {spec.name} skipped: {_first_last(err)}")
    return workers, notes


def _sample(base: dict, case: C.Case, w: Worker, phase: C.Phase, rep: int, reply: dict, seq: int) -> dict:
    """One row of the samples table."""
    return {**base, "engine": w.engine.name, "engine_threads": w.threads, "file": case.file_note(w.engine),
            "metric": phase.name, "unit": phase.unit, "rep": rep, "warmup": rep == 0, "n_tokens": reply["n"],
            "wall_s": reply["wall_s"], "counter_s": reply["counter_s"], "value": S.value(phase, reply), "seq": seq}


def _stop(base: dict, case: C.Case, w: Worker, result: CaseResult) -> None:
    """Collect a worker's final figures into the startup rows and its description."""
    final = w.stop()
    result.startup.append({**base, "engine": w.engine.name, "engine_threads": w.threads,
                           "file": case.file_note(w.engine), "import_s": w.ready["import_s"],
                           "load_s": w.ready["load_s"],
                           "rss_after_load_mb": w.ready["rss_after_load_mb"], **final})
    result.engines[f"{case.name} {base['threads']}T {w.engine.name}"] = w.ready["describe"]


def measure_case(case: C.Case, threads: int, settings: C.Settings, progress: Reporter) -> CaseResult:
    """One warm-up, then `reps` repetitions alternating engines phase by phase; each engine in its own process."""
    cfg = C.config(case.path)
    phases = settings.phases(cfg.n_ctx)
    requests = C.requests(phases, cfg.n_vocab, cfg.bos_id, settings.seed)
    result = CaseResult()
    n_ctx = C.context_for(phases, cfg.n_ctx)
    first = progress.done
    workers, result.notes = _start_workers(case, threads, settings, n_ctx, progress)
    base = {"case": case.name, "model": case.model, "fmt": case.fmt, "threads": threads}
    try:
        for rep in range(settings.reps + 1):  # rep 0 is the warm-up
            label = "warm-up" if rep == 0 else f"rep {rep}/{settings.reps}"
            for phase in phases:
                for w in workers:
                    with progress.step(f"{case.name} {threads}T {label} {phase.name} {w.engine.name}") as step:
                        reply = w.run(requests[phase.name])
                        result.samples.append(_sample(base, case, w, phase, rep, reply, len(result.samples)))
                        step.figure = f"{_num(result.samples[-1]['value'])} {phase.unit}"
        for w in workers:
            _stop(base, case, w, result)
    finally:
        for w in workers:
            w.close()
        progress.reach(first + settings.steps(len(phases)))
    return result


# ---------------------------------------------------------------- baseline


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


def _bandwidth(settings: C.Settings, when: str) -> list[dict]:
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


def _collect(cases: Sequence[C.Case], settings: C.Settings, progress: Reporter) -> tuple[CaseResult, list[str]]:
    """Measure every case at every thread count; a case that fails is noted and skipped."""
    total = CaseResult()
    for case in cases:
        for threads in settings.threads:
            try:
                res = measure_case(case, threads, settings, progress)
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


def _measure_bandwidth(settings: C.Settings, when: str, progress: Reporter) -> list[dict]:
    """The bandwidth measurement as one step of the run."""
    with progress.step(f"bandwidth at {when}") as step:
        rows = _bandwidth(settings, when)
        step.figure = ", ".join(f"{r['threads']}T {r['median_gbps']:.1f} GB/s" for r in rows)
    return rows


def _announce(settings: C.Settings, progress: Reporter) -> None:
    """Say once what the engines run on: bitnet_ref's kernel ISA and profiles, llama.cpp's compile-time SIMD flags."""
    backends = {spec.backend for spec in settings.engine_specs()}
    if C.REF in backends:
        host = kernel_host()
        progress.say(f"bitnet_ref: kernel ISA {host['kernel_isa']} (host runs "
                     f"{', '.join(host['kernel_isas_available'])}), numerics {', '.join(settings.numerics)}")
    if C.LLAMA in backends:
        try:
            line = llama_system_info()
        except EngineError as err:
            line = f"not available: {_first_last(err)}"
        progress.say(f"llama.cpp: {line}")


def run_bench(cases: Sequence[C.Case], settings: C.Settings, out_root: Path, progress: Reporter,
              baseline: Path | None = None, tolerance: float = S.TOLERANCE,
              abs_tolerance: float = 2 * S.TOLERANCE) -> Outcome:
    """Measure, then write run.json and the tables (samples, summary, startup, bandwidth, roofline, regressions)."""
    from reports.records import new_run, provenance, read_run

    run = new_run("bench", out_root)
    run.write_meta({"provenance": provenance(), "settings": asdict(settings), "verdict": "running",
                    "cases": [C.case_info(c) for c in cases]})
    _announce(settings, progress)
    progress.plan(total_steps([len(settings.phases(C.config(c.path).n_ctx)) for c in cases], settings))
    bw_rows = _measure_bandwidth(settings, "start", progress)
    res, notes = _collect(cases, settings, progress)
    if settings.ref_threads:
        notes.append(f"bitnet_ref ran with {settings.ref_threads} threads (--ref-threads); llama.cpp with each "
                     "case's thread count")
    bw_rows += _measure_bandwidth(settings, "end", progress)
    bandwidth = pd.DataFrame(bw_rows)
    samples = pd.DataFrame(res.samples)
    summary = S.summarize(samples) if not samples.empty else pd.DataFrame(columns=S.GROUP + ["median", "ratio"])
    roof = S.roofline_tables(cases, summary, bandwidth) if not samples.empty else pd.DataFrame()
    summary = S.with_roofline(summary, roof)
    regressions = pd.DataFrame()
    meta: dict = {}
    if baseline is not None:
        base_meta, base_tables = read_run(baseline)
        regressions = S.compare_to_baseline(summary, base_tables["summary"], tolerance, abs_tolerance)
        meta["baseline"] = {"run_id": base_meta.get("run_id"), "path": str(baseline), "tolerance": tolerance,
                            "abs_tolerance": abs_tolerance}
        run.write_table("regressions", regressions)
    tables = {"samples": samples, "summary": summary, "startup": S.startup_table(samples, pd.DataFrame(res.startup)),
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
    p.add_argument("--models", default=",".join(C.DEFAULT_MODELS), help=f"presets {C.PRESETS} or 'all'")
    p.add_argument("--formats", default=",".join(C.DEFAULT_FORMATS), help=f"{C.FORMATS} or 'all'")
    p.add_argument("--threads", default="2", help="thread counts, e.g. 1,2 for a sweep (default 2)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions after the warm-up (default 5)")
    p.add_argument("--prompt", default="128,512", help="prefill lengths (default 128,512)")
    p.add_argument("--gen", type=int, default=128, help="decode steps (default 128)")
    p.add_argument("--engines", default=",".join(C.ENGINE_NAMES), help=f"{C.ENGINE_NAMES} or 'all'")
    p.add_argument("--numerics", default="ggml",
                   help="bitnet_ref numerics profiles, e.g. ggml,bitnet: one engine each (default ggml)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where bitnet_ref runs: cpu, cuda (the bitnet profile only) or auto (cuda when a GPU is "
                        "usable, else cpu; default cpu)")
    p.add_argument("--ref-threads", type=int, default=None, help="give bitnet_ref this many threads instead")
    p.add_argument("--extra-bufts", action=argparse.BooleanOptionalAction, default=True,
                   help="llama.cpp's extra buffer types (CPU_REPACK, AMX) for the weights, as llama.cpp runs by "
                        "default (default on; recorded)")
    p.add_argument("--quick", action="store_true", help="tiny preset only (CI smoke, < 3 minutes)")
    p.add_argument("--out", default="out", help="records root (default out)")
    p.add_argument("--baseline", default=None, help="a bench run folder or id to check for regressions")
    p.add_argument("--tolerance", type=float, default=S.TOLERANCE, help="allowed drop of the ratio (default 0.2)")
    p.add_argument("--abs-tolerance", type=float, default=2 * S.TOLERANCE, help="allowed drop of bitnet_ref's speed")
    p.add_argument("--bandwidth-mb", type=int, default=roofline.BUFFER_BYTES >> 20,
                   help="buffer of the bandwidth measurement (default 256, ≫ L3)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    return p


def _profiles(text: str) -> tuple[str, ...]:
    """'ggml,bitnet' checked against bitnet_ref's numerics profiles ('all' = every one); at least one."""
    from bitnet_ref.numerics import PROFILES

    names = _names(text, tuple(PROFILES), "numerics profiles")
    if not names:
        raise argparse.ArgumentTypeError(f"--numerics names no profile; choose from {list(PROFILES)} or 'all'")
    return tuple(dict.fromkeys(names))


def settings_from(args: argparse.Namespace, device: str = "cpu") -> C.Settings:
    """Settings from parsed options, bitnet_ref on `device` (the resolved --device)."""
    numerics = _profiles(args.numerics)
    if device != "cpu" and numerics != (cuda.PROFILE,):
        raise argparse.ArgumentTypeError(f"--device {args.device} runs the {cuda.PROFILE} profile only; "
                                         f"got --numerics {args.numerics} (use --numerics {cuda.PROFILE})")
    return C.Settings(threads=_ints(args.threads), reps=args.reps, prompt_tokens=_ints(args.prompt),
                      gen_tokens=args.gen, engines=_names(args.engines, C.ENGINE_NAMES, "engines"),
                      numerics=numerics, device=device, extra_bufts=args.extra_bufts, ref_threads=args.ref_threads,
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
        cells = [_cell(by.loc[m] if m in by.index else None, engine != C.LLAMA) for m in metrics]
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
    ap = parser()
    args = ap.parse_args(argv)
    console = Console()
    out_root = Path(args.out)
    try:
        device = resolve_device(args.device)
        settings = settings_from(args, device.name)
        models = ("tiny",) if args.quick else _names(args.models, C.PRESETS, "models")
        fmts = _names(args.formats, C.FORMATS, "formats")
        baseline = resolve_baseline(args.baseline, out_root) if args.baseline else None
    except (ConfigError, DeviceError) as err:  # a path that is not there, no GPU: one line, like every subcommand
        console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 1
    except (argparse.ArgumentTypeError, ValueError) as err:
        ap.error(str(err))
    if args.device != "cpu":
        console.print(f"bitnet_ref on {device}: {device.reason}", markup=False, soft_wrap=True)
    with Reporter(console) as progress:
        progress.say("building models")
        try:
            cases = C.build_cases(models, fmts, os.environ.get("BITNET_GGUF"))
        except BitnetRefError as err:
            console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
            return 1
        outcome = run_bench(cases, settings, out_root, progress, baseline, args.tolerance, args.abs_tolerance)
    if not outcome.summary.empty:
        console.print(summary_table(outcome.summary))
    for note in outcome.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    noisy = outcome.summary[outcome.summary["spread"] > S.NOISY] if "spread" in outcome.summary else []
    if len(noisy):
        console.print(f"[yellow]{len(noisy)} of {len(outcome.summary)} figures have an interquartile spread over "
                      f"{S.NOISY:.0%} across repetitions (busy host?): compare ratios, not absolute speeds, or rerun")
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
