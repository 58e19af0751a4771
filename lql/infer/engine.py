"""Where inference statements get their model: one function, :func:`target_for`.

A :class:`Target` bundles what INFER / EXPLAIN INFER / TRACE need from whatever
the session uses — an extracted vindex (possibly an overlay view with edits) or
live weights (``USE MODEL``): the built :class:`lql.model.Model`, the tokenizer,
the chat template, stop ids, token texts and feature metadata.

Models come from :mod:`lql.runtime` (one bounded cache for every caller):
:func:`lql.runtime.model_for` for a vindex view (the base model once per vindex; for
an overlay view, the edited layers rebuilt whenever the overlay's ``version``
changes) and :func:`lql.runtime.model_for_source` for live weights.

``Target.view`` is the overlay view (its KNN store is read by
:func:`lql.runtime.knn_hit`) and :meth:`Target.base` the overlay-free target that
COMPARE uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import LevelError, NoVindexError
from ..runtime import check_level, knn_layers, model_for, model_for_source
from ..runtime.view import EditedView, base_of

__all__ = ["Target", "target_for", "check_level"]


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
        return self.kind == "vindex" and isinstance(self.view, EditedView)

    def base(self) -> Target:
        """The overlay-free target (itself when there is no overlay)."""
        if not self.is_overlay:
            return self
        b = base_of(self.view)
        return Target("vindex", b, model_for(b), self.name)

    def knn_layers(self) -> list[int]:
        return knn_layers(self.view) if self.is_overlay else []

    # ---------------------------------------------------------------- text
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.view.tokenizer if self.kind == "vindex" else self.view.tokenizer()
        return self._tokenizer

    @property
    def chat_template(self) -> str | None:
        return self.view.chat_template

    @property
    def tokenizer_config(self) -> dict:
        return dict(self.view.tokenizer_config or {})

    @property
    def model_config(self) -> dict:
        return dict(self.view.model_config or {})

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
        return dict(self.view.feature_labels or {}) if self.kind == "vindex" else {}

    def down_tokens(self, layer: int, features, k: int = 3) -> list[list[int]]:
        """Top output token ids of each feature's down vector: the vindex's down_meta,
        or (live weights) the down column projected on the embeddings."""
        features = [int(f) for f in features]
        if self.kind == "vindex" and self.view.down_meta is not None:
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
    v = session.vindex
    if v is not None:
        return Target("vindex", v, model_for(v, statement), v.model)
    src = session.model_source
    if src is not None:
        return Target("model", src, model_for_source(src), src.name)
    raise NoVindexError('No vindex in use — run USE "path" (or USE MODEL "path") first')
