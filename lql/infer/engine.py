"""Where inference statements get their model: one function, :func:`target_for`.

A :class:`Target` bundles what INFER / EXPLAIN INFER / TRACE need from whatever
the session uses — an extracted vindex (possibly an overlay view with edits) or
live weights (``USE MODEL``): the built :class:`lql.model.Model`, the tokenizer,
the chat template, stop ids, token texts and feature metadata.

Models are built once and cached:

* a vindex: through :func:`lql.edit.forward.model_for` (the editing module's
  cache: the base model once per vindex; for an overlay view, the edited layers
  rebuilt whenever the overlay's ``version`` changes);
* a model source: once per source object (weights from ``source.tensor``).

This is the single place where the overlay is integrated: ``Target.view`` is
the overlay view (KNN store via ``view.knn_override`` / ``view.overlay``) and
:meth:`Target.base` the overlay-free target that COMPARE uses.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import LevelError, NoVindexError

__all__ = ["Target", "target_for", "check_level"]

_SOURCE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_VINDEX_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_level(v, statement: str = "INFER") -> None:
    """A BROWSE vindex has no attention / norm / up / down weights: say what to run."""
    level = str(getattr(v, "level", "inference")).lower()
    if level == "browse":
        src = (getattr(v, "source", None) or {}).get("path") or "<model folder or .gguf>"
        path = getattr(v, "path", None) or "model.vindex"
        raise LevelError(
            f"this vindex was extracted at BROWSE; {statement} needs INFERENCE — re-extract "
            f'WITH INFERENCE: EXTRACT MODEL "{src}" INTO "{path}" WITH INFERENCE FORCE')


def _vindex_model(view):
    try:
        from ..edit.forward import model_for
    except ImportError:                       # editing module absent: plain cache
        model_for = None
    if model_for is not None and getattr(view, "is_overlay", False):
        return model_for(view)
    base = view
    m = _VINDEX_MODELS.get(base)
    if m is None:
        if model_for is not None:
            m = model_for(base)
        else:
            from ..model import build_model
            m = build_model(base.model_config, base.weights)
        _VINDEX_MODELS[base] = m
    return m


def _source_model(src):
    m = _SOURCE_MODELS.get(src)
    if m is None:
        from ..model import build_model
        m = build_model(src.model_config, src.weights)
        _SOURCE_MODELS[src] = m
    return m


@dataclass
class Target:
    """What the session runs: ``kind`` is ``"vindex"`` or ``"model"`` (USE MODEL)."""
    kind: str
    view: Any                         # the vindex view (overlay or plain) or the ModelSource
    model: Any
    name: str | None = None
    _tokenizer: Any = field(default=None, repr=False)

    # ---------------------------------------------------------------- overlay
    @property
    def is_overlay(self) -> bool:
        return self.kind == "vindex" and bool(getattr(self.view, "is_overlay", False))

    def base(self) -> Target:
        """The overlay-free target (itself when there is no overlay)."""
        if not self.is_overlay:
            return self
        b = self.view.base
        return Target("vindex", b, _vindex_model(b), self.name)

    def knn_layers(self) -> list[int]:
        if not self.is_overlay or not hasattr(self.view, "knn_layers"):
            return []
        return sorted(self.view.knn_layers())

    # ---------------------------------------------------------------- text
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.view.tokenizer if self.kind == "vindex" else self.view.tokenizer()
        return self._tokenizer

    @property
    def chat_template(self) -> str | None:
        return getattr(self.view, "chat_template", None)

    @property
    def tokenizer_config(self) -> dict:
        return dict(getattr(self.view, "tokenizer_config", None) or {})

    @property
    def model_config(self) -> dict:
        return dict(getattr(self.view, "model_config", None) or {})

    @property
    def max_positions(self) -> int | None:
        n = self.model_config.get("max_position_embeddings")
        return int(n) if n else None

    def token_text(self, token_id: int) -> str:
        """Decoded text of one token, leading space kept (``" Paris"``)."""
        if self.kind == "vindex":
            return self.view.token_text(int(token_id))
        return _token_text(self.tokenizer, int(token_id), self._texts)

    @cached_property
    def _texts(self) -> dict[int, str]:
        return {}

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    @cached_property
    def stop_ids(self) -> frozenset[int]:
        """End-of-sequence / end-of-turn ids: ``model_config.eos_token_id`` plus the
        tokenizer config's ``eos_token`` (e.g. ChatML's ``<|im_end|>``)."""
        ids = set(getattr(self.model.spec, "eos_token_ids", ()) or ())
        eos = self.tokenizer_config.get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str):
            tid = self.tokenizer.token_to_id(eos)
            if tid is not None:
                ids.add(int(tid))
        return frozenset(ids)

    # ---------------------------------------------------------------- features
    @property
    def feature_labels(self) -> dict:
        return dict(getattr(self.view, "feature_labels", None) or {}) if self.kind == "vindex" else {}

    def down_tokens(self, layer: int, features, k: int = 3) -> list[list[int]]:
        """Top output token ids of each feature's down vector: the vindex's down_meta,
        or (live weights) the down column projected on the embeddings."""
        features = [int(f) for f in features]
        if self.kind == "vindex" and getattr(self.view, "down_meta", None) is not None:
            top = self.view.down_meta.top_ids(layer)
            return [[int(t) for t in top[f, :k]] for f in features]
        block = self.model.blocks[layer]
        down = _down_columns(block.ffn, features)           # [hidden, n]
        scores = self.model.embed_matrix @ down              # [vocab, n]
        out = []
        for j in range(len(features)):
            col = scores[:, j]
            ids = np.argpartition(-col, k)[:k]
            out.append([int(i) for i in ids[np.argsort(-col[ids], kind="stable")]])
        return out


def _down_columns(ffn, features: list[int]) -> np.ndarray:
    """``[hidden, n]`` down-projection columns of ``features`` from a built FFN."""
    for name in ("down", "proj"):
        w = getattr(ffn, name, None)
        if w is not None:
            w = np.asarray(w)
            # stored for ``hidden @ w`` (``[ffn, hidden]``) — rows are the features
            return np.ascontiguousarray(w[features].T, dtype=np.float32)
    raise LevelError("this model's FFN does not expose its down projection")


def _token_text(tok, tid: int, cache: dict[int, str]) -> str:
    text = cache.get(tid)
    if text is None:
        text = tok.decode([tid], skip_special_tokens=False)
        raw = tok.id_to_token(tid)
        if raw is not None and raw.startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        cache[tid] = text
    return text


def target_for(session, statement: str = "INFER") -> Target:
    """The session's inference target (vindex view or live model), model built once."""
    v = getattr(session, "vindex", None)
    if v is not None:
        check_level(getattr(v, "base", v) if getattr(v, "is_overlay", False) else v, statement)
        return Target("vindex", v, _vindex_model(v), getattr(v, "model", None))
    src = getattr(session, "model_source", None)
    if src is not None:
        return Target("model", src, _source_model(src), getattr(src, "name", None))
    raise NoVindexError('No vindex in use — run USE "path" (or USE MODEL "path") first')
