"""``DESCRIBE ... VIA RESIDUAL``: queries from a real forward pass.

The entity is run as a prompt (its own text, with the special tokens the
tokenizer adds, e.g. Gemma's BOS; when the tokenizer adds no BOS — SmolLM2's —
the model's ``bos_token_id`` is put in front, so the entity is not at position
0, where the attention sink makes the residual nearly the same for every token) through the model of the vindex (overlay
included); at every layer the query is the *normalised FFN input* at the last
position — exactly what the layer's gate rows are multiplied with — so
``gate(layer) @ query`` are the real gate pre-activations. Needs an INFERENCE
(or ALL) vindex.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ExecutionError

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["residual_query_fn", "ffn_inputs_for"]


def ffn_inputs_for(view: VindexView, text: str) -> dict[int, np.ndarray]:
    from ..model import Hooks
    from ..runtime import check_level, run
    check_level(view, "DESCRIBE ... VIA RESIDUAL")
    ids = list(view.tokenizer.encode(text).ids)
    if not ids:
        raise ExecutionError(f"{text!r} produced no tokens")
    bos = _bos_id(view)
    if bos is not None and ids[0] != bos:
        ids = [bos] + ids
    got: dict[int, np.ndarray] = {}

    def grab(layer, x, out):
        got[layer] = np.array(x[-1], dtype=np.float32, copy=True)
        return out

    run(view, ids, hooks=Hooks(ffn=grab))
    return got


def _bos_id(view: VindexView) -> int | None:
    """The model's BOS id (``bos_token_id`` of its config), or None."""
    cfg = getattr(view, "model_config", None) or {}
    bos = cfg.get("bos_token_id") if isinstance(cfg, dict) else None
    if isinstance(bos, list):
        bos = bos[0] if bos else None
    try:
        return None if bos is None else int(bos)
    except (TypeError, ValueError):
        return None


def residual_query_fn(view: VindexView, entity: str):
    """``query_at(layer)`` for an entity (one forward pass, then cached)."""
    inputs = ffn_inputs_for(view, entity.strip())

    def query_at(layer: int) -> np.ndarray:
        q = inputs.get(layer)
        if q is None:
            raise ExecutionError(f"the forward pass recorded no FFN input at layer {layer}")
        return q

    return query_at
