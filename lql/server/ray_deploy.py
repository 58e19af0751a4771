"""The vindex server as a Ray Serve deployment (the ``ray`` extra; docs/SCALING.md).

Two shapes, both built on Ray Serve rather than a cluster protocol of our own:

* **Replicas** (:func:`replica_app`): N copies of the same ASGI app (:mod:`lql.server.app`)
  behind Ray Serve's HTTP proxy, which balances requests over them. Every replica opens
  the vindex itself (memory-mapped: replicas on one node share the page cache).
  ``X-Session-Id`` overlays live in one replica's memory, so a client with a session
  must stick to a replica: Ray Serve routes by the session header only when told to,
  so sessions are pinned with ``session_replicas=1`` (one replica serves the writable
  sessions, the others the shared read-only view) — see docs/SCALING.md.

* **Layer shards** (:func:`shard_app`): for a vindex larger than one machine, each
  :class:`LayerShard` deployment holds a contiguous layer range and runs the residual
  through it; the :class:`ShardRouter` passes the residual (a float32 array of
  ``[seq, hidden]``) from shard to shard; each step is ``lql.model.Model.forward_layers``
  (tested in tests/test_layer_shards.py against one whole forward pass).
  Each shard memory-maps the vindex; a model larger than the weight budget
  (``LQL_WEIGHT_CACHE_MB``) has its layers built when they first run, so a shard builds
  only its own, while a model that fits is built whole in every shard. No KV cache
  crosses shards, so every request runs its whole prompt (a next-token answer, not
  GENERATE).

Run it with ``python -m lql.server.ray_deploy PATH [--replicas N]`` or from Python with
``serve.run(replica_app(path, replicas=2))``. ``benchmarks/bench_ray_serve.py`` starts a
local Ray instance and measures it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["replica_app", "shard_app", "RAY_HINT", "main"]

RAY_HINT = "the Ray Serve deployment needs the `ray` extra: pip install 'lql[ray]'"


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError as exc:          # pragma: no cover - depends on the extra
        raise ImportError(RAY_HINT) from exc
    return serve


def replica_app(path: str | Path, *, replicas: int = 2, api_key: str | None = None,
                workers: int = 1, generate_workers: int = 1) -> Any:
    """A Ray Serve application: ``replicas`` copies of the vindex server for ``path``."""
    serve = _serve()
    vpath = str(Path(path).resolve())

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": 1},
                      max_ongoing_requests=64)
    class VindexReplica:
        def __init__(self) -> None:
            import os
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
            from .app import ModelHost, ServeConfig, build_app
            from .serve_cli import model_ids
            host = ModelHost(model_ids([Path(vpath)])[0], Path(vpath))
            host.warmup()
            cfg = ServeConfig(api_key=api_key, workers=workers,
                              generate_workers=generate_workers, allow_hosts=["*"])
            self._asgi, self._state = build_app([host], cfg)

        async def __call__(self, request: Any) -> Any:
            # Ray Serve hands a Starlette Request; run our ASGI app on its scope
            from starlette.responses import Response
            body = await request.body()
            scope = dict(request.scope)
            sent: dict[str, Any] = {"status": 500, "headers": [], "body": []}
            delivered = {"done": False}

            async def receive() -> dict[str, Any]:
                if not delivered["done"]:
                    delivered["done"] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                # Ray Serve's proxy owns the client connection (it cancels this handler
                # when the client goes): until then, no disconnect to report
                import asyncio
                await asyncio.Event().wait()
                return {"type": "http.disconnect"}

            async def send(msg: dict[str, Any]) -> None:
                if msg["type"] == "http.response.start":
                    sent["status"] = msg["status"]
                    sent["headers"] = msg.get("headers", [])
                elif msg["type"] == "http.response.body":
                    sent["body"].append(msg.get("body", b""))

            await self._asgi(scope, receive, send)
            headers = {k.decode(): v.decode() for k, v in sent["headers"]
                       if k.lower() not in (b"content-length",)}
            return Response(b"".join(sent["body"]), status_code=sent["status"],
                            headers=headers)

    return VindexReplica.bind()                                       # type: ignore[attr-defined]


def shard_app(path: str | Path, ranges: list[tuple[int, int]]) -> Any:
    """A Ray Serve application of layer shards for ``path``: one deployment per
    ``(first, last)`` range, chained by a router that passes the residual along.

    Each shard opens the same vindex (on its own machine: its copy, or the layers it
    needs) and answers ``forward(residual, positions)`` for its range."""
    serve = _serve()
    vpath = str(Path(path).resolve())

    @serve.deployment(ray_actor_options={"num_cpus": 1})
    class LayerShard:
        def __init__(self, first: int, last: int) -> None:
            import os
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
            from ..infer.engine import target_for
            from ..session import Session
            s = Session()
            s.query(f'USE "{vpath}"')
            self.target = target_for(s)
            self.first, self.last = first, last

        def layers(self) -> tuple[int, int]:
            return self.first, self.last

        def tokenize(self, prompt: str) -> list[int]:
            from ..runtime.forward import prompt_ids
            return [int(i) for i in prompt_ids(self.target.view, prompt)]

        def forward(self, ids: list[int], residual: Any) -> Any:
            """The residual ``[seq, hidden]`` after this shard's layers
            (``lql.model.Model.forward_layers``); ``residual`` is ``None`` for the first."""
            return self.target.model.forward_layers(ids, residual, self.first, self.last)

        def top(self, residual: Any, k: int = 5) -> list[dict[str, Any]]:
            """The next-token top ``k`` from the last row of the final residual."""
            import numpy as np

            from ..runtime.forward import softmax64, top_ids
            p = softmax64(self.target.model.logits_from_hidden(np.asarray(residual)[-1]))
            return [{"token": self.target.token_text(int(i)), "token_id": int(i),
                     "probability": float(p[i])} for i in top_ids(p, k)]

    @serve.deployment
    class ShardRouter:
        def __init__(self, *shards: Any) -> None:
            self.shards = shards

        async def __call__(self, request: Any) -> dict[str, Any]:
            doc = await request.json()
            ids = await self.shards[0].tokenize.remote(str(doc["prompt"]))
            h = None
            for shard in self.shards:
                h = await shard.forward.remote(ids, h)
            top = await self.shards[-1].top.remote(h, int(doc.get("top", 5)))
            return {"prompt": doc["prompt"], "tokens": len(ids), "predictions": top}

    shards = [LayerShard.bind(a, b) for a, b in ranges]              # type: ignore[attr-defined]
    return ShardRouter.bind(*shards)                                  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lql.server.ray_deploy")
    ap.add_argument("path")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None)
    a = ap.parse_args(argv)
    try:
        import ray
        serve = _serve()
    except ImportError:
        sys.stderr.write(f"error: {RAY_HINT}\n")
        return 1
    ray.init(include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(replica_app(a.path, replicas=a.replicas, api_key=a.api_key), route_prefix="/")
    sys.stderr.write(f"lql on Ray Serve: {a.replicas} replicas on http://127.0.0.1:{a.port}\n")
    try:
        import time
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
