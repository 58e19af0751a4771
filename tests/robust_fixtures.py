"""Broken copies of a small real vindex for the robustness tests (hard links; changed files rewritten)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def base_vindex() -> Path:
    from vindex_fixtures import tiny_vindex
    return tiny_vindex("llama", "all", "f32")


def broken_copy(dst: Path, base: Path, index: Callable[[dict], object] | None = None,
                files: dict[str, bytes | None] | None = None) -> Path:
    """``base`` linked into ``dst``; ``index(ix)`` edits index.json; ``files`` replaces
    (bytes) or removes (None) files.  Never writes through a link."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for p in base.iterdir():
        try:
            os.link(p, dst / p.name)
        except OSError:
            shutil.copy2(p, dst / p.name)
    if index is not None:
        ix = json.loads((base / "index.json").read_text())
        index(ix)
        (dst / "index.json").unlink()
        (dst / "index.json").write_text(json.dumps(ix))
    for name, data in (files or {}).items():
        (dst / name).unlink(missing_ok=True)
        if data is not None:
            (dst / name).write_bytes(data)
    return dst


def vec(n: int, value: float = 0.01) -> str:
    return base64.b64encode(np.full(n, value, "<f4").tobytes()).decode()


def write_patch(path: Path, ops: list, **top) -> Path:
    path.write_text(json.dumps({"version": 1, **top, "operations": ops}))
    return path
