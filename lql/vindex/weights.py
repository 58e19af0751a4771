"""``v.weights``: the model's tensors as a read-only Mapping over the vindex files.

Keys are Hugging Face names without ``model.`` / ``transformer.``.  Tensors in
the split weight files come from ``weight_manifest.json`` (those in
``lql.families.RAW_FILES`` — the per-layer embeddings — in their storage dtype,
memory-mapped; all others as f32); the embedding key
resolves to ``embeddings.bin`` and each layer's gate key to its rows in
``gate_vectors.bin`` (transposed back when the family stores the FFN input
projection as hidden × features, like GPT-2's Conv1D ``c_fc``).  The names come
from index.json ``weight_keys``, else from the vindex's family.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MissingTensorError, VindexError
from ..families import RAW_FILES, family_or_default

if TYPE_CHECKING:
    from .reader import Vindex


class VindexWeights(Mapping[str, np.ndarray]):
    """Lazy, read-only view of every stored tensor; values are f32 ndarrays."""

    def __init__(self, vindex: Vindex, manifest: list[dict[str, Any]] | None):
        # a proxy, not the vindex: no Vindex <-> weights cycle, so dropping the last
        # reference to a vindex frees it (and its memory maps) at once, without the GC
        self._v: Vindex = weakref.proxy(vindex)
        keys = vindex.index.get("weight_keys") or {}
        # an index.json without weight_keys: the names its family gives them
        fam = family_or_default(getattr(vindex, "family", None))
        self._embed_keys = (keys.get("embed") or fam.embed_key,)
        self._gate_pattern = keys.get("gate") or fam.gate_key_pattern()
        self._gate_transposed = bool(keys.get("gate_transposed", fam.gate_is_transposed()))
        self._gate_keys = {self._gate_pattern.format(layer=layer): layer
                           for layer in vindex.layers}
        self._entries: dict[str, dict[str, Any]] = {}
        for entry in manifest or ():
            self._entries[entry["key"]] = entry
        # LARQL's down_features.bin (feature-major down): each layer's down key, when the
        # manifest does not store it
        self._down_keys = {fam.down_key(layer): layer for layer in vindex.layers
                           if fam.down_key(layer) not in self._entries} \
            if getattr(vindex, "has_down_features", lambda: False)() else {}
        src = (getattr(vindex, "source", None) or {}).get("path") or "<model folder or .gguf>"
        #: what a model builder says when a tensor it needs is not here
        self.where = (f'vindex {vindex.path}; re-run EXTRACT MODEL "{src}" INTO "{vindex.path}" '
                      f"WITH {'ALL' if vindex.level == 'all' else 'INFERENCE'} FORCE")

    # ---- Mapping
    def __getitem__(self, key: str) -> np.ndarray:
        if key in self._entries:
            entry = self._entries[key]
            if entry["file"] in RAW_FILES and entry_dtype(entry) in STORAGE:
                # storage dtype, memory-mapped (gathered per row)
                return self._v._view(entry["file"], entry["offset"], entry["length"],
                                     tuple(entry["shape"]), STORAGE[entry_dtype(entry)])
            return self._v._tensor(entry)
        if key in self._embed_keys:
            return self._v._embeddings_f32()
        layer = self._gate_keys.get(key)
        if layer is not None:
            gate = self._v.gate(layer)
            return gate.T if self._gate_transposed else gate
        layer = self._down_keys.get(key)
        if layer is not None:               # (hidden, features), as the model stores it
            return self._v.down_features(layer).T
        level = self._v.level
        hint = "" if level != "browse" else " (extracted WITH BROWSE; re-extract WITH INFERENCE)"
        raise MissingTensorError([key], where=f"vindex {self._v.path}{hint}")

    def __contains__(self, key: object) -> bool:
        return (key in self._entries or key in self._embed_keys or key in self._gate_keys
                or key in self._down_keys)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for key in (*self._embed_keys[:1], *self._gate_keys, *self._entries, *self._down_keys):
            if key not in seen:
                seen.add(key)
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # ---- extras
    def raw(self, key: str) -> np.ndarray:
        """The stored words of ``key``, memory-mapped, no copy: ``<f4``/``<f2``, or bfloat16
        as ``<u2`` (convert with :func:`bf16_to_f32`).  What a layer builder casts from."""
        if key in self._entries:
            entry = self._entries[key]
            store = entry_dtype(entry)
            if store == "bf16":
                dtype = np.dtype("<u2")
            elif store in STORAGE:
                dtype = STORAGE[store]
            elif store in ("q4_k", "q6_k"):       # LARQL's blocks: decoded (lql.vindex.kquant)
                return self._v._tensor(entry)
            else:
                raise refuse_kind(entry, str(self._v.path))
            return self._v._view(entry["file"], entry["offset"], entry["length"],
                                 tuple(entry["shape"]), dtype)
        if key in self._embed_keys:
            return self._v.embeddings_raw
        layer = self._gate_keys.get(key)
        if layer is not None:
            gate = self._v.gate_raw(layer)
            return gate.T if self._gate_transposed else gate
        return self[key]                           # raises the missing-tensor error

    def release(self, key: str) -> None:
        """Tell the OS this process is done with ``key``'s mapped pages (they stay in the
        page cache, but leave this process's resident set): after a layer is cast."""
        span = self._span(key)
        if span is not None:
            self._v._release(*span)

    def _span(self, key: str) -> tuple[str, int, int] | None:
        if key in self._entries:
            e = self._entries[key]
            return e["file"], int(e["offset"]), int(e["length"])
        if key in self._embed_keys:
            raw = self._v.embeddings_raw
            return "embeddings.bin", 0, int(raw.nbytes)
        layer = self._gate_keys.get(key)
        if layer is not None and self._v.has_layer(layer):
            e = self._v._layer_entry(layer)
            return "gate_vectors.bin", int(e["offset"]), int(e["length"])
        return None

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._entries:
            return tuple(self._entries[key]["shape"])
        if key in self._embed_keys:
            return (self._v.vocab_size, self._v.hidden_size)
        layer = self._gate_keys.get(key)
        if layer is not None:
            shape = (self._v.num_features(layer), self._v.hidden_size)
            return shape[::-1] if self._gate_transposed else shape
        layer = self._down_keys.get(key)
        if layer is not None:
            return (self._v.hidden_size, self._v.num_features(layer))
        raise MissingTensorError([key], where=f"vindex {self._v.path}")

    def gate_key(self, layer: int) -> str:
        """The model key of ``layer``'s FFN gate (input) projection."""
        return self._gate_pattern.format(layer=layer)

    def entry(self, key: str) -> dict[str, Any] | None:
        """The manifest entry of a key stored in a split weight file (else ``None``)."""
        return self._entries.get(key)

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [k for k in keys if k not in self]


#: numpy dtypes of the float storages a manifest entry may have
STORAGE: dict[str, np.dtype] = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2")}
#: manifest kinds read here, with the storage each implies (``None``: by byte length)
#: -- LARQL's crates/larql-vindex/src/format/weights/load.rs:214-241 (tensor, vector: dtype
#: from length ÷ shape) and 431-502 (vector, tensor_f16, packed_bf16, tensor_q4k);
#: written by write.rs:281/296 (tensor, vector), 942 (tensor_f16), 760/776 (packed_bf16)
KINDS: dict[str, str | None] = {"tensor": None, "vector": None, "tensor_f16": "f16",
                                "packed_bf16": "bf16"}
#: kinds recognised but not readable here (none at present: ``tensor_q4k``, LARQL's Q4_K
#: lm_head of write.rs:1007, is decoded by lql.vindex.kquant)
REFUSED_KINDS: dict[str, str] = {}


def entry_dtype(entry: dict[str, Any]) -> str:
    """The storage of one validated manifest entry: ``f32``, ``f16``, ``bf16``, or LARQL's
    block formats ``q4_k`` / ``q6_k`` (lql.vindex.kquant)."""
    return str(entry.get("_dtype", "f32"))


def bf16_to_f32(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32: the top half of an f32.  One vectorised
    pass (a widening shift); ``out`` (float32, ``raw``'s shape) receives it when given."""
    words = np.asarray(raw, dtype="<u2")
    if out is None:
        out = np.empty(words.shape, dtype=np.float32)
    wide = out.view(np.uint32)
    np.copyto(wide, words)                # widen, then shift in place (faster than a casting shift)
    np.left_shift(wide, 16, out=wide)
    return out


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounding to nearest even (as torch does);
    NaN stays a (quiet) NaN.  Exact for values that already are bfloat16 (a bf16 checkpoint
    read as f32), so such a checkpoint round-trips bit for bit."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(u.view(np.float32))
    if nan.any():
        out[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return out


def refuse_kind(entry: dict[str, Any], where: str) -> MissingTensorError | VindexError:
    kind = entry.get("kind")
    why = REFUSED_KINDS.get(str(kind), "a kind this reader does not know")
    return VindexError(f"{where}: tensor {entry['key']} has manifest kind {kind!r} ({why})",
                       path=where)


def validate_manifest(manifest: Any, path: str, itemsize: int,
                      file_sizes: dict[str, int | None],
                      index_dtype: str | None = None) -> list[dict[str, Any]]:
    """Check each entry's fields (types, ranges), its length against its shape and its
    file's size.  Errors name the manifest or the weight file with its folder.

    Each entry's storage comes from its own ``kind`` and byte length, as LARQL's reader
    does (``length == n × 4`` → f32, ``n × 2`` → f16; ``tensor_f16`` is f16,
    ``packed_bf16`` bf16), not from index.json's ``dtype`` (LARQL writes norms f32 in f16
    vindexes).  It is recorded under the entry's ``_dtype`` (the returned entries are
    copies).  An entry of a kind that cannot be read here (unknown kinds)
    gets ``_dtype`` ``"refused"`` and raises only when asked for.  ``itemsize`` is the
    index dtype's, preferred when a length fits both (an empty tensor); in a vindex whose
    ``index_dtype`` is ``bf16`` the 2-byte entries are bfloat16."""
    import math
    from pathlib import Path

    from .validate import _MANIFEST_RULES, check_fields
    if not isinstance(manifest, list):
        raise VindexError(f"{path}: expected a JSON array of tensor entries", path=path)
    folder = Path(path).parent
    out: list[dict[str, Any]] = []
    for i, e in enumerate(manifest):
        if not isinstance(e, dict) or not {"key", "shape", "offset", "length", "file"} <= e.keys():
            raise VindexError(f"{path}: entry {i} lacks key/shape/offset/length/file", path=path)
        check_fields(e, _MANIFEST_RULES, path, f"[{i}].")
        e = dict(e)
        kind = e.get("kind", "tensor")
        n = math.prod(int(x) for x in e["shape"])
        if kind == "tensor_q4k":            # Q4_K blocks (lql.vindex.kquant)
            from .kquant import padded_bytes
            e["_dtype"] = "q4_k"
            if e["length"] != padded_bytes(e["shape"], "Q4_K"):
                raise VindexError(f"{path}: {e['key']} (tensor_q4k) has length {e['length']}, "
                                  f"shape {e['shape']} needs {padded_bytes(e['shape'], 'Q4_K')} "
                                  f"bytes", path=path)
        elif kind not in KINDS:
            e["_dtype"] = "refused"
        elif KINDS[kind] is not None:
            e["_dtype"] = KINDS[kind]
            if e["length"] != n * 2:
                raise VindexError(f"{path}: {e['key']} ({kind}) has length {e['length']}, shape "
                                  f"{e['shape']} needs {n * 2} bytes", path=path)
        else:
            by_len = {n * itemsize: "f32" if itemsize == 4 else "f16", n * 4: "f32", n * 2: "f16"}
            if e["length"] not in by_len:
                raise VindexError(f"{path}: {e['key']} has length {e['length']}, shape "
                                  f"{e['shape']} needs {n * itemsize} bytes ({n * 4} as f32 or "
                                  f"{n * 2} as f16)", path=path)
            e["_dtype"] = by_len[e["length"]]
            if e["_dtype"] == "f16" and index_dtype == "bf16":
                e["_dtype"] = "bf16"          # 2-byte words of a bf16 vindex are bfloat16
        size = file_sizes.get(e["file"])
        where = str(folder / e["file"])
        if size is None:
            raise VindexError(f"{where}: file is missing (named by {path} for {e['key']})",
                              path=where)
        if e["offset"] + e["length"] > size:
            raise VindexError(f"{where}: truncated ({size} bytes; {e['key']} needs bytes "
                              f"{e['offset']}..{e['offset'] + e['length']})", path=where)
        out.append(e)
    return out
