"""WHERE conditions of DELETE / UPDATE evaluated against edges and features."""

from __future__ import annotations

import re

from ..errors import ExecutionError

__all__ = ["matches", "condition_map", "EDIT_FIELDS"]

EDIT_FIELDS = ("entity", "relation", "target", "layer", "feature", "confidence")


def _like(pattern: str, value: str) -> bool:
    rx = "^" + ".*".join(re.escape(p) for p in pattern.lower().split("%")) + "$"
    return re.match(rx, value.lower()) is not None


def matches(cond, value) -> bool:
    """Does ``value`` satisfy ``cond`` (an ``ast.Condition``)?  Strings compare case-insensitively."""
    op, want = cond.op, cond.value
    if value is None:
        return False
    if isinstance(value, str):
        value = value.strip()
        if op == "LIKE":
            return _like(str(want), value)
        if op == "IN":
            return value.lower() in {str(w).strip().lower() for w in want}
        a, b = value.lower(), str(want).strip().lower()
    else:
        if op == "IN":
            return any(_num(w) == value for w in want)
        if op == "LIKE":
            return _like(str(want), str(value))
        a, b = value, _num(want)
    return {"=": a == b, "!=": a != b, ">": a > b, "<": a < b, ">=": a >= b,
            "<=": a <= b}[op]


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ExecutionError(f"{v!r} is not a number") from None


def condition_map(conds) -> dict[str, list]:
    out: dict[str, list] = {}
    for c in conds:
        f = c.field.lower()
        if f not in EDIT_FIELDS:
            raise ExecutionError(f"cannot filter edits on {f!r} (fields: {', '.join(EDIT_FIELDS)})")
        out.setdefault(f, []).append(c)
    return out


def all_match(cmap: dict[str, list], record: dict) -> bool:
    return all(matches(c, record.get(f)) for f, cs in cmap.items() for c in cs)
