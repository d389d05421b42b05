"""The corpus report page (`python -m crossval --corpus`): verdict with the headline numbers, the statistics table as
llama-perplexity's KL-divergence mode prints it, the distribution of per-token KLD, the mean KLD of every chunk, and
provenance (render_corpus).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports import plots
from reports.page import banner, esc, figure, flatten, missing, page, provenance_table, run_subtitle, table

# Tables as crossval/corpus.py writes them: tokens (chunk, position, token, kld, top1, nll_base, nll_other, p_diff:
# one row per scored token), chunks (chunk, tokens, kld_mean, kld_max, same_top, ppl_base, ppl_other, seconds_base,
# seconds_other) and summary (stat, label, value, error), which run.json's `summary` also holds, refreshed per chunk.

HIST_BINS = 40


def _summary(meta: dict, tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The statistics rows: the summary table, or run.json's copy for a run that did not finish."""
    s = tables.get("summary")
    if s is not None and not s.empty:
        return s
    rows = meta.get("summary")
    return pd.DataFrame(list(rows.values())) if isinstance(rows, dict) and rows else None


def _value(summary: pd.DataFrame | None, stat: str) -> tuple[float, float] | None:
    """(value, error) of one statistic, None when absent."""
    if summary is None or stat not in set(summary["stat"]):
        return None
    row = summary[summary["stat"] == stat].iloc[0]
    return float(row["value"]), float(row["error"]) if pd.notna(row["error"]) else 0.0


def _headline(meta: dict, summary: pd.DataFrame | None) -> str:
    """'corpus: ok — mean KLD 0.000673 ± 0.000015, same top p 95.853 ± 1.357 % over 217 tokens'."""
    verdict = str(meta.get("verdict", "unknown"))
    kld, top, n = (_value(summary, s) for s in ("kld_mean", "same_top", "tokens"))
    if kld is None or top is None or n is None or n[0] == 0:
        return f"corpus: {verdict} — no token scored"
    return (f"corpus: {verdict} — mean KLD {kld[0]:.6f} ± {kld[1]:.6f}, same top p {top[0]:.3f} ± {top[1]:.3f} % "
            f"over {int(n[0])} tokens")


def _verdict(meta: dict, tables: dict[str, pd.DataFrame]) -> str:
    """The banner: verdict and headline, the engines, model and corpus, an unfinished run, an error with the failed
    engine's last output, the --max-kld gate, and bit-identical distributions when every KLD is 0."""
    summary = _summary(meta, tables)
    engines = meta.get("engines") or {}
    model, corpus = meta.get("model") or {}, meta.get("corpus") or {}
    items = [f"base <b>{esc(engines.get('base', '?'))}</b>, other <b>{esc(engines.get('other', '?'))}</b>; chunks of "
             f"{esc(meta.get('n_ctx', '?'))} tokens, the second half of each scored",
             f"model {esc(model.get('path', '?'))} (sha256 {esc(str(model.get('sha256', '?'))[:16])}…); corpus "
             f"{esc(corpus.get('path', '?'))}, {esc(meta.get('n_tokens', '?'))} tokens"]
    if not meta.get("complete", True):
        items.append(f"<b>INCOMPLETE</b>: the run stopped (or is still running) after {esc(meta.get('chunks_done', 0))}"
                     f" of {esc(meta.get('n_chunks', '?'))} chunks; this report shows the chunks it recorded")
    if meta.get("error"):
        tail = f"<pre>{esc(meta['error_tail'])}</pre>" if meta.get("error_tail") else ""
        items.append(f"<b>ERROR</b>: {esc(meta['error'])}{tail}")
    if meta.get("max_kld") is not None:
        items.append(f"gate: mean KLD ≤ {esc(meta['max_kld'])}")
    kmax = _value(summary, "kld_max")
    if kmax is not None and kmax[0] == 0.0:
        items.append("every scored token's two distributions are identical (KLD exactly 0)")
    return banner(str(meta.get("verdict", "unknown")), _headline(meta, summary), items)


def _statistics(meta: dict, tables: dict[str, pd.DataFrame]) -> str:
    """The statistics table: label, value, ± error."""
    summary = _summary(meta, tables)
    if summary is None:
        return missing("summary statistics")
    shown = summary.rename(columns={"label": "statistic", "error": "±"})[["statistic", "value", "±"]]
    return table(shown, "as llama-perplexity --kl-divergence prints them; percentages in %")


def kld_histogram(kld: np.ndarray, title: str) -> bytes:
    """Histogram of positive per-token KLDs on log-spaced bins, log x axis."""
    positive = kld[kld > 0]
    lo, hi = float(positive.min()), float(positive.max())
    if lo == hi:
        lo, hi = lo / 2, hi * 2
    fig = Figure(figsize=(6.5, 3.0), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(positive, bins=np.geomspace(lo, hi, HIST_BINS + 1))
    ax.set_xscale("log")
    ax.set_xlabel("KL divergence per token (nats, log)")
    ax.set_ylabel("tokens")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return plots.png(fig)


def _distribution(tables: dict[str, pd.DataFrame]) -> str:
    """The per-token KLD histogram (zeros cannot sit on a log axis: they are counted in the caption)."""
    tokens = tables.get("tokens")
    if tokens is None or tokens.empty or "kld" not in tokens:
        return missing("per-token KL divergence (table tokens)")
    kld = tokens["kld"].to_numpy(np.float64)
    zeros = int(np.sum(kld == 0))
    if zeros == kld.size:
        return f"<p>All {kld.size} scored tokens have KLD exactly 0: nothing to draw on a log axis.</p>"
    note = f"{zeros} of {kld.size} tokens have KLD exactly 0 and are not drawn" if zeros else f"{kld.size} tokens"
    alt = "Histogram of the per-token KL divergence between the two engines' next-token distributions, log x axis"
    return figure(kld_histogram(kld, "per-token KLD"), alt, note)


def _chunks(tables: dict[str, pd.DataFrame]) -> str:
    """Mean KLD of every chunk, and the chunk table."""
    chunks = tables.get("chunks")
    if chunks is None or chunks.empty:
        return missing("per-chunk statistics (table chunks)")
    alt = "Line plot of the mean KL divergence of each chunk of the corpus"
    png = plots.position_lines(chunks.sort_values("chunk"), "chunk", ["kld_mean"], "mean KLD per chunk", "KLD (nats)")
    return figure(png, alt) + table(chunks)


def render_corpus(meta: dict, tables: dict[str, pd.DataFrame]) -> str:
    """The corpus report page."""
    backends = meta.get("backends")
    extra = pd.DataFrame(flatten(backends), columns=["field", "value"]) if isinstance(backends, dict) else None
    prov = {k: v for k, v in meta.items() if k not in ("backends", "summary")}
    return page(
        f"corpus KLD {meta.get('run_id', '')}",
        run_subtitle(meta),
        [
            ("verdict", "Verdict", _verdict(meta, tables)),
            ("statistics", "Statistics", _statistics(meta, tables)),
            ("distribution", "Per-token KLD", _distribution(tables)),
            ("chunks", "Per chunk", _chunks(tables)),
            ("provenance", "Provenance", provenance_table(prov, extra)),
        ],
    )
