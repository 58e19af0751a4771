"""Validate a normalised ``model_config`` into an :class:`ArchSpec` the forward pass runs on.

The forward pass knows no family: it reads flags.  Every key that changes the
arithmetic is read here, with one generic default when a config leaves it out;
a value we do not implement is refused with an
:class:`~lql.errors.UnsupportedArchitectureError` / :class:`~lql.errors.LqlError`
rather than ignored.  The families (``lql/families``) write every flag; an older
``model_config`` that lacks one is completed by ``lql.families.complete_model_config``
before it gets here.

Semantics of the keys (see docs/INFERENCE.md for the full table):

* ``qkv_layout``: which weight layout (:mod:`lql.model.layouts`) holds the tensors:
  ``"split"`` (``layers.N.self_attn.{q,k,v,o}_proj``, gated FFN; the default) or
  ``"fused_conv1d"`` (``h.N.attn.c_attn``, Conv1D ``[in, out]``, dense FFN).
* ``norm_type`` (``"rms"`` | ``"layer"``), ``norm_offset`` (1.0: norms apply ``1 + w``),
  ``activation``, ``position_embedding`` (``"rope"`` | ``"learned"``),
  ``attention_bias`` (q/k/v biases), ``attention_out_bias`` (o_proj bias; absent: as
  ``attention_bias``), ``mlp_bias``, ``qk_norm``, ``sandwich_norms``.
* ``layer_types`` (list of ``"full_attention"`` / ``"sliding_attention"``) wins;
  when it is null and ``sliding_window`` is set, *every* layer is sliding.
* ``rope_scaling``: a Hugging Face rope dict (``{"rope_type": "linear", "factor": 8}``)
  applied to the layers that use ``rope_base``; or a dict keyed by layer type
  (``{"full_attention": {...}, "sliding_attention": {...}}``, transformers 5 style).
  Sliding layers use ``rope_local_base`` (default rope) when it is set.
* ``embed_scale``: a number, or ``"sqrt_hidden"``; default 1.
* ``per_layer``: optional ``{key: [one value per layer]}`` for ``num_q_heads``,
  ``num_kv_heads``, ``head_dim`` and ``intermediate_size`` — the one per-layer geometry
  every builder reads (:func:`layer_heads`; the plain builder takes the FFN width from
  the weights, the mixed one checks the weights against it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lql.errors import LqlError, UnsupportedArchitectureError

ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu_tanh", "gelu_new")  # exact erf GELU: refused
ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic")
QKV_LAYOUTS = ("split", "fused_conv1d")
#: ``per_layer`` keys the forward pass reads
PER_LAYER = ("num_q_heads", "num_kv_heads", "head_dim", "intermediate_size")

#: a model_config (the dict stored in index.json)
Cfg = Mapping[str, Any]

# keys that, when truthy, describe behaviour we do not implement
REFUSED_FLAGS = ("use_bidirectional_attention", "scale_attn_by_inverse_layer_idx",
                 "reorder_and_upcast_attn", "use_qk_norm_per_layer")


@dataclass(frozen=True)
class RopeSpec:
    """RoPE for one group of layers: base, rotary dim and the HF scaling dict (or None)."""
    base: float
    dim: int
    scaling: tuple[tuple[str, Any], ...] | None  # frozen copy of the rope dict
    max_position_embeddings: int | None

    @property
    def scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.scaling) if self.scaling is not None else None


@dataclass(frozen=True)
class LayerHeads:
    """One layer's attention geometry."""
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    attn_scale: float


@dataclass(frozen=True)
class ArchSpec:
    model_type: str | None
    qkv_layout: str           # "split" | "fused_conv1d" (lql.model.layouts)
    num_layers: int
    hidden_size: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    norm_type: str            # "rms" | "layer"
    norm_offset: float        # 1.0 for Gemma's (1 + w)
    norm_eps: float
    embed_scale: float
    activation: str
    position_embedding: str   # "rope" | "learned"
    max_position_embeddings: int | None
    attention_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sandwich_norms: bool
    attn_scale: float
    attn_softcap: float | None
    final_softcap: float | None
    tie_word_embeddings: bool | None  # None: untied iff lm_head.weight is present
    sliding: tuple[int | None, ...]        # per layer: window size or None (full)
    rope: tuple[RopeSpec | None, ...]      # per layer
    eos_token_ids: tuple[int, ...]
    layer_heads: tuple[LayerHeads, ...] = ()  # per layer
    attention_out_bias: bool = False          # o_proj bias (Llama's attention_bias; Qwen2: none)

    def heads(self, layer: int) -> LayerHeads:
        """Layer ``layer``'s heads (the model-wide values unless ``per_layer`` says otherwise)."""
        if self.layer_heads:
            return self.layer_heads[layer]
        return LayerHeads(self.num_q_heads, self.num_kv_heads, self.head_dim, self.attn_scale)


def _get(cfg: Cfg, key: str, default: Any = None) -> Any:
    """``cfg[key]``, or ``default`` when it is absent or null."""
    value = cfg.get(key)
    return default if value is None else value


def _freeze(d: dict[str, Any] | None) -> tuple[tuple[str, Any], ...] | None:
    if d is None:
        return None
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def _rope_dict(scaling: Any) -> dict[str, Any] | None:
    """Normalise a rope dict: ``type`` → ``rope_type``; ``default`` → None."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise LqlError(f"model_config rope_scaling must be a dict or null, got {scaling!r}")
    scaling = dict(scaling)
    kind = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    scaling.pop("rope_theta", None)
    if kind not in ROPE_TYPES:
        raise UnsupportedArchitectureError(f"rope scaling type {kind!r}", ROPE_TYPES)
    if kind == "default":
        return None
    scaling["rope_type"] = kind
    out: dict[str, Any] = scaling
    return out


def _layer_types(cfg: Cfg, n_layers: int) -> list[str]:
    types = cfg.get("layer_types")
    window = cfg.get("sliding_window")
    if types is None:
        return ["sliding_attention" if window else "full_attention"] * n_layers
    types = list(types)
    if len(types) != n_layers:
        raise LqlError(f"model_config layer_types has {len(types)} entries for {n_layers} layers")
    for t in types:
        if t not in ("full_attention", "sliding_attention"):
            raise UnsupportedArchitectureError(f"layer type {t!r}", ("full_attention", "sliding_attention"))
    if "sliding_attention" in types and not window:
        raise LqlError("model_config has sliding_attention layers but no sliding_window")
    return types


def _rope_specs(cfg: Cfg, types: list[str], head_dims: list[int]) -> list[RopeSpec | None]:
    if _get(cfg, "position_embedding", "rope") != "rope":
        return [None] * len(types)
    partial = float(cfg.get("partial_rotary_factor") or 1.0)
    if partial != 1.0:
        raise UnsupportedArchitectureError(f"partial_rotary_factor={partial}", ("1.0",))
    base = cfg.get("rope_base")
    if base is None:
        raise LqlError("model_config has no rope_base")
    local_base = cfg.get("rope_local_base")
    max_pos = cfg.get("max_position_embeddings")
    scaling = cfg.get("rope_scaling")
    per_type = isinstance(scaling, dict) and set(scaling) <= {"full_attention", "sliding_attention"} \
        and bool(scaling)
    specs: list[RopeSpec | None] = []
    for t, head_dim in zip(types, head_dims):
        if per_type:
            params = dict((scaling or {}).get(t) or {})
            layer_base = params.get("rope_theta") or (local_base if t == "sliding_attention" and local_base
                                                      else base)
            rope = _rope_dict(params)
        elif t == "sliding_attention" and local_base:
            layer_base, rope = local_base, None
        else:
            layer_base, rope = base, _rope_dict(scaling)
        specs.append(RopeSpec(float(layer_base), head_dim, _freeze(rope), max_pos))
    return specs


def _per_layer(cfg: Cfg, num_layers: int) -> dict[str, list[int]]:
    per_layer = cfg.get("per_layer") or {}
    if not isinstance(per_layer, dict):
        raise LqlError(f"model_config per_layer must be a dict of lists, got {per_layer!r}")
    out = {}
    for key, values in per_layer.items():
        if values is None or key not in PER_LAYER:
            continue  # other readers' keys
        if not isinstance(values, (list, tuple)) or len(values) != num_layers:
            raise LqlError(f"model_config per_layer.{key} must list one value per layer "
                           f"({num_layers})")
        out[key] = [int(v) for v in values]
    return out


def per_layer_values(cfg: Cfg, key: str, num_layers: int) -> list[int] | None:
    """``cfg["per_layer"][key]`` checked to list one int per layer, or ``None``."""
    return _per_layer(cfg, num_layers).get(key)


def layer_heads(cfg: Cfg, num_layers: int, n_q: int, n_kv: int, head_dim: int,
                scale: Callable[[int], float]) -> tuple[LayerHeads, ...]:
    """Every layer's heads: the model-wide values, or the layer's ``per_layer`` entries;
    ``()`` when the config has no per-layer head geometry."""
    per_layer = _per_layer(cfg, num_layers)
    if not {"num_q_heads", "num_kv_heads", "head_dim"} & set(per_layer):
        return ()
    heads = tuple(
        LayerHeads(q, kv, d, scale(d)) for q, kv, d in zip(
            per_layer.get("num_q_heads", [int(n_q)] * num_layers),
            per_layer.get("num_kv_heads", [int(n_kv)] * num_layers),
            per_layer.get("head_dim", [int(head_dim)] * num_layers), strict=True))
    for i, lh in enumerate(heads):
        if lh.num_q_heads % lh.num_kv_heads:
            raise LqlError(f"layer {i}: num_q_heads={lh.num_q_heads} is not a multiple of "
                           f"num_kv_heads={lh.num_kv_heads}")
    return heads


def arch_spec(cfg: Cfg, *, num_layers: int, hidden_size: int) -> ArchSpec:
    """Check ``cfg`` (a normalised model_config) and return the spec the model runs on.

    ``num_layers`` / ``hidden_size`` come from the config when it has them, else
    from the weights (the caller infers them)."""
    model_type = cfg.get("model_type")
    what = str(model_type or "model_config")
    for flag in REFUSED_FLAGS:
        if cfg.get(flag):
            raise UnsupportedArchitectureError(f"{what} with {flag}={cfg[flag]!r}",
                                               (f"configs without {flag}",))
    layout = _get(cfg, "qkv_layout", "split")
    if layout not in QKV_LAYOUTS:
        raise UnsupportedArchitectureError(f"qkv_layout {layout!r}", QKV_LAYOUTS)

    n_q = cfg.get("num_q_heads")
    if not n_q:
        raise LqlError("model_config has no num_q_heads")
    n_kv = cfg.get("num_kv_heads") or n_q
    if n_q % n_kv:
        raise LqlError(f"num_q_heads={n_q} is not a multiple of num_kv_heads={n_kv}")
    head_dim = cfg.get("head_dim") or hidden_size // n_q

    activation = cfg.get("activation")
    if activation not in ACTIVATIONS:
        raise UnsupportedArchitectureError(f"activation {activation!r}", ACTIVATIONS)
    norm_type = _get(cfg, "norm_type", "rms")
    if norm_type not in ("rms", "layer"):
        raise UnsupportedArchitectureError(f"norm_type {norm_type!r}", ("rms", "layer"))
    position = _get(cfg, "position_embedding", "rope")
    if position not in ("rope", "learned"):
        raise UnsupportedArchitectureError(f"position_embedding {position!r}", ("rope", "learned"))
    eps = cfg.get("norm_eps")
    if eps is None:
        eps = cfg.get("rms_norm_eps")
    if eps is None:
        raise LqlError("model_config has neither norm_eps nor rms_norm_eps")

    embed_scale = _get(cfg, "embed_scale", 1.0)
    if embed_scale == "sqrt_hidden":
        embed_scale = math.sqrt(hidden_size)
    elif isinstance(embed_scale, str):
        raise UnsupportedArchitectureError(f"embed_scale {embed_scale!r}", ("a number", "sqrt_hidden"))
    qpas = cfg.get("query_pre_attn_scalar")

    def scale(dim: int) -> float:
        return float(float(qpas) ** -0.5 if qpas else float(dim) ** -0.5)

    heads = layer_heads(cfg, num_layers, int(n_q), int(n_kv), int(head_dim), scale)
    head_dims = [lh.head_dim for lh in heads] or [int(head_dim)] * num_layers

    types = _layer_types(cfg, num_layers)
    window = cfg.get("sliding_window")
    sliding = tuple(int(window) if t == "sliding_attention" and window else None for t in types)
    eos = cfg.get("eos_token_id")
    eos = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (eos,))

    return ArchSpec(
        model_type=model_type, qkv_layout=layout, num_layers=num_layers, hidden_size=hidden_size,
        num_q_heads=int(n_q), num_kv_heads=int(n_kv), head_dim=int(head_dim),
        norm_type=norm_type, norm_offset=float(_get(cfg, "norm_offset", 0.0)), norm_eps=float(eps),
        embed_scale=float(embed_scale), activation=activation, position_embedding=position,
        max_position_embeddings=cfg.get("max_position_embeddings"),
        attention_bias=bool(_get(cfg, "attention_bias", False)),
        mlp_bias=bool(_get(cfg, "mlp_bias", False)),
        qk_norm=bool(_get(cfg, "qk_norm", False)),
        sandwich_norms=bool(_get(cfg, "sandwich_norms", False)),
        attn_scale=scale(int(head_dim)),
        attn_softcap=cfg.get("attn_logit_softcapping") or None,
        final_softcap=cfg.get("final_logit_softcapping") or None,
        tie_word_embeddings=cfg.get("tie_word_embeddings"),
        sliding=sliding, rope=tuple(_rope_specs(cfg, types, head_dims)),
        eos_token_ids=tuple(int(e) for e in eos), layer_heads=heads,
        attention_out_bias=bool(_get(cfg, "attention_out_bias", _get(cfg, "attention_bias", False))),
    )
