"""``.vlp`` patches: reading, writing and the operation records they hold.

A patch is a JSON document (format in ``vindex-format.md``)::

    {"version": 1, "base_model": ..., "base_checksum": ..., "created_at": ...,
     "description": null, "author": null, "tags": [], "operations": [ ... ]}

Vectors travel as base64 of little-endian f32 arrays under ``*_b64`` keys
(``gate_vector_b64``, ``up_vector_b64``, ``down_vector_b64``,
``key_vector_b64``).  Unknown keys -- top level and per operation -- are kept
verbatim, so reading and re-writing a patch written by another tool loses
nothing.  Writing is atomic (temporary file + fsync + rename).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from ..errors import ExecutionError, VindexError

__all__ = ["Patch", "PatchOp", "encode_vector", "decode_vector", "read_patch", "write_patch",
           "OPS", "VECTOR_KEYS", "now_iso"]

PATCH_VERSION = 1
OPS = ("insert", "update", "delete", "insert_knn", "delete_knn")
VECTOR_KEYS = {"gate": "gate_vector_b64", "up": "up_vector_b64", "down": "down_vector_b64",
               "key": "key_vector_b64", "center": "center_vector_b64"}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_vector(vec) -> str:
    """base64 of the little-endian f32 bytes of ``vec`` (1-D)."""
    arr = np.ascontiguousarray(np.asarray(vec, dtype="<f4").reshape(-1))
    return base64.b64encode(arr.tobytes()).decode("ascii")


def decode_vector(text: str, *, where: str = "patch") -> np.ndarray:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, AttributeError) as exc:
        raise VindexError(f"{where}: invalid base64 vector ({exc})", path=where) from None
    if len(raw) % 4:
        raise VindexError(f"{where}: vector of {len(raw)} bytes is not a whole number of f32",
                          path=where)
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


class PatchOp:
    """One operation: its JSON dict (kept verbatim) plus decoded-vector caching."""

    __slots__ = ("data", "_vectors")

    def __init__(self, data: dict[str, Any]):
        self.data = data
        self._vectors: dict[str, np.ndarray | None] = {}

    @classmethod
    def make(cls, op: str, *, vectors: dict[str, np.ndarray] | None = None, **fields) -> PatchOp:
        data: dict[str, Any] = {"op": op}
        for k, v in fields.items():
            if v is not None:
                data[k] = v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v
        self = cls(data)
        for name, vec in (vectors or {}).items():
            self.set_vector(name, vec)
        return self

    @property
    def op(self) -> str:
        return self.data.get("op", "")

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    @property
    def layer(self) -> int | None:
        v = self.data.get("layer")
        return int(v) if v is not None else None

    @property
    def feature(self) -> int | None:
        v = self.data.get("feature")
        return int(v) if v is not None else None

    def vector(self, name: str) -> np.ndarray | None:
        """Decoded ``gate`` / ``up`` / ``down`` / ``key`` vector, or ``None``."""
        if name not in self._vectors:
            text = self.data.get(VECTOR_KEYS[name])
            self._vectors[name] = None if text is None else decode_vector(
                text, where=f"{self.op} operation ({VECTOR_KEYS[name]})")
        return self._vectors[name]

    def set_vector(self, name: str, vec) -> None:
        arr = np.asarray(vec, dtype=np.float32).reshape(-1).copy()
        self.data[VECTOR_KEYS[name]] = encode_vector(arr)
        self._vectors[name] = arr

    def copy(self) -> PatchOp:
        return PatchOp(json.loads(json.dumps(self.data)))

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.data.items() if not k.endswith("_b64")}
        return f"PatchOp({shown})"


@dataclass
class Patch:
    """A patch in memory: header fields, operations, and where it lives."""
    base_model: str | None = None
    base_checksum: str | None = None
    created_at: str = field(default_factory=now_iso)
    description: str | None = None
    author: str | None = None
    tags: list = field(default_factory=list)
    operations: list[PatchOp] = field(default_factory=list)
    version: int = PATCH_VERSION
    extra: dict[str, Any] = field(default_factory=dict)   # unknown top-level keys
    path: Path | None = None                              # None: not saved anywhere yet
    dirty: bool = False                                   # operations not written to ``path``

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "(unsaved auto-patch)"

    def counts(self) -> dict[str, int]:
        out = {op: 0 for op in OPS}
        for o in self.operations:
            out[o.op] = out.get(o.op, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"version": self.version, "base_model": self.base_model,
                               "base_checksum": self.base_checksum,
                               "created_at": self.created_at, "description": self.description,
                               "author": self.author, "tags": list(self.tags)}
        for k, v in self.extra.items():
            doc.setdefault(k, v)
        doc["operations"] = [o.data for o in self.operations]
        return doc

    @classmethod
    def from_json(cls, doc: Any, *, path: Path | None = None) -> Patch:
        where = str(path) if path else "patch"
        if not isinstance(doc, dict):
            raise VindexError(f"{where}: a patch must be a JSON object", path=where)
        ops = doc.get("operations", [])
        if not isinstance(ops, list):
            raise VindexError(f"{where}: 'operations' must be a list", path=where)
        known = {"version", "base_model", "base_checksum", "created_at", "description",
                 "author", "tags", "operations"}
        version = doc.get("version", PATCH_VERSION)
        if not isinstance(version, int) or version > PATCH_VERSION:
            raise VindexError(f"{where}: unsupported patch version {version!r} "
                              f"(this tool reads version {PATCH_VERSION})", path=where)
        parsed = []
        for i, o in enumerate(ops):
            if not isinstance(o, dict) or not isinstance(o.get("op"), str):
                raise VindexError(f"{where}: operation {i} has no 'op'", path=where)
            if o["op"] not in OPS:
                raise VindexError(f"{where}: operation {i} has unknown op {o['op']!r} "
                                  f"(known: {', '.join(OPS)})", path=where)
            if o["op"] in ("insert", "update", "delete"):
                if not isinstance(o.get("layer"), int) or not isinstance(o.get("feature"), int):
                    raise VindexError(f"{where}: operation {i} ({o['op']}) needs integer "
                                      f"'layer' and 'feature'", path=where)
            if o["op"] == "insert_knn" and ("key_vector_b64" not in o or "layer" not in o):
                raise VindexError(f"{where}: operation {i} (insert_knn) needs 'layer' and "
                                  f"'key_vector_b64'", path=where)
            parsed.append(PatchOp(o))
        return cls(base_model=doc.get("base_model"), base_checksum=doc.get("base_checksum"),
                   created_at=doc.get("created_at") or now_iso(),
                   description=doc.get("description"), author=doc.get("author"),
                   tags=list(doc.get("tags") or []), operations=parsed, version=version,
                   extra={k: v for k, v in doc.items() if k not in known}, path=path)


def read_patch(path: str | os.PathLike) -> Patch:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExecutionError(f"patch file {str(p)!r} does not exist") from None
    except OSError as exc:
        raise VindexError(f"cannot read patch {str(p)!r}: {exc.strerror or exc}",
                          path=str(p)) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VindexError(f"patch {str(p)!r} is not valid JSON (line {exc.lineno}, "
                          f"column {exc.colno}: {exc.msg})", path=str(p)) from None
    return Patch.from_json(doc, path=p.resolve())


def write_patch(patch: Patch, path: str | os.PathLike) -> Path:
    """Write ``patch`` to ``path`` atomically; returns the resolved path."""
    p = Path(path)
    atomic_write_text(p, json.dumps(patch.to_json(), indent=1) + "\n")
    return p.resolve()
