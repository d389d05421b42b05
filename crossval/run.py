"""Run the case matrix: one case = one verdict with a location; records under out/crossval/<run-id>/.

A case goes tokenizer parity → every (layer, point) → logits of every position → greedy continuation. The first
stage that fails names the location in one line (`first divergence: layer 0 ffn_sub_out, NMSE 3.1e-01 > 1e-04`).
Expected divergences (thresholds.toml) turn a failure at the expected place into XFAIL.

The reference runs in a child process (crossval.isolated): its crash, abort or hang is the case's verdict ERROR,
naming the signal and its last output, and the next case starts a fresh one. The ggml profile follows the
reference's reported build (crossval.build); a ggml case on a path it does not emulate (an unrecognised build, weights
in CPU_REPACK or AMX buffers) is judged by the looser `approx` gate and, when it passes, reported as APPROX with the
reason. Records are written as each case finishes, so a killed run leaves every finished case readable.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bitnet_ref import cuda
from bitnet_ref.device import DEVICES, resolve_device
from bitnet_ref.errors import BitnetRefError
from bitnet_ref.files import model_identity
from bitnet_ref.formats import IQ2_S, TL1, TL2
from bitnet_ref.numerics import resolve
from crossval import cases as C
from crossval import points as P
from crossval import verdict as V
from crossval.backends import Backend, BitnetRefBackend
from crossval.build import TILED_MM_ENV, ReferenceBuild, tiled_mm_enabled, weight_paths
from crossval.isolated import IsolatedBackend
from crossval.thresholds import load_thresholds

REFERENCE = "crossval.llama_cpp_backend:LlamaCppBackend"  # the reference engine's factory, run isolated
REF_TIMEOUT_S = 1800.0  # one reference call (a 2b4t capture group takes minutes on 2 cores)
TABLES = ("cases", "points", "positions", "logits", "topk", "worst_logits")


# -- the matrix -----------------------------------------------------------------------------------------------------


def model_context(path: Path) -> int:
    """The training context length a GGUF (or checkpoint folder) declares."""
    from bitnet_ref.checkpoint import read_model_file
    from bitnet_ref.config import ModelConfig

    with read_model_file(path) as g:
        return ModelConfig.from_gguf(g).n_ctx


@dataclass
class Pair:
    """Two loaded backends for one model, with what the comparison needs to know about it."""

    engine: BitnetRefBackend
    ref: Backend
    n_layer: int
    n_ctx: int
    engine_path: Path
    llama_path: Path
    approx: str  # "" when the engine's profile emulates the path the reference ran, else why not


@dataclass(frozen=True)
class Reference:
    """How the reference engine is started: its factory (run isolated), llama.cpp's extra buffer types, a timeout."""

    factory: str = REFERENCE
    extra_bufts: bool = False
    timeout: float = REF_TIMEOUT_S

    def open(self, path: Path, case: C.Case, n_ctx: int) -> IsolatedBackend:
        """Start the reference on a model in its own process."""
        kwargs = {"path": str(path), "n_threads": case.threads, "n_ctx": n_ctx, "flash_attn": case.flash_attn,
                  "extra_bufts": self.extra_bufts, "echo_log": True}
        return IsolatedBackend(self.factory, kwargs, name="llama.cpp", timeout=self.timeout)


def engine_numerics(case: C.Case, build: ReferenceBuild):
    """The engine's numerics for a case: the ggml profile follows the reference's build where it emulates it."""
    return build.ggml_numerics() if case.profile == "ggml" else resolve(case.profile)


def approx_reason(case: C.Case, build: ReferenceBuild, ref_desc: dict) -> str:
    """Why a ggml case cannot be bit-exact: the reference's build or its weights' buffer types, a TL format (llama.cpp
    runs its TQ2_0 twin, bitnet_ref bitnet.cpp's LUT arithmetic), llama.cpp's tiled IQ2_S kernel switched off ('')."""
    if case.profile != "ggml":
        return ""
    reasons = [r for r in (build.why_not, weight_paths(ref_desc.get("weight_buffers", {}))) if r]
    if reasons and not build.why_not:
        reasons.append("ggml profile emulates the plain CPU path")
    if case.fmt in (TL1.NAME, TL2.NAME):
        reasons.append(f"llama.cpp has no {case.fmt.upper()} kernel: it runs the TQ2_0 twin, bitnet_ref bitnet.cpp's "
                       "lookup-table arithmetic")
    if case.fmt == IQ2_S.NAME and not tiled_mm_enabled():
        reasons.append(f"{TILED_MM_ENV}={os.environ[TILED_MM_ENV]!r} switches off llama.cpp's tiled IQ2_S kernel, "
                       "which the ggml profile emulates")
    return "; ".join(reasons)



class Backends:
    """Loaded backend pairs, reused across consecutive cases of the same model, profile and threads."""

    def __init__(self, reference: Reference | None = None) -> None:
        self.reference = reference or Reference()
        self.key: tuple | None = None
        self.pair: Pair | None = None
        self.models: dict[str, dict] = {}
        self.described: dict[str, dict] = {}

    def get(self, case: C.Case) -> Pair:
        """The pair for a case (loaded when the model, profile or threads change); loading failures raise."""
        if case.model_key != self.key:
            self.close()
            epath = C.engine_model(case)
            lpath = C.llama_model(case, epath)
            n_ctx = min(model_context(epath), C.LONG_CTX_CAP)
            ref = self.reference.open(lpath, case, n_ctx)
            try:
                ref_desc = ref.describe()
                build = ReferenceBuild.from_system_info(ref_desc.get("system_info", ""))
                ref_desc["build"] = build.describe()
                engine = BitnetRefBackend(epath, numerics=engine_numerics(case, build), n_threads=case.threads,
                                          n_ctx=n_ctx, i2s_layout=case.i2s_layout, device=case.device)
            except BaseException:
                ref.close()
                raise
            approx = approx_reason(case, build, ref_desc)
            self.key = case.model_key
            self.pair = Pair(engine, ref, engine.config.n_layer, n_ctx, epath, lpath, approx)
            for p in {epath, lpath}:
                self.models.setdefault(str(p), model_identity(p))
            self.described[case.group] = {"engine": engine.describe(), "llama.cpp": ref_desc}
        return self.pair

    def close(self) -> None:
        """Release the current pair."""
        if self.pair is not None:
            self.pair.ref.close()
        self.key = self.pair = None



def run_cases(cases: list[C.Case], th: dict, on_result=None,
              reference: Reference | None = None) -> tuple[list[V.CaseResult], Backends]:
    """Run cases in order (grouped by model for reuse); on_result(result) after each. A backend that fails (the
    reference crashed, hung or raised; a model does not load) makes that case ERROR and is restarted for the next."""
    pool = Backends(reference)
    results = []
    try:
        for case in sorted(cases, key=lambda c: (str(c.model_key), c.prompt)):
            t0 = time.perf_counter()
            try:
                pair = pool.get(case)
                res = V.compare_case(case, pair.engine, pair.ref, th, pair.n_layer, pair.n_ctx, pair.approx)
                res.summary.update({"engine_model": str(pair.engine_path), "llama_model": str(pair.llama_path),
                                    "engine_sha256": pool.models[str(pair.engine_path)]["sha256"]})
            except BitnetRefError as exc:
                res = V.error_result(case, exc, round(time.perf_counter() - t0, 3))
                pool.close()
            results.append(res)
            if on_result:
                on_result(res, pool)
    finally:
        pool.close()
    return results, pool


class Recorder:
    """The run's records, written as cases finish: run.json first, then each case's rows appended to the tables'
    journals and run.json's counts refreshed; finish() writes the CSV tables and the verdict."""

    def __init__(self, out_root: str | Path, th: dict, args: dict, n_cases: int):
        from reports import records

        self.run = records.new_run("crossval", out_root)
        self.results: list[V.CaseResult] = []
        self.run.write_meta({"provenance": records.provenance(), "args": args, "thresholds": th,
                             "points": P.describe(), "n_cases": n_cases, "complete": False,
                             "verdict": "incomplete"})

    def add(self, res: V.CaseResult, pool: Backends) -> None:
        """Append one finished case and refresh run.json."""
        self.results.append(res)
        self.run.append_rows("cases", [res.row()])
        for name in TABLES[1:]:
            self.run.append_rows(name, getattr(res, name))
        self.run.write_meta({"models": pool.models, "backends": pool.described, **self._verdicts()})

    def _verdicts(self) -> dict:
        """Counts per verdict and the cases that did not simply pass."""
        return {"counts": {v: sum(r.verdict == v for r in self.results) for v in V.VERDICTS},
                "failures": [{"case": r.case.id, "verdict": r.verdict, "location": r.location}
                             for r in self.results if r.verdict != V.PASS]}

    def finish(self) -> Path:
        """Write the CSV tables and the final verdict."""
        self.run.finish_tables(list(TABLES))
        failed = any(r.verdict in V.GATING for r in self.results)
        self.run.write_meta({"complete": True, "verdict": "fail" if failed else "pass", **self._verdicts()})
        return self.run.path


# -- CLI ------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options of `python -m crossval`."""
    ap = argparse.ArgumentParser(prog="python -m crossval", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the CI subset (tiny preset), a few minutes on 2 cores")
    ap.add_argument("--2b4t", dest="with_2b4t", action="store_true", help="add 2B-4T-shaped synthetic models (slow)")
    ap.add_argument("--out", default="out", help="records root (default: out)")
    ap.add_argument("--thresholds", default=None, help="thresholds TOML (default: crossval/thresholds.toml)")
    ap.add_argument("--filter", default="",
                    help="only cases whose id contains one of these comma-separated substrings")
    ap.add_argument("--flash-attn", action="store_true",
                    help="llama.cpp with flash attention on (docs/NUMERICS.md: ggml gates then expected to fail)")
    ap.add_argument("--extra-bufts", action=argparse.BooleanOptionalAction, default=False,
                    help="llama.cpp's extra buffer types (CPU_REPACK, AMX) for the weights; default off: the plain "
                         "CPU path the ggml profile emulates (cases that run elsewhere are judged APPROX)")
    ap.add_argument("--reference", default=REFERENCE,
                    help=f"the reference backend's factory, module:callable, run in a child process "
                         f"(default {REFERENCE})")
    ap.add_argument("--ref-timeout", type=float, default=REF_TIMEOUT_S,
                    help=f"seconds one reference call may take before it is killed and the case is ERROR "
                         f"(default {REF_TIMEOUT_S:.0f})")
    ap.add_argument("--i2s-layout", choices=("x86", "arm"), default="x86",
                    help="the I2_S layout of a BITNET_GGUF model (a GGUF does not record it; default x86)")
    ap.add_argument("--device", choices=DEVICES, default="cpu",
                    help="where bitnet_ref runs: cpu, cuda (the bitnet profile's TQ2_0/TQ1_0/I2_S cases only) or auto "
                         "(cuda when a GPU is usable, else cpu; default cpu)")
    ap.add_argument("--list", action="store_true", help="list the selected cases and exit")
    ap.add_argument("--no-report", action="store_true", help="write records only, no HTML report")
    cg = ap.add_argument_group("corpus KL divergence (--corpus; see crossval/corpus.py)")
    cg.add_argument("--corpus", metavar="FILE", help="KL divergence of two engines over a UTF-8 text")
    cg.add_argument("--model", metavar="PATH", help="the GGUF both engines load (default: the tiny synthetic TQ2_0)")
    cg.add_argument("--engines", default="llama.cpp,bitnet_ref", metavar="A,B", help="base (A) and other engine")
    cg.add_argument("--numerics", choices=("ggml", "bitnet"), default="bitnet", help="bitnet_ref's profile")
    cg.add_argument("--threads", type=int, default=2, help="threads of each engine (default 2)")
    cg.add_argument("--ctx", type=int, metavar="N", help="tokens per chunk (default min(512, the model's context))")
    cg.add_argument("--chunks", type=int, metavar="N", help="score at most N chunks (default all)")
    cg.add_argument("--max-kld", type=float, metavar="X", help="exit 1 when the mean KLD is above X")
    hg = ap.add_argument_group("conversion check (--hf with --gguf; see crossval/conversion.py)")
    hg.add_argument("--hf", metavar="DIR", help="an HF BitNet checkpoint folder: with --gguf, check the conversion")
    hg.add_argument("--gguf", metavar="FILE", help="the GGUF converted from --hf")
    return ap.parse_args(argv)


def select(args: argparse.Namespace, device: str = "cpu") -> list[C.Case]:
    """The cases the options select, with bitnet_ref on `device` (the resolved --device)."""
    cases = C.matrix(quick=args.quick, with_2b4t=args.with_2b4t, user_i2s_layout=args.i2s_layout)
    if args.flash_attn:
        cases = [dataclasses.replace(c, flash_attn=True) for c in cases]
    cases = C.on_device(cases, device)
    wanted = [f for f in args.filter.split(",") if f] or [""]
    return [c for c in cases if any(f in c.id for f in wanted)]


STYLE = {V.PASS: "green", V.APPROX: "cyan", V.XFAIL: "yellow", V.FAIL: "bold red", V.XPASS: "bold red",
         V.ERROR: "bold magenta"}


def summary_table(results: list[V.CaseResult]):
    """A rich table: one row per case with its verdict, logits r and location."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="crossval: bitnet_ref vs llama.cpp", show_lines=False)
    for col in ("case", "verdict", "logits r", "r min", "worst NMSE", "greedy", "s", "location"):
        table.add_column(col, overflow="fold")
    for r in results:
        worst = max((p.get("nmse", 0.0) for p in r.points), default=0.0)
        table.add_row(r.case.id, f"[{STYLE[r.verdict]}]{r.verdict}[/]", f"{r.summary.get('logits_r', 0):.7f}",
                      f"{r.summary.get('logits_r_min', 0):.7f}",
                      f"{worst:.1e}", "=" if r.summary.get("greedy_match") else "≠", f"{r.seconds:.1f}",
                      escape(r.location))
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the selected matrix with rich progress; 0 when no case fails a gate or errs, 1 otherwise (a missing
    thresholds file or model is a one-line error and 1; no case selected is 2)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    args = parse_args(argv)
    if args.corpus:
        from crossval import corpus

        return corpus.main(args)
    if args.hf or args.gguf:
        from crossval import conversion

        return conversion.main(args)
    console = Console(stderr=False)
    try:
        device = resolve_device(args.device)
        cases = select(args, device.name)
        th = load_thresholds(args.thresholds)
    except BitnetRefError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 1
    if args.list:
        for c in cases:
            console.print(c.id)
        return 0
    if not cases:
        console.print(f"[bold red]no case matches --filter {args.filter!r}[/] (see --list)")
        return 2
    if args.device != "cpu":
        console.print(f"bitnet_ref on {device}: {device.reason}", markup=False, soft_wrap=True)
    if device.name != "cpu":
        console.print(f"the GPU runs the {cuda.PROFILE} profile on {', '.join(cuda.FORMATS)} weights: only those "
                      "cases are selected", markup=False, soft_wrap=True)
    reference = Reference(args.reference, args.extra_bufts, args.ref_timeout)
    recorder = Recorder(args.out, th, vars(args), len(cases))
    console.print(f"records: {recorder.run.path} (written as cases finish)")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("crossval", total=len(cases))

        def on_result(res: V.CaseResult, pool: Backends) -> None:
            recorder.add(res, pool)
            progress.console.print(f"[{STYLE[res.verdict]}]{res.verdict:6}[/] {res.case.id}  {escape(res.location)}",
                                   soft_wrap=True)
            progress.update(task, advance=1, description=res.case.id)

        results, _ = run_cases(cases, th, on_result, reference)
    path = recorder.finish()
    console.print(summary_table(results))
    for exp in {r.expected["id"]: r.expected for r in results if r.verdict == V.XFAIL}.values():
        console.print(f"[yellow]expected divergence {exp['id']}[/]: {exp['reason']}\n  " + "\n  ".join(exp["links"]))
    for r in results:
        if r.verdict == V.ERROR and r.summary.get("error_tail"):
            console.print(f"[bold magenta]ERROR[/] {r.case.id}: last output of the failed engine:\n"
                          + escape(r.summary["error_tail"]), soft_wrap=True)
    gating = [r for r in results if r.verdict in V.GATING]
    console.print(f"records: {path}")
    if not args.no_report:
        from reports.html import build_index, build_report

        console.print(f"report: {build_report(path)}")
        console.print(f"index: {build_index(args.out)}")
    console.print(f"[{'bold red' if gating else 'green'}]{len(gating)} gate failure(s)[/] in {len(results)} cases")
    return 1 if gating else 0
