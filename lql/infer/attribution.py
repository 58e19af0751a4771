"""Which FFN features carry a target token on a prompt: one attribution, shared by
DELETE (:mod:`lql.edit.delete`), ``EXPLAIN INFER … FOR`` and ``DESCRIBE … VIA PROMPTS``.

A feature's contribution to the target is its activation at the last position times its
down vector projected on the target's unembedding direction *minus* the mean direction
of the model's other top candidates::

    score(l, f) = act[l, f] · down[l][:, f] · (u(target) − mean u(others))

with ``u(t) = head[t] ⊙ final-norm weight`` (RMSNorm models; the final norm's ``1/rms``
is one positive factor for the whole prompt, so it does not change the ranking) and
"others" the model's :data:`RIVALS` next candidates.  A feature that pushes every
candidate alike scores ≈ 0; one that pushes the target in particular scores high.

DELETE adds a reference baseline and a sibling penalty (:func:`feature_scores`'s
``ref_acts`` / ``rival_dirs``, see its module doc).  ``EXPLAIN INFER … FOR`` and
DESCRIBE use the plain score, and on a block with a post-FFN norm (Gemma 2/3/4's
sandwich norm) they pass the norm through (:func:`post_norm_scale`): the FFN output
``y = Σ_f act_f · down_f`` reaches the residual as ``y / rms(y) ⊙ w``, which is linear
in the features once ``rms(y)`` of the real prompt is fixed — so each layer's
contributions sum exactly to what that layer's FFN adds to the target-vs-others logit
(up to the final norm's factor).  DELETE keeps its own (pre-norm) columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["RIVALS", "PENALTY", "unembed_directions", "centred_direction", "rival_ids", "contrast_direction",
           "feature_scores", "down_columns", "post_norm_scale", "carriers"]

#: how many of the model's other top candidates the contrast direction averages
RIVALS = 10
#: DELETE's sibling-penalty weight (see lql.edit.delete)
PENALTY = 0.5


def final_norm_weight(model: Any, model_config: dict) -> np.ndarray | None:
    """The final norm's per-dimension weight (RMSNorm models), ``None`` otherwise."""
    if str((model_config or {}).get("norm_type", "rms")) != "rms":
        return None
    hidden = int(model.head.shape[1])
    return np.asarray(model.final_norm(np.ones((1, hidden), dtype=np.float32))[0], np.float32)


def unembed_directions(model: Any, model_config: dict, ids: Iterable[int]) -> np.ndarray:
    """``(n, hidden)`` rows ``head[t] ⊙ final-norm weight`` (RMSNorm models; the plain head
    rows otherwise)."""
    rows = np.asarray(model.head[np.asarray(list(ids))], dtype=np.float32)
    w = final_norm_weight(model, model_config)
    return rows if w is None else rows * w


def centred_direction(model: Any, model_config: dict, token_id: int) -> np.ndarray:
    """``(head[t] − mean head) ⊙ final-norm weight``: what only token ``t``'s logit reads
    (the component every token shares — which tops the projections with generic tokens —
    removed)."""
    head = model.head
    d = np.asarray(head[int(token_id)], np.float32) - np.asarray(head.mean(0, dtype=np.float32))
    w = final_norm_weight(model, model_config)
    return d if w is None else d * w


def rival_ids(probs: np.ndarray, target_id: int, n: int = RIVALS,
              extra: Sequence[int] = ()) -> list[int]:
    """The ``n`` most probable tokens other than ``target_id``, then ``extra`` (not the target)."""
    others = [int(t) for t in np.argsort(-probs)[:n + 1] if int(t) != target_id][:n]
    return others + [int(t) for t in extra if int(t) != target_id]


def contrast_direction(model: Any, model_config: dict, target_id: int,
                       others: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(u(target) − mean u(others), the rows [target] + others)``."""
    dirs = unembed_directions(model, model_config, [int(target_id)] + [int(t) for t in others])
    return dirs[0] - dirs[1:].mean(0), dirs


def feature_scores(act: np.ndarray, cols: np.ndarray, direction: np.ndarray, *,
                   ref_acts: np.ndarray | None = None, rival_dirs: np.ndarray | None = None,
                   penalty: float = PENALTY) -> np.ndarray:
    """One layer's scores (one per feature): ``act · (direction @ cols)``.

    ``cols``: the layer's down projection as ``(hidden, features)``.  With ``ref_acts``
    (``(refs, features)``: the same template filled with other entities) the activation is
    taken relative to their mean, and with ``rival_dirs`` (``(refs, hidden)``: each
    reference answer's direction) a feature loses ``penalty`` × the most it contributes to
    any reference's own answer (DELETE's selectivity)."""
    act = np.asarray(act, np.float32)
    pen: np.ndarray | float = 0.0
    if ref_acts is not None:
        act = act - ref_acts.mean(0)
        if rival_dirs is not None:
            pen = np.maximum((ref_acts * (rival_dirs @ cols)).max(0), 0.0)
    return np.asarray(act * (direction @ cols) - penalty * pen, dtype=np.float32)


def down_columns(model: Any, layer: int) -> np.ndarray | None:
    """``(hidden, features)`` down projection of ``layer``'s dense FFN from a built model
    (``None`` when the block exposes none)."""
    ffn = model.blocks[layer].ffn
    for name in ("down", "proj"):
        w = getattr(ffn, name, None)
        if w is not None:
            return np.asarray(w, dtype=np.float32).T          # stored (features, hidden)
    return None


def post_norm_scale(block: Any, act: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """Per hidden dim, the factor ``w / rms(y)`` a post-FFN norm applies to this prompt's FFN
    output ``y = cols @ act`` (``None``: no post-FFN norm)."""
    norm = getattr(block, "post_ffn_norm", None)
    if norm is None:
        return None
    y = (cols @ np.asarray(act, np.float32))[None, :]
    ones = np.ones_like(y)
    w = np.asarray(norm(ones)[0], np.float32) * np.sqrt(np.float32(1.0) + norm.eps)
    rms = np.sqrt(np.mean(np.square(y)) + norm.eps)
    return np.asarray(w / rms, np.float32)


def carriers(model: Any, model_config: dict, ffn_activations: Sequence[Any], probs: np.ndarray,
             target_id: int, *, layers: Iterable[int] | None = None, top: int = 10,
             rivals: int = RIVALS) -> list[tuple[float, int, int, float]]:
    """``[(score, layer, feature, activation)]``: the ``top`` features with the largest
    positive contribution to ``target_id`` (plain score, post-FFN norms passed through),
    best first; ties by layer, then feature.  ``ffn_activations``: per layer, the
    last-position FFN hidden vector of the same forward pass that gave ``probs``."""
    others = rival_ids(probs, int(target_id), rivals)
    direction, _ = contrast_direction(model, model_config, int(target_id), others)
    found: list[tuple[float, int, int, float]] = []
    for layer in (layers if layers is not None else range(len(ffn_activations))):
        act = ffn_activations[layer]
        if act is None:
            continue
        act = np.asarray(act, np.float32)
        cols = down_columns(model, layer)
        if cols is None:
            continue
        scale = post_norm_scale(model.blocks[layer], act, cols)
        d = direction if scale is None else direction * scale
        score = feature_scores(act, cols, d)
        k = min(int(top), score.shape[0])
        idx = np.argpartition(-score, k - 1)[:k]
        found += [(float(score[f]), int(layer), int(f), float(act[f])) for f in idx
                  if score[f] > 0]
    found.sort(key=lambda s: (-s[0], s[1], s[2]))
    return found[:int(top)]
