"""DESCRIBE evaluation: precision@10 of each DESCRIBE mode against expected associates.

    python benchmarks/eval_describe.py [INFERENCE_VINDEX] [--modes emb,res,prompts,chat]
                                       [--entities N] [--json OUT.json]
    python benchmarks/eval_describe.py [INFERENCE_VINDEX] --kinds-grid [--entities N]
    python benchmarks/eval_describe.py [INFERENCE_VINDEX] --variants [--top 12]

Default: for every entity of ``benchmarks/data/describe_associates.json`` (36 entities,
each with ~20 associates written from general knowledge), run each mode through a
Session — ``emb`` (``DESCRIBE "<e>"``), ``res`` (``DESCRIBE "<e>" VIA RESIDUAL``),
``prompts`` (``DESCRIBE "<e>" VIA PROMPTS`` with ``SET CHAT OFF``), ``chat`` (the same
with ``SET CHAT ON``; skipped on a model without a chat template) — take the first 10
edge targets and count those that are an expected associate (case-insensitive whole
word, a trailing plural "s" ignored).  Prints per mode ``p@10`` (hits / 10, the
goal's measure), ``p@ret`` (hits / edges returned, when fewer than 10) and the
seconds per entity, plus every entity's top 10 with hits marked ``*``.

``--kinds-grid``: VIA PROMPTS' candidate answers collected once per entity (raw and chat)
with the kind weighting off, then precision@10 re-ranked for a grid of the weighting's
floor (``KIND_FLOOR``) and of a factor on relations asked of any kind — exactly what the
pipeline gives for those settings, since the weights change only the final ranking.

``--variants``: the older exploration — DESCRIBE's top edges per entity for several
pipeline variants, so a reader can judge which gives what the model associates with
the entity:

Variants (knowledge band, 20 features a layer, floor 0.25, merge by word):

* query: ``emb`` (DESCRIBE's embedding query), ``res0`` (VIA RESIDUAL with the
  entity at position 0, the old behaviour), ``res`` (VIA RESIDUAL after the
  model's BOS, the current behaviour);
* score: ``gate`` (gate · query), ``centred`` (minus the mean over a reference
  list of common nouns, run the same way), ``z`` (that, divided by their std);
* target filter: ``noise`` (the token filter of lql.browse.tokens), ``+hubs``
  (also the down-meta hub tokens — the current pipeline).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

ENTITIES = ["France", "Paris", "Germany", "Einstein", "Python", "dog", "Monday", "red"]
REFERENCE = """time year people way day man thing woman life child world school state family
student group country problem hand part place case week company system program question work
government number night point home water room mother area money story fact month lot right study
book eye job word business issue side kind head house service friend father power hour game line
end member law car city community name president team minute idea kid body information back parent
face level office door health person art war history party result change morning reason research
girl moment air teacher force education food music table tree river paper color animal song king
church street computer science market window phone language doctor""".split()


DATA = REPO / "benchmarks" / "data" / "describe_associates.json"
MODES = {"emb": 'DESCRIBE "{e}"', "res": 'DESCRIBE "{e}" VIA RESIDUAL',
         "prompts": 'DESCRIBE "{e}" VIA PROMPTS', "chat": 'DESCRIBE "{e}" VIA PROMPTS'}


def _key(word: str) -> str:
    w = str(word).strip().casefold().strip(".,;:!?\"'()")
    return w[:-1] if len(w) > 3 and w.endswith("s") else w


def precision(args) -> None:
    import json
    import time

    from lql.session import Session
    data = json.loads(DATA.read_text(encoding="utf-8"))["entities"]
    entities = list(data.items())[:args.entities] if args.entities else list(data.items())
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    s = Session()
    s.execute(f'USE "{args.vindex}"')
    has_chat = bool(s.vindex.chat_template)
    report: dict = {"vindex": str(args.vindex), "model": s.vindex.model, "modes": {}}
    for mode in modes:
        if mode == "chat" and not has_chat:
            print(f"== {mode}: skipped (the model has no chat template)")
            continue
        s.execute("SET CHAT ON" if mode == "chat" else "SET CHAT OFF")
        hits_total, ret_total, secs, per = 0, 0, 0.0, []
        for entity, expected in entities:
            want = {_key(w) for w in expected}
            t = time.time()
            r = s.execute(MODES[mode].format(e=entity))
            r = r[0] if isinstance(r, list) else r
            secs += time.time() - t
            targets = [str(row["target"]) for row in r.rows if row.get("target") is not None][:10]
            hits = [t for t in targets if _key(t) in want]
            hits_total += len(hits)
            ret_total += len(targets)
            per.append({"entity": entity, "top10": targets, "hits": len(hits)})
            shown = ", ".join(t.strip() + ("*" if _key(t) in want else "") for t in targets)
            print(f"  {mode:7s} {entity:12s} {len(hits)}/10  {shown}", flush=True)
        n = len(entities)
        row = {"p@10": hits_total / (10 * n), "p@ret": hits_total / max(ret_total, 1),
               "edges": ret_total / n, "s/entity": secs / n, "entities": per}
        report["modes"][mode] = row
        print(f"== {mode}: p@10 {row['p@10']:.3f}  p@ret {row['p@ret']:.3f}  "
              f"edges/entity {row['edges']:.1f}  {row['s/entity']:.1f} s/entity", flush=True)
    print(f"\n| mode | p@10 | p@ret | edges/entity | s/entity |  ({report['model']}, {len(entities)} entities)")
    print("|---|---|---|---|---|")
    for mode, row in report["modes"].items():
        print(f"| {mode} | {row['p@10']:.3f} | {row['p@ret']:.3f} | {row['edges']:.1f} | "
              f"{row['s/entity']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")


def _p10(got, types, floor, any_kind, weigh=True) -> float:
    """precision@10 of collected candidates ``(expected, kinds, [(relation, word, spec)])``
    ranked as VIA PROMPTS ranks them with the kind weighting's ``floor`` and a factor
    ``any_kind`` on relations asked of any kind (``weigh`` off: no weighting)."""
    hits = 0
    for want, kinds, cands in got:
        best: dict = {}
        for rel, word, value in cands:
            if value <= 0:
                continue
            t = types[rel]
            w = 1.0 if not weigh or kinds is None else (
                any_kind if not t else max(floor, min(1.0, sum(kinds.get(k, 0.0) for k in t))))
            k = word.casefold().strip(".,;:!?\"'()")
            if k not in best or value * w > best[k][0]:
                best[k] = (value * w, word)
        top = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:10]
        hits += sum(_key(v[1]) in want for _k, v in top)
    return hits / (10 * len(got))


def kinds_grid(args) -> None:
    import json

    import lql.infer.relations as R
    from lql.session import Session
    data = json.loads(DATA.read_text(encoding="utf-8"))["entities"]
    entities = list(data.items())[:args.entities] if args.entities else list(data.items())
    state: dict = {}
    prompt, complete, spec, kinds_of = R.relation_prompt, R._complete, R._specificity, R.entity_kinds

    def relation_prompt(target, rel, template, entity, *, chat):
        state["rel"] = rel.name
        return prompt(target, rel, template, entity, chat=chat)

    def _complete(target, cache, tid, p):
        word, wp = complete(target, cache, tid, p)
        state["word"] = word
        return word, wp

    def _specificity(p, b):
        value = spec(p, b)
        state["cands"].append((state["rel"], state["word"], value))
        return value

    def entity_kinds(target, entity, *, chat):
        state["kinds"] = kinds_of(target, entity, chat=chat)
        return state["kinds"]

    R.relation_prompt, R._complete, R._specificity, R.entity_kinds = (relation_prompt, _complete,
                                                                       _specificity, entity_kinds)
    R.relation_weight = lambda rel, kinds: 1.0
    types = {r.name: r.types for r in R.relations()}
    s = Session()
    s.execute(f'USE "{args.vindex}"')
    for mode in ("prompts", "chat"):
        if mode == "chat" and not s.vindex.chat_template:
            continue
        s.execute("SET CHAT ON" if mode == "chat" else "SET CHAT OFF")
        got = []
        for entity, expected in entities:
            state["cands"] = []
            s.execute(f'DESCRIBE "{entity}" VIA PROMPTS')
            got.append(({_key(w) for w in expected}, state["kinds"], list(state["cands"])))

        print(f"== {mode}: p@10 without kinds {_p10(got, types, 0, 1, False):.3f}")
        for floor in (0.02, 0.05, 0.1, 0.2, 0.3):
            print(f"  floor {floor:<4}  " + "  ".join(f"any={a}: {_p10(got, types, floor, a):.3f}"
                                                     for a in (1.0, 0.7, 0.5, 0.3)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("vindex", nargs="?")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--variants", action="store_true", help="the older variant exploration")
    ap.add_argument("--kinds-grid", action="store_true", help="p@10 over the kind weighting's settings")
    ap.add_argument("--modes", default="emb,res,prompts,chat")
    ap.add_argument("--entities", type=int, default=0, help="only the first N entities")
    ap.add_argument("--json", help="write the per-entity results here")
    args = ap.parse_args()
    if args.vindex is None:
        from vindex_fixtures import smollm2_vindex
        args.vindex = str(smollm2_vindex(level="inference"))
    if args.kinds_grid:
        kinds_grid(args)
        return
    if not args.variants:
        precision(args)
        return
    from lql.browse.core import band_layers, down_meta_of, entity_query
    from lql.browse.describe import HUB_SHARE
    from lql.browse.tokens import entity_ids, tokens_of
    from lql.model import Hooks
    from lql.runtime import run
    from lql.vindex.reader import Vindex

    v = Vindex(args.vindex)
    toks, dm = tokens_of(v), down_meta_of(v)
    layers = band_layers(v, "knowledge")
    gates = {l: np.asarray(v.gate(l), dtype=np.float32) for l in layers}
    hubs = dm.hub_ids(HUB_SHARE)
    bos = (v.model_config or {}).get("bos_token_id")

    def residual(word, with_bos):
        ids = v.tokenizer.encode(word).ids
        if with_bos and bos is not None and ids[0] != bos:
            ids = [bos] + ids
        got = {}

        def grab(layer, x, out):
            got[layer] = np.array(x[-1], dtype=np.float32)
            return out
        run(v, ids, hooks=Hooks(ffn=grab))
        return got

    queries = {
        "emb": lambda w: dict.fromkeys(layers, entity_query(v, w)[0]),
        "res0": lambda w: residual(w, False),
        "res": lambda w: residual(w, True),
    }
    ref = {}
    for name, fn in queries.items():
        qs = [fn(w) for w in REFERENCE]
        ref[name] = {}
        for l in layers:
            s = gates[l] @ np.stack([q[l] for q in qs]).T
            ref[name][l] = (s.mean(1), s.std(1) + 1e-6)

    def edges(entity, scores, hub_filter):
        own_ids = set(entity_ids(v, entity))
        out = {}
        for l in layers:
            s = scores[l]
            idx = [int(i) for i in np.argsort(-s, kind="stable")[:20] if s[i] > 0]
            if not idx:
                continue
            best = s[idx[0]]
            top_ids = dm.layer(l)[0][:, 0]
            for f in idx:
                if s[f] < 0.25 * best:
                    break
                t = int(top_ids[f])
                key = toks.text(t).strip().casefold()
                if t in own_ids or key == entity.casefold() or toks.is_noise(t) or \
                        (hub_filter and t in hubs):
                    continue
                out[key] = max(out.get(key, -1e9), float(s[f]))
        return [k for k, _ in sorted(out.items(), key=lambda kv: -kv[1])][:args.top]

    for entity in ENTITIES:
        print(f"== {entity}")
        for name, fn in queries.items():
            q = fn(entity)
            raw = {l: gates[l] @ q[l] for l in layers}
            variants = {
                "gate noise": (raw, False),
                "gate +hubs": (raw, True),
                "centred +hubs": ({l: raw[l] - ref[name][l][0] for l in layers}, True),
                "z +hubs": ({l: (raw[l] - ref[name][l][0]) / ref[name][l][1] for l in layers},
                            True),
            }
            for vname, (sc, hf) in variants.items():
                print(f"  {name:4s} {vname:14s} " + ", ".join(edges(entity, sc, hf)))
        print()


if __name__ == "__main__":
    main()
