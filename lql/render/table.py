"""Rich rendering of results for terminals (REPL and ``lql`` on a TTY).

``render(result, console)`` prints one :class:`~lql.result.Result`. It only
formats: what is shown comes from the result's rows, columns, message and
meta. Conventions a handler can use:

* ``message`` on a table result is printed above the table (e.g. ``(no edges
  found)`` when there are no rows);
* ``meta["title"]``: a heading for the table; ``meta["entity"]``: DESCRIBE's entity;
* ``meta["bands"]`` (or ``meta["layer_bands"]``): ``{band: [lo, hi]}`` — shown in
  DESCRIBE's section headings;
* ``meta["verbosity"]``: ``"brief" | "verbose" | "raw"`` for DESCRIBE / SHOW RELATIONS;
* ``meta["chat_wrapped"]`` is noted under INFER-like tables;
* ``meta["format"] == "markdown"`` on a text result renders Markdown (HELP);
* ``meta["elapsed_ms"]`` (filled by the session) is shown under every result.

Columns whose values are all ``None`` are hidden in the table view (they stay
in JSON and CSV).
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from ..result import Result

__all__ = ["render", "make_console", "format_elapsed", "format_error"]

PROB_COLUMNS = {"probability", "top_probability", "prob", "p", "dense_probability",
                "patched_probability"}
SCORE_COLUMNS = {"gate", "score", "c_score", "attn_logit", "ffn_logit", "logit", "delta",
                 "activation", "cosine", "similarity", "distance", "confidence",
                 "dense_logit", "attention", "weight"}
TOKEN_COLUMNS = {"token", "top_token", "target", "entity", "dense_token", "token_text"}
LIST_COLUMNS = {"down_tokens", "also", "tokens", "examples", "top_tokens"}
INDEX_COLUMNS = {"layer", "feature", "rank", "token_id", "layers", "num_features", "count",
                 "head", "position", "size_mb", "layer_min", "layer_max"}
LAYER_GROUPED = {"WALK", "EXPLAIN WALK", "EXPLAIN INFER"}
#: long free-text columns that may wrap; every other column stays on one line
WRAP_COLUMNS = {"note", "message", "also", "down_tokens", "examples", "top_tokens", "tokens",
                "description", "text", "prompt", "error", "path"}
BAND_TITLES = {"syntax": "Syntax", "knowledge": "Edges", "output": "Output"}

BAR_WIDTH = 20
_BLOCKS = " ▏▎▍▌▋▊▉█"


def make_console(file=None, *, color: bool | None = None, width: int | None = None) -> Console:
    """A console for ``file``; without a terminal: no colour, a generous width."""
    import os
    import sys
    f = file if file is not None else sys.stdout
    is_tty = hasattr(f, "isatty") and f.isatty()
    kwargs: dict[str, Any] = {"file": f, "highlight": False, "soft_wrap": False}
    if color is False or (color is None and not is_tty):
        kwargs["no_color"] = True
        kwargs["color_system"] = None
    if color is True:
        kwargs["force_terminal"] = True
    if width is not None:
        kwargs["width"] = width
    elif not is_tty:
        try:
            kwargs["width"] = int(os.environ.get("COLUMNS", "") or 120)
        except ValueError:
            kwargs["width"] = 120
    return Console(**kwargs)


# --------------------------------------------------------------------------- cells

def _clean(s: str) -> str:
    """Make control characters visible (a token may be "\\n")."""
    if s.isprintable():
        return s
    out = []
    for ch in s:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _num(v: float) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.001:
        return f"{v:.4f}"
    return f"{v:.2e}"


def _plain(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, float)):
        return _num(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(_plain(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_plain(x)}" for k, x in v.items())
    return _clean(str(v))


def _bar(p: Any) -> Text:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or p != p:
        return Text(_plain(p))
    q = min(max(float(p), 0.0), 1.0)
    eighths = int(round(q * BAR_WIDTH * 8))
    full, part = divmod(eighths, 8)
    bar = "█" * full + (_BLOCKS[part] if part else "")
    t = Text(f"{q * 100:6.2f}% ", style="bold" if q >= 0.5 else "")
    t.append(bar.ljust(BAR_WIDTH), style="green" if q >= 0.5 else ("yellow" if q >= 0.1 else "blue"))
    return t


def _score(v: Any, col_max: float) -> Text:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return Text(_plain(v))
    rel = abs(v) / col_max if col_max > 0 else 0.0
    colour = "green" if v > 0 else ("red" if v < 0 else "")
    weight = "bold " if rel >= 0.66 else ("dim " if rel < 0.2 else "")
    return Text(_num(v), style=(weight + colour).strip())


def _col_max(rows: list[dict], col: str) -> float:
    m = 0.0
    for r in rows:
        v = r.get(col)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != math.inf:
            m = max(m, abs(float(v)))
    return m


def _cell(col: str, v: Any, col_max: float) -> Text:
    c = col.lower()
    if c in PROB_COLUMNS:
        return _bar(v)
    if c in SCORE_COLUMNS:
        return _score(v, col_max)
    if c == "size_mb" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return Text(f"{v:,.1f}")
    if c in TOKEN_COLUMNS:
        if isinstance(v, str) and not v.strip(" "):   # " " or "" would print as nothing
            return Text(v.replace(" ", "␣") or "∅", style="dim cyan")
        return Text(_plain(v), style="cyan")
    if c in LIST_COLUMNS:
        return Text(_plain(v), style="dim")
    if c == "relation":
        return Text(_plain(v), style="magenta")
    if c in ("source", "mode"):
        return Text(_plain(v), style="yellow")
    if c in ("note", "error"):
        return Text(_plain(v), style="red")
    return Text(_plain(v))


def _justify(col: str) -> JustifyMethod:
    c = col.lower()
    if c in PROB_COLUMNS:
        return "left"
    if c in SCORE_COLUMNS or c in INDEX_COLUMNS:
        return "right"
    return "left"


def _visible_columns(result: Result) -> list[str]:
    cols = list(result.columns) or (list(result.rows[0]) if result.rows else [])
    if not result.rows:
        return cols
    return [c for c in cols if any(r.get(c) is not None for r in result.rows)]


# --------------------------------------------------------------------------- tables

def _fit_widths(columns: list[str], grid: list[list[Text]], total: int | None) -> list[int]:
    """Column widths that fit ``total``: free-text columns give way first (and wrap),
    then the widest of the others; nothing shrinks below its header."""
    natural = [max([len(c)] + [row[j].cell_len for row in grid]) for j, c in enumerate(columns)]
    if total is None:
        return natural
    widths = list(natural)
    budget = total - 3 * (len(columns) - 1) - 1          # column gaps, as SIMPLE_HEAD draws them
    for pass_wrap in (True, False):
        idx = [j for j, c in enumerate(columns) if (c.lower() in WRAP_COLUMNS) == pass_wrap]
        while sum(widths) > budget:
            j = max(idx, key=lambda k: widths[k], default=None)
            if j is None:
                break
            floor = max(len(columns[j]), 12 if pass_wrap else 6)
            if widths[j] <= floor:
                idx.remove(j)
                continue
            widths[j] = max(floor, widths[j] - (sum(widths) - budget))
    return widths


def _table(columns: list[str], rows: list[dict], *, title: str | None = None,
           group_by: str | None = None, width: int | None = None) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", header_style="bold",
              show_edge=False, pad_edge=False, box=_box())
    maxes = {c: _col_max(rows, c) for c in columns if c.lower() in SCORE_COLUMNS}
    grid = [[_cell(c, r.get(c), maxes.get(c, 0.0)) for c in columns] for r in rows]
    for c, w in zip(columns, _fit_widths(columns, grid, width)):
        t.add_column(c, justify=_justify(c), overflow="fold", width=w)
    prev = object()
    for i, (r, cells) in enumerate(zip(rows, grid)):
        if group_by is not None:
            key = r.get(group_by)
            if key == prev:
                cells[columns.index(group_by)] = Text("")
            elif i > 0:
                t.add_section()
            prev = key
        t.add_row(*cells)
    return t


def _too_wide(columns: list[str], row: dict, width: int) -> bool:
    """A one-row table (STATS) reads better as field/value pairs when it is wide."""
    if len(columns) > 8:
        return True
    natural = sum(max(len(c), len(_plain(row.get(c)))) for c in columns) + 3 * len(columns)
    return natural > width


def _record(columns: list[str], row: dict, *, title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", show_header=False,
              show_edge=False, pad_edge=False, box=None)
    t.add_column("field", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")
    for c in columns:
        v = row.get(c)
        if isinstance(v, dict):
            cell = Text("\n".join(f"{k}: {_plain(x)}" for k, x in v.items()))
        else:
            cell = _cell(c, v, abs(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                         else 0.0)
        t.add_row(c, cell)
    return t


def _box():
    from rich import box
    return box.SIMPLE_HEAD


def describe_groups(result: Result) -> list[tuple[str, str, list[str], list[dict]]]:
    """DESCRIBE's layout, shared by the terminal and HTML renderers: per band, in row order,
    ``(title, layer span, visible columns, rows with a "layers" text)``."""
    meta = result.meta
    verbosity = str(meta.get("verbosity") or "verbose").lower()
    bands = meta.get("bands") or meta.get("layer_bands") or {}
    groups: dict[Any, list[dict]] = {}
    for r in result.rows:
        groups.setdefault(r.get("band"), []).append(r)
    out = []
    for band, rows in groups.items():
        name = BAND_TITLES.get(str(band).lower(), str(band).title()) if band is not None else "Edges"
        rng = bands.get(band) if isinstance(bands, dict) else None
        span = ""
        if isinstance(rng, (list, tuple)) and len(rng) == 2:
            span = f"L{rng[0]}" if rng[0] == rng[1] else f"L{rng[0]}–{rng[1]}"
        shown = []
        for r in rows:
            lo, hi = r.get("layer_min"), r.get("layer_max")
            layers = "" if lo is None else (f"L{lo}" if hi in (None, lo) else f"L{lo}–{hi}")
            shown.append({**r, "layers": layers})
        if verbosity == "brief":
            cols = ["target", "gate", "relation", "source"]
        elif verbosity == "raw":
            cols = ["target", "gate", "layers", "count", "also", "source"]
        else:
            cols = ["relation", "target", "gate", "layers", "count", "also", "source"]
        cols = [c for c in cols if any(r.get(c) not in (None, "", []) for r in shown)]
        out.append((name, span, cols, shown))
    return out


def _describe(result: Result, console: Console) -> None:
    entity = result.meta.get("entity")
    if entity is not None:
        console.print(Text(_clean(str(entity)), style="bold cyan"))
    if result.message:
        console.print(Text(result.message, style="italic"))
    for name, span, cols, shown in describe_groups(result):
        heading = Text(name, style="bold underline")
        if span:
            heading.append(f"  {span}", style="dim")
        console.print(heading)
        console.print(_table(cols, shown, width=console.width))


def _footer(result: Result) -> Text | None:
    parts = []
    if result.kind == "table":
        n = len(result.rows)
        parts.append(f"{n} row{'s' if n != 1 else ''}")
    if "chat_wrapped" in result.meta:
        parts.append("chat template applied" if result.meta["chat_wrapped"]
                     else "raw prompt (no chat wrapping)")
    el = result.meta.get("elapsed_ms")
    if isinstance(el, (int, float)):
        parts.append(format_elapsed(el))
    return Text(" · ".join(parts), style="dim") if parts else None


def format_elapsed(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.1f} ms"


def format_error(message: str) -> Text:
    return Text("error: " + message, style="bold red")


def render(result: Result, console: Console, *, timing: bool = True) -> None:
    """Print one result on ``console``."""
    kind = result.kind
    if kind == "error":
        console.print(format_error(result.message or "unknown error"))
    elif kind == "message":
        console.print(Text(result.message or "", style="green"))
    elif kind == "text":
        body = result.message or ""
        if result.meta.get("streamed"):      # already shown token by token (REPL GENERATE)
            console.print()
        elif str(result.meta.get("format", "")).lower() == "markdown":
            from rich.markdown import Markdown
            console.print(Markdown(body))
        else:
            console.print(Text(body))
    elif result.statement == "DESCRIBE" and any("band" in r for r in result.rows):
        _describe(result, console)
    else:
        cols = _visible_columns(result)
        title = result.meta.get("title")
        if result.message:
            console.print(Text(result.message, style="italic"))
        if cols and len(result.rows) == 1 and _too_wide(cols, result.rows[0], console.width):
            console.print(_record(cols, result.rows[0], title=title))
        elif cols and result.rows:
            group = "layer" if (result.statement in LAYER_GROUPED and "layer" in cols) else None
            console.print(_table(cols, result.rows, title=title, group_by=group,
                                 width=console.width))
        elif title:
            console.print(Text(str(title), style="bold"))
    if timing:
        foot = _footer(result)
        if foot is not None:
            console.print(foot)


def render_all(results, console: Console, *, timing: bool = True) -> None:
    for r in results:
        render(r, console, timing=timing)
