"""Build a model whose layers differ from one another (Gemma 4 and the like).

:func:`lql.model.build_model` hands a ``model_config`` here when it uses any of
:data:`MIXED_KEYS`.  Everything is driven by those keys (see docs/FAMILIES.md, "Gemma 4"):

* per-layer geometry as every builder reads it: ``per_layer`` ``{head_dim, num_kv_heads,
  num_q_heads, intermediate_size}`` lists (:func:`lql.model.config.layer_heads`; absent: the
  global value everywhere) — ``intermediate_size`` is the dense FFN width, checked against
  the weights;
* ``rope_scaling`` keyed by layer type; a type's dict may be ``{"rope_type": "proportional",
  "partial_rotary_factor": f, "rope_theta": θ}`` (:func:`lql.model.rope.proportional_inv_freq`);
  RoPE tables are built for each layer's own head size;
* ``attn_scale``: the attention score scale (Gemma 4: 1.0);
* ``v_norm``: weightless RMSNorm on the values; ``layer_k_eq_v``: per layer, values are the
  raw k projection (no ``v_proj``);
* ``kv_shared_from``: per layer, the index of the layer whose KV cache it reads (null: its
  own); such a layer has no k/v projections or k norm (tensors there are ignored);
* ``per_layer_input_size`` (> 0: per-layer embeddings, :mod:`lql.model.ple`);
* ``layer_scalars``: every layer has a ``layer_scalar`` ``[1]`` multiplying its output;
* ``num_experts`` (> 0: the MoE branch of :mod:`lql.model.moe` beside the dense FFN),
  ``top_k_experts``.

Tensor names are the normalised Hugging Face names (``layers.N.self_attn.q_proj.weight`` …;
``layers.N.router.proj.weight``, ``layers.N.experts.gate_up_proj`` …;
``embed_tokens_per_layer.weight``, ``per_layer_model_projection.weight``,
``per_layer_projection_norm.weight``, ``layers.N.per_layer_input_gate.weight`` …).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from lql.errors import LqlError, MissingTensorError, UnsupportedArchitectureError
from lql.model.block import Attention, Block
from lql.model.config import ArchSpec, RopeSpec, layer_heads, per_layer_values
from lql.model.ffn import ACTIVATIONS, GatedFFN
from lql.model.layerstore import LayerStore
from lql.model.layouts import Tensors
from lql.model.moe import Experts, MoEBranch, Router
from lql.model.norms import RMSNorm
from lql.model.ple import PerLayerBranch, PerLayerEmbeddings
from lql.model.rope import Rope

if TYPE_CHECKING:
    from lql.model.model import Model

F32 = np.float32

#: model_config keys that need this builder (any of them set and truthy)
MIXED_KEYS = ("layer_k_eq_v", "kv_shared_from", "per_layer_input_size", "num_experts", "layer_scalars", "v_norm",
              "attn_scale")
ROPE_KINDS = ("default", "linear", "llama3", "yarn", "dynamic", "proportional")
LAYER_TYPES = ("full_attention", "sliding_attention")


def is_mixed(model_config: Mapping[str, Any]) -> bool:
    return any(model_config.get(k) not in (None, False, 0, [], ()) for k in MIXED_KEYS)


def _per_layer(cfg: Mapping[str, Any], key: str, default: Any, n: int) -> list[Any]:
    values = cfg.get(key)
    if values is None:
        return [default] * n
    values = list(values)
    if len(values) != n:
        raise LqlError(f"model_config {key} has {len(values)} entries for {n} layers")
    return values


def _layer_types(cfg: Mapping[str, Any], n: int) -> list[str]:
    types = cfg.get("layer_types")
    if types is None:
        types = ["sliding_attention" if cfg.get("sliding_window") else "full_attention"] * n
    types = list(types)
    if len(types) != n:
        raise LqlError(f"model_config layer_types has {len(types)} entries for {n} layers")
    for t in types:
        if t not in LAYER_TYPES:
            raise UnsupportedArchitectureError(f"layer type {t!r}", LAYER_TYPES)
    if "sliding_attention" in types and not cfg.get("sliding_window"):
        raise LqlError("model_config has sliding_attention layers but no sliding_window")
    return types


def _rope_spec(cfg: Mapping[str, Any], layer_type: str, head_dim: int) -> RopeSpec:
    scaling = cfg.get("rope_scaling") or {}
    if not isinstance(scaling, dict):
        raise LqlError(f"model_config rope_scaling must be a dict or null, got {scaling!r}")
    per_type = bool(scaling) and set(scaling) <= set(LAYER_TYPES)
    params = dict((scaling.get(layer_type) or {}) if per_type else scaling)
    base = params.pop("rope_theta", None)
    if base is None:
        base = cfg.get("rope_local_base") if layer_type == "sliding_attention" else None
        base = base or cfg.get("rope_base")
    if base is None:
        raise LqlError("model_config has no rope_base")
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if kind not in ROPE_KINDS:
        raise UnsupportedArchitectureError(f"rope type {kind!r}", ROPE_KINDS)
    frozen = None
    if kind != "default":
        params["rope_type"] = kind
        frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))
    return RopeSpec(float(base), int(head_dim), frozen, cfg.get("max_position_embeddings"))


def mixed_spec(cfg: Mapping[str, Any], num_layers: int, hidden: int) -> ArchSpec:
    n_q = cfg.get("num_q_heads")
    if not n_q:
        raise LqlError("model_config has no num_q_heads")
    head_dim = int(cfg.get("head_dim") or hidden // n_q)
    n_kv = int(cfg.get("num_kv_heads") or n_q)
    activation = cfg.get("activation")
    if activation not in ACTIVATIONS:
        raise UnsupportedArchitectureError(f"activation {activation!r}", tuple(ACTIVATIONS))
    if (cfg.get("qkv_layout") or "split") != "split":
        raise UnsupportedArchitectureError(f"qkv_layout {cfg.get('qkv_layout')!r} with per-layer settings",
                                           ("split",))
    if cfg.get("norm_type", "rms") != "rms":
        raise UnsupportedArchitectureError(f"norm_type {cfg.get('norm_type')!r} with per-layer settings",
                                           ("rms",))
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise UnsupportedArchitectureError("attention/MLP biases with per-layer settings", ("no biases",))
    eps = cfg.get("norm_eps", cfg.get("rms_norm_eps"))
    if eps is None:
        raise LqlError("model_config has neither norm_eps nor rms_norm_eps")
    types = _layer_types(cfg, num_layers)
    window = cfg.get("sliding_window")
    qpas = cfg.get("query_pre_attn_scalar")
    scale = cfg.get("attn_scale")

    def attn_scale(dim: int) -> float:
        if scale is not None:
            return float(scale)
        return float(float(qpas) ** -0.5 if qpas else float(dim) ** -0.5)

    heads = layer_heads(cfg, num_layers, int(n_q), n_kv, head_dim, attn_scale)
    head_dims = [lh.head_dim for lh in heads]
    embed_scale = cfg.get("embed_scale")
    eos = cfg.get("eos_token_id")
    eos = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (eos,))
    if cfg.get("position_embedding", "rope") != "rope":
        raise UnsupportedArchitectureError("learned positions with per-layer settings", ("rope",))
    return ArchSpec(
        model_type=str(cfg.get("model_type")), qkv_layout="split", num_layers=num_layers, hidden_size=hidden,
        num_q_heads=int(n_q), num_kv_heads=n_kv, head_dim=head_dim, norm_type="rms",
        norm_offset=float(cfg.get("norm_offset") or 0.0), norm_eps=float(eps),
        embed_scale=float(1.0 if embed_scale is None else embed_scale), activation=activation,
        position_embedding="rope", max_position_embeddings=cfg.get("max_position_embeddings"),
        attention_bias=False, mlp_bias=False, qk_norm=bool(cfg.get("qk_norm")),
        sandwich_norms=bool(cfg.get("sandwich_norms")), attn_scale=attn_scale(head_dim),
        attn_softcap=cfg.get("attn_logit_softcapping") or None,
        final_softcap=cfg.get("final_logit_softcapping") or None,
        tie_word_embeddings=cfg.get("tie_word_embeddings"),
        sliding=tuple(int(window) if t == "sliding_attention" and window else None for t in types),
        rope=tuple(_rope_spec(cfg, t, d) for t, d in zip(types, head_dims, strict=True)),
        eos_token_ids=tuple(int(e) for e in eos), layer_heads=heads)


class _Plan:
    """Per-layer facts read from the model_config, and the tensor names they imply."""

    def __init__(self, cfg: Mapping[str, Any], spec: ArchSpec):
        n = spec.num_layers
        self.types = _layer_types(cfg, n)
        self.head_dims = [spec.heads(i).head_dim for i in range(n)]
        self.kv_heads = [spec.heads(i).num_kv_heads for i in range(n)]
        self.q_heads = [spec.heads(i).num_q_heads for i in range(n)]
        widths = per_layer_values(cfg, "intermediate_size", n)
        #: per layer: the dense FFN width the config says (``None``: read it off the weights)
        self.ffn: list[Any] = list(widths) if widths else [cfg.get("intermediate_size")] * n
        self.k_eq_v = [bool(x) for x in _per_layer(cfg, "layer_k_eq_v", False, n)]
        self.sources = _per_layer(cfg, "kv_shared_from", None, n)
        for i, src in enumerate(self.sources):
            if src is None:
                continue
            src = int(src)
            if not 0 <= src < i or self.sources[src] is not None:
                raise LqlError(f"model_config kv_shared_from[{i}]={src}: must name an earlier layer "
                               "that has its own keys and values")
            if (self.head_dims[src], self.kv_heads[src], self.types[src]) != \
                    (self.head_dims[i], self.kv_heads[i], self.types[i]):
                raise LqlError(f"layer {i} shares keys with layer {src} of another head shape or type")
            self.sources[i] = src

        self.ple = int(cfg.get("per_layer_input_size") or 0)
        self.scalars = bool(cfg.get("layer_scalars"))
        self.experts = int(cfg.get("num_experts") or 0)
        self.top_k = int(cfg.get("top_k_experts") or 0)
        self.v_norm = bool(cfg.get("v_norm"))
        if self.experts and not self.top_k:
            raise LqlError("model_config has num_experts but no top_k_experts")

    def required(self, spec: ArchSpec, tied: bool) -> list[str]:
        keys = ["embed_tokens.weight", "norm.weight"] + ([] if tied else ["lm_head.weight"])
        if self.ple:
            keys += ["embed_tokens_per_layer.weight", "per_layer_model_projection.weight",
                     "per_layer_projection_norm.weight"]
        for i in range(spec.num_layers):
            p = f"layers.{i}."
            attn = ["q"] if self.sources[i] is not None else (["q", "k"] if self.k_eq_v[i] else ["q", "k", "v"])
            keys += [p + f"self_attn.{n}_proj.weight" for n in attn + ["o"]]
            if spec.qk_norm:
                keys.append(p + "self_attn.q_norm.weight")
                if self.sources[i] is None:
                    keys.append(p + "self_attn.k_norm.weight")
            keys += [p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
            keys += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
            if spec.sandwich_norms:
                keys += [p + "pre_feedforward_layernorm.weight", p + "post_feedforward_layernorm.weight"]
            if self.scalars:
                keys.append(p + "layer_scalar")
            if self.ple:
                keys += [p + "per_layer_input_gate.weight", p + "per_layer_projection.weight",
                         p + "post_per_layer_input_norm.weight"]
            if self.experts:
                keys += [p + "router.proj.weight", p + "router.scale", p + "router.per_expert_scale",
                         p + "experts.gate_up_proj", p + "experts.down_proj",
                         p + "pre_feedforward_layernorm_2.weight", p + "post_feedforward_layernorm_1.weight",
                         p + "post_feedforward_layernorm_2.weight"]
        return keys


def _block(spec: ArchSpec, plan: _Plan, t: Tensors, i: int, rope: Rope | None) -> Block:
    p, h = f"layers.{i}.", spec.hidden_size
    heads = spec.heads(i)
    d, n_kv, nq = heads.head_dim, heads.num_kv_heads, heads.num_q_heads * heads.head_dim

    def norm(key: str, dim: int = h) -> RMSNorm:
        return RMSNorm(t.get(p + key, (dim,)), spec.norm_eps, spec.norm_offset)

    shared = plan.sources[i] is not None
    parts = [t.get(p + "self_attn.q_proj.weight", (nq, h))]
    if not shared:
        parts.append(t.get(p + "self_attn.k_proj.weight", (n_kv * d, h)))
        if not plan.k_eq_v[i]:
            parts.append(t.get(p + "self_attn.v_proj.weight", (n_kv * d, h)))
    q_norm = k_norm = None
    if spec.qk_norm:
        q_norm = norm("self_attn.q_norm.weight", d)
        k_norm = None if shared else norm("self_attn.k_norm.weight", d)
    attention = Attention(
        qkv_t=np.concatenate(parts, axis=0).T, qkv_bias=None,
        o_t=t.get(p + "self_attn.o_proj.weight", (h, nq)).T, o_bias=None,
        n_q=heads.num_q_heads, n_kv=n_kv, head_dim=d, scale=heads.attn_scale, softcap=spec.attn_softcap,
        window=spec.sliding[i], q_norm=q_norm, k_norm=k_norm, rope=rope,
        v_norm=RMSNorm(None, spec.norm_eps) if plan.v_norm and not shared else None,
        k_eq_v=plan.k_eq_v[i], kv_shared=shared)
    ff = int(plan.ffn[i]) if plan.ffn[i] else t.get(p + "mlp.gate_proj.weight").shape[0]
    ffn = GatedFFN(t.get(p + "mlp.gate_proj.weight", (ff, h)), t.get(p + "mlp.up_proj.weight", (ff, h)),
                   t.get(p + "mlp.down_proj.weight", (h, ff)), spec.activation)
    moe: MoEBranch | None = None
    per_layer: PerLayerBranch | None = None
    scalar: float | None = None
    if plan.experts:
        gate_up = t.get(p + "experts.gate_up_proj")
        router = Router(t.get(p + "router.proj.weight", (plan.experts, h)), t.get(p + "router.scale", (h,)),
                        t.get(p + "router.per_expert_scale", (plan.experts,)), top_k=plan.top_k,
                        eps=spec.norm_eps)
        if gate_up.ndim != 3 or gate_up.shape[0] != plan.experts or gate_up.shape[2] != h:
            raise LqlError(f"tensor {p}experts.gate_up_proj has shape {gate_up.shape}, "
                           f"expected ({plan.experts}, 2 * moe_intermediate_size, {h})")
        experts = Experts(gate_up, t.get(p + "experts.down_proj", (plan.experts, h, gate_up.shape[1] // 2)),
                          spec.activation)
        moe = MoEBranch(router, experts, pre_norm=norm("pre_feedforward_layernorm_2.weight"),
                        post_norm=norm("post_feedforward_layernorm_2.weight"),
                        post_dense_norm=norm("post_feedforward_layernorm_1.weight"))
    if plan.ple:
        per_layer = PerLayerBranch(t.get(p + "per_layer_input_gate.weight", (plan.ple, h)),
                                   t.get(p + "per_layer_projection.weight", (h, plan.ple)),
                                   norm("post_per_layer_input_norm.weight"), spec.activation)
    if plan.scalars:
        scalar = float(t.get(p + "layer_scalar", (1,))[0])
    if spec.sandwich_norms:
        return Block(i, attn_norm=norm("input_layernorm.weight"), attention=attention,
                     post_attn_norm=norm("post_attention_layernorm.weight"),
                     ffn_norm=norm("pre_feedforward_layernorm.weight"), ffn=ffn,
                     post_ffn_norm=norm("post_feedforward_layernorm.weight"),
                     moe=moe, per_layer=per_layer, layer_scalar=scalar)
    return Block(i, attn_norm=norm("input_layernorm.weight"), attention=attention,
                 ffn_norm=norm("post_attention_layernorm.weight"), ffn=ffn,
                 moe=moe, per_layer=per_layer, layer_scalar=scalar)


def build_mixed_model(model_config: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> Model:
    """Like :func:`lql.model.build_model`, for configs using :data:`MIXED_KEYS`."""
    from lql.model.model import Model, _count_layers

    cfg = dict(model_config)
    present = set(weights.keys())
    if "embed_tokens.weight" not in present:
        raise MissingTensorError(["embed_tokens.weight"])
    t = Tensors(weights)
    embed = np.ascontiguousarray(t.get("embed_tokens.weight"))
    if embed.ndim != 2:
        raise LqlError(f"tensor embed_tokens.weight has shape {embed.shape}, expected (vocab, hidden)")
    hidden = int(cfg.get("hidden_size") or embed.shape[1])
    if embed.shape[1] != hidden:
        raise LqlError(f"tensor embed_tokens.weight has width {embed.shape[1]}, model_config says hidden {hidden}")
    num_layers = int(cfg.get("num_layers") or cfg.get("num_hidden_layers") or _count_layers(present, "layers."))
    if num_layers <= 0:
        raise MissingTensorError(["layers.0.*"])
    spec = mixed_spec(cfg, num_layers, hidden)
    plan = _Plan(cfg, spec)
    tied = spec.tie_word_embeddings
    if tied is None:
        tied = "lm_head.weight" not in present
    missing = [k for k in plan.required(spec, tied) if k not in present]
    if missing:  # a weights mapping may say where it comes from and how to complete it
        raise MissingTensorError(missing, where=str(getattr(weights, "where", "") or ""))
    ropes: dict[RopeSpec, Rope] = {}
    layer_ropes: list[Rope | None] = []
    for i in range(num_layers):
        rope_spec = spec.rope[i]
        assert rope_spec is not None  # mixed_spec gives every layer RoPE
        layer_ropes.append(ropes.setdefault(rope_spec, Rope(rope_spec)))
    # built when they run, cached while the budget allows (lql.model.layerstore)
    blocks = LayerStore([functools.partial(_block, spec, plan, t, i, layer_ropes[i]) for i in range(num_layers)])
    blocks.warm()
    per_layer_embed = None
    if plan.ple:
        table = weights["embed_tokens_per_layer.weight"]  # as stored: gathered per token, never cast whole
        if tuple(table.shape)[1:] != (num_layers * plan.ple,):
            raise LqlError(f"tensor embed_tokens_per_layer.weight has shape {tuple(table.shape)}, "
                           f"expected (vocab, {num_layers * plan.ple})")
        per_layer_embed = PerLayerEmbeddings(
            table, t.get("per_layer_model_projection.weight", (num_layers * plan.ple, hidden)),
            RMSNorm(t.get("per_layer_projection_norm.weight", (plan.ple,)), spec.norm_eps, spec.norm_offset),
            num_layers=num_layers, hidden_size=hidden)
    head = embed if tied else np.ascontiguousarray(t.get("lm_head.weight", embed.shape))
    final = RMSNorm(t.get("norm.weight", (hidden,)), spec.norm_eps, spec.norm_offset)
    sources = plan.sources if any(s is not None for s in plan.sources) else None
    model = Model(spec, embed=embed, position_table=None, blocks=blocks, final_norm=final, head=head,
                  model_config=cfg, per_layer_embed=per_layer_embed, kv_sources=sources,
                  block_factory=lambda w, i, rope: _block(spec, plan, Tensors(w), i, rope))
    model.ropes = layer_ropes
    return model


__all__ = ["MIXED_KEYS", "build_mixed_model", "is_mixed", "mixed_spec"]
