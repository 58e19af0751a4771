"""Shared pieces of the browse computations: layers, query vectors, gate scores, down-meta."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ..ast import AllLayers
from ..errors import ExecutionError, LevelError
from .memo import PerVindex
from .tokens import entity_ids, prompt_ids, tokens_of

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["resolve_layers", "check_layer", "query_vector", "entity_query", "gate_scores",
           "top_by_abs", "DownMeta", "down_meta_of", "band_layers", "bands_of", "band_of"]

BAND_NAMES = ("syntax", "knowledge", "output")


# --------------------------------------------------------------------------- layers

def _present(view: VindexView, layer: int) -> bool:
    try:
        return int(view.num_features(layer)) > 0
    except Exception:                          # absent layer
        return False


def check_layer(view: VindexView, layer: int) -> int:
    n = int(view.num_layers)
    if not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < n:
        raise ExecutionError(f"layer {layer} is out of range: this vindex has layers 0-{n - 1}")
    if not _present(view, int(layer)):
        raise ExecutionError(f"layer {layer} was not extracted into this vindex "
                             f"(re-extract with a LAYERS range that includes it)")
    return int(layer)


E = TypeVar("E", bound=enum.Enum)


def keyword_of(value: E | str | None, enum_cls: type[E], default: E) -> E:
    """The statement's enum member for a clause: the AST passes the member itself; the
    Python API may pass its name (``"verbose"``, ``"all_layers"``). ``None`` is ``default``."""
    if value is None:
        return default
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        key = value.strip().upper().replace("_", " ")
        for member in enum_cls:
            if member.value == key or member.name == key.replace(" ", "_"):
                return member
    raise ExecutionError(f"unknown {enum_cls.__name__.lower()} {value!r}; one of: "
                         + ", ".join(str(m.value) for m in enum_cls))


def resolve_layers(view: VindexView, spec) -> list[int]:
    """Layers named by a ``Range`` / ``AllLayers`` / ``None`` (= all) / int / iterable.

    Out-of-range layers are an error; layers absent from a partial extract are
    skipped (an explicit single absent layer is an error).
    """
    n = int(view.num_layers)
    if spec is None or isinstance(spec, AllLayers) or spec == "ALL":
        layers = list(range(n))
    elif isinstance(spec, (int, np.integer)):
        return [check_layer(view, int(spec))]
    elif hasattr(spec, "start") and hasattr(spec, "end"):
        lo, hi = int(spec.start), int(spec.end)
        if lo == hi:
            return [check_layer(view, lo)]
        if lo > hi:
            raise ExecutionError(f"empty layer range {lo}-{hi}: write the lower layer first")
        if lo < 0 or hi >= n:
            raise ExecutionError(f"layer range {lo}-{hi} is out of range: this vindex has "
                                 f"layers 0-{n - 1}")
        layers = list(range(lo, hi + 1))
    else:
        layers = [int(x) for x in spec]
        for x in layers:
            if not 0 <= x < n:
                raise ExecutionError(f"layer {x} is out of range: this vindex has layers 0-{n - 1}")
    present = [l for l in layers if _present(view, l)]
    if not present:
        raise ExecutionError("none of the requested layers were extracted into this vindex")
    return present


def bands_of(view: VindexView) -> dict[str, tuple[int, int]]:
    """``{band: (lo, hi)}`` from the vindex (which derives them when index.json has none)."""
    bands = getattr(view, "layer_bands", None) or {}
    out = {}
    for name, rng in dict(bands).items():
        try:
            lo, hi = int(rng[0]), int(rng[1])
        except (TypeError, ValueError, IndexError):
            continue
        out[str(name).lower()] = (lo, hi)
    if not out:                                  # same rule as the spec: ~30/45/25 %
        n = int(view.num_layers)
        a = max(1, round(n * 0.30))
        b = max(a + 1, round(n * 0.75))
        out = {"syntax": (0, a - 1), "knowledge": (a, min(b, n) - 1), "output": (min(b, n - 1), n - 1)}
    return out


def bands_derived(view: VindexView) -> bool:
    index = getattr(view, "index", None)
    return not (isinstance(index, dict) and index.get("layer_bands"))


def band_layers(view: VindexView, band: str) -> list[int]:
    lo, hi = bands_of(view)[band]
    return [l for l in range(lo, hi + 1) if 0 <= l < int(view.num_layers) and _present(view, l)]


def band_of(view: VindexView, layer: int) -> str | None:
    for name, (lo, hi) in bands_of(view).items():
        if lo <= layer <= hi:
            return name
    return None


# --------------------------------------------------------------------------- queries

def _scaled(view: VindexView, ids) -> np.ndarray:
    rows = np.asarray(view.embed(list(ids)), dtype=np.float32)
    return rows * np.float32(getattr(view, "embed_scale", 1.0) or 1.0)


def query_vector(view: VindexView, prompt: str) -> tuple[np.ndarray, list[int]]:
    """WALK's query: the last token's embedding × embed_scale; and the prompt's ids."""
    ids = prompt_ids(view, prompt)
    return _scaled(view, [ids[-1]])[0], ids


def entity_query(view: VindexView, entity: str) -> tuple[np.ndarray | None, list[int]]:
    """DESCRIBE's query: mean of the entity's token embeddings × embed_scale (None if no tokens)."""
    ids = entity_ids(view, entity)
    if not ids:
        return None, []
    return _scaled(view, ids).mean(axis=0, dtype=np.float32), ids


def gate_scores(view: VindexView, layer: int, query: np.ndarray) -> np.ndarray:
    """``gate(layer) @ query``: one score per feature (f32)."""
    g = view.gate(layer)
    return np.asarray(g @ query, dtype=np.float32)


def gate_scores_many(view: VindexView, layer: int, queries: np.ndarray) -> np.ndarray:
    """``[n, features]``: :func:`gate_scores` of each of ``queries`` (``[n, hidden]``), the
    layer's gates read (and cast) once for all of them."""
    g = view.gate(layer)
    return np.ascontiguousarray(np.asarray(g @ np.asarray(queries, dtype=np.float32).T, dtype=np.float32).T)


def top_by_abs(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``|scores|``, best first (ties: lower index first)."""
    n = scores.shape[0]
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    a = np.abs(scores)
    if k < n:
        idx = np.argpartition(-a, k - 1)[:k]
    else:
        idx = np.arange(n)
    order = np.lexsort((idx, -a[idx]))
    return idx[order]


# --------------------------------------------------------------------------- down-meta

class DownMeta:
    """Per-layer down-meta arrays of a view (top ids, top scores, c_score)."""

    def __init__(self, view: VindexView):
        self.view = view
        dm = getattr(view, "down_meta", None)
        if dm is None:
            raise LevelError("this vindex has no down-meta (down_meta.bin); re-extract it")
        self._dm = dm
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._hubs: frozenset[int] | None = None

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(layer)
        if hit is None:
            hit = (np.asarray(self._dm.top_ids(layer)), np.asarray(self._dm.top_scores(layer),
                                                                     dtype=np.float32))
            self._cache[layer] = hit
        return hit

    def hub_ids(self, share: float = 0.002, minimum: int = 20) -> frozenset[int]:
        """Tokens in the stored top-k down tokens of more than ``max(minimum, share ×
        features)`` features of the whole vindex ("hub" tokens: under-trained / generic
        tokens such as SmolLM2's ``" strugg"`` that sit near the top of almost every
        projection, so they say nothing about a particular feature)."""
        if self._hubs is None:
            counts: np.ndarray | None = None
            total = 0
            vocab = int(getattr(self.view, "vocab_size", 0) or 0)
            for layer in range(int(self.view.num_layers)):
                try:
                    if int(self.view.num_features(layer)) <= 0:
                        continue
                except Exception:                       # absent layer
                    continue
                ids, sc = self.layer(layer)
                real = ids[(ids != 0) | (sc != 0)]       # zero padding is not a token
                real = real.astype(np.int64).ravel()
                if vocab:                                # never an array sized by a corrupt id
                    real = real[(real >= 0) & (real < vocab)]
                c = np.bincount(real, minlength=vocab)
                counts = c if counts is None else _add_counts(counts, c)
                total += ids.shape[0]
            limit = max(int(minimum), share * total)
            self._hubs = frozenset() if counts is None else frozenset(
                np.nonzero(counts > limit)[0].tolist())
        return self._hubs

    def top_id(self, layer: int, feature: int) -> int | None:
        ids, sc = self.layer(layer)
        if not sc[feature].any() and not ids[feature].any():
            return None                      # an all-zero record: no metadata
        return int(ids[feature, 0])

    def c_score(self, layer: int, feature: int) -> float | None:
        ids, sc = self.layer(layer)
        if not sc[feature].any() and not ids[feature].any():
            return None
        return float(sc[feature, 0])

    def tokens(self, layer: int, feature: int, n: int) -> list[tuple[int, float]]:
        """The feature's first ``n`` (token id, score) pairs, zero padding dropped."""
        ids, sc = self.layer(layer)
        out = []
        for i, s in zip(ids[feature, :n].tolist(), sc[feature, :n].tolist()):
            if i == 0 and s == 0.0:
                continue
            out.append((int(i), float(s)))
        return out


def _add_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape[0] < b.shape[0]:
        a, b = b, a
    a = a.copy()
    a[:b.shape[0]] += b
    return a


_down_meta = PerVindex(lambda view: DownMeta(view))


def down_meta_of(view: VindexView) -> DownMeta:
    """The view's :class:`DownMeta`, kept across statements for a plain vindex (an
    overlay's down-meta changes with its edits, so it gets a fresh one each time)."""
    if getattr(view, "is_overlay", False):
        return DownMeta(view)
    return _down_meta(view)


def token_text(view: VindexView, token_id):
    return None if token_id is None else tokens_of(view).text(int(token_id))
