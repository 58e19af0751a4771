"""DELETE evaluation (the issue's Gate 3): facts the model knows, deleted one at a time
through the DELETE statement, raw and in chat replies.

    OMP_NUM_THREADS=1 python benchmarks/eval_delete.py VINDEX [--forms raw,chat]
        [--mode memit] [--json OUT]

For each fact of :data:`FACTS` (a fresh session each time), ``DELETE FROM EDGES WHERE
entity = ... AND relation = ... AND target = ...`` runs under ``SET CHAT OFF`` (``raw``)
and under ``SET CHAT ON`` (``chat``: on a model with a chat template DELETE then also
suppresses the fact where the chat reply states it).  Read from the statement's result:

* suppression — 1 − P(target | canonical prompt) after / before (raw prompt);
* collateral — the fraction of the 6 checked sibling prompts (the template filled with
  other countries, none of them the references the suppression feature is fitted to)
  whose top-1 changed or whose top-1 probability moved by > 30 %;
* chat suppression — the same at the reply position where the greedy chat reply first
  stated the target (facts whose reply never states it are counted apart);
* chat collateral — the fraction of the 6 siblings whose greedy chat reply (8 tokens)
  changed at all (stricter than the raw criterion).

Gate 3: suppression ≥ 70 %, collateral ≤ 30 %.  A fact the model does not know (its
target below 5 % on the raw prompt) is skipped and listed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (entity, relation, target): facts both evaluation models know on the raw prompt
FACTS = [("France", "capital", "Paris"), ("Germany", "capital", "Berlin"),
         ("Japan", "capital", "Tokyo"), ("Italy", "capital", "Rome"),
         ("Spain", "capital", "Madrid"), ("Russia", "capital", "Moscow"),
         ("France", "language", "French"), ("Germany", "language", "German")]


def run_one(path: str, fact: tuple[str, str, str], form: str, mode: str | None = None) -> dict:
    from lql.edit.insert import target_token
    from lql.edit.prompts import canonical_prompt
    from lql.runtime import predict
    from lql.session import Session
    e, r, t = fact
    s = Session()
    s.query(f'USE "{path}"')
    s.query("SET CHAT OFF" if form == "raw" else "SET CHAT ON")
    p0 = float(predict(s.vindex, canonical_prompt(e, r)).probs[target_token(s.vindex, t)[0]])
    if p0 < 0.05:
        return {"fact": fact, "form": form, "skipped": f"P(target) {p0:.3f} < 0.05"}
    t0 = time.perf_counter()
    res = s.query(f'DELETE FROM EDGES WHERE entity = "{e}" AND relation = "{r}" '
                  f'AND target = "{t}"' + (f" MODE {mode.upper()}" if mode else ""))
    m = res.meta
    row = {"fact": fact, "form": form, "seconds": time.perf_counter() - t0,
           "how": m.get("how"), "suppression": m["suppression"],
           "collateral": len(m["collateral"]) / max(m["siblings_checked"], 1),
           "reached": m["reached"]}
    chat = m.get("chat")
    if chat is not None:
        row["chat_stated"] = chat["stated"]
        row["chat_collateral"] = len(chat["collateral"]) / max(chat["siblings_checked"], 1)
        if chat["stated"]:
            row["chat_suppression"] = chat["suppression"]
            row["chat_reply"] = [chat["reply_before"], chat["reply_after"]]
    return row


def summary(rows: list[dict], form: str) -> dict:
    done = [r for r in rows if r["form"] == form and "skipped" not in r]
    out: dict = {"form": form, "facts": len(done)}
    if not done:
        return out
    out["suppression_mean"] = sum(r["suppression"] for r in done) / len(done)
    out["suppression_ge_70"] = sum(r["suppression"] >= 0.7 for r in done) / len(done)
    out["collateral_mean"] = sum(r["collateral"] for r in done) / len(done)
    chat = [r for r in done if r.get("chat_stated")]
    if any("chat_stated" in r for r in done):
        out["chat_stated"] = len(chat)
        out["chat_collateral_mean"] = sum(r["chat_collateral"] for r in done) / len(done)
    if chat:
        out["chat_suppression_mean"] = sum(r["chat_suppression"] for r in chat) / len(chat)
        out["chat_suppression_ge_70"] = sum(r["chat_suppression"] >= 0.7 for r in chat) / len(chat)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("vindex")
    ap.add_argument("--forms", default="raw,chat")
    ap.add_argument("--mode", choices=("compose", "memit"),
                    help="DELETE ... MODE (default: none, i.e. the suppression feature)")
    ap.add_argument("--json")
    args = ap.parse_args()
    from lql.vindex import open_vindex
    has_chat = bool(getattr(open_vindex(args.vindex), "chat_template", None))
    forms = [f for f in args.forms.split(",") if f == "raw" or has_chat]
    if "chat" in args.forms and not has_chat:
        print("this model has no chat template: chat form skipped", flush=True)
    rows = []
    for form in forms:
        for fact in FACTS:
            row = run_one(args.vindex, fact, form, args.mode)
            rows.append(row)
            print(json.dumps(row), flush=True)
    sums = [summary(rows, f) for f in forms]
    for s in sums:
        print("SUMMARY", json.dumps(s), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": sums}, indent=1))


if __name__ == "__main__":
    main()
