"""WHERE conditions over browse rows (SELECT, SHOW FEATURES).

Text fields (``entity``, ``relation``, ``target``) compare on the token text
with its leading/trailing whitespace stripped (``target = "Paris"`` matches the
token ``" Paris"``): ``=`` / ``!=`` / ``IN`` exactly, ``LIKE`` case-insensitively
with ``%`` (any run) and ``_`` (one character) wildcards. Numeric fields compare
as numbers. A row whose field is missing (``None``) matches only ``!=``.
"""

from __future__ import annotations

import re

from ..ast import FIELDS as LQL_FIELDS
from ..errors import ExecutionError

__all__ = ["FIELDS", "TEXT_FIELDS", "check_field", "matches", "row_matches", "value_of"]

#: the fields browse rows have: LQL's fields less those only ``FROM SAE FEATURES`` has
FIELDS = tuple(f for f in LQL_FIELDS if f not in ("label", "token", "norm"))
TEXT_FIELDS = frozenset({"entity", "relation", "target"})
NUMERIC_FIELDS = frozenset(FIELDS) - TEXT_FIELDS


def check_field(name: str, allowed=FIELDS) -> str:
    f = str(name).lower()
    if f not in allowed:
        raise ExecutionError(f"unknown field {name!r}; fields: " + ", ".join(allowed))
    return f


def _like(pattern: str) -> re.Pattern:
    out = []
    for ch in pattern:
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _norm(field: str, v):
    if v is None:
        return None
    if field in TEXT_FIELDS:
        return str(v).strip()
    return v


def _num(field: str, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ExecutionError(f"{field} is a number: compare it with a number, not {v!r}")
    return v


def matches(field: str, op: str, value, actual) -> bool:
    """Does the row value ``actual`` satisfy ``field op value``?"""
    op = op.upper()
    actual = _norm(field, actual)
    if op == "IN":
        vals = value if isinstance(value, (tuple, list)) else (value,)
        if field in NUMERIC_FIELDS:
            vals = [_num(field, v) for v in vals]
        else:
            vals = [str(v).strip() for v in vals]
        return actual is not None and actual in vals
    if op == "LIKE":
        if field in NUMERIC_FIELDS:
            raise ExecutionError(f"LIKE compares text; {field} is a number")
        return actual is not None and _like(str(value).strip()).fullmatch(str(actual)) is not None
    if field in NUMERIC_FIELDS:
        value = _num(field, value)
    else:
        value = str(value).strip()
    if op == "!=":
        return actual != value
    if actual is None:
        return False
    if op == "=":
        return actual == value
    try:
        if op == ">":
            return actual > value
        if op == "<":
            return actual < value
        if op == ">=":
            return actual >= value
        if op == "<=":
            return actual <= value
    except TypeError:
        raise ExecutionError(f"cannot compare {field} with {value!r}") from None
    raise ExecutionError(f"unknown operator {op!r}; operators: = != > < >= <= LIKE IN")


def value_of(row: dict, field: str):
    return row.get(field)


def row_matches(row: dict, conditions) -> bool:
    return all(matches(c.field.lower(), c.op, c.value, row.get(c.field.lower()))
               for c in conditions)
