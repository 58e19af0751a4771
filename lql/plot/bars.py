"""WALK / EXPLAIN WALK as bars grouped by layer, DESCRIBE as bars grouped by band.

One bar per result row, in the result's order, the groups separated by a gap;
a bar's height is the row's ``gate`` (signed), its label the row's token (WALK's
``top_token``, DESCRIBE's ``target``).
"""

from __future__ import annotations

from typing import Any

from ..render.table import BAND_TITLES
from ..result import Result
from .common import LqlFigure, is_number, new_figure, token_label

__all__ = ["walk_figure", "describe_figure", "grouped_bars"]

_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def grouped_bars(groups: list[tuple[str, list[tuple[str, float]]]], *, xlabel: str, ylabel: str,
                 title: str, name: str) -> LqlFigure:
    """One bar per (label, value), groups side by side with a gap, each group its colour;
    the group names are the x ticks (at each group's centre), the bar labels above/below
    each bar."""
    n = sum(len(bars) for _, bars in groups)
    fig = new_figure(max(6.0, min(20.0, 0.22 * n + 0.25 * len(groups) + 2)), 4.5)
    ax = fig.subplots()
    ax.set_label(name)
    x = 0.0
    centres, names = [], []
    for g, (gname, bars) in enumerate(groups):
        xs = [x + k for k in range(len(bars))]
        vals = [v for _, v in bars]
        ax.bar(xs, vals, 0.8, color=_COLOURS[g % len(_COLOURS)], gid=f"group:{gname}")
        for xi, (label, v) in zip(xs, bars):
            ax.annotate(token_label(label, 12), (xi, v), xytext=(0, 2 if v >= 0 else -2),
                        textcoords="offset points", rotation=90, ha="center",
                        va="bottom" if v >= 0 else "top", fontsize=6)
        centres.append((xs[0] + xs[-1]) / 2 if xs else x)
        names.append(gname)
        x += len(bars) + 1
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_xticks(centres, names, rotation=0 if len(groups) <= 16 else 90, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, loc="left")
    ax.margins(y=0.25)
    return fig


def _value(r: dict[str, Any], col: str) -> float:
    v: Any = r.get(col)
    return float(v) if is_number(v) else 0.0


def walk_figure(result: Result) -> LqlFigure:
    groups: dict[int, list[tuple[str, float]]] = {}
    for r in result.rows:
        groups.setdefault(int(r["layer"]), []).append((str(r.get("top_token") or ""),
                                                        _value(r, "gate")))
    prompt = result.meta.get("prompt")
    title = f"{result.statement} {token_label(prompt, 50)!s}: feature gate by layer" if prompt \
        else f"{result.statement}: feature gate by layer"
    return grouped_bars([(f"L{k}", v) for k, v in groups.items()], xlabel="layer",
                        ylabel="gate", title=title, name="bars")


def describe_figure(result: Result) -> LqlFigure:
    groups: dict[str, list[tuple[str, float]]] = {}
    for r in result.rows:
        band = r.get("band")
        name = BAND_TITLES.get(str(band).lower(), str(band).title()) if band is not None else "Edges"
        groups.setdefault(name, []).append((str(r.get("target") or ""), _value(r, "gate")))
    entity = result.meta.get("entity")
    title = f"DESCRIBE {token_label(entity, 40)}: edges by band" if entity else "DESCRIBE: edges by band"
    return grouped_bars(list(groups.items()), xlabel="band", ylabel="gate", title=title,
                        name="bars")
