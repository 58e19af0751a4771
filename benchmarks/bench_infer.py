"""Benchmark lql.model (numpy) against transformers (torch, float32, eager) on SmolLM2-135M.

    python benchmarks/bench_infer.py [--threads 2] [--repeats 5] [--gen 32]

Same machine, same thread count (OpenBLAS/OMP env vars set before numpy/torch load;
``torch.set_num_threads``), timings interleaved numpy/torch so background load hits
both alike; medians reported.  Measures forward latency on a short prompt and on a
~200-token prompt, greedy generation tokens/s, and memory (peak RSS of the numpy
engine measured before torch is imported; torch's as the RSS its model adds).
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
    p.add_argument("--gen", type=int, default=32)
    return p.parse_args()


ARGS = _args()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import resource  # noqa: E402
from statistics import median  # noqa: E402

import numpy as np  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    from model_fixtures import smollm2_hf_dir
    from test_model_adapter import load_model_inputs
    from tokenizers import Tokenizer

    from lql.model import build_model
    from lql.runtime import greedy

    folder = smollm2_hf_dir()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    short = tok.encode("The capital of France is").ids
    text = ("Once upon a time, in a small village by the sea, there lived an old fisherman who told "
            "stories to anyone who would listen. ") * 12
    long = tok.encode(text).ids[:200]
    story = tok.encode("Once upon a time").ids  # continues for > 32 tokens without an end-of-turn

    base_rss = rss_mb()
    t_build, model = timed(lambda: build_model(*load_model_inputs(folder)))
    model.forward(short)
    ours_gen = list(greedy(model, story, ARGS.gen, stop_ids=()))
    ours_rss, ours_peak = rss_mb() - base_rss, peak_mb()

    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(ARGS.threads)
    before = rss_mb()
    t_load, ref = timed(lambda: AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager").eval())
    ref_rss = rss_mb() - before

    def torch_forward(ids):
        with torch.no_grad():
            return ref(torch.tensor([ids])).logits[0, -1]

    def torch_generate(ids):
        with torch.no_grad():
            out = ref.generate(torch.tensor([ids]), max_new_tokens=ARGS.gen, min_new_tokens=ARGS.gen,
                               do_sample=False, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               pad_token_id=ref.config.eos_token_id)
        return out[0, len(ids):].tolist()

    torch_forward(short)
    ref_gen = torch_generate(story)

    results = {}
    cases = {
        f"forward, {len(short)}-token prompt": (lambda: model.forward(short), lambda: torch_forward(short)),
        f"forward, {len(long)}-token prompt": (lambda: model.forward(long), lambda: torch_forward(long)),
        f"greedy generate {ARGS.gen} tokens": (lambda: list(greedy(model, story, ARGS.gen, stop_ids=())),
                                               lambda: torch_generate(story)),
    }
    for name, (ours_fn, ref_fn) in cases.items():
        ours_t, ref_t = [], []
        for _ in range(ARGS.repeats):  # interleaved
            ours_t.append(timed(ours_fn)[0])
            ref_t.append(timed(ref_fn)[0])
        results[name] = (median(ours_t), median(ref_t))

    print(f"SmolLM2-135M float32, threads={ARGS.threads} (numpy BLAS via OPENBLAS_NUM_THREADS, "
          f"torch.get_num_threads()={torch.get_num_threads()}), repeats={ARGS.repeats}, medians")
    print(f"numpy {np.__version__}, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':34s} {'numpy':>10s} {'torch':>10s} {'ratio':>7s}")
    for name, (o, r) in results.items():
        print(f"{name:34s} {o * 1e3:8.1f}ms {r * 1e3:8.1f}ms {o / r:6.2f}x")
    gen = f"greedy generate {ARGS.gen} tokens"
    o, r = results[gen]
    print(f"{'generate tokens/s':34s} {ARGS.gen / o:10.1f} {ARGS.gen / r:10.1f} {r / o:6.2f}x (numpy/torch speed)")
    print(f"build/load: numpy {t_build:.2f}s (safetensors → f32 → fused), transformers {t_load:.2f}s")
    print(f"memory: numpy engine RSS +{ours_rss:.0f} MB (process peak {ours_peak:.0f} MB before torch); "
          f"transformers model RSS +{ref_rss:.0f} MB")
    # transformers' min_new_tokens suppresses EOS, so compare up to the first EOS if one came
    eos = set(model.spec.eos_token_ids)
    cut = next((i for i, t in enumerate(ours_gen) if t in eos), len(ours_gen))
    print(f"same greedy tokens ({cut} compared): {ours_gen[:cut] == ref_gen[:cut]}")


if __name__ == "__main__":
    main()
