"""Gemma, Gemma 2 and Gemma 3 (text).

All three: embeddings scaled by ``sqrt(hidden)``, RMSNorm applied as ``(1 + w)``
(``norm_offset = 1.0``), GELU (tanh) gated FFN.  Gemma 2 adds sandwich norms
(pre/post FFN), ``query_pre_attn_scalar``, attention and final logit soft-capping
and alternating sliding/full attention; Gemma 3 adds q/k norms (also ``1 + w``),
a sliding/full pattern of 5:1 and a separate RoPE base for sliding layers."""

from __future__ import annotations

from .decoder import GGUF_DECODER_KEYS, DecoderFamily, sliding_or_none
from .hfconfig import (
    check_layer_types,
    is_nested_rope,
    optional_float,
    partial_rotary,
    refuse,
    rope_scaling_of,
)

_GEMMA_COMMON = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
                     rms_norm_eps=1e-6, attention_bias=False, head_dim=256)


class _GemmaGguf(DecoderFamily):
    def gguf_norm_shift(self, gguf_name: str) -> float:
        # llama.cpp folds Gemma's (1 + w) into every norm weight
        return 1.0 if gguf_name.endswith("norm.weight") else 0.0


class Gemma(_GemmaGguf):
    name = "gemma"
    model_types = ("gemma",)
    larql_family = "gemma2"     # LARQL reads model_type gemma as Gemma 2 (larql-models detect.rs:62)
    architectures = ("GemmaForCausalLM", "GemmaModel")
    hf_architecture = "GemmaForCausalLM"
    gguf_architectures = ("gemma",)
    norm_offset = 1.0
    scaled_embeddings = True
    defaults = dict(_GEMMA_COMMON, vocab_size=256000, hidden_size=3072, intermediate_size=24576,
                    num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16,
                    hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192)

    def model_config(self, hf_config: dict) -> dict:
        cfg = dict(hf_config)
        if cfg.get("hidden_act") == "gelu":  # what GemmaConfig.__post_init__ does
            cfg["hidden_act"] = "gelu_pytorch_tanh"
        return super().model_config(cfg)

    def hf_extras(self, out: dict, mc: dict) -> None:
        out["attention_bias"] = mc["attention_bias"]


class Gemma2(_GemmaGguf):
    name = "gemma2"
    model_types: tuple[str, ...] = ("gemma2",)
    architectures: tuple[str, ...] = ("Gemma2ForCausalLM", "Gemma2Model")
    hf_architecture = "Gemma2ForCausalLM"
    gguf_architectures = ("gemma2",)
    gguf_config_keys = dict(GGUF_DECODER_KEYS, **{
        "attention.sliding_window": "sliding_window",
        "attn_logit_softcapping": "attn_logit_softcapping",
        "final_logit_softcapping": "final_logit_softcapping",
    })
    #: layer count of llama.cpp's "27B", whose attention scale is 1/sqrt(hidden / heads)
    #: rather than 1/sqrt(head_dim)
    gguf_27b_layers = 46
    activation_key = "hidden_activation"
    norm_offset = 1.0
    scaled_embeddings = True
    sandwich_norms = True
    #: layer i is full attention when (i + 1) % pattern == 0
    sliding_pattern = 2
    defaults = dict(_GEMMA_COMMON, vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                    num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                    hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192,
                    query_pre_attn_scalar=256, sliding_window=4096,
                    final_logit_softcapping=30.0, attn_logit_softcapping=50.0)

    def pattern(self, cfg: dict) -> int:
        return self.sliding_pattern

    def attention_layout(self, cfg, num_layers):
        window = sliding_or_none(cfg)
        if cfg.get("layer_types") is not None:
            types = check_layer_types(self.name, cfg["layer_types"], num_layers)
        else:
            n = self.pattern(cfg)
            types = ["sliding_attention" if (i + 1) % n else "full_attention"
                     for i in range(num_layers)]
        if window is None and "sliding_attention" in types:
            raise refuse(self.name, "sliding_attention layers without a sliding_window",
                         ("a sliding_window for sliding layers",))
        return types, window

    def family_extras(self, mc: dict, cfg: dict) -> None:
        mc["query_pre_attn_scalar"] = optional_float(cfg.get("query_pre_attn_scalar"))
        mc["final_logit_softcapping"] = optional_float(cfg.get("final_logit_softcapping"))
        mc["attn_logit_softcapping"] = optional_float(cfg.get("attn_logit_softcapping"))
        if mc["query_pre_attn_scalar"] is None:
            raise refuse(self.name, "query_pre_attn_scalar=None", ("a number",))

    def gguf_config(self, arch: str, meta: dict, tensor_names: set[str], cfg: dict) -> None:
        super().gguf_config(arch, meta, tensor_names, cfg)
        pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
        if pattern is not None:
            if isinstance(pattern, list):  # one flag per layer: True = sliding window
                cfg["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
            else:
                cfg["sliding_window_pattern"] = int(pattern)
        heads = int(cfg["num_attention_heads"])
        cfg["query_pre_attn_scalar"] = int(cfg["hidden_size"]) // heads \
            if int(cfg["num_hidden_layers"]) == self.gguf_27b_layers else cfg["head_dim"]

    def hf_extras(self, out: dict, mc: dict) -> None:
        out["attention_bias"] = mc["attention_bias"]
        q = mc["query_pre_attn_scalar"]
        out["query_pre_attn_scalar"] = int(q) if float(q).is_integer() else q  # an int in HF
        out["final_logit_softcapping"] = mc["final_logit_softcapping"]
        out["attn_logit_softcapping"] = mc["attn_logit_softcapping"]
        out["sliding_window"] = mc["sliding_window"]
        out["layer_types"] = list(mc["layer_types"])


class Gemma3(Gemma2):
    name = "gemma3"
    model_types = ("gemma3_text", "gemma3")
    architectures = ("Gemma3ForCausalLM", "Gemma3TextModel", "Gemma3ForConditionalGeneration")
    hf_architecture = "Gemma3ForCausalLM"
    gguf_architectures = ("gemma3",)
    gguf_config_keys = dict(Gemma2.gguf_config_keys, **{"rope.freq_base_swa": "rope_local_base_freq"})
    gguf_27b_layers = 62
    qk_norm = True
    sliding_pattern = 6
    # multimodal checkpoints: the language model sits under one of these
    extra_prefixes = ("model.language_model.", "language_model.model.", "language_model.")
    ignored_prefixes = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                        "model.multi_modal_projector.")
    default_thetas = {"full_attention": 1_000_000.0, "sliding_attention": 10_000.0}
    defaults = dict(_GEMMA_COMMON, vocab_size=262_208, hidden_size=2304, intermediate_size=9216,
                    num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                    hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131_072,
                    query_pre_attn_scalar=256, sliding_window=4096,
                    final_logit_softcapping=None, attn_logit_softcapping=None)

    def model_config(self, hf_config: dict) -> dict:
        cfg = hf_config
        if cfg.get("model_type") == "gemma3":
            # the multimodal wrapper: the language model is described by text_config
            text = cfg.get("text_config")
            if not isinstance(text, dict):
                raise refuse("gemma3", "no text_config", ("gemma3 configs with a text_config",))
            cfg = dict(text)
            cfg["model_type"] = "gemma3_text"
            if "tie_word_embeddings" not in cfg and "tie_word_embeddings" in hf_config:
                cfg["tie_word_embeddings"] = hf_config["tie_word_embeddings"]
        return super().model_config(cfg)

    def pattern(self, cfg: dict) -> int:
        return int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)

    def rope(self, cfg: dict):
        params = cfg.get("rope_parameters")
        if params and not is_nested_rope(params):
            raise refuse(self.name, "flat rope_parameters",
                         ("rope_parameters per layer type (full_attention, sliding_attention)",))
        params = {k: dict(v) for k, v in (params or {}).items() if isinstance(v, dict)}
        full = params.setdefault("full_attention", {"rope_type": "default"})
        sliding = params.setdefault("sliding_attention", {"rope_type": "default"})
        if cfg.get("rope_scaling"):
            full.update(cfg["rope_scaling"])  # old-style scaling applies to full attention
        full.setdefault("rope_theta", cfg.get("rope_theta") or self.default_thetas["full_attention"])
        sliding.setdefault("rope_theta", cfg.get("rope_local_base_freq")
                           or self.default_thetas["sliding_attention"])
        max_pos = cfg.get("max_position_embeddings")
        if rope_scaling_of(self.name, sliding, max_pos) is not None:
            raise refuse(self.name, "RoPE scaling on sliding-attention layers",
                         ("rope scaling on full-attention layers only",))
        scaling = rope_scaling_of(self.name, full, max_pos)
        partial_rotary(self.name, cfg, full)
        partial = partial_rotary(self.name, cfg, sliding)
        return float(full["rope_theta"]), float(sliding["rope_theta"]), scaling, partial

    def hf_rope(self, mc: dict) -> dict:
        full = {"rope_type": "default", "rope_theta": mc["rope_base"]}
        if mc["rope_scaling"]:
            full.update(mc["rope_scaling"])
        sliding = {"rope_type": "default", "rope_theta": mc["rope_local_base"]}
        scaling = dict(mc["rope_scaling"], type=mc["rope_scaling"]["rope_type"]) \
            if mc["rope_scaling"] else None
        # rope_parameters for transformers v5; the flat keys for older versions
        return {"rope_parameters": {"full_attention": full, "sliding_attention": sliding},
                "rope_theta": mc["rope_base"], "rope_local_base_freq": mc["rope_local_base"],
                "rope_scaling": scaling}
