"""Gemma 4 (text): ``gemma4_text`` and the multimodal ``gemma4`` (its ``text_config``).

Not registered in :mod:`lql.families` yet (see docs/FAMILIES.md, "Gemma 4").  What differs
from Gemma 3, as transformers 5.24's ``modeling_gemma4.py`` computes it:

* RMSNorm multiplies by the weight as stored (``norm_offset`` 0, not Gemma 3's ``1 + w``);
  values get a weightless RMSNorm (``v_norm``); the score scale is 1.0 (``attn_scale``);
  no attention soft-cap; final logit soft-cap when set;
* full-attention layers have their own head size / KV-head count (``per_layer_config``
  in configs transformers saves — keys are layer indices, possibly zero-padded strings;
  ``global_head_dim`` / ``num_global_key_value_heads`` in Hub configs, the latter only
  honoured when ``attention_k_eq_v`` is set, as transformers does) and ``proportional``
  RoPE; transformers forces the last layer to ``full_attention``;
* the last ``num_kv_shared_layers`` layers reuse the keys/values of the last earlier
  layer of their type (``kv_shared_from``); their k/v tensors, if shipped, are ignored;
  ``use_double_wide_mlp`` doubles their FFN width;
* per-layer embeddings (``hidden_size_per_layer_input`` > 0), ``layer_scalar`` on every
  layer, the MoE branch (``enable_moe_block``) and ``attention_k_eq_v`` on full layers.
"""

from __future__ import annotations

import re

from .base import Family, spec, sqrt_hidden
from .hfconfig import activation, eos_list, optional_float, optional_int, refuse

LAYER_TYPES = ("full_attention", "sliding_attention")
DEFAULT_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}
#: Gemma4TextConfig class defaults (used when config.json leaves a key out)
DEFAULTS = dict(vocab_size=262_144, hidden_size=2304, intermediate_size=9216, num_hidden_layers=30,
                num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131_072, rms_norm_eps=1e-6,
                pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
                attention_bias=False, sliding_window=512, final_logit_softcapping=None,
                use_bidirectional_attention=None, vocab_size_per_layer_input=262_144,
                hidden_size_per_layer_input=256, attention_k_eq_v=False, num_kv_shared_layers=0,
                enable_moe_block=False, use_double_wide_mlp=False, num_experts=None, top_k_experts=None,
                moe_intermediate_size=None)
#: per_layer_config overrides we understand
LAYER_OVERRIDES = ("head_dim", "num_key_value_heads", "intermediate_size")
_SHARED_KV = re.compile(r"^layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm|v_norm)\.")


def text_config(hf_config: dict) -> dict:
    """The text model's settings: ``text_config`` of a ``gemma4`` config, else the config itself."""
    if hf_config.get("model_type") == "gemma4" or "text_config" in hf_config:
        text = hf_config.get("text_config")
        if not isinstance(text, dict):
            raise refuse("gemma4", "no text_config", ("gemma4 configs with a text_config",))
        cfg = dict(text)
        if "tie_word_embeddings" not in cfg and "tie_word_embeddings" in hf_config:
            cfg["tie_word_embeddings"] = hf_config["tie_word_embeddings"]
        return cfg
    return dict(hf_config)


def layer_types_of(cfg: dict, n: int) -> list[str]:
    types = cfg.get("layer_types")
    if types is None:  # Gemma4TextConfig: 5 sliding, 1 full
        types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)]
    types = list(types)
    if len(types) != n or any(t not in LAYER_TYPES for t in types):
        raise refuse("gemma4", f"layer_types {types!r}", (f"{n} entries of {', '.join(LAYER_TYPES)}",))
    if types and types[-1] != "full_attention":
        types[-1] = "full_attention"  # what transformers does (with a warning)
    return types


def layer_overrides(cfg: dict, types: list[str]) -> dict[int, dict]:
    """``{layer: {head_dim, num_key_value_heads, ...}}`` from ``per_layer_config`` (saved
    configs) or ``global_head_dim`` / ``num_global_key_value_heads`` (Hub configs)."""
    n = len(types)
    if "per_layer_config" in cfg and cfg["per_layer_config"] is not None:
        out: dict[int, dict] = {}
        for key, over in dict(cfg["per_layer_config"]).items():
            try:
                i = int(key)  # "5", "05" or 5
            except (TypeError, ValueError):
                raise refuse("gemma4", f"per_layer_config key {key!r}", ("layer indices",)) from None
            if not 0 <= i < n:
                raise refuse("gemma4", f"per_layer_config key {key!r}", (f"layer indices 0..{n - 1}",))
            unknown = sorted(set(over) - set(LAYER_OVERRIDES))
            if unknown:
                raise refuse("gemma4", f"per_layer_config overrides {unknown}", LAYER_OVERRIDES)
            out[i] = dict(over)
        return out
    full: dict = {"head_dim": cfg.get("global_head_dim", 512)}
    kv = cfg.get("num_global_key_value_heads") if cfg.get("attention_k_eq_v", True) else None
    if kv is not None:
        full["num_key_value_heads"] = kv
    return {i: dict(full) for i, t in enumerate(types) if t == "full_attention"}


def kv_sources(types: list[str], num_shared: int) -> list[int | None]:
    """Per layer, the layer whose keys/values it reuses (transformers' ``kv_sharing_modes``)."""
    n = len(types)
    if num_shared <= 0:
        return [None] * n
    first = n - num_shared
    if first <= 0:
        raise refuse("gemma4", f"num_kv_shared_layers={num_shared} of {n}", ("fewer than num_hidden_layers",))
    last = {t: i for i, t in enumerate(types[:first])}
    if set(last) != set(types):
        raise refuse("gemma4", "a shared layer type no earlier layer produces", ("producer layers of every type",))
    return [None if i < first else last[types[i]] for i in range(n)]


def rope_parameters(cfg: dict, types: list[str]) -> dict:
    params = cfg.get("rope_parameters") or DEFAULT_ROPE
    if not (isinstance(params, dict) and set(params) <= set(LAYER_TYPES)):
        raise refuse("gemma4", "flat rope_parameters", ("rope_parameters per layer type",))
    out = {}
    for t in sorted(set(types)):
        p = dict(params.get(t) or DEFAULT_ROPE[t])
        kind = p.get("rope_type", "default")
        if kind not in ("default", "proportional"):
            raise refuse("gemma4", f"rope_type {kind!r} on {t}", ("default", "proportional"))
        if kind == "default" and p.get("partial_rotary_factor") not in (None, 1.0):
            raise refuse("gemma4", "partial rotary with default RoPE", ("proportional",))
        out[t] = p
    return out


class Gemma4(Family):
    name = "gemma4"
    model_types = ("gemma4_text", "gemma4")
    architectures = ("Gemma4ForCausalLM", "Gemma4TextModel", "Gemma4ForConditionalGeneration")
    hf_architecture = "Gemma4ForCausalLM"
    extra_prefixes = ("model.language_model.", "language_model.model.", "language_model.")
    ignored_prefixes = ("vision_tower.", "audio_tower.", "multi_modal_projector.", "embed_vision.",
                        "embed_audio.", "model.vision_tower.", "model.audio_tower.",
                        "model.multi_modal_projector.", "model.embed_vision.", "model.embed_audio.")
    ignored_suffixes = (".rotary_emb.inv_freq",)

    def model_config(self, hf_config: dict) -> dict:
        cfg = {**DEFAULTS, **text_config(hf_config)}
        if cfg.get("use_bidirectional_attention"):
            raise refuse(self.name, f"use_bidirectional_attention={cfg['use_bidirectional_attention']!r}",
                         ("causal attention",))
        if cfg.get("attention_bias"):
            raise refuse(self.name, "attention_bias=True", ("attention_bias=False",))
        hidden, n = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
        heads, kv, head_dim = int(cfg["num_attention_heads"]), int(cfg["num_key_value_heads"]), \
            int(cfg["head_dim"] or hidden // int(cfg["num_attention_heads"]))
        ffn = int(cfg["intermediate_size"])
        types = layer_types_of(cfg, n)
        over = layer_overrides(cfg, types)
        head_dims = [int(over.get(i, {}).get("head_dim") or head_dim) for i in range(n)]
        kv_heads = [int(over.get(i, {}).get("num_key_value_heads") or kv) for i in range(n)]
        ffns = [int(over.get(i, {}).get("intermediate_size") or ffn) for i in range(n)]
        for t in set(types):  # RoPE tables and KV sharing are per layer type
            shapes = {(head_dims[i], kv_heads[i]) for i in range(n) if types[i] == t}
            if len(shapes) > 1:
                raise refuse(self.name, f"{t} layers of different head shapes {sorted(shapes)}",
                             ("one head shape per layer type",))
        sources = kv_sources(types, int(cfg.get("num_kv_shared_layers") or 0))
        if cfg.get("use_double_wide_mlp"):
            ffns = [f * 2 if s is not None else f for f, s in zip(ffns, sources, strict=True)]
        k_eq_v = [bool(cfg.get("attention_k_eq_v")) and t == "full_attention" for t in types]
        ple = int(cfg.get("hidden_size_per_layer_input") or 0)
        moe = bool(cfg.get("enable_moe_block"))
        if moe and not (cfg.get("num_experts") and cfg.get("top_k_experts") and cfg.get("moe_intermediate_size")):
            raise refuse(self.name, "enable_moe_block without num_experts / top_k_experts / moe_intermediate_size",
                         ("all three",))
        rope = rope_parameters(cfg, types)
        eps = float(cfg.get("rms_norm_eps") or 1e-6)
        return {
            "model_type": "gemma4_text",
            "hidden_size": hidden,
            "num_layers": n,
            "intermediate_size": ffn,
            "vocab_size": int(cfg["vocab_size"]),
            "embed_scale": sqrt_hidden(hidden),
            "head_dim": head_dim,
            "num_q_heads": heads,
            "num_kv_heads": kv,
            "rope_base": float((rope.get("full_attention") or rope["sliding_attention"])["rope_theta"]),
            "rope_local_base": float(rope["sliding_attention"]["rope_theta"]) if "sliding_attention" in rope
            else None,
            "rope_scaling": rope,
            "partial_rotary_factor": 1.0,
            "sliding_window": optional_int(cfg.get("sliding_window")) if "sliding_attention" in types else None,
            "layer_types": types,
            "activation": activation(self.name, cfg.get("hidden_activation")),
            "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", True)),
            "norm_type": "rms",
            "rms_norm_eps": eps,
            "norm_eps": eps,
            "norm_offset": 0.0,
            "query_pre_attn_scalar": None,
            "attn_scale": 1.0,
            "final_logit_softcapping": optional_float(cfg.get("final_logit_softcapping")),
            "attn_logit_softcapping": None,
            "attention_bias": False,
            "attention_out_bias": False,
            "mlp_bias": False,
            "qk_norm": True,
            "v_norm": True,
            "sandwich_norms": True,
            "position_embedding": "rope",
            "max_position_embeddings": optional_int(cfg.get("max_position_embeddings")),
            "bos_token_id": optional_int(cfg.get("bos_token_id")),
            "eos_token_id": eos_list(cfg.get("eos_token_id")),
            "pad_token_id": optional_int(cfg.get("pad_token_id")),
            "layer_head_dims": head_dims,
            "layer_kv_heads": kv_heads,
            "layer_intermediate_sizes": ffns,
            "layer_k_eq_v": k_eq_v,
            "kv_shared_from": sources,
            "layer_scalars": True,
            "per_layer_input_size": ple,
            "per_layer_vocab_size": int(cfg["vocab_size_per_layer_input"]) if ple else None,
            "num_experts": int(cfg["num_experts"]) if moe else 0,
            "top_k_experts": int(cfg["top_k_experts"]) if moe else 0,
            "moe_intermediate_size": int(cfg["moe_intermediate_size"]) if moe else 0,
            # how config.json wrote the per-layer geometry (COMPILE INTO MODEL writes it back so)
            "config_format": "per_layer_config" if cfg.get("per_layer_config") is not None else "global_head_dim",
        }

    def hf_config(self, model_config: dict) -> dict:
        from .gemma4_hf import hf_config
        return hf_config(model_config)

    # ------------------------------------------------------------ naming
    def normalise_key(self, hf_key: str) -> str | None:
        key = super().normalise_key(hf_key)
        match = _SHARED_KV.match(key) if key is not None else None
        if match is not None and self._shared_layers is not None and int(match.group(1)) in self._shared_layers:
            return None
        return key

    _shared_layers: frozenset[int] | None = None

    def for_config(self, model_config: dict) -> Gemma4:
        """A copy that also drops the k/v tensors shipped on KV-sharing layers."""
        fam = Gemma4()
        fam._shared_layers = frozenset(i for i, s in enumerate(model_config.get("kv_shared_from") or ())
                                       if s is not None)
        return fam

    # ------------------------------------------------------------ tensors
    def gate_key(self, layer: int) -> str:
        return f"layers.{layer}.mlp.gate_proj.weight"

    def up_key(self, layer: int) -> str:
        return f"layers.{layer}.mlp.up_proj.weight"

    def down_key(self, layer: int) -> str:
        return f"layers.{layer}.mlp.down_proj.weight"

    def num_features(self, model_config: dict, layer: int) -> int:
        return int(model_config["layer_intermediate_sizes"][layer])

    def global_tensors(self, mc: dict):
        out = [spec(self.embed_key, "embed", "browse", None), spec("norm.weight", "norm", "inference", None)]
        if mc.get("per_layer_input_size"):
            out += [spec("embed_tokens_per_layer.weight", "embed", "inference", None,
                         "per_layer_embeddings.bin"),  # g4s: not embeddings.bin (it would overwrite it)
                    spec("per_layer_model_projection.weight", "attn", "inference", None),
                    spec("per_layer_projection_norm.weight", "norm", "inference", None)]
        if not mc["tie_word_embeddings"]:
            out.append(spec(self.lm_head_key, "lm_head", "inference", None))
        return out

    def layer_tensors(self, mc: dict, layer: int):
        p = f"layers.{layer}."
        shared = mc["kv_shared_from"][layer] is not None
        attn = ["q"] if shared else (["q", "k"] if mc["layer_k_eq_v"][layer] else ["q", "k", "v"])
        out = [spec(p + "input_layernorm.weight", "norm", "inference", layer)]
        out += [spec(p + f"self_attn.{n}_proj.weight", "attn", "inference", layer) for n in attn + ["o"]]
        out.append(spec(p + "self_attn.q_norm.weight", "attn", "inference", layer))
        if not shared:
            out.append(spec(p + "self_attn.k_norm.weight", "attn", "inference", layer))
        out += [spec(p + n + ".weight", "norm", "inference", layer) for n in
                ("post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")]
        out += [spec(self.gate_key(layer), "gate", "browse", layer), spec(self.up_key(layer), "up", "inference", layer),
                spec(self.down_key(layer), "down", "browse", layer),
                spec(p + "layer_scalar", "norm", "inference", layer)]
        if mc.get("per_layer_input_size"):
            out += [spec(p + "per_layer_input_gate.weight", "attn", "inference", layer),
                    spec(p + "per_layer_projection.weight", "attn", "inference", layer),
                    spec(p + "post_per_layer_input_norm.weight", "norm", "inference", layer)]
        if mc.get("num_experts"):
            out += [spec(p + n, "attn", "inference", layer) for n in
                    ("router.proj.weight", "router.scale", "router.per_expert_scale", "experts.gate_up_proj",
                     "experts.down_proj")]
            out += [spec(p + n + ".weight", "norm", "inference", layer) for n in
                    ("pre_feedforward_layernorm_2", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2")]
        return out


__all__ = ["Gemma4", "kv_sources", "layer_overrides", "layer_types_of", "text_config"]
