"""LARQL's ``/v1`` API as LQL: each endpoint's parameters become one LQL statement, and
the statement's :class:`~lql.result.Result` becomes the JSON LARQL's handler returns.

Nothing here computes what the executor computes: the functions named ``*_lql`` only
write statement text, and the ``*_json`` ones only rename and round fields of the result
rows (LARQL rounds gate scores to 0.1 and probabilities to 1e-4), trim token text as
LARQL does, and apply the two LARQL filters our statements have no clause for
(DESCRIBE's ``min_score`` and ``limit``, WALK's ``layers=a,b,c`` list).

The shapes follow ``crates/larql-server/src/routes/*.rs`` of LARQL (Divinci-AI/larql;
file and line references in docs/SERVER.md).
"""

from __future__ import annotations

from typing import Any

from ..ast import quote
from ..result import Result
from .guard import GuardError

__all__ = ["walk_lql", "walk_json", "describe_lql", "describe_json", "select_lql",
           "select_json", "relations_json", "stats_json", "infer_lql", "infer_json",
           "explain_lql", "explain_json", "insert_lql", "insert_json", "parse_layers",
           "patches_json"]


def _r1(x: Any) -> float | None:
    return None if x is None else round(float(x) * 10.0) / 10.0


def _r4(x: Any) -> float | None:
    return None if x is None else round(float(x) * 10000.0) / 10000.0


def _trim(tok: Any) -> str:
    return "" if tok is None else str(tok).strip()


# ------------------------------------------------------------------ params
def _int(params: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name, default)
    if isinstance(raw, bool):
        raise GuardError(400, f"{name!r} must be an integer")
    try:
        v = int(raw)
    except (TypeError, ValueError):
        raise GuardError(400, f"{name!r} must be an integer, not {raw!r}"[:200]) from None
    if not lo <= v <= hi:
        raise GuardError(400, f"{name!r} must be between {lo} and {hi} (got {v})")
    return v


def _float(params: dict[str, Any], name: str, default: float | None) -> float | None:
    raw = params.get(name, default)
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise GuardError(400, f"{name!r} must be a number")
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise GuardError(400, f"{name!r} must be a number, not {raw!r}"[:200]) from None
    if v != v or v in (float("inf"), float("-inf")):
        raise GuardError(400, f"{name!r} must be a finite number")
    return v


def _str(params: dict[str, Any], name: str, *, required: bool = True,
         default: str | None = None, max_len: int = 4096) -> str | None:
    raw = params.get(name, default)
    if raw is None:
        if required:
            raise GuardError(400, f"missing field {name!r}")
        return None
    if not isinstance(raw, str):
        raise GuardError(400, f"{name!r} must be a string")
    if len(raw) > max_len:
        raise GuardError(413, f"{name!r} is {len(raw)} characters; the limit is {max_len}")
    if "\x00" in raw:
        raise GuardError(400, f"{name!r} holds a NUL character")
    return raw


def _bool(params: dict[str, Any], name: str) -> bool:
    raw = params.get(name, False)
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "false", "0", "no", ""):
        return raw.lower() in ("true", "1", "yes")
    raise GuardError(400, f"{name!r} must be true or false")


def parse_layers(text: str, num_layers: int) -> list[int]:
    """LARQL's ``layers`` parameter: ``a-b`` (inclusive) or ``a,b,c`` (walk.rs parse_layers);
    layers the vindex lacks are dropped, as LARQL does."""
    s = text.strip()
    if "-" in s:
        a, _, b = s.partition("-")
        if a.strip().isdigit() and b.strip().isdigit():
            return [l for l in range(int(a), int(b) + 1) if l < num_layers]
    out = []
    for part in s.split(","):
        p = part.strip()
        if p.isdigit() and int(p) < num_layers:
            out.append(int(p))
    return out


# ------------------------------------------------------------------ walk
def walk_lql(params: dict[str, Any], num_layers: int, max_top: int) -> tuple[str, set[int] | None]:
    prompt = _str(params, "prompt")
    if not prompt:
        raise GuardError(400, "empty prompt")
    top = _int(params, "top", 5, 1, max_top)
    text = f"WALK {quote(prompt)} TOP {top}"
    layers = params.get("layers")
    keep: set[int] | None = None
    if layers is not None:
        chosen = parse_layers(str(layers), num_layers)
        if not chosen:
            return "", set()                 # LARQL walks no layer: no hits
        text += f" LAYERS {min(chosen)}-{max(chosen)}" if len(chosen) > 1 else \
            f" LAYERS {chosen[0]}"
        keep = set(chosen)
    return text, keep


def walk_json(prompt: str, r: Result | None, keep: set[int] | None, ms: float) -> dict[str, Any]:
    hits = []
    for row in (r.rows if r is not None else []):
        if keep is not None and row.get("layer") not in keep:
            continue
        h: dict[str, Any] = {"layer": row.get("layer"), "feature": row.get("feature"),
                             "gate_score": _r1(row.get("gate")),
                             "target": _trim(row.get("top_token"))}
        if row.get("relation"):
            h["relation"] = row["relation"]
        hits.append(h)
    return {"prompt": prompt, "hits": hits, "latency_ms": _r1(ms)}


# ------------------------------------------------------------------ describe
_BANDS = {"knowledge": "KNOWLEDGE", "syntax": "SYNTAX", "output": "OUTPUT", "all": "ALL LAYERS"}


def describe_lql(params: dict[str, Any], max_limit: int) -> tuple[str, dict[str, Any]]:
    entity = _str(params, "entity", max_len=512)
    band = str(params.get("band", "knowledge")).lower()
    clause = _BANDS.get(band, "ALL LAYERS")          # LARQL: any other band scans all layers
    verbose = _bool(params, "verbose")
    opts = {"entity": entity, "verbose": verbose,
            "limit": _int(params, "limit", 20, 0, max_limit),
            "min_score": _float(params, "min_score", 5.0)}
    return f"DESCRIBE {quote(entity or '')} {clause} VERBOSE", opts


def describe_json(r: Result, opts: dict[str, Any], model: str | None, ms: float
                  ) -> dict[str, Any]:
    edges = []
    rows = [row for row in r.rows if (row.get("gate") or 0.0) >= (opts["min_score"] or 0.0)]
    rows.sort(key=lambda row: -(row.get("gate") or 0.0))
    for row in rows[: opts["limit"]]:
        e: dict[str, Any] = {"target": _trim(row.get("target")), "gate_score": _r1(row.get("gate")),
                             "layer": row.get("layer")}
        if row.get("relation"):
            e["relation"] = row["relation"]
            e["source"] = row.get("source") or "probe"
        if opts["verbose"]:
            e["layer_max"] = row.get("layer_max")
            e["layer_min"] = row.get("layer_min")
            e["count"] = row.get("count")
        also = [_trim(a) for a in row.get("also") or []]
        if also:
            e["also"] = also
        edges.append(e)
    return {"entity": opts["entity"], "model": model, "edges": edges, "latency_ms": _r1(ms)}


# ------------------------------------------------------------------ select
def select_lql(body: dict[str, Any], max_limit: int) -> str:
    conds = []
    entity = _str(body, "entity", required=False, max_len=512)
    relation = _str(body, "relation", required=False, max_len=512)
    if entity is not None:
        conds.append(f"entity = {quote(entity)}")
    if relation is not None:
        conds.append(f"relation LIKE {quote('%' + relation + '%')}")
    if body.get("layer") is not None:
        conds.append(f"layer = {_int(body, 'layer', 0, 0, 1 << 20)}")
    minc = _float(body, "min_confidence", None)
    if minc is not None:
        conds.append(f"confidence >= {minc!r}")
    limit = _int(body, "limit", 20, 0, max_limit)
    order = str(body.get("order", "desc")).lower()
    if order not in ("asc", "desc"):
        raise GuardError(400, "'order' must be \"asc\" or \"desc\"")
    by = body.get("order_by")
    col = "layer" if by == "layer" else "confidence"
    direction = order.upper() if by in ("layer", "gate_score", "confidence", "c_score") else "DESC"
    text = "SELECT * FROM EDGES"
    if conds:
        text += " WHERE " + " AND ".join(conds)
    return text + f" ORDER BY {col} {direction} LIMIT {limit}"


def select_json(r: Result, ms: float) -> dict[str, Any]:
    edges = []
    for row in r.rows:
        e: dict[str, Any] = {"layer": row.get("layer"), "feature": row.get("feature"),
                             "target": _trim(row.get("target")), "c_score": row.get("confidence")}
        if row.get("relation"):
            e["relation"] = row["relation"]
        edges.append(e)
    return {"edges": edges, "total": len(edges), "latency_ms": _r1(ms)}


# ------------------------------------------------------------------ relations / stats
def relations_json(r: Result, ms: float) -> dict[str, Any]:
    relations, probes = [], []
    for row in r.rows:
        relations.append({"name": row.get("relation"), "count": row.get("count"),
                          "max_score": row.get("max_score"), "min_layer": row.get("layer_min"),
                          "max_layer": row.get("layer_max"),
                          "examples": [_trim(x) for x in row.get("examples") or []]})
        if row.get("source") == "probe":
            probes.append({"name": row.get("relation"), "count": row.get("count")})
    return {"relations": relations, "probe_relations": probes,
            "probe_count": int(r.meta.get("labels") or 0), "total": len(relations),
            "latency_ms": _r1(ms)}


def stats_json(r: Result, has_weights: bool) -> dict[str, Any]:
    row = r.rows[0] if r.rows else {}
    bands = row.get("bands")
    n = row.get("num_layers") or 0
    feats = row.get("features") or 0
    level = str(row.get("extract_level") or "")
    inference = level in ("inference", "all") or has_weights
    return {"model": row.get("model"), "family": row.get("family"), "mode": "full",
            "layers": n, "features": feats,
            "features_per_layer": (feats // n) if n else 0,
            "hidden_size": row.get("hidden_size"), "vocab_size": row.get("vocab_size"),
            "extract_level": level, "dtype": row.get("dtype"),
            "layer_bands": ({k: list(v) for k, v in bands.items()} if isinstance(bands, dict)
                            else None),
            "loaded": {"browse": True, "inference": inference, "ffn_service": False,
                       "embed_service": False}}


def patches_json(r: Result, names: dict[str, str]) -> list[dict[str, Any]]:
    """SHOW PATCHES rows as LARQL's list (``names``: our file name -> the LARQL name)."""
    return [{"name": names.get(str(row.get("patch")), row.get("patch")),
             "operations": row.get("operations"), "base_model": row.get("base_model")}
            for row in r.rows]


# ------------------------------------------------------------------ infer / explain
def _chat_clause(body: dict[str, Any]) -> str:
    chat = str(body.get("chat", "AUTO")).upper()
    if chat not in ("AUTO", "ON", "OFF"):
        raise GuardError(400, '"chat" must be "AUTO", "ON" or "OFF"')
    return {"AUTO": "", "ON": " CHAT", "OFF": " RAW"}[chat]


def infer_lql(body: dict[str, Any], max_top: int) -> tuple[str, str]:
    prompt = _str(body, "prompt")
    if not prompt:
        raise GuardError(400, "empty prompt")
    top = _int(body, "top", 5, 1, max_top)
    mode = str(body.get("mode", "walk"))
    if mode not in ("walk", "dense", "compare"):
        raise GuardError(400, "'mode' must be \"walk\", \"dense\" or \"compare\"")
    text = f"INFER {quote(prompt)} TOP {top}" + _chat_clause(body)
    if mode != "walk":
        text += " COMPARE"
    return text, mode


def _preds(rows: list[dict[str, Any]], prefix: str = "") -> list[dict[str, Any]]:
    return [{"token": row.get(prefix + "token"), "probability": _r4(row.get(prefix + "probability"))}
            for row in rows if row.get(prefix + "token") is not None]


def infer_json(prompt: str, mode: str, r: Result, ms: float) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": prompt}
    if mode == "compare":
        out.update(walk=_preds(r.rows), walk_ms=None, dense=_preds(r.rows, "dense_"),
                   dense_ms=None)
    elif mode == "dense":
        out.update(predictions=_preds(r.rows, "dense_"), mode="dense")
    else:
        out.update(predictions=_preds(r.rows), mode="walk")
    out["latency_ms"] = _r1(ms)
    return out


def explain_lql(body: dict[str, Any], bands: dict[str, Any] | None, max_top: int
                ) -> tuple[str, dict[str, Any]]:
    prompt = _str(body, "prompt")
    if not prompt:
        raise GuardError(400, "empty prompt")
    top = _int(body, "top", 5, 1, max_top)
    opts = {"prompt": prompt, "per_layer": _int(body, "per_layer", 3, 0, 1000),
            "relations_only": _bool(body, "relations_only")}
    text = f"EXPLAIN INFER {quote(prompt)} TOP {top}"
    band = str(body.get("band", "all")).lower()
    if band in ("syntax", "knowledge", "output") and bands and band in bands:
        lo, hi = bands[band]
        text += f" LAYERS {lo}-{hi}"
    if _bool(body, "with_attention"):
        text += " WITH ATTENTION"
    return text + _chat_clause(body), opts


def explain_json(r: Result, opts: dict[str, Any], ms: float) -> dict[str, Any]:
    layers: dict[int, dict[str, Any]] = {}
    for row in r.rows:
        layer = row.get("layer")
        if not isinstance(layer, int):
            continue
        obj = layers.setdefault(layer, {"layer": layer, "features": []})
        kind = row.get("kind")
        if kind == "ffn":
            if opts["relations_only"] and not row.get("label"):
                continue
            if len(obj["features"]) >= opts["per_layer"]:
                continue
            obj["features"].append({
                "feature": row.get("feature"), "gate_score": _r1(row.get("activation")),
                "top_token": _trim(row.get("top_token")),
                "top_tokens": [_trim(t) for t in (row.get("down_tokens") or [])[:3]],
                "relation": row.get("label")})
        elif kind == "attention":
            att = obj.setdefault("attention", [])
            if len(att) < 3:
                att.append({"token": _trim(row.get("attended_token")),
                            "weight": round(float(row.get("attention") or 0.0) * 1000) / 1000})
    trace = [obj for _, obj in sorted(layers.items()) if obj["features"]]
    preds = r.meta.get("prediction") or []
    return {"prompt": opts["prompt"], "predictions": _preds(list(preds)), "trace": trace,
            "latency_ms": _r1(ms)}


# ------------------------------------------------------------------ insert
def insert_lql(body: dict[str, Any]) -> str:
    e = _str(body, "entity", max_len=512)
    rel = _str(body, "relation", max_len=512)
    t = _str(body, "target", max_len=512)
    text = f"INSERT INTO EDGES (entity, relation, target) VALUES ({quote(e or '')}, " \
           f"{quote(rel or '')}, {quote(t or '')})"
    if body.get("layer") is not None:
        text += f" AT LAYER {_int(body, 'layer', 0, 0, 1 << 20)}"
    text += f" ALPHA {_float(body, 'alpha', 0.25)!r} CONFIDENCE {_float(body, 'confidence', 0.9)!r}"
    return text


def insert_json(body: dict[str, Any], r: Result, sid: str, ms: float) -> dict[str, Any]:
    modes = {str(row.get("mode")) for row in r.rows}
    return {"entity": body.get("entity"), "relation": body.get("relation"),
            "target": body.get("target"), "inserted": len(r.rows),
            "mode": "/".join(sorted(modes)) if modes else None,
            "alpha": _float(body, "alpha", 0.25), "session": sid, "latency_ms": _r1(ms)}
