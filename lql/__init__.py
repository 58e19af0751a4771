"""lql — the Lazarus Query Language: a transformer's weights as a database.

Imports are lazy so that `import lql` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["parse", "Session", "Result", "LqlError", "open_vindex", "__version__",
           "load_ipython_extension"]


def load_ipython_extension(ipython) -> None:
    """``%load_ext lql``: the ``%lql`` / ``%%lql`` magics (docs/NOTEBOOKS.md)."""
    from .notebook.magics import load_ipython_extension as load
    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from .notebook.magics import unload_ipython_extension as unload
    unload(ipython)


def __getattr__(name: str):
    if name == "parse":
        from .parser import parse
        return parse
    if name == "Session":
        from .session import Session
        return Session
    if name == "Result":
        from .result import Result
        return Result
    if name == "LqlError":
        from .errors import LqlError
        return LqlError
    if name == "open_vindex":
        from .api import open_vindex  # a browse view over lql.vindex.open_vindex
        return open_vindex
    raise AttributeError(f"module 'lql' has no attribute {name!r}")
