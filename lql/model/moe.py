"""Gemma 4's mixture-of-experts branch, beside (not instead of) the dense FFN.

``out = post_ffn_norm_1(dense) + post_ffn_norm_2(experts(pre_ffn_norm_2(residual)))``
(the block then applies ``post_feedforward_layernorm``), where ``residual`` is the stream
entering the FFN sub-block.  Router, as transformers' ``Gemma4TextRouter``:

* ``x = RMSNorm_weightless(residual) · router.scale · hidden^-½``;
* ``p = softmax(x @ router.proj.T)`` over all experts (float32);
* the ``top_k`` largest, renormalised to sum to 1, times ``router.per_expert_scale[idx]``.

Experts: ``experts.gate_up_proj`` ``[E, 2·I, hidden]`` (gate rows first, then up),
``experts.down_proj`` ``[E, hidden, I]``; expert ``e`` computes
``down_e(act(gate_e·x) * (up_e·x))``.  Contributions are summed in expert order, as
transformers' loop does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lql.model.attention import softmax
from lql.model.ffn import ACTIVATIONS
from lql.model.norms import RMSNorm

F32 = np.float32
Norm = Callable[[np.ndarray], np.ndarray]


class Router:
    def __init__(self, proj: np.ndarray, scale: np.ndarray, per_expert_scale: np.ndarray, *, top_k: int,
                 eps: float):
        self.proj_t = np.ascontiguousarray(np.asarray(proj, dtype=F32).T)  # [hidden, E]
        hidden, experts = self.proj_t.shape
        self.scale = np.asarray(scale, dtype=F32).reshape(hidden)
        self.per_expert_scale = np.asarray(per_expert_scale, dtype=F32).reshape(experts)
        self.root = F32(hidden ** -0.5)
        self.norm = RMSNorm(None, eps)
        if not 0 < top_k <= experts:
            raise ValueError(f"top_k_experts={top_k} with {experts} experts")
        self.top_k = top_k

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``x`` ``[T, hidden]`` → (probabilities ``[T, E]``, weights ``[T, k]``, expert ids ``[T, k]``)."""
        scores = (self.norm(x) * self.scale * self.root) @ self.proj_t
        probs = softmax(scores.astype(F32, copy=True))
        # torch.topk: largest first; stable on ties by index
        idx = np.argsort(-probs, axis=-1, kind="stable")[:, :self.top_k]
        weights = np.take_along_axis(probs, idx, axis=-1)
        weights = weights / weights.sum(axis=-1, keepdims=True)
        return probs, (weights * self.per_expert_scale[idx]).astype(F32), idx


class Experts:
    def __init__(self, gate_up: np.ndarray, down: np.ndarray, activation: str):
        self.gate_up = np.asarray(gate_up, dtype=F32)  # [E, 2I, hidden]
        self.down = np.asarray(down, dtype=F32)        # [E, hidden, I]
        e, two_i, hidden = self.gate_up.shape
        if two_i % 2 or self.down.shape != (e, hidden, two_i // 2):
            raise ValueError(f"expert tensors of shapes {self.gate_up.shape} / {self.down.shape} do not "
                             "fit [E, 2I, hidden] / [E, hidden, I]")
        self.num_experts, self.width = e, two_i // 2
        self.act = ACTIVATIONS[activation]

    def __call__(self, x: np.ndarray, weights: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.zeros_like(x, dtype=F32)
        for e in np.unique(idx):
            tokens, slot = np.nonzero(idx == e)
            gu = x[tokens] @ self.gate_up[e].T
            hidden = self.act(gu[:, :self.width]) * gu[:, self.width:]
            y = (hidden @ self.down[e].T) * weights[tokens, slot][:, None]
            np.add.at(out, tokens, y)
        return out


class MoEBranch:
    """Called by the block as ``moe(dense_out, residual)``; returns the combined FFN output."""

    def __init__(self, router: Router, experts: Experts, *, pre_norm: Norm, post_norm: Norm,
                 post_dense_norm: Norm) -> None:
        self.router, self.experts = router, experts
        self.pre_norm, self.post_norm, self.post_dense_norm = pre_norm, post_norm, post_dense_norm

    def __call__(self, dense_out: np.ndarray, residual: np.ndarray) -> np.ndarray:
        return self.routed(dense_out, residual)[0]

    def routed(self, dense_out: np.ndarray, residual: np.ndarray
               ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Like ``__call__``, also returning the routing: (weights ``[T, k]``, expert ids ``[T, k]``)."""
        _, weights, idx = self.router(residual)
        experts_out = self.experts(self.pre_norm(residual), weights, idx)
        return self.post_dense_norm(dense_out) + self.post_norm(experts_out), (weights, idx)
