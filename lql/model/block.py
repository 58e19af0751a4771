"""One transformer layer: attention sub-block then FFN sub-block, each pre-normed and
added to the residual stream; Gemma 2/3 also norm each sub-block's *output*
("sandwich" norms: ``post_attention_layernorm`` / ``post_feedforward_layernorm``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lql.model.attention import attend, attention_mask
from lql.model.cache import LayerCache
from lql.model.rope import apply_rope

F32 = np.float32
Norm = Callable[[np.ndarray], np.ndarray]


class Attention:
    """Fused QKV projection, optional per-head q/k norms (Qwen3, Gemma 3), RoPE, GQA, output projection."""

    def __init__(self, *, qkv_t: np.ndarray, qkv_bias, o_t: np.ndarray, o_bias, n_q: int, n_kv: int,
                 head_dim: int, scale: float, softcap: float | None, window: int | None,
                 q_norm: Norm | None = None, k_norm: Norm | None = None, rope=None):
        self.qkv = np.ascontiguousarray(qkv_t, dtype=F32)
        self.qkv_bias = None if qkv_bias is None else np.asarray(qkv_bias, dtype=F32)
        self.o = np.ascontiguousarray(o_t, dtype=F32)
        self.o_bias = None if o_bias is None else np.asarray(o_bias, dtype=F32)
        self.n_q, self.n_kv, self.head_dim = n_q, n_kv, head_dim
        self.scale, self.softcap, self.window = scale, softcap, window
        self.q_norm, self.k_norm, self.rope = q_norm, k_norm, rope

    def __call__(self, x: np.ndarray, positions: np.ndarray, tables, cache: LayerCache | None):
        t, d = x.shape[0], self.head_dim
        qkv = x @ self.qkv
        if self.qkv_bias is not None:
            qkv += self.qkv_bias
        nq, nkv = self.n_q * d, self.n_kv * d
        q = qkv[:, :nq].reshape(t, self.n_q, d).transpose(1, 0, 2)
        k = qkv[:, nq:nq + nkv].reshape(t, self.n_kv, d).transpose(1, 0, 2)
        v = qkv[:, nq + nkv:].reshape(t, self.n_kv, d).transpose(1, 0, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            cos, sin = tables(self.rope)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)
        k_positions = np.arange(k.shape[1]) if cache is not None else positions
        mask = attention_mask(positions, k_positions, self.window)
        out, probs = attend(np.ascontiguousarray(q), k, v, mask, scale=self.scale, softcap=self.softcap)
        merged = out.transpose(1, 0, 2).reshape(t, nq)
        projected = merged @ self.o
        if self.o_bias is not None:
            projected += self.o_bias
        return projected, probs


@dataclass
class LayerTrace:
    """What one layer produced for the current call (all positions)."""
    attn_delta: np.ndarray
    ffn_delta: np.ndarray
    ffn_hidden: np.ndarray
    probs: np.ndarray


class Block:
    def __init__(self, index: int, *, attn_norm: Norm, attention: Attention, ffn_norm: Norm, ffn,
                 post_attn_norm: Norm | None = None, post_ffn_norm: Norm | None = None):
        self.index = index
        self.attn_norm, self.attention = attn_norm, attention
        self.ffn_norm, self.ffn = ffn_norm, ffn
        self.post_attn_norm, self.post_ffn_norm = post_attn_norm, post_ffn_norm

    def __call__(self, h: np.ndarray, positions, tables, cache, hooks) -> tuple[np.ndarray, LayerTrace]:
        x = self.attn_norm(h)
        attn_out, probs = self.attention(x, positions, tables, cache)
        if hooks is not None and hooks.attention is not None:
            attn_out = hooks.attention(self.index, x, attn_out)
        if self.post_attn_norm is not None:
            attn_out = self.post_attn_norm(attn_out)
        h = h + attn_out

        x = self.ffn_norm(h)
        ffn_out, hidden = self.ffn(x)
        if hooks is not None and hooks.ffn is not None:
            ffn_out = hooks.ffn(self.index, x, ffn_out)
        if self.post_ffn_norm is not None:
            ffn_out = self.post_ffn_norm(ffn_out)
        h = h + ffn_out
        if hooks is not None and hooks.residual is not None:
            h = hooks.residual(self.index, h)
        return h, LayerTrace(attn_out, ffn_out, hidden, probs)
