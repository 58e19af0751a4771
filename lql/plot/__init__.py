"""Plots of results (matplotlib, an optional dependency: ``pip install 'lql[plot]'``).

Plots only *draw*: every value comes from a :class:`~lql.result.Result`'s rows and
meta, never from the model (the executor computes, renderers and plots format).
This module is light — matplotlib is imported only when a figure is drawn:

* :func:`plottable` — whether a result has a plot;
* :func:`figure` — the result drawn as a matplotlib ``Figure`` (``Result.plot()``);
* :func:`write_plot` — the figure written to a ``.png``, ``.svg`` or ``.html`` file,
  atomically (the ``PLOT "<file>"`` clause, ``lql --plot DIR``);
* :func:`check_target` — the checks on a PLOT path made before a statement runs.

One module per plot kind: :mod:`lql.plot.trace` (TRACE: logit-lens heatmap, FOR
trajectory and attention/FFN split), :mod:`lql.plot.attention` (EXPLAIN INFER WITH
ATTENTION), :mod:`lql.plot.bars` (WALK / EXPLAIN WALK by layer, DESCRIBE by band),
:mod:`lql.plot.compare` (INFER, INFER COMPARE as paired bars). Details:
docs/NOTEBOOKS.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ExecutionError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..result import Result

__all__ = ["PLOT_FORMATS", "plottable", "figure", "write_plot", "check_target", "plot_name",
           "require_matplotlib", "plot_target", "attach_plot"]

#: what a PLOT file may be, by its extension
PLOT_FORMATS = (".png", ".svg", ".html")
#: the statements that have a plot
PLOT_STATEMENTS = ("TRACE", "EXPLAIN INFER", "WALK", "EXPLAIN WALK", "DESCRIBE", "INFER")


def require_matplotlib() -> None:
    """Raise a one-line :class:`ExecutionError` naming the extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ExecutionError("plots need matplotlib, an optional dependency: "
                             "pip install 'lql[plot]'") from None


def _why_not(result: Result) -> str | None:
    """Why ``result`` has no plot (``None``: it has one)."""
    st = result.statement
    if result.kind != "table":
        what = "an error" if result.kind == "error" else f"a {result.kind} result"
        return f"{st} returned {what}: there is nothing to plot"
    if st not in PLOT_STATEMENTS:
        return (f"{st} has no plot (plots: TRACE, EXPLAIN INFER WITH ATTENTION, WALK, "
                f"EXPLAIN WALK, DESCRIBE, INFER)")
    if not result.rows:
        return f"{st} returned no rows: there is nothing to plot"
    if st == "EXPLAIN INFER" and not any(r.get("kind") == "attention" for r in result.rows):
        return "EXPLAIN INFER plots its attention heads: add WITH ATTENTION"
    return None


def plottable(result: Result) -> bool:
    """True when :func:`figure` can draw ``result``."""
    return _why_not(result) is None


def figure(result: Result, **options: Any) -> Figure:
    """``result`` drawn as a matplotlib ``Figure`` (not attached to pyplot: no global
    state, shown inline by Jupyter through its ``_repr_png_``)."""
    why = _why_not(result)
    if why is not None:
        raise ExecutionError(why)
    require_matplotlib()
    st = result.statement
    if st == "TRACE":
        from .trace import trace_figure
        return trace_figure(result, **options)
    if st == "EXPLAIN INFER":
        from .attention import attention_figure
        return attention_figure(result, **options)
    if st in ("WALK", "EXPLAIN WALK"):
        from .bars import walk_figure
        return walk_figure(result, **options)
    if st == "DESCRIBE":
        from .bars import describe_figure
        return describe_figure(result, **options)
    from .compare import infer_figure
    return infer_figure(result, **options)


def check_target(path: str | os.PathLike) -> Path:
    """The PLOT path, checked before anything is computed: a known extension and an
    existing folder (a clear error otherwise)."""
    p = Path(path)
    if p.suffix.lower() not in PLOT_FORMATS:
        raise ExecutionError(f"PLOT {str(path)!r}: the file must end in .png, .svg or .html "
                             f"(the extension picks the format)")
    if not p.parent.is_dir():
        raise ExecutionError(f"PLOT {str(path)!r}: folder {str(p.parent)!r} does not exist")
    return p


def plot_target(session: Any, stmt: Any) -> Path | None:
    """A statement's ``PLOT "<file>"`` as a checked path (relative to the session's
    folder), or ``None`` without the clause. Checked *before* the statement runs:
    extension, folder, matplotlib installed, and a statement form that has a plot."""
    given = getattr(stmt, "plot", None)
    if given is None:
        return None
    if getattr(stmt, "generate", None) is not None:
        raise ExecutionError("PLOT draws INFER's probabilities; INFER ... GENERATE returns "
                             "text (drop GENERATE or PLOT)")
    if getattr(stmt, "with_attention", True) is False:
        raise ExecutionError("PLOT on EXPLAIN INFER draws its attention heads: add WITH ATTENTION")
    path = check_target(session.resolve_path(given))
    require_matplotlib()
    return path


def attach_plot(result: Result, path: Path | None) -> Result:
    """Write ``result``'s plot to ``path`` (when given) and note it in ``meta.plot``."""
    if path is not None:
        result.meta["plot"] = str(write_plot(result, path))
    return result


def write_plot(result: Result, path: str | os.PathLike) -> Path:
    """Draw ``result`` and write it to ``path`` (PNG, SVG or HTML by extension),
    atomically (a temporary sibling, fsync, rename). Returns the path written."""
    from ..atomic import atomic_write_bytes
    p = check_target(path)
    fig = figure(result)
    fmt = p.suffix.lower()[1:]
    if fmt == "html":
        from ..render.html import page
        from .common import figure_bytes
        svg = figure_bytes(fig, "svg").decode("utf-8")
        svg = svg[svg.find("<svg"):]              # inline: no XML prolog / DOCTYPE
        data = page(result, figure_svg=svg).encode("utf-8")
    else:
        from .common import figure_bytes
        data = figure_bytes(fig, fmt)
    atomic_write_bytes(p, data)
    return p


def plot_name(result: Result, index: int, ext: str = ".png") -> str:
    """A file name for the ``index``-th result (``lql --plot DIR``): ``03-trace.png``."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in result.statement.lower()).strip("-")
    return f"{index:02d}-{slug}{ext}"
