"""What a forward pass can record, the hooks it calls, and what it returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Where = Literal["last", "all"] | None


@dataclass(frozen=True)
class Record:
    """What to keep from a forward pass (all off by default).

    ``residuals``: the residual stream after each layer (and the embedding input) —
    ``"last"`` keeps the last position (``[hidden]``), ``"all"`` every position
    (``[T, hidden]``).  ``deltas``: what each layer's attention and FFN add to the
    residual (after Gemma's post-norms), same shapes.  ``ffn_activations``: the FFN
    hidden vector ``act(gate·x) * (up·x)`` at the last position (``[ffn]``).
    ``attention``: attention probabilities — ``"last"`` the last query row
    (``[heads, S]``), ``"all"`` ``[heads, T, S]``.  ``layers``: restrict to these layers.
    With ``deltas``, a model with per-layer embeddings (Gemma 4) also records what each
    layer's PLE branch adds (``ForwardOutput.ple_deltas``).  ``experts``: per MoE layer,
    the router's choice at the last position (``ForwardOutput.experts``).  ``ffn_inputs``:
    the FFN's normed input (what the gate reads) at the last position (``[hidden]``) --
    LARQL's KNN key.
    """
    residuals: Where = None
    deltas: Where = None
    ffn_activations: bool = False
    attention: Where = None
    layers: frozenset[int] | None = None
    experts: bool = False
    ffn_inputs: bool = False

    def wants(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    @classmethod
    def everything(cls, where: Literal["last", "all"] = "last") -> Record:
        return cls(residuals=where, deltas=where, ffn_activations=True, attention=where)


@dataclass
class Hooks:
    """Per-layer callbacks for edits; each gets every position of the current call.

    ``attention(layer, x_normed, out) -> out`` and ``ffn(layer, x_normed, out) -> out``
    see the normed input of the sub-block and its raw output (before Gemma's
    post-norm); ``residual(layer, h) -> h`` sees the residual stream after the layer
    (after Gemma's ``layer_scalar``: what a forward hook on a transformers decoder
    layer's output sees — steering adds its vectors here).  ``embed(ids, positions, h)
    -> h`` sees the token embeddings of this call (after the embedding scale, before
    GPT-2's learned positions: what a forward hook on ``embed_tokens`` / ``wte`` sees —
    injection replaces rows here); ``positions`` are absolute (a KV-cached step has
    one).
    """
    attention: Callable[[int, np.ndarray, np.ndarray], np.ndarray] | None = None
    ffn: Callable[[int, np.ndarray, np.ndarray], np.ndarray] | None = None
    residual: Callable[[int, np.ndarray], np.ndarray] | None = None
    embed: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None


@dataclass
class ForwardOutput:
    """Result of :meth:`Model.forward`.

    ``logits``: ``[vocab]`` float32 for the last position (final soft-capping applied).
    ``hidden``: the final residual at the last position, before the final norm.
    ``positions``: the positions this call processed.
    Recorded lists are indexed by layer (``None`` for layers not recorded);
    ``embedding`` is the residual entering layer 0.  ``ple_deltas``: what each layer's
    per-layer-embedding branch added (before the layer's ``layer_scalar``, like the other
    deltas); ``None`` unless deltas were recorded on a model with PLE.  ``experts``: per
    MoE layer, ``(expert_ids [k], weights [k])`` the router chose at the last position
    (``None`` for other layers; the list is ``None`` unless ``Record.experts``).
    """
    logits: np.ndarray
    hidden: np.ndarray
    positions: np.ndarray
    embedding: np.ndarray | None = None
    residuals: list[np.ndarray | None] | None = None
    attn_deltas: list[np.ndarray | None] | None = None
    ffn_deltas: list[np.ndarray | None] | None = None
    ffn_activations: list[np.ndarray | None] | None = None
    attention: list[np.ndarray | None] | None = None
    ple_deltas: list[np.ndarray | None] | None = None
    experts: list[tuple[np.ndarray, np.ndarray] | None] | None = None
    ffn_inputs: list[np.ndarray | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def probs(self) -> np.ndarray:
        z = self.logits.astype(np.float64) - self.logits.max()
        p = np.exp(z)
        result: np.ndarray = (p / p.sum()).astype(np.float32)
        return result

    def top_k(self, k: int = 10) -> list[tuple[int, float]]:
        """``[(token_id, probability)]``, best first."""
        p = self.probs()
        ids = np.argpartition(-p, min(k, len(p) - 1))[:k]
        ids = ids[np.argsort(-p[ids], kind="stable")]
        return [(int(i), float(p[i])) for i in ids]
