"""LARQL's ``knn_store.bin``: the KNN facts a vindex carries (read and written here).

Format (Divinci-AI/larql at 4f6dfb4, crates/larql-vindex/src/patch/knn_store_io.rs),
little-endian: ``b"LKNN"``, version ``1`` (u32), key dimension (u32), layer count (u32);
per layer: layer id (u32), entry count n (u32), the n keys (n × dim f16), the n target
token ids (u32 each), then per entry a u32 length and that many bytes of JSON
``{"target_token", "entity", "relation", "confidence"}`` (LARQL parses it as a free-form
JSON value, so further fields -- ours: ``key_kind``, ``threshold``, ``center_vector_b64`` --
are kept here and ignored there).

LARQL writes it in COMPILE INTO VINDEX and loads it at USE.  What a key *is* is not in
the file: LARQL's key is the FFN input at the install layer (``KnnStore::add`` in
knn_store.rs, called by the INSERT executor); :data:`KEY_KIND` names it for our side.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VindexError

FILE = "knn_store.bin"
MAGIC = b"LKNN"
VERSION = 1
#: the vector LARQL stores as a KNN key (what a patch op's ``key_kind`` says)
KEY_KIND = "ffn_input"


#: the metadata fields LARQL writes (knn_store_io.rs:69-74); others (``extra``) follow them
_LARQL_META = ("target_token", "entity", "relation", "confidence")


@dataclass
class StoredFact:
    layer: int
    key: np.ndarray                      # (dim,) f32 (stored as f16)
    target_id: int
    target_token: str = ""
    entity: str = ""
    relation: str = ""
    confidence: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


def read_knn_store(path: str | Path) -> list[StoredFact]:
    """Every fact of a ``knn_store.bin``, in file order.  A malformed file is a
    :class:`VindexError` naming it and the first thing wrong."""
    path = Path(path)
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise VindexError(f"{where}: cannot read ({e.strerror or e})", path=where) from None
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise VindexError(f"{where}: truncated ({len(data)} bytes; {what} needs bytes "
                              f"{pos}..{pos + n})", path=where)
        out = data[pos:pos + n]
        pos += n
        return out

    if take(4, "the magic") != MAGIC:
        raise VindexError(f"{where}: not a knn_store.bin (magic is not LKNN)", path=where)
    version, dim, n_layers = struct.unpack("<III", take(12, "the header"))
    if version != VERSION:
        raise VindexError(f"{where}: knn_store version {version}, this reader knows {VERSION}",
                          path=where)
    facts: list[StoredFact] = []
    for _ in range(n_layers):
        layer, n = struct.unpack("<II", take(8, "a layer header"))
        keys = np.frombuffer(take(n * dim * 2, f"layer {layer}'s keys"), dtype="<f2")
        keys = keys.reshape(n, dim).astype(np.float32)
        ids = np.frombuffer(take(n * 4, f"layer {layer}'s target ids"), dtype="<u4")
        for i in range(n):
            (size,) = struct.unpack("<I", take(4, "an entry's metadata length"))
            raw = take(size, "an entry's metadata")
            try:
                meta = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise VindexError(f"{where}: layer {layer} entry {i}: metadata is not JSON "
                                  f"({e})", path=where) from None
            if not isinstance(meta, dict):
                raise VindexError(f"{where}: layer {layer} entry {i}: metadata is not a JSON "
                                  f"object", path=where)
            if not np.isfinite(keys[i]).all():
                raise VindexError(f"{where}: layer {layer} entry {i}: key is not finite",
                                  path=where)
            conf = meta.get("confidence", 1.0)
            facts.append(StoredFact(
                layer=int(layer), key=keys[i].copy(), target_id=int(ids[i]),
                target_token=str(meta.get("target_token") or ""),
                entity=str(meta.get("entity") or ""), relation=str(meta.get("relation") or ""),
                confidence=float(conf) if isinstance(conf, (int, float)) else 1.0,
                extra={k: v for k, v in meta.items()
                       if k not in ("target_token", "entity", "relation", "confidence")}))
    if pos != len(data):
        raise VindexError(f"{where}: {len(data) - pos} bytes after the last layer", path=where)
    return facts


def encode_knn_store(facts: Iterable[StoredFact]) -> bytes:
    """The bytes of a ``knn_store.bin`` holding ``facts`` (grouped by layer, in order)."""
    facts = list(facts)
    dims = {int(np.asarray(f.key).size) for f in facts}
    if len(dims) > 1:
        raise ValueError(f"KNN keys of different sizes {sorted(dims)}")
    dim = dims.pop() if dims else 0
    layers: dict[int, list[StoredFact]] = {}
    for f in facts:
        layers.setdefault(int(f.layer), []).append(f)
    out = [MAGIC, struct.pack("<III", VERSION, dim, len(layers))]
    for layer, group in layers.items():
        out.append(struct.pack("<II", layer, len(group)))
        keys = np.stack([np.asarray(f.key, dtype=np.float32) for f in group])
        with np.errstate(over="ignore"):
            fits = bool(np.isfinite(keys.astype(np.float16)).all())
        if not fits:
            raise ValueError(f"layer {layer}: a KNN key does not fit f16")
        out.append(keys.astype("<f2").tobytes())
        out.append(np.asarray([f.target_id for f in group], dtype="<u4").tobytes())
        for f in group:
            meta = json.dumps({"target_token": f.target_token, "entity": f.entity,
                               "relation": f.relation, "confidence": f.confidence,
                               **{k: v for k, v in f.extra.items() if k not in _LARQL_META}},
                              ensure_ascii=False).encode("utf-8")
            out.append(struct.pack("<I", len(meta)) + meta)
    return b"".join(out)


def write_knn_store(path: str | Path, facts: Iterable[StoredFact]) -> Path:
    """Write ``facts`` to ``path`` atomically (temp + rename)."""
    from ..atomic import atomic_write_bytes
    path = Path(path)
    atomic_write_bytes(path, encode_knn_store(facts))
    return path
