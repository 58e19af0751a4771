"""Scaled dot-product attention with GQA, causal / sliding-window masks and logit soft-capping.

Follows transformers' eager path: ``scores = (q @ kᵀ) * scale``; optional
``softcap * tanh(scores / softcap)`` (Gemma 2); masked positions excluded;
softmax in float32; ``probs @ v``.  Query head ``h`` reads key/value head
``h // (num_q_heads // num_kv_heads)`` (transformers' ``repeat_kv``).  All heads
go through one batched matmul, grouped by key/value head, so keys are never copied
per query head.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def attention_mask(q_positions: np.ndarray, k_positions: np.ndarray, window: int | None,
                   segments: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``[T, S]``: query at position p sees keys at ``p - window < pos <= p``; with
    ``segments`` (packed sequences, no cache: one segment id per row, queries and keys the
    same rows) only keys of its own sequence."""
    allowed = k_positions[None, :] <= q_positions[:, None]
    if window is not None:
        allowed &= k_positions[None, :] > q_positions[:, None] - window
    if segments is not None:
        allowed &= segments[None, :] == segments[:, None]
    return allowed


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - np.max(x, axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= np.sum(x, axis=axis, keepdims=True)
    return x


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, *, scale: float,
           softcap: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``q`` ``[Hq, T, d]``, ``k``/``v`` ``[Hkv, S, d]``, ``mask`` ``[T, S]`` →
    (output ``[Hq, T, d]``, probabilities ``[Hq, T, S]``)."""
    n_q, t, d = q.shape
    n_kv, s, _ = k.shape
    group = n_q // n_kv
    grouped = q.reshape(n_kv, group * t, d)
    scores = np.matmul(grouped, k.transpose(0, 2, 1))
    scores *= F32(scale)
    if softcap is not None:
        scores /= F32(softcap)
        np.tanh(scores, out=scores)
        scores *= F32(softcap)
    scores = scores.reshape(n_kv, group, t, s)
    if not mask.all():
        scores = np.where(mask, scores, F32(-np.inf))
    probs = softmax(scores).astype(F32, copy=False)
    out = np.matmul(probs.reshape(n_kv, group * t, s), v)
    return out.reshape(n_q, t, d), probs.reshape(n_q, t, s)
