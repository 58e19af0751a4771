"""BEGIN / SAVE / APPLY / REMOVE PATCH and SHOW PATCHES."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import ast
from ..edit.patch import read_patch, write_patch
from ..errors import ExecutionError, VindexError
from ..result import Result
from ..runtime.view import overlay_of
from . import handler

if TYPE_CHECKING:
    from ..edit.overlay import Overlay


@handler(ast.BeginPatch)
def begin_patch(session, stmt: ast.BeginPatch) -> Result:
    ov = session.edit_overlay()
    path = session.resolve_path(stmt.path).resolve()
    if ov.find(path) is not None:
        raise ExecutionError(f"patch {str(path)!r} is already applied; REMOVE PATCH it first")
    ov.begin(path)
    return Result.msg("BEGIN PATCH", f"recording patch {stmt.path}; run mutations, then SAVE PATCH",
                      path=str(path))


@handler(ast.SavePatch)
def save_patch(session, stmt: ast.SavePatch) -> Result:
    ov = session.edit_overlay()
    patch = ov.recording
    if patch is None:
        raise ExecutionError("no patch is being recorded (BEGIN PATCH \"file.vlp\" or run a "
                             "mutation first)")
    if stmt.path is not None:
        path = session.resolve_path(stmt.path).resolve()
    elif patch.path is not None:
        path = patch.path
    else:
        raise ExecutionError('the auto-patch has no file yet; name one: SAVE PATCH "edits.vlp"')
    other = ov.find(path)
    if other is not None and other is not patch:
        raise ExecutionError(f"patch {str(path)!r} is applied in this session; REMOVE PATCH it "
                             f"before saving over it")
    try:
        write_patch(patch, path)
    except OSError as exc:
        raise ExecutionError(f"cannot write patch {str(path)!r}: {exc.strerror or exc}") from None
    ov.finish_recording(path)
    n = len(patch.operations)
    return Result.msg("SAVE PATCH", f"saved {n} operation{'s' if n != 1 else ''} to {path}",
                      path=str(path), operations=n)


def _validate(patch, base, path: str) -> None:
    hidden = int(base.hidden_size)
    n_layers = int(base.num_layers)
    for i, op in enumerate(patch.operations):
        layer = op.get("layer")
        if layer is not None and not 0 <= int(layer) < n_layers:
            raise VindexError(f"{path}: operation {i} ({op.op}) has layer {layer}, the vindex "
                              f"has layers 0..{n_layers - 1}", path=path)
        if op.feature is not None:
            nf = int(base.num_features(int(layer)))
            if not 0 <= op.feature < nf:
                raise VindexError(f"{path}: operation {i} ({op.op}) has feature {op.feature}, "
                                  f"layer {layer} has {nf} features", path=path)
        for name in ("gate", "up", "down", "key"):
            vec = op.vector(name)
            if vec is not None and vec.shape[0] != hidden:
                raise VindexError(f"{path}: operation {i} ({op.op}) has a {name} vector of "
                                  f"length {vec.shape[0]}, the model's hidden size is {hidden}",
                                  path=path)


@handler(ast.ApplyPatch)
def apply_patch(session, stmt: ast.ApplyPatch) -> Result:
    ov = session.edit_overlay()
    path = session.resolve_path(stmt.path).resolve()
    if ov.find(path) is not None:
        raise ExecutionError(f"patch {stmt.path!r} is already applied")
    patch = read_patch(path)
    if not stmt.force:
        if patch.base_model and ov.base_model and patch.base_model != ov.base_model:
            raise ExecutionError(f"patch {stmt.path!r} was made for {patch.base_model!r}, this "
                                 f"vindex is {ov.base_model!r} (APPLY PATCH ... FORCE to apply "
                                 f"anyway)")
        if patch.base_checksum and ov.base_checksum and patch.base_checksum != ov.base_checksum:
            raise ExecutionError(f"patch {stmt.path!r} was made for a different base vindex "
                                 f"(gate_vectors.bin checksum differs; APPLY PATCH ... FORCE to "
                                 f"apply anyway)")
    _validate(patch, ov.base, str(path))
    ov.apply(patch)
    n = len(patch.operations)
    return Result.msg("APPLY PATCH", f"applied {path.name}: {n} operation{'s' if n != 1 else ''} "
                      f"({_summary(patch)})", path=str(path), operations=n)


@handler(ast.RemovePatch)
def remove_patch(session, stmt: ast.RemovePatch) -> Result:
    ov = session.edit_overlay()
    path = session.resolve_path(stmt.path).resolve()
    patch = ov.find(path)
    if patch is None:
        applied = [p.name for p in ov.stack]
        raise ExecutionError(f"patch {stmt.path!r} is not applied"
                             + (f" (applied: {', '.join(applied)})" if applied else ""))
    ov.remove(patch)
    return Result.msg("REMOVE PATCH", f"removed {path.name} ({len(patch.operations)} operations "
                      f"reverted)", path=str(path))


def _summary(patch) -> str:
    c = patch.counts()
    parts = [f"{v} {k}" for k, v in c.items() if v]
    return ", ".join(parts) if parts else "empty"


@handler(ast.ShowPatches)
def show_patches(session, stmt: ast.ShowPatches) -> Result:
    ov: Overlay | None = session.overlay
    if overlay_of(session.vindex) is not ov:
        ov = None                                   # the session's vindex is not its overlay view
    stack = ov.stack if ov is not None else []
    recording = ov.recording if ov is not None else None
    rows = []
    for i, p in enumerate(stack, 1):
        c = p.counts()
        if p is recording:
            status = "recording" + (" (unsaved)" if p.dirty else "")
        else:
            status = "applied"
        rows.append({"order": i, "patch": p.name, "status": status,
                     "operations": len(p.operations), "inserts": c["insert"] + c["insert_knn"],
                     "updates": c["update"], "deletes": c["delete"] + c["delete_knn"],
                     "base_model": p.base_model})
    msg = None if rows else "no patches applied"
    return Result.table("SHOW PATCHES", ["order", "patch", "status", "operations", "inserts",
                                         "updates", "deletes", "base_model"], rows, message=msg)
