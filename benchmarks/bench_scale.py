"""A 7B-class Llama model on this machine: extract, browse, run and edit in bounded memory,
against transformers (bf16, CPU) and llama.cpp (llama-cpp-python, F16 GGUF) on the same weights.

Not run in CI.  Writes a synthetic ``LlamaForCausalLM`` folder with random bf16 weights at real
7B dimensions (defaults: 32 layers, hidden 4096, FFN 11008, 32 heads, 8 KV heads) and the
SmolLM2 tokenizer (so text tokenizes; vocab 49152), ≈ 12 GB on disk, into a temporary folder,
then measures each step in its own subprocess — wall time and that child's peak RSS
(``os.wait4``), plus the time the statement itself took inside it:

* ours: EXTRACT WITH INFERENCE (DTYPE BF16) and WITH BROWSE; USE + first WALK + DESCRIBE;
  INFER on a 5-token and a 200-token prompt; GENERATE 16 (tokens/s); INSERT MODE COMPOSE;
  COMPILE INTO MODEL; the bare ``E·W_down`` matmul extraction is bounded by (one layer, ×L);
* transformers: load (bf16), the same two prompts, 16 greedy tokens;
* llama.cpp: ``convert_hf_to_gguf.py --outtype f16`` (llama.cpp's own, from the
  llama-cpp-python sdist: ``--convert`` path or ``LQL_CONVERT_HF_TO_GGUF``), then the same
  prompts and 16 tokens through ``llama_cpp.Llama`` with the same thread count.

It prints the disk it needs before writing anything, ``uptime``'s load with every step (other
work on the machine skews timings: say so when quoting them), the memory bandwidth (a numpy
copy of a 1 GiB array) and the decode limit it implies (bytes of weights read per token ÷
bandwidth), and the ratios ours/peer.  Each finished step is printed at once and the JSON file
(``--json``) rewritten, so a run stopped early keeps what it measured.  Everything written is
removed at the end unless ``--keep``.  ``--deadline HH:MM`` (UTC) skips steps not started by
then.  ``--layers/--hidden/--ffn`` scale the model down for a quick run.

    python benchmarks/bench_scale.py --workdir /tmp/scale --json scale.json
    python benchmarks/bench_scale.py --layers 4 --json small.json     # a small-scale table
"""

from __future__ import annotations

import argparse
import datetime as dt
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
ROWS_PER_CHUNK = 2048
SHARD_BYTES = 4 << 30
SHORT = "The capital of France is"
LONG_WORDS = ("the history of the city of Paris begins with a small settlement on an island in the "
              "river where traders met and over many centuries it grew into one of the great capitals "
              "of the world with its bridges its markets its churches and its long wide streets ")


# --------------------------------------------------------------------------- the model

def config(a: argparse.Namespace, vocab: int, bos: int, eos: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
            "hidden_size": a.hidden, "intermediate_size": a.ffn, "num_hidden_layers": a.layers,
            "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
            "head_dim": a.hidden // a.heads, "hidden_act": "silu", "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": False, "bos_token_id": bos, "eos_token_id": eos,
            "torch_dtype": "bfloat16", "initializer_range": 0.02}


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...], str]]:
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    out = [("model.embed_tokens.weight", (v, h), "normal")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (q, h), "normal"), (p + "self_attn.k_proj.weight", (kv, h), "normal"),
                (p + "self_attn.v_proj.weight", (kv, h), "normal"), (p + "self_attn.o_proj.weight", (h, q), "normal"),
                (p + "mlp.gate_proj.weight", (f, h), "normal"), (p + "mlp.up_proj.weight", (f, h), "normal"),
                (p + "mlp.down_proj.weight", (h, f), "normal"),
                (p + "input_layernorm.weight", (h,), "ones"), (p + "post_attention_layernorm.weight", (h,), "ones")]
    out += [("model.norm.weight", (h,), "ones"), ("lm_head.weight", (v, h), "normal")]
    return out



def write_model(folder: Path, cfg: dict, tokenizer_dir: Path, seed: int = 0) -> dict:
    """config.json, sharded bf16 safetensors (+ index), the tokenizer — a few MB of RAM at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, folder / name)
    specs = tensor_shapes(cfg)
    return write_bf16_shards(folder, specs, shard_bytes=SHARD_BYTES, seed=seed,
                             rows_per_chunk=ROWS_PER_CHUNK)


# --------------------------------------------------------------------------- measuring

def load() -> str:
    try:
        return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load ?"


class Bench:
    def __init__(self, args: argparse.Namespace, env: dict):
        self.args, self.env = args, env
        self.rows: list[dict] = []
        self.info: dict = {}
        self.deadline = None
        if args.deadline:
            hh, mm = (int(x) for x in args.deadline.split(":"))
            now = dt.datetime.now(dt.UTC)
            self.deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0)

    def save(self) -> None:
        if self.args.json:
            self.args.json.write_text(json.dumps({"info": self.info, "steps": self.rows}, indent=2))

    def late(self) -> bool:
        return self.deadline is not None and dt.datetime.now(dt.UTC) >= self.deadline

    def step(self, who: str, name: str, argv: list[str], env: dict | None = None) -> dict | None:
        """Run ``argv``; wall time, its own peak RSS, and the JSON its last line printed (if any)."""
        if self.late():
            print(f"  {who:<13} {name:<22} skipped (past --deadline)", flush=True)
            self.rows.append({"who": who, "step": name, "skipped": "deadline"})
            self.save()
            return None
        t0 = time.perf_counter()
        before = load()
        proc = subprocess.Popen(argv, env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        out = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        row = {"who": who, "step": name, "seconds": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
               "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "rc": rc, "load_before": before,
               "load_after": load()}
        lines = [ln for ln in out.strip().splitlines() if ln.strip()]
        if lines and lines[-1].startswith("{"):
            try:
                row["inner"] = json.loads(lines[-1])
            except ValueError:
                pass
        inner = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in (row.get("inner") or {}).items())
        print(f"  {who:<13} {name:<22} {wall:9.1f} s  peak RSS {row['peak_rss_mb']:7d} MB  cpu {row['cpu_s']:8.1f} s"
              f"  rc {rc}  [{before}]  {inner}", flush=True)
        if rc:
            row["tail"] = lines[-15:]
            print("\n".join("      | " + ln for ln in lines[-15:]), flush=True)
        self.rows.append(row)
        self.save()
        return row


def disk_needed(cfg: dict) -> tuple[int, int]:
    src = sum(nbytes(s[1]) for s in tensor_shapes(cfg))
    # at most three copies at once: the model, the INFERENCE vindex, and the compiled model or the GGUF
    return src, 3 * src + (1 << 30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep what was written")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (after every step)")
    ap.add_argument("--deadline", default=None, help="HH:MM UTC: skip the steps not started by then")
    ap.add_argument("--peer-rss-note", default="", help=argparse.SUPPRESS)
    ap.add_argument("--no-peers", action="store_true", help="skip transformers and llama.cpp")
    ap.add_argument("--no-browse", action="store_true", help="skip the BROWSE extraction")
    ap.add_argument("--convert", type=Path, default=os.environ.get("LQL_CONVERT_HF_TO_GGUF"),
                    help="llama.cpp's convert_hf_to_gguf.py")
    args = ap.parse_args(argv)
    # the tokenizer folder, found in a child (building it may import torch: the parent stays
    # small, since a child's peak RSS starts from its parent's at fork)
    tok_dir = Path(subprocess.run([sys.executable, "-c", "import sys; sys.path[:0] = sys.argv[1:]; "
                                   "from model_fixtures import smollm2_hf_dir; print(smollm2_hf_dir())",
                                   str(REPO), str(REPO / "tests")], check=True, capture_output=True,
                                  text=True).stdout.strip().splitlines()[-1])
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    cfg = config(args, tok.get_vocab_size(), tok.token_to_id("<|im_start|>") or 1,
                 tok.token_to_id("<|im_end|>") or 2)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lql-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    src_bytes, need = disk_needed(cfg)
    free = shutil.disk_usage(work).free
    params = src_bytes // 2
    print(f"Llama-shaped: {args.layers} layers, hidden {args.hidden}, FFN {args.ffn}, {args.heads} heads / "
          f"{args.kv_heads} KV, vocab {cfg['vocab_size']}: {params / 1e9:.2f} B parameters, "
          f"{src_bytes / 2**30:.1f} GiB bf16")
    print(f"disk needed: ~{need / 2**30:.1f} GiB at most in {work} (free {free / 2**30:.1f} GiB); "
          f"threads {args.threads}; {load()}", flush=True)
    if need > free:
        raise SystemExit("not enough disk")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OPENBLAS_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    b = Bench(args, env)
    b.info = {"config": cfg, "params": params, "source_bytes": src_bytes, "disk_needed": need,
              "threads": args.threads, "started": dt.datetime.now(dt.UTC).isoformat(),
              "weight_cache_mb": os.environ.get("LQL_WEIGHT_CACHE_MB", "default")}
    model_dir, vindex, browse = work / "model", work / "inference.vindex", work / "browse.vindex"
    compiled, gguf = work / "compiled", work / "model-f16.gguf"
    py, me = sys.executable, str(Path(__file__).resolve())
    try:
        row = b.step("machine", "bandwidth (1 GiB copy)", [py, me, "--_bandwidth"])
        bw = float(row["inner"]["gb_s"]) if row and "inner" in row else float("nan")
        b.info["bandwidth_gb_s"] = bw
        per_token = src_bytes - nbytes((cfg["vocab_size"], cfg["hidden_size"]))  # the embedding is gathered
        b.info["decode_limit_tokens_s"] = bw * 1e9 / per_token
        print(f"memory bandwidth (numpy copy of 1 GiB): {bw:.1f} GB/s → decode limit for 16-bit weights "
              f"({per_token / 1e9:.1f} GB read per token): {bw * 1e9 / per_token:.2f} tokens/s", flush=True)
        b.step("ours", "write model", [py, me, "--_write", str(model_dir), json.dumps(cfg), str(tok_dir)])
        b.step("ours", "EXTRACT INFERENCE", [py, "-m", "lql", "extract", str(model_dir), "-o", str(vindex),
                                              "--level", "all", "--dtype", "bf16", "--force"])
        use = f'USE "{vindex}"; SET CHAT OFF'
        b.step("ours", "INFER 5 tokens", [py, me, "--_ours", use, "infer_short"])
        b.step("ours", "INFER 200 tokens", [py, me, "--_ours", use, "infer_long"])
        b.step("ours", "GENERATE 16", [py, me, "--_ours", use, "generate"])
        if not args.no_peers:
            conv = args.convert
            if conv is None or not Path(conv).is_file():
                print("  llama.cpp: no convert_hf_to_gguf.py (--convert / LQL_CONVERT_HF_TO_GGUF): skipped")
            else:
                penv = {**env, "PYTHONPATH": str(Path(conv).parent / "gguf-py") + os.pathsep + env["PYTHONPATH"]}
                row = b.step("llama.cpp", "convert_hf_to_gguf f16", [py, str(conv), str(model_dir), "--outtype", "f16",
                                                                     "--outfile", str(gguf)], penv)
                if row and row["rc"] == 0:
                    b.step("llama.cpp", "load+prompts+gen16", [py, me, "--_llama", str(gguf), str(args.threads)])
                gguf.unlink(missing_ok=True)
        if not args.no_peers:
            b.step("transformers", "load+prompts+gen16", [py, me, "--_hf", str(model_dir), str(args.threads)])
        b.step("ours", "USE+WALK+DESCRIBE", [py, me, "--_ours", use, "browse"])
        b.step("ours", "INSERT COMPOSE", [py, me, "--_ours", use, f"insert:{args.layers * 5 // 8}"])
        b.step("ours", "COMPILE INTO MODEL", [py, me, "--_ours", use + f'; COMPILE CURRENT INTO MODEL "{compiled}"',
                                               "noop"])
        shutil.rmtree(compiled, ignore_errors=True)
        b.step("ours", "bare E·W_down (1 layer)", [py, me, "--_matmul", str(vindex)])
        shutil.rmtree(vindex, ignore_errors=True)
        if not args.no_browse:
            b.step("ours", "EXTRACT BROWSE", [py, "-m", "lql", "extract", str(model_dir), "-o", str(browse),
                                               "--level", "browse", "--dtype", "bf16", "--force"])
            b.step("ours", "USE+WALK+DESCRIBE (browse)", [py, me, "--_ours", f'USE "{browse}"; SET CHAT OFF', "browse"])
        b.info["finished"] = dt.datetime.now(dt.UTC).isoformat()
        b.save()
        summary(b)
    finally:
        if not args.keep:
            for p in (model_dir, vindex, browse, compiled):
                shutil.rmtree(p, ignore_errors=True)
            gguf.unlink(missing_ok=True)
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
            print("cleaned up", flush=True)
    return 0


def _find(b: Bench, who: str, step: str) -> dict | None:
    for r in b.rows:
        if r["who"] == who and r["step"] == step and r.get("rc") == 0:
            return r
    return None


def summary(b: Bench) -> None:
    print("\nsummary (inner = the statement's own time in its process; RSS = that process's peak)")
    print(f"{'step':<22} {'ours s':>9} {'ours RSS':>9} {'hf s':>9} {'hf RSS':>8} {'llama s':>9} {'llama RSS':>9}"
          f" {'ours/hf':>8} {'ours/llama':>10}")
    hf = _find(b, "transformers", "load+prompts+gen16")
    ll = _find(b, "llama.cpp", "load+prompts+gen16")
    for step, key in (("INFER 5 tokens", "infer_short_s"), ("INFER 200 tokens", "infer_long_s"),
                      ("GENERATE 16", "generate_s")):
        r = _find(b, "ours", step)
        ours = (r or {}).get("inner", {}).get(key)
        peer_h = (hf or {}).get("inner", {}).get(key)
        peer_l = (ll or {}).get("inner", {}).get(key)

        def f(x, w=9):
            return f"{x:>{w}.2f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"
        print(f"{step:<22} {f(ours)} {(r or {}).get('peak_rss_mb', '-'):>9} {f(peer_h)} "
              f"{(hf or {}).get('peak_rss_mb', '-'):>8} {f(peer_l)} {(ll or {}).get('peak_rss_mb', '-'):>9}"
              f" {f(ours / peer_h if ours and peer_h else None, 8)} {f(ours / peer_l if ours and peer_l else None, 10)}")
    g = (_find(b, "ours", "GENERATE 16") or {}).get("inner", {})
    for who, r in (("ours", g), ("transformers", (hf or {}).get("inner", {})), ("llama.cpp", (ll or {}).get("inner", {}))):
        if r.get("decode_tokens_s"):
            print(f"decode tokens/s {who:<13} {r['decode_tokens_s']:.3f}")
    print(f"decode limit (bandwidth) {b.info.get('decode_limit_tokens_s', float('nan')):.3f} tokens/s")
    m = _find(b, "ours", "bare E·W_down (1 layer)")
    e = _find(b, "ours", "EXTRACT INFERENCE")
    if m and e:
        bare = m["inner"]["seconds"] * b.info["config"]["num_hidden_layers"]
        print(f"EXTRACT INFERENCE {e['seconds']:.0f} s vs bare E·W_down × layers {bare:.0f} s: "
              f"{e['seconds'] / bare:.2f}×; peak RSS {e['peak_rss_mb']} MB")


def measure_bandwidth() -> float:
    import numpy as np
    a = np.ones(1 << 28, dtype=np.float32)     # 1 GiB
    dst = np.empty_like(a)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9          # read + write


# --------------------------------------------------------------------------- children

def long_prompt(tok, n: int = 200) -> str:
    words = (LONG_WORDS * 10).split()
    text = ""
    for w in words:
        nxt = (text + " " + w).strip()
        if len(tok.encode(nxt).ids) > n:
            break
        text = nxt
    return text


def child_ours(use: str, what: str) -> dict:
    from lql.session import Session
    s = Session()
    t0 = time.perf_counter()
    s.execute(use)
    out: dict = {"use_s": time.perf_counter() - t0}
    if what == "noop":
        return out
    tok = _tokenizer_of(use)
    if what == "infer_short":
        t = time.perf_counter()
        s.query(f'INFER "{SHORT}" TOP 5')
        out["first_infer_s"] = time.perf_counter() - t      # the model's build included
        t = time.perf_counter()
        s.query(f'INFER "{SHORT}" TOP 5')
        out["infer_short_s"] = time.perf_counter() - t
        out["prompt_tokens"] = len(tok.encode(SHORT).ids)
    elif what == "infer_long":
        text = long_prompt(tok)
        t = time.perf_counter()
        s.query(f'INFER "{SHORT}" TOP 1')   # builds the model: peers' load times are apart too
        out["first_infer_s"] = time.perf_counter() - t
        t = time.perf_counter()
        s.query(f'INFER "{text}" TOP 5')
        out["infer_long_s"] = time.perf_counter() - t
        out["prompt_tokens"] = len(tok.encode(text).ids)
    elif what == "generate":
        s.query(f'INFER "{SHORT}" TOP 1')                 # builds the model
        t = time.perf_counter()
        s.query(f'INFER "{SHORT}" GENERATE 1')
        prefill = time.perf_counter() - t          # the prompt's pass + the first token
        out["generate1_s"] = prefill
        t = time.perf_counter()
        r = s.query(f'INFER "{SHORT}" GENERATE 16')
        out["generate_s"] = time.perf_counter() - t
        n = int(r.meta.get("num_tokens", 16))
        out["tokens"] = n
        out["tokens_s"] = n / out["generate_s"]
        # decode alone: GENERATE 1 (the prompt's pass, measured just before) taken out
        out["decode_tokens_s"] = max(n - 1, 1) / max(out["generate_s"] - prefill, 1e-9)
    elif what == "browse":
        t = time.perf_counter()
        s.query(f'WALK "{SHORT}" TOP 5')
        out["walk_s"] = time.perf_counter() - t
        t = time.perf_counter()
        s.query('DESCRIBE "France"')
        out["describe_s"] = time.perf_counter() - t
    elif what.startswith("insert:"):
        t = time.perf_counter()
        s.execute('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", "Paris") '
                  f'AT LAYER {int(what.split(":")[1])} MODE COMPOSE')
        out["insert_s"] = time.perf_counter() - t
        t = time.perf_counter()
        s.query('INFER "The capital of Atlantis is" TOP 5')
        out["infer_after_s"] = time.perf_counter() - t
    try:
        from lql.model.layerstore import cached_bytes
        out["cached_mb"] = cached_bytes() / 2**20
    except ImportError:
        pass
    return out


def _tokenizer_of(use: str):
    from tokenizers import Tokenizer
    path = use.split('"')[1]
    return Tokenizer.from_file(str(Path(path) / "tokenizer.json"))


def child_hf(model_dir: str, threads: int) -> dict:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads)
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    out: dict = {}
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    out["load_s"] = time.perf_counter() - t
    with torch.no_grad():
        for key, text in (("infer_short_s", SHORT), ("infer_long_s", long_prompt(tok))):
            ids = torch.tensor([tok.encode(text).ids])
            t = time.perf_counter()
            model(ids)
            out[key] = time.perf_counter() - t
        ids = torch.tensor([tok.encode(SHORT).ids])
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        gen = model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
        out["generate_s"] = time.perf_counter() - t
        n = gen.shape[1] - ids.shape[1]
        out["tokens"] = int(n)
        out["decode_tokens_s"] = max(n - 1, 1) / max(out["generate_s"] - prefill, 1e-9)
    return out


def child_llama(gguf: str, threads: int) -> dict:
    from llama_cpp import Llama
    out: dict = {}
    t = time.perf_counter()
    llm = Llama(model_path=gguf, n_ctx=512, n_threads=threads, n_threads_batch=threads, n_batch=512,
                verbose=False, use_mmap=True)
    out["load_s"] = time.perf_counter() - t
    tok_short = llm.tokenize(SHORT.encode(), add_bos=False)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(Path(gguf).parent / "model" / "tokenizer.json"))
    tok_long = llm.tokenize(long_prompt(tok).encode(), add_bos=False)
    for key, ids in (("infer_short_s", tok_short), ("infer_long_s", tok_long)):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        out[key] = time.perf_counter() - t
    out["prompt_tokens_long"] = len(tok_long)
    llm.reset()
    t = time.perf_counter()
    n, first = 0, 0.0
    for _token in llm.generate(tok_short, top_k=1, temp=0.0, reset=True):
        n += 1
        if n == 1:
            first = time.perf_counter() - t       # the prompt's pass + the first token
        if n >= 16:
            break
    out["generate_s"] = time.perf_counter() - t
    out["tokens"] = n
    out["decode_tokens_s"] = max(n - 1, 1) / max(out["generate_s"] - first, 1e-9)
    return out


def child_matmul(vindex: str) -> dict:
    """The bare down-meta product of one layer: embeddings (f32) @ W_down (f32), as extraction does it."""
    import numpy as np

    from lql.vindex import open_vindex
    v = open_vindex(vindex)
    emb = v._embeddings_f32()
    down = np.asarray(v.weights["layers.0.mlp.down_proj.weight"], dtype=np.float32)  # [hidden, ffn]
    t = time.perf_counter()
    step = 8192
    for lo in range(0, emb.shape[0], step):
        np.matmul(emb[lo:lo + step], down)
    return {"seconds": time.perf_counter() - t}


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1].startswith("--_"):
        sys.path[:0] = [str(REPO)]
        kind = sys.argv[1]
        if kind == "--_write":
            info = write_model(Path(sys.argv[2]), json.loads(sys.argv[3]), Path(sys.argv[4]))
            print(json.dumps({"gib": info["bytes"] / 2**30, "shards": info["shards"]}))
        elif kind == "--_ours":
            print(json.dumps(child_ours(sys.argv[2], sys.argv[3])))
        elif kind == "--_hf":
            print(json.dumps(child_hf(sys.argv[2], int(sys.argv[3]))))
        elif kind == "--_llama":
            print(json.dumps(child_llama(sys.argv[2], int(sys.argv[3]))))
        elif kind == "--_bandwidth":
            print(json.dumps({"gb_s": measure_bandwidth()}))
        elif kind == "--_matmul":
            print(json.dumps(child_matmul(sys.argv[2])))
        sys.exit(0)
    sys.exit(main())
