"""What every plot shares: the figure class, token labels, colours, byte output."""

from __future__ import annotations

import io
import warnings
from typing import Any

from matplotlib.figure import Figure

__all__ = ["LqlFigure", "new_figure", "token_label", "figure_bytes", "is_number", "CMAP"]

#: the colour map of every heatmap (perceptually uniform, readable in grey)
CMAP = "viridis"


class LqlFigure(Figure):
    """A matplotlib ``Figure`` that Jupyter shows inline without pyplot (``_repr_png_``)."""

    def _repr_png_(self) -> bytes:
        return figure_bytes(self, "png")


def new_figure(width: float, height: float) -> LqlFigure:
    return LqlFigure(figsize=(width, height), layout="constrained")


def figure_bytes(fig: Figure, fmt: str, dpi: int = 110) -> bytes:
    """``fig`` rendered as ``png`` / ``svg`` bytes (Agg / the SVG backend: headless)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "Glyph ... missing from font": a CJK token
        fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


def token_label(v: Any, limit: int = 14) -> str:
    """A token as a label: control characters escaped, a blank token as ␣, long ones cut."""
    from ..render.table import _clean
    if v is None:
        return ""
    s = _clean(str(v))
    if not s.strip(" "):
        s = s.replace(" ", "␣") or "∅"
    if len(s) > limit:
        s = s[:limit - 1] + "…"
    return s.replace("$", r"\$")                 # no mathtext


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
