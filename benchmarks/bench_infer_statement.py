"""Latency of the inference *statements* on SmolLM2-135M (warm session, f16 vindex).

    python benchmarks/bench_infer_statement.py [--threads 2] [--repeats 5]

``benchmarks/bench_infer.py`` times the bare forward pass (lql.model vs transformers);
this times what a user waits for: ``Session.query("INFER ...")`` end to end
(tokenise, chat-wrap, forward, softmax, rows), after one warm-up statement that builds
the model. It also times the bare ``model.forward`` on the same ids, so the statement
overhead is visible. Medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args()


ARGS = _args()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from statistics import median  # noqa: E402

from vindex_fixtures import smollm2_vindex  # noqa: E402

from lql.infer.engine import target_for  # noqa: E402
from lql.session import Session  # noqa: E402

PROMPT = "The capital of France is"


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return median(out)


def main() -> None:
    s = Session()
    s.query(f'USE "{smollm2_vindex("inference")}"')
    t0 = time.perf_counter()
    s.query(f'INFER "{PROMPT}" TOP 5 RAW')
    first = time.perf_counter() - t0
    target = target_for(s)
    ids = target.tokenizer.encode(PROMPT).ids
    n = ARGS.repeats
    rows = [
        ("first INFER (builds the model)", first),
        (f"model.forward ({len(ids)} tokens, bare)", timed(lambda: target.model.forward(ids), n)),
        ("INFER TOP 5 RAW", timed(lambda: s.query(f'INFER "{PROMPT}" TOP 5 RAW'), n)),
        ("INFER TOP 5 (chat-wrapped, 35 tokens)", timed(lambda: s.query(f'INFER "{PROMPT}" TOP 5'), n)),
        ("EXPLAIN INFER RAW WITH ATTENTION", timed(
            lambda: s.query(f'EXPLAIN INFER "{PROMPT}" RAW WITH ATTENTION'), n)),
        ('TRACE FOR " Paris" DECOMPOSE RAW', timed(
            lambda: s.query(f'TRACE "{PROMPT}" FOR " Paris" DECOMPOSE RAW'), n)),
    ]
    gen = timed(lambda: s.query('INFER "Once upon a time" RAW GENERATE 20'), max(1, n // 2))
    rows.append(("INFER ... GENERATE 20", gen))
    print(f"SmolLM2-135M f16 vindex, {ARGS.threads} threads, median of {n}")
    for name, sec in rows:
        print(f"  {name:<42} {sec * 1000:9.1f} ms")
    print(f"  {'GENERATE throughput':<42} {20 / gen:9.1f} tokens/s")


if __name__ == "__main__":
    main()
