"""What an edit did, measured: the checks INSERT / DELETE report so their statements are honest.

* :func:`check_target` — refuses a target that is a stop word (" the", " a", ...) or has
  no letter or digit: such a "fact" would rewrite the model's grammar, not a fact.
* :func:`sequence_probability` — P(whole target | prompt): the product over the target's
  tokens of P(token_i | prompt + token_<i) (teacher forcing), the KNN store included.
* :func:`sibling_snapshot` / :func:`collateral` — the template filled with other entities
  (``delete.SIBLING_ENTITIES``): their top-1 before the edit and after, and how many changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ExecutionError

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["STOP_WORDS", "check_target", "sequence_probability", "whole_target", "sibling_snapshot",
           "collateral", "SIBLINGS_CHECKED"]

#: function words no fact has as its answer (INSERT refuses them; DELETE without a target
#: refuses when the model's top-1 is one of them)
STOP_WORDS = frozenset("""
a an the of in on at to for from by with as is are was were be been being and or but not
no it its this that these those there here he she they we you i his her their our your my
me him them us one some any all very so than then too also just about into over under
located known called considered home what which who whom whose when where why how
""".split())

#: how many sibling prompts INSERT checks for collateral
SIBLINGS_CHECKED = 6


def is_stop_word(text: str) -> bool:
    t = text.strip().lower()
    return t in STOP_WORDS or not any(ch.isalnum() for ch in t)


def check_target(target: str, what: str = "INSERT") -> None:
    if is_stop_word(target):
        raise ExecutionError(f"{what} refuses the target {target!r}: it is a stop word or "
                             f"punctuation, not a fact's answer (editing it would change the "
                             f"model's grammar on every prompt)")


def sequence_probability(view: VindexView, prompt: str | Sequence[int], ids: Sequence[int]) -> float:
    """P(ids | prompt), teacher-forced, through ``view`` (edits and KNN store applied)."""
    from ..runtime import predict, prompt_ids
    seq = list(prompt_ids(view, prompt) if isinstance(prompt, str) else prompt)
    p = 1.0
    for t in ids:
        pred = predict(view, seq, top=1)
        p *= float(pred.p(int(t)))
        seq.append(int(t))
    return p


def whole_target(view: VindexView, prompt: str | Sequence[int], ids: Sequence[int]) -> tuple[float, bool]:
    """``(P(ids | prompt), greedy)``: the teacher-forced probability of the whole target
    and whether greedy decoding writes it (every token top-1 after the ones before)."""
    from ..runtime import predict, prompt_ids
    seq = list(prompt_ids(view, prompt) if isinstance(prompt, str) else prompt)
    p, greedy = 1.0, True
    for t in ids:
        pred = predict(view, seq, top=1)
        p *= float(pred.p(int(t)))
        greedy &= pred.top1 == int(t)
        seq.append(int(t))
    return p, greedy


def sibling_snapshot(view: VindexView, template: str, entity: str,
                     n: int = SIBLINGS_CHECKED) -> list[tuple[str, int, float]]:
    """``[(prompt, top-1 id, its probability)]`` for the template filled with ``n`` siblings."""
    from ..runtime import predict
    from .delete import checked_siblings
    out = []
    for p in checked_siblings(template, entity)[:n]:
        pred = predict(view, p, top=1)
        out.append((p, pred.top1, float(pred.top[0][1])))
    return out


def collateral(view: VindexView, before: list[tuple[str, int, float]], limit: float = 0.30) -> list[dict]:
    """The siblings whose top-1 changed since ``before``, or whose top-1's probability moved
    by more than ``limit`` of itself: ``[{prompt, before, after, change}]``."""
    from ..runtime import predict
    out = []
    for p, t0, p0 in before:
        pred = predict(view, p, top=1)
        p1 = float(pred.p(t0))
        change = abs(p1 - p0) / p0 if p0 > 0 else 0.0
        if pred.top1 != t0 or change > limit:
            out.append({"prompt": p, "before": view.token_text(t0),
                        "after": view.token_text(pred.top1), "change": change})
    return out


def max_change(view: VindexView, before: list[tuple[str, int, float]]) -> float:
    """The largest relative change of a sibling's top-1 probability since ``before``."""
    from ..runtime import predict
    worst = 0.0
    for p, t0, p0 in before:
        p1 = float(predict(view, p, top=1).p(t0))
        worst = max(worst, abs(p1 - p0) / p0 if p0 > 0 else 0.0)
    return worst
