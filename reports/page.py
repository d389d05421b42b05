"""Page primitives shared by every report: inline CSS and JS, escaping and number formatting, sortable tables,
embedded PNG figures, sections, verdict banners, the whole self-contained page, and what every page says of a
run's run.json (the provenance table; the date, machine and git sha of the subtitle and the index).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable

import pandas as pd

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

STATUS_CLASS = {  # a status cell's text (lower-case) -> the banner / cell colour class
    "pass": "pass", "ok": "pass", "fail": "fail", "error": "fail", "regression": "fail", "xfail": "warn",
    "xpass": "fail", "over": "fail", "inconclusive": "xfail", "approx": "warn", "incomplete": "fail",
}


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


def run_subtitle(meta: dict) -> str:
    """One line under the title: date, machine, git sha."""
    return f"{run_date(meta)} · {run_machine(meta)} · git {run_sha(meta)}"


def _prov(meta: dict) -> dict:
    """Provenance fields, whether nested under 'provenance' or at the top of run.json."""
    nested = meta.get("provenance")
    return {**meta, **nested} if isinstance(nested, dict) else meta


def run_date(meta: dict) -> str:
    """The run's time stamp (UTC, to the minute)."""
    p = _prov(meta)
    stamp = str(p.get("timestamp_utc") or p.get("created") or "")
    return stamp[:16].replace("T", " ")


def run_machine(meta: dict) -> str:
    """CPU model and host name."""
    p = _prov(meta)
    return f"{p.get('cpu_model', '?')} ({p.get('hostname', '?')})"


def run_sha(meta: dict) -> str:
    """Short git sha, with '+dirty' when the tree had changes."""
    p = _prov(meta)
    sha = str(p.get("git_sha") or "?")[:10]
    return sha + ("+dirty" if p.get("git_dirty") else "")

