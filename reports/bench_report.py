"""The bench report page: verdict against the speed targets and the baseline, the summary of medians and ratios,
throughput, ratio and roofline, thread sweep, compile/load/memory, samples and provenance (render_bench).
"""

from __future__ import annotations

import pandas as pd

from reports import plots
from reports.page import banner, esc, figure, flatten, fmt, missing, page, provenance_table, run_subtitle, table

METRIC_PREFIXES = {"pp": "prefill", "tg": "decode"}


def metric_title(metric: str) -> str:
    """'pp128' -> 'prefill 128', 'tg128' -> 'decode 128', 'ttft' -> 'time to first token'."""
    if metric == "ttft":
        return "time to first token"
    return f"{METRIC_PREFIXES[metric[:2]]} {metric[2:]}" if metric[:2] in METRIC_PREFIXES else metric


REF_ENGINE = "bitnet_ref"  # a run of several numerics profiles names them 'bitnet_ref[ggml]', 'bitnet_ref[bitnet]'
NOISY = 0.5  # interquartile range / median of a summary row above this: flagged as noisy
TARGETS = {"tg": 0.5, "pp": 0.25}  # issue 5: bitnet_ref / llama.cpp speed on the same file and threads, by phase prefix


def _range_text(row: dict) -> str:
    """'median [min–max]' of a summary row."""
    return f"{fmt(row['median'])} [{fmt(row['min'])}–{fmt(row['max'])}]"


def _is_ref(engines: pd.Series) -> pd.Series:
    """Which engines are bitnet_ref, under any numerics profile."""
    return (engines == REF_ENGINE) | engines.str.startswith(REF_ENGINE + "[")


def _bench_headline(summary: pd.DataFrame) -> list[str]:
    """Banner bullets: each bitnet_ref engine's speed ratio per case and phase against the issue's targets."""
    items = []
    ref = summary[_is_ref(summary["engine"]) & summary["metric"].str[:2].isin(list(TARGETS))]
    for (case, threads, engine), sub in ref.groupby(["case", "threads", "engine"], sort=False):
        parts = []
        for rec in sub.to_dict("records"):
            target = TARGETS[rec["metric"][:2]]
            ok = rec["ratio"] >= target if pd.notna(rec["ratio"]) else None
            mark = "–" if ok is None else ("✓" if ok else "✗")
            ratio = f"{rec['ratio']:.2f}" if pd.notna(rec["ratio"]) else "–"
            parts.append(f"{esc(rec['metric'])} {ratio}× {mark} (target ≥ {target}×)")
        name = "" if engine == REF_ENGINE else f", {esc(engine)}"
        items.append(f"<b>{esc(case)}</b>, {esc(threads)} threads{name}: " + "; ".join(parts))
    return items


def _bench_verdict(meta: dict, tables: dict[str, pd.DataFrame]) -> str:
    """The bench banner: verdict, ratios against targets, regressions against the baseline."""
    verdict = str(meta.get("verdict", "unknown"))
    items = _bench_headline(tables["summary"]) if "summary" in tables else []
    reg = tables.get("regressions")
    base = meta.get("baseline") or {}
    if reg is not None and not reg.empty:
        flagged = reg[reg["status"] == "regression"] if "status" in reg else reg
        worst = reg.sort_values("change_pct").iloc[0]
        items.append(f"<b>{len(flagged)} regressions</b>, {len(reg) - len(flagged)} inconclusive (within the "
                     f"repetitions' spread) against baseline {esc(base.get('run_id', ''))} (table below); worst: "
                     f"{esc(worst['case'])} {esc(worst['threads'])}T {esc(worst['metric'])} {esc(worst['kind'])} "
                     f"{esc(fmt(worst['change_pct']))}%")
    elif base:
        items.append(f"no regression against baseline {esc(base.get('run_id', ''))}")
    items += [esc(note) for note in meta.get("notes", [])]
    summary = tables.get("summary")
    if summary is not None and "spread" in summary:
        noisy = int((summary["spread"] > NOISY).sum())
        if noisy:
            items.append(f"{noisy} of {len(summary)} figures have an interquartile spread over {NOISY:.0%} between "
                         "repetitions (column spread): the host was busy; ratios (engines interleaved) are more robust")
    headline = f"bench: {verdict} — ratio = bitnet_ref / llama.cpp (flash attention auto), same file and threads"
    body = banner(verdict, headline, items)
    if reg is not None and not reg.empty:
        body += "<h3>Regressions</h3>" + table(reg, "change = speed change vs the baseline (negative: slower)")
    return body


def _bench_wide(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per case × threads × engine with every phase as 'median [min–max]', the ratio and % roofline."""
    rows = []
    keys = ["case", "threads", "engine", "file"]
    for key, sub in summary.groupby(keys, sort=False):
        row = dict(zip(keys, key, strict=True))
        for rec in sub.to_dict("records"):
            row[f"{rec['metric']} ({rec['unit']})"] = _range_text(rec)
            row[f"{rec['metric']} ×"] = rec["ratio"]
            if str(rec["metric"]).startswith("tg"):
                row["decode % roofline"] = rec.get("roofline_pct")
        rows.append(row)
    return pd.DataFrame(rows)


def _bench_summary(tables: dict[str, pd.DataFrame]) -> str:
    """Summary section: the wide table of medians, ranges, ratios and roofline."""
    if "summary" not in tables:
        return missing("summary table")
    return table(_bench_wide(tables["summary"]), "median [min–max] over repetitions; × = speed relative to llama.cpp")


def _bench_throughput(tables: dict[str, pd.DataFrame]) -> str:
    """Throughput section: one bar chart per phase, engines side by side, min–max whiskers."""
    if "summary" not in tables:
        return missing("summary table")
    summary = tables["summary"].assign(label=lambda d: d["case"] + " " + d["threads"].astype(str) + "T")
    out = []
    for metric in dict.fromkeys(summary["metric"]):
        sub = summary[summary["metric"] == metric]
        unit = sub["unit"].iloc[0]
        title = f"{metric_title(metric)} ({unit})"
        alt = f"Bar chart of {title} per case and engine, median with min–max range"
        out.append(figure(plots.ranged_bars(sub, "label", "engine", title, unit), alt))
    return "".join(out)


def _bench_ratio(tables: dict[str, pd.DataFrame]) -> str:
    """Ratio and roofline section: bytes per token, the bound at measured bandwidth, decode as % of it."""
    body = ""
    if "summary" in tables:
        s = tables["summary"]
        ratio = s[_is_ref(s["engine"])].pivot_table(index=["case", "threads", "engine"], columns="metric",
                                                     values="ratio")
        body += "<h3>bitnet_ref / llama.cpp</h3>" + table(ratio.reset_index())
        tg = s[s["metric"].str.startswith("tg") & s["roofline_pct"].notna()]
        if not tg.empty:
            tg = tg.assign(label=lambda d: d["case"] + " " + d["threads"].astype(str) + "T",
                           median=tg["roofline_pct"], min=tg["roofline_pct"], max=tg["roofline_pct"])
            alt = "Bar chart of decode speed as a percentage of the memory-bandwidth roofline per case and engine"
            body += figure(plots.ranged_bars(tg, "label", "engine", "decode, % of roofline", "%"), alt)
    body += "<h3>Bytes per decoded token</h3>" + (table(tables["roofline"]) if "roofline" in tables
                                                  else missing("roofline table"))
    return body


def _bench_threads(tables: dict[str, pd.DataFrame]) -> str:
    """Thread-sweep section: median vs threads per engine, one figure per case with a panel per phase."""
    s = tables.get("summary")
    if s is None or s["threads"].nunique() < 2:
        return '<p class="muted">One thread count in this run; run with --threads 1,2 for a sweep.</p>'
    out = []
    for case, sub in s.groupby("case", sort=False):
        alt = f"Line plots of {case} against thread count, one panel per phase, one line per engine, min–max band"
        out.append(figure(plots.sweep_lines(sub, "threads", "engine", "metric", f"{case}: thread sweep"), alt))
    return "".join(out)


def _bench_startup(tables: dict[str, pd.DataFrame]) -> str:
    """Startup section: load time, first-call (compile) time and peak RSS per engine process."""
    st = tables.get("startup")
    if st is None:
        return missing("startup table")
    body = table(st, "each engine ran in its own process; compile_s = numba JIT compilation (bitnet_ref); "
                     "first_call_extra_s = warm-up − steady median, summed over phases (compile or cache load, "
                     "first touch of the mmapped weights, host noise)")
    shown = [c for c in ("load_s", "compile_s", "first_call_extra_s") if c in st.columns]
    if shown:
        long = st.melt(id_vars=["case", "threads", "engine"], value_vars=shown)
        long = long.assign(label=lambda d: d["engine"] + " " + d["variable"], median=long["value"],
                           min=long["value"], max=long["value"], group=long["case"] + " " + long["threads"].astype(str)
                           + "T")
        alt = "Bar chart of model load, compile and first-call seconds per engine"
        body += figure(plots.ranged_bars(long, "group", "label", "load, compile, first call (s)", "s"), alt)
    return body


def _bench_samples(tables: dict[str, pd.DataFrame]) -> str:
    """Every repetition, in the order it ran (collapsed)."""
    body = ""
    if "bandwidth" in tables:
        body += "<h3>Streaming read bandwidth</h3>" + table(tables["bandwidth"])
    if "samples" in tables:
        body += f"<details><summary>{len(tables['samples'])} samples</summary>{table(tables['samples'])}</details>"
    return body or missing("samples table")


def render_bench(meta: dict, tables: dict[str, pd.DataFrame]) -> str:
    """The bench report page."""
    engines = meta.get("engines")
    extra = pd.DataFrame(flatten(engines), columns=["field", "value"]) if isinstance(engines, dict) else None
    prov = {k: v for k, v in meta.items() if k != "engines"}
    return page(
        f"bench {meta.get('run_id', '')}",
        run_subtitle(meta),
        [
            ("verdict", "Verdict", _bench_verdict(meta, tables)),
            ("summary", "Summary", _bench_summary(tables)),
            ("throughput", "Throughput by phase", _bench_throughput(tables)),
            ("roofline", "Ratio and roofline", _bench_ratio(tables)),
            ("threads", "Thread sweep", _bench_threads(tables)),
            ("startup", "Compile, load, memory", _bench_startup(tables)),
            ("samples", "Bandwidth and samples", _bench_samples(tables)),
            ("provenance", "Provenance", provenance_table(prov, extra)),
        ],
    )
