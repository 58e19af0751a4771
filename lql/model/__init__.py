"""Numpy forward pass for every supported family; knows nothing of LQL or vindex files.

``build_model(model_config, weights) -> Model``; ``model.forward(ids, cache=, record=, hooks=)``;
greedy decoding is ``lql.runtime.greedy(model, ids, n)``; chat templates in :mod:`lql.model.chat`.
See docs/INFERENCE.md.
"""

from lql.model.cache import KVCache
from lql.model.config import ArchSpec
from lql.model.model import Model, build_model
from lql.model.records import ForwardOutput, Hooks, Record

__all__ = ["ArchSpec", "ForwardOutput", "Hooks", "KVCache", "Model", "Record", "build_model"]
