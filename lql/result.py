"""The result contract: every statement returns one :class:`Result`.

Notebook helpers (all lazy: nothing here imports pandas, matplotlib or IPython):
``_repr_html_`` / ``_repr_mimebundle_`` (Jupyter's rich display, via
:mod:`lql.render.html`), ``to_pandas()`` / ``to_polars()`` (:mod:`lql.render.frames`)
and ``plot()`` (:mod:`lql.plot`). :class:`Results` is the list of results
``Session.execute(text)`` returns; it displays as the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    statement: str                      # "INFER", "SHOW LAYERS", "EXPLAIN WALK", ...
    kind: str = "table"                 # "table" | "message" | "text" | "error"
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (a stable interface): plain Python values only."""
        return {
            "statement": self.statement,
            "kind": self.kind,
            "columns": list(self.columns),
            "rows": [{k: _plain(v) for k, v in row.items()} for row in self.rows],
            "message": self.message,
            "meta": {k: _plain(v) for k, v in self.meta.items()},
        }

    # ------------------------------------------------------------ notebooks
    def _repr_html_(self) -> str:
        from .render.html import to_html
        return to_html(self)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {"text/plain": _plain_text([self]), "text/html": self._repr_html_()}

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` (columns and dtypes: docs/NOTEBOOKS.md)."""
        from .render.frames import to_pandas
        return to_pandas(self)

    def to_polars(self):
        """The rows as a ``polars.DataFrame`` (where polars is installed)."""
        from .render.frames import to_polars
        return to_polars(self)

    def plot(self, **options: Any):
        """The result drawn as a matplotlib ``Figure`` (TRACE, EXPLAIN INFER WITH ATTENTION,
        WALK, EXPLAIN WALK, DESCRIBE, INFER); shown inline in a notebook."""
        from .plot import figure
        return figure(self, **options)

    @classmethod
    def table(cls, statement: str, columns, rows, *, message=None, **meta) -> Result:
        return cls(statement, "table", list(columns), list(rows), message, dict(meta))

    @classmethod
    def msg(cls, statement: str, message: str, **meta) -> Result:
        return cls(statement, "message", [], [], message, dict(meta))

    @classmethod
    def text(cls, statement: str, text: str, **meta) -> Result:
        return cls(statement, "text", [], [], text, dict(meta))

    @classmethod
    def error(cls, statement: str, message: str, **meta) -> Result:
        return cls(statement, "error", [], [], message, dict(meta))


class Results(list):
    """A list of :class:`Result` (``Session.execute(text)``) that Jupyter shows as the
    sequence of its results."""

    def _repr_html_(self) -> str:
        from .render.html import results_html
        return results_html(self)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        return {"text/plain": _plain_text(self), "text/html": self._repr_html_()}

    def _repr_pretty_(self, p, cycle: bool) -> None:
        # IPython's list printer would win over the bundle's text/plain for a list subclass
        p.text("Results([...])" if cycle else _plain_text(self))


def _plain_text(results) -> str:
    """The terminal table view, uncoloured (the ``text/plain`` of the rich display)."""
    import io

    from rich.console import Console

    from .render.table import render
    buf = io.StringIO()
    # force_jupyter=False: in a kernel rich would otherwise display() instead of writing
    console = Console(file=buf, force_jupyter=False, width=120, no_color=True,
                      color_system=None, highlight=False, soft_wrap=False)
    for r in results:
        render(r, console)
    return buf.getvalue().rstrip("\n")


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples → JSON-ready Python values."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)
