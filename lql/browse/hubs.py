"""Hub targets: tokens DESCRIBE would name for almost any entity, computed per vindex.

Two kinds of hub never pass as an association (DESCRIBE's targets and "also" tokens; WALK
marks its rows ``hub``):

* **down-meta hubs** (:meth:`lql.browse.core.DownMeta.hub_ids`): tokens among the stored
  top-k down tokens of more than ``HUB_SHARE`` (0.2 %) of all the vindex's features —
  generic tokens near the top of nearly every projection (SmolLM2's ``" strugg"``);
* **fan-in hubs** (:func:`query_hubs`): tokens that are DESCRIBE targets of more than
  :data:`QUERY_SHARE` (10 %) of :data:`REFERENCE_WORDS` (100 common English nouns), with
  the same pipeline and query (embedding, or VIA RESIDUAL's forward pass) over every
  layer.  These are the targets of *hub features*: features whose gate lines up with a
  direction every query shares, so they score high for any entity whatever their down
  tokens are (on the trained Gemma 3 270M: ``" Gresham"``, ``" Iowa"``, ``"cores"``,
  ``" Byst"``, ``" mev"`` — each heads only one or two features' down-meta, so a
  down-meta count cannot see them, but they top France's, Paris's, water's and
  Einstein's lists alike).  A real association of one entity is a target for few of a
  hundred unrelated nouns; the threshold (10 = 10 % of 100) keeps those.

Computed on first use and memoised per vindex (:class:`lql.browse.memo.PerVindex`) and
per query kind; an overlay's hubs are its base's (edits do not make hubs).  A vindex whose
layers have fewer than :data:`MIN_FEATURES` (1000) features gets none (tiny test models:
DESCRIBE's 20 hits a layer would cover most of a layer for every query).  Cost: the
embedding kind is 100 gate scans (well under a second on SmolLM2); the residual kind
needs 100 short forward passes (seconds, once per vindex and process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .memo import PerVindex

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["REFERENCE_WORDS", "QUERY_SHARE", "MIN_FEATURES", "query_hubs", "fan_in_counts"]

#: a token that is a DESCRIBE target of more than this share of the reference words is a hub
QUERY_SHARE = 0.10
#: no fan-in hubs on a vindex whose layers have fewer features than this: DESCRIBE keeps 20
#: hits a layer, so on a tiny model every query hits most features and every target would
#: look like a hub (the statistic needs hits to be a small share of a layer)
MIN_FEATURES = 1000

#: common English nouns used as reference queries (the list of benchmarks/eval_describe.py)
REFERENCE_WORDS = tuple("""time year people way day man thing woman life child world school state
family student group country problem hand part place case week company system program question
work government number night point home water room mother area money story fact month lot right
study book eye job word business issue side kind head house service friend father power hour game
line end member law car city community name president team minute idea kid body information back
parent face level office door health person art war history party result change morning reason
research girl moment air teacher force education food music table tree river paper color animal
song king church street computer science market window phone language doctor""".split())


def _all_layers(view: VindexView) -> list[int]:
    return [l for l in range(int(view.num_layers)) if int(view.num_features(l)) > 0]


def fan_in_counts(view: VindexView, via: str = "EMBEDDING") -> dict[int, int]:
    """``{token id: how many REFERENCE_WORDS have it among their DESCRIBE targets}``
    (every layer, the noise filter and down-meta hubs applied, no fan-in filter)."""
    from .core import entity_query, gate_scores_many
    from .describe import describe_edges, residual_queries
    layers = _all_layers(view)
    words = []
    for word in REFERENCE_WORDS:
        query, ids = entity_query(view, word)
        if query is None:
            continue
        if via == "RESIDUAL":
            query_at = residual_queries(view, word)
        else:
            query_at = (lambda q: lambda _layer: q)(query)
        words.append((word, ids, query_at))
    # every word's gate scores a layer at a time: each layer's gates are read (and, past the
    # gate cache, cast) once, not once a word (a 7B-shaped bf16 vindex: minutes -> seconds)
    scores = {layer: gate_scores_many(view, layer, np.stack([q(layer) for _, _, q in words]))
              for layer in layers} if words else {}
    counts: dict[int, int] = {}
    for j, (word, ids, query_at) in enumerate(words):
        edges = describe_edges(view, ids, word, layers, query_at, labels=False, fan_in=False,
                               scores_at=lambda layer, j=j: scores[layer][j])
        for tid in {e.target_id for e in edges}:
            counts[tid] = counts.get(tid, 0) + 1
    return counts


def _builder(via: str):
    def build(view: VindexView) -> frozenset[int]:
        if max((int(view.num_features(l)) for l in _all_layers(view)), default=0) < MIN_FEATURES:
            return frozenset()
        limit = QUERY_SHARE * len(REFERENCE_WORDS)
        return frozenset(t for t, n in fan_in_counts(view, via).items() if n > limit)
    return build


_MEMO = {"EMBEDDING": PerVindex(_builder("EMBEDDING")), "RESIDUAL": PerVindex(_builder("RESIDUAL"))}


def query_hubs(view: VindexView, via: str = "EMBEDDING") -> frozenset[int]:
    """The fan-in hub token ids of ``view``'s base vindex for the ``via`` query kind."""
    from ..runtime.view import base_of
    memo = _MEMO.get(str(via).upper(), _MEMO["EMBEDDING"])
    return memo(base_of(view))
