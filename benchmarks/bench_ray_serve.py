"""The vindex server on a local Ray Serve instance: N replicas, the same load as
bench_serve_load.py (loopback only, bounded duration). Needs the `ray` extra.

    python benchmarks/bench_ray_serve.py PATH [--replicas 2] [--clients 16] [--duration 20]

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
    a = ap.parse_args()
    try:
        import ray
        from ray import serve
    except ImportError:
        sys.stderr.write("bench_ray_serve: needs the `ray` extra (pip install 'lql[ray]')\n")
        return 1
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


if __name__ == "__main__":
    raise SystemExit(main())
