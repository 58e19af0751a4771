"""``USE REMOTE`` against a LARQL server (or ``lql serve``'s patch endpoints).

A LARQL server has no LQL endpoint: each statement it can answer becomes one call of its
``/v1`` REST API (``crates/larql-server/src/routes/``) and the JSON comes back as a
:class:`~lql.result.Result` whose columns are LARQL's field names. Statements LARQL's API
has no endpoint for are refused with a clear error. Writes (INSERT, APPLY / REMOVE
PATCH) carry this client's ``X-Session-Id``, so they land in its own overlay there.

``APPLY PATCH "<file>"`` reads the patch file here, on the client, and sends it inline
(``POST /v1/patches/apply``); ``REMOVE PATCH "<file>"`` removes the patch named after
the file's name (``DELETE /v1/patches/{name}``). Both protocols share these two.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ast
from ..errors import ExecutionError
from ..result import Result

if TYPE_CHECKING:
    from .client import RemoteVindex

__all__ = ["run_larql", "patch_statement"]


def _call(remote: RemoteVindex, path: str, body: dict[str, Any] | None = None,
          method: str | None = None) -> dict[str, Any]:
    from .client import QUERY_TIMEOUT_S, RemoteError
    status, doc = remote._request(path, body, timeout=QUERY_TIMEOUT_S, method=method)
    if status != 200 or not isinstance(doc, dict):
        msg = doc.get("error") if isinstance(doc, dict) else None
        raise RemoteError(f"{msg or f'HTTP {status}'} (remote vindex at {remote.url})",
                          remote.url, doc.get("error_type") if isinstance(doc, dict) else None)
    return doc


def _table(stmt: ast.Statement, rows: list[dict[str, Any]], remote: RemoteVindex,
           meta: dict[str, Any]) -> Result:
    cols: list[str] = []
    for row in rows:
        for k in row:
            if k not in cols:
                cols.append(k)
    meta = {k: v for k, v in meta.items() if not isinstance(v, list)}
    meta["remote"] = remote.url
    return Result(stmt.keyword, "table", cols, rows, None if rows else "no rows", meta)


def _layers(spec: Any) -> str | None:
    if spec is None:
        return None
    text = spec.to_lql() if hasattr(spec, "to_lql") else str(spec)
    return None if text.upper() == "ALL" else text


def patch_statement(remote: RemoteVindex, stmt: ast.Statement) -> list[Result]:
    """APPLY PATCH / REMOVE PATCH of a local file name against a /v1 server's session."""
    if isinstance(stmt, ast.ApplyPatch):
        path = Path(stmt.path).expanduser()
        try:
            doc = json.loads(path.read_bytes())
        except OSError as exc:
            raise ExecutionError(f"cannot read patch {stmt.path!r}: {exc.strerror or exc}") from None
        except ValueError:
            raise ExecutionError(f"patch {stmt.path!r} is not JSON") from None
        name = path.stem
        out = _call(remote, "/v1/patches/apply", {"name": name, "patch": doc})
        n = out.get("operations")
        return [Result.msg("APPLY PATCH", f"applied {path.name} on {remote.url} (session "
                           f"{remote.session_id}): {n} operation(s)", path=str(path),
                           operations=n, remote=remote.url)]
    if isinstance(stmt, ast.RemovePatch):
        name = Path(stmt.path).stem
        out = _call(remote, "/v1/patches/" + urllib.parse.quote(name, safe=""),
                    method="DELETE")
        return [Result.msg("REMOVE PATCH", f"removed {name} on {remote.url} "
                           f"({out.get('active_patches')} patch(es) left)", path=stmt.path,
                           remote=remote.url)]
    raise ExecutionError(f"{stmt.keyword} is not a patch statement")


def run_larql(remote: RemoteVindex, stmt: ast.Statement, chat: str) -> list[Result]:
    """One statement as LARQL REST calls; the answer as a Result."""
    from .policy import route
    if isinstance(stmt, (ast.ApplyPatch, ast.RemovePatch)):
        return patch_statement(remote, stmt)
    r = route(stmt)
    if r == "refuse" and not isinstance(stmt, ast.Insert):
        raise ExecutionError(f"{stmt.keyword} is not in a LARQL server's HTTP API "
                             f"({remote.url}); USE a local vindex for it")
    if isinstance(stmt, ast.Walk):
        q: dict[str, Any] = {"prompt": stmt.prompt, "top": stmt.top or 10}
        layers = _layers(stmt.layers)
        if layers:
            q["layers"] = layers
        doc = _call(remote, "/v1/walk?" + urllib.parse.urlencode(q))
        return [_table(stmt, list(doc.get("hits") or []), remote, doc)]
    if isinstance(stmt, ast.Describe):
        band = str(stmt.band.value if stmt.band is not None else "knowledge").lower()
        band = "all" if "all" in band else band
        q = {"entity": stmt.entity, "band": band, "min_score": 0,
             "verbose": "true" if stmt.verbosity is not None
             and str(stmt.verbosity.value).upper() == "VERBOSE" else "false"}
        doc = _call(remote, "/v1/describe?" + urllib.parse.urlencode(q))
        return [_table(stmt, list(doc.get("edges") or []), remote, doc)]
    if isinstance(stmt, ast.Infer) and stmt.generate is None:
        doc = _call(remote, "/v1/infer", {"prompt": stmt.prompt, "top": stmt.top or 5,
                                          "mode": "compare" if stmt.compare else "walk"})
        rows = list(doc.get("predictions") or doc.get("walk") or [])
        return [_table(stmt, rows, remote, doc)]
    if isinstance(stmt, ast.ExplainInfer):
        doc = _call(remote, "/v1/explain-infer", {"prompt": stmt.prompt, "top": stmt.top or 5,
                                                  "with_attention": stmt.with_attention})
        rows = [{"layer": layer.get("layer"), **f} for layer in doc.get("trace") or []
                for f in layer.get("features") or []]
        return [_table(stmt, rows, remote, doc)]
    if isinstance(stmt, ast.ShowRelations):
        doc = _call(remote, "/v1/relations")
        return [_table(stmt, list(doc.get("relations") or []), remote, doc)]
    if isinstance(stmt, ast.Stats) and stmt.path is None:
        doc = _call(remote, "/v1/stats")
        return [_table(stmt, [doc], remote, {})]
    if isinstance(stmt, ast.ShowPatches):
        doc = _call(remote, "/v1/patches")
        return [_table(stmt, list(doc.get("patches") or []), remote, doc)]
    if isinstance(stmt, ast.Insert):
        body: dict[str, Any] = {"entity": stmt.entity, "relation": stmt.relation,
                                "target": stmt.target}
        if stmt.layer is not None:
            body["layer"] = stmt.layer
        if stmt.alpha is not None:
            body["alpha"] = stmt.alpha
        if stmt.confidence is not None:
            body["confidence"] = stmt.confidence
        doc = _call(remote, "/v1/insert", body)
        return [_table(stmt, [doc], remote, {})]
    raise ExecutionError(f"{stmt.keyword} is not in a LARQL server's HTTP API ({remote.url}); "
                         f"USE a local vindex for it")
