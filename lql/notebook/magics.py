"""``%lql`` (one line) and ``%%lql`` (a cell) run LQL in one notebook-wide Session.

    %load_ext lql
    %lql USE "smollm2.vindex"
    prompt = "The capital of France is"
    %lql TRACE {prompt!q} FOR " Paris" POSITIONS ALL RAW

``{name}`` is replaced by ``str(value)`` of a notebook variable (``{obj.attr}`` and
``{d[key]}`` are not supported: names and dotted attributes only); ``{name!q}``
by the value as an LQL string literal (quoted, escaped); ``{{`` / ``}}`` are literal
braces. An unknown name is a one-line error. One statement returns its
:class:`~lql.result.Result`, several a :class:`~lql.result.Results` list — both
display as tables; ``r = %lql ...`` keeps it (``r.plot()``, ``r.to_pandas()``).

A failing statement raises its ``LqlError``; the extension shows it as one red
line (no traceback), and the cell fails. The session is :func:`session` (also
``lql.notebook.magics.SESSION``): Python code in the notebook can use it too.
"""

from __future__ import annotations

import re
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

from ..ast import quote
from ..errors import ExecutionError, LqlError
from ..result import Result, Results
from ..session import Session

__all__ = ["LqlMagics", "interpolate", "session", "load_ipython_extension", "SESSION"]

SESSION: Session | None = None

_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(!q)?\}")


def session() -> Session:
    """The notebook-wide session (created on first use, in the kernel's folder)."""
    global SESSION
    if SESSION is None:
        SESSION = Session()
    return SESSION


def interpolate(text: str, namespace: dict[str, Any]) -> str:
    """``{name}`` / ``{name.attr}`` / ``{name!q}`` → the value from ``namespace``."""
    def sub(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole in ("{{", "}}"):
            return whole[0]
        name = m.group(1)
        head, *attrs = name.split(".")
        if head not in namespace:
            raise ExecutionError(f"{{{name}}}: {head!r} is not defined in the notebook")
        value = namespace[head]
        for a in attrs:
            try:
                value = getattr(value, a)
            except AttributeError:
                raise ExecutionError(f"{{{name}}}: {type(value).__name__} has no "
                                     f"attribute {a!r}") from None
        return quote(str(value)) if m.group(2) else str(value)
    return _FIELD.sub(sub, text)


@magics_class
class LqlMagics(Magics):
    @no_var_expand
    @line_cell_magic
    def lql(self, line: str, cell: str | None = None) -> Result | Results | None:
        """Run LQL statements (``%lql STMT; ...`` or a ``%%lql`` cell) in the notebook's
        session; ``{var}`` / ``{var!q}`` interpolate notebook variables."""
        text = line if cell is None else (line + "\n" + cell)
        text = interpolate(text, self.shell.user_ns if self.shell is not None else {})
        if not text.strip():
            return None
        results = session().execute(text)
        if len(results) == 1:
            return results[0]
        return results


def _show_lql_error(shell, etype, value, tb, tb_offset=None) -> list[str]:
    """One red line for an LqlError instead of a traceback (the cell still fails)."""
    msg = f"\x1b[1;31m{etype.__name__}: {value}\x1b[0m"
    if hasattr(value, "pretty"):
        msg = f"\x1b[1;31m{etype.__name__}:\x1b[0m {value.pretty()}"
    stb = [msg]
    shell._showtraceback(etype, value, stb)       # the kernel sends it as the cell's error
    return stb


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(LqlMagics)
    ipython.set_custom_exc((LqlError,), _show_lql_error)


def unload_ipython_extension(ipython) -> None:
    ipython.set_custom_exc((), None)
