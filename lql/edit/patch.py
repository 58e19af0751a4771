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
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from ..errors import ExecutionError, VindexError

__all__ = ["Patch", "PatchOp", "encode_vector", "decode_vector", "read_patch", "write_patch",
           "OPS", "VECTOR_KEYS", "now_iso", "validate_patch"]

PATCH_VERSION = 1
OPS = ("insert", "update", "delete", "insert_knn", "delete_knn", "memit")
#: what an insert_knn op's key is: the FFN's normed input at the layer (LARQL's), the
#: residual after the layer, the entity's mean embedding (written without weights)
KNN_KEY_KINDS = ("ffn_input", "residual", "embedding")
VECTOR_KEYS = {"gate": "gate_vector_b64", "up": "up_vector_b64", "down": "down_vector_b64",
               "key": "key_vector_b64", "center": "center_vector_b64",
               "alt_keys": "scope_keys_b64", "rivals": "scope_rivals_b64"}
#: the vectors that are matrices (row-major, rows of the hidden size): a scoped KNN fact's
#: keys on its other wordings and its rival wordings' keys (lql/edit/overlay.py: KnnScope)
MATRIX_VECTORS = frozenset({"alt_keys", "rivals"})


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
        check_header(doc, where)
        parsed = []
        for i, o in enumerate(ops):
            if not isinstance(o, dict) or not isinstance(o.get("op"), str):
                raise VindexError(f"{where}: operation {i} has no 'op'", path=where)
            if o["op"] not in OPS:
                raise VindexError(f"{where}: operation {i} has unknown op {o['op']!r} "
                                  f"(known: {', '.join(OPS)})", path=where)
            if o["op"] in ("insert", "update", "delete"):
                if not _is_int(o.get("layer")) or not _is_int(o.get("feature")):
                    raise VindexError(f"{where}: operation {i} ({o['op']}) needs integer "
                                      f"'layer' and 'feature'", path=where)
            if o["op"] == "insert_knn" and ("key_vector_b64" not in o or "layer" not in o):
                raise VindexError(f"{where}: operation {i} (insert_knn) needs 'layer' and "
                                  f"'key_vector_b64'", path=where)
            if o["op"] == "insert_knn" and o.get("key_kind") is not None \
                    and o["key_kind"] not in KNN_KEY_KINDS:
                raise VindexError(f"{where}: operation {i} (insert_knn) has key_kind "
                                  f"{o['key_kind']!r} (known: {', '.join(KNN_KEY_KINDS)})",
                                  path=where)
            check_op_fields(o, f"{where}: operation {i} ({o['op']})", where)
            parsed.append(PatchOp(o))
        return cls(base_model=doc.get("base_model"), base_checksum=doc.get("base_checksum"),
                   created_at=doc.get("created_at") or now_iso(),
                   description=doc.get("description"), author=doc.get("author"),
                   tags=list(doc.get("tags") or []), operations=parsed, version=version,
                   extra={k: v for k, v in doc.items() if k not in known}, path=path)


def read_patch(path: str | os.PathLike) -> Patch:
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size > MAX_PATCH_BYTES:
            raise VindexError(f"patch {str(p)!r} is {p.stat().st_size} bytes (more than "
                              f"{MAX_PATCH_BYTES >> 20} MiB)", path=str(p))
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExecutionError(f"patch file {str(p)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise VindexError(f"patch {str(p)!r} is not valid UTF-8 ({exc.reason} at byte "
                          f"{exc.start})", path=str(p)) from None
    except OSError as exc:
        raise VindexError(f"cannot read patch {str(p)!r}: {exc.strerror or exc}",
                          path=str(p)) from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise VindexError(f"patch {str(p)!r} nests JSON too deeply", path=str(p)) from None
    except json.JSONDecodeError as exc:
        raise VindexError(f"patch {str(p)!r} is not valid JSON (line {exc.lineno}, "
                          f"column {exc.colno}: {exc.msg})", path=str(p)) from None
    return Patch.from_json(doc, path=p.resolve())


def write_patch(patch: Patch, path: str | os.PathLike) -> Path:
    """Write ``patch`` to ``path`` atomically; returns the resolved path."""
    p = Path(path)
    atomic_write_text(p, json.dumps(patch.to_json(), indent=1) + "\n")
    return p.resolve()


# --------------------------------------------------------------------- validation

#: a patch file larger than this is refused before it is read
MAX_PATCH_BYTES = 1 << 30
#: largest |component| of a patch vector: what the vindex's f16 storage can hold
MAX_ABS = 65504.0

_STR_FIELDS = ("entity", "relation", "target", "mode", "prompt", "reason")
_NUM_FIELDS = ("confidence", "alpha", "scale")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _bad(where: str, path: str, message: str) -> VindexError:
    return VindexError(f"{where}: {message}", path=path)


def check_header(doc: dict[str, Any], path: str) -> None:
    """Types of the patch's top-level fields."""
    for key in ("base_model", "base_checksum", "created_at", "description", "author"):
        v = doc.get(key)
        if v is not None and not isinstance(v, str):
            raise _bad(path, path, f"field '{key}' must be a string or null, got {v!r:.60}")
    tags = doc.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise _bad(path, path, f"field 'tags' must be a list of strings, got {tags!r:.60}")


def check_op_fields(o: dict[str, Any], where: str, path: str) -> None:
    """Types of one operation's fields (ranges against a vindex: :func:`validate_patch`)."""
    for key in ("layer", "feature", "target_id"):
        if key in o and o[key] is not None and not _is_int(o[key]):
            raise _bad(where, path, f"field '{key}' must be an integer, got {o[key]!r:.60}")
    for key in _STR_FIELDS:
        if o.get(key) is not None and not isinstance(o[key], str):
            raise _bad(where, path, f"field '{key}' must be a string, got {o[key]!r:.60}")
    for key in _NUM_FIELDS:
        if o.get(key) is not None and not _is_finite(o[key]):
            raise _bad(where, path, f"field '{key}' must be a finite number, got {o[key]!r:.60}")
    for key in VECTOR_KEYS.values():
        if key in o and o[key] is not None and not isinstance(o[key], str):
            raise _bad(where, path, f"field '{key}' must be a base64 string, got "
                                    f"{type(o[key]).__name__}")
    if o.get("subject") is not None and not isinstance(o["subject"], str):
        raise _bad(where, path, f"field 'subject' must be a string, got {o['subject']!r:.60}")
    pre = o.get("prefix_ids")
    if pre is not None and (not isinstance(pre, list) or not all(_is_int(t) for t in pre)):
        raise _bad(where, path, f"field 'prefix_ids' must be a list of token ids, got {pre!r:.60}")
    seq = o.get("target_ids")
    if seq is not None and (not isinstance(seq, list) or not seq
                            or not all(_is_int(t) for t in seq)):
        raise _bad(where, path, f"field 'target_ids' must be a non-empty list of token ids, "
                                f"got {seq!r:.60}")
    dm = o.get("down_meta")
    if dm is not None:
        if not isinstance(dm, dict):
            raise _bad(where, path, f"field 'down_meta' must be an object "
                                    f"{{\"t\", \"i\", \"c\"}}, got {dm!r:.60}")
        if "i" in dm and not _is_int(dm["i"]):
            raise _bad(where, path, f"field 'down_meta.i' must be a token id (integer), got "
                                    f"{dm['i']!r:.60}")
        if "c" in dm and not _is_finite(dm["c"]):
            raise _bad(where, path, f"field 'down_meta.c' must be a finite number, got "
                                    f"{dm['c']!r:.60}")
        if dm.get("t") is not None and not isinstance(dm["t"], str):
            raise _bad(where, path, f"field 'down_meta.t' must be a string, got {dm['t']!r:.60}")


def validate_patch(patch: Patch, base, path: str) -> None:
    """Every operation of ``patch`` against the vindex ``base``: layers and features in
    range, token ids < vocab size, vectors of the hidden size with finite components
    of at most :data:`MAX_ABS`.  Raises :class:`VindexError` naming the operation."""
    hidden = int(base.hidden_size)
    n_layers = int(base.num_layers)
    vocab = int(getattr(base, "vocab_size", 0) or 0)
    for i, op in enumerate(patch.operations):
        where = f"{path}: operation {i} ({op.op})"
        check_op_fields(op.data, where, path)
        layer = op.get("layer")
        if layer is not None and not 0 <= int(layer) < n_layers:
            raise _bad(where, path, f"has layer {layer}, the vindex has layers "
                                    f"0..{n_layers - 1}")
        if op.get("feature") is not None:
            if layer is None:
                raise _bad(where, path, "has a 'feature' but no 'layer'")
            nf = int(base.num_features(int(layer)))
            if not 0 <= int(op.get("feature")) < nf:
                raise _bad(where, path, f"has feature {op.get('feature')}, layer {layer} has "
                                        f"{nf} features")
        tid = op.get("target_id")
        if tid is not None and vocab and not 0 <= tid < vocab:
            raise _bad(where, path, f"has target_id {tid}, the vocabulary has ids "
                                    f"0..{vocab - 1}")
        for t in op.get("target_ids") or []:
            if vocab and not 0 <= int(t) < vocab:
                raise _bad(where, path, f"has target id {t} in target_ids, the vocabulary "
                                        f"has ids 0..{vocab - 1}")
        dm = op.get("down_meta")
        if isinstance(dm, dict) and "i" in dm and vocab and not 0 <= dm["i"] < vocab:
            raise _bad(where, path, f"has down_meta token id {dm['i']}, the vocabulary has "
                                    f"ids 0..{vocab - 1}")
        if op.op == "memit":
            check_memit(op, hidden, int(base.num_features(int(layer or 0))), where, path)
        for name in VECTOR_KEYS:
            vec = op.vector(name)
            if vec is None:
                continue
            if name in MATRIX_VECTORS:
                if vec.shape[0] == 0 or vec.shape[0] % hidden:
                    raise _bad(where, path, f"has a {name} matrix of {vec.shape[0]} values, "
                                            f"not whole rows of the hidden size {hidden}")
            elif vec.shape[0] != hidden:
                raise _bad(where, path, f"has a {name} vector of length {vec.shape[0]}, the "
                                        f"model's hidden size is {hidden}")
            if not np.isfinite(vec).all():
                raise _bad(where, path, f"has a {name} vector with NaN or infinite values")
            if vec.size and float(np.abs(vec).max()) > MAX_ABS:
                raise _bad(where, path, f"has a {name} vector with a component of magnitude "
                                        f"{float(np.abs(vec).max()):g} (at most {MAX_ABS:g})")


def memit_factors(op: PatchOp) -> tuple[np.ndarray, np.ndarray]:
    """A ``memit`` op's low-rank update of the layer's down weights, ``ΔW = U·Vᵀ``:
    ``U`` (hidden × rank) from ``memit_u_b64`` and ``V`` (features × rank) from
    ``memit_v_b64``, both row-major little-endian f32."""
    rank = int(op.get("rank") or 0)
    u = decode_vector(op.get("memit_u_b64") or "", where="memit_u_b64")
    v = decode_vector(op.get("memit_v_b64") or "", where="memit_v_b64")
    if rank <= 0 or u.size % rank or v.size % rank:
        raise ExecutionError(f"memit operation with rank {rank} and factors of {u.size} / "
                             f"{v.size} values")
    return u.reshape(-1, rank), v.reshape(-1, rank)


def check_memit(op: PatchOp, hidden: int, features: int, where: str, path: str) -> None:
    if op.get("layer") is None:
        raise _bad(where, path, "a memit operation needs a 'layer'")
    try:
        u, v = memit_factors(op)
    except (ExecutionError, VindexError) as exc:
        raise _bad(where, path, str(exc)) from None
    if u.shape[0] != hidden or v.shape[0] != features:
        raise _bad(where, path, f"memit factors {u.shape} / {v.shape} do not fit hidden "
                                f"{hidden} × features {features}")
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise _bad(where, path, "memit factors with NaN or infinite values")
