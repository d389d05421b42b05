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
import hashlib
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitnet_ref.errors import BitnetRefError, ConfigError
from bitnet_ref.numerics import resolve
from crossval import cases as C
from crossval import metrics as M
from crossval import points as P
from crossval.backends import Backend, BitnetRefBackend, check_distinct
from crossval.build import ReferenceBuild, weight_paths
from crossval.isolated import IsolatedBackend

THRESHOLDS_PATH = Path(__file__).with_name("thresholds.toml")
PASS, FAIL, XFAIL, XPASS, APPROX, ERROR = "PASS", "FAIL", "XFAIL", "XPASS", "APPROX", "ERROR"
VERDICTS = (PASS, APPROX, XFAIL, FAIL, XPASS, ERROR)
APPROX_GATE = "approx"  # the thresholds.toml profile that judges ggml cases on paths the profile does not emulate
REFERENCE = "crossval.llama_cpp_backend:LlamaCppBackend"  # the reference engine's factory, run isolated
REF_TIMEOUT_S = 1800.0  # one reference call (a 2b4t capture group takes minutes on 2 cores)
TOPK = 10
CAPTURE_BYTES = 1 << 30  # activations of both engines held at once; larger models are captured a few layers a time
GATING = (FAIL, XPASS, ERROR)
TABLES = ("cases", "points", "positions", "logits", "topk", "worst_logits")
PROBE_NMSE = 1e-6  # an activation "explains" ffn_sub_out-0 when recomputing it in float64 lands this close


# -- thresholds -----------------------------------------------------------------------------------------------------


def load_thresholds(path: str | Path | None = None) -> dict:
    """The gate profiles, expected divergences and optional points (thresholds.toml by default)."""
    path = Path(path or THRESHOLDS_PATH)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"thresholds {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"thresholds {path}: not TOML ({exc})") from None


def _matches(when: dict, case: C.Case, what: str) -> bool:
    """Whether every `when` field (a Case field) equals the case's; an unknown field is an error naming `what`."""
    for k, v in when.items():
        if not hasattr(case, k):
            raise KeyError(f"thresholds: {what} matches on {k!r}, which is not a case field")
        if getattr(case, k) != v:
            return False
    return True


def _overrides(th: dict, case: C.Case, gate: str) -> list[dict]:
    """The gate profile's override tables whose `when` matches the case, in file order."""
    ovs = th["profiles"][gate].get("overrides", [])
    return [o for o in ovs if _matches(o["when"], case, f"profiles.{gate}.overrides")]


def nmse_bound(th: dict, case: C.Case, point: str, gate: str | None = None) -> float:
    """Per-point NMSE bound of a gate profile (the case's by default): each matching override's nmse (point, then
    default), then the profile's."""
    gate = gate or case.profile
    tables = [o.get("nmse", {}) for o in _overrides(th, case, gate)] + [th["profiles"][gate]["nmse"]]
    for table in tables:
        for key in (point, "default"):
            if key in table:
                return float(table[key])
    raise KeyError(f"thresholds: profiles.{gate}.nmse has no default")


def setting(th: dict, case: C.Case, key: str, gate: str | None = None) -> object:
    """A profile-level setting (logits_r, logits_r_position, greedy): the first matching override's, else the
    gate profile's (the case's by default)."""
    gate = gate or case.profile
    for o in _overrides(th, case, gate):
        if key in o:
            return o[key]
    return th["profiles"][gate][key]


def optional_reason(th: dict, case: C.Case, point: str) -> str | None:
    """Why a point may be missing in this case (an [[optional]] entry of thresholds.toml), else None."""
    for opt in th.get("optional", []):
        if point in opt["points"] and _matches(opt["when"], case, f"optional {opt['id']}"):
            return f"{opt['id']}: {opt['reason']}"
    return None


def expected_for(th: dict, case: C.Case) -> dict | None:
    """The expected divergence a case matches, if any."""
    for exp in th.get("expected", []):
        if _matches(exp["when"], case, f"expected {exp['id']}"):
            return exp
    return None


# -- one case -------------------------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """Verdict, location and metrics of one case."""

    case: C.Case
    verdict: str = PASS
    stage: str | None = None  # tokenizer | layers | logits | greedy: where the first failure is
    location: str = ""
    first: dict | None = None  # first (layer, point) beyond its bound
    expected: dict | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    points: list[dict] = field(default_factory=list)
    positions: list[dict] = field(default_factory=list)
    logits: list[dict] = field(default_factory=list)
    topk: list[dict] = field(default_factory=list)  # both engines' top tokens at the worst position
    worst_logits: list[dict] = field(default_factory=list)  # both engines' full logits at the worst position
    seconds: float = 0.0
    approx: str = ""  # why this ggml case runs a path the profile does not emulate ("" when it does)

    @property
    def gate(self) -> str:
        """The thresholds.toml profile that judges the case."""
        return APPROX_GATE if self.approx else self.case.profile

    def row(self) -> dict:
        """One line of the cases table."""
        return {**self.case.describe(), "verdict": self.verdict, "stage": self.stage, "location": self.location,
                "expected": self.expected["id"] if self.expected else None, "gate": self.gate,
                "approx": self.approx or None, **self.summary, "seconds": self.seconds,
                "first_layer": self.first["layer"] if self.first else None,
                "first_point": self.first["point"] if self.first else None}


def where(point: str, layer: int) -> str:
    """`layer 3 ffn_sub_out` or `head result_norm`."""
    return f"head {point}" if layer == P.HEAD_LAYER else f"layer {layer} {point}"


def tokenizer_parity(engine: Backend, ref: Backend, texts: list[str]) -> str | None:
    """None if both tokenize every text identically (with and without BOS), else where they first differ."""
    for text in texts:
        for bos in (True, False):
            a, b = engine.tokenize(text, bos), ref.tokenize(text, bos)
            if a != b:
                i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                return (f"tokenizer: {text[:40]!r} (bos={bos}) differs at index {i}: "
                        f"{engine.name} {a[i:i + 3]} vs {ref.name} {b[i:i + 3]}")
    return None


def compare_layers(res: CaseResult, a: dict, b: dict, wanted: list, th: dict) -> None:
    """Whole-tensor and per-position metrics at every point; the first point beyond its bound fails the case."""
    case = res.case
    for point, layer in wanted:
        base = {"case": case.id, "point": point, "layer": layer}
        if (point, layer) not in a or (point, layer) not in b:
            missing = "not observed in " + "+".join(n for n, d in (("bitnet_ref", a), ("llama.cpp", b))
                                                      if (point, layer) not in d)
            reason = optional_reason(th, case, point)
            res.points.append({**base, "status": f"{missing} (optional, {reason})" if reason else missing})
            if reason is None:
                res.failures.append(("layers", f"{where(point, layer)} {missing}"))
            continue
        x, y = a[(point, layer)], b[(point, layer)]
        if x.shape != y.shape:
            res.points.append({**base, "status": f"shape {x.shape} vs {y.shape}"})
            res.failures.append(("layers", f"shape mismatch at {where(point, layer)}: {x.shape} vs {y.shape}"))
            continue
        bound = nmse_bound(th, case, point, res.gate)
        m, rows = M.compare(x, y)
        ok = bool(m["nmse"] <= bound)
        res.points.append({**base, "status": "ok" if ok else "over", **m, "bound": bound})
        res.positions += [{**base, "position": t, **{k: float(v[t]) for k, v in rows.items()}}
                          for t in range(x.shape[0])]
        if not ok and res.first is None:
            res.first = {"layer": layer, "point": point, "nmse": m["nmse"], "bound": bound}
            res.failures.append(("layers", f"first divergence: {where(point, layer)}, NMSE {m['nmse']:.1e} > "
                                           f"{bound:.0e}"))


def record_worst_position(res: CaseResult, la: np.ndarray, lb: np.ndarray, t: int, piece=None) -> None:
    """Top-TOPK tokens of both engines, and both full logit rows, at position t (for the report)."""
    for engine, row in (("bitnet_ref", la[t]), ("llama.cpp", lb[t])):
        probs = np.exp(M.log_softmax(row))
        for rank, tok in enumerate(np.argsort(-row, kind="stable")[:TOPK]):
            text = piece(int(tok)).decode("utf-8", "replace") if piece else ""
            res.topk.append({"case": res.case.id, "position": t, "engine": engine, "rank": rank, "token": int(tok),
                             "text": text, "logit": float(row[tok]), "prob": float(probs[tok])})
    res.worst_logits = [{"case": res.case.id, "position": t, "token": v, "bitnet_ref": float(la[t, v]),
                         "llama.cpp": float(lb[t, v])} for v in range(la.shape[1])]


def compare_logits(res: CaseResult, la: np.ndarray, lb: np.ndarray, th: dict, piece=None) -> None:
    """Per-position r, NMSE, KL, top-k. Gates: r over all the case's logits ≥ logits_r, and r at every position ≥
    logits_r_position (a fault confined to a few positions hides in the first figure, not in the second)."""
    case = res.case
    whole, rows = M.compare(la, lb)
    lm = M.logit_metrics(la, lb)
    res.logits = [{"case": case.id, "position": t, **{k: float(v[t]) for k, v in (rows | lm).items()}}
                  for t in range(la.shape[0])]
    bound = float(setting(th, case, "logits_r", res.gate))
    pos_bound = float(setting(th, case, "logits_r_position", res.gate))
    worst = int(np.argmin(rows["pearson"]))
    res.summary.update({"logits_r": whole["pearson"], "logits_r_min": float(rows["pearson"][worst]),
                        "logits_r_min_position": worst, "logits_nmse": whole["nmse"], "kl_max": float(lm["kl"].max()),
                        "kl_mean": float(lm["kl"].mean()), "top1": float(lm["top1"].mean()),
                        "top5": float(lm["top5"].mean()), "top10": float(lm["top10"].mean()),
                        "first_top1_mismatch": M.first_top1_mismatch(la, lb), "logits_r_bound": bound,
                        "logits_r_position_bound": pos_bound, "n_tokens": int(la.shape[0])})
    record_worst_position(res, la, lb, worst, piece)
    if whole["pearson"] < bound:
        res.failures.append(("logits", f"logits: r {whole['pearson']:.6f} < {bound} over {la.shape[0]} positions"))
    elif rows["pearson"][worst] < pos_bound:
        res.failures.append(("logits", f"logits: position {worst} r {rows['pearson'][worst]:.6f} < {pos_bound}"))


def compare_greedy(res: CaseResult, ga: list[int], gb: list[int], th: dict) -> None:
    """Greedy continuations: identical in an "exact" profile, else only recorded."""
    j = next((k for k, (x, y) in enumerate(zip(ga, gb, strict=True)) if x != y), None)
    res.summary.update({"greedy_match": j is None, "greedy_first_diff": j,
                        "greedy_engine": " ".join(map(str, ga)), "greedy_ref": " ".join(map(str, gb))})
    if j is not None and setting(th, res.case, "greedy", res.gate) == "exact":
        res.failures.append(("greedy", f"greedy: step {j} bitnet_ref {ga[j]} vs llama.cpp {gb[j]}"))


def decide(res: CaseResult, th: dict) -> None:
    """Verdict from the failures in stage order and the case's expected divergence."""
    order = ("tokenizer", "layers", "logits", "greedy")
    res.failures.sort(key=lambda f: order.index(f[0]))
    exp = res.expected = expected_for(th, res.case)
    if res.failures:
        res.stage, res.location = res.failures[0]
    at_expected = exp is not None and res.first is not None and res.stage == "layers" and (
        res.first["layer"] == exp["layer"] and res.first["point"] in exp["points"])
    if exp is None:
        res.verdict = FAIL if res.failures else (APPROX if res.approx else PASS)
        if res.approx:
            res.location = f"{res.location} (approx gate: {res.approx})" if res.failures else res.approx
    elif at_expected:
        res.verdict = XFAIL
        probe = f"; probe: bitnet_ref {res.summary.get('ffn_act_engine')}, llama.cpp {res.summary.get('ffn_act_ref')}"
        res.location += f" — expected divergence {exp['id']} ({', '.join(exp['links'])}){probe}"
    elif not res.failures:
        res.verdict, res.stage = XPASS, "expected"
        res.location = f"expected divergence {exp['id']} not observed: review thresholds.toml"
    else:
        res.verdict = FAIL
        res.location += f" (expected {exp['id']} at layer {exp['layer']} {'/'.join(exp['points'])})"


def prompt_text(case: C.Case, engine: Backend, n_ctx: int) -> str:
    """The case's prompt; the long one is built to fill most of the context."""
    if case.prompt != "long":
        return C.PROMPTS[case.prompt]
    return C.long_prompt(lambda s: engine.tokenize(s, True), C.long_target(n_ctx, case.n_greedy))


def point_groups(engine: Backend, n_layer: int, n_tokens: int) -> list[list[tuple[str, int]]]:
    """Every (point, layer) split into groups of whole layers whose captures (both sides) fit CAPTURE_BYTES."""
    cfg = getattr(engine, "config", None)
    per_layer = 2 * 4 * n_tokens * (11 * cfg.n_embd + 4 * cfg.n_ff) if cfg is not None else 0
    step = max(1, CAPTURE_BYTES // per_layer) if per_layer else n_layer
    groups = [[(p, il) for il in range(lo, min(lo + step, n_layer)) for p in P.LAYER_POINTS]
              for lo in range(0, n_layer, step)]
    groups[-1] += [(p, P.HEAD_LAYER) for p in P.HEAD_POINTS]
    return groups


def activation_probe(acts: dict) -> str | None:
    """Which FFN activation an engine computed (docs/NUMERICS.md §11 probe): ffn_sub_out-0 against silu(gate)·up and
    relu²(gate)·up from the same engine's ffn_gate-0 / ffn_up-0; None when no candidate explains it."""
    keys = [(p, 0) for p in ("ffn_gate", "ffn_up", "ffn_sub_out")]
    if not all(k in acts for k in keys):
        return None
    gate, up, out = (acts[k].astype(np.float64) for k in keys)
    candidates = {"silu": gate / (1.0 + np.exp(-gate)) * up, "relu2": np.maximum(gate, 0.0) ** 2 * up}
    scores = {name: M.nmse(out, want) for name, want in candidates.items()}
    best = min(scores, key=scores.get)
    return best if scores[best] < PROBE_NMSE else None


def compare_activations(res: CaseResult, engine: Backend, ref: Backend, tokens: list[int], th: dict,
                        n_layer: int) -> None:
    """Per-layer comparison, group by group, then the logits of every position (result_output as captured:
    llama.cpp's equals its llama_get_logits bit for bit; a backend that does not report it is eval'ed)."""
    head = (P.HEAD_POINTS[-1], P.HEAD_LAYER)
    for i, group in enumerate(point_groups(engine, n_layer, len(tokens))):
        a, b = engine.capture(tokens, group), ref.capture(tokens, group)
        if i == 0:
            res.summary.update({"ffn_act_engine": activation_probe(a), "ffn_act_ref": activation_probe(b)})
        compare_layers(res, a, b, group, th)
    la = a[head] if head in a else engine.eval(tokens)
    lb = b[head] if head in b else ref.eval(tokens)
    tokenizer = getattr(engine, "tokenizer", None)
    compare_logits(res, la, lb, th, tokenizer.piece if tokenizer is not None else None)


def compare_case(case: C.Case, engine: Backend, ref: Backend, th: dict, n_layer: int, n_ctx: int,
                 approx: str = "") -> CaseResult:
    """Run every stage of one case on two loaded backends (engine = bitnet_ref side, ref = llama.cpp side); `approx`
    names the reference path the profile does not emulate, if any (the case is then judged by the approx gate)."""
    check_distinct(engine, ref)
    t0 = time.perf_counter()
    res = CaseResult(case, approx=approx)
    text = prompt_text(case, engine, n_ctx)
    bad = tokenizer_parity(engine, ref, [text, *C.CORPUS])
    if bad:
        res.failures.append(("tokenizer", bad))
    tokens = ref.tokenize(text, True)
    compare_activations(res, engine, ref, tokens, th, n_layer)
    n_new = min(case.n_greedy, n_ctx - len(tokens))
    compare_greedy(res, engine.greedy(tokens, n_new)[0], ref.greedy(tokens, n_new)[0], th)
    decide(res, th)
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


# -- the matrix -----------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_context(path: Path) -> int:
    """The training context length a GGUF declares."""
    from bitnet_ref.config import ModelConfig
    from bitnet_ref.gguf_reader import read_gguf

    with read_gguf(path) as g:
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
    profile = resolve(case.profile)
    return profile.replace(**build.numerics_changes()) if case.profile == "ggml" else profile


def approx_reason(case: C.Case, build: ReferenceBuild, ref_desc: dict) -> str:
    """Why a ggml case cannot be bit-exact: the reference's build or its weights' buffer types ('' when it can)."""
    if case.profile != "ggml":
        return ""
    reasons = [r for r in (build.why_not, weight_paths(ref_desc.get("weight_buffers", {}))) if r]
    return "; ".join(reasons) + ("; ggml profile emulates the plain CPU path" if reasons and not build.why_not else "")


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
                                          n_ctx=n_ctx)
            except BaseException:
                ref.close()
                raise
            approx = approx_reason(case, build, ref_desc)
            self.key = case.model_key
            self.pair = Pair(engine, ref, engine.config.n_layer, n_ctx, epath, lpath, approx)
            for p in {epath, lpath}:
                self.models.setdefault(str(p), {"sha256": sha256(p), "bytes": p.stat().st_size})
            self.described[case.group] = {"engine": engine.describe(), "llama.cpp": ref_desc}
        return self.pair

    def close(self) -> None:
        """Release the current pair."""
        if self.pair is not None:
            self.pair.ref.close()
        self.key = self.pair = None


def error_result(case: C.Case, exc: BitnetRefError, seconds: float) -> CaseResult:
    """The verdict of a case whose engine or reference failed: ERROR, the error's first line, its output's tail."""
    res = CaseResult(case, verdict=ERROR, stage="error", location=str(exc).splitlines()[0], seconds=seconds)
    res.summary["error_tail"] = getattr(exc, "tail", "") or str(exc)
    return res


def run_cases(cases: list[C.Case], th: dict, on_result=None,
              reference: Reference | None = None) -> tuple[list[CaseResult], Backends]:
    """Run cases in order (grouped by model for reuse); on_result(result) after each. A backend that fails (the
    reference crashed, hung or raised; a model does not load) makes that case ERROR and is restarted for the next."""
    pool = Backends(reference)
    results = []
    try:
        for case in sorted(cases, key=lambda c: (str(c.model_key), c.prompt)):
            t0 = time.perf_counter()
            try:
                pair = pool.get(case)
                res = compare_case(case, pair.engine, pair.ref, th, pair.n_layer, pair.n_ctx, pair.approx)
                res.summary.update({"engine_model": str(pair.engine_path), "llama_model": str(pair.llama_path),
                                    "engine_sha256": pool.models[str(pair.engine_path)]["sha256"]})
            except BitnetRefError as exc:
                res = error_result(case, exc, round(time.perf_counter() - t0, 3))
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
        self.results: list[CaseResult] = []
        self.run.write_meta({"provenance": records.provenance(), "args": args, "thresholds": th,
                             "points": P.describe(), "n_cases": n_cases, "complete": False,
                             "verdict": "incomplete"})

    def add(self, res: CaseResult, pool: Backends) -> None:
        """Append one finished case and refresh run.json."""
        self.results.append(res)
        self.run.append_rows("cases", [res.row()])
        for name in TABLES[1:]:
            self.run.append_rows(name, getattr(res, name))
        self.run.write_meta({"models": pool.models, "backends": pool.described, **self._verdicts()})

    def _verdicts(self) -> dict:
        """Counts per verdict and the cases that did not simply pass."""
        return {"counts": {v: sum(r.verdict == v for r in self.results) for v in VERDICTS},
                "failures": [{"case": r.case.id, "verdict": r.verdict, "location": r.location}
                             for r in self.results if r.verdict != PASS]}

    def finish(self) -> Path:
        """Write the CSV tables and the final verdict."""
        self.run.finish_tables(list(TABLES))
        failed = any(r.verdict in GATING for r in self.results)
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
    ap.add_argument("--list", action="store_true", help="list the selected cases and exit")
    ap.add_argument("--no-report", action="store_true", help="write records only, no HTML report")
    return ap.parse_args(argv)


def select(args: argparse.Namespace) -> list[C.Case]:
    """The cases the options select."""
    cases = C.matrix(quick=args.quick, with_2b4t=args.with_2b4t)
    if args.flash_attn:
        cases = [dataclasses.replace(c, flash_attn=True) for c in cases]
    wanted = [f for f in args.filter.split(",") if f] or [""]
    return [c for c in cases if any(f in c.id for f in wanted)]


STYLE = {PASS: "green", APPROX: "cyan", XFAIL: "yellow", FAIL: "bold red", XPASS: "bold red", ERROR: "bold magenta"}


def summary_table(results: list[CaseResult]):
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
    console = Console(stderr=False)
    try:
        cases = select(args)
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
    reference = Reference(args.reference, args.extra_bufts, args.ref_timeout)
    recorder = Recorder(args.out, th, vars(args), len(cases))
    console.print(f"records: {recorder.run.path} (written as cases finish)")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("crossval", total=len(cases))

        def on_result(res: CaseResult, pool: Backends) -> None:
            recorder.add(res, pool)
            progress.console.print(f"[{STYLE[res.verdict]}]{res.verdict:6}[/] {res.case.id}  {escape(res.location)}",
                                   soft_wrap=True)
            progress.update(task, advance=1, description=res.case.id)

        results, _ = run_cases(cases, th, on_result, reference)
    path = recorder.finish()
    console.print(summary_table(results))
    for exp in {r.expected["id"]: r.expected for r in results if r.verdict == XFAIL}.values():
        console.print(f"[yellow]expected divergence {exp['id']}[/]: {exp['reason']}\n  " + "\n  ".join(exp["links"]))
    for r in results:
        if r.verdict == ERROR and r.summary.get("error_tail"):
            console.print(f"[bold magenta]ERROR[/] {r.case.id}: last output of the failed engine:\n"
                          + escape(r.summary["error_tail"]), soft_wrap=True)
    gating = [r for r in results if r.verdict in GATING]
    console.print(f"records: {path}")
    if not args.no_report:
        from reports.html import build_index, build_report

        console.print(f"report: {build_report(path)}")
        console.print(f"index: {build_index(args.out)}")
    console.print(f"[{'bold red' if gating else 'green'}]{len(gating)} gate failure(s)[/] in {len(results)} cases")
    return 1 if gating else 0
