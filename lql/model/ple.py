"""Per-layer embeddings (PLE, Gemma 4 "E" models), as transformers computes them.

Model side (:class:`PerLayerEmbeddings`), once per call, for ``T`` tokens, ``L`` layers,
per-layer width ``P``:

* ``tok = table[ids] · √P`` reshaped ``[T, L, P]`` — ``table`` is
  ``embed_tokens_per_layer.weight`` ``[vocab, L·P]``; rows are gathered per token from
  the array *as stored* (a memory map stays one; only the gathered rows become float32 —
  the real table is 262144 × 8960);
* ``proj = RMSNorm_P(per_layer_projection_norm)((inputs_embeds @ per_layer_model_projection.T) · hidden^-½)``
  with ``inputs_embeds`` the scaled token embeddings entering layer 0;
* ``ple = (proj + tok) · 2^-½``.

Layer side (:class:`PerLayerBranch`), after the layer's FFN:
``h += RMSNorm(post_per_layer_input_norm)(per_layer_projection(act(per_layer_input_gate(h)) * ple[:, i]))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lql.model.ffn import ACTIVATIONS
from lql.model.norms import RMSNorm

F32 = np.float32


class PerLayerEmbeddings:
    def __init__(self, table: np.ndarray, projection: np.ndarray, projection_norm: RMSNorm, *,
                 num_layers: int, hidden_size: int) -> None:
        if table.ndim != 2 or table.shape[1] % num_layers:
            raise ValueError(f"per-layer embedding table has shape {table.shape}, "
                             f"expected (vocab, {num_layers} * per_layer_size)")
        self.table = table  # storage dtype, possibly memory-mapped: never converted whole
        self.num_layers = num_layers
        self.size = table.shape[1] // num_layers
        self.vocab_size = table.shape[0]
        # transformers: embed_scale buffer (float32) cast to the table dtype; float32 here
        self.scale = F32(math.sqrt(self.size))
        self.projection_t = np.ascontiguousarray(np.asarray(projection, dtype=F32).T)
        if self.projection_t.shape != (hidden_size, num_layers * self.size):
            raise ValueError(f"per_layer_model_projection has shape {projection.shape}, "
                             f"expected ({num_layers * self.size}, {hidden_size})")
        self.projection_scale = F32(hidden_size ** -0.5)
        self.projection_norm = projection_norm

    def token_part(self, ids: np.ndarray) -> np.ndarray:
        """``[T, L, P]``: the scaled table rows of ``ids`` (out-of-range ids were refused already)."""
        rows = np.asarray(self.table[ids], dtype=F32) * self.scale
        return rows.reshape(len(ids), self.num_layers, self.size)

    def __call__(self, ids: np.ndarray, inputs_embeds: np.ndarray) -> np.ndarray:
        """``[T, L, P]`` per-layer inputs for ``ids`` whose scaled embeddings are ``inputs_embeds``."""
        if ids.size and ids.max() >= self.vocab_size:
            raise ValueError(f"token id {int(ids.max())} is outside the per-layer embedding table "
                             f"({self.vocab_size} rows)")
        proj = (inputs_embeds @ self.projection_t) * self.projection_scale
        proj = self.projection_norm(proj.reshape(len(ids), self.num_layers, self.size))
        result: np.ndarray = (proj + self.token_part(ids)) * F32(2.0 ** -0.5)
        return result


class PerLayerBranch:
    """One layer's PLE branch: ``norm(proj(act(gate(h)) * per_layer_input))`` (added by the block)."""

    def __init__(self, gate: np.ndarray, projection: np.ndarray, post_norm: Callable[[np.ndarray], np.ndarray],
                 activation: str) -> None:
        self.gate_t = np.ascontiguousarray(np.asarray(gate, dtype=F32).T)            # [hidden, P]
        self.projection_t = np.ascontiguousarray(np.asarray(projection, dtype=F32).T)  # [P, hidden]
        self.post_norm = post_norm
        self.act = ACTIVATIONS[activation]

    def __call__(self, h: np.ndarray, per_layer_input: np.ndarray | None) -> np.ndarray:
        if per_layer_input is None:
            raise RuntimeError("this layer has a per-layer-embedding branch but got no per-layer input")
        x = self.act(h @ self.gate_t) * per_layer_input
        result: np.ndarray = self.post_norm(x @ self.projection_t)
        return result
