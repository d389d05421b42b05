"""The conversion-check page (`python -m crossval --hf DIR --gguf FILE`): the verdict with every finding, the logits
of each engine against bitnet_ref on the checkpoint, an NMSE map per engine, the weights table (code agreement and
scale ratio of every BitLinear), and provenance (render_conversion).
"""

from __future__ import annotations

import pandas as pd

from reports import plots
from reports.crossval_report import nmse_grid
from reports.page import banner, esc, figure, missing, page, provenance_table, run_subtitle, table

# Tables as crossval/conversion.py writes them: findings (stage, finding), logits (pair, prompt, logits_r,
# logits_r_min, worst_position, logits_nmse, max_abs_rel, top1_agree), points (pair, prompt, point, layer, nmse,
# pearson, cosine, max_abs_rel, bound) and weights (tensor, gguf_type, kind, code_agreement, scale_ratio, ...).


def _verdict(meta: dict, tables: dict[str, pd.DataFrame]) -> str:
    """The banner: faithful or not, and every finding."""
    findings = meta.get("findings") or []
    models = list((meta.get("models") or {}).keys())
    what = " vs ".join(esc(m) for m in reversed(models)) or "the GGUF vs the checkpoint"
    items = [what] + [f"<b>{esc(f['stage'])}{' (expected, ' + esc(f['expected']) + ')' if f.get('expected') else ''}"
                      f"</b>: {esc(f['finding'])}" for f in findings]
    if meta.get("verdict") == "pass":
        return banner("pass", "faithful: the GGUF computes the checkpoint's model", items)
    gating = sum(not f.get("expected") for f in findings)
    return banner("fail", f"not faithful: {gating} finding(s)", items)


def _maps(tables: dict[str, pd.DataFrame]) -> str:
    """One layer × point NMSE map per engine pair and prompt."""
    pts = tables.get("points")
    if pts is None or pts.empty:
        return missing("activations")
    out = []
    for (pair, prompt), sub in pts.groupby(["pair", "prompt"], sort=False):
        over = sub[sub["nmse"] > sub["bound"]]
        first = (str(over.iloc[0]["point"]), int(over.iloc[0]["layer"])) if not over.empty else None
        png = plots.nmse_heatmap(nmse_grid(sub), first, f"{pair} vs bitnet_ref[checkpoint] ({prompt})")
        out.append(figure(png, f"NMSE per layer and point, {pair}, prompt {prompt}"))
    return "".join(out)


def _weights(tables: dict[str, pd.DataFrame]) -> str:
    """The weights table, tensors that differ first."""
    w = tables.get("weights")
    if w is None or w.empty:
        return missing("weights")
    key = w.get("code_agreement", pd.Series(1.0, index=w.index)).fillna(1.0)
    return table(w.assign(_k=key).sort_values("_k").drop(columns="_k"),
                 "code agreement: fraction of ternary codes equal to the checkpoint's; scale ratio: GGUF scale / "
                 "checkpoint scale (median, min, max over the non-zero weights)")


def render_conversion(meta: dict, tables: dict[str, pd.DataFrame]) -> str:
    """The whole page of one conversion check."""
    logits = tables.get("logits")
    sections = [
        ("verdict", "Verdict", _verdict(meta, tables)),
        ("logits", "Logits", table(logits, "each engine against bitnet_ref on the checkpoint; max_abs_rel is "
                                           "max|Δ|/rms at the worst position") if logits is not None and not
         logits.empty else missing("logits")),
        ("activations", "Activations", _maps(tables)),
        ("weights", "Weights", _weights(tables)),
        ("provenance", "Provenance", provenance_table(meta)),
    ]
    return page("conversion check", run_subtitle(meta), sections)
