"""Vindex introspection: STATS, SHOW LAYERS / FEATURES / RELATIONS / ENTITIES, feature rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ast import Verbosity
from ..errors import ExecutionError
from ..result import Result
from .core import (
    DownMeta,
    band_layers,
    band_of,
    bands_of,
    check_layer,
    down_meta_of,
    keyword_of,
    resolve_layers,
)
from .labels import labels_of
from .tokens import tokens_of
from .where import check_field, row_matches

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["stats", "show_layers", "show_features", "show_relations", "show_entities",
           "feature_row", "layer_feature_rows", "entity_rows", "total_features"]

STATS_COLUMNS = ["model", "family", "num_layers", "hidden_size", "vocab_size", "features",
                 "dtype", "extract_level", "size_mb", "file_sizes_mb", "bands", "bands_derived",
                 "labels", "clusters", "patches"]
FEATURE_COLUMNS = ["layer", "feature", "target", "confidence", "relation", "gate", "down_tokens"]
FEATURE_FIELDS = ("layer", "feature", "target", "confidence", "relation", "gate")
SHOW_FEATURES_LIMIT = 50
SHOW_ENTITIES_LIMIT = 50


def total_features(view: VindexView) -> int:
    return sum(int(view.num_features(l)) for l in range(int(view.num_layers)))


def _patch_count(overlay) -> int:
    if overlay is None:
        return 0
    for name in ("stack", "patches", "applied_patches"):
        p = getattr(overlay, name, None)
        if callable(p):
            p = p()
        if p is not None:
            try:
                return len(p)
            except TypeError:
                pass
    return 0


def stats(view: VindexView, *, overlay=None) -> Result:
    sizes = {}
    fs = getattr(view, "file_sizes", None)
    if callable(fs):
        sizes = {k: round(v / (1 << 20), 2) for k, v in sorted(fs().items())}
    lab = labels_of(view)
    clusters = lab.clusters
    k = None
    if isinstance(clusters, dict):
        k = clusters.get("k", len(clusters.get("labels") or []))
    derived = getattr(view, "layer_bands_derived", None)
    if derived is None:
        from .core import bands_derived
        derived = bands_derived(view)
    row = {"model": view.model, "family": view.family, "num_layers": int(view.num_layers),
           "hidden_size": int(view.hidden_size), "vocab_size": int(view.vocab_size),
           "features": total_features(view), "dtype": view.dtype, "extract_level": view.level,
           "size_mb": round(sum(sizes.values()), 2), "file_sizes_mb": sizes,
           "bands": {b: list(r) for b, r in bands_of(view).items()},
           "bands_derived": bool(derived), "labels": len(lab.probe),
           "clusters": k, "patches": _patch_count(overlay),
           "embed_scale": float(view.embed_scale),
           "layers_present": sum(1 for l in range(int(view.num_layers))
                                 if view.num_features(l) > 0),
           "path": str(getattr(view, "path", ""))}
    extra = ["embed_scale", "layers_present", "path"]
    base = getattr(view, "base", view)
    assumed = dict(getattr(base, "assumed", None) or {})
    if assumed:                            # index.json values the reader had to assume
        row["assumed"] = ", ".join(f"{k}={v}" for k, v in assumed.items())
        extra.insert(0, "assumed")
    features_are = getattr(base, "features_are", None)
    if features_are:                       # e.g. an SVD vindex: not FFN neurons
        row["features_are"] = features_are
        extra.insert(0, "features_are")
    check_tok = getattr(base, "tokenizer_caveat", None)
    tok_note = check_tok() if callable(check_tok) else None
    if tok_note:
        row["tokenizer_size"] = int(getattr(base, "tokenizer_size", 0))
        extra.insert(0, "tokenizer_size")
    mc = dict(getattr(view, "model_config", None) or {})
    if mc.get("num_experts"):              # MoE: expert rows, addressed apart from features
        from .experts import moe_layers
        n_moe = len(moe_layers(view))
        row["expert_rows"] = {"experts": int(mc["num_experts"]), "width": int(mc.get("moe_intermediate_size") or 0),
                              "layers": n_moe,
                              "total": n_moe * int(mc["num_experts"]) * int(mc.get("moe_intermediate_size") or 0)}
        extra.insert(0, "expert_rows")
    notes = ["bands derived from the layer count (index.json has none)"] if derived else []
    if assumed:
        notes.append(f"assumed (absent from index.json, the family's defaults): {row['assumed']}")
    if features_are:
        notes.append(f"features are {features_are}")
    if tok_note:
        notes.append(tok_note)
    return Result.table("STATS", STATS_COLUMNS + extra, [row],
                        message="; ".join(notes) or None)


def show_layers(view: VindexView, layers=None) -> Result:
    lab = labels_of(view)
    per_layer = Counter(l for (l, _f) in lab.all_labelled())
    n = int(view.num_layers)
    wanted: Sequence[int]
    if layers is None:
        wanted = range(n)
    else:
        wanted = resolve_layers(view, layers) if not (hasattr(layers, "start") and
                                                       layers.start == layers.end) \
            else [check_layer(view, layers.start)]
    rows = [{"layer": l, "num_features": int(view.num_features(l)), "band": band_of(view, l),
             "labels": per_layer.get(l, 0)} for l in wanted]
    return Result.table("SHOW LAYERS", ["layer", "num_features", "band", "labels"], rows,
                        bands={b: list(r) for b, r in bands_of(view).items()})


def feature_row(view: VindexView, layer: int, feature: int, dm: DownMeta | None = None, *, gate_norms=None,
                n_down: int = 5) -> dict:
    """One feature as a row: ``layer, feature, target, confidence, relation, gate, down_tokens``.

    ``target`` = top down-meta token, ``confidence`` = its c_score (the logit of
    that token against the embedding matrix), ``gate`` = the gate vector's L2 norm.
    """
    dm = dm or down_meta_of(view)
    n = int(view.num_features(layer))
    if not 0 <= feature < n:
        raise ExecutionError(f"feature {feature} is out of range: layer {layer} has features "
                             f"0-{n - 1}")
    toks = tokens_of(view)
    pairs = dm.tokens(layer, feature, n_down)
    lab, src = labels_of(view).get(layer, feature)
    if gate_norms is None:
        g = float(np.linalg.norm(view.gate(layer)[feature]))
    else:
        g = float(gate_norms[feature])
    return {"layer": layer, "feature": feature,
            "target": toks.text(pairs[0][0]) if pairs else None,
            "confidence": round(pairs[0][1], 6) if pairs else None,
            "relation": lab, "gate": round(g, 6),
            "down_tokens": [toks.text(i) for i, _ in pairs], "label_source": src}


def layer_feature_rows(view: VindexView, layer: int, dm: DownMeta | None = None):
    """Every feature of ``layer`` as a :func:`feature_row` (generator)."""
    dm = dm or down_meta_of(view)
    norms = np.linalg.norm(view.gate(layer), axis=1)
    for f in range(int(view.num_features(layer))):
        yield feature_row(view, layer, f, dm, gate_norms=norms)


def show_features(view: VindexView, layer: int, where=(), limit: int | None = None) -> Result:
    layer = check_layer(view, int(layer))
    for c in where:
        check_field(c.field, FEATURE_FIELDS)
    lim = SHOW_FEATURES_LIMIT if limit is None else int(limit)
    rows: list[dict] = []
    total = 0
    for row in layer_feature_rows(view, layer):
        if where and not row_matches(row, where):
            continue
        total += 1
        if len(rows) < lim:
            rows.append(row)
    msg = None
    if total > len(rows) and limit is None:
        msg = f"showing {len(rows)} of {total} features (add LIMIT n for more)"
    return Result.table("SHOW FEATURES", FEATURE_COLUMNS, rows, message=msg, layer=layer,
                        total=total)


def entity_rows(view: VindexView, layers: list[int], check=None) -> list[dict]:
    """The entities of ``layers``: distinct non-noise top tokens of their features.

    Per entity: ``count`` of features whose top token it is, ``layer`` / ``feature``
    of the strongest (best c_score), ``layer_min`` / ``layer_max``.
    """
    toks = tokens_of(view)
    dm = down_meta_of(view)
    agg: dict[str, dict] = {}
    for layer in layers:
        if check is not None:
            check()
        ids, sc = dm.layer(layer)
        has = sc.any(axis=1) | ids.any(axis=1)
        for f in np.nonzero(has)[0].tolist():
            tid = int(ids[f, 0])
            if toks.is_noise(tid):
                continue
            text = toks.text(tid)
            key = text.strip()
            c = float(sc[f, 0])
            e = agg.get(key)
            if e is None:
                agg[key] = {"entity": text, "count": 1, "layer": layer, "feature": f,
                            "confidence": round(c, 6), "layer_min": layer, "layer_max": layer,
                            "token_id": tid}
            else:
                e["count"] += 1
                e["layer_min"] = min(e["layer_min"], layer)
                e["layer_max"] = max(e["layer_max"], layer)
                if c > e["confidence"]:
                    e.update(layer=layer, feature=f, confidence=round(c, 6))
    return sorted(agg.values(), key=lambda e: (-e["count"], -e["confidence"], e["entity"]))


def show_entities(view: VindexView, layer: int | None = None, limit: int | None = None, check=None) -> Result:
    if layer is not None:
        layers = [check_layer(view, int(layer))]
        scope = f"layer {layers[0]}"
    else:
        layers = band_layers(view, "knowledge")
        lo, hi = bands_of(view)["knowledge"]
        scope = f"knowledge band L{lo}-{hi}"
    rows = entity_rows(view, layers, check)
    lim = SHOW_ENTITIES_LIMIT if limit is None else int(limit)
    return Result.table("SHOW ENTITIES", ["entity", "count", "layer_min", "layer_max",
                                          "confidence", "layer", "feature"], rows[:lim],
                        scope=scope, total=len(rows),
                        message=f"{min(lim, len(rows))} of {len(rows)} entities in the {scope} "
                                f"(tokens that features push, by number of features)")


def show_relations(view: VindexView, layer: int | None = None, with_examples: bool = False,
                   verbosity=None) -> Result:
    lab = labels_of(view)
    verb = keyword_of(verbosity, Verbosity, Verbosity.BRIEF).value
    if layer is not None:
        layer = check_layer(view, int(layer))
    if not lab:
        return Result.table("SHOW RELATIONS", ["relation", "source", "count", "layer_min",
                                               "layer_max", "examples"], [],
                            message="this vindex has no relation labels: no feature_labels.json "
                                    "(probe labels) and no relation_clusters.json (clusters)",
                            labels=0, clusters=0)
    toks = tokens_of(view)
    dm = down_meta_of(view)
    groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for (l, f), (name, src) in sorted(lab.all_labelled().items()):
        if layer is not None and l != layer:
            continue
        groups.setdefault((name, src), []).append((l, f))
    rows: list[dict[str, Any]] = []
    for (name, src), feats in groups.items():
        row = {"relation": name, "source": src, "count": len(feats),
               "layer_min": min(l for l, _ in feats), "layer_max": max(l for l, _ in feats)}
        if with_examples or verb == "VERBOSE":
            ex = []
            for l, f in feats:
                if l < int(view.num_layers) and f < int(view.num_features(l)):
                    tid = dm.top_id(l, f)
                    if tid is not None and toks.text(tid) not in ex:
                        ex.append(toks.text(tid))
                if len(ex) >= 5:
                    break
            row["examples"] = ex
        if verb == "VERBOSE":
            row["features"] = [f"L{l}:{f}" for l, f in feats[:10]]
        rows.append(row)
    clusters = lab.clusters
    if isinstance(clusters, dict) and layer is None:
        labels_ = clusters.get("labels") or []
        counts = clusters.get("counts") or []
        tops = clusters.get("top_tokens") or []
        have = {r["relation"] for r in rows if r["source"] == "cluster"}
        for i, name in enumerate(labels_):
            if name in have:
                continue
            row = {"relation": name, "source": "cluster",
                   "count": counts[i] if i < len(counts) else None,
                   "layer_min": None, "layer_max": None}
            if with_examples or verb == "VERBOSE":
                row["examples"] = list(tops[i])[:5] if i < len(tops) else []
            rows.append(row)
    rows.sort(key=lambda r: (r["source"] != "probe", -(r["count"] or 0), str(r["relation"])))
    if verb == "RAW":
        for r in rows:
            r.pop("examples", None)
    cols = ["relation", "source", "count", "layer_min", "layer_max"]
    if with_examples or verb == "VERBOSE":
        cols.append("examples")
    if verb == "VERBOSE":
        cols.append("features")
    return Result.table("SHOW RELATIONS", cols, rows, labels=len(lab.probe),
                        clusters=len((clusters or {}).get("labels") or []) if isinstance(clusters, dict) else 0,
                        verbosity=verb.lower())
