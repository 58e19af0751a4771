"""Forward passes through the overlay (used by INSERT, DELETE, REBALANCE, tests and benches).

``model_for(view)`` builds the model of a vindex view once and, for an
:class:`~lql.edit.overlay.OverlayVindex`, rebuilds only the layers the overlay
edits whenever the overlay changes (the base model is cached per base vindex).
``predict(view, prompt)`` is the INFER computation with the KNN store applied:
it records the residual at every layer that holds KNN keys and, when a key
matches (cosine > 0.75), puts the stored target on top (``source="knn"``).
The inference engine may reuse it; see docs/ARCHITECTURE.md, "Editing".
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

import numpy as np

from ..errors import LevelError

__all__ = ["model_for", "prompt_ids", "run", "predict", "Prediction", "ffn_inputs"]

_BASE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _level_check(v) -> None:
    level = getattr(v, "level", "inference")
    if level == "browse":
        raise LevelError("this vindex was extracted at BROWSE; this needs a forward pass "
                         "(INFERENCE) — re-extract WITH INFERENCE")


def _base_model(base):
    from ..model import build_model
    m = None
    try:
        m = _BASE_MODELS.get(base)
    except TypeError:
        pass
    if m is None:
        _level_check(base)
        m = build_model(base.model_config, base.weights)
        try:
            _BASE_MODELS[base] = m
        except TypeError:
            pass
    return m


def model_for(view):
    """The model of ``view`` (a base vindex or an overlay view), cached."""
    overlay = getattr(view, "overlay", None)
    base = getattr(view, "base", view)
    bm = _base_model(base)
    if overlay is None:
        return bm
    cached = getattr(overlay, "_model_cache", None)
    if cached is not None and cached[0] == overlay.version and cached[1] is bm:
        return cached[2]
    layers = sorted(overlay.edited_layers())
    if not layers:
        m = bm
    else:
        m = copy.copy(bm)
        m.blocks = list(bm.blocks)
        for i in layers:
            m.blocks[i] = bm.rebuild_block(view.weights, i)  # per-layer shapes too (Gemma 4)
    overlay._model_cache = (overlay.version, bm, m)
    return m


def prompt_ids(view, prompt: str) -> list[int]:
    from ..errors import ExecutionError
    ids = view.tokenizer.encode(prompt).ids
    if not ids:
        raise ExecutionError(f"the prompt {prompt!r} produced no tokens")
    return list(ids)


def run(view, prompt_or_ids, *, record=None, hooks=None):
    ids = prompt_ids(view, prompt_or_ids) if isinstance(prompt_or_ids, str) else prompt_or_ids
    return model_for(view).forward(ids, record=record, hooks=hooks)


def ffn_inputs(view, prompt: str, layers) -> dict[int, np.ndarray]:
    """The FFN input (the residual after the FFN's input norm) at the last position, per layer."""
    from ..model import Hooks
    want = set(layers)
    got: dict[int, np.ndarray] = {}

    def grab(layer, x, out):
        if layer in want:
            got[layer] = np.array(x[-1], dtype=np.float32, copy=True)
        return out

    run(view, prompt, hooks=Hooks(ffn=grab))
    return got


@dataclass
class Prediction:
    """Next-token distribution after the overlay (dense FFN edits + KNN store)."""
    probs: np.ndarray                     # dense distribution (overlay weights applied)
    top: list[tuple[int, float, str]]     # (token_id, probability, source) best first
    knn: dict | None = None               # {"layer", "cosine", "target_id", "entity", ...}
    output: object = None                 # the ForwardOutput
    extra: dict = field(default_factory=dict)

    @property
    def top1(self) -> int:
        return self.top[0][0]

    def p(self, token_id: int) -> float:
        """Probability of ``token_id`` in the reported distribution."""
        for t, p, _ in self.top:
            if t == token_id:
                return p
        scale = 1.0 - (self.knn["weight"] if self.knn else 0.0)
        return float(self.probs[token_id]) * scale


def predict(view, prompt_or_ids, *, top: int = 5, record=None) -> Prediction:
    """The INFER computation through ``view`` (with the KNN store when ``view`` has one)."""
    from ..model import Record
    knn_layers = sorted(view.knn_layers()) if hasattr(view, "knn_layers") else []
    rec = record
    if knn_layers and rec is None:
        rec = Record(residuals="last", layers=frozenset(knn_layers))
    out = run(view, prompt_or_ids, record=rec)
    probs = out.probs()
    order = np.argsort(-probs, kind="stable")[:max(top, 1) + 1]
    ranked = [(int(i), float(probs[i]), "model") for i in order]
    knn = None
    for layer in knn_layers:
        res = out.residuals[layer] if out.residuals is not None else None
        if res is None:
            continue
        hit = view.overlay.knn_match(layer, res)
        if hit is not None and (knn is None or hit[1] > knn["cosine"]):
            entry, cos = hit
            knn = {"layer": layer, "cosine": cos, "target_id": entry.target_id,
                   "entity": entry.entity, "relation": entry.relation, "target": entry.target,
                   "confidence": entry.confidence}
    if knn is not None:
        # the stored target takes over: p' = (1 - w)·p_dense + w·onehot(target), w = confidence
        w = float(min(max(knn["confidence"], 0.0), 1.0))
        knn["weight"] = w
        tid = knn["target_id"]
        rest = [(t, p * (1.0 - w), s) for t, p, s in ranked if t != tid]
        ranked = [(tid, float(probs[tid]) * (1.0 - w) + w, "knn")] + rest
    return Prediction(probs=probs, top=ranked[:top], knn=knn, output=out)
