"""The view that browse, inference and editing read: a ``Vindex`` or an overlay's patched view.

:class:`VindexView` lists what those layers actually use (``lql.vindex.Vindex`` and
``lql.edit.overlay.OverlayVindex`` both provide it); :class:`EditedView` adds what an
overlay view has on top (its ``base``, the ``overlay`` state, the inserted facts), and
:func:`overlay_of` / :func:`base_of` tell the two apart without string or attribute probes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["VindexView", "DownMetaView", "EditedView", "OverlayState", "KnnMatch", "KnnContext",
           "overlay_of", "base_of"]


@dataclass
class KnnContext:
    """What scoped KNN entries compare besides the current position's vector: the token
    ids so far, the text they decode to (lower case: a subject is looked for in it), and
    per layer the residuals after the layer at the last positions (``(k, hidden)``,
    oldest first, the current position last)."""
    ids: list[int]
    text: str
    trail: dict[int, np.ndarray] = field(default_factory=dict)


class DownMetaView(Protocol):
    """``view.down_meta``: each feature's top output tokens."""

    def layer_records(self, layer: int) -> np.ndarray: ...
    def top_ids(self, layer: int) -> np.ndarray: ...
    def top_scores(self, layer: int) -> np.ndarray: ...
    def c_scores(self, layer: int) -> np.ndarray: ...
    def record(self, layer: int, feature: int) -> dict[str, Any] | None: ...


class VindexView(Protocol):
    """What ``lql.browse``, ``lql.infer``, ``lql.edit`` and ``lql.runtime`` read from a view."""

    # identity and shape
    @property
    def path(self) -> Any: ...
    @property
    def index(self) -> dict[str, Any]: ...
    @property
    def model(self) -> str | None: ...
    @property
    def family(self) -> str | None: ...
    @property
    def dtype(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def source(self) -> dict[str, Any]: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def layers(self) -> list[int]: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def embed_scale(self) -> float: ...
    @property
    def model_config(self) -> dict[str, Any]: ...
    @property
    def layer_bands(self) -> dict[str, tuple[int, int]]: ...
    def num_features(self, layer: int) -> int: ...
    def has_layer(self, layer: int) -> bool: ...

    # weights
    @property
    def weights(self) -> Mapping[str, np.ndarray]: ...
    def gate(self, layer: int) -> np.ndarray: ...
    @property
    def embeddings(self) -> np.ndarray: ...
    def embed(self, ids: Sequence[int]) -> np.ndarray: ...
    @property
    def down_meta(self) -> DownMetaView: ...

    # text and labels
    @property
    def tokenizer(self) -> Any: ...
    def token_text(self, token_id: int) -> str: ...
    @property
    def chat_template(self) -> str | None: ...
    @property
    def tokenizer_config(self) -> dict[str, Any]: ...
    @property
    def feature_labels(self) -> dict[tuple[int, int], str]: ...
    @property
    def relation_clusters(self) -> dict[str, Any] | None: ...


class KnnMatch(Protocol):
    """One KNN-store entry (``lql.edit.overlay.KnnEntry``) as the runtime reads it."""

    target_id: int
    entity: str
    relation: str
    target: str
    confidence: float


class OverlayState(Protocol):
    """The edit state behind an overlay view (``lql.edit.overlay.Overlay``)."""

    @property
    def version(self) -> int: ...                   # bumped on every change: cache keys
    def edited_layers(self) -> set[int]: ...
    def knn_layers(self) -> set[int]: ...
    def knn_depth(self) -> int: ...
    def knn_needs_context(self) -> bool: ...
    def knn_match(self, layer: int, residual_last: np.ndarray,
                  ffn_input: np.ndarray | None = None,
                  context: Any = None) -> tuple[Any, float, int] | None: ...


@runtime_checkable
class EditedView(Protocol):
    """An overlay's patched view: a :class:`VindexView` plus these."""

    is_overlay: bool
    base: Any                                       # the VindexView under the edits
    overlay: Any                                    # the OverlayState

    def inserted_edges(self) -> list[dict[str, Any]]: ...


def overlay_of(view: object) -> OverlayState | None:
    """The edit state of ``view`` when it is an overlay view, else ``None``."""
    return view.overlay if isinstance(view, EditedView) else None


def base_of(view: VindexView) -> VindexView:
    """The overlay-free vindex under ``view`` (``view`` itself when it has no overlay)."""
    return view.base if isinstance(view, EditedView) else view
