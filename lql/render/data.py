"""Machine-readable output: JSON (one array per run) and CSV.

Importing this module is cheap (json/csv only).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import TextIO

from ..result import Result

__all__ = ["to_json", "write_json", "to_csv", "write_csv", "csv_value"]


def to_json(results: Iterable[Result], *, indent: int | None = None) -> str:
    """Exactly one JSON array: one ``Result.to_dict()`` per statement, in order."""
    return json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=indent,
                      allow_nan=False, default=str)


def write_json(results: Iterable[Result], out: TextIO, *, indent: int | None = None) -> None:
    out.write(_json_safe(results, indent))
    out.write("\n")


def _json_safe(results: Iterable[Result], indent: int | None) -> str:
    results = list(results)
    try:
        return to_json(results, indent=indent)
    except ValueError:            # NaN / inf: JSON has no spelling for them; use null
        data = [_nan_to_none(r.to_dict()) for r in results]
        return json.dumps(data, ensure_ascii=False, indent=indent, default=str)


def _nan_to_none(v):
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v


def csv_value(value) -> str:
    """One CSV cell: lists joined with ``|``, dicts as JSON, None empty, bools lower-case."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "|".join(csv_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def to_csv(result: Result) -> str:
    """Header + rows of one table result ("" for non-table results)."""
    if result.kind != "table":
        return ""
    d = result.to_dict()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = list(d["columns"]) or (list(d["rows"][0]) if d["rows"] else [])
    w.writerow(cols)
    for row in d["rows"]:
        w.writerow([csv_value(row.get(c)) for c in cols])
    return buf.getvalue()


def write_csv(results: Iterable[Result], out: TextIO, err: TextIO | None = None) -> None:
    """Each table result as a CSV block (blocks separated by a blank line).

    Messages, text and errors are not CSV; they go to ``err`` (stderr) when given.
    """
    first = True
    for r in results:
        if r.kind == "table":
            if not first:
                out.write("\n")
            out.write(to_csv(r))
            first = False
        elif err is not None and r.message:
            prefix = "error: " if r.kind == "error" else ""
            err.write(f"{prefix}{r.message}\n")
