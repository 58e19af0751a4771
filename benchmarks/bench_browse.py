"""Browse benchmark on the SmolLM2 vindex.

    python benchmarks/bench_browse.py [VINDEX] [--repeat N]

* warm session: WALK over all layers and DESCRIBE (knowledge band), each as a
  ratio to the bare numpy work they cannot avoid — ``gate(layer) @ query`` over
  the same layers on the same cached f32 gate matrices, in the same run;
* first-query latency after USE in a fresh process (memory maps not yet
  touched in that process; the OS page cache cannot be dropped here, so this is
  "cold process", not "cold disk").

VINDEX defaults to the test suite's SmolLM2 extraction (built on first use).
BLAS runs single-threaded unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS are set:
these are one-vector matmuls, and on a shared machine a multi-threaded BLAS makes
both sides of the ratio swing by 10x or more. Reported: best and median of N.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def cold(path: Path) -> dict:
    code = f"""
import time, json, sys
sys.path.insert(0, {str(REPO)!r})
t0 = time.perf_counter()
from lql.session import Session
s = Session()
s.query('USE "{path}"')
t1 = time.perf_counter()
s.query('WALK "The capital of France is" TOP 10')
t2 = time.perf_counter()
s.query('DESCRIBE "France"')
t3 = time.perf_counter()
print(json.dumps({{"use_ms": (t1 - t0) * 1e3, "first_walk_ms": (t2 - t1) * 1e3,
                  "first_describe_ms": (t3 - t2) * 1e3}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("vindex", nargs="?")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    if args.vindex:
        path = Path(args.vindex)
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from vindex_fixtures import smollm2_vindex
        path = smollm2_vindex()

    c = cold(path)
    from lql.browse.core import band_layers, entity_query, query_vector
    from lql.session import Session
    s = Session()
    s.query(f'USE "{path}"')
    v = s.vindex
    prompt = "The capital of France is"
    layers = list(range(v.num_layers))
    know = band_layers(v, "knowledge")
    for l in layers:                                    # warm: f32 gate cache, down-meta pages
        v.gate(l)
    s.query(f'WALK "{prompt}" TOP 10')
    s.query('DESCRIBE "France"')

    q, _ = query_vector(v, prompt)
    qe, _ = entity_query(v, "France")
    gates = [v.gate(l) for l in layers]

    def bare_walk():
        for g in gates:
            g @ q

    def bare_describe():
        for l in know:
            gates[l] @ qe

    walk_t = best_of(lambda: s.query(f'WALK "{prompt}" TOP 10'), args.repeat)
    bare_w = best_of(bare_walk, args.repeat)
    desc_t = best_of(lambda: s.query('DESCRIBE "France"'), args.repeat)
    bare_d = best_of(bare_describe, args.repeat)
    rows = {
        "vindex": str(path),
        "walk_all_layers_ms": round(walk_t[0] * 1e3, 2),
        "walk_bare_matmul_ms": round(bare_w[0] * 1e3, 2),
        "walk_ratio": round(walk_t[0] / bare_w[0], 2),
        "walk_ratio_median": round(walk_t[1] / bare_w[1], 2),
        "describe_ms": round(desc_t[0] * 1e3, 2),
        "describe_bare_matmul_ms": round(bare_d[0] * 1e3, 2),
        "describe_ratio": round(desc_t[0] / bare_d[0], 2),
        "describe_ratio_median": round(desc_t[1] / bare_d[1], 2),
        "cold_process_use_ms": round(c["use_ms"], 1),
        "cold_process_first_walk_ms": round(c["first_walk_ms"], 1),
        "cold_process_first_describe_ms": round(c["first_describe_ms"], 1),
    }
    for k, val in rows.items():
        print(f"{k:32} {val}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
