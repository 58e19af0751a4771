"""HTML rendering of results for notebooks (Jupyter's ``_repr_html_``) and HTML plot pages.

The same view as :mod:`lql.render.table`, in HTML: the same visible columns (all-``None``
columns hidden), probability bars, signed scores coloured (bold when large, dim when
small), tokens in monospace (a blank token as ␣), EXPLAIN/WALK rows grouped by layer,
DESCRIBE in band sections, a wide one-row table (STATS) as field/value pairs, the
message above the table, messages green, errors red, and the footer (rows, chat
wrapping, time). It only formats: everything shown comes from the result.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from ..result import Result
from .table import (
    INDEX_COLUMNS,
    LAYER_GROUPED,
    LIST_COLUMNS,
    PROB_COLUMNS,
    SCORE_COLUMNS,
    TOKEN_COLUMNS,
    _clean,
    _col_max,
    _footer,
    _num,
    _plain,
    _visible_columns,
    describe_groups,
)

__all__ = ["to_html", "results_html", "page", "STYLE"]

STYLE = """<style>
.lql-result{font-family:system-ui,-apple-system,Segoe UI,sans-serif;font-size:13px;margin:4px 0 10px 0}
.lql-result table{border-collapse:collapse;margin:2px 0}
.lql-result th{text-align:left;border-bottom:1px solid #999;padding:2px 8px;font-weight:600}
.lql-result td{padding:1px 8px;vertical-align:top;white-space:nowrap}
.lql-result td.wrap{white-space:normal;max-width:32em}
.lql-result td.num,.lql-result th.num{text-align:right;font-variant-numeric:tabular-nums}
.lql-result tbody+tbody{border-top:1px solid #ccc}
.lql-result .tok{font-family:ui-monospace,Menlo,Consolas,monospace;color:#0a6f8f}
.lql-result .blank{color:#7aa7b5}
.lql-result .dim{color:#888}
.lql-result .pos{color:#15803d}.lql-result .neg{color:#b91c1c}.lql-result .big{font-weight:700}
.lql-result .rel{color:#a21caf}.lql-result .src{color:#a16207}.lql-result .note{color:#b91c1c}
.lql-result .bar{display:inline-block;width:8em;height:.8em;background:#e5e7eb;vertical-align:middle;margin-left:4px}
.lql-result .bar>span{display:block;height:100%}
.lql-result .hi>span{background:#16a34a}.lql-result .mid>span{background:#ca8a04}.lql-result .lo>span{background:#2563eb}
.lql-result .msg{color:#15803d}.lql-result .err{color:#b91c1c;font-weight:700}
.lql-result .lead{font-style:italic;margin:2px 0}.lql-result .title{font-weight:700;margin:2px 0}
.lql-result .foot{color:#888;font-size:11px;margin-top:2px}
.lql-result .band{font-weight:700;text-decoration:underline;margin-top:6px}
.lql-result .entity{font-weight:700;color:#0a6f8f}
.lql-result pre{margin:2px 0;white-space:pre-wrap}
</style>"""

WRAP = {"note", "message", "also", "down_tokens", "examples", "top_tokens", "tokens",
        "description", "text", "prompt", "error", "path"}


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _bar(p: Any) -> str:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or p != p:
        return _e(_plain(p))
    q = min(max(float(p), 0.0), 1.0)
    level = "hi" if q >= 0.5 else ("mid" if q >= 0.1 else "lo")
    pct = f"{q * 100:.2f}%"
    weight = ' class="big"' if q >= 0.5 else ""
    return (f'<span{weight}>{pct}</span><span class="bar {level}">'
            f'<span style="width:{q * 100:.1f}%"></span></span>')


def _score(v: Any, col_max: float) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return _e(_plain(v))
    rel = abs(v) / col_max if col_max > 0 else 0.0
    cls = ["pos" if v > 0 else ("neg" if v < 0 else "")]
    cls.append("big" if rel >= 0.66 else ("dim" if rel < 0.2 else ""))
    c = " ".join(x for x in cls if x)
    return f'<span class="{c}">{_e(_num(v))}</span>' if c else _e(_num(v))


def _cell(col: str, v: Any, col_max: float) -> str:
    c = col.lower()
    if c in PROB_COLUMNS:
        return _bar(v)
    if c in SCORE_COLUMNS:
        return _score(v, col_max)
    if c == "size_mb" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return _e(f"{v:,.1f}")
    if c in TOKEN_COLUMNS:
        if isinstance(v, str) and not v.strip(" "):
            return f'<span class="tok blank">{_e(v.replace(" ", "␣") or "∅")}</span>'
        return f'<span class="tok">{_e(_plain(v))}</span>'
    if c in LIST_COLUMNS:
        return f'<span class="dim">{_e(_plain(v))}</span>'
    cls = {"relation": "rel", "source": "src", "mode": "src", "note": "note", "error": "note"}.get(c)
    return f'<span class="{cls}">{_e(_plain(v))}</span>' if cls else _e(_plain(v))


def _td_class(col: str) -> str:
    c = col.lower()
    if c in SCORE_COLUMNS or c in INDEX_COLUMNS:
        return ' class="num"'
    if c in WRAP:
        return ' class="wrap"'
    return ""


def _table(columns: list[str], rows: list[dict], *, title: str | None = None,
           group_by: str | None = None) -> str:
    maxes = {c: _col_max(rows, c) for c in columns if c.lower() in SCORE_COLUMNS}
    out = []
    if title:
        out.append(f'<div class="title">{_e(title)}</div>')
    head = "".join(f"<th{_td_class(c) if c.lower() in SCORE_COLUMNS | INDEX_COLUMNS else ''}>"
                   f"{_e(c)}</th>" for c in columns)
    out.append(f"<table><thead><tr>{head}</tr></thead><tbody>")
    prev: Any = object()
    for i, r in enumerate(rows):
        cells = [_cell(c, r.get(c), maxes.get(c, 0.0)) for c in columns]
        if group_by is not None:
            key = r.get(group_by)
            if key == prev:
                cells[columns.index(group_by)] = ""
            elif i > 0:
                out.append("</tbody><tbody>")
            prev = key
        out.append("<tr>" + "".join(f"<td{_td_class(c)}>{x}</td>"
                                    for c, x in zip(columns, cells)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _record(columns: list[str], row: dict, *, title: str | None = None) -> str:
    out = [f'<div class="title">{_e(title)}</div>'] if title else []
    out.append("<table>")
    for c in columns:
        v = row.get(c)
        if isinstance(v, dict):
            cell = "<br>".join(_e(f"{k}: {_plain(x)}") for k, x in v.items())
        else:
            m = abs(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0
            cell = _cell(c, v, m)
        out.append(f"<tr><th>{_e(c)}</th><td class=\"wrap\">{cell}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _too_wide(columns: list[str], row: dict) -> bool:
    from .table import _too_wide as too_wide
    return too_wide(columns, row, 120)


def _describe(result: Result) -> str:
    out = []
    entity = result.meta.get("entity")
    if entity is not None:
        out.append(f'<div class="entity">{_e(_clean(str(entity)))}</div>')
    if result.message:
        out.append(f'<div class="lead">{_e(result.message)}</div>')
    for name, span, cols, shown in describe_groups(result):
        out.append(f'<div class="band">{_e(name)} <span class="dim">{_e(span)}</span></div>')
        out.append(_table(cols, shown))
    return "".join(out)


def _body(result: Result) -> str:
    kind = result.kind
    if kind == "error":
        return f'<div class="err">error: {_e(result.message or "unknown error")}</div>'
    if kind == "message":
        return f'<div class="msg">{_e(result.message or "")}</div>'
    if kind == "text":
        return f"<pre>{_e(result.message or '')}</pre>"
    if result.statement == "DESCRIBE" and any("band" in r for r in result.rows):
        return _describe(result)
    out = []
    cols = _visible_columns(result)
    title = result.meta.get("title")
    if result.message:
        out.append(f'<div class="lead">{_e(result.message)}</div>')
    if cols and len(result.rows) == 1 and _too_wide(cols, result.rows[0]):
        out.append(_record(cols, result.rows[0], title=title))
    elif cols and result.rows:
        group = "layer" if (result.statement in LAYER_GROUPED and "layer" in cols) else None
        out.append(_table(cols, result.rows, title=title, group_by=group))
    elif title:
        out.append(f'<div class="title">{_e(title)}</div>')
    return "".join(out)


def to_html(result: Result, *, timing: bool = True, style: bool = True) -> str:
    """One result as an HTML fragment (a ``<div class="lql-result">``, with the style)."""
    foot = _footer(result) if timing else None
    foot_html = f'<div class="foot">{_e(foot.plain)}</div>' if foot is not None else ""
    kind = _e(result.kind)
    stmt = _e(result.statement)
    return ((STYLE if style else "") +
            f'<div class="lql-result lql-{kind}" data-statement="{stmt}">{_body(result)}'
            f"{foot_html}</div>")


def results_html(results: Iterable[Result], *, timing: bool = True) -> str:
    """A sequence of results, in order, one style block for all."""
    parts = [to_html(r, timing=timing, style=False) for r in results]
    return STYLE + "".join(parts)


def page(result: Result, *, figure_svg: str | None = None) -> str:
    """A standalone HTML page: the figure (inline SVG) above the result's table
    (``PLOT "x.html"``)."""
    title = _e(result.statement)
    fig = f'<div class="lql-figure">{figure_svg}</div>' if figure_svg else ""
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{title}</title></head><body>{fig}{to_html(result)}</body></html>\n")
