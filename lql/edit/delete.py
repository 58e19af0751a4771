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
from .patch import PatchOp

if TYPE_CHECKING:
    from ..runtime.view import VindexView
    from .overlay import OverlayVindex

__all__ = ["fact_feature_scores", "delete_fact", "sibling_prompts", "SIBLING_ENTITIES",
           "suppress_fact"]

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
    p = float(predict(view, prompt).probs[target_id])
    op = plan.op
    for _ in range(max_doublings):
        if p <= keep * p0:
            break
        down = op.vector("down")
        assert down is not None
        op.set_vector("down", down * 2.0)
        op.data["alpha"] = float(op.data.get("alpha") or 0.1) * 2.0
        overlay._changed()
        p = float(predict(view, prompt).probs[target_id])
    return DeleteReport([(plan.layer, int(plan.feature or 0))], p0, p)
