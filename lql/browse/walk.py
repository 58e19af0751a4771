"""WALK and EXPLAIN WALK: a feature scan for the prompt's last token (no attention).

query = embedding(last token) × embed_scale; per layer, ``scores = gate(layer) @ query``;
keep the top ``n`` features by ``|score|`` (default 10) and annotate each with its
down-meta tokens and relation label.

Modes (the ranking and the extra columns):

* ``PURE``   — the spec's walk exactly: rank by ``|gate · query|``; row keys
  ``layer, feature, gate, top_token, down_tokens, relation`` only.
* ``HYBRID`` (default) — the same ranking, plus ``c_score`` (the feature's
  down-meta strength: the logit of its top output token) and ``top_token_id``.
* ``DENSE``  — rank every feature by ``|gate · query| × c_score`` (``score``): a
  proxy for how strongly the feature would push its top token if it fired at
  this strength; features without down-meta score 0.

COMPARE: with an overlay active (INSERT/DELETE/UPDATE or an applied patch), the
same walk on the overlay-free base is run beside it; each row gets
``base_gate`` and ``status`` (``same`` / ``changed`` / ``new``), and features in
the base's top n that left it are listed with status ``dropped``. Without an
overlay, COMPARE says so and the walk is the base walk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..ast import WalkMode
from ..result import Result
from .core import (
    DownMeta,
    down_meta_of,
    gate_scores,
    keyword_of,
    query_vector,
    resolve_layers,
    top_by_abs,
)
from .labels import labels_of
from .tokens import tokens_of

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["walk", "WALK_COLUMNS", "walk_hits", "inserted_features"]

WALK_COLUMNS = ["layer", "feature", "gate", "top_token", "down_tokens", "relation"]
DEFAULT_TOP = 10
EXPLAIN_TOP = 5
DOWN_SHOWN = 5


def _mode_name(mode: WalkMode | str | None) -> str:
    return keyword_of(mode, WalkMode, WalkMode.HYBRID).value


def inserted_features(view: VindexView) -> set[tuple[int, int]]:
    """Features an overlay inserted (empty for a plain vindex): from ``view.inserted_edges()``."""
    fn = getattr(view, "inserted_edges", None)
    if not callable(fn):
        return set()
    out = set()
    for e in fn() or ():
        if isinstance(e, dict) and e.get("feature") is not None and e.get("layer") is not None:
            out.add((int(e["layer"]), int(e["feature"])))
    return out


def walk_hits(view: VindexView, query: np.ndarray, layers: list[int], top: int, mode: str = "HYBRID",
              dm: DownMeta | None = None, check=None):
    """``[(layer, feature, gate, score)]`` per layer, best first (the numeric core)."""
    out: list = []
    if check is not None:
        check()
    # all matmuls back to back first: interleaving Python work between BLAS calls
    # lets a multi-threaded BLAS park its threads and pay to wake them every layer
    all_scores = [gate_scores(view, layer, query) for layer in layers]
    for layer, scores in zip(layers, all_scores):
        if check is not None:
            check()
        if mode == "DENSE":
            dm = dm or down_meta_of(view)
            _, sc = dm.layer(layer)
            strength = sc[:, 0].astype(np.float32)
            ranked = scores * strength
            idx = top_by_abs(ranked, top)
            out.extend((layer, int(f), float(scores[f]), float(ranked[f])) for f in idx)
        else:
            idx = top_by_abs(scores, top)
            out.extend((layer, int(f), float(scores[f]), float(scores[f])) for f in idx)
    return out


def _row(view: VindexView, dm: DownMeta, labels, toks, layer, feature, gate, score, *, mode, n_down,
         verbose=False, inserted=frozenset()):
    pairs = dm.tokens(layer, feature, max(n_down, 1))
    top_id = pairs[0][0] if pairs else None
    lab, lab_src = labels.get(layer, feature)
    cache, text = toks._text, toks.text
    down = [cache.get(i) or text(i) for i, _ in pairs[:n_down]]
    row = {"layer": layer, "feature": feature, "gate": gate,
           "top_token": down[0] if down else None, "down_tokens": down, "relation": lab}
    if mode != "PURE":
        row["c_score"] = pairs[0][1] if pairs else None
        row["top_token_id"] = top_id
    if mode == "DENSE":
        row["score"] = score
    if verbose:
        row["down_scores"] = [round(s, 4) for _, s in pairs[:n_down]]
        row["label_source"] = lab_src
    if inserted and (layer, feature) in inserted:
        row["source"] = "inserted"
    return row


def _expert_hits(view: VindexView, query: np.ndarray, layers: list[int], hits: list, k: int):
    """Dense ``hits`` merged per layer with the layer's expert rows: the top ``k`` of both by
    ``|gate|`` (ties: dense first, then lower address); ``(layer, row, gate, score, expert)``."""
    from .experts import require_experts
    experts = require_experts(view, layers)
    by_layer: dict[int, list] = {}
    for h in hits:
        by_layer.setdefault(h[0], []).append((*h, None))
    out = []
    for layer in layers:
        cand = by_layer.get(layer, [])
        ex = experts.get(layer)
        if ex is not None:
            scores = ex.scores(query)
            for flat in top_by_abs(scores, k).tolist():
                e, i = ex.address(flat)
                g = float(scores[flat])
                cand.append((layer, i, g, g, e))
        cand.sort(key=lambda h: (-abs(h[2]), h[4] is not None, h[4] or 0, h[1]))
        out.extend(cand[:k])
    return out, experts


def _expert_row(ex, toks, layer, feature, expert, gate, *, mode, n_down, verbose=False):
    pairs = ex.tokens([ex.flat(expert, feature)], max(n_down, 1))[ex.flat(expert, feature)]
    down = [toks.text(i) for i, _ in pairs[:n_down]]
    row = {"layer": layer, "feature": feature, "expert": expert, "gate": gate,
           "top_token": down[0] if down else None, "down_tokens": down, "relation": None}
    if mode != "PURE":
        row["c_score"] = pairs[0][1] if pairs else None
        row["top_token_id"] = pairs[0][0] if pairs else None
    if verbose:
        row["down_scores"] = [round(s, 4) for _, s in pairs[:n_down]]
        row["label_source"] = None
    return row


def walk(view: VindexView, prompt: str, *, top: int | None = None, layers=None, mode=None,
         compare_base=None, compare: bool = False, explain: bool = False,
         verbose: bool = False, experts: bool = False, check=None) -> Result:
    """The WALK (or, with ``explain``, EXPLAIN WALK) result for ``prompt`` on ``view``.

    ``experts``: MoE layers rank their expert rows (``lql.browse.experts``) together with
    the dense features; every row then has an ``expert`` column (``None`` = dense)."""
    from ..errors import ExecutionError
    statement = "EXPLAIN WALK" if explain else "WALK"
    mode = _mode_name(mode)                    # keyword_of refuses an unknown mode
    k = int(top) if top is not None else (EXPLAIN_TOP if explain else DEFAULT_TOP)
    if k < 1:
        raise ExecutionError(f"TOP must be at least 1, got {k}")
    if experts and mode == "DENSE":
        raise ExecutionError("MODE DENSE ranks by down-meta strength, which expert rows do not have: "
                             "use MODE HYBRID or PURE with EXPERTS")
    if experts and (compare or compare_base is not None):
        raise ExecutionError("COMPARE covers the dense features (edits never change expert rows): "
                             "drop EXPERTS or COMPARE")
    layer_list = resolve_layers(view, layers)
    query, ids = query_vector(view, prompt)
    toks = tokens_of(view)
    dm = down_meta_of(view)
    labels = labels_of(view)
    inserted = inserted_features(view)
    n_down = 10 if (explain and verbose) else DOWN_SHOWN
    hits = walk_hits(view, query, layer_list, k, mode, dm, check)
    expert_layers: dict = {}
    if experts:
        hits, expert_layers = _expert_hits(view, query, layer_list, hits, k)
    rows = []
    for rank_layer, (layer, f, g, s, *rest) in _ranked(hits):
        e = rest[0] if rest else None
        if e is None:
            row = _row(view, dm, labels, toks, layer, f, g, s, mode=mode, n_down=n_down,
                       verbose=explain and verbose, inserted=inserted)
            if experts:
                row = {**{k2: v for k2, v in row.items() if k2 in ("layer", "feature")}, "expert": None,
                       **{k2: v for k2, v in row.items() if k2 not in ("layer", "feature")}}
        else:
            row = _expert_row(expert_layers[layer], toks, layer, f, e, g, mode=mode, n_down=n_down,
                              verbose=explain and verbose)
        if explain:
            row = {"layer": layer, "rank": rank_layer, **{k2: v for k2, v in row.items() if k2 != "layer"}}
        rows.append(row)
    columns = (["layer", "rank"] if explain else ["layer"]) + WALK_COLUMNS[1:]
    if experts:
        columns.insert(columns.index("feature") + 1, "expert")
    if mode != "PURE":
        columns += ["c_score"]
    if mode == "DENSE":
        columns += ["score"]
    if explain and verbose:
        columns += ["down_scores", "label_source"]
    if inserted:
        columns += ["source"]
    meta = {"prompt": prompt, "tokens": toks.texts(ids), "token": toks.text(ids[-1]),
            "token_id": ids[-1], "layers": [layer_list[0], layer_list[-1]]
            if layer_list else [], "top": k, "mode": mode,
            "query_norm": round(float(np.linalg.norm(query)), 6),
            "embed_scale": float(getattr(view, "embed_scale", 1.0) or 1.0)}
    message = None
    if experts:
        meta["expert_layers"] = sorted(expert_layers)
    elif _has_experts(view, layer_list):
        message = ("these layers also have mixture-of-experts rows, not ranked here: "
                   "add EXPERTS to rank them beside the dense features")
    if compare or compare_base is not None:
        if compare_base is None:
            message = "COMPARE: no overlay is active, so this is the base vindex's walk"
            meta["compared"] = False
        else:
            rows = _compare(rows, compare_base, query, layer_list, k, mode, view)
            columns += ["base_gate", "status"]
            meta["compared"] = True
            message = "COMPARE: patched overlay vs the overlay-free base"
    return Result.table(statement, columns, rows, message=message, **meta)


def _has_experts(view: VindexView, layers: list[int]) -> bool:
    from .experts import moe_layers
    return bool(set(moe_layers(view)) & set(layers))


def _ranked(hits):
    rank, prev = 0, None
    for h in hits:
        rank = rank + 1 if h[0] == prev else 1
        prev = h[0]
        yield rank, h


def _compare(rows, base, query, layers, k, mode, view: VindexView):
    base_hits = walk_hits(base, query, layers, k, mode)
    base_top = {(l, f): g for l, f, g, _ in base_hits}
    toks = tokens_of(view)
    dm = down_meta_of(view)
    labels = labels_of(view)
    out = []
    seen = set()
    for r in rows:
        key = (r["layer"], r["feature"])
        seen.add(key)
        if key in base_top:
            bg = base_top[key]
            status = "same" if abs(bg - r["gate"]) <= 1e-5 * max(1.0, abs(bg)) else "changed"
        else:
            bg = float(gate_scores(base, key[0], query)[key[1]]) if key[1] < base.num_features(key[0]) else None
            status = "new"
        out.append({**r, "base_gate": None if bg is None else round(bg, 6), "status": status})
    for (l, f), bg in base_top.items():
        if (l, f) in seen:
            continue
        g = float(gate_scores(view, l, query)[f])
        row = _row(view, dm, labels, toks, l, f, g, g, mode=mode, n_down=DOWN_SHOWN)
        out.append({**row, "base_gate": round(bg, 6), "status": "dropped"})
    out.sort(key=lambda r: (r["layer"], r["status"] == "dropped"))
    return out
