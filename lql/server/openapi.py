"""``GET /openapi.json``: the server's OpenAPI 3.1 description, from one endpoint table.

The table lists each endpoint's query parameters, body fields and answer fields; the
answer fields are the ones LARQL's route handlers return (docs/SERVER.md cites them).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ENDPOINTS", "document"]

_S, _I, _N, _B, _A, _O = "string", "integer", "number", "boolean", "array", "object"

#: (method, path, summary, query params, body fields, answer fields); the path is below /v1
ENDPOINTS: list[tuple[str, str, str, dict[str, str], dict[str, str], list[str]]] = [
    ("GET", "/health", "liveness (no key needed)", {}, {},
     ["status", "uptime_seconds", "requests_served", "lql"]),
    ("GET", "/models", "the served vindexes", {}, {}, ["models"]),
    ("GET", "/stats", "the vindex's summary", {}, {},
     ["model", "family", "mode", "layers", "features", "features_per_layer", "hidden_size",
      "vocab_size", "extract_level", "dtype", "layer_bands", "loaded"]),
    ("GET", "/describe", "DESCRIBE an entity",
     {"entity": _S, "band": _S, "verbose": _B, "limit": _I, "min_score": _N}, {},
     ["entity", "model", "edges", "latency_ms"]),
    ("GET", "/walk", "WALK a prompt", {"prompt": _S, "top": _I, "layers": _S}, {},
     ["prompt", "hits", "latency_ms"]),
    ("POST", "/select", "SELECT edges", {},
     {"entity": _S, "relation": _S, "layer": _I, "limit": _I, "min_confidence": _N,
      "order_by": _S, "order": _S}, ["edges", "total", "latency_ms"]),
    ("GET", "/relations", "SHOW RELATIONS", {}, {},
     ["relations", "probe_relations", "probe_count", "total", "latency_ms"]),
    ("POST", "/infer", "INFER (mode walk | dense | compare)", {},
     {"prompt": _S, "top": _I, "mode": _S, "chat": _S},
     ["prompt", "predictions", "mode", "latency_ms"]),
    ("POST", "/explain-infer", "EXPLAIN INFER", {},
     {"prompt": _S, "top": _I, "per_layer": _I, "band": _S, "relations_only": _B,
      "with_attention": _B, "chat": _S}, ["prompt", "predictions", "trace", "latency_ms"]),
    ("POST", "/insert", "INSERT into the session's overlay (X-Session-Id)", {},
     {"entity": _S, "relation": _S, "target": _S, "layer": _I, "alpha": _N, "confidence": _N},
     ["entity", "relation", "target", "inserted", "mode", "alpha", "session", "latency_ms"]),
    ("POST", "/patches/apply", "apply a patch to the session's overlay (X-Session-Id)", {},
     {"patch": _O, "url": _S, "name": _S},
     ["applied", "operations", "active_patches", "session"]),
    ("GET", "/patches", "the session's patches", {}, {}, ["patches", "session"]),
    ("DELETE", "/patches/{name}", "remove a patch from the session", {}, {},
     ["removed", "active_patches", "session"]),
    ("POST", "/patches/save", "SAVE PATCH the session's recorded edits (ours)", {},
     {"name": _S}, ["saved", "operations", "session", "patch"]),
    ("POST", "/query", "LQL text -> the result contract (ours)", {},
     {"lql": _S, "chat": _S}, []),
    ("GET", "/info", "the vindex's index.json summary (ours)", {}, {},
     ["lql", "name", "model", "family", "num_layers"]),
    ("POST", "/completions", "OpenAI-style completion (stream: server-sent events)", {},
     {"model": _S, "prompt": _S, "max_tokens": _I, "stream": _B},
     ["id", "object", "created", "model", "choices", "usage"]),
    ("POST", "/chat/completions", "OpenAI-style chat completion (stream: server-sent events)",
     {}, {"model": _S, "messages": _A, "max_tokens": _I, "stream": _B},
     ["id", "object", "created", "model", "choices", "usage"]),
]

_SESSION = {"name": "X-Session-Id", "in": "header", "required": False,
            "schema": {"type": "string"},
            "description": "the client's own overlay; absent: the shared read-only view"}


def document(version: str, *, multi: bool = False) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, query, body, answer in ENDPOINTS:
        params: list[dict[str, Any]] = [
            {"name": k, "in": "query", "required": k in ("prompt", "entity"),
             "schema": {"type": t}} for k, t in query.items()]
        if "{name}" in path:
            params.append({"name": "name", "in": "path", "required": True,
                           "schema": {"type": "string"}})
        if path != "/health":
            params.append(_SESSION)
        op: dict[str, Any] = {"summary": summary, "parameters": params, "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {
                "type": "object" if answer else "array",
                **({"required": answer,
                    "properties": {k: {} for k in answer}} if answer else {})}}}},
            "4XX": {"description": 'an error: {"error": "<message>", "error_type": "..."}'},
            "503": {"description": "busy: the worker queue is full (Retry-After)"}}}
        if body:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "properties": {k: {"type": t} for k, t in body.items()}}}}}
        if path != "/health":
            op["security"] = [{"bearer": []}]
        prefixes = ["/v1"] if path in ("/health", "/models", "/completions",
                                       "/chat/completions") else (
            ["/v1/{model_id}"] if multi else ["/v1", "/v1/{model_id}"])
        for pre in prefixes:
            entry = dict(op)
            if "{model_id}" in pre:
                entry["parameters"] = [{"name": "model_id", "in": "path", "required": True,
                                        "schema": {"type": "string"}}] + params
            paths.setdefault(pre + path, {})[method.lower()] = entry
    return {"openapi": "3.1.0",
            "info": {"title": "lql serve — LARQL-compatible vindex API", "version": version},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "paths": paths}
