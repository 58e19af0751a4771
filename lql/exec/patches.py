"""BEGIN / SAVE / APPLY / REMOVE PATCH and SHOW PATCHES."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import ast
from ..edit.patch import read_patch, validate_patch, write_patch
from ..errors import ExecutionError
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
    _check_save_target(session, path, patch)
    try:
        write_patch(patch, path)
    except OSError as exc:
        raise ExecutionError(f"cannot write patch {str(path)!r}: {exc.strerror or exc}") from None
    ov.finish_recording(path)
    n = len(patch.operations)
    return Result.msg("SAVE PATCH", f"saved {n} operation{'s' if n != 1 else ''} to {path}",
                      path=str(path), operations=n)


def _is_patch_file(path: Path) -> bool:
    """An existing file that reads as a patch (a JSON object with an 'operations' list)."""
    try:
        if path.stat().st_size > 1 << 30:
            return False
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("operations"), list)


def _check_save_target(session, path: Path, patch) -> None:
    """SAVE PATCH writes a new file or over an existing ``.vlp`` patch (a file that reads
    as one); never over another file (BEGIN PATCH "notes.txt" included), never inside a
    vindex folder.  SAVE PATCH has no FORCE."""
    vindex_dir = session.vindex.path if session.vindex is not None else None
    base = session.base_vindex.path if session.base_vindex is not None else None
    for folder in (vindex_dir, base):
        if folder is not None and (Path(folder).resolve() in path.parents):
            raise ExecutionError(f"refusing to write patch {str(path)!r} inside the vindex "
                                 f"{str(folder)!r}; save it elsewhere")
    if (path.parent / "index.json").is_file():
        raise ExecutionError(f"refusing to write patch {str(path)!r} inside a vindex folder "
                             f"({path.parent}); save it elsewhere")
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir():
        raise ExecutionError(f"cannot write patch {str(path)!r}: it is a directory")
    if path.suffix != ".vlp" or not _is_patch_file(path):
        raise ExecutionError(f"refusing to overwrite {str(path)!r}: it exists and is not a "
                             f".vlp patch (delete it or choose another name)")


def _validate(patch, base, path: str) -> None:
    validate_patch(patch, base, path)


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
