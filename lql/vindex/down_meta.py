"""``down_meta.bin``: per feature, the tokens its down projection pushes most.

Layout (little-endian)::

    header:     u32 magic 0x444D4554, u32 version 1, u32 num_layers, u32 top_k
    per layer:  u32 num_features (0 = layer absent)
      per feature (8 + 8·top_k bytes): u32 top_token_id, f32 c_score,
                                       top_k × (u32 token_id, f32 score)

This module has the record dtype, a memory-mapped reader with random access by
(layer, feature), a streaming writer, and the computation of the records
(``E · W_down`` in blocks with a two-stage top-k, see :func:`top_k_scores`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import VindexError
from .validate import MAX_LAYERS, MAX_TOP_K

MAGIC = 0x444D4554
VERSION = 1
HEADER = struct.Struct("<4I")
#: bytes of the (vocab, block) f32 logits buffer the feature block is sized to
BLOCK_BYTES = 96 << 20
#: chunk width of the first top-k stage (see top_k_scores)
CHUNK = 128
#: sub-chunk rows and sub-chunks per group in top_k_columns
SUB_CHUNK = 16
GROUP = 8


@cache
def record_dtype(top_k: int) -> np.dtype:
    pair = np.dtype([("id", "<u4"), ("score", "<f4")])
    return np.dtype([("top_token_id", "<u4"), ("c_score", "<f4"), ("top", pair, (top_k,))])


# --------------------------------------------------------------------- reading

class RecordAccess:
    """Per-layer accessors derived from ``layer_records(layer)`` (a structured array);
    shared by the file reader and by any view that patches records (the edit overlay)."""

    def layer_records(self, layer: int) -> np.ndarray:          # pragma: no cover
        raise NotImplementedError

    def top_ids(self, layer: int) -> np.ndarray:
        """(num_features, top_k) token ids, best first (int64)."""
        return self.layer_records(layer)["top"]["id"].astype(np.int64)

    def top_scores(self, layer: int) -> np.ndarray:
        """(num_features, top_k) scores, best first (f32)."""
        return np.ascontiguousarray(self.layer_records(layer)["top"]["score"])

    def c_scores(self, layer: int) -> np.ndarray:
        return np.ascontiguousarray(self.layer_records(layer)["c_score"])

    def record(self, layer: int, feature: int) -> dict[str, Any] | None:
        """``{"top_token_id", "c_score", "top": [(id, score), ...]}`` or ``None`` (no metadata)."""
        recs = self.layer_records(layer)
        if not 0 <= feature < len(recs):
            raise IndexError(f"feature {feature} out of range for layer {layer} "
                             f"({len(recs)} features)")
        r = recs[feature]
        if not r.tobytes().strip(b"\0"):
            return None
        top = [(int(i), float(s)) for i, s in zip(r["top"]["id"], r["top"]["score"])]
        n = len(top)
        while n and top[n - 1] == (0, 0.0):   # zero padding when fewer than top_k
            n -= 1
        return {"top_token_id": int(r["top_token_id"]), "c_score": float(r["c_score"]),
                "top": top[:n]}


class DownMeta(RecordAccess):
    """Memory-mapped ``down_meta.bin``: only the layer headers are read at open."""

    def __init__(self, path: Path, *, expected_layers: int | None = None,
                 expected_features: dict[int, int] | None = None,
                 vocab_size: int | None = None):
        self.path = Path(path)
        #: token ids in records must be < vocab_size (checked per layer on first read)
        self.vocab_size = vocab_size
        self._checked: set[int] = set()
        where = str(self.path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise VindexError(f"{where}: file is missing", path=where) from None
        if size < HEADER.size:
            raise VindexError(f"{where}: truncated ({size} bytes, header needs {HEADER.size})",
                              path=where)
        with open(self.path, "rb") as fh:
            magic, version, num_layers, top_k = HEADER.unpack(fh.read(HEADER.size))
            if magic != MAGIC:
                raise VindexError(f"{where}: bad magic 0x{magic:08X} (expected 0x{MAGIC:08X})",
                                  path=where)
            if version != VERSION:
                raise VindexError(f"{where}: unsupported down_meta version {version}", path=where)
            if expected_layers is not None and num_layers != expected_layers:
                raise VindexError(f"{where}: header says {num_layers} layers, index.json says "
                                  f"{expected_layers}", path=where)
            if not 1 <= top_k <= MAX_TOP_K:
                raise VindexError(f"{where}: header top_k {top_k} out of range 1..{MAX_TOP_K}",
                                  path=where)
            if num_layers > MAX_LAYERS:
                raise VindexError(f"{where}: header says {num_layers} layers (more than "
                                  f"{MAX_LAYERS})", path=where)
            self.num_layers, self.top_k = num_layers, top_k
            self.dtype = record_dtype(top_k)
            rec = self.dtype.itemsize
            self._offsets: list[int] = []   # byte offset of each layer's first record
            self._counts: list[int] = []
            pos = HEADER.size
            for layer in range(num_layers):
                if pos + 4 > size:
                    raise VindexError(f"{where}: truncated at layer {layer} "
                                      f"({size} bytes)", path=where)
                fh.seek(pos)
                (n,) = struct.unpack("<I", fh.read(4))
                pos += 4
                self._offsets.append(pos)
                self._counts.append(n)
                pos += n * rec
                if pos > size:
                    raise VindexError(f"{where}: truncated in layer {layer} ({n} features of "
                                      f"{rec} bytes need {pos} bytes, file has {size})", path=where)
        if pos != size:
            raise VindexError(f"{where}: {size - pos} unexpected trailing bytes", path=where)
        if expected_features:
            for layer, n in expected_features.items():
                have = self._counts[layer] if 0 <= layer < num_layers else None
                if have not in (0, n):
                    raise VindexError(f"{where}: layer {layer} has {have} features, index.json "
                                      f"says {n}", path=where)
        self._mm: np.memmap | None = None

    def _map(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mm

    def num_features(self, layer: int) -> int:
        return self._counts[layer] if 0 <= layer < self.num_layers else 0

    def layer_records(self, layer: int) -> np.ndarray:
        """The layer's records as a read-only structured array (empty if absent)."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.num_layers - 1}")
        n, off = self._counts[layer], self._offsets[layer]
        raw = self._map()[off: off + n * self.dtype.itemsize]
        recs = raw.view(self.dtype)
        if layer not in self._checked:
            self.check_layer(layer, recs)
            self._checked.add(layer)
        return recs

    def check_layer(self, layer: int, recs: np.ndarray | None = None) -> None:
        """Every token id of ``layer``'s records < vocab_size and every score finite
        (a corrupt record would otherwise become an array size or a NaN downstream)."""
        if self.vocab_size is None:
            return
        if recs is None:
            n, off = self._counts[layer], self._offsets[layer]
            recs = self._map()[off: off + n * self.dtype.itemsize].view(self.dtype)
        if not len(recs):
            return
        ids = recs["top"]["id"]
        bad_id = int(ids.max()) >= self.vocab_size or int(recs["top_token_id"].max()) >= \
            self.vocab_size
        if bad_id:
            both = np.concatenate([recs["top_token_id"].reshape(-1), ids.reshape(-1)])
            worst = int(both.max())
            raise VindexError(f"{self.path}: layer {layer} has token id {worst}, the "
                              f"vocabulary has {self.vocab_size} (corrupt record)",
                              path=str(self.path))
        if not (np.isfinite(recs["top"]["score"]).all() and np.isfinite(recs["c_score"]).all()):
            raise VindexError(f"{self.path}: layer {layer} has a non-finite score "
                              f"(corrupt record)", path=str(self.path))

# --------------------------------------------------------------------- computing

def top_k_scores(scores: np.ndarray, k: int, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``k`` of ``scores`` (n, vocab): (ids, values), best first.

    Two stages, both vectorised: the max of each ``chunk``-wide column block,
    then an exact top-k over the ``k`` blocks with the highest maxima (plus any
    ragged tail).  Exact: an element outside those blocks has at least ``k``
    block maxima ≥ it in other blocks.  Much cheaper than ``argpartition`` over
    the full rows, which costs more than the matmul that produced them.
    """
    n, vocab = scores.shape
    k = min(k, vocab)
    n_chunks = vocab // chunk
    if n_chunks < 4 * k:
        cols = np.broadcast_to(np.arange(vocab), (n, vocab))
        cand = scores
    else:
        main = n_chunks * chunk
        maxima = scores[:, :main].reshape(n, n_chunks, chunk).max(axis=2)
        best = np.argpartition(maxima, -k, axis=1)[:, -k:]
        cols = (best[:, :, None] * chunk + np.arange(chunk)).reshape(n, k * chunk)
        if main < vocab:
            tail = np.broadcast_to(np.arange(main, vocab), (n, vocab - main))
            cols = np.concatenate([cols, tail], axis=1)
        cand = np.take_along_axis(scores, cols, axis=1)
    part = np.argpartition(cand, -k, axis=1)[:, -k:] if k < cand.shape[1] else \
        np.broadcast_to(np.arange(k), (n, k))
    vals = np.take_along_axis(cand, part, axis=1)
    ids = np.take_along_axis(cols, part, axis=1)
    order = _order(vals, ids)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _order(vals: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-row order: score descending, ties by token id ascending (deterministic)."""
    o1 = np.argsort(ids, axis=1, kind="stable")
    v1 = np.take_along_axis(vals, o1, axis=1)
    o2 = np.argsort(-v1, axis=1, kind="stable")
    return np.take_along_axis(o1, o2, axis=1)


def top_k_columns(scores: np.ndarray, k: int, chunk: int = SUB_CHUNK,
                  group: int = GROUP) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise top-``k`` of ``scores`` (vocab, n): (ids, values) of shape (n, k), best first.

    The layout ``E @ W_block`` produces.  Three vectorised stages, each exact by
    the argument of :func:`top_k_scores` (the top k elements lie in the k
    sub-chunks with the highest maxima, and those in the k groups of sub-chunks
    with the highest maxima): one pass over ``scores`` for the maxima of
    ``chunk``-row sub-chunks (reduced over a middle axis, which numpy vectorises
    along the contiguous feature axis), group maxima from those, then only
    k·group sub-chunk maxima and k·chunk scores per feature are gathered.
    """
    vocab, n = scores.shape
    k = min(k, vocab)
    n_groups = vocab // (chunk * group)
    if n_groups < 4 * k:
        return top_k_scores(np.ascontiguousarray(scores.T), k)
    main = n_groups * chunk * group
    sub_max = scores[:main].reshape(n_groups * group, chunk, n).max(axis=1)  # (subs, n)
    grp_max = sub_max.reshape(n_groups, group, n).max(axis=1)                # (groups, n)
    best_grp = np.argpartition(grp_max, -k, axis=0)[-k:]                     # (k, n)
    subs = (best_grp[:, None, :] * group + np.arange(group)[None, :, None]).reshape(k * group, n)
    best_sub = np.argpartition(np.take_along_axis(sub_max, subs, axis=0), -k, axis=0)[-k:]
    subs = np.take_along_axis(subs, best_sub, axis=0)                        # (k, n)
    rows = (subs[:, None, :] * chunk + np.arange(chunk)[None, :, None]).reshape(k * chunk, n)
    if main < vocab:
        tail = np.broadcast_to(np.arange(main, vocab)[:, None], (vocab - main, n))
        rows = np.concatenate([rows, tail], axis=0)
    cand = np.take_along_axis(scores, rows, axis=0).T                        # (n, candidates)
    rows = rows.T
    part = np.argpartition(cand, -k, axis=1)[:, -k:]
    vals = np.take_along_axis(cand, part, axis=1)
    ids = np.take_along_axis(rows, part, axis=1)
    order = _order(vals, ids)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(vals, order, axis=1)


def auto_block(vocab: int, budget_bytes: int = BLOCK_BYTES) -> int:
    """Features per block so that the (vocab, block) f32 logits fit ``budget_bytes``."""
    return int(max(32, min(1024, budget_bytes // max(1, 4 * vocab) // 32 * 32)))


def layer_records(embeddings: np.ndarray, down_columns: Callable[[int, int], np.ndarray],
                  num_features: int, top_k: int, block: int | None = None) -> np.ndarray:
    """down_meta records of one layer.

    ``embeddings`` is the unscaled (vocab, hidden) f32 matrix (C-contiguous);
    ``down_columns(lo, hi)`` returns the (hidden, hi - lo) f32 down-projection
    columns of features lo..hi.  Logits are computed ``block`` features at a time
    as ``E · W_block`` (one BLAS call into a reused (vocab, block) buffer — the
    orientation BLAS runs fastest here), then :func:`top_k_columns`.  Memory
    stays at vocab × block floats; ``block=None`` sizes it to ~``BLOCK_BYTES``.
    """
    recs = np.zeros(num_features, dtype=record_dtype(top_k))
    vocab = embeddings.shape[0]
    block = block or auto_block(vocab)
    buf = None
    for lo in range(0, num_features, block):
        hi = min(num_features, lo + block)
        w = np.ascontiguousarray(down_columns(lo, hi), dtype=np.float32)      # (hidden, b)
        if buf is None or buf.shape[1] != hi - lo:
            buf = np.empty((vocab, hi - lo), dtype=np.float32)
        np.matmul(embeddings, w, out=buf)
        ids, vals = top_k_columns(buf, top_k)
        kk = ids.shape[1]
        part = recs[lo:hi]
        part["top"]["id"][:, :kk] = ids
        part["top"]["score"][:, :kk] = vals
        part["top_token_id"] = ids[:, 0]
        part["c_score"] = vals[:, 0]
    return recs


# --------------------------------------------------------------------- writing

class DownMetaWriter:
    """Streams ``down_meta.bin``: header, then each layer in order (absent layers: 0)."""

    def __init__(self, fh: BinaryIO, num_layers: int, top_k: int):
        self.fh, self.num_layers, self.top_k = fh, num_layers, top_k
        self.dtype = record_dtype(top_k)
        self.next_layer = 0
        fh.write(HEADER.pack(MAGIC, VERSION, num_layers, top_k))

    def write_layer(self, layer: int, records: np.ndarray | None) -> None:
        if layer < self.next_layer or layer >= self.num_layers:
            raise ValueError(f"layers must be written in order (got {layer})")
        while self.next_layer < layer:
            self.fh.write(struct.pack("<I", 0))
            self.next_layer += 1
        if records is None:
            self.fh.write(struct.pack("<I", 0))
        else:
            if records.dtype != self.dtype:
                raise ValueError("record dtype does not match top_k")
            self.fh.write(struct.pack("<I", len(records)))
            self.fh.write(records.tobytes())
        self.next_layer = layer + 1

    def finish(self) -> None:
        while self.next_layer < self.num_layers:
            self.fh.write(struct.pack("<I", 0))
            self.next_layer += 1
