"""Parser throughput: a mixed script of realistic LQL statements.

    python benchmarks/bench_parser.py [--statements N] [--repeat R]

Prints the cold first parse (a fresh interpreter: imports + table load, with
and without the on-disk grammar-table cache) and the warm throughput (best of R).
Goal: ≥ 20,000 statements/s warm.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STATEMENTS = [
    'USE "gemma3-4b.vindex"',
    'WALK "The capital of France is" TOP 10 LAYERS 14-27 MODE HYBRID',
    'DESCRIBE "France" KNOWLEDGE VERBOSE',
    'DESCRIBE "Paris" ALL LAYERS AT LAYER 26 RELATIONS ONLY VIA RESIDUAL',
    'SELECT entity, relation, target FROM EDGES WHERE entity = "France" AND layer >= 20 '
    'ORDER BY gate DESC LIMIT 10',
    'SELECT * FROM FEATURES WHERE layer = 27 AND feature = 9515',
    'SELECT entity, distance FROM ENTITIES NEAREST TO "Paris" AT LAYER 26 LIMIT 20',
    'EXPLAIN WALK "The Eiffel Tower is in" LAYERS 20-27 TOP 5 VERBOSE',
    'INFER "The capital of France is" TOP 5 COMPARE CHAT',
    'INFER "Write a haiku about" RAW SYSTEM "You are a poet." GENERATE 32',
    'EXPLAIN INFER "The capital of France is" LAYERS 20-33 TOP 3 WITH ATTENTION',
    'TRACE "The capital of France is" FOR " Paris" DECOMPOSE LAYERS 0-33 SAVE "trace.npz"',
    'INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", "Poseidon") '
    'AT LAYER 24 CONFIDENCE 0.95 MODE COMPOSE',
    'DELETE FROM EDGES WHERE entity = "Atlantis" AND relation = "capital"',
    'UPDATE EDGES SET target = "Berlin", confidence = 0.9 WHERE layer = 26 AND feature = 8821',
    'BEGIN PATCH "medical.vlp"',
    'SAVE PATCH',
    'SHOW RELATIONS AT LAYER 26 WITH EXAMPLES',
    'SHOW LAYERS 14-27',
    'STATS',
    'COMPILE CURRENT INTO MODEL "out/" FORMAT SAFETENSORS',
    "walk 'lower case works too' top 3 /* inline comment */",
    'SHOW FEATURES 26 WHERE target LIKE "Par%" LIMIT 5 |> DESCRIBE "Paris"',
]


def make_script(n: int) -> str:
    lines = []
    for i in range(n):
        stmt = STATEMENTS[i % len(STATEMENTS)]
        if i % 50 == 0:
            lines.append(f"/* section {i // 50} */")
        lines.append(stmt + ";")
    return "\n".join(lines) + "\n"


def cold_start(no_cache: bool) -> float:
    """Seconds for `import lql.parser; parse(...)` in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if no_cache:
        env["LQL_NO_GRAMMAR_CACHE"] = "1"
    code = ("import time; t = time.perf_counter(); from lql.parser import parse; "
            "parse('WALK \"x\" TOP 5'); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--statements", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    cold_start(no_cache=False)  # make sure the grammar cache exists
    cold_cached = min(cold_start(no_cache=False) for _ in range(3))
    cold_uncached = min(cold_start(no_cache=True) for _ in range(3))

    from lql.parser import parse
    script = make_script(args.statements)
    n = len(parse(script))
    assert n == args.statements, n
    times, cpu = [], []
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        parse(script)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    best, median = min(times), sorted(times)[len(times) // 2]
    best_cpu = min(cpu)

    print(f"script: {n} statements, {len(script):,} characters, {script.count(chr(10)):,} lines")
    print(f"cold first parse (fresh interpreter, grammar cache):    {cold_cached * 1000:7.1f} ms")
    print(f"cold first parse (fresh interpreter, no grammar cache): {cold_uncached * 1000:7.1f} ms")
    print(f"warm: best {n / best:,.0f} statements/s ({best * 1000:.1f} ms), "
          f"median {n / median:,.0f} statements/s over {args.repeat} runs")
    print(f"warm, CPU time of this process (insensitive to other load on the machine): "
          f"best {n / best_cpu:,.0f} statements/s")
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"machine: {os.cpu_count()} CPUs, load average {load}")
    except OSError:
        pass
    print("goal ≥ 20,000 statements/s (wall, best):", "met" if n / best >= 20_000 else "NOT met")


if __name__ == "__main__":
    main()
