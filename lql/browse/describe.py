"""DESCRIBE: what the model associates with an entity, as edges entity → target.

Pipeline (per band, see docs/BROWSE.md):

1. query = mean of the entity's token embeddings × ``embed_scale``; the entity
   is tokenized as a word in running text, i.e. with a leading space
   (``"France"`` → ``" France"``), no special tokens. (``VIA RESIDUAL``: the
   query at layer L is instead the entity's normalised residual entering L's
   FFN, from a real forward pass.)
2. each layer of the band: ``scores = gate(layer) @ query``; keep the
   :data:`PER_LAYER` features with the largest *positive* score (a gated FFN
   feature fires when its gate pre-activation is positive — SiLU / GELU of a
   negative number is ≈ 0), and drop those under :data:`FLOOR` × the layer's
   best score.
3. each hit becomes an edge whose target is the feature's top down-meta token;
   noise targets are dropped (``lql.browse.tokens``: special, punctuation /
   whitespace, sub-word fragments, stop words), and so are *hub* tokens
   (:meth:`DownMeta.hub_ids`: tokens among the stored top-k down tokens of more
   than :data:`HUB_SHARE` of all the vindex's features — generic tokens that top
   nearly every projection, like SmolLM2's ``" strugg"``), *fan-in* hubs
   (:mod:`lql.browse.hubs`: targets of more than 10 % of 100 reference nouns' DESCRIBE,
   computed per vindex and query kind — the tokens of features that fire for any
   entity) and the entity's own tokens (same id, or the same word ignoring case).
4. edges with the same target word (stripped, case-folded) merge across
   layers: best score (and its layer/feature), ``layer_min``/``layer_max``,
   ``count`` of hits, ``also`` = the merged features' next down tokens.
5. labels: probe labels beat cluster labels (best-scoring labelled feature).
6. sorted by score, best first; BRIEF keeps 10 edges a band, VERBOSE and RAW 30.
   RAW skips the token-noise filter (step 3, except the entity's own tokens)
   and shows no labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ast import Band, Verbosity, Via
from ..errors import ExecutionError
from ..result import Result
from .core import (
    band_layers,
    band_of,
    bands_of,
    check_layer,
    down_meta_of,
    entity_query,
    gate_scores,
    keyword_of,
)
from .labels import labels_of
from .tokens import tokens_of
from .walk import inserted_features

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["describe", "describe_edges", "Edge", "DESCRIBE_COLUMNS", "PER_LAYER", "FLOOR"]

DESCRIBE_COLUMNS = ["band", "relation", "target", "gate", "layer_min", "layer_max", "count",
                    "also", "source"]
PER_LAYER = 20          # features kept per layer
FLOOR = 0.25            # a hit must score at least FLOOR × the layer's best score
ALSO_MAX = 3            # "also" tokens kept per edge
ALSO_DEPTH = 4          # down-meta positions 1..ALSO_DEPTH-1 feed "also"
HUB_SHARE = 0.002       # a token in the top-k down tokens of > 0.2 % of all features is a hub
LIMITS = {"BRIEF": 10, "VERBOSE": 30, "RAW": 30}


@dataclass
class Edge:
    key: str                                 # merge key: the target word, case-folded
    target: str
    target_id: int
    gate: float
    layer: int                               # layer / feature of the best hit
    feature: int
    layer_min: int
    layer_max: int
    count: int = 1
    also: list[str] = field(default_factory=list)
    hits: list[tuple[int, int, float]] = field(default_factory=list)
    relation: str | None = None
    label_source: str | None = None
    inserted: bool = False
    c_score: float | None = None
    expert: int | None = None                # the best hit's expert (None: a dense feature)


def _norm_word(text: str) -> str:
    return text.strip().casefold()


def top_positive(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest (positive) scores, best first (ties: lower index)."""
    n = scores.shape[0]
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    idx = idx[np.lexsort((idx, -scores[idx]))]
    return idx[scores[idx] > 0]


def _layer_hits(dm, layer: int, scores: np.ndarray, ex, ex_scores, per_layer: int, floor: float):
    """One layer's hits ``[(row, score, expert, [(token id, logit)] * ALSO_DEPTH)]``, best first:
    the ``per_layer`` best positive scores over the dense features and (with ``ex``, the
    layer's :class:`~lql.browse.experts.ExpertLayer`, and ``ex_scores`` its gate scores) its
    expert rows, each at least ``floor`` × the best."""
    idx = top_positive(scores, per_layer)
    cand = [(float(scores[f]), f, None) for f in idx.tolist()]
    if ex is not None:
        for flat in top_positive(ex_scores, per_layer).tolist():
            cand.append((float(ex_scores[flat]), flat, ex))
    cand.sort(key=lambda c: (-c[0], c[2] is not None, c[1]))
    cand = cand[:per_layer]
    if not cand:
        return []
    best = cand[0][0]
    cand = [c for c in cand if c[0] >= floor * best]
    ids_all, sc_all = dm.layer(layer)
    flats = [f for _s, f, owner in cand if owner is not None]
    ex_tokens = ex.tokens(flats, ALSO_DEPTH) if flats else {}
    out = []
    for s, f, owner in cand:
        if owner is None:
            pairs = list(zip(ids_all[f, :ALSO_DEPTH].tolist(), sc_all[f, :ALSO_DEPTH].tolist()))
            out.append((f, s, None, pairs))
        else:
            e, i = owner.address(f)
            out.append((i, s, e, ex_tokens[f]))
    return out


def describe_edges(view: VindexView, entity_ids: list[int], entity: str, layers: list[int], query_at, *,
                   per_layer: int = PER_LAYER, floor: float = FLOOR, filter_noise: bool = True,
                   labels: bool = True, experts: bool = False, check=None, via: str = "EMBEDDING",
                   fan_in: bool = True, scores_at=None) -> list[Edge]:
    """Merged, labelled, sorted edges of an entity over ``layers``.

    ``query_at(layer)`` gives the query vector for that layer. ``experts``: MoE layers'
    expert rows compete for the per-layer hits too (an edge's ``expert`` says which
    expert its best hit is in; ``None`` = a dense feature).  ``fan_in`` (with the noise
    filter): also drop the vindex's fan-in hubs for the ``via`` query kind
    (:func:`lql.browse.hubs.query_hubs`).  ``scores_at(layer)``: the layer's gate scores
    of the query when the caller computed them already (many queries at once).
    """
    toks = tokens_of(view)
    dm = down_meta_of(view)
    own_ids = set(int(i) for i in entity_ids)
    own_words = {_norm_word(entity)} | {_norm_word(w) for w in entity.split()} | {
        _norm_word(toks.text(i)) for i in own_ids}
    inserted = inserted_features(view)
    hubs = dm.hub_ids(HUB_SHARE) if filter_noise else frozenset()
    if filter_noise and fan_in:
        from .hubs import query_hubs
        hubs = hubs | query_hubs(view, via)

    memo: dict[int, bool] = {}

    def excluded(tid: int) -> bool:
        hit = memo.get(tid)
        if hit is None:
            hit = (tid in own_ids or _norm_word(toks.text(tid)) in own_words
                   or (filter_noise and (tid in hubs or toks.is_noise(tid))))
            memo[tid] = hit
        return hit

    edges: dict[str, Edge] = {}
    also_keys: dict[str, set[str]] = {}
    if check is not None:
        check()
    all_scores = [scores_at(layer) if scores_at is not None else gate_scores(view, layer, query_at(layer))
                  for layer in layers]  # see walk_hits
    expert_layers = {}
    if experts:
        from .experts import require_experts
        expert_layers = require_experts(view, layers)
    for layer, scores in zip(layers, all_scores):
        if check is not None:
            check()
        ex = expert_layers.get(layer)
        ex_scores = ex.scores(query_at(layer)) if ex is not None else None
        hits = _layer_hits(dm, layer, scores, ex, ex_scores, per_layer, floor)
        for f, s, expert, pairs in hits:
            pairs = [(i, c) for i, c in pairs if not (i == 0 and c == 0.0)]
            if not pairs:
                continue
            tid = pairs[0][0]
            if excluded(tid):
                continue
            text = toks.text(tid)
            key = _norm_word(text)
            e = edges.get(key)
            if e is None:
                e = Edge(key, text, tid, s, layer, f, layer, layer, 0, c_score=pairs[0][1], expert=expert)
                edges[key] = e
                also_keys[key] = {key}
            elif s > e.gate:
                e.gate, e.layer, e.feature, e.target, e.target_id = s, layer, f, text, tid
                e.c_score, e.expert = pairs[0][1], expert
            e.count += 1
            e.layer_min, e.layer_max = min(e.layer_min, layer), max(e.layer_max, layer)
            if expert is None:                 # labels and inserts address dense features only
                e.hits.append((layer, f, s))
                if inserted and (layer, f) in inserted:
                    e.inserted = True
            seen = also_keys[key]
            for i, _c in pairs[1:]:
                if excluded(i):
                    continue
                a = toks.text(i)
                k = _norm_word(a)
                if k not in seen:
                    seen.add(k)
                    e.also.append(a)
    out = sorted(edges.values(), key=lambda e: (-e.gate, e.layer, e.feature))
    lab = labels_of(view) if labels else None
    for e in out:
        e.also = e.also[:ALSO_MAX]
        if lab:
            best_probe = best_cluster = None
            for l, f, _s in sorted(e.hits, key=lambda h: -h[2]):
                name, src = lab.get(l, f)
                if src == "probe" and best_probe is None:
                    best_probe = name
                elif src == "cluster" and best_cluster is None:
                    best_cluster = name
            if best_probe is not None:
                e.relation, e.label_source = best_probe, "probe"
            elif best_cluster is not None:
                e.relation, e.label_source = best_cluster, "cluster"
    return out


def _band_name(band: Band | str | None) -> str:
    return keyword_of(band, Band, Band.KNOWLEDGE).value


def _verbosity(v: Verbosity | str | None) -> str:
    return keyword_of(v, Verbosity, Verbosity.BRIEF).value


def residual_queries(view: VindexView, entity: str):
    """``query_at(layer)`` from a real forward pass (VIA RESIDUAL)."""
    from .residual import residual_query_fn
    return residual_query_fn(view, entity)


def describe(view: VindexView, entity: str, *, band=None, layer: int | None = None,
             relations_only: bool = False, verbosity=None, via=None, experts: bool = False,
             check=None) -> Result:
    """The DESCRIBE result for ``entity`` on ``view`` (``experts``: MoE expert rows feed the
    edges too, and each row says in ``expert`` where its best hit is; ``None`` = dense)."""
    verb = _verbosity(verbosity)               # keyword_of refuses an unknown verbosity
    bands = bands_of(view)
    band_name = _band_name(band)
    meta: dict[str, Any] = {"entity": entity, "verbosity": verb.lower(),
            "bands": {k: list(v) for k, v in bands.items()}}
    via_name = keyword_of(via, Via, Via.EMBEDDING).value
    meta["via"] = via_name
    if layer is not None:
        layer = check_layer(view, int(layer))
        groups = [(band_of(view, layer) or "layer", [layer])]
        meta["at_layer"] = layer
    elif band_name == "ALL LAYERS":
        groups = [(name, band_layers(view, name)) for name in bands]
    else:
        name = band_name.lower()
        if name not in bands:
            raise ExecutionError(f"unknown band {band_name!r}; bands: " +
                                 ", ".join(b.upper() for b in bands) + ", ALL LAYERS")
        groups = [(name, band_layers(view, name))]
    meta["band"] = "all" if (band_name == "ALL LAYERS" and layer is None) else groups[0][0]

    query, ids = entity_query(view, entity)
    if query is None:
        return Result.table("DESCRIBE", DESCRIBE_COLUMNS, [], message="(not found)",
                            found=False, **meta)
    toks = tokens_of(view)
    meta["tokens"] = toks.texts(ids)
    if via_name == "RESIDUAL":
        query_at = residual_queries(view, entity)
    else:
        query_at = lambda _layer: query  # noqa: E731
    limit = LIMITS[verb]
    rows, totals = [], {}
    for name, layers in groups:
        if not layers:
            totals[name] = 0
            continue
        edges = describe_edges(view, ids, entity, layers, query_at,
                               filter_noise=verb != "RAW", labels=verb != "RAW", experts=experts,
                               check=check, via=via_name)
        if relations_only:
            edges = [e for e in edges if e.relation is not None]
        totals[name] = len(edges)
        for e in edges[:limit]:
            rows.append(edge_row(e, name) | ({"expert": e.expert} if experts else {}))
    rows = _inserted_rows(view, entity, groups, rows, relations_only) + rows
    if experts:
        for r in rows:
            r.setdefault("expert", None)
    meta["total_edges"] = totals
    message = None if rows else "(no edges found)"
    columns = list(DESCRIBE_COLUMNS)
    if experts:
        columns.insert(columns.index("count") + 1, "expert")
    return Result.table("DESCRIBE", columns, rows, message=message, found=True, **meta)


def _inserted_rows(view: VindexView, entity: str, groups, rows, relations_only) -> list[dict]:
    """Facts an overlay inserted for this entity that the gate scan did not surface
    (KNN entries, or COMPOSE features outside the top hits), marked ``inserted``."""
    fn = getattr(view, "inserted_edges", None)
    if not callable(fn):
        return []
    have = {(_norm_word(str(r["target"])), r["band"]) for r in rows}
    out = []
    for e in fn() or ():
        if _norm_word(str(e.get("entity") or "")) != _norm_word(entity):
            continue
        layer = e.get("layer")
        band = None
        for name, layers in groups:
            if layer is None or layer in layers:
                band = name
                break
        if band is None or (_norm_word(str(e.get("target") or "")), band) in have:
            continue
        if relations_only and not e.get("relation"):
            continue
        out.append({"band": band, "relation": e.get("relation"), "target": e.get("target"),
                    "gate": None, "layer_min": layer, "layer_max": layer, "count": 1,
                    "also": [], "source": "inserted", "layer": layer,
                    "feature": e.get("feature"), "target_id": None,
                    "confidence": e.get("confidence"), "label_source": "inserted",
                    "mode": e.get("mode")})
    return out


def edge_row(e: Edge, band: str | None) -> dict:
    return {"band": band, "relation": e.relation, "target": e.target, "gate": round(e.gate, 6),
            "layer_min": e.layer_min, "layer_max": e.layer_max, "count": e.count,
            "also": list(e.also), "source": "inserted" if e.inserted else None,
            "layer": e.layer, "feature": e.feature, "target_id": e.target_id,
            "confidence": None if e.c_score is None else round(e.c_score, 6),
            "label_source": e.label_source}
