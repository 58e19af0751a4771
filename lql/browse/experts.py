"""Expert rows of a mixture-of-experts layer, for WALK / EXPLAIN WALK / DESCRIBE / SELECT.

An MoE layer (Gemma 4 26B-A4B-style) has, beside its dense FFN, ``E`` experts of
width ``I``. Expert ``e``'s row ``i`` is a feature like a dense one: gate row
``experts.gate_up_proj[e, i]`` (the first ``I`` rows of each expert are its gate),
output column ``experts.down_proj[e, :, i]``. It is addressed ``(layer, expert,
feature)`` — written ``e:i`` — and never numbered into the dense features.

The vindex keeps the experts as the stacked tensors the forward pass reads (level
INFERENCE or ALL), with no down-meta: an expert row's output tokens are computed on
demand, exactly as the extractor computes down-meta (``E · column``, the same
column-wise top-k), and kept per vindex.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import LevelError
from .memo import PerVindex

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["ExpertLayer", "expert_layer", "moe_layers", "require_experts", "EXPERT_TOP"]

EXPERT_TOP = 10          # output tokens kept per expert row (the down-meta's usual k)


class ExpertLayer:
    """The experts of one layer: gate scores over every ``(expert, row)`` and output tokens."""

    def __init__(self, layer: int, gate_up: np.ndarray, down: np.ndarray, embeddings: np.ndarray):
        if gate_up.ndim != 3 or down.ndim != 3 or gate_up.shape[0] != down.shape[0] \
                or gate_up.shape[1] != 2 * down.shape[2] or gate_up.shape[2] != down.shape[1]:
            raise LevelError(f"layer {layer}: expert tensors of shapes {gate_up.shape} and {down.shape} "
                             "do not form [E, 2I, hidden] / [E, hidden, I]")
        self.layer = layer
        self.num_experts, self.width = int(down.shape[0]), int(down.shape[2])
        self._gate = gate_up[:, :self.width, :]           # [E, I, hidden]: a view, no copy
        self._down = down
        self._emb = embeddings
        self._tokens: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def size(self) -> int:
        return self.num_experts * self.width

    def address(self, flat: int) -> tuple[int, int]:
        """``(expert, row)`` of a flat index into :meth:`scores`."""
        return divmod(int(flat), self.width)

    def flat(self, expert: int, row: int) -> int:
        return int(expert) * self.width + int(row)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """``gate · query`` for every expert row, flattened expert-major (f32, ``E·I``)."""
        q = np.asarray(query, dtype=np.float32)
        return np.einsum("eih,h->ei", self._gate, q, optimize=False).reshape(-1).astype(np.float32)

    def gate_norms(self, expert: int) -> np.ndarray:
        return np.linalg.norm(np.asarray(self._gate[int(expert)], dtype=np.float32), axis=1)

    def gate_vector(self, expert: int, row: int) -> np.ndarray:
        return np.asarray(self._gate[int(expert), int(row)], dtype=np.float32)

    def tokens(self, flats: Iterable[int], k: int = EXPERT_TOP) -> dict[int, list[tuple[int, float]]]:
        """Each row's top ``k`` output tokens ``[(id, logit)]``, best first (computed once)."""
        from ..vindex.down_meta import top_k_columns
        want = sorted({int(f) for f in flats} - set(self._tokens))
        for lo in range(0, len(want), 256):
            part = want[lo:lo + 256]
            cols = np.stack([np.asarray(self._down[e, :, i], dtype=np.float32)
                             for e, i in (self.address(f) for f in part)], axis=1)   # [hidden, n]
            ids, vals = top_k_columns(self._emb @ cols, EXPERT_TOP)
            for f, row_ids, row_vals in zip(part, ids, vals):
                self._tokens[f] = (row_ids, row_vals)
        out = {}
        for f in flats:
            ids, vals = self._tokens[int(f)]
            out[int(f)] = [(int(i), float(v)) for i, v in zip(ids[:k].tolist(), vals[:k].tolist())]
        return out


def _expert_keys(view: VindexView, layer: int) -> tuple[str, str] | None:
    from ..families import family_or_default
    fam = family_or_default(getattr(view, "family", None))
    return fam.expert_keys(dict(getattr(view, "model_config", None) or {}), layer)


def moe_layers(view: VindexView) -> list[int]:
    """Layers whose family says they have experts (whether or not the tensors were extracted)."""
    return [l for l in getattr(view, "layers", range(int(view.num_layers)))
            if _expert_keys(view, l) is not None]


def _build(view: VindexView) -> dict[int, ExpertLayer]:
    return {}


_layers = PerVindex(_build)


def expert_layer(view: VindexView, layer: int) -> ExpertLayer | None:
    """The layer's experts, or ``None`` for a layer without them. A vindex whose family
    gives the layer experts but that lacks their tensors (extracted WITH BROWSE) is a
    :class:`LevelError` naming the EXTRACT to run."""
    keys = _expert_keys(view, layer)
    if keys is None:
        return None
    memo = _layers(view)
    hit = memo.get(layer)
    if hit is not None:
        return hit
    weights = view.weights
    missing = [k for k in keys if k not in weights]
    if missing:
        raise LevelError(f"expert rows of layer {layer} need the expert tensors ({', '.join(missing)}), "
                         f"which a vindex extracted WITH BROWSE does not store; re-extract it WITH INFERENCE")
    from ..families import family_or_default
    emb = weights[family_or_default(getattr(view, "family", None)).embed_key]
    hit = ExpertLayer(layer, weights[keys[0]], weights[keys[1]], np.asarray(emb, dtype=np.float32))
    memo[layer] = hit
    return hit


def require_experts(view: VindexView, layers: Iterable[int]) -> dict[int, ExpertLayer]:
    """``{layer: ExpertLayer}`` over ``layers`` that have experts; a vindex with none is an error."""
    from ..errors import ExecutionError
    out = {}
    for l in layers:
        ex = expert_layer(view, l)
        if ex is not None:
            out[l] = ex
    if not out and not moe_layers(view):
        raise ExecutionError("EXPERTS: this vindex has no mixture-of-experts layers")
    return out
