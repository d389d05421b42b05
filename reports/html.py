"""Self-contained HTML reports: one page per run (crossval or bench) and an index across every run under out/.

Reads records only (reports.records); tables are real <table> elements (sortable by a few lines of inline JS),
figures are PNGs embedded as base64 with alt text; the page needs no network.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from reports import plots
from reports.records import RecordError, list_runs, read_run

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:0 1rem 3rem;
color:#1b1b1b;line-height:1.4}
h1{font-size:1.5rem;margin:1rem 0 .3rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2rem}h3{font-size:1.05rem;margin-top:1.4rem}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #eee;padding:.4rem 0;z-index:2;font-size:.9rem}
nav a{margin-right:1rem;text-decoration:none;color:#0b5cad}
.banner{padding:.7rem 1rem;border-radius:6px;margin:1rem 0;font-weight:600}
.pass{background:#e3f6e5;border:1px solid #7bc47f}.fail{background:#fde4e4;border:1px solid #e57373}
.warn{background:#fff4d6;border:1px solid #e0b84d}.banner ul{font-weight:400;margin:.4rem 0 0}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.82rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.2rem .45rem;text-align:left;vertical-align:top}
th{background:#f3f5f7;position:sticky;top:0}table.sortable th{cursor:pointer}
table.sortable th:after{content:" \\2195";color:#aaa}tr:nth-child(even) td{background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}td:first-child{white-space:nowrap}
td.st-fail,td.st-error,td.st-regression{background:#fde4e4!important}td.st-xfail{background:#fff4d6!important}
td.st-pass,td.st-ok{background:#e3f6e5!important}
figure{margin:.6rem 0;display:inline-block;vertical-align:top}figure img{max-width:100%;height:auto}
figcaption{font-size:.8rem;color:#555}.muted{color:#777;font-size:.85rem}.sbs{display:flex;flex-wrap:wrap;gap:1rem}
"""

JS = """
window.addEventListener("error",function(e){document.documentElement.setAttribute("data-js-error",String(e.message));});
document.querySelectorAll("table.sortable").forEach(function(table){
  table.querySelectorAll("thead th").forEach(function(th,i){
    th.addEventListener("click",function(){
      var asc=th.getAttribute("data-order")!=="asc";th.setAttribute("data-order",asc?"asc":"desc");
      var key=function(row){var c=row.children[i];if(!c)return "";var v=c.getAttribute("data-v");
        return v!==null&&v!==""&&!isNaN(Number(v))?Number(v):c.textContent.trim();};
      var body=table.tBodies[0];
      Array.prototype.slice.call(body.rows).sort(function(a,b){var x=key(a),y=key(b);
        var c=(typeof x===typeof y)?(x<y?-1:x>y?1:0):(typeof x==="number"?-1:1);return asc?c:-c;})
        .forEach(function(r){body.appendChild(r);});
    });
  });
});
document.documentElement.setAttribute("data-js","ok");
"""

STATUS_CLASS = {"pass": "pass", "ok": "pass", "fail": "fail", "error": "fail", "regression": "fail", "xfail": "warn"}


# ---------------------------------------------------------------- page primitives


def esc(value: object) -> str:
    """HTML-escape any value's str()."""
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """A table cell's text: short floats, '–' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if math.isinf(value):
            return str(value)
        if 0.999 <= abs(value) < 1:  # correlations: keep three significant digits of 1 − r
            digits = min(12, 3 - math.floor(math.log10(1 - abs(value))))
            return f"{value:.{digits}f}".rstrip("0")
        return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _cell(value: object) -> str:
    """One <td>, numeric cells right-aligned with their raw value for sorting, statuses coloured."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raw = "" if isinstance(value, float) and math.isnan(value) else repr(float(value))
        return f'<td class="num" data-v="{raw}">{esc(fmt(value))}</td>'
    cls = STATUS_CLASS.get(str(value).lower())
    attr = f' class="st-{esc(str(value).lower())}"' if cls else ""
    return f"<td{attr}>{esc(fmt(value))}</td>"


def table(df: pd.DataFrame, caption: str = "", links: dict[str, str] | None = None) -> str:
    """A pandas frame as a sortable HTML table; `links` maps a column to a column holding each row's href."""
    links = links or {}
    shown = [c for c in df.columns if c not in links.values()]
    head = "".join(f"<th>{esc(c)}</th>" for c in shown)
    rows = []
    for rec in df.to_dict("records"):
        cells = []
        for col in shown:
            value = rec[col]
            if col in links and isinstance(rec.get(links[col]), str):
                cells.append(f'<td><a href="{esc(rec[links[col]])}">{esc(fmt(value))}</a></td>')
            else:
                cells.append(_cell(value.item() if hasattr(value, "item") else value))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption class='muted'>{esc(caption)}</caption>" if caption else ""
    return (
        f'<div class="scroll"><table class="sortable">{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def figure(png_bytes: bytes, alt: str, caption: str = "") -> str:
    """An embedded PNG figure with alt text and an optional caption."""
    data = base64.b64encode(png_bytes).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def section(sid: str, title: str, body: str) -> str:
    """A top-level report section with an anchor id."""
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def missing(what: str) -> str:
    """A note for an optional table that this run did not record."""
    return f'<p class="muted">Not recorded in this run: {esc(what)}.</p>'


def banner(status: str, headline: str, items: Iterable[str] = ()) -> str:
    """A coloured verdict banner with a bullet list (items are already HTML)."""
    cls = STATUS_CLASS.get(status.lower(), "warn")
    lis = "".join(f"<li>{i}</li>" for i in items)
    return f'<div class="banner {cls}" role="status">{esc(headline)}{f"<ul>{lis}</ul>" if lis else ""}</div>'


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """A whole self-contained page: title, sticky nav to each section, sections, inline CSS and JS."""
    nav = "".join(f'<a href="#{esc(sid)}">{esc(t)}</a>' for sid, t, _ in sections)
    body = "".join(section(sid, t, b) for sid, t, b in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{esc(title)}</h1><p class="muted">{esc(subtitle)}</p><nav>{nav}</nav>{body}'
        f"<script>{JS}</script></body></html>\n"
    )


def flatten(meta: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested run.json as (dotted key, text) rows; lists are joined with spaces."""
    rows: list[tuple[str, str]] = []
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                rows.extend(flatten(item, f"{name}[{i}]."))
        elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            rows.append((name, " ".join(str(v) for v in value)))
        else:
            rows.append((name, str(value)))
    return rows


def provenance_table(meta: dict, extra: pd.DataFrame | None = None) -> str:
    """The provenance section body: every run.json field, plus an optional per-engine description table."""
    df = pd.DataFrame(flatten(meta), columns=["field", "value"])
    body = table(df)
    if extra is not None and not extra.empty:
        body += f"<h3>Engines</h3><details><summary>{len(extra)} fields</summary>{table(extra)}</details>"
    return body


def _subtitle(meta: dict) -> str:
    """One line under the title: date, machine, git sha."""
    return f"{_date(meta)} · {_machine(meta)} · git {_sha(meta)}"


def _prov(meta: dict) -> dict:
    """Provenance fields, whether nested under 'provenance' or at the top of run.json."""
    nested = meta.get("provenance")
    return {**meta, **nested} if isinstance(nested, dict) else meta


def _date(meta: dict) -> str:
    """The run's time stamp (UTC, to the minute)."""
    p = _prov(meta)
    stamp = str(p.get("timestamp_utc") or p.get("created") or "")
    return stamp[:16].replace("T", " ")


def _machine(meta: dict) -> str:
    """CPU model and host name."""
    p = _prov(meta)
    return f"{p.get('cpu_model', '?')} ({p.get('hostname', '?')})"


def _sha(meta: dict) -> str:
    """Short git sha, with '+dirty' when the tree had changes."""
    p = _prov(meta)
    sha = str(p.get("git_sha") or "?")[:10]
    return sha + ("+dirty" if p.get("git_dirty") else "")


# ---------------------------------------------------------------- bench page

METRIC_PREFIXES = {"pp": "prefill", "tg": "decode"}


def metric_title(metric: str) -> str:
    """'pp128' -> 'prefill 128', 'tg128' -> 'decode 128', 'ttft' -> 'time to first token'."""
    if metric == "ttft":
        return "time to first token"
    return f"{METRIC_PREFIXES[metric[:2]]} {metric[2:]}" if metric[:2] in METRIC_PREFIXES else metric


REF_ENGINE = "bitnet_ref"
NOISY = 0.5  # interquartile range / median of a summary row above this: flagged as noisy
TARGETS = {"tg": 0.5, "pp": 0.25}  # issue 5: bitnet_ref / llama.cpp speed on the same file and threads, by phase prefix


def _range_text(row: dict) -> str:
    """'median [min–max]' of a summary row."""
    return f"{fmt(row['median'])} [{fmt(row['min'])}–{fmt(row['max'])}]"


def _bench_headline(summary: pd.DataFrame) -> list[str]:
    """Banner bullets: bitnet_ref's speed ratio per case and phase against the issue's targets."""
    items = []
    ref = summary[(summary["engine"] == REF_ENGINE) & summary["metric"].str[:2].isin(list(TARGETS))]
    for (case, threads), sub in ref.groupby(["case", "threads"], sort=False):
        parts = []
        for rec in sub.to_dict("records"):
            target = TARGETS[rec["metric"][:2]]
            ok = rec["ratio"] >= target if pd.notna(rec["ratio"]) else None
            mark = "–" if ok is None else ("✓" if ok else "✗")
            ratio = f"{rec['ratio']:.2f}" if pd.notna(rec["ratio"]) else "–"
            parts.append(f"{esc(rec['metric'])} {ratio}× {mark} (target ≥ {target}×)")
        items.append(f"<b>{esc(case)}</b>, {esc(threads)} threads: " + "; ".join(parts))
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
        ratio = s[s["engine"] == REF_ENGINE].pivot_table(index=["case", "threads"], columns="metric", values="ratio")
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
        _subtitle(meta),
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


# ---------------------------------------------------------------- crossval page
#
# Tables as crossval/run.py writes them: cases (one row per case: `case` id, preset, fmt, profile, threads, arch,
# `verdict` PASS/FAIL/XFAIL/XPASS, stage, location, expected, logits_r_min, kl_max, top1, …), points (case, point,
# layer, status ok/over/…, nmse, bound, … in comparison order), logits (case, position, pearson, kl, top1, …).
# Optional: topk (case, position, engine, rank, token, text, logit) and worst_logits (case, position, token,
# bitnet_ref, llama.cpp): the top-k tokens of both engines and both engines' logits at the worst position.

CASE = "case"  # the case id column shared by every crossval table
VERDICT_ORDER = ("FAIL", "XPASS", "ERROR", "XFAIL", "APPROX", "PASS")
GATING = ("FAIL", "XPASS", "ERROR")
POINT_ORDER = (
    "attn_norm", "Qcur", "Kcur", "Vcur", "kqv_out", "attn_sub_norm", "attn_out", "ffn_inp", "ffn_norm", "ffn_gate",
    "ffn_up", "ffn_sub_out", "ffn_sub_norm", "ffn_down", "l_out", "result_norm", "result_output",
)
STATUS_CLASS.update({"xpass": "fail", "over": "fail", "inconclusive": "xfail", "approx": "warn",
                     "incomplete": "fail"})


def _verdicts(cases: pd.DataFrame) -> pd.Series:
    """Each case's verdict, upper-case."""
    return cases["verdict"].astype(str).str.upper()


def _verdict_counts(cases: pd.DataFrame) -> str:
    """'1 FAIL, 1 XFAIL, 3 PASS' in a fixed order."""
    counts = _verdicts(cases).value_counts()
    return ", ".join(f"{counts[v]} {v}" for v in VERDICT_ORDER if v in counts)


def _expected_reasons(meta: dict) -> dict[str, str]:
    """Expected-divergence id -> its reason, from the thresholds copied into run.json."""
    th = meta.get("thresholds") or {}
    return {str(e.get("id")): str(e.get("reason", "")) for e in th.get("expected", []) if isinstance(e, dict)}


def _case_line(rec: dict, reasons: dict[str, str]) -> str:
    """One banner bullet: verdict, case id, where it diverged, and the reason of an expected divergence."""
    text = f"<b>{esc(str(rec['verdict']).upper())}</b> {esc(rec[CASE])}"
    if isinstance(rec.get("location"), str) and rec["location"]:
        text += f": {esc(rec['location'])}"
    exp = rec.get("expected")
    if isinstance(exp, str) and exp in reasons:
        text += f"<br><span class='muted'>reason ({esc(exp)}): {esc(reasons[exp])}</span>"
    return text


def _gates(meta: dict) -> list[str]:
    """One line per gate profile: its logits r bound, default NMSE bound, greedy rule."""
    profiles = (meta.get("thresholds") or {}).get("profiles", {})
    return [f"gates <b>{esc(name)}</b>: logits r ≥ {esc(p.get('logits_r'))} at every position, NMSE ≤ "
            f"{esc((p.get('nmse') or {}).get('default'))} per point (overrides in thresholds), greedy "
            f"{esc(p.get('greedy'))}" for name, p in profiles.items() if isinstance(p, dict)]


def _incomplete(meta: dict, tables: dict[str, pd.DataFrame]) -> list[str]:
    """A banner line for a run that never finished (killed, or still running): how many cases it recorded."""
    if meta.get("complete", True):
        return []
    cases = tables.get("cases")
    done = 0 if cases is None else len(cases)
    return [f"<b>INCOMPLETE</b>: the run stopped (or is still running) after {done} of {esc(meta.get('n_cases', '?'))} "
            "cases; this report shows the cases it recorded"]


def _crossval_verdict(meta: dict, tables: dict[str, pd.DataFrame]) -> str:
    """The crossval banner: overall verdict, counts, every failing, expected (XFAIL) and approximate (APPROX) case
    with reasons; a run that did not finish says so first."""
    verdict = str(meta.get("verdict", "unknown"))
    cases = tables.get("cases")
    if cases is None or "verdict" not in cases:
        return banner(verdict, f"crossval: {verdict}", _incomplete(meta, tables) + [missing("case table")])
    v = _verdicts(cases)
    reasons = _expected_reasons(meta)
    items = _incomplete(meta, tables)
    items += [_case_line(r, reasons) for r in cases[v.isin(GATING)].to_dict("records")]
    items += [_case_line(r, reasons) for r in cases[v.isin(("XFAIL", "APPROX"))].to_dict("records")]
    return banner(verdict, f"crossval: {verdict} — {_verdict_counts(cases)}", items + _gates(meta))


def _case_points(tables: dict[str, pd.DataFrame], cid: str) -> pd.DataFrame | None:
    """The points rows of one case that carry an NMSE (None when not recorded)."""
    pts = tables.get("points")
    if pts is None or "nmse" not in pts:
        return None
    sub = pts[(pts[CASE] == cid) & pts["nmse"].notna()]
    return None if sub.empty else sub


def _nmse_grid(points: pd.DataFrame) -> pd.DataFrame:
    """Layer × point grid of NMSE, head row (layer −1) last, points in graph order."""
    grid = points.pivot_table(index="layer", columns="point", values="nmse", aggfunc="max")
    cols = [p for p in POINT_ORDER if p in grid.columns] + [p for p in grid.columns if p not in POINT_ORDER]
    rows = sorted(grid.index, key=lambda layer: (layer < 0, layer))
    return grid.reindex(index=rows, columns=cols)


def first_divergence(points: pd.DataFrame) -> tuple[str, int] | None:
    """(point, layer) of the first point over its bound, in the order crossval compared them."""
    over = points[points["status"] == "over"] if "status" in points else points.iloc[0:0]
    if over.empty:
        return None
    row = over.iloc[0]
    return str(row["point"]), int(row["layer"])


def _case_heatmap(cid: str, tables: dict[str, pd.DataFrame]) -> str:
    """The layer × point NMSE heatmap of one case with its first divergence outlined."""
    pts = _case_points(tables, cid)
    if pts is None:
        return missing("per-layer capture points")
    first = first_divergence(pts)
    mark = f"first divergence: {first[0]} layer {first[1]}" if first else "every point within its bound"
    alt = f"Heatmap of NMSE by layer and capture point for case {cid}, log colour scale; {mark}"
    return figure(plots.nmse_heatmap(_nmse_grid(pts), first, f"{cid}: NMSE"), alt, mark)


def _case_logits(cid: str, tables: dict[str, pd.DataFrame]) -> str:
    """Per-position logits correlation (and KL when recorded) of one case."""
    lg = tables.get("logits")
    if lg is None or lg[lg[CASE] == cid].empty:
        return missing("per-position logits metrics")
    sub = lg[lg[CASE] == cid].sort_values("position")
    alt = f"Line plot of the Pearson correlation of the two engines' logits at each position for case {cid}"
    out = figure(plots.position_lines(sub, "position", ["pearson"], f"{cid}: logits r", "Pearson r"), alt)
    if "kl" in sub:
        alt = f"Line plot of KL divergence between the engines' next-token distributions per position, case {cid}"
        out += figure(plots.position_lines(sub, "position", ["kl"], f"{cid}: KL (nats)", "KL"), alt)
    return out


def _case_scatter(cid: str, tables: dict[str, pd.DataFrame]) -> str:
    """Scatter of both engines' logits at the worst position of one case."""
    wl = tables.get("worst_logits")
    if wl is None or wl[wl[CASE] == cid].empty:
        return missing("both engines' logits at the worst position (table worst_logits)")
    sub = wl[wl[CASE] == cid]
    pos = int(sub["position"].iloc[0])
    alt = f"Scatter of llama.cpp logits (x) against bitnet_ref logits (y) at worst position {pos}, case {cid}"
    png = plots.logits_scatter(sub["llama.cpp"].to_numpy(), sub["bitnet_ref"].to_numpy(),
                               f"{cid}: logits at position {pos}", "llama.cpp", "bitnet_ref")
    return figure(png, alt)


def _case_topk(cid: str, tables: dict[str, pd.DataFrame]) -> str:
    """Top-k tokens of both engines side by side (decoded text) at each recorded position."""
    tk = tables.get("topk")
    if tk is None or tk[tk[CASE] == cid].empty:
        return missing("top-k tokens of both engines (table topk)")
    out = []
    for pos, at in tk[tk[CASE] == cid].groupby("position", sort=True):
        side = []
        for engine, rows in at.groupby("engine", sort=False):
            shown = rows.sort_values("rank")[[c for c in ("rank", "token", "text", "logit", "prob") if c in rows]]
            side.append(f"<div><h4>{esc(engine)}</h4>{table(shown)}</div>")
        out.append(f"<h4>top-k at position {esc(_int_or(pos))}</h4><div class='sbs'>{''.join(side)}</div>")
    return "".join(out)


def _int_or(value: object) -> object:
    """An integer-valued float as int (CSV round trips turn int columns with gaps into floats)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _case_sections(tables: dict[str, pd.DataFrame]) -> str:
    """One sub-section per case: heatmap, logits correlation, worst-position scatter, top-k side by side."""
    cases = tables.get("cases")
    if cases is None:
        return missing("case table")
    out = []
    for case in cases.to_dict("records"):
        cid = str(case[CASE])
        head = f'<h3 id="case-{esc(cid)}">{esc(cid)} <span class="muted">({esc(case.get("verdict", ""))})</span></h3>'
        loc = f"<p>{esc(case['location'])}</p>" if isinstance(case.get("location"), str) else ""
        out.append(head + loc + _case_heatmap(cid, tables) + _case_logits(cid, tables) + _case_scatter(cid, tables)
                   + _case_topk(cid, tables))
    return "".join(out)


CASE_COLUMNS = ("case", "verdict", "fmt", "profile", "threads", "arch", "prompt", "n_tokens", "logits_r_min",
                "kl_max", "top1", "greedy_match", "stage", "location", "expected", "seconds")


def _case_table(cases: pd.DataFrame | None) -> str:
    """The case table: the key columns first, each case id linking to its section; every column in a fold."""
    if cases is None:
        return missing("case table")
    key = cases[[c for c in CASE_COLUMNS if c in cases]].assign(href="#case-" + cases[CASE].astype(str))
    return table(key, links={CASE: "href"}) + f"<details><summary>all columns</summary>{table(cases)}</details>"


def render_crossval(meta: dict, tables: dict[str, pd.DataFrame]) -> str:
    """The crossval report page."""
    backends = meta.get("backends")
    extra = pd.DataFrame(flatten(backends), columns=["field", "value"]) if isinstance(backends, dict) else None
    prov = {k: v for k, v in meta.items() if k not in ("backends", "points")}
    return page(
        f"crossval {meta.get('run_id', '')}",
        _subtitle(meta),
        [
            ("verdict", "Verdict", _crossval_verdict(meta, tables)),
            ("cases", "Cases", _case_table(tables.get("cases"))),
            ("details", "Per case", _case_sections(tables)),
            ("provenance", "Provenance", provenance_table(prov, extra)),
        ],
    )


# ---------------------------------------------------------------- index and history

RENDERERS = {"crossval": render_crossval, "bench": render_bench}
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
           "date": _date(meta), "machine": _machine(meta), "git": _sha(meta), "href": href}
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
        sel = s[(s["engine"] == REF_ENGINE) & s["metric"].str.startswith("tg")]
        for rec in sel.to_dict("records"):
            rows.append({"run": meta.get("run_id"), "series": f"{rec['case']} {rec['threads']}T",
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
