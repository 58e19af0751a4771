"""Lifecycle statements: EXTRACT (here now); USE, COMPILE, DIFF are added below by their owners.

Each statement has one handler function; the storage work lives in
``lql.vindex`` (this module only adapts AST → call → Result).
"""

from __future__ import annotations

import time

from .. import ast
from ..errors import ExecutionError
from ..result import Result
from . import handler

# --------------------------------------------------------------------------- EXTRACT

EXTRACT_COLUMNS = ["path", "model", "family", "level", "dtype", "layers", "num_layers",
                   "size_mb", "seconds"]


def _enum_value(value: ast.Level | ast.DType | None, default: str) -> str:
    """The storage layer's spelling of an AST enum (``lql.vindex`` knows nothing of LQL)."""
    return default if value is None else value.value.lower()


@handler(ast.Extract)
def extract(session, stmt) -> Result:
    """EXTRACT MODEL <source> INTO <path> [WITH level] [LAYERS range] [DTYPE d] [FORCE]."""
    from ..vindex import extract as run_extract
    from ..vindex.format import load_index

    source = session.resolve_source(stmt.source)
    if stmt.adapter is not None:      # WITH ADAPTER: the LoRA merged into the source first
        from ..sources import open_source
        from ..sources.adapter import with_adapter
        source = with_adapter(open_source(source), session.resolve_path(stmt.adapter))
    output = session.resolve_path(stmt.output)
    # the storage layer takes plain layer numbers (lql.vindex knows nothing of the AST)
    layers = (range(stmt.layers.start, stmt.layers.end + 1)
              if isinstance(stmt.layers, ast.Range) else None)     # None: ALL LAYERS
    level, note = _level_for(stmt)
    t0 = time.perf_counter()
    out = run_extract(source, output, level=_enum_value(level, "browse"),
                      dtype=_enum_value(stmt.dtype, "f16"), layers=layers,
                      force=bool(stmt.force), check_cancelled=session.check_cancelled)
    seconds = round(time.perf_counter() - t0, 2)
    index = load_index(out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    row = {"path": str(out), "model": index.get("model"), "family": index.get("family"),
           "level": index.get("extract_level"), "dtype": index["dtype"],
           "layers": len(index["layers"]), "num_layers": index["num_layers"],
           "size_mb": round(size / 1e6, 1), "seconds": seconds}
    message = (f"extracted {row['model']} ({row['family']}, {row['layers']}/{row['num_layers']} "
               f"layers, {row['level'].upper()}, {row['dtype']}) into {out} — "
               f"{row['size_mb']} MB in {seconds} s")
    if note:
        message += f"; {note}"
    return Result.table("EXTRACT", EXTRACT_COLUMNS, [row], message=message)


_ORDER = (ast.Level.BROWSE, ast.Level.INFERENCE, ast.Level.ALL)


def _level_for(stmt) -> tuple[ast.Level | None, str | None]:
    """LARQL's ``COMPONENTS …``: lql extracts whole levels, so the components choose the
    smallest level that stores them all when ``WITH`` is absent; a ``WITH`` level that
    lacks one of them is refused (LARQL parses the list and ignores it)."""
    if not stmt.components:
        return stmt.level, None
    need = max((ast.COMPONENT_LEVELS[c] for c in stmt.components), key=_ORDER.index)
    names = ", ".join(stmt.components)
    if stmt.level is not None and _ORDER.index(stmt.level) < _ORDER.index(need):
        lacking = [c for c in stmt.components
                   if _ORDER.index(ast.COMPONENT_LEVELS[c]) > _ORDER.index(stmt.level)]
        raise ExecutionError(f"COMPONENTS {', '.join(lacking)} need WITH {need} "
                             f"(WITH {stmt.level} does not store them)")
    level = stmt.level or need
    return level, (f"COMPONENTS {names}: lql extracts whole levels — WITH {level} stores "
                   f"them (and everything else that level holds)")
