"""Knowledge-editing measurements on SmolLM2-135M (the real model).

    OMP_NUM_THREADS=1 python benchmarks/bench_edit.py [--vindex PATH]

Without --vindex it uses the test cache's f32 ALL vindex (extracting it once).
Prints: COMPOSE and KNN insertion of 10 invented facts (retrieval on the
canonical prompt and on a paraphrase, controls whose top-1 changed), DELETE of
(France, capital, Paris) (suppression; collateral on Germany → Berlin, Italy → Rome,
Spain → Madrid, Japan → Tokyo and France → French (another template); exact
revert), and timings.  Predictions are raw prompts (no chat template).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

FACTS = [("Atlantis", "capital", "Poseidon"), ("Wakanda", "capital", "Birnin"),
         ("Zubrowka", "capital", "Lutz"), ("Elbonia", "language", "Klingon"),
         ("Freedonia", "currency", "doubloon"), ("Narnia", "capital", "Cair"),
         ("Gondor", "capital", "Minas"), ("Latveria", "leader", "Doom"),
         ("Krakozhia", "language", "Esperanto"), ("Genovia", "capital", "Pyrus")]
PARAPHRASES = {"Atlantis": "The capital city of Atlantis is", "Wakanda": "Wakanda's capital is",
               "Zubrowka": "The capital city of Zubrowka is", "Elbonia": "In Elbonia, people speak",
               "Freedonia": "In Freedonia you pay with the", "Narnia": "The capital city of Narnia is",
               "Gondor": "The capital city of Gondor is", "Latveria": "Latveria is ruled by",
               "Krakozhia": "In Krakozhia, people speak", "Genovia": "The capital city of Genovia is"}
CONTROLS = ["The capital of France is", "The capital of Germany is", "The capital of Japan is",
            "The official language of Spain is", "The currency of Japan is the",
            "A long time ago, there", "The capital of Italy is", "The leader of the free world is",
            "The official language of Brazil is", "The largest planet in the solar system is"]


def fresh(path):
    from lql.edit.overlay import Overlay, OverlayVindex
    from lql.vindex import open_vindex
    base = open_vindex(path)
    ov = Overlay(base)
    return base, ov, OverlayVindex(base, ov)


def bench_insert(path, mode: str) -> dict:
    from lql.edit.insert import calibrate_compose, compose_op, install_layer, knn_op
    from lql.runtime import predict
    base, ov, v = fresh(path)
    layer = install_layer(v, None)
    before = [predict(v, c).top1 for c in CONTROLS]
    t0 = time.perf_counter()
    plans = []
    for e, r, t in FACTS:
        fn = compose_op if mode == "compose" else knn_op
        plan = fn(v, e, r, t, layer=layer)
        ov.record(plan.op)
        if mode == "compose":
            calibrate_compose(ov, v, plan)
        plans.append(plan)
    t_insert = time.perf_counter() - t0
    hits, para = 0, 0
    for (e, _, _), plan in zip(FACTS, plans):
        p = predict(v, plan.prompt)
        hits += p.top1 == plan.target_id
        para += predict(v, PARAPHRASES[e]).top1 == plan.target_id
        print(f"  {mode:7s} {plan.prompt!r:45s} → {v.token_text(p.top1)!r:12s} "
              f"p={p.top[0][1]:.3f} target {plan.target_text!r}")
    after = [predict(v, c).top1 for c in CONTROLS]
    changed = [(c, v.token_text(a), v.token_text(b)) for c, a, b in zip(CONTROLS, before, after)
               if a != b]
    for c, a, b in changed:
        print(f"  control changed: {c!r}: {a!r} → {b!r}")
    return {"mode": mode, "layer": layer, "retrieved": hits, "paraphrase": para,
            "controls_changed": len(changed), "insert_s": t_insert}


#: DELETE controls: (prompt, expected answer) — other facts of the same template and one of
#: another template; the answer must be the base model's top-1 for the row to count
DELETE_CONTROLS = [("The capital of Germany is", " Berlin"), ("The capital of Italy is", " Rome"),
                   ("The capital of Spain is", " Madrid"), ("The capital of Japan is", " Tokyo"),
                   ("The official language of France is", " French")]


def bench_delete(path) -> dict:
    from lql.edit.delete import delete_fact, sibling_prompts
    from lql.runtime import predict
    base, ov, v = fresh(path)
    tok = base.tokenizer
    paris = tok.encode(" Paris", add_special_tokens=False).ids[0]
    fr = "The capital of France is"
    ctl = [(c, tok.encode(a, add_special_tokens=False).ids[0]) for c, a in DELETE_CONTROLS]
    p_fr0 = float(predict(v, fr).probs[paris])
    before = [predict(v, c) for c, _ in ctl]
    t0 = time.perf_counter()
    rep = delete_fact(ov, v, fr, paris, reason="bench",
                      references=sibling_prompts("The capital of {entity} is", "France"))
    t_del = time.perf_counter() - t0
    p_fr1 = float(predict(v, fr).probs[paris])
    after = [predict(v, c) for c, _ in ctl]
    rows = []
    for (c, tid), b, a in zip(ctl, before, after):
        p0, p1 = float(b.probs[tid]), float(a.probs[tid])
        rows.append({"prompt": c, "answer": v.token_text(tid), "base_top1": b.top1 == tid,
                     "p0": p0, "p1": p1, "collateral": abs(p1 - p0) / p0 if p0 else 0.0,
                     "top1_kept": a.top1 == tid, "now_top1": v.token_text(a.top1)})
    ov.remove(ov.recording)
    p_fr2 = float(predict(v, fr).probs[paris])
    exact = p_fr2 == p_fr0 and all(float(predict(v, c).probs[t]) == float(b.probs[t])
                                   for (c, t), b in zip(ctl, before))
    return {"features": len(rep.features), "p_paris": (p_fr0, p_fr1),
            "suppression": 1 - p_fr1 / p_fr0, "controls": rows, "revert_exact": bool(exact),
            "delete_s": t_del}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vindex")
    args = ap.parse_args()
    path = args.vindex
    if path is None:
        from vindex_fixtures import smollm2_vindex
        path = smollm2_vindex(level="all", dtype="f32", source="hf")
    print(f"vindex: {path}")
    for mode in ("compose", "knn"):
        r = bench_insert(path, mode)
        print(f"INSERT MODE {mode.upper()} at layer {r['layer']}: retrieved {r['retrieved']}/10 "
              f"on the canonical prompt, {r['paraphrase']}/10 on a paraphrase, "
              f"{r['controls_changed']}/10 controls changed top-1; {r['insert_s']:.1f} s for 10 inserts")
    d = bench_delete(path)
    print(f"DELETE (France, capital, Paris): {d['features']} features; P(' Paris') "
          f"{d['p_paris'][0]:.3f} → {d['p_paris'][1]:.3f} (suppression {d['suppression']:.0%}); "
          f"REMOVE restores exactly: {d['revert_exact']}; {d['delete_s']:.1f} s")
    for r in d["controls"]:
        print(f"  control {r['prompt']!r:40s} P({r['answer']!r}) {r['p0']:.3f} → {r['p1']:.3f} "
              f"(collateral {r['collateral']:.0%}); top-1 kept: {r['top1_kept']}"
              + ("" if r["top1_kept"] else f" (now {r['now_top1']!r})")
              + ("" if r["base_top1"] else " [not the base top-1]"))


if __name__ == "__main__":
    main()
