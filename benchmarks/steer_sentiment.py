"""Does a contrastive sentiment vector steer SmolLM2? A dose–response, in LQL statements.

    python benchmarks/steer_sentiment.py [--model smollm2] [--layer 15] [--json out.json]

1. ``SAVE STEER CONTRAST FROM FILE positive VS negative AT LAYER L INTO v.npy`` — the unit
   mean difference of the residual after layer L at the last position of 16 positive vs
   16 negative sentences (benchmarks/data/steer_positive.txt / steer_negative.txt, which
   differ only in their sentiment words).
2. On 12 held-out neutral prompts (benchmarks/data/steer_neutral.txt, none in the
   contrast sets), ``INFER <prompt> RAW TOP 1 STEER "v.npy" AT LAYER L SCALE s %`` for s in
   a dose range including negative scales (the control: the direction reversed) and a
   random unit direction at the same doses (the control for "any push changes things").
3. Measured from the full next-token distribution (``Prediction.probs`` via the same hooks
   the statement uses): the probability mass on a fixed set of positive vs negative words
   (single tokens with a leading space), their log-ratio, and how many prompts have more
   positive than negative mass. Plus greedy GENERATE continuations at a few doses.

Reported as measured — a null result is a result. The model defaults to the bundled
SmolLM2-135M-Instruct GGUF (``USE MODEL "smollm2"``; no torch needed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO / "benchmarks" / "data"

POSITIVE = [" great", " good", " wonderful", " amazing", " excellent", " fantastic", " happy",
            " beautiful", " perfect", " lovely", " nice", " delicious", " brilliant", " fun"]
NEGATIVE = [" bad", " terrible", " awful", " horrible", " boring", " sad", " disappointing",
            " poor", " worst", " ugly", " disgusting", " annoying", " miserable", " dreadful"]
DOSES = [-16.0, -8.0, -4.0, 0.0, 4.0, 8.0, 16.0]     # percent of the mean residual norm


def single_ids(tok, words: list[str]) -> dict[str, int]:
    out = {}
    for w in words:
        ids = tok.encode(w, add_special_tokens=False).ids
        if len(ids) == 1:
            out[w] = ids[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--generate", type=int, default=12)
    args = ap.parse_args()

    from lql import ast
    from lql.infer.engine import target_for
    from lql.infer.predict import rank_next
    from lql.session import Session
    from lql.steer import prepare

    work = Path(tempfile.mkdtemp(prefix="steer-sentiment-"))
    s = Session(cwd=work)
    s.query(f'USE MODEL "{args.model}"')
    target = target_for(s)
    tok = target.tokenizer
    pos, neg = single_ids(tok, POSITIVE), single_ids(tok, NEGATIVE)
    pos_ids, neg_ids = np.array(list(pos.values())), np.array(list(neg.values()))
    neutral = [line for line in (DATA / "steer_neutral.txt").read_text().splitlines() if line.strip()]

    t0 = time.perf_counter()
    r = s.query(f'SAVE STEER CONTRAST FROM FILE "{DATA / "steer_positive.txt"}" VS '
                f'"{DATA / "steer_negative.txt"}" AT LAYER {args.layer} INTO "sentiment.npy"')
    contrast_s = time.perf_counter() - t0
    hidden = target.model.hidden_size
    rnd = np.random.default_rng(0).standard_normal(hidden).astype(np.float32)
    np.save(work / "random.npy", rnd / np.linalg.norm(rnd))
    v = np.load(work / "sentiment.npy")
    print(f"contrast at layer {args.layer}: |mean(A) - mean(B)| = {r.meta['difference_norm']:.2f} "
          f"({r.meta['prompts_a']} vs {r.meta['prompts_b']} prompts, {contrast_s:.1f} s); "
          f"cosine with the random control {float(v @ np.load(work / 'random.npy')):.3f}")
    print(f"word sets: {len(pos)} positive, {len(neg)} negative single tokens; "
          f"{len(neutral)} held-out neutral prompts\n")

    def measure(vector: str, dose: float) -> dict:
        p_pos, p_neg, wins, norms = [], [], 0, []
        for prompt in neutral:
            stmt = ast.Infer(prompt, top=1, wrap=ast.PromptWrap.RAW,
                             steer=() if dose == 0 else (
                                 ast.Steer(ast.SteerFile(vector), args.layer, dose, percent=True),))
            ids = tok.encode(prompt).ids
            hooked = prepare(s, target, stmt, ids)
            if hooked.meta.get("steer"):
                norms.append(hooked.meta["steer"][0]["mean_residual_norm"])
            probs = rank_next(target, ids, 1, hooks=hooked.hooks).probs
            a, b = float(probs[pos_ids].sum()), float(probs[neg_ids].sum())
            p_pos.append(a)
            p_neg.append(b)
            wins += a > b
        lr = [math.log(a / b) for a, b in zip(p_pos, p_neg)]
        return {"vector": vector, "dose_percent": dose, "p_pos": float(np.mean(p_pos)),
                "p_neg": float(np.mean(p_neg)), "log_ratio": float(np.mean(lr)),
                "log_ratio_sd": float(np.std(lr)), "pos_wins": int(wins), "n": len(neutral),
                "mean_residual_norm": float(np.mean(norms)) if norms else None}

    rows = []
    print(f"{'vector':10} {'dose %':>7} {'P(pos)':>8} {'P(neg)':>8} {'log(pos/neg)':>13} {'pos>neg':>8}")
    for vector in ("sentiment.npy", "random.npy"):
        for dose in DOSES:
            row = measure(vector, dose)
            rows.append(row)
            print(f"{vector[:-4]:10} {dose:7.1f} {row['p_pos']:8.4f} {row['p_neg']:8.4f} "
                  f"{row['log_ratio']:8.3f} ±{row['log_ratio_sd']:4.2f} {row['pos_wins']:5d}/{row['n']}")
    norm = next(r["mean_residual_norm"] for r in rows if r["mean_residual_norm"])
    print(f"\n(mean residual norm after layer {args.layer} over the neutral prompts, first position "
          f"excluded: {norm:.1f}; 8 % = an added vector of norm {0.08 * norm:.1f})\n")

    samples = []
    for prompt in neutral[:3]:
        for dose in (-8.0, 0.0, 8.0):
            clause = f' STEER "sentiment.npy" AT LAYER {args.layer} SCALE {dose} %' if dose else ""
            g = s.query(f'INFER "{prompt}" RAW GENERATE {args.generate}{clause}')
            samples.append({"prompt": prompt, "dose_percent": dose, "text": g.message})
            print(f"{dose:+5.0f} %  {prompt}{g.message!r}")

    if args.json:
        args.json.write_text(json.dumps({"layer": args.layer, "model": args.model, "rows": rows,
                                         "samples": samples, "positive": list(pos),
                                         "negative": list(neg)}, indent=1))


if __name__ == "__main__":
    main()
