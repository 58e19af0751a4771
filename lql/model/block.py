"""One transformer layer: attention sub-block then FFN sub-block, each pre-normed and
added to the residual stream; Gemma 2/3/4 also norm each sub-block's *output*
("sandwich" norms: ``post_attention_layernorm`` / ``post_feedforward_layernorm``).

Optional pieces (Gemma 4), all off unless the builder passes them:

* attention ``kv_shared``: no k/v projections — keys/values are the (RoPE'd, cached)
  ones of the layer whose :class:`LayerCache` this layer aliases;
  ``k_eq_v``: no v projection — values are the raw k projection (before ``k_norm``);
  ``v_norm``: a (weightless) norm on the values.
* block ``moe``: an expert branch beside the dense FFN (:class:`lql.model.moe.MoEBranch`),
  combined before ``post_feedforward_layernorm``;
  ``per_layer``: the per-layer-embedding branch added after the FFN
  (:class:`lql.model.ple.PerLayerBranch`), fed ``per_layer_input``;
  ``layer_scalar``: multiplies the whole residual at the end of the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lql.model.attention import attend, attention_mask
from lql.model.cache import LayerCache
from lql.model.ffn import matmul
from lql.model.rope import apply_rope
from lql.model.stored import StoredMatrix

if TYPE_CHECKING:
    from lql.model.moe import MoEBranch
    from lql.model.ple import PerLayerBranch
    from lql.model.records import Hooks
    from lql.model.rope import Rope

F32 = np.float32
Norm = Callable[[np.ndarray], np.ndarray]
#: an FFN: ``x -> (output, hidden)`` (:class:`lql.model.ffn.GatedFFN`, ``DenseFFN``)
FFN = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: RoPE tables of the current call's positions for a :class:`Rope`
Tables = Callable[["Rope"], tuple[np.ndarray, np.ndarray]]


def _f32(w: np.ndarray | StoredMatrix) -> np.ndarray | StoredMatrix:
    """``w`` as float32, kept as it is when contiguous in either order (a transposed view of
    a ``[out, in]`` array is as fast for BLAS as a copy, and costs nothing), or a
    :class:`StoredMatrix` as it is (multiplied from its stored words)."""
    if isinstance(w, StoredMatrix):
        return w
    arr = np.asarray(w, dtype=F32)
    return arr if arr.flags.c_contiguous or arr.flags.f_contiguous else np.ascontiguousarray(arr)


class Attention:
    """Fused QKV projection, optional per-head q/k norms (Qwen3, Gemma 3), RoPE, GQA, output projection."""

    def __init__(self, *, qkv_t: np.ndarray | StoredMatrix, qkv_bias: np.ndarray | None,
                 o_t: np.ndarray | StoredMatrix,
                 o_bias: np.ndarray | None, n_q: int, n_kv: int,
                 head_dim: int, scale: float, softcap: float | None, window: int | None,
                 q_norm: Norm | None = None, k_norm: Norm | None = None, rope: Rope | None = None,
                 v_norm: Norm | None = None, k_eq_v: bool = False, kv_shared: bool = False) -> None:
        """``qkv_t`` is ``[hidden, q | k | v]``; ``[hidden, q | k]`` when ``k_eq_v``; ``[hidden, q]``
        when ``kv_shared``."""
        self.v_norm, self.k_eq_v, self.kv_shared = v_norm, k_eq_v, kv_shared
        self.qkv = _f32(qkv_t)
        self.qkv_bias = None if qkv_bias is None else np.asarray(qkv_bias, dtype=F32)
        self.o = _f32(o_t)
        self.o_bias = None if o_bias is None else np.asarray(o_bias, dtype=F32)
        self.n_q, self.n_kv, self.head_dim = n_q, n_kv, head_dim
        self.scale, self.softcap, self.window = scale, softcap, window
        self.q_norm, self.k_norm, self.rope = q_norm, k_norm, rope

    def __call__(self, x: np.ndarray, positions: np.ndarray, tables: Tables,
                 cache: LayerCache | None, segments: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``segments``: packed sequences' ids per row (no cache), each attending to itself."""
        t, d = x.shape[0], self.head_dim
        qkv = matmul(x, self.qkv)
        if self.qkv_bias is not None:
            qkv += self.qkv_bias
        nq, nkv = self.n_q * d, self.n_kv * d
        q = qkv[:, :nq].reshape(t, self.n_q, d).transpose(1, 0, 2)
        if self.q_norm is not None:
            q = self.q_norm(q)
        cos = sin = None
        if self.rope is not None:
            cos, sin = tables(self.rope)
            q = apply_rope(q, cos, sin)
        if self.kv_shared:
            if cache is None:
                raise RuntimeError("a KV-sharing layer needs the KV cache of its source layer")
            k, v = cache.view()
        else:
            k = qkv[:, nq:nq + nkv].reshape(t, self.n_kv, d).transpose(1, 0, 2)
            v = k if self.k_eq_v else qkv[:, nq + nkv:].reshape(t, self.n_kv, d).transpose(1, 0, 2)
            if self.k_norm is not None:
                k = self.k_norm(k)
            if self.v_norm is not None:
                v = self.v_norm(v)
            if cos is not None and sin is not None:
                k = apply_rope(k, cos, sin)
            if cache is not None:
                k, v = cache.append(k, v)
        k_positions = np.arange(k.shape[1]) if cache is not None else positions
        mask = attention_mask(positions, k_positions, self.window, segments)
        out, probs = attend(np.ascontiguousarray(q), k, v, mask, scale=self.scale, softcap=self.softcap)
        merged = out.transpose(1, 0, 2).reshape(t, nq)
        projected = matmul(merged, self.o)
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
    ple_delta: np.ndarray | None = None  # what the per-layer-embedding branch added (Gemma 4), or None
    routing: tuple[np.ndarray, np.ndarray] | None = None  # MoE: (weights [T, k], expert ids [T, k])
    ffn_input: np.ndarray | None = None  # the FFN's normed input (all positions)


class Block:
    def __init__(self, index: int, *, attn_norm: Norm, attention: Attention, ffn_norm: Norm, ffn: FFN,
                 post_attn_norm: Norm | None = None, post_ffn_norm: Norm | None = None,
                 moe: MoEBranch | None = None, per_layer: PerLayerBranch | None = None,
                 layer_scalar: float | None = None) -> None:
        self.index = index
        self.attn_norm, self.attention = attn_norm, attention
        self.ffn_norm, self.ffn = ffn_norm, ffn
        self.post_attn_norm, self.post_ffn_norm = post_attn_norm, post_ffn_norm
        self.moe, self.per_layer = moe, per_layer
        self.layer_scalar = None if layer_scalar is None else F32(layer_scalar)

    def __call__(self, h: np.ndarray, positions: np.ndarray, tables: Tables,
                 cache: LayerCache | None, hooks: Hooks | None,
                 per_layer_input: np.ndarray | None = None,
                 segments: np.ndarray | None = None) -> tuple[np.ndarray, LayerTrace]:
        x = self.attn_norm(h)
        attn_out, probs = self.attention(x, positions, tables, cache, segments)
        if hooks is not None and hooks.attention is not None:
            attn_out = hooks.attention(self.index, x, attn_out)
        if self.post_attn_norm is not None:
            attn_out = self.post_attn_norm(attn_out)
        h = h + attn_out

        x = self.ffn_norm(h)
        ffn_out, hidden = self.ffn(x)
        if hooks is not None and hooks.ffn is not None:
            ffn_out = hooks.ffn(self.index, x, ffn_out)
        routing: tuple[np.ndarray, np.ndarray] | None = None
        ple_out: np.ndarray | None = None
        if self.moe is not None:
            ffn_out, routing = self.moe.routed(ffn_out, h)  # the expert branch reads the residual itself
        if self.post_ffn_norm is not None:
            ffn_out = self.post_ffn_norm(ffn_out)
        h = h + ffn_out
        if self.per_layer is not None:
            ple_out = self.per_layer(h, per_layer_input)
            h = h + ple_out
        if self.layer_scalar is not None:
            h = h * self.layer_scalar
        if hooks is not None and hooks.residual is not None:
            h = hooks.residual(self.index, h)
        return h, LayerTrace(attn_out, ffn_out, hidden, probs, ple_out, routing, x)
