"""Qwen2 (q/k/v biases) and Qwen3 (q/k RMSNorm, optional biases)."""

from __future__ import annotations

from .decoder import DecoderFamily, sliding_or_none
from .hfconfig import check_layer_types


class _Qwen(DecoderFamily):
    def attention_layout(self, cfg, num_layers):
        window = sliding_or_none(cfg) if cfg.get("use_sliding_window") else None
        if window is None:
            # without a window a "sliding" layer attends to everything
            return ["full_attention"] * num_layers, None
        if cfg.get("layer_types") is not None:
            return check_layer_types(self.name, cfg["layer_types"], num_layers), window
        first = int(cfg.get("max_window_layers", 28))
        return (["sliding_attention" if i >= first else "full_attention"
                 for i in range(num_layers)], window)

    def hf_extras(self, out: dict, mc: dict) -> None:
        window = mc["sliding_window"]
        out["use_sliding_window"] = window is not None
        out["sliding_window"] = window
        types = mc["layer_types"]
        out["max_window_layers"] = next((i for i, t in enumerate(types) if t == "sliding_attention"),
                                        len(types))
        out["layer_types"] = list(types)


class Qwen2(_Qwen):
    name = "qwen2"
    model_types = ("qwen2",)
    architectures = ("Qwen2ForCausalLM", "Qwen2Model")
    hf_architecture = "Qwen2ForCausalLM"
    gguf_architectures = ("qwen2",)
    qkv_bias = True      # hard-wired in transformers' Qwen2Attention
    out_bias = False
    defaults = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                    hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096,
                    max_window_layers=28, bos_token_id=None, eos_token_id=None)


class Qwen3(_Qwen):
    name = "qwen3"
    model_types = ("qwen3",)
    architectures = ("Qwen3ForCausalLM", "Qwen3Model")
    hf_architecture = "Qwen3ForCausalLM"
    gguf_architectures = ("qwen3",)
    qk_norm = True
    defaults = dict(Qwen2.defaults, head_dim=128, attention_bias=False)

    def hf_extras(self, out: dict, mc: dict) -> None:
        super().hf_extras(out, mc)
        out["attention_bias"] = mc["attention_bias"]

    def gguf_config(self, arch: str, meta: dict, tensor_names: set[str], cfg: dict) -> None:
        super().gguf_config(arch, meta, tensor_names, cfg)
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_names  # Qwen2's are not optional
