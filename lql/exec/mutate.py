"""INSERT, DELETE, UPDATE, MERGE, REBALANCE: edits recorded in the session's overlay.

Nothing here writes the base vindex.  Every edit becomes a ``.vlp`` operation
in the patch being recorded (an anonymous auto-patch when no BEGIN PATCH is
open); see lql/edit/ and docs/EDITING.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import ast
from ..edit.conditions import all_match, condition_map
from ..edit.overlay import knn_entry_op
from ..edit.patch import PatchOp
from ..errors import ExecutionError
from ..result import Result
from ..runtime import can_forward, check_level
from . import handler

if TYPE_CHECKING:
    from ..edit.overlay import OverlayVindex
    from ..runtime.view import VindexView

COLUMNS = ["layer", "feature", "entity", "relation", "target", "mode"]
#: DELETE's goal: P(target) at most this fraction of its start (≥ 70 % suppression)
KEEP_GOAL = 0.30
#: DELETE's goal allows at most this fraction of the checked siblings changed (Gate 3)
COLLATERAL_GOAL = 0.30
AUTO_NOTE = ('auto-patch session started: edits are recorded in memory; '
             'SAVE PATCH "file.vlp" keeps them')


def _note(started: bool, ov) -> str:
    if started:
        return "; " + AUTO_NOTE
    if ov.recording is not None and ov.recording.path is not None:
        return f"; recording into {ov.recording.path.name}"
    return ""


# --------------------------------------------------------------------------- INSERT

@handler(ast.Insert)
def insert(session, stmt: ast.Insert) -> Result:
    from ..edit.insert import (
        fact_sequence,
        install_compose,
        install_layer,
        knn_plans,
        reply_tokens,
        target_tokens,
    )
    from ..edit.prompts import canonical_prompt, template_for
    from ..edit.verify import (
        check_target,
        collateral,
        sequence_probability,
        sibling_snapshot,
        whole_target,
    )
    ov = session.edit_overlay()
    view = session.vindex
    for name in ("entity", "relation", "target"):
        if not str(getattr(stmt, name)).strip():
            raise ExecutionError(f"INSERT needs a non-empty {name}")
    check_target(stmt.target)
    layer = install_layer(view, stmt.layer)
    insert_mode = stmt.mode or ast.InsertMode.KNN
    mode = insert_mode.value.lower()             # the row / message spelling
    if stmt.confidence is not None and not 0.0 <= stmt.confidence <= 1.0:
        raise ExecutionError("CONFIDENCE must be between 0 and 1")
    forward = can_forward(view)
    ids = target_tokens(view, stmt.target) if forward else target_tokens(view, stmt.target)[:1]
    template = template_for(stmt.relation, stmt.prompt)
    siblings = sibling_snapshot(view, template, stmt.entity) if forward else []
    started = False
    plans, cals = [], []
    quieted = 0
    # one feature / KNN entry per target token: token i is produced after the prompt and
    # the target's first i tokens, so GENERATE writes the whole target
    memit_cal: dict | None = None
    if insert_mode is ast.InsertMode.MEMIT:
        from ..edit.insert import InsertPlan, fact_sequence
        from ..edit.memit import MemitFact, calibrate_memit, memit_op
        check_level(view, "INSERT ... MODE MEMIT")
        op, checks = memit_op(view, [MemitFact(stmt.entity, stmt.relation, stmt.target,
                                               stmt.prompt)], layer=layer, alpha=stmt.alpha)
        started |= ov.record(op)
        memit_cal = calibrate_memit(ov, view, op, checks)
        text = canonical_prompt(stmt.entity, stmt.relation, stmt.prompt)
        plans.append(InsertPlan(op, layer, None, None, text, ids[0], view.token_text(ids[0]),
                                fact_sequence(view, text)))
    for i, tid in enumerate(ids if insert_mode is ast.InsertMode.COMPOSE else []):
        check_level(view, "INSERT ... MODE COMPOSE")
        if stmt.alpha is not None and stmt.alpha <= 0:
            raise ExecutionError("ALPHA must be positive")
        done = install_compose(ov, view, stmt.entity, stmt.relation, stmt.target,
                               layer=layer, alpha=stmt.alpha, confidence=stmt.confidence,
                               prompt=stmt.prompt, prefix=tuple(ids[:i]), token=tid)
        started |= done.started
        quieted += done.quieted
        cals.append(done.calibration)
        plans.append(done.plan)
    if insert_mode is ast.InsertMode.KNN:
        # every target token, on the canonical prompt and on the relation's other wordings
        plans = knn_plans(view, stmt.entity, stmt.relation, stmt.target, ids, layer=layer,
                          confidence=stmt.confidence, prompt=stmt.prompt)
        for p in plans:
            started |= ov.record(p.op)
    # MODE KNN: the same fact for the prompt as a chat user turn, the reply starting with
    # the target, when this session wraps INFER prompts in the chat template (SET CHAT AUTO
    # / ON).  Not COMPOSE: chat-form features passed alone (SmolLM2, 5 facts: chat 1.0) but
    # ten facts in both forms at one layer broke the raw ones (efficacy 1.0 → 0.5-0.8,
    # specificity 0.8 → 0.0-0.2), measured with benchmarks/eval_edits.py --chat
    wraps = _session_wraps(session, view)
    chat_ids: list[int] = []
    if forward and wraps and insert_mode is ast.InsertMode.KNN:
        chat_ids = reply_tokens(view, stmt.target)
        for cplan in knn_plans(view, stmt.entity, stmt.relation, stmt.target, chat_ids,
                               layer=layer, confidence=stmt.confidence, prompt=stmt.prompt,
                               chat=True):
            started |= ov.record(cplan.op)
    plan = plans[0]
    meta: dict[str, Any] = {"target_ids": ids, "tokens": len(ids)}
    if insert_mode is ast.InsertMode.COMPOSE:
        cal = cals[0]
        feats = ", ".join(str(p.feature) for p in plans)
        detail = (f"feature{'s' if len(plans) > 1 else ''} {feats} ({plan.slot} slot), "
                  f"ALPHA {cal['alpha']:g}"
                  + (f"; {quieted} earlier inserted feature{'s' if quieted > 1 else ''} made "
                     f"silent on this prompt" if quieted else ""))
        meta.update(cal)
        meta["features"] = [p.feature for p in plans]
        meta["quieted"] = quieted
    elif memit_cal is not None:
        detail = (f"rank-{plans[0].op.get('rank')} closed-form update of the down weights "
                  f"(covariance from the shipped text sample), scale ×{memit_cal['scale']:g}; "
                  f"{memit_cal['retrieved']}/{memit_cal['of']} target tokens top-1")
        meta.update(memit_cal)
    elif not forward:
        detail = (f"KNN key = the embedding of {' ' + stmt.entity.strip()!r} (BROWSE vindex: "
                  f"no forward pass; the entry is stored, INFER needs INFERENCE)")
    else:
        scoped = [p for p in plans if p.op.get("scope")]
        thr = [float(p.op.get("threshold") or 0.75) for p in plans if not p.op.get("scope")]
        others = len({p.op.get("prompt") for p in plans if p.op.get("paraphrase")
                      and not p.op.get("prefix_ids")})
        detail = (f"KNN key{'s' if len(plans) > 1 else ''} from the raw prompt {plan.prompt!r}"
                  + (f" and {others} other wording{'s' if others > 1 else ''} of the relation"
                     if others else "")
                  + f" (threshold {min(thr):.2f}{'–' + format(max(thr), '.2f') if len(thr) > 1 else ''}"
                  f": above every checked neighbour)"
                  + (f", and a scoped key for the relation asked in other words about "
                     f"{stmt.entity!r} (threshold {float(scoped[0].op.get('threshold')):.2f})"
                     if scoped else ""))
        meta["paraphrase_keys"] = others
        meta["scoped"] = bool(scoped)
    verdict = ""
    if forward:
        p_whole, greedy_ok = whole_target(view, plan.seq or plan.prompt, ids)
        p_first = float(cals[0]["probability"]) if cals else \
            float(sequence_probability(view, plan.seq or plan.prompt, ids[:1]))
        hits = collateral(view, siblings)
        chat_ok = True
        if chat_ids:
            text = canonical_prompt(stmt.entity, stmt.relation, stmt.prompt)
            p_chat, chat_ok = whole_target(view, fact_sequence(view, text, chat=True), chat_ids)
            meta.update({"p_target_chat": p_chat, "chat_generates_target": chat_ok})
        reached = greedy_ok and chat_ok and not hits
        meta.update({"p_target": p_whole, "p_first_token": p_first, "reached": reached,
                     "generates_target": greedy_ok,
                     "collateral": hits, "siblings_checked": len(siblings)})
        verdict = (f"; P(whole target {stmt.target!r} | prompt) = {p_whole:.3f}"
                   + (f" over {len(ids)} tokens" if len(ids) > 1 else "")
                   + ("" if greedy_ok else " (greedy decoding does NOT write it)")
                   + ("" if not chat_ids else
                      f"; as a chat user turn P(reply starts {stmt.target.strip()!r}) = "
                      f"{meta['p_target_chat']:.3f}"
                      + ("" if chat_ok else " (greedy decoding does NOT write it)"))
                   + f"; {len(hits)}/{len(siblings)} sibling prompts changed (top-1, or P by > 30 %)"
                   + ("" if not hits else " (" + ", ".join(
                       f"{h['prompt']!r}: {h['before']!r} → {h['after']!r}" for h in hits[:3])
                      + ")"))
        if not reached:
            why = []
            if not greedy_ok:
                why.append("greedy decoding does not write the whole target")
            if not chat_ok:
                why.append("the chat reply does not start with it")
            if hits:
                why.append("it changed other entities' answers")
            verdict += ("; GOAL NOT REACHED: " + " and ".join(why)
                        + " (try another AT LAYER, ALPHA or MODE, or REBALANCE)")
    if forward and chat_ids:
        detail += ("; installed for the raw (completion-style) prompt and for the prompt "
                   "as a chat user turn (the reply starts with the target)")
    elif forward:
        detail += ("; trained on the raw (completion-style) prompt"
                   + (" — this session wraps INFER prompts in the chat template (SET CHAT "
                      "AUTO), so query the fact with INFER ... RAW or SET CHAT OFF (MODE KNN "
                      "installs a fact for chat turns too)"
                      if wraps else ""))
    meta["prompt_form"] = "raw+chat" if chat_ids else "raw"
    row = {"layer": layer, "feature": plan.feature, "entity": stmt.entity,
           "relation": stmt.relation, "target": stmt.target, "mode": mode}
    msg = (f"inserted ({stmt.entity}, {stmt.relation}, {stmt.target}) MODE {mode.upper()} at "
           f"layer {layer}, {detail}{verdict}{_note(started, ov)}")
    return Result.table("INSERT", COLUMNS, [row], message=msg, auto_patch=started,
                        prompt=plan.prompt, target_token=plan.target_text, **meta)


def _session_wraps(session, view: VindexView) -> bool:
    """Whether a plain INFER in this session would wrap its prompt in the chat template."""
    try:
        from ..infer.prompt import should_wrap
        return should_wrap(None, session.chat_mode, bool(view.chat_template))
    except Exception:          # no template machinery / BROWSE target: nothing is wrapped
        return False


# --------------------------------------------------------------------------- matching

def _overlay_matches(view: OverlayVindex, cmap):
    """Inserted COMPOSE features and KNN entries of the overlay that satisfy ``cmap``."""
    feats, knns = [], []
    for (l, f), e in sorted(view.overlay.features.items()):
        if e.inserted:
            rec = {"entity": e.info.get("entity"), "relation": e.info.get("relation"),
                   "target": e.info.get("target"), "layer": l, "feature": f,
                   "confidence": e.info.get("confidence")}
            if all_match(cmap, rec):
                feats.append((e, rec))
    for k in view.overlay.knn:
        rec = {"entity": k.entity, "relation": k.relation, "target": k.target, "layer": k.layer,
               "feature": None, "confidence": k.confidence}
        if "feature" not in cmap and all_match(cmap, rec):
            knns.append((k, rec))
    return feats, knns


def _direct_features(view: VindexView, cmap) -> list[tuple[int, int]] | None:
    """``WHERE layer = L AND feature = F`` (or IN lists): the addressed features, else None."""
    if "layer" not in cmap or "feature" not in cmap:
        return None
    n = int(view.num_layers)
    out = []
    for layer in range(n):
        if not all(_m(c, layer) for c in cmap["layer"]):
            continue
        for f in range(int(view.num_features(layer))):
            if all(_m(c, f) for c in cmap["feature"]):
                out.append((layer, f))
    if not out:
        raise ExecutionError("no feature matches the layer/feature conditions "
                             f"(layers 0..{n - 1})")
    return out


def _m(cond, value) -> bool:
    from ..edit.conditions import matches
    return matches(cond, value)


def _eq(cmap, field):
    cs = cmap.get(field) or []
    for c in cs:
        if c.op == "=":
            return str(c.value)
    return None


def _restore_op(view: OverlayVindex, layer: int, feature: int, reason: str) -> PatchOp:
    """An update that puts a slot back to its base vectors (``restore``: drop the edit)."""
    base = view.base
    lay = view.overlay.layout
    vectors = {"gate": np.asarray(base.gate(layer)[feature], np.float32)}
    up_key = lay.up_key(layer)
    if up_key and up_key in base.weights:
        vectors["up"] = lay.rows(np.asarray(base.weights[up_key]))[feature]
    if lay.down_key(layer) in base.weights:
        vectors["down"] = lay.columns(np.asarray(base.weights[lay.down_key(layer)]))[:, feature]
    return PatchOp.make("update", layer=layer, feature=feature, restore=True, reason=reason,
                        vectors=vectors)


# --------------------------------------------------------------------------- DELETE

@handler(ast.Delete)
def delete(session, stmt: ast.Delete) -> Result:
    ov = session.edit_overlay()
    view = session.vindex
    if not stmt.where:
        raise ExecutionError("DELETE needs a WHERE clause (DELETE FROM EDGES WHERE ...)")
    cmap = condition_map(stmt.where)
    reason = stmt.to_lql()
    rows, started = [], False
    if stmt.mode is ast.InsertMode.KNN:
        raise ExecutionError("DELETE ... MODE takes COMPOSE (a suppression feature, the "
                             "default) or MEMIT (a closed-form update); a KNN fact is deleted "
                             "by its entity, relation and target without MODE")
    direct = _direct_features(view, cmap)
    if direct is not None and stmt.mode is not None:
        raise ExecutionError("DELETE ... MODE applies to a fact the model knows (WHERE entity "
                             "= ... AND relation = ...), not to WHERE layer = ... AND feature "
                             "= ...")
    if direct is not None:
        for layer, f in direct:
            started |= ov.record(PatchOp.make("delete", layer=layer, feature=f, reason=reason))
            rows.append({"layer": layer, "feature": f, "entity": None, "relation": None,
                         "target": None, "mode": "feature"})
        return Result.table("DELETE", COLUMNS, rows, removed=len(rows), auto_patch=started,
                            message=f"deleted {len(rows)} feature{'s' if len(rows) != 1 else ''}"
                                    f"{_note(started, ov)}")
    feats, knns = _overlay_matches(view, cmap)
    for e, rec in feats:
        started |= ov.record(_restore_op(view, e.layer, e.feature, reason))
        rows.append({**{k: rec[k] for k in COLUMNS if k in rec}, "mode": "compose"})
    # a KNN fact whole: one delete_knn removes its entries (every target token, wording
    # and prompt form), one row for it
    knn_facts: dict[tuple, dict] = {}
    for k, rec in knns:
        knn_facts.setdefault((k.entity, k.relation, k.target, k.layer), rec)
    for (entity, relation, target, layer), rec in knn_facts.items():
        started |= ov.record(PatchOp.make("delete_knn", entity=entity, relation=relation,
                                          target=target, layer=layer))
        rows.append({**{c: rec[c] for c in COLUMNS if c in rec}, "mode": "knn"})
    meta: dict[str, Any] = {"knn_entries": len(knns)} if knns else {}
    if not rows:
        entity, relation = _eq(cmap, "entity"), _eq(cmap, "relation")
        if entity is None or relation is None:
            return Result.table("DELETE", COLUMNS, [], removed=0,
                                message="deleted 0 edges (no inserted edge matches; deleting a "
                                        "fact the model knows needs entity = ... AND "
                                        "relation = ...)")
        rows, meta, started = _delete_base_fact(session, ov, view, entity, relation,
                                                _eq(cmap, "target"), reason, stmt.mode)
    elif stmt.mode is not None:
        raise ExecutionError("DELETE ... MODE applies to a fact the model knows; these "
                             "conditions matched inserted edges, which DELETE removes as "
                             "they are (drop MODE)")
    n = len(rows)
    msg = f"deleted {n} edge{'s' if n != 1 else ''}"
    if knns:
        msg += (f" ({len(knn_facts)} KNN fact{'s' if len(knn_facts) != 1 else ''}: "
                f"{len(knns)} entries, one per target token, wording and prompt form)")
    if "how" in meta:
        sup = meta["suppression"]
        msg = ((f"suppressed ({meta['entity']}, {meta['relation']}, {meta['target']}) with one "
                f"selective feature (L{rows[0]['layer']}:F{rows[0]['feature']})"
                if meta["how"] == "suppress" else
                f"suppressed ({meta['entity']}, {meta['relation']}, {meta['target']}) with a "
                f"closed-form MEMIT update of layer {rows[0]['layer']}'s down weights "
                f"(rank {meta['rank']})"
                if meta["how"] == "memit" else
                f"deleted {n} feature{'s' if n != 1 else ''} carrying ({meta['entity']}, "
                f"{meta['relation']}, {meta['target']})")
               + f"; P({meta['target_token']!r} | "
               f"{meta['prompt']!r}) {meta['p_before']:.3f} → {meta['p_after']:.3f} "
               f"(suppression {sup:.0%}, goal ≥ {1 - KEEP_GOAL:.0%}); "
               f"{len(meta['collateral'])}/{meta['siblings_checked']} sibling prompts changed "
               f"(top-1, or P by > 30 %; goal ≤ {COLLATERAL_GOAL:.0%})" + ("" if not meta["collateral"] else " (" + ", ".join(
                   f"{h['prompt']!r}: {h['before']!r} → {h['after']!r}"
                   for h in meta["collateral"][:3]) + ")"))
        chat = meta.get("chat")
        if meta.get("chat_note"):
            msg += "; " + meta["chat_note"]
        if chat is not None and not chat["stated"]:
            msg += ("; as a chat user turn the reply does not state it (nothing to delete "
                    f"there); {len(chat['collateral'])}/{chat['siblings_checked']} sibling "
                    "replies changed")
        elif chat is not None:
            msg += (f"; as a chat user turn: reply {chat['reply_before']!r} → "
                    f"{chat['reply_after']!r}, P(target where it was stated) "
                    f"{chat['p_before']:.3f} → {chat['p_after']:.3f}"
                    + (f" (suppression {chat['suppression']:.0%})" if chat["kept"] else
                       " — but that chat-form feature changed other entities' replies and "
                       "was dropped again")
                    + f"; {len(chat['collateral'])}/{chat['siblings_checked']} sibling "
                    "replies changed")
        if chat is not None and chat["collateral"]:
            msg += " (" + ", ".join(f"{h['prompt']!r}: {h['before']!r} → {h['after']!r}"
                                    for h in chat["collateral"][:2]) + ")"
        if not meta["reached"]:
            why = []
            if sup < 1 - KEEP_GOAL:
                why.append(f"suppression is only {sup:.0%}")
            if len(meta["collateral"]) > COLLATERAL_GOAL * max(meta["siblings_checked"], 1):
                why.append(f"other entities' answers changed (more than "
                           f"{COLLATERAL_GOAL:.0%} of those checked)")
            if chat is not None and chat["stated"] and chat["suppression"] < 1 - KEEP_GOAL:
                why.append(f"in chat replies suppression is only {chat['suppression']:.0%}")
            if chat is not None and len(chat.get("collateral") or ()) > \
                    COLLATERAL_GOAL * max(chat["siblings_checked"], 1):
                why.append(f"other entities' chat replies changed (more than "
                           f"{COLLATERAL_GOAL:.0%} of those checked)")
            msg += "; GOAL NOT REACHED: " + " and ".join(why)
    return Result.table("DELETE", COLUMNS, rows, message=msg + _note(started, ov),
                        removed=n, auto_patch=started, **meta)


def _delete_base_fact(session, ov, view: OverlayVindex, entity, relation, target, reason,
                      mode: ast.InsertMode | None = None):
    from ..edit.delete import delete_fact, sibling_prompts
    from ..edit.insert import target_token
    from ..edit.prompts import canonical_prompt, template_for
    from ..runtime import predict
    check_level(view, "DELETE of a fact the model knows")
    from ..edit.verify import collateral, is_stop_word, sibling_snapshot
    prompt = canonical_prompt(entity, relation)
    if target is None:
        pred = predict(view, prompt, top=10)
        tid = pred.top1
        ttext = view.token_text(tid)
        if is_stop_word(ttext):
            real = [view.token_text(t) for t, _, _ in pred.top if not is_stop_word(view.token_text(t))]
            raise ExecutionError(
                f"DELETE refuses: the model's answer to {prompt!r} is {ttext!r}, a stop word, "
                f"not a fact (deleting it would change the model's grammar); name the fact's "
                f"target: AND target = ..." + (f" (its first real candidate is {real[0]!r})"
                                               if real else ""))
        target = ttext.strip()
    else:
        from ..edit.verify import check_target
        check_target(target, "DELETE")
        tid, ttext = target_token(view, target)
    template = template_for(relation)
    refs = sibling_prompts(template, entity)
    started = ov.recording is None
    siblings = sibling_snapshot(view, template, entity)
    # under SET CHAT AUTO / ON on a model with a chat template, the fact is deleted from
    # chat replies too: the siblings' replies are taken now, before any edit
    in_chat = _session_wraps(session, view) and bool(getattr(view, "chat_template", None))
    if mode is ast.InsertMode.MEMIT:
        return _delete_by_memit(view, ov, entity, relation, target, ttext, prompt, tid,
                                siblings, started, in_chat)
    if in_chat:
        from ..edit.delete import chat_sibling_replies
        chat_siblings = chat_sibling_replies(view, template, entity)
    # first one selective suppression feature (cheap, precise); if it cannot reach the goal
    # without collateral it is dropped again and the carrying features are deleted instead
    from ..edit.delete import suppress_fact
    from ..edit.insert import install_layer
    mark = len(ov.recording.operations) if ov.recording is not None else 0
    how = "suppress"
    rep = suppress_fact(ov, view, entity, relation, target, prompt, tid,
                        layer=install_layer(view, None))
    hits = collateral(view, siblings)

    def gate3(r, h) -> tuple[bool, int, float]:
        """Gate 3 (≥ 70 % suppression, ≤ 30 % of the checked siblings changed), then
        fewer siblings changed, then more suppression: the better DELETE sorts higher."""
        sup = 1.0 - r.p_after / r.p_before if r.p_before > 0 else 0.0
        return (sup >= 1 - KEEP_GOAL and len(h) <= COLLATERAL_GOAL * max(len(siblings), 1),
                -len(h), sup)
    if not gate3(rep, hits)[0]:
        assert ov.recording is not None
        suppress_ops = ov.recording.operations[mark:]
        del ov.recording.operations[mark:]
        ov._changed()
        frep = delete_fact(ov, view, prompt, tid, reason=reason, references=refs)
        fhits = collateral(view, siblings)
        if gate3(frep, fhits) > gate3(rep, hits):
            how, rep, hits = "feature", frep, fhits
        else:                     # the feature deletion did worse: the suppression stays
            del ov.recording.operations[mark:]
            ov.recording.operations.extend(suppress_ops)
            ov._changed()
    sup = 1.0 - rep.p_after / rep.p_before if rep.p_before > 0 else 0.0
    rows = [{"layer": l, "feature": f, "entity": entity, "relation": relation,
             "target": target, "mode": how} for l, f in rep.features]
    meta = {"entity": entity, "relation": relation, "target": target, "target_token": ttext,
            "prompt": prompt, "p_before": rep.p_before, "p_after": rep.p_after,
            "suppression": sup, "collateral": hits, "siblings_checked": len(siblings),
            "reached": sup >= 1 - KEEP_GOAL
            and len(hits) <= COLLATERAL_GOAL * max(len(siblings), 1), "how": how}
    if in_chat:
        from ..edit.delete import chat_collateral, suppress_in_chat
        mark = len(ov.recording.operations) if ov.recording is not None else 0
        # what the raw-form edit already changed in the siblings' chat replies
        raw_hits = chat_collateral(view, chat_siblings)
        chat = suppress_in_chat(ov, view, entity, relation, target, prompt,
                                layer=install_layer(view, None))
        if chat is None:
            meta["chat"] = {"stated": False, "collateral": raw_hits,
                            "siblings_checked": len(chat_siblings)}
        else:
            chat_hits = chat_collateral(view, chat_siblings)
            csup = 1.0 - chat.p_after / chat.p_before if chat.p_before > 0 else 0.0
            kept = ({h["prompt"] for h in chat_hits} <= {h["prompt"] for h in raw_hits}
                    or len(chat_hits) <= COLLATERAL_GOAL * max(len(chat_siblings), 1))
            if not kept:        # it changed too many other entities' replies: dropped
                assert ov.recording is not None
                del ov.recording.operations[mark:]
                ov._changed()
                chat_hits = raw_hits
            else:
                rows += [{"layer": l, "feature": f, "entity": entity, "relation": relation,
                          "target": target, "mode": "suppress (chat)"}
                         for l, f in chat.features]
            meta["chat"] = {"stated": True, "p_before": chat.p_before,
                            "p_after": chat.p_after,
                            "suppression": csup if kept else 0.0,
                            "reply_before": chat.reply_before,
                            "reply_after": chat.reply_after if kept else chat.reply_before,
                            "still_stated": chat.still_stated or not kept,
                            "collateral": chat_hits, "siblings_checked": len(chat_siblings),
                            "kept": kept}
        meta["reached"] = bool(meta["reached"]
                               and len(meta["chat"]["collateral"])
                               <= COLLATERAL_GOAL * max(len(chat_siblings), 1)
                               and (not meta["chat"]["stated"]
                                    or meta["chat"]["suppression"] >= 1 - KEEP_GOAL))
    return rows, meta, started and bool(rows)


def _delete_by_memit(view, ov, entity, relation, target, ttext, prompt, tid, siblings,
                     started, in_chat: bool):
    """DELETE ... MODE MEMIT: :func:`lql.edit.delete.memit_suppress` (raw prompt only:
    under a chat-wrapping session the result says so)."""
    from ..edit.delete import memit_suppress
    from ..edit.insert import install_layer
    from ..edit.verify import collateral
    check_level(view, "DELETE ... MODE MEMIT")
    layer = install_layer(view, None)
    rep = memit_suppress(ov, view, entity, relation, target, prompt, tid, layer=layer)
    hits = collateral(view, siblings)
    sup = 1.0 - rep.p_after / rep.p_before if rep.p_before > 0 else 0.0
    assert ov.recording is not None
    op = ov.recording.operations[-1]
    rows = [{"layer": layer, "feature": None, "entity": entity, "relation": relation,
             "target": target, "mode": "memit"}]
    meta = {"entity": entity, "relation": relation, "target": target, "target_token": ttext,
            "prompt": prompt, "p_before": rep.p_before, "p_after": rep.p_after,
            "suppression": sup, "collateral": hits, "siblings_checked": len(siblings),
            "reached": sup >= 1 - KEEP_GOAL
            and len(hits) <= COLLATERAL_GOAL * max(len(siblings), 1),
            "how": "memit", "rank": int(op.get("rank") or 0)}
    if in_chat:
        meta["chat_note"] = ("MODE MEMIT keys the raw prompt only: chat replies were not "
                             "edited or checked (drop MODE MEMIT for that)")
    return rows, meta, started


# --------------------------------------------------------------------------- UPDATE

@handler(ast.Update)
def update(session, stmt: ast.Update) -> Result:
    from ..edit.insert import target_token, unembed_direction
    ov = session.edit_overlay()
    view = session.vindex
    sets = {}
    for a in stmt.assignments:
        name = a.field.lower()
        if name not in ("target", "confidence"):
            raise ExecutionError(f"UPDATE can set target and confidence, not {name!r}")
        sets[name] = a.value
    if "confidence" in sets:
        try:
            sets["confidence"] = float(sets["confidence"])
        except (TypeError, ValueError):
            raise ExecutionError("confidence must be a number") from None
    if not stmt.where:
        raise ExecutionError("UPDATE needs a WHERE clause")
    cmap = condition_map(stmt.where)
    new_tid: int | None = None
    new_text = ""                       # the new target's token text, set with new_tid
    if "target" in sets:
        new_tid, new_text = target_token(view, str(sets["target"]))
    rows, started = [], False

    def meta_for(down):
        emb = np.asarray(view.embed([new_tid]), np.float32)[0]
        return {"t": new_text.strip(), "i": new_tid, "c": float(emb @ down)}

    direct = _direct_features(view, cmap)
    targets = []
    if direct is not None:
        for layer, f in direct:
            e = ov.features.get((layer, f))
            targets.append((layer, f, e))
    else:
        feats, knns = _overlay_matches(view, cmap)
        targets = [(e.layer, e.feature, e) for e, _ in feats]
        # KNN facts, each whole: its entries (one per target token, wording and prompt
        # form) go with one delete_knn; a new target is INSERTed again (keys on the new
        # target's prefixes), a new confidence re-creates each entry as it was
        facts: dict[tuple, list] = {}
        for k, _rec in knns:
            facts.setdefault((k.entity, k.relation, k.target, k.layer), []).append(k)
        for (entity, relation, target, layer), entries in facts.items():
            started |= ov.record(PatchOp.make("delete_knn", entity=entity, relation=relation,
                                              target=target, layer=layer))
            conf = float(sets.get("confidence", entries[0].confidence))
            new_target = str(sets.get("target", target))
            if "target" in sets and can_forward(view):
                from ..edit.insert import knn_plans, reply_tokens, target_tokens
                # the wording it was INSERTed with: the prompt of its first token's
                # canonical raw entry (the shortest: the others add target tokens)
                seen = [k.prompt for k in entries if k.prompt_form == "raw"
                        and not k.paraphrase and k.prompt and entity in k.prompt]
                template = min(seen, key=len).replace(entity, "{entity}") if seen else None
                forms = [(False, target_tokens(view, new_target))]
                if any(k.prompt_form == "chat" for k in entries):
                    forms.append((True, reply_tokens(view, new_target)))
                for chat, ids in forms:
                    for plan in knn_plans(view, entity, relation, new_target, ids, layer=layer,
                                          confidence=conf, prompt=template, chat=chat):
                        ov.record(plan.op)
            else:
                for k in entries:
                    ov.record(knn_entry_op(k, target=new_target, confidence=conf,
                                           target_id=new_tid if new_tid is not None
                                           else k.target_id))
            rows.append({"layer": layer, "feature": None, "entity": entity,
                         "relation": relation, "target": new_target, "mode": "knn"})
    for layer, f, e in targets:
        fields: dict[str, Any] = {"reason": stmt.to_lql()}
        vectors = {}
        if "confidence" in sets:
            fields["confidence"] = sets["confidence"]
        if new_tid is not None:
            lay = ov.layout
            if e is not None and e.down is not None:
                old = e.down
            else:
                check_level(view, "UPDATE ... SET target")
                old = lay.columns(np.asarray(view.weights[lay.down_key(layer)]))[:, f]
            down = unembed_direction(view, new_tid) * float(np.linalg.norm(old))
            vectors["down"] = down
            fields["target"] = str(sets["target"])
            fields["down_meta"] = meta_for(down)
        started |= ov.record(PatchOp.make("update", layer=layer, feature=f, vectors=vectors,
                                          **fields))
        rows.append({"layer": layer, "feature": f,
                     "entity": e.info.get("entity") if e else None,
                     "relation": e.info.get("relation") if e else None,
                     "target": fields.get("target", e.info.get("target") if e else None),
                     "mode": (e.info.get("mode") if e else None) or "feature"})
    n = len(rows)
    return Result.table("UPDATE", COLUMNS, rows, updated=n, auto_patch=started,
                        message=f"updated {n} edge{'s' if n != 1 else ''}{_note(started, ov)}")


# --------------------------------------------------------------------------- MERGE

@handler(ast.Merge)
def merge(session, stmt: ast.Merge) -> Result:
    from ..edit.diff import diff_features, diff_ops
    from ..edit.patch import read_patch
    ov = session.edit_overlay()
    view = session.vindex
    if stmt.target is not None:
        tgt = session.resolve_path(stmt.target).resolve()
        base_path = Path(getattr(ov.base, "path", "")).resolve()
        if tgt != base_path:
            raise ExecutionError(f"MERGE INTO another vindex is not supported: USE "
                                 f"\"{stmt.target}\" first, then MERGE \"{stmt.source}\"")
    src = session.resolve_path(stmt.source)
    if src.is_file() and src.suffix == ".vlp":
        from ..edit.patch import validate_patch
        source_patch = read_patch(src)
        validate_patch(source_patch, ov.base, str(src))
        ops = [o.copy() for o in source_patch.operations]
        what = f"patch {src.name}"
    else:
        from ..vindex import open_vindex
        other = open_vindex(src)
        ops = diff_ops(other, diff_features(view, other))
        what = f"vindex {src.name}"
    policy = (stmt.on_conflict or ast.Conflict.KEEP_SOURCE).value
    taken, skipped, started = 0, 0, False
    # One fold of the overlay up front, then a running {(layer, feature): confidence}
    # of the edits taken so far: linear in the number of operations (re-folding the
    # overlay after each recorded op made MERGE quadratic).
    current: dict = {k: e.info.get("confidence") for k, e in ov.features.items()}
    for op in ops:
        key = (op.layer, op.feature) if op.feature is not None else None
        if key is not None and key in current:
            if policy == "KEEP_TARGET":
                skipped += 1
                continue
            if policy == "HIGHEST_CONFIDENCE" and \
                    float(op.get("confidence") or 0) <= float(current[key] or 0):
                skipped += 1
                continue
        started |= ov.record(op)
        taken += 1
        if key is not None:
            if op.op == "update" and op.get("restore"):
                current.pop(key, None)
            elif op.op == "update":
                if op.get("confidence") is not None or key not in current:
                    current[key] = op.get("confidence", current.get(key))
            elif op.op == "delete":
                current[key] = None
            else:
                current[key] = op.get("confidence")
    return Result.msg("MERGE", f"merged {taken} operation{'s' if taken != 1 else ''} from "
                      f"{what} ({skipped} conflicts kept the current edit){_note(started, ov)}",
                      merged=taken, skipped=skipped)


# --------------------------------------------------------------------------- REBALANCE

@handler(ast.Rebalance)
def rebalance(session, stmt: ast.Rebalance) -> Result:
    from ..edit.rebalance import CEILING, FLOOR, MAX_ITERATIONS
    from ..edit.rebalance import rebalance as run
    ov = session.edit_overlay()
    view = session.vindex
    check_level(view, "REBALANCE")
    floor = FLOOR if stmt.floor is None else float(stmt.floor)
    ceiling = CEILING if stmt.ceiling is None else float(stmt.ceiling)
    if not 0.0 <= floor < ceiling <= 1.0:
        raise ExecutionError("need 0 <= FLOOR < CEILING <= 1")
    n = MAX_ITERATIONS if stmt.max_iterations is None else int(stmt.max_iterations)
    if n < 1:
        raise ExecutionError("MAX must be at least 1")
    rows, it, ok = run(ov, view, floor=floor, ceiling=ceiling, max_iterations=n)
    if not rows:
        return Result.table("REBALANCE", COLUMNS + ["probability", "scale", "status", "reason"], [],
                            message="no COMPOSE-inserted facts to rebalance")
    msg = (f"rebalanced {len(rows)} fact{'s' if len(rows) != 1 else ''} in {it} "
           f"iteration{'s' if it != 1 else ''}: " + ("all within" if ok else "not all within")
           + f" [{floor:g}, {ceiling:g}]")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        msg += "; did not converge: " + "; ".join(
            f"({r['entity']}, {r['relation']}, {r['target']}) P = {r['probability']:.3f} "
            f"({r['status']}: {r['reason']})" for r in bad)
    cols = COLUMNS + ["probability", "scale", "status", "reason"]
    return Result.table("REBALANCE", cols, rows, message=msg, converged=ok, iterations=it,
                        not_converged=[(r["entity"], r["relation"], r["target"]) for r in bad])


# COMPILE and DIFF handlers live in lql/exec/compile.py; the registry maps them to the
# "lifecycle" group, so make sure they are registered whenever the edit handlers are.
try:  # pragma: no cover - import side effect only
    from . import compile as _compile  # noqa: F401
except ImportError:
    pass
from . import compact as _compact  # noqa: E402,F401  (COMPACT MINOR/MAJOR, SHOW COMPACT STATUS)
