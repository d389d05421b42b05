"""`python -m crossval --corpus FILE`: corpus-level KL divergence between two engines, as llama-perplexity's
KL-divergence mode (`--kl-divergence`, tools/perplexity/perplexity.cpp) reports it.

The text is tokenized once by each engine (add BOS, special tokens parsed); the ids must be identical. It is cut into
chunks of n_ctx tokens (the remainder dropped), each chunk's first token replaced by BOS when the vocabulary adds
one, and each chunk is evaluated from an empty cache. Only the second half of a chunk is scored: the logits at
positions n_ctx/2 .. n_ctx-2, each predicting the next token, so every scored token has at least n_ctx/2 of context.

Per scored token, from each engine's f32 logits in float64: KL(P_base ‖ P_other) in nats, whether the two argmaxes
agree, each engine's NLL of the actual next token and Δp = p_other − p_base of that token. The statistics are
llama-perplexity's: mean ± standard error (zero below 11 tokens), percentiles by linear interpolation, PPL = exp(mean
NLL) ± PPL · its standard error, ln(PPL_other/PPL_base) with the covariance of the NLLs, their correlation, the
fraction of tokens with the same top token ± sqrt(p(1−p)/(n−1)). Unlike llama-perplexity, which stores the base's
log-probabilities as 16-bit and skips base probabilities below e^-16, nothing is quantized or cut here.

The mode reports; it gates only with `--max-kld X` (exit 1 when the mean KLD is above X). Records go to
out/corpus/<run-id>/ as chunks finish (tokens, chunks; summary at the end, and in run.json after every chunk).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bitnet_ref.errors import BitnetRefError, FileAccessError
from bitnet_ref.files import file_sha256, model_identity, open_file
from crossval.backends import Backend, BackendError, BitnetRefBackend
from crossval.isolated import ChildError, IsolatedBackend
from crossval.metrics import kl_of_log_probs, log_softmax
from crossval.run import REF_TIMEOUT_S, REFERENCE, model_context

KIND = "corpus"  # the records' kind: out/corpus/<run-id>/
ISOLATED = {  # engines run in a child process: name -> factory
    "llama.cpp": REFERENCE,
    "transformers": "crossval.hf_backend:HFBackend",
}
ENGINES = ("bitnet_ref", *ISOLATED)
DEFAULT_PRESET, DEFAULT_FORMAT = "tiny", "tq2_0"  # the synthetic model used when no --model is given
DEFAULT_CTX = 512  # llama-perplexity's default context, capped at the model's
ROW_BLOCK = 64  # scored rows per float64 pass (bounds memory on 128k vocabularies)
PERCENTILES = (99.9, 99.0, 95.0, 90.0, 10.0, 5.0, 1.0, 0.1)  # what llama-perplexity prints besides max/median/min
FIELDS = ("kld", "top1", "nll_base", "nll_other", "p_diff")  # per scored token
TABLES = ("tokens", "chunks")  # journaled as chunks finish; `summary` is written at the end


# -- engines --------------------------------------------------------------------------------------------------------


def parse_engines(text: str) -> tuple[str, str]:
    """`A,B` -> (base, other): two known, different engines (a comparison of an engine with itself proves nothing)."""
    names = tuple(n.strip() for n in text.split(","))
    unknown = [n for n in names if n not in ENGINES]
    if len(names) != 2 or unknown:
        raise BackendError(f"--engines {text!r}: expected two of {', '.join(ENGINES)}, comma-separated")
    if names[0] == names[1]:
        raise BackendError(f"both engines are {names[0]!r}; a cross-check needs two engines")
    return names


def check_loadable(name: str, model_path: Path) -> None:
    """BackendError when llama.cpp is asked to load bitnet.cpp's I2_S, TL1 or TL2 weights, which it has no type for."""
    if name != "llama.cpp" or not model_path.is_file():
        return
    from bitnet_ref.formats import get
    from bitnet_ref.gguf_reader import read_gguf
    from bitnet_ref.synth import TWIN_OF

    with read_gguf(model_path) as g:
        types = sorted({get(t.type).NAME.upper() for t in g.tensors.values() if t.type in TWIN_OF})
    if types:
        raise BackendError(f"llama.cpp cannot load {model_path}: it holds {', '.join(types)} weights (bitnet.cpp's "
                           "formats, which llama.cpp has no type for); compare on its TQ2_0 twin "
                           "(bitnet_ref.synth.tq2_0_twin) or use another engine pair")


def open_engine(name: str, model_path: str | Path, *, numerics: object, threads: int, n_ctx: int,
                timeout: float = REF_TIMEOUT_S, i2s_layout: str = "x86") -> Backend:
    """Load one engine on a model with a context of n_ctx tokens (one ubatch): bitnet_ref in this process with the
    given numerics (a profile name or a Numerics), llama.cpp and transformers each in a child process."""
    path = Path(model_path)
    if name == "bitnet_ref":
        return BitnetRefBackend(path, numerics=numerics, n_threads=threads, n_ctx=n_ctx, i2s_layout=i2s_layout)
    if name not in ISOLATED:
        raise BackendError(f"unknown engine {name!r}; engines: {', '.join(ENGINES)}")
    check_loadable(name, path)
    kwargs: dict = {"path": str(path), "n_threads": threads, "n_ctx": n_ctx}
    if name == "llama.cpp":
        kwargs["echo_log"] = True  # the child's log is what a crash report quotes
    return IsolatedBackend(ISOLATED[name], kwargs, name=name, timeout=timeout)


def engine_label(name: str, profile: str) -> str:
    """The name a report shows: bitnet_ref carries its numerics profile, e.g. `bitnet_ref[bitnet]`."""
    return f"{name}[{profile}]" if name == "bitnet_ref" else name


# -- corpus and chunks ----------------------------------------------------------------------------------------------


def read_corpus(path: str | Path) -> str:
    """The corpus text; a missing, unreadable or non-UTF-8 file is a FileAccessError naming it."""
    with open_file(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileAccessError(path, "read", f"not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def default_model() -> Path:
    """The project's small synthetic TQ2_0 model (generated and cached on first use), as crossval's quick cases use."""
    from bitnet_ref.synth import cached_model

    return cached_model(preset=DEFAULT_PRESET, fmt=DEFAULT_FORMAT)


def first_mismatch(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where two token lists differ (the shorter length if one is a prefix), or None."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    if diff.size:
        return int(diff[0])
    return None if len(a) == len(b) else n


def bos_of(engine: Backend) -> int | None:
    """The BOS id the engine adds to a text, or None when its vocabulary adds none (llama_vocab_get_add_bos)."""
    ids = engine.tokenize("", True)
    if len(ids) > 1:
        raise BackendError(f"{engine.name} adds {ids} to an empty text; llama-perplexity refuses vocabularies that "
                           "add EOS too")
    return ids[0] if ids else None


def make_chunks(tokens: list[int], n_ctx: int, bos: int | None, n_chunks: int | None = None) -> list[list[int]]:
    """Consecutive chunks of n_ctx tokens (the tail that fills no chunk dropped, at most n_chunks), each one's first
    token replaced by BOS when there is one."""
    n = len(tokens) // n_ctx
    n = n if n_chunks is None else min(n, n_chunks)
    chunks = [list(tokens[i * n_ctx:(i + 1) * n_ctx]) for i in range(n)]
    if bos is not None:
        for chunk in chunks:
            chunk[0] = bos
    return chunks


def scored_positions(n_ctx: int) -> range:
    """The positions whose logits are scored: the second half of a chunk, n_ctx/2 .. n_ctx-2 (the last position has
    no next token)."""
    return range(n_ctx // 2, n_ctx - 1)


# -- statistics -----------------------------------------------------------------------------------------------------


def token_stats(base_logits: np.ndarray, other_logits: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of two (n, n_vocab) f32 logit arrays and the n next tokens: KL(P_base ‖ P_other) in nats, argmax
    agreement, each engine's NLL of the target, and Δp = p_other − p_base of the target; all in float64."""
    base, other = np.asarray(base_logits), np.asarray(other_logits)
    targets = np.asarray(targets, np.int64)
    if base.shape != other.shape or base.ndim != 2 or targets.shape != base.shape[:1]:
        raise ValueError(f"logits {base.shape} vs {other.shape} and targets {targets.shape} do not match")
    kld, nll_base, nll_other = (np.empty(len(targets)) for _ in range(3))
    for s in range(0, len(targets), ROW_BLOCK):
        e = min(s + ROW_BLOCK, len(targets))
        lb, lo = log_softmax(base[s:e]), log_softmax(other[s:e])
        kld[s:e] = kl_of_log_probs(lb, lo)
        rows = np.arange(e - s)
        nll_base[s:e], nll_other[s:e] = -lb[rows, targets[s:e]], -lo[rows, targets[s:e]]
    return {"kld": kld, "top1": base.argmax(axis=-1) == other.argmax(axis=-1), "nll_base": nll_base,
            "nll_other": nll_other, "p_diff": np.exp(-nll_other) - np.exp(-nll_base)}


def mean_and_error(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error sqrt(var/(n−1)), the error 0 for 10 values or fewer (llama-perplexity's
    mean_and_uncertainty)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return 0.0, 0.0
    var = float(np.var(x))
    return float(np.mean(x)), float(np.sqrt(var / (x.size - 1))) if var > 0 and x.size > 10 else 0.0


def covariance_of_means(a: np.ndarray, b: np.ndarray) -> float:
    """Covariance of the two means, cov(a, b)/(n−1); 0 below 10 values (llama-perplexity's covariance)."""
    if a.size < 10:
        return 0.0
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (a.size - 1))


def summarize(stats: dict[str, np.ndarray], base: str = "base", other: str = "other") -> list[dict]:
    """The statistics llama-perplexity prints, as rows {stat, label, value, error} (error None where it has none);
    percentages are in percent, PPLs and KLDs as they are."""
    n = int(stats["kld"].size)
    rows: list[dict] = [{"stat": "tokens", "label": "scored tokens", "value": n, "error": None}]

    def add(stat: str, label: str, value: float, error: float | None = None) -> None:
        rows.append({"stat": stat, "label": label, "value": value, "error": error})

    ln_o, ln_b = mean_and_error(stats["nll_other"]), mean_and_error(stats["nll_base"])
    cov = covariance_of_means(stats["nll_other"], stats["nll_base"])
    ppl_o, ppl_b = np.exp(ln_o[0]), np.exp(ln_b[0])
    add("ppl_other", f"PPL({other})", ppl_o, ppl_o * ln_o[1])
    add("ppl_base", f"PPL({base})", ppl_b, ppl_b * ln_b[1])
    den = ln_o[1] * ln_b[1]
    add("nll_cor", f"Cor(ln PPL({other}), ln PPL({base})) %", 100.0 * cov / den if den > 0 else float("nan"))
    ratio, ratio_err = ln_o[0] - ln_b[0], float(np.sqrt(max(ln_o[1] ** 2 + ln_b[1] ** 2 - 2.0 * cov, 0.0)))
    add("ln_ppl_ratio", f"Mean ln(PPL({other})/PPL({base}))", ratio, ratio_err)
    add("ppl_ratio", f"Mean PPL({other})/PPL({base})", np.exp(ratio), np.exp(ratio) * ratio_err)
    diff_var = (ppl_o * ln_o[1]) ** 2 + (ppl_b * ln_b[1]) ** 2 - 2.0 * ppl_o * ppl_b * cov
    add("ppl_diff", f"Mean PPL({other})-PPL({base})", ppl_o - ppl_b, float(np.sqrt(max(diff_var, 0.0))))
    kld = np.asarray(stats["kld"], np.float64)
    add("kld_mean", "Mean KLD", *mean_and_error(kld))
    if n:
        add("kld_max", "Maximum KLD", float(kld.max()))
        for q in PERCENTILES[:4]:
            add(f"kld_p{q:g}", f"{q:.1f}% KLD", float(np.percentile(kld, q)))
        add("kld_median", "Median KLD", float(np.median(kld)))
        for q in PERCENTILES[4:]:
            add(f"kld_p{q:g}", f"{q:.1f}% KLD", float(np.percentile(kld, q)))
        add("kld_min", "Minimum KLD", float(kld.min()))
    dp, dp_err = mean_and_error(stats["p_diff"])
    add("p_diff_mean", "Mean Δp %", 100.0 * dp, 100.0 * dp_err)
    mse, mse_err = mean_and_error(np.asarray(stats["p_diff"], np.float64) ** 2)
    rms = float(np.sqrt(mse))
    add("p_diff_rms", "RMS Δp %", 100.0 * rms, 100.0 * 0.5 * mse_err / rms if rms > 0 else 0.0)
    top = float(np.mean(stats["top1"])) if n else 0.0
    add("same_top", "Same top p %", 100.0 * top, 100.0 * float(np.sqrt(top * (1 - top) / (n - 1))) if n > 1 else 0.0)
    return rows


def stat_values(rows: list[dict]) -> dict[str, float]:
    """{stat: value} of summary rows."""
    return {r["stat"]: r["value"] for r in rows}


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The per-token arrays of several chunks, joined."""
    return {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in FIELDS}


# -- the run --------------------------------------------------------------------------------------------------------


class Recorder:
    """The run's records, written as chunks finish: every scored token's row and the chunk's row appended to the
    journals, run.json's summary refreshed; finish() writes the CSV tables, the summary and the verdict."""

    def __init__(self, out_root: str | Path, meta: dict):
        from reports import records

        self.run = records.new_run(KIND, out_root)
        self.run.write_meta({"provenance": records.provenance(), **meta, "complete": False, "verdict": "incomplete"})

    def add(self, chunk: int, stats: dict[str, np.ndarray], tokens: list[int], row: dict, summary: list[dict]) -> None:
        """Append one chunk's per-token rows and its chunk row; refresh run.json's summary."""
        first = scored_positions(len(tokens)).start
        self.run.append_rows("tokens", [
            {"chunk": chunk, "position": first + i, "token": tokens[first + i + 1],
             **{k: (bool(stats[k][i]) if k == "top1" else float(stats[k][i])) for k in FIELDS}}
            for i in range(stats["kld"].size)])
        self.run.append_rows("chunks", [row])
        self.run.write_meta({"chunks_done": chunk + 1, "summary": {r["stat"]: r for r in summary}})

    def finish(self, verdict: str, summary: list[dict], **meta) -> Path:
        """Write the CSV tables, the summary table and the final verdict."""
        import pandas as pd

        self.run.finish_tables(list(TABLES))
        self.run.write_table("summary", pd.DataFrame(summary, columns=["stat", "label", "value", "error"]))
        self.run.write_meta({"complete": True, "verdict": verdict, **meta})
        return self.run.path


def ggml_following(ref_desc: dict) -> tuple[object, dict]:
    """The ggml profile following the build llama.cpp reports (crossval.build), and that build's description."""
    from crossval.build import ReferenceBuild

    build = ReferenceBuild.from_system_info(ref_desc.get("system_info", ""))
    return build.ggml_numerics(), build.describe()


class Comparison:
    """Two loaded engines, the base first, on one model and one context size; score() evaluates one chunk."""

    def __init__(self, engines: dict[str, Backend], labels: tuple[str, str], n_ctx: int, build: dict | None = None):
        self.engines, self.labels, self.n_ctx, self.build = engines, labels, n_ctx, build
        self.names = tuple(engines)
        self.described: dict[str, dict] = {}

    @classmethod
    def open(cls, names: tuple[str, str], model: Path, args: argparse.Namespace, n_ctx: int) -> Comparison:
        """Load both engines; isolated ones first, so that bitnet_ref's ggml profile follows llama.cpp's build."""
        engines: dict[str, Backend] = {}
        build = None
        try:
            for name in sorted(names, key=lambda n: n == "bitnet_ref"):
                numerics: object = args.numerics
                if name == "bitnet_ref" and numerics == "ggml" and "llama.cpp" in engines:
                    numerics, build = ggml_following(engines["llama.cpp"].describe())
                engines[name] = open_engine(name, model, numerics=numerics, threads=args.threads, n_ctx=n_ctx,
                                            timeout=args.ref_timeout, i2s_layout=args.i2s_layout)
            labels = (engine_label(names[0], args.numerics), engine_label(names[1], args.numerics))
            pair = cls({n: engines[n] for n in names}, labels, n_ctx, build)
            pair.described = {name: engine.describe() for name, engine in pair.engines.items()}
        except BaseException:
            for engine in engines.values():
                getattr(engine, "close", lambda: None)()
            raise
        return pair

    def close(self) -> None:
        """Release both engines (children end)."""
        for engine in self.engines.values():
            getattr(engine, "close", lambda: None)()

    def tokenize(self, text: str) -> tuple[list[int], int | None]:
        """The corpus tokens (identical in both engines, else BackendError naming the first difference) and BOS."""
        base, other = (self.engines[n] for n in self.names)
        ids = [base.tokenize(text, True), other.tokenize(text, True)]
        at = first_mismatch(*ids)
        if at is not None:
            got = [str(t[at]) if at < len(t) else "end" for t in ids]
            raise BackendError(f"the tokenizers differ at token {at} of {len(ids[0])}/{len(ids[1])}: "
                               f"{self.labels[0]} {got[0]}, {self.labels[1]} {got[1]}; a KL divergence over "
                               "different tokens means nothing")
        bos = [bos_of(base), bos_of(other)]
        if bos[0] != bos[1]:
            raise BackendError(f"the engines' BOS differ: {self.labels[0]} {bos[0]}, {self.labels[1]} {bos[1]}")
        return ids[0], bos[0]

    def score(self, chunk: list[int]) -> tuple[dict[str, np.ndarray], list[float]]:
        """Evaluate one chunk with both engines from an empty cache and score its second half; seconds per engine."""
        logits, seconds = [], []
        for name in self.names:
            t0 = time.perf_counter()
            logits.append(np.asarray(self.engines[name].eval(chunk), np.float32))
            seconds.append(time.perf_counter() - t0)
        if logits[0].shape != logits[1].shape:
            raise BackendError(f"logits of {self.labels[0]} {logits[0].shape} and {self.labels[1]} "
                               f"{logits[1].shape} differ in shape (another vocabulary?)")
        rows = scored_positions(len(chunk))
        targets = np.asarray(chunk[rows.start + 1:rows.stop + 1])
        return token_stats(logits[0][rows.start:rows.stop], logits[1][rows.start:rows.stop], targets), seconds


def chunk_row(chunk: int, stats: dict[str, np.ndarray], seconds: list[float]) -> dict:
    """One row of the chunks table: this chunk's own statistics and each engine's eval time."""
    return {"chunk": chunk, "tokens": int(stats["kld"].size), "kld_mean": float(stats["kld"].mean()),
            "kld_max": float(stats["kld"].max()), "same_top": float(stats["top1"].mean()),
            "ppl_base": float(np.exp(stats["nll_base"].mean())), "ppl_other": float(np.exp(stats["nll_other"].mean())),
            "seconds_base": round(seconds[0], 3), "seconds_other": round(seconds[1], 3)}


# -- CLI ------------------------------------------------------------------------------------------------------------


def resolve_ctx(args: argparse.Namespace, model: Path) -> int:
    """The chunk size: --ctx, or min(512, the model's context); BackendError outside 4 .. the model's context."""
    limit = model_context(model)
    n_ctx = min(DEFAULT_CTX, limit) if args.ctx is None else args.ctx
    if not 4 <= n_ctx <= limit:
        raise BackendError(f"--ctx {n_ctx}: a chunk needs 4 to {limit} tokens (the model's context)")
    if args.chunks is not None and args.chunks < 1:
        raise BackendError(f"--chunks {args.chunks}: expected a positive count")
    return n_ctx


def progress_line(chunk: int, n_chunks: int, rows: list[dict], seconds: list[float], labels: tuple[str, str]) -> str:
    """One console line per chunk, cumulative like llama-perplexity's chunk table (plain text, no markup)."""
    s = {r["stat"]: r for r in rows}

    def pm(stat: str, digits: int) -> str:
        return f"{s[stat]['value']:.{digits}f} ± {s[stat]['error']:.{digits}f}"

    return (f"chunk {chunk + 1}/{n_chunks}: PPL({labels[1]}) {pm('ppl_other', 4)}  ln ratio {pm('ln_ppl_ratio', 5)}  "
            f"KLD {pm('kld_mean', 6)}  same top {pm('same_top', 3)} %  "
            f"({labels[0]} {seconds[0]:.2f} s, {labels[1]} {seconds[1]:.2f} s)")


def summary_table(rows: list[dict], title: str):
    """A rich table of the statistics: label, value, ± error."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for col in ("statistic", "value", "±"):
        table.add_column(col, justify="left" if col == "statistic" else "right")
    for r in rows:
        value = f"{r['value']:d}" if isinstance(r["value"], int) else f"{r['value']:.6f}"
        table.add_row(escape(r["label"]), value, "" if r["error"] is None else f"{r['error']:.6f}")
    return table


def main(args: argparse.Namespace) -> int:
    """Run the corpus mode; 0 when it ran (and the mean KLD is within --max-kld when given), 1 on an error."""
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    try:
        names = parse_engines(args.engines)
        text = read_corpus(args.corpus)
        model = Path(args.model) if args.model else default_model()
        n_ctx = resolve_ctx(args, model)
        identity = model_identity(model)
        pair = Comparison.open(names, model, args, n_ctx)
    except BitnetRefError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 1
    console.print(f"engines: base {pair.labels[0]}, other {pair.labels[1]}; model {model}; chunks of {n_ctx} tokens",
                  markup=False, soft_wrap=True)
    approx = (pair.build or {}).get("not_emulated")
    if approx:
        console.print(f"[yellow]note:[/] the ggml profile cannot be bit-exact here: {escape(approx)}", soft_wrap=True)
    try:
        meta = {"args": vars(args), "engines": {"base": pair.labels[0], "other": pair.labels[1]}, "n_ctx": n_ctx,
                "model": {"path": str(model), **identity},
                "corpus": {"path": str(args.corpus), "sha256": file_sha256(args.corpus), "chars": len(text)},
                "backends": pair.described, "build": pair.build, "approx": approx, "max_kld": args.max_kld}
        recorder = Recorder(args.out, meta)
        console.print(f"records: {recorder.run.path} (written as chunks finish)")
        return _run(pair, text, args, recorder, console)
    finally:
        pair.close()


def _run(pair: Comparison, text: str, args: argparse.Namespace, recorder: Recorder, console) -> int:
    """Tokenize, score every chunk, print and record; an engine that fails is an ERROR verdict, records kept."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    parts: list[dict[str, np.ndarray]] = []
    rows = summarize(concat(parts), *pair.labels)
    try:
        tokens, bos = pair.tokenize(text)
        chunks = make_chunks(tokens, pair.n_ctx, bos, args.chunks)
        recorder.run.write_meta({"n_tokens": len(tokens), "bos": bos, "n_chunks": len(chunks)})
        if not chunks:
            raise BackendError(f"{args.corpus} gives {len(tokens)} tokens, fewer than one chunk of {pair.n_ctx}")
        console.print(f"{len(tokens)} tokens, {len(chunks)} chunks of {pair.n_ctx}, scoring "
                      f"{len(scored_positions(pair.n_ctx))} tokens of each")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("chunks", total=len(chunks))
            for i, chunk in enumerate(chunks):
                stats, seconds = pair.score(chunk)
                parts.append(stats)
                rows = summarize(concat(parts), *pair.labels)
                recorder.add(i, stats, chunk, chunk_row(i, stats, seconds), rows)
                progress.console.print(progress_line(i, len(chunks), rows, seconds, pair.labels), markup=False,
                                       soft_wrap=True)
                progress.update(task, advance=1)
    except BitnetRefError as exc:
        tail = exc.tail if isinstance(exc, ChildError) else ""
        path = recorder.finish("error", rows, error=str(exc), error_tail=tail)
        console.print(f"[bold magenta]ERROR[/] {escape(str(exc))}", soft_wrap=True)
        if tail:
            console.print("last output of the failed engine:\n" + escape(tail), soft_wrap=True)
        _reports(path, args, console)
        return 1
    mean = stat_values(rows)["kld_mean"]
    failed = args.max_kld is not None and not mean <= args.max_kld  # a NaN mean fails too
    verdict = "ok" if args.max_kld is None else ("fail" if failed else "pass")
    path = recorder.finish(verdict, rows)
    console.print(summary_table(rows, f"KL divergence: {pair.labels[1]} against {pair.labels[0]} (base)"))
    _reports(path, args, console)
    if args.max_kld is not None:
        console.print(f"[{'bold red' if failed else 'green'}]mean KLD {mean:.6f} "
                      f"{'>' if failed else '≤'} --max-kld {args.max_kld:g}[/]")
    return 1 if failed else 0


def _reports(path: Path, args: argparse.Namespace, console) -> None:
    """Print where the records are and, unless --no-report, build the run's report and the index."""
    console.print(f"records: {path}")
    if not args.no_report:
        from reports.html import build_index, build_report

        console.print(f"report: {build_report(path)}")
        console.print(f"index: {build_index(args.out)}")
