"""Logit lens and direct logit attribution (DLA) through the model's final norm.

Logit lens: ``final_norm(r) → unembedding (→ final soft-capping)`` applied to the
residual ``r`` after a layer (:meth:`lql.model.Model.logits_from_hidden`).

Direct logit attribution: the final residual at a position is exactly the sum
of its parts, ``r_final = e + Σ_l (a_l + f_l)`` (embedding, each layer's
attention and FFN deltas). The final norm is linearised **at r_final** — its
scale is frozen at the value it takes on the final residual:

* RMSNorm: ``N(x) ≈ g ⊙ x · s``, ``s = 1 / sqrt(mean(r_final²) + eps)``;
* LayerNorm: ``N(x) ≈ g ⊙ (x - mean(x)) · s + b``, ``s = 1 / sqrt(var(r_final) + eps)``.

A part ``d`` then contributes ``W_U[t] · lin(d)`` to token ``t``'s logit, and
because ``lin`` is linear and ``lin(r_final) (+ b) = N(r_final)``, the contributions
add up exactly to the final (pre-soft-cap) logit:

    embedding_logit + Σ_l (attn_logit_l + ffn_logit_l) + bias_logit = final_logit

(``bias_logit = W_U[t] · b``, zero for RMSNorm). All of it is computed in float64.

Gemma 4 layers are ``h_out = s_l · (h + a_l + f_l + p_l)`` (``layer_scalar`` ``s_l``, the
per-layer-embedding branch ``p_l``). Unrolled,
``r_final = c_0 · e + Σ_l c_l · (a_l + f_l + p_l)`` with ``c_l = Π_{m ≥ l} s_m`` (the product
of layer ``l``'s and every later layer's scalar; :func:`residual_scales`), so each part is
attributed scaled by its ``c_l`` and the identity gains ``Σ_l ple_logit_l``:

    embedding_logit + Σ_l (attn_logit_l + ffn_logit_l + ple_logit_l) + bias_logit = final_logit
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .predict import softmax64

__all__ = ["FinalNormLinear", "lens_logits", "lens_probs", "residual_scales", "has_layer_scalars"]


@dataclass
class FinalNormLinear:
    """The final norm, linearised at one final residual (see module doc)."""
    gain: np.ndarray          # g · s  [hidden] float64
    centre: bool              # LayerNorm subtracts the mean
    bias: np.ndarray | None   # LayerNorm bias [hidden] float64

    @classmethod
    def at(cls, model, r_final: np.ndarray) -> FinalNormLinear:
        norm = model.final_norm
        r = np.asarray(r_final, dtype=np.float64)
        if hasattr(norm, "scale"):                                   # RMSNorm (offset folded in)
            s = 1.0 / np.sqrt(np.mean(r * r) + float(norm.eps))
            return cls(np.asarray(norm.scale, dtype=np.float64) * s, False, None)
        if hasattr(norm, "weight"):                                  # LayerNorm
            c = r - r.mean()
            s = 1.0 / np.sqrt(np.mean(c * c) + float(norm.eps))
            b = None if norm.bias is None else np.asarray(norm.bias, dtype=np.float64)
            return cls(np.asarray(norm.weight, dtype=np.float64) * s, True, b)
        raise TypeError(f"unknown final norm {type(norm).__name__}")

    def __call__(self, d: np.ndarray) -> np.ndarray:
        """``lin(d)`` for vector(s) ``d`` ``[..., hidden]``."""
        d = np.asarray(d, dtype=np.float64)
        if self.centre:
            d = d - d.mean(axis=-1, keepdims=True)
        return d * self.gain

    def token_logits(self, head: np.ndarray, token_id: int, parts: np.ndarray) -> np.ndarray:
        """Contribution of each row of ``parts`` ``[n, hidden]`` to ``token_id``'s logit."""
        return self(parts) @ np.asarray(head[token_id], dtype=np.float64)

    def bias_logit(self, head: np.ndarray, token_id: int) -> float:
        if self.bias is None:
            return 0.0
        return float(self.bias @ np.asarray(head[token_id], dtype=np.float64))

    def vocab_logits(self, head: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """``[n, vocab]`` contributions of each part to every token (float32 matmul)."""
        return np.asarray(self(parts), dtype=np.float32) @ head.T


def lens_logits(model, residuals: np.ndarray) -> np.ndarray:
    """Logit lens of residual vectors ``[n, hidden]`` → ``[n, vocab]`` float32 logits."""
    return model.logits_from_hidden(np.asarray(residuals, dtype=np.float32))


def lens_probs(model, residuals: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Float64 probabilities of the logit lens (computed in chunks of ``chunk`` rows)."""
    residuals = np.asarray(residuals, dtype=np.float32)
    out = []
    for i in range(0, residuals.shape[0], chunk):
        out.append(softmax64(lens_logits(model, residuals[i:i + chunk])))
    return np.concatenate(out, axis=0)


def has_layer_scalars(model) -> bool:
    """True when some layer multiplies its output by a ``layer_scalar`` (Gemma 4)."""
    return any(getattr(b, "layer_scalar", None) is not None for b in getattr(model, "blocks", ()))


def residual_scales(model) -> np.ndarray:
    """``c`` ``[L]`` float64: ``c[l]`` = the product of the ``layer_scalar`` of layer ``l`` and of
    every later layer — the factor by which what layer ``l`` adds (and, for ``l = 0``, the
    embedding) reaches the final residual. All ones for models without layer scalars."""
    scalars = [getattr(b, "layer_scalar", None) for b in getattr(model, "blocks", ())]
    s = np.array([1.0 if x is None else float(x) for x in scalars], dtype=np.float64)
    return np.cumprod(s[::-1])[::-1].copy() if s.size else s
