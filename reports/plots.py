"""Report figures: pandas frames in, PNG bytes out (matplotlib, Agg, no pyplot global state)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

DPI = 96
ENGINE_COLORS = {"bitnet_ref": "#1f77b4", "llama.cpp": "#d62728", "llama.cpp[fa=off]": "#ff9896"}
NMSE_FLOOR = 1e-16  # NMSE of 0 (bit-identical) is drawn at this value on the log scale


def png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})  # layout is constrained: no re-draw
    return buf.getvalue()


def _fig(width: float, height: float) -> tuple[Figure, object]:
    """A figure with one axes, sized in inches."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def nmse_heatmap(grid: pd.DataFrame, first: tuple[str, int] | None, title: str) -> bytes:
    """Layer × capture point NMSE on a log colour scale; `first` (point, layer) is outlined as the first divergence."""
    values = grid.to_numpy(dtype=np.float64)
    shown = np.where(np.isnan(values) | (values > 0), values, NMSE_FLOOR)  # NaN: not captured; 0: bit-identical
    finite = shown[np.isfinite(shown)]
    vmin = max(float(finite.min()) if finite.size else NMSE_FLOOR, NMSE_FLOOR)
    vmax = max(float(finite.max()) if finite.size else 1.0, vmin * 1e4)
    fig, ax = _fig(min(2.0 + 0.45 * grid.shape[1], 11), 1.4 + 0.28 * grid.shape[0])
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e8e8e8")  # grey: point not captured at this layer
    img = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, norm=LogNorm(vmin, vmax))
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(grid.shape[0]), [_layer_label(r) for r in grid.index], fontsize=8)
    ax.set_xlabel("capture point")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(img, ax=ax, label="NMSE (log)")
    if first is not None and first[0] in grid.columns and first[1] in grid.index:
        x, y = list(grid.columns).index(first[0]), list(grid.index).index(first[1])
        ax.add_patch(_outline(x, y))
        ax.annotate("first divergence", (x, y), xytext=(6, -6), textcoords="offset points", color="red", fontsize=8)
    return png(fig)


def _layer_label(layer: object) -> str:
    """Row label of a heatmap: the layer number, or 'head' for layer -1."""
    return "head" if int(layer) < 0 else str(layer)


def _outline(x: int, y: int) -> object:
    """A red rectangle around one heatmap cell."""
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5)


def position_lines(df: pd.DataFrame, x: str, columns: Sequence[str], title: str, ylabel: str) -> bytes:
    """One line per column against a position column (e.g. logits Pearson r per position)."""
    fig, ax = _fig(6.5, 2.8)
    for col in columns:
        ax.plot(df[x], df[col], marker="o", markersize=3, label=col)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    if len(columns) > 1:
        ax.legend(fontsize=8)
    return png(fig)


def logits_scatter(ref: np.ndarray, test: np.ndarray, title: str, xlabel: str, ylabel: str) -> bytes:
    """Scatter of two engines' logits at one position, with the y = x diagonal."""
    fig, ax = _fig(4.2, 4.0)
    ax.scatter(ref, test, s=9, alpha=0.6, linewidths=0)
    lo, hi = float(min(ref.min(), test.min())), float(max(ref.max(), test.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return png(fig)


def ranged_bars(df: pd.DataFrame, group: str, series: str, title: str, ylabel: str) -> bytes:
    """Grouped bars of `median` with min–max whiskers; one group per `group` value, one bar per `series` value."""
    groups = list(dict.fromkeys(df[group]))
    names = list(dict.fromkeys(df[series]))
    width = 0.8 / max(len(names), 1)
    fig, ax = _fig(min(2.5 + 1.1 * len(groups) * max(len(names), 1) * 0.5, 11), 3.2)
    for i, name in enumerate(names):
        sub = df[df[series] == name].set_index(group).reindex(groups)
        xs = np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width
        err = np.vstack([sub["median"] - sub["min"], sub["max"] - sub["median"]]).clip(min=0)
        ax.bar(xs, sub["median"], width, yerr=err, capsize=3, label=name, color=ENGINE_COLORS.get(name))
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def sweep_lines(df: pd.DataFrame, x: str, series: str, panel: str, title: str) -> bytes:
    """Median vs `x` (e.g. threads) with a min–max band, one line per `series` value, one panel per `panel` value."""
    panels = list(dict.fromkeys(df[panel]))
    fig = Figure(figsize=(min(3.2 * len(panels) + 0.5, 13), 3.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, name in zip(axes, panels, strict=True):
        sub = df[df[panel] == name].sort_values(x)
        for label, line in sub.groupby(series, sort=False):
            color = ENGINE_COLORS.get(str(label))
            ax.plot(line[x], line["median"], marker="o", label=str(label), color=color)
            ax.fill_between(line[x], line["min"], line["max"], alpha=0.2, color=color)
        ax.set_xticks(sorted(sub[x].unique()))
        ax.set_xlabel(x)
        ax.set_title(f"{name} ({sub['unit'].iloc[0]})" if "unit" in sub else str(name), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return png(fig)


def trend(df: pd.DataFrame, x: str, y: str, series: str, title: str, ylabel: str) -> bytes:
    """A value across runs (x = run order), one line per `series` value, so a regression shows as a step."""
    labels = list(dict.fromkeys(df[x]))
    pos = {label: i for i, label in enumerate(labels)}
    fig, ax = _fig(7.0, 3.0)
    for name, sub in df.groupby(series, sort=True):
        ax.plot([pos[v] for v in sub[x]], sub[y], marker="o", label=str(name))
    ax.set_xticks(range(len(labels)), [_short_run(v) for v in labels], rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("run")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def _short_run(run_id: object) -> str:
    """The time stamp part of a run id (yyyymmddThhmmssZ-host-xxxxxx -> mm-dd hh:mm)."""
    s = str(run_id)
    if len(s) >= 15 and s[8] == "T":
        return f"{s[4:6]}-{s[6:8]} {s[9:11]}:{s[11:13]}"
    return s[:16]
