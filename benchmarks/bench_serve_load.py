"""Load test of a running vindex server (loopback only, bounded duration).

    python benchmarks/bench_serve_load.py --url http://127.0.0.1:8781 --api v1 --pid PID \
        [--key KEY] [--clients 32] [--duration 60] [--generate 200]

``--api v1``: the ASGI server (LARQL's GET /v1/walk, GET /v1/describe, POST /v1/infer; the
GENERATE client streams POST /v1/completions). ``--api legacy``: the old standard-library
server (POST /query with the same statements). ``clients`` tasks each loop over WALK,
DESCRIBE and INFER for ``duration`` seconds; one more task runs GENERATE ``generate``
back to back. Prints requests/s, p50/p99 per endpoint, errors, and the server's RSS
(from /proc/PID/status) before and after. Nothing here is asserted: it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.parse

import httpx

WALK = ("WALK", "Paris", "14-27", 10)
PROMPTS = ["The capital of France is", "Water boils at", "The largest planet is"]
ENTITIES = ["Paris", "France", "water"]


def rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def one(client: httpx.AsyncClient, api: str, kind: str, i: int) -> int:
    if api == "v1":
        if kind == "walk":
            r = await client.get("/v1/walk", params={"prompt": ENTITIES[i % 3], "layers": "14-27",
                                                     "top": 10})
        elif kind == "describe":
            r = await client.get("/v1/describe", params={"entity": ENTITIES[i % 3],
                                                         "min_score": 0})
        else:
            r = await client.post("/v1/infer", json={"prompt": PROMPTS[i % 3], "top": 5,
                                                     "chat": "OFF"})
        return r.status_code
    lql = {"walk": f'WALK "{ENTITIES[i % 3]}" TOP 10 LAYERS 14-27',
           "describe": f'DESCRIBE "{ENTITIES[i % 3]}"',
           "infer": f'INFER "{PROMPTS[i % 3]}" TOP 5'}[kind]
    r = await client.post("/query", json={"lql": lql, "chat": "OFF"})
    return r.status_code


async def generate(client: httpx.AsyncClient, api: str, n: int) -> int:
    if api == "v1":
        async with client.stream("POST", "/v1/completions",
                                 json={"prompt": "Once upon a time", "max_tokens": n,
                                       "stream": True}) as r:
            async for _ in r.aiter_lines():
                pass
            return r.status_code
    r = await client.post("/query", json={"lql": f'INFER "Once upon a time" RAW GENERATE {n}'})
    return r.status_code


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api", choices=("v1", "legacy"), default="v1")
    ap.add_argument("--key", default=None)
    ap.add_argument("--pid", type=int, default=None)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--generate", type=int, default=200)
    a = ap.parse_args()
    host = urllib.parse.urlsplit(a.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loopback URLs only")
    headers = {"Authorization": f"Bearer {a.key}"} if a.key else {}
    lat: dict[str, list[float]] = {"walk": [], "describe": [], "infer": [], "generate": []}
    errors: dict[str, int] = {k: 0 for k in lat}
    rss0 = rss_mb(a.pid)
    stop = time.monotonic() + a.duration
    limits = httpx.Limits(max_connections=a.clients + 4, max_keepalive_connections=a.clients + 4)

    async def client_loop(ci: int) -> None:
        async with httpx.AsyncClient(base_url=a.url, headers=headers, timeout=600,
                                     limits=limits, trust_env=False) as c:
            i = ci
            while time.monotonic() < stop:
                kind = ("walk", "describe", "infer")[i % 3]
                t0 = time.perf_counter()
                try:
                    status = await one(c, a.api, kind, i)
                except httpx.HTTPError:
                    status = -1
                dt = time.perf_counter() - t0
                if status == 200:
                    lat[kind].append(dt)
                else:
                    errors[kind] += 1
                i += 1

    async def gen_loop() -> None:
        async with httpx.AsyncClient(base_url=a.url, headers=headers, timeout=600,
                                     trust_env=False) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    status = await generate(c, a.api, a.generate)
                except httpx.HTTPError:
                    status = -1
                if status == 200:
                    lat["generate"].append(time.perf_counter() - t0)
                else:
                    errors["generate"] += 1

    t0 = time.perf_counter()
    tasks = [client_loop(i) for i in range(a.clients)]
    if a.generate > 0:
        tasks.append(gen_loop())
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    rss1 = rss_mb(a.pid)
    total = sum(len(v) for v in lat.values())
    out = {"api": a.api, "clients": a.clients, "duration_s": round(wall, 1),
           "requests": total, "req_per_s": round(total / wall, 2),
           "errors": errors, "rss_mb_before": rss0 and round(rss0, 1),
           "rss_mb_after": rss1 and round(rss1, 1), "endpoints": {}}
    for k, v in lat.items():
        out["endpoints"][k] = {"n": len(v), "p50_s": round(pct(v, 0.5), 3),
                               "p99_s": round(pct(v, 0.99), 3),
                               "mean_s": round(statistics.mean(v), 3) if v else None}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
