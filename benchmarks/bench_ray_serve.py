"""The vindex server on a local Ray Serve instance: N replicas, the same load as
bench_serve_load.py (loopback only, bounded duration). Needs the `ray` extra.

    python benchmarks/bench_ray_serve.py PATH [--replicas 2] [--clients 16] [--duration 20]
    python benchmarks/bench_ray_serve.py PATH --shards 0-14,15-29 [--requests 20]

With ``--shards``: a layer-shard deployment (one Ray Serve deployment per layer range, the
residual passed between them); it sends prompts one at a time, prints latency, and checks
each answer's top-5 against INFER on one process (ids equal, |dp| printed).

Prints the load figures (requests/s, p50/p99 per endpoint, errors) for Ray Serve's proxy
in front of the replicas. Nothing is asserted: it reports.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--port", type=int, default=8793)
    ap.add_argument("--shards", default=None, help="layer ranges, e.g. 0-14,15-29")
    ap.add_argument("--requests", type=int, default=20)
    a = ap.parse_args()
    try:
        import ray
        from ray import serve
    except ImportError:
        sys.stderr.write("bench_ray_serve: needs the `ray` extra (pip install 'lql[ray]')\n")
        return 1
    if a.shards:
        return _shards(a, ray, serve)
    from lql.server.ray_deploy import replica_app
    ray.init(include_dashboard=False, num_cpus=max(2, a.replicas + 1))
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    t0 = time.perf_counter()
    serve.run(replica_app(a.path, replicas=a.replicas, api_key="bench"), route_prefix="/")
    print(f"deployed {a.replicas} replicas in {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        subprocess.run([sys.executable, str(HERE / "bench_serve_load.py"), "--url",
                        f"http://127.0.0.1:{a.port}", "--api", "v1", "--key", "bench",
                        "--clients", str(a.clients), "--duration", str(a.duration),
                        "--generate", "0"], check=False)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


PROMPTS = ["The capital of France is", "Water is made of", "The Eiffel Tower is in",
           "Albert Einstein was a", "The largest planet is"]


def _shards(a, ray, serve) -> int:
    import json
    import statistics
    import urllib.request

    from lql.server.ray_deploy import shard_app
    from lql.session import Session
    ranges = [tuple(int(x) for x in r.split("-")) for r in a.shards.split(",")]
    ranges = [(lo, hi + 1) for lo, hi in ranges]          # inclusive on the command line
    local = Session()
    local.query(f'USE "{a.path}"')
    ray.init(include_dashboard=False, num_cpus=max(2, len(ranges) + 1))
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    t0 = time.perf_counter()
    serve.run(shard_app(a.path, ranges), route_prefix="/")
    print(f"deployed {len(ranges)} layer shards {a.shards} in {time.perf_counter() - t0:.1f} s",
          flush=True)
    lat, same, worst = [], 0, 0.0
    try:
        for i in range(a.requests):
            prompt = PROMPTS[i % len(PROMPTS)]
            body = json.dumps({"prompt": prompt, "top": 5}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{a.port}/", data=body,
                                         headers={"Content-Type": "application/json"})
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=120) as r:
                got = json.loads(r.read())["predictions"]
            lat.append(time.perf_counter() - t)
            want = local.query(f'INFER "{prompt}" TOP 5 RAW').rows
            if [g["token_id"] for g in got] == [w["token_id"] for w in want]:
                same += 1
            worst = max(worst, max(abs(g["probability"] - w["probability"])
                                   for g, w in zip(got, want, strict=True)))
            if i < len(PROMPTS):
                print(f"  {prompt!r} -> {got[0]['token']!r} {got[0]['probability']:.4f} "
                      f"(one process: {want[0]['token']!r} {want[0]['probability']:.4f})")
    finally:
        serve.shutdown()
        ray.shutdown()
    lat.sort()
    print(f"{len(lat)} requests through {len(ranges)} shards: p50 {statistics.median(lat) * 1000:.0f} ms, "
          f"max {lat[-1] * 1000:.0f} ms; top-5 ids equal to one-process INFER: {same}/{len(lat)}, "
          f"max |dp| {worst:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
