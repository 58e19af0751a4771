"""The Llama-style decoder that Llama, Mistral, Qwen2/3 and the Gemmas share:
``embed_tokens``, ``layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}``, ``norm``, ``lm_head``.

Subclasses set class attributes for their traits and override the hooks
(:meth:`attention_layout`, :meth:`rope`, :meth:`family_extras`)."""

from __future__ import annotations

from .base import Family, gguf_refusal, spec, sqrt_hidden
from .hfconfig import (
    activation,
    flat_rope,
    optional_int,
    refuse,
    refuse_unimplemented,
    special_token_ids,
)

#: GGUF metadata suffix (after ``<arch>.``) → Hugging Face config key, decoder families
GGUF_DECODER_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.key_length": "head_dim",
}
#: GGUF metadata that must equal the head size when present
_GGUF_HEAD_SIZED_KEYS = ("attention.key_length_swa", "attention.value_length_swa",
                         "rope.dimension_count_swa", "attention.value_length")


class DecoderFamily(Family):
    #: ``transformers`` config class defaults used when config.json omits a key
    defaults: dict = {}
    #: the ``architectures`` entry ``hf_config`` writes
    hf_architecture: str = ""
    default_theta: float = 10000.0
    activation_key: str = "hidden_act"
    norm_offset: float = 0.0
    scaled_embeddings: bool = False
    sandwich_norms: bool = False
    #: q/k/v biases: "config" (attention_bias), True/False fixed
    qkv_bias: object = "config"
    #: o_proj bias: "config" (attention_bias), True/False fixed
    out_bias: object = "config"
    #: "config" (mlp_bias) or False
    ffn_bias: object = False
    #: "config"-free: whether the family has q_norm/k_norm
    qk_norm: bool = False
    ignored_suffixes = (".rotary_emb.inv_freq",)
    gguf_config_keys = GGUF_DECODER_KEYS

    # ------------------------------------------------------------ config
    def model_config(self, hf_config: dict) -> dict:
        cfg = {**self.defaults, **hf_config}
        name = self.name
        refuse_unimplemented(name, cfg)
        try:
            hidden = int(cfg["hidden_size"])
            layers = int(cfg["num_hidden_layers"])
            heads = int(cfg["num_attention_heads"])
            ffn = int(cfg["intermediate_size"])
            vocab = int(cfg["vocab_size"])
        except (KeyError, TypeError) as exc:
            raise refuse(name, f"a config.json without a usable {exc}",
                         ("hidden_size, num_hidden_layers, num_attention_heads, "
                          "intermediate_size, vocab_size",)) from None
        kv = cfg.get("num_key_value_heads") or heads
        head_dim = cfg.get("head_dim") or hidden // heads
        if heads % int(kv):
            raise refuse(name, f"{heads} query heads over {kv} key/value heads",
                         ("a query head count divisible by the key/value head count",))
        rope_base, rope_local_base, rope_scaling, partial = self.rope(cfg)
        layer_types, sliding_window = self.attention_layout(cfg, layers)
        eps = float(cfg.get("rms_norm_eps") or 1e-6)
        mc = {
            "model_type": self.model_types[0],
            "hidden_size": hidden,
            "num_layers": layers,
            "intermediate_size": ffn,
            "vocab_size": vocab,
            "embed_scale": sqrt_hidden(hidden) if self.scaled_embeddings else 1.0,
            "head_dim": int(head_dim),
            "num_q_heads": heads,
            "num_kv_heads": int(kv),
            "rope_base": rope_base,
            "rope_local_base": rope_local_base,
            "rope_scaling": rope_scaling,
            "partial_rotary_factor": partial,
            "sliding_window": sliding_window,
            "layer_types": layer_types,
            "activation": activation(name, cfg.get(self.activation_key)),
            "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
            "norm_type": "rms",
            "rms_norm_eps": eps,
            "norm_eps": eps,
            "norm_offset": self.norm_offset,
            "query_pre_attn_scalar": None,
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "attention_bias": self._flag(self.qkv_bias, cfg, "attention_bias"),
            "attention_out_bias": self._flag(self.out_bias, cfg, "attention_bias"),
            "mlp_bias": self._flag(self.ffn_bias, cfg, "mlp_bias"),
            "qk_norm": self.qk_norm,
            "sandwich_norms": self.sandwich_norms,
            "position_embedding": "rope",
            "qkv_layout": "split",
            "max_position_embeddings": optional_int(cfg.get("max_position_embeddings")),
            **special_token_ids(cfg),
        }
        self.family_extras(mc, cfg)
        return mc

    def model_flags(self, model_config: dict) -> dict:
        hidden = model_config.get("hidden_size")
        flags = {"qkv_layout": "split", "norm_type": "rms", "norm_offset": self.norm_offset,
                 "activation": self.defaults.get(self.activation_key, "silu"),
                 "position_embedding": "rope", "qk_norm": self.qk_norm,
                 "sandwich_norms": self.sandwich_norms,
                 "embed_scale": 1.0 if not self.scaled_embeddings else
                 (sqrt_hidden(int(hidden)) if hidden else "sqrt_hidden")}
        if isinstance(self.qkv_bias, bool):
            flags["attention_bias"] = self.qkv_bias
        flags["attention_out_bias"] = self.out_bias if isinstance(self.out_bias, bool) else \
            bool(model_config.get("attention_bias"))
        return flags

    @staticmethod
    def _flag(how, cfg: dict, key: str) -> bool:
        return bool(cfg.get(key, False)) if how == "config" else bool(how)

    def rope(self, cfg: dict) -> tuple[float, float | None, dict | None, float]:
        base, scaling, partial = flat_rope(self.name, cfg, self.default_theta)
        return base, None, scaling, partial

    def attention_layout(self, cfg: dict, num_layers: int) -> tuple[list[str], int | None]:
        """``(layer_types, sliding_window)``; the base is full attention everywhere."""
        return ["full_attention"] * num_layers, None

    def family_extras(self, mc: dict, cfg: dict) -> None:
        """Family-specific ``model_config`` keys (softcaps, query scalar, ...)."""

    # ------------------------------------------------------------ GGUF
    def gguf_config(self, arch: str, meta: dict, tensor_names: set[str], cfg: dict) -> None:
        # RoPE: partial rotation and scaling are passed on for model_config to accept or refuse
        heads = int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
        cfg["head_dim"] = head_dim
        for suffix in _GGUF_HEAD_SIZED_KEYS:
            value = meta.get(f"{arch}.{suffix}")
            if value is not None and int(value) != head_dim:
                raise gguf_refusal(arch, f"{arch}.{suffix}={value} (head size {head_dim})")
        rot = meta.get(f"{arch}.rope.dimension_count")
        if rot is not None and int(rot) != head_dim:
            cfg["partial_rotary_factor"] = int(rot) / head_dim
        kind = meta.get(f"{arch}.rope.scaling.type")
        if kind not in (None, "none"):
            scaling = {"rope_type": kind}
            if meta.get(f"{arch}.rope.scaling.factor") is not None:
                scaling["factor"] = float(meta[f"{arch}.rope.scaling.factor"])
            cfg["rope_scaling"] = scaling

    # ------------------------------------------------------------ config.json
    def hf_config(self, model_config: dict) -> dict:
        mc = model_config
        out = {
            "architectures": [self.hf_architecture],
            "model_type": mc["model_type"],
            "hidden_size": mc["hidden_size"],
            "intermediate_size": mc["intermediate_size"],
            "num_hidden_layers": mc["num_layers"],
            "num_attention_heads": mc["num_q_heads"],
            "num_key_value_heads": mc["num_kv_heads"],
            "head_dim": mc["head_dim"],
            "vocab_size": mc["vocab_size"],
            "max_position_embeddings": mc["max_position_embeddings"],
            "rms_norm_eps": mc["rms_norm_eps"],
            "tie_word_embeddings": mc["tie_word_embeddings"],
            "bos_token_id": mc["bos_token_id"],
            "eos_token_id": (mc["eos_token_id"][0] if len(mc["eos_token_id"]) == 1
                             else (mc["eos_token_id"] or None)),
            "pad_token_id": mc.get("pad_token_id"),
            self.activation_key: mc["activation"],
            "torch_dtype": "float32",
        }
        out.update(self.hf_rope(mc))
        self.hf_extras(out, mc)
        return out

    def hf_rope(self, mc: dict) -> dict:
        params = {"rope_type": "default", "rope_theta": mc["rope_base"]}
        if mc["rope_scaling"]:
            params.update(mc["rope_scaling"])
        scaling = dict(mc["rope_scaling"], type=mc["rope_scaling"]["rope_type"]) \
            if mc["rope_scaling"] else None
        return {"rope_theta": mc["rope_base"], "rope_scaling": scaling, "rope_parameters": params}

    def hf_extras(self, out: dict, mc: dict) -> None:
        """Family-specific config.json keys."""

    # ------------------------------------------------------------ tensors
    def global_tensors(self, mc: dict):
        specs = [spec(self.embed_key, "embed", "browse", None),
                 spec("norm.weight", "norm", "inference", None)]
        if not mc["tie_word_embeddings"]:
            specs.append(spec(self.lm_head_key, "lm_head", "inference", None))
        return specs

    def layer_tensors(self, mc: dict, layer: int):
        p = f"layers.{layer}."
        out = [spec(p + "input_layernorm.weight", "norm", "inference", layer)]
        for proj in ("q", "k", "v"):
            out.append(spec(p + f"self_attn.{proj}_proj.weight", "attn", "inference", layer))
            if mc["attention_bias"]:
                out.append(spec(p + f"self_attn.{proj}_proj.bias", "attn", "inference", layer))
        out.append(spec(p + "self_attn.o_proj.weight", "attn", "inference", layer))
        if mc["attention_out_bias"]:
            out.append(spec(p + "self_attn.o_proj.bias", "attn", "inference", layer))
        if mc["qk_norm"]:
            out.append(spec(p + "self_attn.q_norm.weight", "attn", "inference", layer))
            out.append(spec(p + "self_attn.k_norm.weight", "attn", "inference", layer))
        out.append(spec(p + "post_attention_layernorm.weight", "norm", "inference", layer))
        if mc["sandwich_norms"]:
            out.append(spec(p + "pre_feedforward_layernorm.weight", "norm", "inference", layer))
            out.append(spec(p + "post_feedforward_layernorm.weight", "norm", "inference", layer))
        out.append(spec(self.gate_key(layer), "gate", "browse", layer))
        out.append(spec(p + "mlp.up_proj.weight", "up", "inference", layer))
        out.append(spec(self.down_key(layer), "down", "browse", layer))
        if mc["mlp_bias"]:
            out.append(spec(p + "mlp.gate_proj.bias", "ffn_bias", "inference", layer, "up_weights.bin"))
            out.append(spec(p + "mlp.up_proj.bias", "ffn_bias", "inference", layer, "up_weights.bin"))
            out.append(spec(p + "mlp.down_proj.bias", "ffn_bias", "inference", layer,
                            "down_weights.bin"))
        return out


def sliding_or_none(cfg: dict, key: str = "sliding_window"):
    value = cfg.get(key)
    return None if value in (None, 0) else int(value)


__all__ = ["DecoderFamily", "sliding_or_none"]
