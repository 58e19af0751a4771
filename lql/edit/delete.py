"""DELETE of a fact the base model knows: find the features that carry it.

Features are found by what they do on the fact's canonical prompt, not by
their names: a feature's contribution to the target is its activation at the
last position times its down vector projected on the target's unembedding
direction *minus* the mean direction of the model's other top candidates
(so a feature that pushes every capital city alike scores low, one that
pushes " Paris" in particular scores high):

    score(l, f) = (act[l, f] − mean_ref act[l, f]) · down[l][:, f] · (u(target) − mean u(others))

with u(t) = head[t] ⊙ final-norm weight, "others" the model's top-10 other
candidates plus the reference prompts' own answers (" Tokyo", " Cairo" ...) and ``mean_ref act`` the feature's mean activation on the same
template filled with reference entities (``insert.REFERENCE_ENTITIES``): a
feature that fires for every "The capital of X is" (and pushes every capital)
is not what makes this fact, and deleting it would break the others.  A feature
is further penalised by the most it contributes to any reference prompt's own
answer (act_ref · down · (u(answer_ref) − mean u(others))), so features that
carry "capital city" for every country are kept; the penalty is weighted by
``PENALTY`` (0.5) and the siblings are the template filled with the 16
:data:`SIBLING_ENTITIES` (countries).  DELETE removes the highest-scoring
features two at a time (re-measuring after each round) until the target's
probability on the prompt fell below ``keep`` × its starting value (default
0.30, i.e. ≥ 70 % suppression) or ``max_features`` (96) are gone.  Measured on
SmolLM2 (benchmarks/bench_edit.py): fewer siblings or a full penalty trade
suppression against collateral (8 references, penalty 1: 76 % suppression but
Rome and Madrid lose top-1; 16 siblings, penalty 1: 56 % suppression after 96
features; penalty 0.5, batches of 4: 90 % suppression, Madrid loses top-1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..infer.attribution import RIVALS, feature_scores, rival_ids, unembed_directions
from ..model import Record
from ..runtime import model_for, predict, run
from .insert import scale_down
from .patch import PatchOp

if TYPE_CHECKING:
    from ..runtime.view import VindexView
    from .overlay import OverlayVindex

__all__ = ["fact_feature_scores", "delete_fact", "sibling_prompts", "checked_siblings",
           "SIBLING_ENTITIES", "suppress_in_chat", "chat_sibling_replies", "chat_collateral",
           "suppress_fact", "memit_suppress"]

#: fillers of the fact's template whose own answers DELETE must not break (the entity itself
#: is left out); countries dominate because most relations of the prompt table are about them
SIBLING_ENTITIES = ("France", "Japan", "Brazil", "Egypt", "Canada", "India", "Mexico", "Russia",
                    "China", "Poland", "Sweden", "Turkey", "Australia", "Argentina", "Kenya",
                    "Greece")

BATCH = 2
MAX_FEATURES = 96
KEEP = 0.30
#: weight of the sibling penalty (1: a feature is kept if it helps any sibling's answer as much
#: as it helps this fact; lower: more suppression, more collateral — see docs/EDITING.md)
PENALTY = 0.5


def sibling_prompts(template: str, entity: str) -> list[str]:
    """``template`` filled with :data:`SIBLING_ENTITIES` other than ``entity``."""
    low = entity.strip().lower()
    return [template.replace("{entity}", e) for e in SIBLING_ENTITIES if e.lower() != low]


def checked_siblings(template: str, entity: str) -> list[str]:
    """:func:`sibling_prompts` without the reference entities a COMPOSE gate or
    suppression feature is solved to be silent on (``insert.REFERENCE_ENTITIES``): the
    siblings a collateral check looks at are ones the edit was not fitted to."""
    from .insert import REFERENCE_ENTITIES
    skip = {e.lower() for e in REFERENCE_ENTITIES} | {entity.strip().lower()}
    return [template.replace("{entity}", e) for e in SIBLING_ENTITIES if e.lower() not in skip]


def _directions(view: VindexView, ids) -> np.ndarray:
    return unembed_directions(model_for(view), view.model_config, ids)


def reference_activations(view: VindexView, references: list[str]) -> tuple[list | None, list[int]]:
    """Mean last-position FFN activations per layer over ``references`` (other fillers of
    the same template) and each reference's top-1 token; ``(None, [])`` without references."""
    if not references:
        return None, []
    per_ref = []
    answers = []
    for ref in references:
        out = run(view, ref, record=Record(ffn_activations=True))
        answers.append(int(np.argmax(out.logits)))
        per_ref.append([np.asarray(a, np.float32) for a in out.ffn_activations])
    return per_ref, answers


def fact_feature_scores(view: OverlayVindex, prompt: str, target_id: int, *, exclude=frozenset(),
                        layers=None, baseline=None, rivals=()) -> list[tuple[float, int, int]]:
    """``[(score, layer, feature)]`` best first (positive scores only).  With ``baseline``
    (:func:`reference_activations`) a feature counts by how much *more* it fires on this
    prompt than on the template's other fillers: what is specific to this fact."""
    out = run(view, prompt, record=Record(ffn_activations=True))
    probs = out.probs()
    others = rival_ids(probs, target_id, RIVALS, rivals)
    rivals = list(rivals)[:len(baseline)] if baseline else []
    dirs = _directions(view, [target_id] + others)
    direction = dirs[0] - dirs[1:].mean(0)
    rival_dirs = None
    if baseline:
        rdirs = _directions(view, list(rivals))
        rival_dirs = rdirs - dirs[1:].mean(0)
    lay = view.overlay.layout
    found = []
    for layer in (layers if layers is not None else range(int(view.num_layers))):
        act = out.ffn_activations[layer]
        if act is None:
            continue
        ref_acts = np.stack([r[layer] for r in baseline]) if baseline else None  # (refs, features)
        cols = lay.columns(np.asarray(view.weights[lay.down_key(layer)], dtype=np.float32))
        # the shared attribution (lql.infer.attribution); the baseline / penalty: see module doc
        score = feature_scores(act, cols, direction, ref_acts=ref_acts, rival_dirs=rival_dirs,
                               penalty=PENALTY)
        top = np.argsort(-score)[:BATCH * 4]
        found += [(float(score[f]), layer, int(f)) for f in top
                  if score[f] > 0 and (layer, int(f)) not in exclude]
    found.sort(reverse=True)
    return found


@dataclass
class DeleteReport:
    features: list[tuple[int, int]]
    p_before: float
    p_after: float


def delete_fact(overlay, view: OverlayVindex, prompt: str, target_id: int, *, reason: str,
                references: Sequence[str] = (), keep: float = KEEP,
                max_features: int = MAX_FEATURES, layers=None) -> DeleteReport:
    """Record ``delete`` operations until P(target | prompt) ≤ keep × its starting value.
    ``references``: the same template filled with other entities (see module doc)."""
    p0 = float(predict(view, prompt).probs[target_id])
    baseline, rivals = reference_activations(view, list(references))
    removed: list[tuple[int, int]] = []
    p = p0
    while len(removed) < max_features and p > keep * p0:
        cands = fact_feature_scores(view, prompt, target_id, exclude=set(removed),
                                    baseline=baseline, layers=layers, rivals=rivals)
        if not cands:
            break
        for _, layer, f in cands[:BATCH]:
            overlay.record(PatchOp.make("delete", layer=layer, feature=f, reason=reason))
            removed.append((layer, f))
        p = float(predict(view, prompt).probs[target_id])
    return DeleteReport(removed, p0, p)


def suppress_fact(overlay, view: OverlayVindex, entity: str, relation: str, target: str,
                  prompt: str, target_id: int, *, layer: int, keep: float = KEEP,
                  max_doublings: int = 4) -> DeleteReport:
    """DELETE by a *suppression feature*: one new FFN feature at ``layer`` whose gate fires
    on this fact's prompt only (the same selective gate as INSERT MODE COMPOSE) and whose
    down vector pushes *against* the target (through Gemma's post-FFN norm where there is
    one).  Its down vector doubles (at most ``max_doublings`` times) until P(target) ≤
    ``keep`` × its start.  An overlay insert like any other: REMOVE PATCH reverts it
    exactly; COMPILE bakes it in.  The fact's name is kept in the op (``mode: suppress``)."""
    from .insert import compose_op
    p0 = float(predict(view, prompt).probs[target_id])
    plan = compose_op(view, entity, relation, target, layer=layer, push=-1.0, token=target_id)
    overlay.record(plan.op)
    p = _strengthen(overlay, plan.op, lambda: predict(view, prompt).probs, target_id,
                    keep * p0, max_doublings)
    return DeleteReport([(plan.layer, int(plan.feature or 0))], p0, p)


def memit_suppress(overlay, view: OverlayVindex, entity: str, relation: str, target: str,
                   prompt: str, target_id: int, *, layer: int, keep: float = KEEP,
                   max_doublings: int = 4) -> DeleteReport:
    """DELETE ... MODE MEMIT: one closed-form low-rank update of ``layer``'s down weights
    (:func:`lql.edit.memit.memit_op` with ``suppress``: the fact's key pushed *against*
    the target, the template's reference fillers kept, the covariance of the shipped
    text sample), its factor ``U`` doubled (at most ``max_doublings`` times) until
    P(target) ≤ ``keep`` × its start.  A ``memit`` op: REMOVE PATCH reverts it exactly,
    COMPILE bakes it in.  No features are listed (the update is not a feature)."""
    from .memit import MemitFact, memit_op
    from .patch import decode_vector, encode_vector
    p0 = float(predict(view, prompt).probs[target_id])
    op, _ = memit_op(view, [MemitFact(entity, relation, target)], layer=layer, suppress=True)
    overlay.record(op)
    p = float(predict(view, prompt).probs[target_id])
    for _ in range(max_doublings):
        if p <= keep * p0:
            break
        op.data["memit_u_b64"] = encode_vector(decode_vector(op.data["memit_u_b64"]) * 2.0)
        overlay._changed()
        p = float(predict(view, prompt).probs[target_id])
    return DeleteReport([], p0, p)


def _strengthen(overlay, op: PatchOp, probs, target: int, goal: float,
                max_doublings: int) -> float:
    """Double a suppression feature's down vector (at most ``max_doublings`` times) until
    the target's probability in ``probs()`` (the next-token distribution) is ≤ ``goal``
    and the target is off the top, then scale it back to the smallest write that still
    leaves it ≤ :data:`SHRINK_AIM` × ``goal`` and off the top (:func:`_shrink`); returns
    the target's last probability."""
    out = probs()
    for _ in range(max_doublings):
        if _suppressed(out, target, goal):
            break
        scale_down(overlay, op, 2.0)
        out = probs()
    if _suppressed(out, target, goal * SHRINK_AIM):
        return _shrink(overlay, op, probs, target, goal * SHRINK_AIM, float(out[target]))
    return float(out[target])


def _suppressed(out, target: int, limit: float) -> bool:
    return float(out[target]) <= limit and int(np.argmax(out)) != target


#: a suppression write is scaled back to the smallest that leaves the target's probability
#: ≤ this × DELETE's goal (KEEP × its start: 0.1 × the start, 90 % suppression) and the
#: target off the top.  Unscaled, the first feature alone often pushed the target to
#: P 1e-13, and so large a write moved other prompts where the gate fired weakly (SmolLM2,
#: Germany's capital: the raw-form feature changed 2 of the 6 checked siblings' chat
#: replies; scaled back, 1 — the multilingual quiet text, insert._ordinary_positions,
#: took it to none)
SHRINK_AIM = 1.0 / 3.0
#: bisection steps of the shrink, on a log2 scale between 2**SHRINK_FLOOR and 1
SHRINK_STEPS = 6
SHRINK_FLOOR = -12.0


def _shrink(overlay, op: PatchOp, probs, target: int, aim: float, p: float) -> float:
    """Scale ``op``'s down vector by the smallest factor ``2**h``, ``h`` in
    [:data:`SHRINK_FLOOR`, 0] (bisected, :data:`SHRINK_STEPS` steps), that keeps the
    target's probability ≤ ``aim`` and the target off the top; ``p``: its probability at
    the current scale (which meets both)."""
    lo, hi, p_hi, at = SHRINK_FLOOR, 0.0, p, 0.0   # 2**hi meets the aim; 2**lo need not
    for _ in range(SHRINK_STEPS):
        mid = (lo + hi) / 2.0
        scale_down(overlay, op, 2.0 ** (mid - at))
        at = mid
        out = probs()
        if _suppressed(out, target, aim):
            hi, p_hi = mid, float(out[target])
        else:
            lo = mid
    if at != hi:
        scale_down(overlay, op, 2.0 ** (hi - at))
    return p_hi


# --------------------------------------------------------------------------- chat replies

#: tokens of a chat reply searched for the target (and compared on siblings)
CHAT_REPLY = 16
#: suppression features DELETE adds at most for one chat reply (the model may state the
#: fact again a few tokens later once the first mention is suppressed)
CHAT_ROUNDS = 3


@dataclass
class ChatDeleteReport:
    """What :func:`suppress_in_chat` did: the features, the target's probability at the
    reply position where the model first stated it (before / after), the replies, and
    whether the greedy reply still states it."""
    features: list[tuple[int, int]]
    p_before: float
    p_after: float
    reply_before: str
    reply_after: str
    still_stated: bool


def chat_reply(view: VindexView, ids: Sequence[int], n: int = CHAT_REPLY) -> list[int]:
    """The greedy reply (overlay and KNN store applied), up to ``n`` tokens, stop at the
    end of the turn (that token not included)."""
    from ..runtime import greedy_ids
    return greedy_ids(view, ids, n)


def stated_at(view: VindexView, reply: Sequence[int], target: str) -> int | None:
    """The first position of ``reply`` holding the target's first token (either spelling:
    after a space or starting a word), or ``None``."""
    forms = set()
    for text in (" " + target.strip(), target.strip()):
        ids = view.tokenizer.encode(text, add_special_tokens=False).ids
        if ids:
            forms.add(int(ids[0]))
    return next((i for i, t in enumerate(reply) if int(t) in forms), None)


def suppress_in_chat(overlay, view: OverlayVindex, entity: str, relation: str, target: str,
                     prompt: str, *, layer: int, keep: float = KEEP,
                     max_doublings: int = 4) -> ChatDeleteReport | None:
    """DELETE for the prompt sent as a chat user turn: where the greedy reply first states
    the target, a suppression feature keyed on the chat-wrapped prompt and the reply so
    far (``compose_op(..., chat=True, prefix=..., push=-1)``) pushes against it, its down
    vector doubling (at most ``max_doublings`` times) until that token's probability is
    ≤ ``keep`` × its start; if the new reply states the target further on, again there
    (at most :data:`CHAT_ROUNDS` features).  ``None`` when the reply never states it.

    The features go at ``layer`` unless there they change the chat replies of the spare
    siblings (the template filled with :data:`SIBLING_ENTITIES` beyond the six a collateral
    check compares: held in, never the checked ones) in more than
    :data:`CHAT_SPARE_GOAL` of them; then at the next of :data:`CHAT_LAYER_STEPS` that
    does not (else the one that changed fewest)."""
    from .insert import chat_prompt_ids
    from .prompts import template_for
    ids = chat_prompt_ids(view, prompt)
    before = chat_reply(view, ids)
    first = stated_at(view, before, target)
    if first is None:
        return None
    at0 = list(ids) + before[:first]
    tok0 = before[first]
    p0 = float(predict(view, at0).probs[tok0])
    template = template_for(relation)
    spare = [(p, chat_reply(view, chat_prompt_ids(view, p), 8))
             for p in checked_siblings(template, entity)[CHAT_CHECKED:]]
    n_layers = int(view.num_layers)
    assert overlay.recording is not None          # DELETE records into a patch
    ops = overlay.recording.operations
    mark = len(ops)
    tried: list[tuple[tuple[int, float], list, list[tuple[int, int]], list[int]]] = []
    for step in CHAT_LAYER_STEPS:
        at_layer = layer + step
        if not 0 <= at_layer < n_layers:
            continue
        features, reply = _chat_rounds(overlay, view, entity, relation, target, ids, before,
                                       first, p0, at_layer, keep, max_doublings)
        changed = len(chat_collateral(view, spare))
        p1 = float(predict(view, at0).probs[tok0])
        tried.append(((changed, p1), list(ops[mark:]), features, reply))
        if changed <= CHAT_SPARE_GOAL * max(len(spare), 1) and p1 <= keep * p0:
            break
        del ops[mark:]                              # dropped: the next layer is tried alone
        overlay._changed()
    else:                                           # none met both: the one that did best
        tried.append(min(tried, key=lambda t: t[0]))
        ops.extend(tried[-1][1])
        overlay._changed()
    (_, p1), _, features, reply = tried[-1]        # its ops are the ones in place
    return ChatDeleteReport(features, p0, p1, view.tokenizer.decode(before),
                            view.tokenizer.decode(reply), stated_at(view, reply, target) is not None)


#: offsets from DELETE's layer where a chat-form suppression is tried, in order (SmolLM2,
#: Germany's capital: at 22, 2 of 6 held-out siblings' chat replies changed; at 20, none)
CHAT_LAYER_STEPS = (0, -2, 2, -4, 4)
#: the largest fraction of the spare siblings' chat replies a chat-form suppression may
#: change before the next layer is tried (none: with four spare siblings, 30 % would let
#: one through, and at Germany's layer 22 one did — Australia — while two of the six
#: checked ones changed)
CHAT_SPARE_GOAL = 0.0


def _chat_rounds(overlay, view, entity, relation, target, ids, before, first, p0, layer,
                 keep, max_doublings) -> tuple[list[tuple[int, int]], list[int]]:
    """The suppression features of :func:`suppress_in_chat` at one layer: the features and
    the greedy reply after them."""
    from .insert import _references, compose_op
    features: list[tuple[int, int]] = []
    reply, at = before, first
    for round_ in range(CHAT_ROUNDS):
        seq = list(ids) + reply[:at]
        tok = reply[at]
        start = p0 if round_ == 0 else float(predict(view, seq).probs[tok])
        # the reference fillers' negatives get their own reply so far: the reply names
        # the entity ("The capital of Germany is"), so theirs names theirs
        said = view.tokenizer.decode(reply[:at])
        refs = {r: tuple(view.tokenizer.encode(said.replace(entity, r),
                                               add_special_tokens=False).ids)
                for r in _references(entity)} if entity in said else None
        plan = compose_op(view, entity, relation, target, layer=layer, push=-1.0, token=tok,
                          prefix=tuple(reply[:at]), chat=True, ref_prefixes=refs)
        overlay.record(plan.op)
        features.append((plan.layer, int(plan.feature or 0)))
        _strengthen(overlay, plan.op, lambda s=seq: predict(view, s).probs, tok,
                    keep * start, max_doublings)
        reply = chat_reply(view, ids)
        nxt = stated_at(view, reply, target)
        if nxt is None:
            break
        at = nxt
    return features, reply


#: siblings whose chat replies a chat-form DELETE's collateral check compares
CHAT_CHECKED = 6


def chat_sibling_replies(view: VindexView, template: str, entity: str,
                         n: int = CHAT_CHECKED, length: int = 8) -> list[tuple[str, list[int]]]:
    """``[(sibling prompt, first ``length`` tokens of its greedy chat reply)]`` for the
    template filled with ``n`` siblings: compared before and after a chat-form DELETE."""
    from .insert import chat_prompt_ids
    return [(p, chat_reply(view, chat_prompt_ids(view, p), length))
            for p in checked_siblings(template, entity)[:n]]


def chat_collateral(view: VindexView, before: list[tuple[str, list[int]]]) -> list[dict]:
    """The siblings whose chat reply changed since ``before``."""
    from .insert import chat_prompt_ids
    out = []
    for p, reply in before:
        now = chat_reply(view, chat_prompt_ids(view, p), len(reply))
        if now != reply:
            out.append({"prompt": p, "before": view.tokenizer.decode(reply),
                        "after": view.tokenizer.decode(now)})
    return out
