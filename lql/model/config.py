"""Validate a normalised ``model_config`` into an :class:`ArchSpec` the forward pass runs on.

The forward pass is driven by flags, not by family names: each family only chooses
a weight *layout* (which tensor names hold what, see :mod:`lql.model.layouts`) and
default values for keys a config may leave out.  Every key that changes the
arithmetic is read here; a value we do not implement is refused with an
:class:`~lql.errors.UnsupportedArchitectureError` / :class:`~lql.errors.LqlError`
rather than ignored.

Semantics of the keys (see docs/INFERENCE.md for the full table):

* ``layer_types`` (list of ``"full_attention"`` / ``"sliding_attention"``) wins;
  when it is null and ``sliding_window`` is set, *every* layer is sliding (Mistral).
* ``rope_scaling``: a Hugging Face rope dict (``{"rope_type": "linear", "factor": 8}``)
  applied to the layers that use ``rope_base``; or a dict keyed by layer type
  (``{"full_attention": {...}, "sliding_attention": {...}}``, transformers 5 style).
  Sliding layers use ``rope_local_base`` (default rope) when it is set (Gemma 3).
* ``embed_scale``: optional; defaults to √hidden for the Gemma families, else 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lql.errors import LqlError, UnsupportedArchitectureError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gpt2")
GEMMA = ("gemma", "gemma2", "gemma3_text")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu_tanh", "gelu_new")  # exact erf GELU: refused
ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic")

# What each family implies when a config leaves a key out (values HF hard-codes in
# the modeling file rather than writing to config.json).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(norm_type="rms", norm_offset=0.0, activation="silu"),
    "mistral": dict(norm_type="rms", norm_offset=0.0, activation="silu"),
    "qwen2": dict(norm_type="rms", norm_offset=0.0, activation="silu", attention_bias=True),
    "qwen3": dict(norm_type="rms", norm_offset=0.0, activation="silu", qk_norm=True),
    "gemma": dict(norm_type="rms", norm_offset=1.0, activation="gelu_pytorch_tanh"),
    "gemma2": dict(norm_type="rms", norm_offset=1.0, activation="gelu_pytorch_tanh",
                   sandwich_norms=True),
    "gemma3_text": dict(norm_type="rms", norm_offset=1.0, activation="gelu_pytorch_tanh",
                        sandwich_norms=True, qk_norm=True),
    "gpt2": dict(norm_type="layer", norm_offset=0.0, activation="gelu_new",
                 position_embedding="learned", attention_bias=True, mlp_bias=True),
}

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
    def scaling_dict(self) -> dict | None:
        return dict(self.scaling) if self.scaling is not None else None


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
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


def _get(cfg: dict, key: str, default=None):
    value = cfg.get(key)
    if value is None:
        return FAMILY_DEFAULTS.get(cfg.get("model_type"), {}).get(key, default)
    return value


def _freeze(d: dict | None):
    if d is None:
        return None
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def _rope_dict(scaling) -> dict | None:
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
    return scaling


def _layer_types(cfg: dict, n_layers: int) -> list[str]:
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


def _rope_specs(cfg: dict, types: list[str], head_dim: int) -> list[RopeSpec | None]:
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
    specs = []
    for t in types:
        if per_type:
            params = dict(scaling.get(t) or {})
            layer_base = params.get("rope_theta") or (local_base if t == "sliding_attention" and local_base
                                                      else base)
            rope = _rope_dict(params)
        elif t == "sliding_attention" and local_base:
            layer_base, rope = local_base, None
        else:
            layer_base, rope = base, _rope_dict(scaling)
        specs.append(RopeSpec(float(layer_base), head_dim, _freeze(rope), max_pos))
    return specs


def arch_spec(cfg: dict, *, num_layers: int, hidden_size: int) -> ArchSpec:
    """Check ``cfg`` (a normalised model_config) and return the spec the model runs on.

    ``num_layers`` / ``hidden_size`` come from the config when it has them, else
    from the weights (the caller infers them)."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED:
        raise UnsupportedArchitectureError(str(model_type), SUPPORTED)
    for flag in REFUSED_FLAGS:
        if cfg.get(flag):
            raise UnsupportedArchitectureError(f"{model_type} with {flag}={cfg[flag]!r}", SUPPORTED)

    n_q = cfg.get("num_q_heads")
    if not n_q:
        raise LqlError("model_config has no num_q_heads")
    n_kv = cfg.get("num_kv_heads") or n_q
    if n_q % n_kv:
        raise LqlError(f"num_q_heads={n_q} is not a multiple of num_kv_heads={n_kv}")
    head_dim = cfg.get("head_dim") or hidden_size // n_q

    activation = _get(cfg, "activation")
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

    embed_scale = cfg.get("embed_scale")
    if embed_scale is None:
        embed_scale = math.sqrt(hidden_size) if model_type in GEMMA else 1.0
    qpas = cfg.get("query_pre_attn_scalar")
    attn_scale = float(qpas) ** -0.5 if qpas else head_dim ** -0.5

    types = _layer_types(cfg, num_layers)
    window = cfg.get("sliding_window")
    sliding = tuple(int(window) if t == "sliding_attention" else None for t in types)
    eos = cfg.get("eos_token_id")
    eos = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (eos,))

    return ArchSpec(
        model_type=model_type, num_layers=num_layers, hidden_size=hidden_size,
        num_q_heads=int(n_q), num_kv_heads=int(n_kv), head_dim=int(head_dim),
        norm_type=norm_type, norm_offset=float(_get(cfg, "norm_offset", 0.0)), norm_eps=float(eps),
        embed_scale=float(embed_scale), activation=activation, position_embedding=position,
        max_position_embeddings=cfg.get("max_position_embeddings"),
        attention_bias=bool(_get(cfg, "attention_bias", False)),
        mlp_bias=bool(_get(cfg, "mlp_bias", False)),
        qk_norm=bool(_get(cfg, "qk_norm", False)),
        sandwich_norms=bool(_get(cfg, "sandwich_norms", False)),
        attn_scale=float(attn_scale),
        attn_softcap=cfg.get("attn_logit_softcapping") or None,
        final_softcap=cfg.get("final_logit_softcapping") or None,
        tie_word_embeddings=cfg.get("tie_word_embeddings"),
        sliding=sliding, rope=tuple(_rope_specs(cfg, types, int(head_dim))),
        eos_token_ids=tuple(int(e) for e in eos),
    )
