"""Results as data frames: ``Result.to_pandas()`` / ``Result.to_polars()``.

Both libraries are optional (``pip install 'lql[notebook]'`` brings pandas; polars is
used where installed). A frame's columns are the result's ``columns`` (the result
contract, in order) followed by any other key its rows carry (e.g. ``top_token_id``).
Each column's type is read from its values, ``None`` being a missing value:

| values | pandas | polars |
|---|---|---|
| all ``int`` | ``int64`` (``Int64`` with a missing value) | ``Int64`` |
| ``int`` / ``float`` | ``float64`` (missing → NaN) | ``Float64`` |
| all ``bool`` | ``bool`` (``boolean`` with a missing value) | ``Boolean`` |
| all ``str`` (tokens keep their spaces) | ``string`` | ``String`` |
| lists, dicts, mixed | ``object`` (lists stay Python lists) | ``List(String)`` for lists of str, else ``Object`` |
| all ``None`` | ``object`` | ``Null`` |

A message / text / error result becomes one row with a ``message`` column. Every frame
carries the rest in ``attrs`` (pandas) — ``statement``, ``kind``, ``message``, ``meta``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ExecutionError
from ..result import Result

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

__all__ = ["frame_columns", "column_kind", "to_pandas", "to_polars"]


def frame_columns(result: Result) -> tuple[list[str], list[dict[str, Any]]]:
    """The frame's column names and rows (a non-table result: one ``message`` row)."""
    if result.kind != "table":
        return ["message"], [{"message": result.message}]
    cols = list(result.columns)
    seen = set(cols)
    for r in result.rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols, result.rows


def column_kind(values: list[Any]) -> str:
    """``"int" | "float" | "bool" | "str" | "str_list" | "null" | "object"`` for a column."""
    present = [v for v in values if v is not None]
    if not present:
        return "null"
    if all(isinstance(v, bool) for v in present):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) or _np_int(v) for v in present):
        return "int"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) or _np_num(v) for v in present):
        return "float"
    if all(isinstance(v, str) for v in present):
        return "str"
    if all(isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v) for v in present):
        return "str_list"
    return "object"


def _np_int(v: Any) -> bool:
    return type(v).__module__ == "numpy" and getattr(v, "dtype", None) is not None and \
        v.dtype.kind in "iu" and getattr(v, "ndim", 1) == 0


def _np_num(v: Any) -> bool:
    return type(v).__module__ == "numpy" and getattr(v, "dtype", None) is not None and \
        v.dtype.kind in "iuf" and getattr(v, "ndim", 1) == 0


def _meta(result: Result) -> dict[str, Any]:
    return {"statement": result.statement, "kind": result.kind, "message": result.message,
            "meta": dict(result.meta)}


def to_pandas(result: Result) -> pd.DataFrame:
    try:
        import pandas as pd
    except ImportError:
        raise ExecutionError("to_pandas() needs pandas, an optional dependency: "
                             "pip install 'lql[notebook]'") from None
    cols, rows = frame_columns(result)
    data: dict[str, Any] = {}
    for c in cols:
        vals = [r.get(c) for r in rows]
        kind = column_kind(vals)
        missing = any(v is None for v in vals)
        if kind == "int":
            data[c] = pd.array(vals, dtype="Int64") if missing else \
                pd.Series([int(v) for v in vals if v is not None], dtype="int64")
        elif kind == "float":
            data[c] = pd.Series([float("nan") if v is None else float(v) for v in vals],
                                dtype="float64")
        elif kind == "bool":
            data[c] = pd.array(vals, dtype="boolean") if missing else pd.Series(vals, dtype="bool")
        elif kind == "str":
            data[c] = pd.array(vals, dtype="string")
        else:
            s = pd.Series([None] * len(vals), dtype="object")
            for i, v in enumerate(vals):     # lists stay lists (no broadcasting)
                s.iat[i] = list(v) if isinstance(v, tuple) else v
            data[c] = s
    df = pd.DataFrame({c: (v.reset_index(drop=True) if isinstance(v, pd.Series) else v)
                       for c, v in data.items()}, columns=cols)
    if not rows:
        df = df.astype({c: "object" for c in cols})
    df.attrs.update(_meta(result))
    return df


def to_polars(result: Result) -> pl.DataFrame:
    try:
        import polars as pl
    except ImportError:
        raise ExecutionError("to_polars() needs polars, an optional dependency: "
                             "pip install polars") from None
    cols, rows = frame_columns(result)
    series = []
    for c in cols:
        vals = [r.get(c) for r in rows]
        kind = column_kind(vals)
        if kind == "int":
            series.append(pl.Series(c, [None if v is None else int(v) for v in vals], dtype=pl.Int64))
        elif kind == "float":
            series.append(pl.Series(c, [None if v is None else float(v) for v in vals],
                                    dtype=pl.Float64))
        elif kind == "bool":
            series.append(pl.Series(c, vals, dtype=pl.Boolean))
        elif kind == "str":
            series.append(pl.Series(c, vals, dtype=pl.String))
        elif kind == "str_list":
            series.append(pl.Series(c, [None if v is None else list(v) for v in vals],
                                    dtype=pl.List(pl.String)))
        elif kind == "null":
            series.append(pl.Series(c, vals, dtype=pl.Null))
        else:
            series.append(pl.Series(c, vals, dtype=pl.Object))
    return pl.DataFrame(series)
