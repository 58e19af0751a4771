"""Opening a vindex: :func:`open_vindex` → :class:`Vindex` (lazy, memory-mapped).

At open, index.json is parsed and every file the level needs is checked to
exist and to have exactly the size its shapes imply (cheap: ``stat`` only);
down_meta.bin's layer headers are read.  Checksums are *not* recomputed at
open unless ``open_vindex(path, verify=True)`` — that reads every byte (see
:func:`lql.vindex.verify`).  Arrays are memory-mapped and read on demand.

``gate(layer)`` returns f32.  For an f32 vindex that is a read-only view of the
mapped file (no copy); for f16 the converted matrix is cached in an LRU bounded
by bytes (``GATE_CACHE_BYTES``, default 512 MiB, override with the environment
variable ``LQL_GATE_CACHE_MB``); cached arrays are read-only.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ExecutionError, MissingTensorError, NoVindexError, VindexError
from . import format as fmt
from .down_meta import DownMeta
from .validate import check_index, check_layer_entries
from .weights import (
    STORAGE,
    VindexWeights,
    bf16_to_f32,
    entry_dtype,
    refuse_kind,
    validate_manifest,
)

#: LARQL's feature-major down projection (index/walk.rs; built by examples/build_down_features.rs)
DOWN_FEATURES = "down_features.bin"

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from tokenizers import Tokenizer

    from .verifier import VerifyReport

GATE_CACHE_BYTES = int(float(os.environ.get("LQL_GATE_CACHE_MB", "512")) * (1 << 20))


def open_vindex(path: str | os.PathLike[str], *, verify: bool = False) -> Vindex:
    """Open the vindex at ``path``; ``verify=True`` also recomputes every checksum."""
    v = Vindex(path)
    if verify:
        from .verifier import verify as _verify
        report = _verify(v.path)
        if not report.ok:
            raise VindexError(report.first_problem(), path=str(v.path))
    return v


_freed = [0]            # vindexes freed since the last heap trim


def _note_freed() -> None:
    _freed[0] += 1


def _trim_heap() -> None:
    """Give the heap a freed vindex left behind back to the OS (glibc ``malloc_trim``).

    A vindex's f16→f32 gate conversions are many MB-sized arrays; glibc keeps freed
    heap memory mapped, so 200 × ``USE; WALK`` looked like a 3.8 GB leak although
    every vindex was freed (RSS fell to ~220 MB after a trim).  Runs when a vindex is
    opened after another was freed; a no-op where there is no glibc."""
    if not _freed[0]:
        return
    _freed[0] = 0
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _ByteLRU:
    """A small thread-safe LRU keyed by layer, bounded by the arrays' total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: int) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: int, arr: np.ndarray) -> None:
        with self._lock:
            if key in self._items or arr.nbytes > self.max_bytes:
                return
            self._items[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


class Vindex:
    """A vindex directory opened read-only.  See ``docs/VINDEX.md`` for every attribute."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        _trim_heap()
        weakref.finalize(self, _note_freed)
        self.path = Path(path).expanduser().resolve()
        if self.path.name == fmt.INDEX and self.path.is_file():
            self.path = self.path.parent
        if not self.path.exists():
            raise NoVindexError(f"{self.path}: no such vindex — create one with "
                                f"EXTRACT MODEL <source> INTO \"{path}\"")
        if not (self.path / fmt.INDEX).is_file():
            raise NoVindexError(f"{self.path} is not a vindex (no {fmt.INDEX}) — create one with "
                                f"EXTRACT MODEL <source> INTO \"{path}\"")
        self.index: dict[str, Any] = fmt.load_index(self.path)
        where = str(self.path / fmt.INDEX)
        check_index(self.index, where)
        from .larql import svd_layout
        raw = self.index
        #: what this vindex's features are when they are not FFN neurons (an SVD vindex)
        self.features_are: str | None = None
        svd = svd_layout(raw, self.path)
        notes: list[str] = []
        if svd is not None:
            raw, svd_assumed, notes = svd
            self.features_are = notes[0]
        ix = {**fmt.DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
        self.version = int(ix["version"])
        #: index.json values this reader had to assume (absent from the file): key → value,
        #: ``model_config.`` prefixed for model_config keys (STATS ``assumed``, USE's message)
        self.assumed: dict[str, Any] = {}
        #: what a forward pass on this vindex does differently from the original model
        #: (INFER says so), e.g. attention biases a LARQL vindex does not store
        self.caveats: list[str] = list(notes)
        if svd is not None:
            self.assumed.update(svd_assumed)
        elif self.index.get("dtype") is None:
            self.assumed["dtype"] = "f32"      # LARQL's default (config/dtype.rs:12-14)
        self.dtype: str = ix["dtype"]
        self.np_dtype = fmt.np_dtype(self.dtype, where)
        self.quant: str = str(ix["quant"])
        self.level: str = ix["extract_level"]
        self.model_config: dict[str, Any] = dict(ix["model_config"] or {})
        self.model: str | None = ix["model"]
        self.family: str | None = ix["family"] or self.model_config.get("model_type")
        self.num_layers = int(ix["num_layers"])
        self.hidden_size = int(ix["hidden_size"])
        self.vocab_size = int(ix["vocab_size"])
        self.embed_scale = float(ix["embed_scale"])
        self.down_top_k = int(ix["down_top_k"])
        self.has_model_weights = bool(ix["has_model_weights"])
        self.source: dict[str, Any] = dict(ix["source"] or {})
        self.checksums: dict[str, str] = dict(ix["checksums"] or {})
        bands = ix["layer_bands"]
        self.layer_bands_derived = not bands
        if not bands:
            bands = fmt.derive_layer_bands(self.num_layers)
        self.layer_bands: dict[str, tuple[int, int]] = {
            str(k): (int(v[0]), int(v[1])) for k, v in bands.items()}
        self._layers = self._parse_layers(ix["layers"], where)
        self.layers: list[int] = sorted(self._layers)
        self.intermediate_size = int(ix.get("intermediate_size") or max(
            (e["num_features"] for e in self._layers.values()), default=0))
        self._check_required_files()
        self._maps: dict[str, np.ndarray] = {}
        self._map_lock = threading.Lock()
        self._gate_cache = _ByteLRU(GATE_CACHE_BYTES)
        self._check_sizes()
        expected = {layer: e["num_features"] for layer, e in self._layers.items()}
        self.down_meta = DownMeta(self.path / fmt.DOWN_META, expected_layers=self.num_layers,
                                  expected_features=expected, vocab_size=self.vocab_size)
        for layer in range(self.num_layers):
            if layer not in self._layers and self.down_meta.num_features(layer):
                where_dm = str(self.path / fmt.DOWN_META)
                raise VindexError(f"{where_dm}: layer {layer} has "
                                  f"{self.down_meta.num_features(layer)} features but index.json "
                                  f"has no entry for it", path=where_dm)
        manifest = None
        if (self.path / fmt.MANIFEST).is_file():
            manifest = validate_manifest(fmt.read_json(self.path / fmt.MANIFEST),
                                         str(self.path / fmt.MANIFEST), self.np_dtype.itemsize,
                                         self._file_sizes(), self.dtype)
        if self.quant == "q4k":               # LARQL's Q4_K layout files (lql.vindex.kquant)
            from .kquant import layout_entries
            manifest = [*(manifest or ()), *layout_entries(self.path, self._file_sizes())]
        self._manifest = manifest
        if self.model_config:
            from .larql import complete_larql_config
            self.model_config, assumed, caveats = complete_larql_config(
                self.index, self.model_config, {e["key"] for e in manifest or ()})
            self.assumed.update({f"model_config.{k}": v for k, v in assumed.items()})
            self.caveats.extend(caveats)
        if self.quant == "q4k":
            self.caveats.append("the weights are LARQL's Q4_K/Q6_K blocks decoded to f32: "
                                "results differ from the original model by the quantisation "
                                "error")
        self.weights = VindexWeights(self, manifest)

    # ------------------------------------------------------------ validation
    def _parse_layers(self, layers: object, where: str) -> dict[int, dict[str, int]]:
        if not isinstance(layers, list):
            raise VindexError(f"{where}: 'layers' must be a list", path=where)
        out: dict[int, dict[str, int]] = {}
        item = self.np_dtype.itemsize
        for i, entry in enumerate(check_layer_entries(layers, where)):
            layer = entry["layer"]
            if not 0 <= layer < self.num_layers:
                raise VindexError(f"{where}: layers[{i}] is layer {layer}, outside "
                                  f"0..{self.num_layers - 1}", path=where)
            want = entry["num_features"] * self.hidden_size * item
            if entry["length"] != want:
                raise VindexError(f"{where}: layer {layer} length {entry['length']} does not match "
                                  f"{entry['num_features']} features × {self.hidden_size} × "
                                  f"{item} bytes = {want}", path=where)
            out[layer] = entry
        return out

    @cached_property
    def _gate_from_q4k(self) -> bool:
        """LARQL's q4k vindex may omit gate_vectors.bin: the gates are then the Q4_K FFN
        gate rows of interleaved_q4k.bin (LARQL: format/load.rs:90-104, synthesised)."""
        from .kquant import GATE_SOURCE
        return (self.quant == "q4k" and not (self.path / fmt.GATE).is_file()
                and (self.path / GATE_SOURCE).is_file())

    def _check_required_files(self) -> None:
        for name in fmt.REQUIRED_FILES[self.level]:
            if name == fmt.GATE and self._gate_from_q4k:
                continue
            if not (self.path / name).is_file():
                raise VindexError(f"{self.path / name}: file is missing (needed by a "
                                  f"{self.level.upper()} vindex)", path=str(self.path / name))

    def _file_sizes(self) -> dict[str, int | None]:
        sizes: dict[str, int | None] = {}
        for p in self.path.iterdir():
            if p.is_file():
                sizes[p.name] = p.stat().st_size
        return sizes

    def _check_sizes(self) -> None:
        gate = self.path / fmt.GATE
        if self._gate_from_q4k:
            self._check_embeddings()
            return
        size = gate.stat().st_size
        end = max((e["offset"] + e["length"] for e in self._layers.values()), default=0)
        if size < end:
            bad = min((e["layer"] for e in self._layers.values()
                       if e["offset"] + e["length"] > size), default=None)
            raise VindexError(f"{gate}: truncated ({size} bytes, layer {bad} needs bytes up to "
                              f"{end})", path=str(gate))
        if size > end:
            raise VindexError(f"{gate}: {size - end} more bytes than index.json's layers "
                              f"describe", path=str(gate))
        covered = sum(e["length"] for e in self._layers.values())
        if covered != end:
            raise VindexError(f"{gate}: {end - covered} bytes belong to no layer entry of "
                              f"index.json (a layer entry is missing)", path=str(gate))
        self._check_embeddings()

    def _check_embeddings(self) -> None:
        emb = self.path / fmt.EMBEDDINGS
        size = emb.stat().st_size
        n = self.vocab_size * self.hidden_size
        # embeddings.bin's dtype from its size, as LARQL's loader does
        # (format/weights/load.rs:158-163): f32 when it is n × 4 bytes, else f16
        self.embed_np_dtype = STORAGE["f32"] if size == n * 4 else (
            (fmt.BF16 if self.dtype == "bf16" else STORAGE["f16"]) if size == n * 2 else self.np_dtype)
        item = self.embed_np_dtype.itemsize
        want = n * item
        if size != want:
            raise VindexError(f"{emb}: {'truncated' if size < want else 'too large'} ({size} "
                              f"bytes; {self.vocab_size} × {self.hidden_size} × {item} = {want})",
                              path=str(emb))

    # ------------------------------------------------------------ raw access
    def _map(self, name: str) -> np.ndarray:
        mm = self._maps.get(name)
        if mm is None:
            with self._map_lock:
                mm = self._maps.get(name)
                if mm is None:
                    path = self.path / name
                    if path.stat().st_size == 0:
                        mm = np.empty(0, dtype=np.uint8)
                    else:
                        mm = np.memmap(path, dtype=np.uint8, mode="r")
                    self._maps[name] = mm
        return mm

    def _release(self, name: str, offset: int, length: int) -> None:
        """``madvise(MADV_DONTNEED)`` the whole pages of ``name``'s bytes ``offset..+length``
        (read-only shared mapping: the pages stay cached by the OS; a later read maps them
        again).  A no-op where madvise is unavailable."""
        mm = self._maps.get(name)
        raw = getattr(mm, "_mmap", None)
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if raw is None or advice is None or length <= 0:
            return
        page = mmap.PAGESIZE
        start = -(-offset // page) * page
        end = (offset + length) // page * page
        if end > start:
            try:
                raw.madvise(advice, start, end - start)
            except (OSError, ValueError):
                pass

    def _view(self, name: str, offset: int, length: int, shape: tuple[int, ...],
              dtype: np.dtype | None = None) -> np.ndarray:
        raw = self._map(name)[offset: offset + length]
        if raw.size != length:
            raise VindexError(f"{self.path / name}: truncated (needs bytes {offset}..{offset + length})",
                              path=str(self.path / name))
        return np.asarray(raw).view(self.np_dtype if dtype is None else dtype).reshape(shape)

    def _tensor(self, entry: dict[str, Any]) -> np.ndarray:
        """One manifest entry as f32, in the storage its kind / byte length gives."""
        store = entry_dtype(entry)
        shape = tuple(entry["shape"])
        if store == "bf16":
            raw = self._view(entry["file"], entry["offset"], entry["length"], shape,
                             np.dtype("<u2"))
            return bf16_to_f32(raw)
        if store in ("q4_k", "q6_k"):
            from .kquant import dequantize
            raw = self._view(entry["file"], entry["offset"], entry["length"],
                             (entry["length"],), np.dtype(np.uint8))
            return dequantize(raw, store, shape, str(self.path / entry["file"]))
        if store not in STORAGE:
            raise refuse_kind(entry, str(self.path / fmt.MANIFEST))
        arr = self._view(entry["file"], entry["offset"], entry["length"], shape, STORAGE[store])
        return arr if arr.dtype == np.float32 else arr.astype(np.float32)

    # ------------------------------------------------------------ layers / gates
    def has_layer(self, layer: int) -> bool:
        return layer in self._layers

    def _layer_entry(self, layer: int) -> dict[str, int]:
        entry = self._layers.get(layer)
        if entry is None:
            if not 0 <= layer < self.num_layers:
                raise ExecutionError(f"layer {layer} out of range 0..{self.num_layers - 1}")
            raise ExecutionError(f"layer {layer} was not extracted into this vindex "
                                 f"(layers {_ranges(self.layers)})")
        return entry

    def num_features(self, layer: int) -> int:
        """Features of ``layer`` (0 for a layer not in this vindex)."""
        entry = self._layers.get(layer)
        return entry["num_features"] if entry else 0

    def gate_raw(self, layer: int) -> np.ndarray:
        """The layer's gate rows in storage dtype (memory-mapped, read-only)."""
        e = self._layer_entry(layer)
        if self._gate_from_q4k:             # decoded from Q4_K, in the index dtype
            key = self.weights.gate_key(layer)
            entry = self.weights.entry(key)
            if entry is None:
                raise VindexError(f"{self.path}: no gate_vectors.bin and no {key} in "
                                  f"interleaved_q4k_manifest.json", path=str(self.path))
            rows = self._tensor(entry)
            if rows.shape != (e["num_features"], self.hidden_size):
                raise VindexError(f"{self.path / entry['file']}: {key} has shape "
                                  f"{list(rows.shape)}, index.json says "
                                  f"{[e['num_features'], self.hidden_size]}",
                                  path=str(self.path / entry["file"]))
            out = rows.astype(self.np_dtype)
            out.setflags(write=False)
            return out
        return self._view(fmt.GATE, e["offset"], e["length"], (e["num_features"], self.hidden_size))

    def gate(self, layer: int) -> np.ndarray:
        """(num_features, hidden) f32 gate matrix (read-only; f16 conversions LRU-cached)."""
        raw = self.gate_raw(layer)
        if self.np_dtype == np.float32:
            return raw
        cached = self._gate_cache.get(layer)
        if cached is None:
            cached = fmt.to_f32(raw)
            cached.setflags(write=False)
            self._gate_cache.put(layer, cached)
        return cached

    def has_down_features(self) -> bool:
        return (self.path / DOWN_FEATURES).is_file()

    def down_features(self, layer: int) -> np.ndarray:
        """LARQL's ``down_features.bin``: ``layer``'s down projection feature-major,
        (num_features, hidden) f32 (read-only).  Layers follow each other in layer order
        (cumulative offsets: LARQL's ``layer × width`` formula, index/walk.rs:59-75, is the
        same for uniform widths); the file's dtype (f32, as LARQL writes it, or f16) comes
        from its size."""
        e = self._layer_entry(layer)
        dt = self._down_features_dtype
        before = sum(self.num_features(n) for n in self.layers if n < layer)
        n = e["num_features"]
        start = before * self.hidden_size * dt.itemsize
        arr = self._view(DOWN_FEATURES, start, n * self.hidden_size * dt.itemsize,
                         (n, self.hidden_size), dt)
        return arr if arr.dtype == np.float32 else arr.astype(np.float32)

    @cached_property
    def _down_features_dtype(self) -> np.dtype:
        """down_features.bin's storage, from its size (checked once)."""
        path = self.path / DOWN_FEATURES
        if not path.is_file():
            raise MissingTensorError([DOWN_FEATURES], where=f"vindex {self.path}")
        rows = sum(self.num_features(n) for n in self.layers)
        size = path.stat().st_size
        by_size: dict[int, np.dtype] = {rows * self.hidden_size * 4: np.dtype("<f4"),
                                        rows * self.hidden_size * 2: np.dtype("<f2")}
        dt = by_size.get(size)
        if dt is None:
            raise VindexError(f"{path}: {size} bytes; {rows} features × {self.hidden_size} need "
                              f"{rows * self.hidden_size * 4} (f32) or "
                              f"{rows * self.hidden_size * 2} (f16)", path=str(path))
        return dt

    @cached_property
    def tokenizer_size(self) -> int:
        """Tokens tokenizer.json knows (added tokens included)."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def tokenizer_caveat(self) -> str | None:
        """A note when tokenizer.json covers fewer tokens than the embedding rows (the
        published Gemma-4-E2B vindex ships a substitute Qwen tokenizer): rows beyond it are
        shown as ``⟨row N⟩``, never decoded.  Added to ``caveats`` once."""
        if self.tokenizer_size >= self.vocab_size:
            return None
        if self.tokenizer_size >= 0.9 * self.vocab_size:   # padded rows (Qwen2: 151,936 vs 151,665)
            note = (f"tokenizer.json has {self.tokenizer_size:,} tokens, the embeddings "
                    f"{self.vocab_size:,} rows: rows {self.tokenizer_size:,}.. are padding beyond "
                    f"the tokenizer, shown as ⟨row N⟩")
        else:
            note = (f"tokenizer.json has {self.tokenizer_size:,} tokens but the embeddings have "
                    f"{self.vocab_size:,} rows: it is not this model's tokenizer (a substitute?) — "
                    f"rows {self.tokenizer_size:,}.. are shown as ⟨row N⟩, and token texts below "
                    f"that come from the substitute, not the model")
        if note not in self.caveats:
            self.caveats.append(note)
        return note

    # ------------------------------------------------------------ embeddings
    @property
    def embeddings(self) -> np.ndarray:
        """The (vocab, hidden) embedding matrix in storage dtype (memory-mapped); a bf16
        vindex's as float32 (numpy has no bfloat16: its words are in :attr:`embeddings_raw`)."""
        raw = self.embeddings_raw
        return fmt.to_f32(raw) if raw.dtype == fmt.BF16 else raw

    @property
    def embeddings_raw(self) -> np.ndarray:
        """The (vocab, hidden) embedding matrix's stored words, memory-mapped (bf16 as ``<u2``)."""
        return self._view(fmt.EMBEDDINGS, 0, self.vocab_size * self.hidden_size *
                          self.embed_np_dtype.itemsize, (self.vocab_size, self.hidden_size),
                          self.embed_np_dtype)

    def embed(self, ids: ArrayLike) -> np.ndarray:
        """f32 embedding rows of ``ids`` (unscaled: multiply by ``embed_scale`` yourself)."""
        idx = np.asarray(ids, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.vocab_size):
            bad = int(idx[(idx < 0) | (idx >= self.vocab_size)].flat[0])
            raise ExecutionError(f"token id {bad} out of range 0..{self.vocab_size - 1}")
        return fmt.to_f32(self.embeddings_raw[idx])

    def _embeddings_f32(self) -> np.ndarray:
        return fmt.to_f32(self.embeddings_raw)

    # ------------------------------------------------------------ tokenizer & text files
    @cached_property
    def tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer
        path = self.path / fmt.TOKENIZER
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:
            raise VindexError(f"{path}: cannot load tokenizer ({exc})", path=str(path)) from None

    @cached_property
    def _token_cache(self) -> dict[int, str]:
        return {}

    def token_text(self, token_id: int) -> str:
        """Decoded text of one token, leading space kept (``" Paris"``)."""
        tid = int(token_id)
        text = self._token_cache.get(tid)
        if text is None and tid >= self.tokenizer_size:
            from .larql import row_text
            return row_text(tid)
        if text is None:
            tok = self.tokenizer
            text = tok.decode([tid], skip_special_tokens=False)
            raw = tok.id_to_token(tid)
            if raw is not None and raw.startswith("\u2581") and not text.startswith(" "):
                text = " " + text           # sentencepiece decoders drop a leading ▁
            if len(self._token_cache) < 1 << 18:
                self._token_cache[tid] = text
        return text

    @cached_property
    def tokenizer_config(self) -> dict[str, Any]:
        path = self.path / fmt.TOKENIZER_CONFIG
        if not path.is_file():
            return {}
        doc = fmt.read_json(path)
        if not isinstance(doc, dict):
            raise VindexError(f"{path}: expected a JSON object, got {type(doc).__name__}",
                              path=str(path))
        tmpl = doc.get("chat_template")
        if tmpl is not None and not isinstance(tmpl, (str, list)):
            raise VindexError(f"{path}: field 'chat_template' must be a string, got "
                              f"{type(tmpl).__name__}", path=str(path))
        return doc

    @cached_property
    def chat_template(self) -> str | None:
        path = self.path / fmt.CHAT_TEMPLATE
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise VindexError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})",
                                  path=str(path)) from None
        tmpl = self.tokenizer_config.get("chat_template")
        return tmpl if isinstance(tmpl, str) else None

    @cached_property
    def feature_labels(self) -> dict[tuple[int, int], str]:
        path = self.path / fmt.FEATURE_LABELS
        if not path.is_file():
            return {}
        from .larql import parse_label_key
        raw = fmt.read_json(path)
        out: dict[tuple[int, int], str] = {}
        for key, label in (raw.items() if isinstance(raw, dict) else ()):
            parsed = parse_label_key(key)
            if parsed is None:
                raise VindexError(f"{path}: bad key {key!r} (expected \"L<layer>_F<feature>\" "
                                  f"or \"<layer>:<feature>\")", path=str(path))
            out[parsed] = str(label)
        return out

    @cached_property
    def relation_clusters(self) -> dict[str, Any] | None:
        path = self.path / fmt.RELATION_CLUSTERS
        return fmt.read_json(path) if path.is_file() else None

    # ------------------------------------------------------------ misc
    @property
    def manifest(self) -> list[dict[str, Any]] | None:
        return self._manifest

    def file_sizes(self) -> dict[str, int]:
        return {k: v for k, v in self._file_sizes().items() if v is not None}

    def verify(self) -> VerifyReport:
        from .verifier import verify
        return verify(self.path)

    def __repr__(self) -> str:
        return (f"<Vindex {self.model or self.path.name} {self.family} {self.level} {self.dtype} "
                f"{len(self.layers)}/{self.num_layers} layers at {self.path}>")


def _ranges(layers: list[int]) -> str:
    if not layers:
        return "none"
    out, start, prev = [], layers[0], layers[0]
    for x in layers[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)
