"""Gemma 4 at E2B scale (random weights, real dimensions): write → EXTRACT → INFER → GENERATE.

Not run in CI. Writes a ``Gemma4ForCausalLM`` folder with random bf16 weights straight as
safetensors (numpy only, tensor by tensor in shards, a few MB of RAM), extracts it with
``lql extract``, then runs ``INFER`` and ``INFER ... GENERATE 16`` — each step in its own
subprocess, whose time and peak RSS (``ru_maxrss`` of that child, from ``os.wait4``) are
reported. The disk needed is printed before anything is written; everything is removed at
the end unless ``--keep``.

E2B dimensions (defaults): 35 layers, hidden 1536, 8 query heads / 1 KV head, head_dim 256
(sliding) / 512 (full, proportional RoPE), FFN 6144 (12288 on the KV-shared layers,
``use_double_wide_mlp``), ``num_kv_shared_layers`` 20, vocab 262144, PLE 262144 × 35·256,
tied embeddings, final soft-cap 30. Full layers every 5th layer (and the last).

``--layers N`` builds N layers with the same per-layer dimensions; KV sharing is scaled to
N (``round(N·20/35)``, cut so that some earlier layer of each type owns keys/values — e.g.
N=3: layers ``sliding, full, full(shared)``).  Extraction's down-meta is a
``vocab × hidden × features`` matmul per layer (≈2.5e12 multiply-adds for a 6144-wide layer),
so a full 35-layer extract takes long on a small machine: measure a few layers and
extrapolate (``--extrapolate`` prints a per-layer linear extrapolation to 35 layers).

    python benchmarks/bench_gemma4_e2b.py --layers 3 --workdir /tmp/e2b
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic import nbytes, write_bf16_shards  # benchmarks/synthetic.py (run as a script)

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_FIXTURE = Path(os.environ.get("LQL_GEMMA4_FIXTURES", "/work/shared/fixtures/gemma4")) / "tiny-gemma4"

E2B = dict(num_layers=35, hidden=1536, heads=8, kv_heads=1, head_dim=256, global_head_dim=512, ffn=6144,
           kv_shared=20, vocab=262144, ple=256, window=512, full_every=5)
SHARD_BYTES = 2 << 30
ROWS_PER_CHUNK = 4096


# --------------------------------------------------------------------------- the model

def layer_plan(n: int) -> tuple[list[str], int]:
    """(layer_types, num_kv_shared_layers) for an ``n``-layer E2B-shaped model."""
    every = E2B["full_every"]
    types = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n)]
    types[-1] = "full_attention"
    shared = min(round(n * E2B["kv_shared"] / E2B["num_layers"]), max(n - 2, 0))
    while shared > 0:
        owners = types[:n - shared]
        if "full_attention" not in owners and owners:
            owners[-1] = "full_attention"           # small N: make the last owner a full layer
            types[:n - shared] = owners
        if set(types[n - shared:]) <= set(types[:n - shared]):
            break
        shared -= 1
    return types, shared


def config(n: int) -> dict:
    types, shared = layer_plan(n)
    return {
        "architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text",
        "vocab_size": E2B["vocab"], "hidden_size": E2B["hidden"], "intermediate_size": E2B["ffn"],
        "num_hidden_layers": n, "num_attention_heads": E2B["heads"], "num_key_value_heads": E2B["kv_heads"],
        "head_dim": E2B["head_dim"], "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "tie_word_embeddings": True, "attention_bias": False, "sliding_window": E2B["window"],
        "final_logit_softcapping": 30.0, "layer_types": types,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                               "rope_theta": 1000000.0}},
        "hidden_size_per_layer_input": E2B["ple"], "vocab_size_per_layer_input": E2B["vocab"],
        "attention_k_eq_v": False, "num_kv_shared_layers": shared, "use_double_wide_mlp": True,
        "enable_moe_block": False, "num_experts": None, "top_k_experts": None, "moe_intermediate_size": None,
        "use_bidirectional_attention": None,
        "per_layer_config": {str(i): {"head_dim": E2B["global_head_dim"]}
                             for i, t in enumerate(types) if t == "full_attention"},
        "dtype": "bfloat16",
    }


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """``[(name, shape, init)]`` of every tensor, ``init`` ∈ {"normal", "ones", "scalar"}."""
    n, h, q = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]
    p, v = cfg["hidden_size_per_layer_input"], cfg["vocab_size"]
    types, shared = cfg["layer_types"], cfg["num_kv_shared_layers"]
    out = [("model.embed_tokens.weight", (v, h), "normal"),
           ("model.embed_tokens_per_layer.weight", (v, n * p), "normal"),
           ("model.per_layer_model_projection.weight", (n * p, h), "normal"),
           ("model.per_layer_projection_norm.weight", (p,), "ones"),
           ("model.norm.weight", (h,), "ones")]
    for i in range(n):
        pre = f"model.layers.{i}."
        d = E2B["global_head_dim"] if types[i] == "full_attention" else cfg["head_dim"]
        kv = cfg["num_key_value_heads"]
        is_shared = i >= n - shared
        ffn = cfg["intermediate_size"] * (2 if is_shared and cfg["use_double_wide_mlp"] else 1)
        out += [(pre + "self_attn.q_proj.weight", (q * d, h), "normal"),
                (pre + "self_attn.q_norm.weight", (d,), "ones"),
                (pre + "self_attn.o_proj.weight", (h, q * d), "normal")]
        if not is_shared:
            out += [(pre + "self_attn.k_proj.weight", (kv * d, h), "normal"),
                    (pre + "self_attn.v_proj.weight", (kv * d, h), "normal"),
                    (pre + "self_attn.k_norm.weight", (d,), "ones")]
        out += [(pre + "mlp.gate_proj.weight", (ffn, h), "normal"), (pre + "mlp.up_proj.weight", (ffn, h), "normal"),
                (pre + "mlp.down_proj.weight", (h, ffn), "normal")]
        out += [(pre + f"{nm}.weight", (h,), "ones") for nm in
                ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm", "post_per_layer_input_norm")]
        out += [(pre + "per_layer_input_gate.weight", (p, h), "normal"),
                (pre + "per_layer_projection.weight", (h, p), "normal"),
                (pre + "layer_scalar", (1,), "scalar")]
    return out



def write_model(folder: Path, n: int, seed: int = 0) -> dict:
    """The model folder: config.json, sharded bf16 safetensors + index, the fixture tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config(n)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER_FIXTURE / name, folder / name)
    specs = tensor_shapes(cfg)
    return write_bf16_shards(folder, specs, shard_bytes=SHARD_BYTES, seed=seed,
                             rows_per_chunk=ROWS_PER_CHUNK)


# --------------------------------------------------------------------------- measuring

def run_step(name: str, argv: list[str], env: dict) -> dict:
    """Run ``argv``; its wall time and its own peak RSS (``os.wait4`` rusage of that child)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    rss_mb = usage.ru_maxrss / 1024  # Linux: KiB
    row = {"step": name, "seconds": round(wall, 1), "peak_rss_mb": round(rss_mb), "rc": proc.returncode,
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}
    print(f"  {name:<10} {wall:8.1f} s  peak RSS {rss_mb:8.0f} MB  (cpu {row['cpu_s']} s, rc {proc.returncode})",
          flush=True)
    if proc.returncode:
        print(out[-3000:], file=sys.stderr)
        raise SystemExit(f"step {name} failed")
    row["tail"] = out.strip().splitlines()[-3:]
    return row


def disk_needed(n: int) -> int:
    src = sum(nbytes(s[1]) for s in tensor_shapes(config(n)))
    return 2 * src + (64 << 20)   # the folder + an f16 vindex of the same tensors (+ down_meta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=E2B["num_layers"])
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the model and the vindex")
    ap.add_argument("--dtype", default="f16", choices=("f16", "f32"), help="vindex dtype")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    n = args.layers
    if n < 1:
        ap.error("--layers must be at least 1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lql-e2b-"))
    work.mkdir(parents=True, exist_ok=True)
    need = disk_needed(n)
    free = shutil.disk_usage(work).free
    cfg = config(n)
    widths = [cfg["intermediate_size"] * (2 if i >= n - cfg["num_kv_shared_layers"] else 1) for i in range(n)]
    print(f"Gemma 4 E2B-shaped, {n} layers ({cfg['num_kv_shared_layers']} KV-shared), FFN widths "
          f"{sorted(set(widths))}, types {cfg['layer_types']}")
    print(f"disk needed: ~{need / 2**30:.1f} GiB in {work} (free {free / 2**30:.1f} GiB)", flush=True)
    if need > free:
        raise SystemExit("not enough disk")
    model_dir, vindex = work / "model", work / "e2b.vindex"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    py = sys.executable
    rows = []
    try:
        rows.append(run_step("write", [py, __file__, "--_write", str(model_dir), str(n)], env))
        rows.append(run_step("extract", [py, "-m", "lql", "extract", str(model_dir), "-o", str(vindex),
                                         "--level", "all", "--dtype", args.dtype, "--force"], env))
        use = f'USE "{vindex}"; SET CHAT OFF; '
        rows.append(run_step("use", [py, "-m", "lql", "-e", use + "STATS"], env))
        rows.append(run_step("infer", [py, "-m", "lql", "-e", use + 'INFER "The capital of France is" TOP 5'],
                             env))
        rows.append(run_step("generate", [py, "-m", "lql", "-e",
                                          use + 'INFER "The capital of France is" GENERATE 16'], env))
        timed = run_step("timed", [py, __file__, "--_timed", str(vindex)], env)
        rows.append(timed)
        t = json.loads(timed["tail"][-1])
        print(f"  in one process: first INFER {t['first_infer_s']:.1f} s (model build included), "
              f"warm INFER {t['warm_infer_s']:.2f} s, GENERATE {t['tokens']} tokens {t['generate_s']:.2f} s "
              f"= {t['tokens_per_s']:.2f} tokens/s (prefill of the prompt included)", flush=True)
        sizes = {p.name: p.stat().st_size for p in vindex.iterdir()}
        print(f"source {sum(p.stat().st_size for p in model_dir.iterdir()) / 2**30:.2f} GiB, "
              f"vindex {sum(sizes.values()) / 2**30:.2f} GiB "
              f"(largest: {', '.join(f'{k} {v / 2**20:.0f} MB' for k, v in sorted(sizes.items(), key=lambda x: -x[1])[:4])})")
        result = {"layers": n, "widths": widths, "steps": rows, "vindex_bytes": sizes}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(model_dir, ignore_errors=True)
            shutil.rmtree(vindex, ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
            print("cleaned up")
    return 0


def timed(vindex: Path) -> dict:
    """In one process: the first INFER (builds the model), a warm INFER, then GENERATE 16 on the
    built model: its token rate (the prompt's prefill included)."""
    from lql.session import Session
    s = Session()
    s.execute(f'USE "{vindex}"; SET CHAT OFF')
    prompt = "The capital of France is"
    t0 = time.perf_counter()
    s.query(f'INFER "{prompt}" TOP 5')
    t1 = time.perf_counter()
    s.query(f'INFER "{prompt}" TOP 5')
    t2 = time.perf_counter()
    r = s.query(f'INFER "{prompt}" GENERATE 16')
    t3 = time.perf_counter()
    tokens = int(r.meta["num_tokens"])
    return {"first_infer_s": t1 - t0, "warm_infer_s": t2 - t1, "generate_s": t3 - t2, "tokens": tokens,
            "tokens_per_s": tokens / (t3 - t2)}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_timed":
        print(json.dumps(timed(Path(sys.argv[2]))))
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[1] == "--_write":
        info = write_model(Path(sys.argv[2]), int(sys.argv[3]))
        print(f"wrote {info['tensors']} tensors, {info['bytes'] / 2**30:.2f} GiB in {info['shards']} shards")
        sys.exit(0)
    sys.exit(main())
