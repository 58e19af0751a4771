"""Knowledge-editing measurements on SmolLM2-135M (the real model).

    OMP_NUM_THREADS=1 python benchmarks/bench_edit.py [--vindex PATH]

Without --vindex it uses the test cache's f32 ALL vindex (extracting it once).
Prints: COMPOSE and KNN insertion of 10 invented facts (retrieval on the
canonical prompt and on a paraphrase, controls whose top-1 changed), DELETE of
(France, capital, Paris) (suppression, collateral on Germany → Berlin, exact
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
    from lql.edit.forward import predict
    from lql.edit.insert import calibrate_compose, compose_op, install_layer, knn_op
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


def bench_delete(path) -> dict:
    from lql.edit.delete import delete_fact
    from lql.edit.forward import predict
    from lql.edit.insert import REFERENCE_ENTITIES
    base, ov, v = fresh(path)
    tok = base.tokenizer
    paris = tok.encode(" Paris", add_special_tokens=False).ids[0]
    berlin = tok.encode(" Berlin", add_special_tokens=False).ids[0]
    fr, de = "The capital of France is", "The capital of Germany is"
    p_fr0, p_de0 = predict(v, fr).probs[paris], predict(v, de).probs[berlin]
    t0 = time.perf_counter()
    rep = delete_fact(ov, v, fr, paris, reason="bench",
                      references=[f"The capital of {e} is" for e in REFERENCE_ENTITIES
                                  if e != "France"])
    t_del = time.perf_counter() - t0
    p_fr1, p_de1 = predict(v, fr).probs[paris], predict(v, de).probs[berlin]
    ov.remove(ov.recording)
    p_fr2, p_de2 = predict(v, fr).probs[paris], predict(v, de).probs[berlin]
    return {"features": len(rep.features), "p_paris": (float(p_fr0), float(p_fr1)),
            "p_berlin": (float(p_de0), float(p_de1)),
            "suppression": float(1 - p_fr1 / p_fr0), "collateral": float(abs(p_de1 - p_de0) / p_de0),
            "revert_exact": bool(p_fr2 == p_fr0 and p_de2 == p_de0), "delete_s": t_del}


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
          f"P(' Berlin' | Germany) {d['p_berlin'][0]:.3f} → {d['p_berlin'][1]:.3f} "
          f"(collateral {d['collateral']:.0%}); REMOVE restores exactly: {d['revert_exact']}; "
          f"{d['delete_s']:.1f} s")


if __name__ == "__main__":
    main()
