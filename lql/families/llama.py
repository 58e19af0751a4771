"""Llama and Mistral: the plain decoder (RMSNorm, SiLU-gated FFN, RoPE, GQA)."""

from __future__ import annotations

from .decoder import DecoderFamily, sliding_or_none


class Llama(DecoderFamily):
    name = "llama"
    model_types = ("llama",)
    architectures = ("LlamaForCausalLM", "LlamaModel")
    hf_architecture = "LlamaForCausalLM"
    ffn_bias = "config"
    # SmolLM2-135M (30 layers): the bands of the spec's example index.json
    known_bands = {30: {"syntax": [0, 9], "knowledge": [10, 23], "output": [24, 29]}}
    defaults = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None,
                    hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
                    bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                    attention_bias=False, mlp_bias=False, head_dim=None)

    # llama.cpp's "llama" GGUFs (Mistral's too) read as Llama
    gguf_architectures = ("llama",)

    def hf_extras(self, out: dict, mc: dict) -> None:
        out["attention_bias"] = mc["attention_bias"]
        out["mlp_bias"] = mc["mlp_bias"]

    def gguf_config(self, arch: str, meta: dict, tensor_names: set[str], cfg: dict) -> None:
        super().gguf_config(arch, meta, tensor_names, cfg)
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        cfg["mlp_bias"] = "blk.0.ffn_gate.bias" in tensor_names

    def gguf_permute_heads(self, gguf_name: str, cfg: dict) -> int | None:
        # llama.cpp permutes Q and K rows for its (non-NEOX) RoPE layout
        if ".attn_q." in gguf_name:
            return int(cfg["num_attention_heads"])
        if ".attn_k." in gguf_name:
            return int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
        return None


class Mistral(DecoderFamily):
    name = "mistral"
    model_types = ("mistral",)
    architectures = ("MistralForCausalLM", "MistralModel")
    hf_architecture = "MistralForCausalLM"
    qkv_bias = False
    out_bias = False
    defaults = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    head_dim=None, hidden_act="silu", max_position_embeddings=4096 * 32,
                    rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
                    tie_word_embeddings=False, sliding_window=4096)

    def attention_layout(self, cfg, num_layers):
        # transformers' Mistral applies its window to every layer (and ignores layer_types)
        window = sliding_or_none(cfg)
        kind = "sliding_attention" if window is not None else "full_attention"
        return [kind] * num_layers, window

    def hf_extras(self, out: dict, mc: dict) -> None:
        out["sliding_window"] = mc["sliding_window"]
