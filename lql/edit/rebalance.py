"""REBALANCE: rescale COMPOSE-installed down vectors until each fact's target
probability on its canonical prompt lies in [FLOOR, CEILING].

Per fact, the scale moves geometrically (×1.6 up when below FLOOR, ×0.6 down
when above CEILING) until the probability is bracketed, then bisects the scale
in log space.  Every round re-measures every fact, because facts installed in
one layer interact; for the same reason a remembered bound can go stale (another
fact's change moved the answer outside the bracket), so a bracket that has
closed (hi/lo < 1.05) without success is dropped and the search widens again.
A fact that still lies outside [FLOOR, CEILING] after MAX rounds (or whose scale
hit its limit, 1/64 or 64 times the inserted down vector) is reported ``low`` /
``high`` with the reason.  The result is recorded as ``update`` operations carrying
the new down vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..runtime import predict
from .insert import target_token
from .patch import PatchOp

if TYPE_CHECKING:
    from .overlay import OverlayVindex

__all__ = ["rebalance", "FLOOR", "CEILING", "MAX_ITERATIONS"]

FLOOR, CEILING, MAX_ITERATIONS = 0.30, 0.90, 16
UP, DOWN = 1.6, 0.6
#: the scale never leaves [1/MAX_SCALE, MAX_SCALE] (a fact that cannot reach FLOOR stays "low")
MAX_SCALE = 64.0
#: a bracket [lo, hi] narrower than this ratio that still fails is dropped: the other facts
#: moved (facts in one layer interact), so the remembered bound no longer holds
STALE = 1.05


@dataclass
class _Fact:
    layer: int
    feature: int
    entity: str
    relation: str
    target: str
    prompt: str
    target_id: int
    down: np.ndarray
    scale: float = 1.0
    lo: float | None = None      # largest scale known to be too weak
    hi: float | None = None      # smallest scale known to be too strong
    p: float = 0.0
    prev: tuple | None = None    # (scale, probability) of the previous measurement


def compose_facts(view: OverlayVindex) -> list[_Fact]:
    facts = []
    for (l, f), e in sorted(view.overlay.features.items()):
        if e.inserted and e.info.get("mode") == "compose" and e.down is not None \
                and e.info.get("prompt") and e.info.get("target") \
                and not e.info.get("prefix_ids") \
                and e.info.get("prompt_form", "raw") == "raw":
            # a whole target's later tokens and the chat-form twins stay as installed
            tid = (e.down_meta or {}).get("i")
            if tid is None:
                tid = target_token(view, e.info["target"])[0]
            facts.append(_Fact(l, f, e.info.get("entity", ""), e.info.get("relation", ""),
                               e.info["target"], e.info["prompt"], int(tid),
                               np.array(e.down, np.float32)))
    return facts


def rebalance(overlay, view: OverlayVindex, *, floor: float = FLOOR, ceiling: float = CEILING,
              max_iterations: int = MAX_ITERATIONS) -> tuple[list[dict], int, bool]:
    """Returns (rows, iterations run, converged)."""
    facts = compose_facts(view)
    it = 0
    converged = False
    for it in range(1, max_iterations + 1):
        for fa in facts:
            fa.p = float(predict(view, fa.prompt).probs[fa.target_id])
        out = [fa for fa in facts if not floor <= fa.p <= ceiling]
        if not out:
            converged = True
            it -= 1
            break
        if it == max_iterations:
            break
        for fa in out:
            if fa.p < floor and fa.prev is not None and fa.prev[0] < fa.scale \
                    and fa.prev[1] > fa.p:
                # stronger made it worse: past the peak (a push this long derails the later
                # layers), so this scale is too strong
                fa.prev = (fa.scale, fa.p)
                fa.hi = fa.scale
                fa.scale = float(np.sqrt(fa.scale * fa.lo)) if fa.lo is not None \
                    else fa.scale * DOWN
            elif fa.p < floor:
                fa.prev = (fa.scale, fa.p)
                fa.lo = fa.scale
                if fa.hi is not None and fa.hi <= fa.lo * STALE:
                    fa.hi = None        # the bracket closed without success: it was stale
                fa.scale = fa.scale * UP if fa.hi is None else float(np.sqrt(fa.scale * fa.hi))
            else:
                fa.prev = (fa.scale, fa.p)
                fa.hi = fa.scale
                if fa.lo is not None and fa.lo >= fa.hi / STALE:
                    fa.lo = None
                fa.scale = fa.scale * DOWN if fa.lo is None else float(np.sqrt(fa.scale * fa.lo))
            fa.scale = float(np.clip(fa.scale, 1.0 / MAX_SCALE, MAX_SCALE))
            overlay.record(PatchOp.make("update", layer=fa.layer, feature=fa.feature,
                                        reason="REBALANCE",
                                        vectors={"down": fa.down * fa.scale}))
    rows = [{"layer": fa.layer, "feature": fa.feature, "entity": fa.entity,
             "relation": fa.relation, "target": fa.target, "mode": "compose",
             "probability": round(fa.p, 4), "scale": round(fa.scale, 4),
             "status": "ok" if floor <= fa.p <= ceiling else
             ("low" if fa.p < floor else "high"),
             "reason": None if floor <= fa.p <= ceiling else _reason(fa, floor)} for fa in facts]
    return rows, it, converged


def _reason(fa: _Fact, floor: float) -> str:
    if fa.p < floor and fa.scale >= MAX_SCALE:
        return f"scale at its limit ({MAX_SCALE:g}x): the feature cannot push the target higher"
    if fa.p >= floor and fa.scale <= 1.0 / MAX_SCALE:
        return f"scale at its limit (1/{MAX_SCALE:g}): the model prefers the target without it"
    return "not within range after MAX iterations (raise MAX)"
