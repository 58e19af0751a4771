"""The result contract: every statement returns one :class:`Result`."""

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
