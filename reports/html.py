"""Building the HTML reports: one page per run (crossval, bench, corpus or conversion, by RENDERERS) and an index
across every run under out/ with history plots; build_all rebuilds either.

Reads records only (reports.records); the pages are drawn by reports.crossval_report, reports.bench_report and
reports.corpus_report from the primitives in reports.page (real sortable <table> elements, PNG figures embedded as
base64 with alt text), so a page needs no network.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports import plots
from reports.bench_report import REF_ENGINE, render_bench
from reports.conversion_report import render_conversion
from reports.corpus_report import render_corpus
from reports.crossval_report import render_crossval
from reports.page import figure, page, run_date, run_machine, run_sha, table
from reports.records import RecordError, list_runs, read_run

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"

RENDERERS = {"crossval": render_crossval, "bench": render_bench, "corpus": render_corpus,
             "conversion": render_conversion}
WORST_R = "logits_r_min"  # crossval case column: the worst per-position logits Pearson r of the case


def build_report(run_dir: str | Path) -> Path:
    """Write <run_dir>/report.html from the run's records and return its path."""
    run_dir = Path(run_dir)
    meta, tables = read_run(run_dir)
    render = RENDERERS.get(str(meta.get("kind")))
    if render is None:
        raise RecordError(f"{run_dir}: no report for run kind {meta.get('kind')!r}")
    out = run_dir / REPORT_FILE
    out.write_text(render(meta, tables), encoding="utf-8")
    return out


def _index_row(run_dir: Path, out_root: Path) -> tuple[dict, dict | None, dict[str, pd.DataFrame]]:
    """One index row for a run folder (and its records, None when unreadable)."""
    rel = run_dir.relative_to(out_root).as_posix()
    try:
        meta, tables = read_run(run_dir)
    except (RecordError, ValueError, OSError) as err:
        return {"kind": run_dir.parent.name, "run": run_dir.name, "verdict": "unreadable", "date": "",
                "machine": str(err)[:120], "git": "", "href": None}, None, {}
    report = run_dir / REPORT_FILE
    href = f"{rel}/{REPORT_FILE}" if report.is_file() else None
    row = {"kind": meta.get("kind"), "run": meta.get("run_id", run_dir.name), "verdict": meta.get("verdict", "?"),
           "date": run_date(meta), "machine": run_machine(meta), "git": run_sha(meta), "href": href}
    return row, meta, tables


def _crossval_history(runs: list[tuple[dict, dict[str, pd.DataFrame]]]) -> pd.DataFrame:
    """Worst logits r per format, one row per crossval run and format."""
    rows = []
    for meta, tables in runs:
        cases = tables.get("cases")
        if meta.get("kind") != "crossval" or cases is None or not {"fmt", WORST_R} <= set(cases.columns):
            continue
        for fmt_name, worst in cases.groupby("fmt")[WORST_R].min().items():
            rows.append({"run": meta.get("run_id"), "fmt": fmt_name, "worst_r": worst})
    return pd.DataFrame(rows, columns=["run", "fmt", "worst_r"])


def _bench_history(runs: list[tuple[dict, dict[str, pd.DataFrame]]]) -> pd.DataFrame:
    """bitnet_ref / llama.cpp decode ratio per case and threads, one row per bench run and case."""
    rows = []
    for meta, tables in runs:
        s = tables.get("summary")
        if meta.get("kind") != "bench" or s is None:
            continue
        ours = s["engine"].astype(str).str.fullmatch(rf"{REF_ENGINE}(\[[^\]]+\])?")  # one profile, or several
        sel = s[ours & s["metric"].str.startswith("tg")]
        for rec in sel.to_dict("records"):
            profile = rec["engine"][len(REF_ENGINE):]
            rows.append({"run": meta.get("run_id"), "series": f"{rec['case']} {rec['threads']}T{profile}",
                         "decode_ratio": rec["ratio"], "decode_tok_s": rec["median"]})
    return pd.DataFrame(rows, columns=["run", "series", "decode_ratio", "decode_tok_s"])


def _history(runs: list[tuple[dict, dict[str, pd.DataFrame]]]) -> str:
    """History section: trend plots across runs so that a regression shows as a step."""
    out = []
    cv = _crossval_history(runs)
    if not cv.empty:
        alt = "Line plot across crossval runs of the worst logits Pearson r per weight format"
        out.append(figure(plots.trend(cv, "run", "worst_r", "fmt", "worst logits r per format", "Pearson r"), alt))
    bh = _bench_history(runs)
    if not bh.empty:
        alt = "Line plot across bench runs of bitnet_ref's decode speed relative to llama.cpp, per case"
        out.append(figure(plots.trend(bh, "run", "decode_ratio", "series", "decode: bitnet_ref / llama.cpp", "×"),
                          alt))
        alt = "Line plot across bench runs of bitnet_ref decode tokens per second, per case"
        out.append(figure(plots.trend(bh, "run", "decode_tok_s", "series", "decode: bitnet_ref tok/s", "tok/s"),
                          alt))
    return "".join(out) or '<p class="muted">No crossval or bench runs with history figures yet.</p>'


def build_index(out_root: str | Path = "out") -> Path:
    """Write <out_root>/index.html listing every run (verdict, machine, date, git sha, link) with history plots."""
    out_root = Path(out_root)
    rows, runs = [], []
    for run_dir in list_runs(out_root):
        row, meta, tables = _index_row(run_dir, out_root)
        rows.append(row)
        if meta is not None:
            runs.append((meta, tables))
    df = pd.DataFrame(rows, columns=["kind", "run", "verdict", "date", "machine", "git", "href"])
    df = df.iloc[::-1]  # newest first
    listing = table(df, "newest first; click a run to open its report", links={"run": "href"}) if rows else (
        '<p class="muted">No runs under this folder yet.</p>')
    html_text = page("bitnet-ref runs", f"{len(rows)} runs under {out_root.resolve()}",
                     [("runs", "Runs", listing), ("history", "History", _history(runs))])
    out = out_root / INDEX_FILE
    out_root.mkdir(parents=True, exist_ok=True)
    out.write_text(html_text, encoding="utf-8")
    return out


def build_all(target: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Rebuild the reports under `target` (one run folder, or every run of an out/ folder) and the index.

    Returns the files written and the (run folder, error) pairs that could not be rendered.
    """
    target = Path(target)
    if not target.is_dir():
        raise RecordError(f"{target}: not a folder of records (no such directory)")
    single = (target / "run.json").is_file()
    run_dirs = [target] if single else list_runs(target)
    written, failed = [], []
    for run_dir in run_dirs:
        try:
            written.append(build_report(run_dir))
        except (RecordError, ValueError, KeyError, OSError) as err:
            failed.append((run_dir, f"{type(err).__name__}: {err}"))
    root = target.parent.parent if single else target
    if not single or target.resolve() in [p.resolve() for p in list_runs(root)]:
        written.append(build_index(root))
    return written, failed
