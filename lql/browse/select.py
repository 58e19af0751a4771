"""SELECT over EDGES / FEATURES / ENTITIES.

* ``FROM EDGES WHERE entity = "France"`` (or ``entity IN (...)``): the entity's
  DESCRIBE edges (knowledge band; with ``layer`` conditions, the layers that
  satisfy them), one row per merged edge: ``layer`` / ``feature`` are the
  strongest hit's, ``gate`` its score, ``confidence`` its c_score.
* ``NEAREST TO <entity> AT LAYER <n>``: every feature of layer n ranked by the
  cosine between its gate vector and the entity's query;
  ``distance = 1 − cosine``, ``gate`` = the dot product.
* ``WHERE layer = L AND feature = F``: that feature; ``WHERE relation = ...``:
  the labelled features; anything else scans the features of the layers the
  ``layer`` conditions allow (all layers without one). Feature-as-edge rows:
  ``target`` = top down-meta token, ``confidence`` = its c_score, ``gate`` =
  the gate vector's L2 norm, ``entity`` empty.
* ``FROM FEATURES``: the same feature rows. ``FROM ENTITIES``: the distinct
  non-noise top tokens of the features (``lql.browse.info.entity_rows``).

Without ORDER BY rows keep their natural order (edges: score; nearest:
distance; scans: layer, feature). A scan without LIMIT stops at
:data:`SCAN_LIMIT` rows and says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..ast import SelectSource
from ..errors import ExecutionError
from ..result import Result
from .core import band_layers, check_layer, down_meta_of, entity_query, keyword_of, top_by_abs
from .describe import describe_edges, edge_row
from .info import entity_rows, feature_row, layer_feature_rows
from .labels import labels_of
from .where import check_field, matches, row_matches

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["select", "SCAN_LIMIT"]

SCAN_LIMIT = 1000
NEAREST_LIMIT = 20
DEFAULT_COLUMNS = {
    "EDGES": ["entity", "relation", "target", "layer", "feature", "confidence", "gate"],
    "FEATURES": ["layer", "feature", "target", "relation", "confidence", "gate"],
    "ENTITIES": ["entity", "layer", "feature", "confidence", "count"],
    "EXPERTS": ["layer", "expert", "feature", "target", "confidence", "gate"],
}


def _src(source: SelectSource | str) -> str:
    return keyword_of(source, SelectSource, SelectSource.EDGES).value


def _split(where, field):
    mine = [c for c in where if c.field.lower() == field]
    rest = [c for c in where if c.field.lower() != field]
    return mine, rest


def _layers_for(view: VindexView, layer_conds) -> list[int]:
    n = int(view.num_layers)
    for c in layer_conds:                     # a single "layer = L" must be a real layer
        if c.op == "=":
            check_layer(view, c.value) if isinstance(c.value, int) else None
    return [l for l in range(n) if view.num_features(l) > 0
            and all(matches("layer", c.op, c.value, l) for c in layer_conds)]


def _entities(conds) -> list[str]:
    names = []
    for c in conds:
        if c.op == "=":
            names.append(str(c.value))
        elif c.op == "IN":
            vals = c.value if isinstance(c.value, (tuple, list)) else (c.value,)
            names.extend(str(v) for v in vals)
        else:
            raise ExecutionError(f"entity takes = or IN (got {c.op}): e.g. WHERE entity = \"France\"")
    return names


def _edge_rows(view: VindexView, entity: str, layer_conds, check) -> list[dict]:
    query, ids = entity_query(view, entity)
    if query is None:
        return []
    layers = _layers_for(view, layer_conds) if layer_conds else band_layers(view, "knowledge")
    edges = describe_edges(view, ids, entity, layers, lambda _l: query, check=check)
    rows = []
    for e in edges:
        r = edge_row(e, None)
        rows.append({"entity": entity, "relation": r["relation"], "target": r["target"],
                     "layer": r["layer"], "feature": r["feature"], "confidence": r["confidence"],
                     "gate": r["gate"], "distance": None, "layer_min": r["layer_min"],
                     "layer_max": r["layer_max"], "count": r["count"], "also": r["also"],
                     "source": r["source"]})
    return rows


def _knn_rows(view: VindexView, where) -> list[dict]:
    """The overlay's KNN entries as edge rows (they are edges without a feature slot)."""
    fn = getattr(view, "inserted_edges", None)
    rows = []
    for e in (fn() if fn is not None else []):
        if e.get("mode") != "knn":
            continue
        r = {"entity": e["entity"], "relation": e["relation"], "target": e["target"],
             "layer": e["layer"], "feature": None, "confidence": e["confidence"], "gate": None,
             "distance": None, "source": "inserted (knn)"}
        if row_matches(r, where):
            rows.append(r)
    return rows


def _nearest_rows(view: VindexView, entity: str, layer: int) -> list[dict]:
    layer = check_layer(view, int(layer))
    query, _ids = entity_query(view, entity)
    if query is None:
        raise ExecutionError(f"NEAREST TO {entity!r}: the entity does not tokenize")
    g = view.gate(layer)
    dots = g @ query
    norms = np.linalg.norm(g, axis=1) * float(np.linalg.norm(query))
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    order = np.lexsort((np.arange(cos.size), -cos))
    dm = down_meta_of(view)
    return [_nearest_row(view, layer, f, float(cos[f]), float(dots[f]), dm, entity)
            for f in order.tolist()]


def _nearest_row(view: VindexView, layer, f, cos, dot, dm, entity):
    from .tokens import tokens_of
    toks = tokens_of(view)
    pairs = dm.tokens(layer, f, 1)
    lab = labels_of(view).label(layer, f)
    return {"entity": entity, "relation": lab,
            "target": toks.text(pairs[0][0]) if pairs else None, "layer": layer, "feature": f,
            "confidence": round(pairs[0][1], 6) if pairs else None, "gate": round(dot, 6),
            "distance": round(1.0 - cos, 6)}


def _feature_scan(view: VindexView, where, check):
    layer_conds, rest = _split(where, "layer")
    feat_conds = [c for c in rest if c.field.lower() == "feature"]
    rel_conds = [c for c in rest if c.field.lower() == "relation"]
    layers = _layers_for(view, layer_conds)
    dm = down_meta_of(view)
    direct = [c for c in feat_conds if c.op in ("=", "IN")]
    if direct:                                   # addressed features: no full scan
        feats = set()
        c = direct[0]
        vals = c.value if c.op == "IN" else (c.value,)
        for l in layers:
            n = int(view.num_features(l))
            for f in vals:
                if not isinstance(f, int):
                    raise ExecutionError(f"feature is a number, not {f!r}")
                if len(layers) == 1 and not 0 <= f < n:
                    raise ExecutionError(f"feature {f} is out of range: layer {l} has features "
                                         f"0-{n - 1}")
                if 0 <= f < n:
                    feats.add((l, f))
        for l, f in sorted(feats):
            yield feature_row(view, l, f, dm)
        return
    if rel_conds:                                # labelled features only
        lab = labels_of(view)
        set_layers = set(layers)
        for (l, f), (_name, _src) in sorted(lab.all_labelled().items()):
            if l in set_layers and f < int(view.num_features(l)):
                yield feature_row(view, l, f, dm)
        return
    for l in layers:
        if check is not None:
            check()
        yield from layer_feature_rows(view, l, dm)


CARRIER_LIMIT = 20


def _target_carriers(view: VindexView, where, check) -> list[dict] | None:
    """``FROM FEATURES WHERE target = X`` (or ``IN``): the features whose down vector pushes X.

    A feature's stored ``target`` is its top down-meta token, and on a trained model almost
    no feature's top token is a content word like " Paris" (the projections are topped by
    generic tokens), so a literal match finds nothing.  Instead, with the weights (an
    INFERENCE vindex) every feature of the allowed layers is scored by
    ``down · (u(X) − mean u)`` (u: the unembedding rows ⊙ the final-norm weight, centred on
    the vocabulary's mean — the direction only X has): the largest ``|score|`` first
    (a negative score pushes X when the feature's activation is negative); on a BROWSE
    vindex, the features whose stored down-meta tokens (any of the top-k) include X.
    X is the word-initial token (" Paris") when the vocabulary has one, else the bare one.
    Rows: ``target`` = X, ``confidence`` = the score (BROWSE: that token's down-meta
    score), ``down_tokens`` the feature's own top tokens.  ``None``: not this query."""
    conds = [c for c in where if c.field.lower() == "target" and c.op in ("=", "IN")]
    others = [c for c in where if c.field.lower() not in ("target", "layer")]
    if not conds or others:
        return None
    c = conds[0]
    vals = c.value if c.op == "IN" else (c.value,)
    from .tokens import tokens_of
    toks = tokens_of(view)
    tok = view.tokenizer
    wanted: dict[int, str] = {}
    for v in vals:
        for text in (" " + str(v).strip(), str(v).strip()):
            ids = tok.encode(text, add_special_tokens=False).ids
            if len(ids) == 1 and toks.text(ids[0]).strip() == str(v).strip():
                wanted.setdefault(int(ids[0]), toks.text(ids[0]))
                break                        # the word-initial token when there is one
    if not wanted:
        return []
    layer_conds, _ = _split(where, "layer")
    layers = _layers_for(view, layer_conds)
    dm = down_meta_of(view)
    from ..runtime import can_forward
    rows = []
    if can_forward(view):
        from ..infer.attribution import centred_direction, down_columns
        from ..runtime import model_for
        model = model_for(view)
        for tid, text in wanted.items():
            d = centred_direction(model, view.model_config, tid)
            for l in layers:
                if check is not None:
                    check()
                cols = down_columns(model, l)
                if cols is None:
                    continue
                sc = d @ cols
                for f in top_by_abs(sc, CARRIER_LIMIT).tolist():
                    rows.append((abs(float(sc[f])), l, int(f), text, float(sc[f])))
    else:
        for tid, text in wanted.items():
            for l in layers:
                ids, sc = dm.layer(l)
                hit = np.nonzero(ids == tid)
                for f, k in zip(*hit):
                    rows.append((float(sc[f, k]), l, int(f), text, float(sc[f, k])))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    out = []
    for _a, l, f, text, score in rows:
        r = feature_row(view, l, f, dm)
        r.update({"target": text, "confidence": round(score, 6), "entity": None,
                  "distance": None})
        out.append(r)
    return out


def _addressed(conds, name: str) -> list[int] | None:
    """The values an ``=`` / ``IN`` condition on ``name`` pins (``None``: not pinned)."""
    for c in conds:
        if c.field.lower() == name and c.op in ("=", "IN"):
            vals = c.value if c.op == "IN" else (c.value,)
            for v in vals:
                if not isinstance(v, int) or isinstance(v, bool):
                    raise ExecutionError(f"{name} is a number, not {v!r}")
            return [int(v) for v in vals]
    return None


def _expert_scan(view: VindexView, where, check):
    """Expert rows (``lql.browse.experts``) of the MoE layers the ``layer`` conditions allow:
    ``layer, expert, feature, target, confidence, gate`` (the gate row's L2 norm),
    ``down_tokens``; ``expert`` / ``feature`` conditions with ``=`` / ``IN`` narrow the scan
    before any output token is computed."""
    from .experts import moe_layers, require_experts
    from .tokens import tokens_of
    layer_conds, rest = _split(where, "layer")
    layers = [l for l in _layers_for(view, layer_conds) if l in set(moe_layers(view))]
    experts = require_experts(view, layers)
    want_e, want_f = _addressed(rest, "expert"), _addressed(rest, "feature")
    toks = tokens_of(view)
    for l in layers:
        ex = experts[l]
        for e in (want_e if want_e is not None else range(ex.num_experts)):
            if not 0 <= e < ex.num_experts:
                if want_e is not None and len(layers) == 1:
                    raise ExecutionError(f"expert {e} is out of range: layer {l} has experts "
                                         f"0-{ex.num_experts - 1}")
                continue
            if check is not None:
                check()
            rows_i = [i for i in (want_f if want_f is not None else range(ex.width)) if 0 <= i < ex.width]
            norms = ex.gate_norms(e)
            tokens = ex.tokens([ex.flat(e, i) for i in rows_i], 5)
            for i in rows_i:
                pairs = tokens[ex.flat(e, i)]
                yield {"layer": l, "expert": e, "feature": i,
                       "target": toks.text(pairs[0][0]) if pairs else None,
                       "confidence": round(pairs[0][1], 6) if pairs else None,
                       "relation": None, "gate": round(float(norms[i]), 6),
                       "down_tokens": [toks.text(t) for t, _ in pairs]}


def select(view: VindexView, source, *, fields=None, nearest=None, where=(), order_by=None,
           limit: int | None = None, check=None) -> Result:
    src = _src(source)
    if src not in DEFAULT_COLUMNS:
        raise ExecutionError(f"unknown source {src!r}; SELECT FROM EDGES, FEATURES, ENTITIES or EXPERTS")
    if src == "EXPERTS" and nearest is not None:
        raise ExecutionError("NEAREST TO ranks dense features: use SELECT ... FROM FEATURES NEAREST TO ...")
    where = tuple(where or ())
    for c in where:
        check_field(c.field)
    cols = list(DEFAULT_COLUMNS[src]) if fields is None else [check_field(f) for f in fields]
    if fields is None and nearest is not None:
        cols.append("distance")
    if order_by is not None:
        check_field(order_by.field)
    message = None
    capped = False
    if nearest is not None:
        rows = _nearest_rows(view, nearest.entity, nearest.layer)
        if src == "FEATURES":
            for r in rows:
                r["entity"] = None
        elif src == "ENTITIES":
            seen, ent = set(), []            # the nearest features' targets, once each
            for r in rows:
                t = r["target"]
                if t is None or t.strip() in seen:
                    continue
                seen.add(t.strip())
                ent.append({**r, "entity": t})
            rows = ent
        rows = [r for r in rows if row_matches(r, where)]
        default_limit = NEAREST_LIMIT
    elif src == "ENTITIES":
        layer_conds, _ = _split(where, "layer")
        layers = _layers_for(view, layer_conds) if layer_conds else band_layers(view, "knowledge")
        rows = [r for r in entity_rows(view, layers, check) if row_matches(r, where)]
        default_limit = SCAN_LIMIT
    else:
        ent_conds, rest = _split(where, "entity")
        if ent_conds and src == "EDGES":
            layer_conds, _ = _split(rest, "layer")
            rows = []
            for name in _entities(ent_conds):
                rows.extend(_edge_rows(view, name, layer_conds, check))
            rows = [r for r in rows if row_matches(r, rest)] + _knn_rows(view, where)
            default_limit = None
        else:
            if ent_conds:                        # FROM FEATURES has no entity
                rows = []
            else:
                rows = []
                want = limit if (limit is not None and order_by is None) else None
                carried = _target_carriers(view, where, check) if src == "FEATURES" else None
                scan = _expert_scan if src == "EXPERTS" else _feature_scan
                for r in (carried if carried is not None else scan(view, where, check)):
                    if not row_matches(r, where):
                        continue
                    r["entity"] = None
                    r["distance"] = None
                    rows.append(r)
                    if want is not None and len(rows) >= want:
                        break
                    if want is None and order_by is None and limit is None \
                            and len(rows) > SCAN_LIMIT:
                        capped = True
                        rows = rows[:SCAN_LIMIT]
                        break
                if src == "EDGES":
                    rows += _knn_rows(view, where)
            default_limit = None
    if order_by is not None:
        key = order_by.field.lower()
        present = [r for r in rows if r.get(key) is not None]
        missing = [r for r in rows if r.get(key) is None]
        present.sort(key=lambda r: _sort_key(r[key]), reverse=bool(order_by.descending))
        rows = present + missing
    lim = limit if limit is not None else default_limit
    total = len(rows)
    if lim is not None:
        rows = rows[:int(lim)]
    if capped:
        message = f"stopped after {SCAN_LIMIT} rows (add LIMIT n or narrower WHERE conditions)"
    elif lim is not None and total > len(rows) and limit is None:
        message = f"showing {len(rows)} of {total} rows (add LIMIT n for more)"
    out = [{c: r.get(c) for c in cols} | ({} if fields is not None else _extras(r, src))
           for r in rows]
    if not out and message is None:
        message = "(no rows)"
    return Result.table("SELECT", cols, out, message=message, source=src)


def _extras(r, src):
    if src == "EDGES" and "layer_min" in r:
        return {k: r[k] for k in ("layer_min", "layer_max", "count", "also", "source") if k in r}
    return {}


def _sort_key(v):
    if isinstance(v, str):
        return (1, v.strip().casefold())
    return (0, v)
