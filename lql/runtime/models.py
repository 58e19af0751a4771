"""The one place a model is built for a view: a bounded cache keyed by identity + overlay version.

``model_for(view)`` builds the model of a vindex (once) and, for an overlay view, a
copy with only the edited layers rebuilt from the patched weights (once per
``overlay.version``). ``model_for_source(src)`` does the same for ``USE MODEL`` live
weights. Entries hold weak references to their vindex / overlay / source, so a vindex
the session dropped is not kept alive; the cache keeps the :data:`CACHE_SIZE` most
recently used models.
"""

from __future__ import annotations

import copy
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..errors import LevelError
from .view import VindexView, base_of, overlay_of

__all__ = ["model_for", "model_for_source", "can_forward", "check_level", "clear_cache", "CACHE_SIZE",
           "forward_caveats", "NO_FORWARD_LEVELS"]

#: models kept (base models, overlay versions and live sources together)
CACHE_SIZE = 6


def _ref(obj: object, on_death: Callable[[object], None]) -> Callable[[], object]:
    try:
        return weakref.ref(obj, on_death)
    except TypeError:                        # objects without weakref support: hold them
        return lambda: obj


class _ModelCache:
    """LRU of built models keyed by ``(id(owner), id(overlay), version)``; a key whose
    objects were collected (or whose id was reused) is a miss."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple[int, int, int], tuple[Callable[[], object], Callable[[], object], Any]] = \
            OrderedDict()

    def get(self, owner: object, overlay: object | None, version: int,
            build: Callable[[], Any]) -> Any:
        key = (id(owner), id(overlay), version)
        hit = self._items.get(key)
        if hit is not None and hit[0]() is owner and hit[1]() is overlay:
            self._items.move_to_end(key)
            return hit[2]
        model = build()

        def drop(_dead: object, key: tuple[int, int, int] = key) -> None:
            # the vindex / overlay / source is gone (USE replaced it): free its model now,
            # not when the LRU would evict it
            self._items.pop(key, None)

        self._items[key] = (_ref(owner, drop),
                            _ref(overlay, drop) if overlay is not None else _none, model)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return model

    def clear(self) -> None:
        self._items.clear()


def _none() -> None:
    return None


_CACHE = _ModelCache(CACHE_SIZE)


def clear_cache() -> None:
    """Forget every built model (tests, memory pressure)."""
    _CACHE.clear()


#: levels without the weights of a forward pass: BROWSE (gate vectors, embeddings,
#: down-meta) and LARQL's ATTENTION (+ attention weights and norms, no FFN up/down:
#: larql-vindex/src/config/types.rs:79-99, format/weights/write.rs:260-263)
NO_FORWARD_LEVELS = ("browse", "attention")
#: index.json ``quant`` values whose weights a forward pass can read
READABLE_QUANT = ("none", "q4k")


def can_forward(view: VindexView) -> bool:
    """False for a BROWSE or ATTENTION vindex, or one quantised in a format not read here
    (LARQL's ``q4k`` is: lql.vindex.kquant decodes it)."""
    v = base_of(view)
    return str(getattr(v, "level", "inference")).lower() not in NO_FORWARD_LEVELS and \
        str(getattr(v, "quant", "none") or "none").lower() in READABLE_QUANT


def forward_caveats(view: VindexView) -> list[str]:
    """What a forward pass on ``view``'s vindex does differently from the original model
    (e.g. attention biases a LARQL vindex does not store); INFER says these."""
    return [str(c) for c in getattr(base_of(view), "caveats", None) or ()]


def check_level(view: VindexView, what: str = "this statement") -> None:
    """A BROWSE / ATTENTION vindex lacks FFN (and attention) weights: say what to run."""
    if can_forward(view):
        return
    v = base_of(view)
    src = (getattr(v, "source", None) or {}).get("path") or "<model folder or .gguf>"
    path = getattr(v, "path", None) or "model.vindex"
    quant = str(getattr(v, "quant", "none") or "none").lower()
    if quant not in READABLE_QUANT:
        raise LevelError(
            f"this vindex stores its weights quantised (quant={quant}: attn_weights_q4k.bin, "
            f"interleaved_q4k.bin); {what} needs a forward pass, and only quant=q4k is "
            f"readable here — browse statements (WALK, DESCRIBE, SELECT) work")
    level = str(getattr(v, "level", "browse")).upper()
    has = ("attention weights and norms but no FFN up/down weights" if level == "ATTENTION"
           else "no attention, norm or FFN weights")
    raise LevelError(
        f"this vindex was extracted at {level} ({has}); {what} needs a forward pass "
        f'(INFERENCE) — re-extract WITH INFERENCE: EXTRACT MODEL "{src}" INTO "{path}" '
        f"WITH INFERENCE FORCE")


def _build(owner: Any) -> Any:
    from ..model import build_model
    return build_model(owner.model_config, owner.weights)


def model_for(view: VindexView, what: str = "this statement") -> Any:
    """The model of ``view`` (a vindex or an overlay view), built once per version."""
    check_level(view, what)
    base = base_of(view)
    bm = _CACHE.get(base, None, -1, lambda: _build(base))
    ov = overlay_of(view)
    if ov is None:
        return bm
    layers = sorted(ov.edited_layers())
    if not layers:
        return bm
    return _CACHE.get(base, ov, ov.version, lambda: _rebuild(bm, view, layers))


def _rebuild(bm: Any, view: VindexView, layers: list[int]) -> Any:
    """A shallow copy of ``bm`` with ``layers`` rebuilt from ``view.weights`` (by the model
    itself: per-layer shapes, e.g. Gemma 4's, included)."""
    m = copy.copy(bm)
    m.blocks = bm.blocks.copy()              # a LayerStore shares its layers' cache
    for i in layers:
        m.blocks[i] = bm.rebuild_block(view.weights, i)
    return m


def model_for_source(src: Any) -> Any:
    """The model of a ``USE MODEL`` source (``ModelSource``), built once."""
    return _CACHE.get(src, None, -1, lambda: _build(src))
