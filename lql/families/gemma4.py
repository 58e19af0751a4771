"""Gemma 4 (text): ``gemma4_text`` and the multimodal ``gemma4`` (its ``text_config``).

Registered in :mod:`lql.families` as ``gemma4`` (see docs/FAMILIES.md, "Gemma 4": config
keys, vindex files, the tensors ignored by rule, GGUF).  What differs
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
from typing import Any

import numpy as np

from .base import Family, gguf_refusal, spec, sqrt_hidden
from .hfconfig import activation, optional_float, optional_int, refuse, special_token_ids

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
#: model_config keys of the first Gemma 4 mapping → their ``per_layer`` key
LEGACY_GEOMETRY = {"layer_head_dims": "head_dim", "layer_kv_heads": "num_kv_heads",
                   "layer_intermediate_sizes": "intermediate_size"}
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
    gguf_architectures = ("gemma4",)
    #: scalar metadata read as config.json keys; the per-layer arrays, head sizes, RoPE,
    #: sharing, PLE and MoE keys are read by :meth:`gguf_config`
    gguf_config_keys = {
        "context_length": "max_position_embeddings",
        "block_count": "num_hidden_layers",
        "embedding_length": "hidden_size",
        "attention.head_count": "num_attention_heads",
        "attention.sliding_window": "sliding_window",
        "final_logit_softcapping": "final_logit_softcapping",
    }
    gguf_config_tensors = ("rope_freqs.weight",)

    def model_flags(self, model_config: dict) -> dict:
        hidden = model_config.get("hidden_size")
        return {"qkv_layout": "split", "norm_type": "rms", "norm_offset": 0.0,
                "activation": "gelu_pytorch_tanh", "position_embedding": "rope", "qk_norm": True,
                "sandwich_norms": True, "v_norm": True, "attn_scale": 1.0, "layer_scalars": True,
                "attention_bias": False, "attention_out_bias": False, "mlp_bias": False,
                "embed_scale": sqrt_hidden(int(hidden)) if hidden else "sqrt_hidden"}

    def complete(self, model_config: dict) -> dict:
        """Flags, and the per-layer geometry of a model_config written with the earlier
        ``layer_head_dims`` / ``layer_kv_heads`` / ``layer_intermediate_sizes`` lists
        (moved into ``per_layer``)."""
        out = super().complete(model_config)
        per_layer = dict(out.get("per_layer") or {})
        for old, new in LEGACY_GEOMETRY.items():
            values = out.pop(old, None)
            if values is not None and per_layer.get(new) is None:
                per_layer[new] = list(values)
        if per_layer:
            out["per_layer"] = per_layer
        return out

    def ignores_for(self, model_config: dict, key: str) -> bool:
        """Also the k/v projections and k norm a checkpoint may ship on a layer that reuses
        another layer's keys/values (transformers does not read them either)."""
        if self.ignores(key):
            return True
        match = _SHARED_KV.match(key)
        sources = model_config.get("kv_shared_from") or ()
        return match is not None and int(match.group(1)) < len(sources) and \
            sources[int(match.group(1))] is not None

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
            "qkv_layout": "split",
            "max_position_embeddings": optional_int(cfg.get("max_position_embeddings")),
            **special_token_ids(cfg),
            "per_layer": {"head_dim": head_dims, "num_kv_heads": kv_heads, "intermediate_size": ffns},
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
        return _hf_config(model_config)

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
    def global_tensors(self, mc: dict):
        out = [spec(self.embed_key, "embed", "browse", None), spec("norm.weight", "norm", "inference", None)]
        if not mc["tie_word_embeddings"]:
            out.append(spec(self.lm_head_key, "lm_head", "inference", None))
        return out

    def extra_tensors(self, mc: dict):
        """The per-layer-embedding model part (table, projection, its norm) in
        per_layer_embeddings.bin; each layer's PLE branch is in :meth:`layer_tensors`
        (same file)."""
        if not mc.get("per_layer_input_size"):
            return []
        return [spec(k, "ple", "inference", None) for k in PLE_GLOBAL]

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
        out += [spec(self.gate_key(layer), "gate", "browse", layer), spec(p + "mlp.up_proj.weight", "up", "inference", layer),
                spec(self.down_key(layer), "down", "browse", layer),
                spec(p + "layer_scalar", "norm", "inference", layer)]
        if mc.get("per_layer_input_size"):
            out += [spec(p + n, "ple", "inference", layer) for n in PLE_LAYER]
        if mc.get("num_experts"):
            out += [spec(p + n, "experts", "inference", layer) for n in MOE_LAYER]
            out += [spec(p + n + ".weight", "norm", "inference", layer) for n in
                    ("pre_feedforward_layernorm_2", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2")]
        return out

    def expert_keys(self, model_config: dict, layer: int) -> tuple[str, str] | None:
        if not model_config.get("num_experts"):
            return None
        return f"layers.{layer}.experts.gate_up_proj", f"layers.{layer}.experts.down_proj"

    # ------------------------------------------------------------ GGUF (llama.cpp's gemma4)
    def gguf_check(self, arch: str, meta: dict, tensor_names: set[str]) -> None:
        """MoE (``expert_count``) and ``rope_freqs`` are read here (see :meth:`gguf_config`)."""

    def gguf_ignores(self, gguf_name: str) -> bool:
        # rope_freqs: llama.cpp's frequency factors of the full layers' proportional RoPE;
        # read into rope_parameters (partial_rotary_factor) by gguf_config, not stored
        return gguf_name == "rope_freqs.weight"

    def gguf_tensor_name(self, key: str, name_map) -> str | None:
        match = re.match(r"^layers\.(\d+)\.(.+)$", key)
        if match is not None and match.group(2) in _GGUF_LAYER_NAMES:
            return f"blk.{match.group(1)}.{_GGUF_LAYER_NAMES[match.group(2)]}"
        return super().gguf_tensor_name(key, name_map)

    def gguf_config(self, arch: str, meta: dict, tensor_names: set[str], cfg: dict) -> None:
        """A config.json in the format transformers saves (``per_layer_config``) from
        llama.cpp's metadata (docs/FAMILIES.md, "Gemma 4 in GGUF")."""
        def m(suffix, default=None):
            return meta.get(f"{arch}.{suffix}", default)

        n = int(cfg["num_hidden_layers"])
        pattern = m("attention.sliding_window_pattern")
        if isinstance(pattern, list):
            types = ["sliding_attention" if p else "full_attention" for p in pattern]
        else:
            types = layer_types_of({}, n)
        if len(types) != n:
            raise gguf_refusal(arch, f"sliding_window_pattern of {len(types)} entries for {n} layers")

        def per_layer(value, name):
            values = list(value) if isinstance(value, list) else [value] * n
            if len(values) != n or any(v is None for v in values):
                raise gguf_refusal(arch, f"{arch}.{name}={value!r}")
            return [int(v) for v in values]

        sliding_dim = int(m("attention.key_length_swa") or m("attention.key_length"))
        full_dim = int(m("attention.key_length") or sliding_dim)
        for suffix, want in (("attention.value_length_swa", sliding_dim), ("attention.value_length", full_dim),
                             ("rope.dimension_count_swa", sliding_dim), ("rope.dimension_count", full_dim)):
            if m(suffix) is not None and int(m(suffix)) != want:
                raise gguf_refusal(arch, f"{arch}.{suffix}={m(suffix)} (head size {want})")
        ffn = per_layer(m("feed_forward_length"), "feed_forward_length")
        kv = per_layer(m("attention.head_count_kv"), "attention.head_count_kv")
        first = next((i for i, t in enumerate(types) if t == "sliding_attention"), 0)
        cfg["head_dim"], cfg["num_key_value_heads"], cfg["intermediate_size"] = sliding_dim, kv[first], ffn[first]
        overrides: dict[str, dict] = {}
        for i, t in enumerate(types):
            over = {}
            if t == "full_attention" and full_dim != sliding_dim:
                over["head_dim"] = full_dim
            if kv[i] != kv[first]:
                over["num_key_value_heads"] = kv[i]
            if ffn[i] != ffn[first]:
                over["intermediate_size"] = ffn[i]  # carries use_double_wide_mlp
            if over:
                overrides[str(i)] = over
        cfg["per_layer_config"] = overrides
        cfg["layer_types"] = types
        cfg["use_double_wide_mlp"] = False
        cfg["num_kv_shared_layers"] = int(m("attention.shared_kv_layers") or 0)
        ple = int(m("embedding_length_per_layer_input") or 0)
        cfg["hidden_size_per_layer_input"] = ple
        cfg["vocab_size_per_layer_input"] = cfg["vocab_size"]  # rows of per_layer_token_embd
        eps = m("attention.layer_norm_rms_epsilon")
        if eps is not None:  # a float32 in the file: its shortest decimal, as config.json has it
            cfg["rms_norm_eps"] = float(str(np.float32(eps)))
        # k_eq_v: a full (non-shared) layer with attn_k but no attn_v
        shared = kv_sources(types, cfg["num_kv_shared_layers"])
        full_own = [i for i, t in enumerate(types) if t == "full_attention" and shared[i] is None]
        k_eq_v = [f"blk.{i}.attn_v.weight" not in tensor_names and f"blk.{i}.attn_k.weight" in tensor_names
                  for i in full_own]
        if any(k_eq_v) and not all(k_eq_v):
            raise gguf_refusal(arch, "attention_k_eq_v on some full layers only")
        cfg["attention_k_eq_v"] = bool(k_eq_v) and all(k_eq_v)
        experts = m("expert_count")
        moe = "blk.0.ffn_gate_up_exps.weight" in tensor_names
        if bool(experts) != moe:
            raise gguf_refusal(arch, f"expert_count={experts!r} and expert tensors that disagree")
        cfg["enable_moe_block"] = moe
        if moe:
            cfg["num_experts"], cfg["top_k_experts"] = int(experts), int(m("expert_used_count") or 0)
            cfg["moe_intermediate_size"] = int(m("expert_feed_forward_length") or 0)
        full_rope: dict = {"rope_type": "default", "rope_theta": float(m("rope.freq_base") or 1_000_000.0)}
        factors = meta.get("tensor:rope_freqs.weight")
        if factors is not None:
            factors = np.asarray(factors, dtype=np.float64).reshape(-1)
            ones = int(np.sum(factors == 1.0))
            if factors.size != full_dim // 2 or not (factors[:ones] == 1.0).all() or \
                    not (factors[ones:] >= 1e20).all():
                raise gguf_refusal(arch, "rope_freqs other than proportional RoPE (1 for the first "
                                   "pairs, then ~1e30)")
            full_rope.update(rope_type="proportional", partial_rotary_factor=2 * ones / full_dim)
        cfg["rope_parameters"] = {
            "full_attention": full_rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": float(m("rope.freq_base_swa") or 10_000.0)}}


#: the per-layer-embedding tensors of the model (global) and of each layer
PLE_GLOBAL = ("embed_tokens_per_layer.weight", "per_layer_model_projection.weight",
              "per_layer_projection_norm.weight")
PLE_LAYER = ("per_layer_input_gate.weight", "per_layer_projection.weight", "post_per_layer_input_norm.weight")
#: each layer's mixture-of-experts router and experts
MOE_LAYER = ("router.proj.weight", "router.scale", "router.per_expert_scale", "experts.gate_up_proj",
             "experts.down_proj")
#: normalised layer key (after ``layers.N.``) → llama.cpp name (after ``blk.N.``), where gguf's
#: TensorNameMap does not give it
_GGUF_LAYER_NAMES = {
    "layer_scalar": "layer_output_scale.weight",
    "router.scale": "ffn_gate_inp.scale",
    "router.per_expert_scale": "ffn_down_exps.scale",
    "experts.gate_up_proj": "ffn_gate_up_exps.weight",
    "experts.down_proj": "ffn_down_exps.weight",
}


__all__ = ["MOE_LAYER", "PLE_GLOBAL", "PLE_LAYER", "Gemma4", "kv_sources", "layer_overrides", "layer_types_of", "text_config"]


# ------------------------------------------------------------ config.json (COMPILE INTO MODEL)

def _per_layer(mc: dict, key: str, default: int) -> list[int]:
    """``mc["per_layer"][key]`` (one value per layer), or ``default`` for every layer."""
    values = (mc.get("per_layer") or {}).get(key)
    return [int(v) for v in values] if values else [int(default)] * int(mc["num_layers"])


def _base_widths(mc: dict, shared: list[bool]) -> tuple[list[int], bool]:
    """Per-layer FFN widths before ``use_double_wide_mlp``, and whether it is on."""
    ffns = _per_layer(mc, "intermediate_size", mc["intermediate_size"])
    base = int(mc["intermediate_size"])
    double = any(shared) and all(f == 2 * base for f, s in zip(ffns, shared, strict=True) if s)
    if double:
        ffns = [f // 2 if s else f for f, s in zip(ffns, shared, strict=True)]
    return ffns, double


def _hf_config(mc: dict) -> dict[str, Any]:
    """A ``model_config`` back to a ``config.json`` transformers loads as ``Gemma4ForCausalLM``
    (COMPILE ... INTO MODEL): the inverse of :meth:`Gemma4.model_config`. Per-layer head
    sizes / KV-head counts / FFN widths are written the way the source wrote them
    (``config_format``): ``per_layer_config`` or the Hub's ``global_head_dim`` /
    ``num_global_key_value_heads``; a width that format cannot express falls back to
    ``per_layer_config``. A multimodal source is written as its text model."""
    n = int(mc["num_layers"])
    types = list(mc["layer_types"])
    sources = list(mc.get("kv_shared_from") or [None] * n)
    shared = [s is not None for s in sources]
    head_dim, kv = int(mc["head_dim"]), int(mc["num_kv_heads"])
    head_dims = _per_layer(mc, "head_dim", head_dim)
    kv_heads = _per_layer(mc, "num_kv_heads", kv)
    ffns, double = _base_widths(mc, shared)
    k_eq_v = any(mc.get("layer_k_eq_v") or ())
    eos = mc.get("eos_token_id") or []
    experts = int(mc.get("num_experts") or 0)
    ple = int(mc.get("per_layer_input_size") or 0)
    out: dict[str, Any] = {
        "architectures": ["Gemma4ForCausalLM"],
        "model_type": "gemma4_text",
        "vocab_size": int(mc["vocab_size"]),
        "hidden_size": int(mc["hidden_size"]),
        "intermediate_size": int(mc["intermediate_size"]),
        "num_hidden_layers": n,
        "num_attention_heads": int(mc["num_q_heads"]),
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "hidden_activation": mc["activation"],
        "max_position_embeddings": mc.get("max_position_embeddings"),
        "rms_norm_eps": float(mc.get("rms_norm_eps") or mc.get("norm_eps") or 1e-6),
        "bos_token_id": mc.get("bos_token_id"),
        "eos_token_id": (eos[0] if len(eos) == 1 else (list(eos) or None)),
        "pad_token_id": mc.get("pad_token_id"),
        "tie_word_embeddings": bool(mc.get("tie_word_embeddings", True)),
        "attention_bias": False,
        "sliding_window": mc.get("sliding_window"),
        "final_logit_softcapping": mc.get("final_logit_softcapping"),
        "layer_types": types,
        "rope_parameters": {t: dict(p) for t, p in (mc.get("rope_scaling") or {}).items()},
        "hidden_size_per_layer_input": ple,
        "vocab_size_per_layer_input": int(mc.get("per_layer_vocab_size") or mc["vocab_size"]),
        "attention_k_eq_v": bool(k_eq_v),
        "num_kv_shared_layers": sum(shared),
        "use_double_wide_mlp": bool(double),
        "enable_moe_block": bool(experts),
        "num_experts": experts or None,
        "top_k_experts": int(mc["top_k_experts"]) if experts else None,
        "moe_intermediate_size": int(mc["moe_intermediate_size"]) if experts else None,
        "use_bidirectional_attention": None,
    }
    overrides: dict[str, dict[str, int]] = {}
    for i in range(n):
        over = {}
        if head_dims[i] != head_dim:
            over["head_dim"] = head_dims[i]
        if kv_heads[i] != kv:
            over["num_key_value_heads"] = kv_heads[i]
        if ffns[i] != int(mc["intermediate_size"]):
            over["intermediate_size"] = ffns[i]
        if over:
            overrides[str(i)] = over
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    hub_ok = (mc.get("config_format") == "global_head_dim" and full
              and all(set(o) <= {"head_dim", "num_key_value_heads"} and int(k) in full
                      for k, o in overrides.items())
              and len({head_dims[i] for i in full}) == 1 and len({kv_heads[i] for i in full}) == 1
              and (k_eq_v or kv_heads[full[0]] == kv))
    if hub_ok:
        out["global_head_dim"] = head_dims[full[0]]
        out["num_global_key_value_heads"] = kv_heads[full[0]]
    else:
        out["per_layer_config"] = overrides
    return out

