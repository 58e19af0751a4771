"""A vindex's ``knn_store.bin`` (LARQL's KNN facts) as overlay entries, and back.

* :func:`store_patch` — the facts of a vindex's ``knn_store.bin`` as an in-memory
  :class:`~lql.edit.patch.Patch` of ``insert_knn`` ops (USE applies it, as LARQL's USE
  loads the store into its session: executor/lifecycle/use_cmd.rs:66-73).  A key with no
  ``key_kind`` in its metadata is LARQL's: the FFN input at the layer.
* :func:`stored_facts` — an overlay's KNN entries as :class:`~lql.vindex.knn_store.StoredFact`
  records (COMPILE INTO VINDEX writes them, as LARQL's does: compile/into_vindex.rs:355-358).
  What LARQL's format has no field for (this tool's ``key_kind``, ``threshold``,
  ``center``, a chat-form key's ``prompt_form``, an other-wording key's
  ``paraphrase``, the ``subject`` a key is scoped to and a scoped fact's ``scope``:
  its target ids and its other keys and rival keys as base64 f32) goes into each entry's JSON
  metadata, which LARQL reads as a free-form value and ignores
  (patch/knn_store_io.rs:136).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..vindex.knn_store import FILE, KEY_KIND, StoredFact, read_knn_store
from .patch import Patch, PatchOp, decode_vector, encode_vector

__all__ = ["STORE_PATCH", "store_patch", "stored_facts"]

#: the name the store's facts carry in the session's patch stack
STORE_PATCH = FILE


def store_patch(vindex: Any) -> Patch | None:
    """``vindex``'s ``knn_store.bin`` as a patch, or ``None`` when it has none.  A malformed
    store is a :class:`~lql.errors.VindexError` naming the file."""
    path = Path(vindex.path) / FILE
    if not path.is_file():
        return None
    ops = []
    for f in read_knn_store(path):
        extra = dict(f.extra)
        vectors: dict[str, np.ndarray] = {"key": f.key}
        center = extra.pop("center_vector_b64", None)
        if isinstance(center, str):
            vectors["center"] = decode_vector(center)
        fields: dict[str, Any] = {"layer": f.layer, "entity": f.entity, "relation": f.relation,
                                  "target": f.target_token, "target_id": f.target_id,
                                  "confidence": f.confidence,
                                  "key_kind": str(extra.pop("key_kind", KEY_KIND))}
        if isinstance(extra.get("threshold"), (int, float)):
            fields["threshold"] = float(extra.pop("threshold"))
        if extra.get("prompt_form") == "chat":
            fields["prompt_form"] = "chat"
        if extra.get("paraphrase") is True:
            fields["paraphrase"] = True
        if isinstance(extra.get("subject"), str) and extra["subject"]:
            fields["subject"] = extra["subject"]
        if isinstance(extra.get("prefix_ids"), list) and extra["prefix_ids"]:
            fields["prefix_ids"] = extra["prefix_ids"]
        scope = extra.get("scope")
        if isinstance(scope, dict) and isinstance(scope.get("target_ids"), list):
            fields["scope"] = True
            fields["target_ids"] = [int(t) for t in scope["target_ids"]]
            for name, key in (("alt_keys", "keys_b64"), ("rivals", "rivals_b64")):
                if isinstance(scope.get(key), str):
                    vectors[name] = decode_vector(scope[key])
        ops.append(PatchOp.make("insert_knn", vectors=vectors, **fields))
    return Patch(base_model=getattr(vindex, "model", None), description=f"{FILE} of the vindex",
                 operations=ops, path=path)


def stored_facts(entries: list[Any]) -> list[StoredFact]:
    """Overlay KNN entries (:class:`lql.edit.overlay.KnnEntry`) as knn_store records."""
    out = []
    for e in entries:
        extra: dict[str, Any] = {}
        if e.key_kind != KEY_KIND:
            extra["key_kind"] = e.key_kind
        if e.threshold is not None:
            extra["threshold"] = float(e.threshold)
        if getattr(e, "prompt_form", "raw") != "raw":
            extra["prompt_form"] = e.prompt_form
        if getattr(e, "paraphrase", False):
            extra["paraphrase"] = True
        if getattr(e, "subject", ""):
            extra["subject"] = e.subject
        if getattr(e, "prefix_ids", ()):
            extra["prefix_ids"] = [int(t) for t in e.prefix_ids]
        sc = getattr(e, "scope", None)
        if sc is not None:
            extra["scope"] = {"target_ids": [int(t) for t in sc.target_ids],
                              **({"keys_b64": encode_vector(sc.keys)} if len(sc.keys) else {}),
                              **({"rivals_b64": encode_vector(sc.rivals)} if len(sc.rivals)
                                 else {})}
        if e.center is not None:
            extra["center_vector_b64"] = encode_vector(np.asarray(e.center, np.float32))
        out.append(StoredFact(layer=int(e.layer), key=np.asarray(e.key, np.float32),
                              target_id=int(e.target_id), target_token=e.target,
                              entity=e.entity, relation=e.relation,
                              confidence=float(e.confidence), extra=extra))
    return out
