"""The tables of a bench run: summary statistics and speed ratios, startup, roofline, and the baseline check."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench import roofline
from bench.cases import LLAMA, Case, Phase, engine_spec, is_ref

TOLERANCE = 0.20  # a median more than 20 % worse than the baseline's is a regression
NOISY = 0.5  # interquartile range / median above this: the host was busy during the repetitions
GROUP = ["case", "model", "fmt", "threads", "engine", "engine_threads", "file", "metric", "unit"]


def value(phase: Phase, reply: dict) -> float:
    """The reported figure of one timing: tok/s, or ms for time to first token."""
    return reply["wall_s"] * 1e3 if phase.kind == "ttft" else reply["n"] / reply["wall_s"]


def summarize(samples: pd.DataFrame) -> pd.DataFrame:
    """Median, min, max and quartiles per case × threads × engine × phase over the repetitions (warm-up excluded);
    the speed ratio to llama.cpp (flash attention auto) on the same case, threads and phase (> 1: faster); the
    interquartile spread of each figure and of its ratio."""
    timed = samples[~samples["warmup"].astype(bool)]
    s = timed.groupby(GROUP, sort=False)["value"].agg(
        n="count", median="median", min="min", max="max", q25=lambda v: v.quantile(0.25),
        q75=lambda v: v.quantile(0.75)).reset_index()
    ref = s[s["engine"] == LLAMA].set_index(["case", "threads", "metric"])["median"]
    key = pd.MultiIndex.from_frame(s[["case", "threads", "metric"]])
    llama = pd.Series(ref.reindex(key).to_numpy(), index=s.index)
    s["ratio"] = np.where(s["unit"] == "ms", llama / s["median"], s["median"] / llama)
    s["spread"] = (s["q75"] - s["q25"]) / s["median"]  # interquartile: one disturbed repetition does not count
    llama_spread = s[s["engine"] == LLAMA].set_index(["case", "threads", "metric"])["spread"]
    s["ratio_spread"] = s["spread"] + llama_spread.reindex(key).to_numpy()  # a ratio carries both engines' noise
    return s


def startup_table(samples: pd.DataFrame, startup: pd.DataFrame) -> pd.DataFrame:
    """Per engine process: load time, the warm-up's time and its excess over the steady median (numba compile or
    cache load, first touch of the mmapped weights, host noise), RSS."""
    if startup.empty:
        return startup
    keys = ["case", "threads", "engine"]
    warm = samples[samples["warmup"].astype(bool)].groupby(keys + ["metric"])["wall_s"].sum()
    steady = samples[~samples["warmup"].astype(bool)].groupby(keys + ["metric"])["wall_s"].median()
    extra = (warm - steady).clip(lower=0).groupby(level=keys).sum().rename("first_call_extra_s")
    first = warm.groupby(level=keys).sum().rename("first_calls_s")
    return startup.join(first, on=keys).join(extra, on=keys)


def roofline_tables(cases: Sequence[Case], summary: pd.DataFrame, bandwidth: pd.DataFrame) -> pd.DataFrame:
    """Bytes per decoded token for each engine's file, the bound at the measured bandwidth, decode % of it."""
    from bitnet_ref.gguf_reader import read_gguf

    by_case = {c.name: c for c in cases}
    bw = bandwidth.groupby("threads")["median_gbps"].median()
    rows = []
    for rec in summary[summary["metric"].str.startswith("tg")].to_dict("records"):
        case = by_case[rec["case"]]
        with read_gguf(case.file_for(engine_spec(rec["engine"]))) as gguf:
            tb = roofline.token_bytes(roofline.tensors_of(gguf))
        per_token = tb.at((_gen_tokens(rec["metric"]) - 1) / 2)  # mean KV length over the decode
        gbps = float(bw.get(rec["engine_threads"], np.nan))
        bound = roofline.bound_tok_s(per_token, gbps)
        rows.append({"case": rec["case"], "threads": rec["threads"], "engine": rec["engine"], "file": rec["file"],
                     "ternary_mb": tb.ternary / 1e6, "head_mb": tb.head / 1e6, "other_mb": tb.other / 1e6,
                     "kv_kb_per_pos": tb.kv_per_pos / 1e3, "mb_per_token": per_token / 1e6, "gbps": gbps,
                     "bound_tok_s": bound, "decode_tok_s": rec["median"], "roofline_pct": 100 * rec["median"] / bound})
    return pd.DataFrame(rows)


def _gen_tokens(metric: str) -> int:
    """128 from 'tg128'."""
    return int(metric[2:])


def with_roofline(summary: pd.DataFrame, roof: pd.DataFrame) -> pd.DataFrame:
    """The summary with % of roofline on its decode rows."""
    if roof.empty:
        return summary.assign(roofline_pct=np.nan)
    pct = roof.set_index(["case", "threads", "engine"])["roofline_pct"]
    key = pd.MultiIndex.from_frame(summary[["case", "threads", "engine"]])
    values = pd.Series(pct.reindex(key).to_numpy(), index=summary.index)
    return summary.assign(roofline_pct=values.where(summary["metric"].str.startswith("tg")))


def compare_to_baseline(current: pd.DataFrame, baseline: pd.DataFrame, tolerance: float = TOLERANCE,
                        abs_tolerance: float = 2 * TOLERANCE) -> pd.DataFrame:
    """Medians of every bitnet_ref engine ('bitnet_ref', or one per profile: 'bitnet_ref[ggml]', …; matched to the
    baseline's by name) worse than the baseline's: its speed ratio to llama.cpp by more than `tolerance`, or its own
    speed by more than `abs_tolerance`. A drop beyond the tolerance but within the repetitions' own spread (either
    run) is "inconclusive", not a regression: on a busy host two unchanged runs differ that much. One row each."""
    keys = ["case", "threads", "engine", "metric"]
    cur = current[current["engine"].map(is_ref)].set_index(keys)
    base = baseline[baseline["engine"].map(is_ref)].set_index(keys)
    rows = []
    for key in cur.index.intersection(base.index):
        c, b = cur.loc[key], base.loc[key]
        speed = (b["median"] / c["median"]) if c["unit"] == "ms" else (c["median"] / b["median"])
        checks = [("ratio", b["ratio"], c["ratio"], c["ratio"] / b["ratio"], tolerance, _noise(c, b, "ratio_spread")),
                  ("absolute", b["median"], c["median"], speed, abs_tolerance, _noise(c, b, "spread"))]
        for kind, old, new, rel, tol, noise in checks:
            if pd.notna(rel) and rel < 1 - tol:
                status = "regression" if rel < 1 - max(tol, noise) else "inconclusive"
                rows.append({**dict(zip(keys, key, strict=True)), "kind": kind, "status": status, "baseline": old,
                             "current": new, "change_pct": 100 * (rel - 1), "tolerance_pct": 100 * tol,
                             "noise_pct": 100 * noise})
    cols = keys + ["kind", "status", "baseline", "current", "change_pct", "tolerance_pct", "noise_pct"]
    return pd.DataFrame(rows, columns=cols)


def _noise(current: pd.Series, baseline: pd.Series, column: str) -> float:
    """The larger relative spread of the two runs' repetitions for one figure (0 when not recorded)."""
    values = [row.get(column) for row in (current, baseline)]
    return max([float(v) for v in values if v is not None and pd.notna(v)], default=0.0)
