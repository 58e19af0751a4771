"""The inference seam under ``lql.edit`` and ``lql.infer``.

* :mod:`lql.runtime.view` — the typed view protocol (:class:`VindexView`,
  :class:`EditedView`) and :func:`overlay_of` / :func:`base_of`;
* :mod:`lql.runtime.models` — the one model cache and the one BROWSE-level check;
* :mod:`lql.runtime.forward` — forward passes, the KNN override, :class:`Prediction`,
  and the one greedy decoding loop.

It imports ``lql.model`` (numpy forward pass) and nothing above it.
"""

from .forward import (
                      KnnPicker,
                      Prediction,
                      ffn_inputs,
                      greedy,
                      greedy_ids,
                      knn_context,
                      knn_hit,
                      knn_layers,
                      knn_record,
                      predict,
                      prompt_ids,
                      rank,
                      rank_many,
                      run,
                      softmax64,
                      states_many,
                      top_ids,
)
from .models import can_forward, check_level, clear_cache, model_for, model_for_source
from .view import DownMetaView, EditedView, OverlayState, VindexView, base_of, overlay_of

__all__ = ["KnnPicker", "knn_context", "Prediction", "ffn_inputs", "greedy", "greedy_ids", "knn_hit", "knn_layers", "knn_record", "predict",
           "prompt_ids", "rank", "rank_many", "run", "softmax64", "states_many", "top_ids", "can_forward", "check_level", "clear_cache",
           "model_for", "model_for_source", "DownMetaView", "EditedView", "OverlayState",
           "VindexView", "base_of", "overlay_of"]
