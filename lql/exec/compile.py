"""COMPILE and DIFF handlers (machinery in lql/edit/compile.py and lql/edit/diff.py)."""

from __future__ import annotations

from typing import Any

from .. import ast
from ..edit.patch import Patch, write_patch
from ..errors import ExecutionError, NoVindexError
from ..result import Result
from . import handler


def _current(session):
    v = session.vindex
    if v is None:
        raise NoVindexError()
    return v


def _open(session, path):
    from ..vindex import open_vindex
    return open_vindex(session.resolve_path(path))


@handler(ast.Compile)
def compile_(session, stmt: ast.Compile) -> Result:
    from ..edit.compile import compile_model, compile_vindex
    view = _current(session) if stmt.source is None else _open(session, stmt.source)
    out = session.resolve_path(stmt.output)
    if stmt.target == ast.CompileTarget.VINDEX:
        info = compile_vindex(view, out, force=stmt.force,
                              on_conflict=stmt.on_conflict.value if stmt.on_conflict else None)
        what = "vindex"
    else:
        fmt = (stmt.format or ast.ModelFormat.SAFETENSORS).value
        info = compile_model(view, out, format=fmt, force=stmt.force)
        what = f"{fmt.lower()} model"
    msg = f"compiled {what} {out} ({info['edited_features']} edited features baked in)"
    if info.get("knn_facts"):
        msg += f"; {info['knn_facts']} KNN facts written to knn_store.bin (USE loads them)"
    if info.get("knn_left_out"):
        msg += (f"; {info['knn_left_out']} KNN entries are not weights and were left out "
                f"(keep their patch and APPLY it, or COMPACT MINOR first: it moves KNN facts "
                f"into FFN features, which COMPILE bakes in — their canonical wording, not "
                f"the held-out ones, docs/EDITING.md)")
    return Result.msg("COMPILE", msg, **info)


@handler(ast.Diff)
def diff(session, stmt: ast.Diff) -> Result:
    from ..edit.diff import diff_features, diff_ops
    a = _open(session, stmt.a)
    b = _current(session) if stmt.b is None else _open(session, stmt.b)
    diffs = diff_features(a, b, layer=stmt.layer)
    if stmt.relation is not None:
        labels = getattr(b, "feature_labels", None) or {}
        la = getattr(a, "feature_labels", None) or {}
        want = stmt.relation.lower()
        diffs = [d for d in diffs if str(labels.get((d.layer, d.feature), "")).lower() == want
                 or str(la.get((d.layer, d.feature), "")).lower() == want]
    if stmt.limit is not None and stmt.limit < 0:
        raise ExecutionError("LIMIT must be >= 0")
    shown = diffs if stmt.limit is None else diffs[:stmt.limit]

    def tok(v, t):
        return None if t is None else v.token_text(t)
    rows = [{"layer": d.layer, "feature": d.feature, "change": d.change,
             "fields": ", ".join(d.fields),
             "gate_cosine": None if d.gate_cosine is None else round(d.gate_cosine, 4),
             "a_top_token": tok(a, d.a_top), "b_top_token": tok(b, d.b_top)} for d in shown]
    meta: dict[str, Any] = {"total": len(diffs)}
    msg = f"{len(diffs)} feature{'s' if len(diffs) != 1 else ''} differ"
    if stmt.into_patch is not None:
        ops = diff_ops(b, diffs)
        ov = getattr(b, "overlay", None)
        if ov is not None and stmt.layer is None and stmt.relation is None:
            from ..edit.overlay import knn_entry_op
            ops.extend(knn_entry_op(k) for k in ov.knn)
        patch = Patch(base_model=a.model,
                      base_checksum=(a.index.get("checksums") or {}).get("gate_vectors.bin"),
                      description=stmt.to_lql(), operations=ops)
        path = write_patch(patch, session.resolve_path(stmt.into_patch))
        meta["patch"] = str(path)
        msg += f"; wrote {len(ops)} operations to {path}"
    return Result.table("DIFF", ["layer", "feature", "change", "fields", "gate_cosine",
                                 "a_top_token", "b_top_token"], rows, message=msg, **meta)
