"""The crossval report page: verdict with every failing, expected and approximate case, the case table, per-case
NMSE heatmap, logits correlation, worst-position scatter and top-k tokens, and provenance (render_crossval).
"""

from __future__ import annotations

import pandas as pd

from reports import plots
from reports.page import banner, esc, figure, flatten, missing, page, provenance_table, run_subtitle, table

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


def nmse_grid(points: pd.DataFrame) -> pd.DataFrame:
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
    return figure(plots.nmse_heatmap(nmse_grid(pts), first, f"{cid}: NMSE"), alt, mark)


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
        run_subtitle(meta),
        [
            ("verdict", "Verdict", _crossval_verdict(meta, tables)),
            ("cases", "Cases", _case_table(tables.get("cases"))),
            ("details", "Per case", _case_sections(tables)),
            ("provenance", "Provenance", provenance_table(prov, extra)),
        ],
    )
