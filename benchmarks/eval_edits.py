"""Edit evaluation on counterfactuals (CounterFact-style) — efficacy, paraphrase, specificity, fluency.

    OMP_NUM_THREADS=1 python benchmarks/eval_edits.py VINDEX [--modes knn,compose]
        [--facts N] [--batches 1,10] [--single N] [--chat] [--compile DIR] [--json OUT]
        [--knn-key residual|ffn_input]

Data: ``benchmarks/data/counterfact_edits.json`` (60 facts, 6 relations, each with 3
paraphrase templates and 3 neighbourhood prompts).  Every fact is inserted through the
same machinery INSERT uses (``lql.edit.insert``: one feature / KNN entry per target
token, so the *whole* target is produced).  Measured, per mode and batch size (a batch:
that many facts inserted together, then all measured):

* efficacy — greedy decoding from the fact's prompt writes the whole new target;
* paraphrase — the same on each paraphrase template (fraction over all of them); none of
  them is one of the wordings INSERT keys a fact on, so this is held-out generalisation;
* wordings — the same on the relation's shipped other wordings
  (``lql.edit.prompts.PARAPHRASES``), which MODE KNN keys a fact on too: in-sample;
* specificity — each neighbourhood prompt keeps the base model's top-1 token;
* fluency — mean of the 2- and 3-gram entropies (bits) of 24 greedy tokens from the fact's
  prompt and two generic prompts, edited vs base;
* chat (``--chat``, models with a chat template; facts are then also installed for the
  chat form, as INSERT does under SET CHAT AUTO) — the new target appears in the first 16
  tokens of the reply to the fact's prompt sent as a user turn; chat_paraphrase: the same
  for the paraphrase templates; chat_specificity: each neighbourhood prompt's reply keeps
  the base model's first token;
* after COMPILE INTO MODEL (``--compile DIR``, COMPOSE and MEMIT): the compiled folder loaded by
  ``transformers`` with its defaults, greedy decoding there (needs the ``parity`` extra).

Batch 1 ("single") inserts, measures and REMOVEs each of the first ``--single`` facts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "benchmarks" / "data" / "counterfact_edits.json"
GENERIC = ("Once upon a time", "My favourite thing about summer is")


def load_facts(n: int) -> list[dict]:
    facts = json.loads(DATA.read_text(encoding="utf-8"))["facts"]
    if n >= len(facts):
        return facts
    # spread over the relations: every k-th fact
    step = len(facts) / n
    return [facts[int(i * step)] for i in range(n)]


def fresh(path):
    from lql.edit.overlay import Overlay, OverlayVindex
    from lql.vindex import open_vindex
    base = open_vindex(path)
    ov = Overlay(base)
    return base, ov, OverlayVindex(base, ov)


MEMIT_LAYERS = 1


def insert_memit(ov, view, facts: list[dict], layer: int) -> None:
    """MODE MEMIT: one closed-form update for the whole batch (lql/edit/memit.py), spread
    over ``MEMIT_LAYERS`` layers ending at ``layer`` (``--memit-layers``)."""
    from lql.edit.memit import MemitFact, calibrate_memit, memit_spread, spread_layers
    ops, checks = memit_spread(ov, view, [MemitFact(f["entity"], f["relation"], f["target_new"],
                                                    f["prompt"]) for f in facts],
                               layers=spread_layers(layer, MEMIT_LAYERS))
    calibrate_memit(ov, view, ops, checks)


def insert_fact(ov, view, mode: str, fact: dict, layer: int, chat: bool = False) -> None:
    """The INSERT statement's loop: one op per target token (lql/exec/mutate.py); with
    ``chat`` (INSERT under SET CHAT AUTO on a model with a chat template), for MODE KNN, the
    same again keyed on the prompt as a chat user turn, the reply starting with the target
    (``LQL_EVAL_CHAT_COMPOSE=1``: for COMPOSE too, which INSERT does not do)."""
    if mode == "memit":
        insert_memit(ov, view, [fact], layer)
        return
    from lql.edit.insert import install_compose, knn_plans, reply_tokens, target_tokens
    forms = [(False, target_tokens(view, fact["target_new"]))]
    if chat and view.chat_template and (mode == "knn" or os.environ.get("LQL_EVAL_CHAT_COMPOSE")):
        forms.append((True, reply_tokens(view, fact["target_new"])))
    for wrapped, ids in forms:
        if mode != "compose":
            for plan in knn_plans(view, fact["entity"], fact["relation"], fact["target_new"],
                                  ids, layer=layer, prompt=fact["prompt"], chat=wrapped):
                ov.record(plan.op)
            continue
        for i, tid in enumerate(ids):
            install_compose(ov, view, fact["entity"], fact["relation"], fact["target_new"],
                            layer=layer, prompt=fact["prompt"], prefix=tuple(ids[:i]),
                            token=tid, chat=wrapped)


def generate(view, ids, n: int) -> list[int]:
    from lql.runtime import greedy_ids
    return greedy_ids(view, ids, n, to_end_of_turn=False)


def fill(template: str, entity: str) -> str:
    return template.replace("{entity}", entity)


def writes_target(view, prompt_ids, target: str, extra: int = 1) -> bool:
    from lql.edit.insert import target_tokens
    want = target_tokens(view, target)
    got = generate(view, prompt_ids, len(want) + extra)
    text = view.tokenizer.decode(got)
    return text.strip().lower().startswith(target.strip().lower())


def ngram_entropy(ids: list[int]) -> float:
    out = []
    for n in (2, 3):
        grams = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
        tot = sum(grams.values())
        out.append(-sum(c / tot * math.log2(c / tot) for c in grams.values()) if tot else 0.0)
    return sum(out) / len(out)


def fluency(view, prompts: list[str]) -> float:
    from lql.runtime import prompt_ids
    return sum(ngram_entropy(generate(view, prompt_ids(view, p), 24)) for p in prompts) / len(prompts)


def chat_ids(view, text: str) -> list[int] | None:
    from lql.edit.insert import chat_prompt_ids
    return chat_prompt_ids(view, text) if view.chat_template else None


def chat_hit(view, fact: dict, template: str | None = None) -> bool | None:
    ids = chat_ids(view, fill(template or fact["prompt"], fact["entity"]))
    if ids is None:
        return None
    text = view.tokenizer.decode(generate(view, ids, 16))
    return fact["target_new"].lower() in text.lower()


def chat_top(view, prompt: str) -> int | None:
    """The first token of the chat reply to ``prompt`` (a user turn)."""
    from lql.runtime import predict
    ids = chat_ids(view, prompt)
    return None if ids is None else predict(view, ids, top=1).top1


def measure(view, facts: list[dict], base_top: dict, *, chat: bool, flu: bool,
            base_chat_top: dict | None = None) -> dict:
    from lql.edit.prompts import paraphrase_templates
    from lql.runtime import predict, prompt_ids
    eff = para = para_n = spec = spec_n = word = word_n = 0
    chat_ok = chat_n = cpara = cpara_n = cspec = cspec_n = 0
    for f in facts:
        eff += writes_target(view, prompt_ids(view, fill(f["prompt"], f["entity"])), f["target_new"])
        for t in f["paraphrases"]:
            para += writes_target(view, prompt_ids(view, fill(t, f["entity"])), f["target_new"])
            para_n += 1
        # the relation's shipped wordings INSERT keys a fact on (in-sample, unlike the
        # paraphrases above)
        for t in paraphrase_templates(f["relation"], f["prompt"]):
            word += writes_target(view, prompt_ids(view, fill(t, f["entity"])), f["target_new"])
            word_n += 1
        for p in f["neighbourhood"]:
            spec += predict(view, p, top=1).top1 == base_top[p]
            spec_n += 1
        if chat:
            h = chat_hit(view, f)
            if h is not None:
                chat_ok += h
                chat_n += 1
                for t in f["paraphrases"]:
                    cpara += bool(chat_hit(view, f, t))
                    cpara_n += 1
                for p in f["neighbourhood"] if base_chat_top else []:
                    cspec += chat_top(view, p) == base_chat_top[p]
                    cspec_n += 1
    out = {"efficacy": eff / len(facts), "paraphrase": para / max(para_n, 1),
           "specificity": spec / max(spec_n, 1), "n": len(facts),
           **({"wordings": word / word_n} if word_n else {})}
    if chat:
        out["chat"] = chat_ok / chat_n if chat_n else None
        out["chat_paraphrase"] = cpara / cpara_n if cpara_n else None
        out["chat_specificity"] = cspec / cspec_n if cspec_n else None
    if flu:
        out["fluency"] = fluency(view, [fill(facts[0]["prompt"], facts[0]["entity"]), *GENERIC])
    return out


def compiled_efficacy(folder: Path, facts: list[dict]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)          # transformers' defaults
    dtype = str(next(model.parameters()).dtype)
    ok = 0
    finite = True
    for f in facts:
        enc = tok(fill(f["prompt"], f["entity"]), return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits
            finite &= bool(torch.isfinite(logits).all())
            out = model.generate(**enc, max_new_tokens=len(tok(" " + f["target_new"],
                                 add_special_tokens=False).input_ids) + 1, do_sample=False)
        text = tok.decode(out[0, enc.input_ids.shape[1]:])
        ok += text.strip().lower().startswith(f["target_new"].lower())
    return {"efficacy": ok / len(facts), "dtype": dtype, "finite": finite}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("vindex")
    ap.add_argument("--modes", default="knn,compose")
    ap.add_argument("--facts", type=int, default=60)
    ap.add_argument("--batches", default="10")
    ap.add_argument("--single", type=int, default=0)
    ap.add_argument("--layer", type=int)
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--compile")
    ap.add_argument("--json")
    ap.add_argument("--knn-key", choices=("residual", "ffn_input"),
                    help="the vector MODE KNN keys by (default: lql.edit.insert.DEFAULT_KNN_KEY)")
    ap.add_argument("--memit-layers", type=int, default=None,
                    help="MODE MEMIT over this many layers ending at the install layer")
    args = ap.parse_args()
    global MEMIT_LAYERS
    if args.memit_layers:
        MEMIT_LAYERS = args.memit_layers
    from lql.edit import insert as insert_mod
    from lql.edit.insert import install_layer
    if args.knn_key:
        insert_mod.DEFAULT_KNN_KEY = args.knn_key
    from lql.runtime import predict
    facts = load_facts(args.facts)
    base, ov, view = fresh(args.vindex)
    layer = install_layer(view, args.layer)
    neigh = sorted({p for f in facts for p in f["neighbourhood"]})
    base_top = {p: predict(view, p, top=1).top1 for p in neigh}
    base_chat_top = {p: chat_top(view, p) for p in neigh} if args.chat else None
    print(f"vindex {args.vindex} ({base.model}), layer {layer}, {len(facts)} facts", flush=True)
    base_m = measure(view, facts[:10], base_top, chat=args.chat, flu=True,
                     base_chat_top=base_chat_top)
    print(f"base model (no edits), first 10 facts: {base_m}", flush=True)
    rows = []
    for mode in args.modes.split(","):
        if args.single:
            t0 = time.perf_counter()
            acc: dict = {}
            for f in facts[:args.single]:
                insert_fact(ov, view, mode, f, layer, args.chat)
                m = measure(view, [f], base_top, chat=args.chat, flu=False,
                            base_chat_top=base_chat_top)
                for k, v in m.items():
                    if v is not None and k != "n":
                        acc.setdefault(k, []).append(v)
                ov.remove(ov.recording)
            row = {"mode": mode, "batch": 1, "n": args.single,
                   **({"knn_key": insert_mod.DEFAULT_KNN_KEY} if mode == "knn" else {}),
                   **{k: sum(v) / len(v) for k, v in acc.items()},
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
        for b in [int(x) for x in args.batches.split(",") if x]:
            group = facts[:b]
            t0 = time.perf_counter()
            if mode == "memit":
                insert_memit(ov, view, group, layer)
            for f in group if mode != "memit" else []:
                insert_fact(ov, view, mode, f, layer, args.chat)
            t_ins = time.perf_counter() - t0
            m = measure(view, group, base_top, chat=args.chat, flu=True,
                     base_chat_top=base_chat_top)
            row = {"mode": mode, "batch": b, **m, "insert_s": t_ins,
                   **({"knn_key": insert_mod.DEFAULT_KNN_KEY} if mode == "knn" else {}),
                   "seconds": time.perf_counter() - t0}
            if args.compile and mode in ("compose", "memit"):
                from lql.edit.compile import compile_model
                out = Path(args.compile) / f"{mode}-{b}"
                compile_model(view, out, force=True)
                row["compiled"] = compiled_efficacy(out, group)
            rows.append(row)
            print(json.dumps(row), flush=True)
            ov.remove(ov.recording)
    if args.json:
        Path(args.json).write_text(json.dumps({"base": base_m, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
