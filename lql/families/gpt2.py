"""GPT-2: LayerNorm with biases, learned absolute positions, a dense GELU FFN,
and ``Conv1D`` weights stored transposed (``[in, out]``).  Keys keep GPT-2's
names (``wte.weight``, ``h.N.attn.c_attn.weight`` ...), without ``transformer.``."""

from __future__ import annotations

import numpy as np

from .base import Family, spec
from .hfconfig import (
    activation,
    refuse,
    refuse_unimplemented,
    special_token_ids,
)


class GPT2(Family):
    name = "gpt2"
    model_types = ("gpt2",)
    architectures = ("GPT2LMHeadModel", "GPT2Model")
    hf_prefix = "transformer."
    # old checkpoints carry the causal-mask buffers
    ignored_suffixes = (".attn.bias", ".attn.masked_bias")
    embed_key = "wte.weight"
    gguf_architectures = ("gpt2",)
    gguf_config_keys = {
        "context_length": "n_positions",
        "block_count": "n_layer",
        "embedding_length": "n_embd",
        "feed_forward_length": "n_inner",
        "attention.head_count": "n_head",
        "attention.layer_norm_epsilon": "layer_norm_epsilon",
    }
    defaults = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                    n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                    scale_attn_weights=True, bos_token_id=50256, eos_token_id=50256,
                    scale_attn_by_inverse_layer_idx=False, add_cross_attention=False,
                    tie_word_embeddings=True)

    def model_config(self, hf_config: dict) -> dict:
        cfg = {**self.defaults, **hf_config}
        refuse_unimplemented(self.name, cfg)
        if not cfg.get("scale_attn_weights", True):
            raise refuse(self.name, "scale_attn_weights=False", ("scale_attn_weights=True",))
        if cfg.get("scale_attn_by_inverse_layer_idx"):
            raise refuse(self.name, "scale_attn_by_inverse_layer_idx=True",
                         ("scale_attn_by_inverse_layer_idx=False",))
        if cfg.get("add_cross_attention"):
            raise refuse(self.name, "add_cross_attention=True (cross-attention)",
                         ("decoder-only GPT-2",))
        hidden, heads = int(cfg["n_embd"]), int(cfg["n_head"])
        eps = float(cfg["layer_norm_epsilon"])
        return {
            "model_type": "gpt2",
            "hidden_size": hidden,
            "num_layers": int(cfg["n_layer"]),
            "intermediate_size": int(cfg.get("n_inner") or 4 * hidden),
            "vocab_size": int(cfg["vocab_size"]),
            "embed_scale": 1.0,
            "head_dim": hidden // heads,
            "num_q_heads": heads,
            "num_kv_heads": heads,
            "rope_base": None,
            "rope_local_base": None,
            "rope_scaling": None,
            "partial_rotary_factor": 1.0,
            "sliding_window": None,
            "layer_types": ["full_attention"] * int(cfg["n_layer"]),
            "activation": activation(self.name, cfg["activation_function"]),
            "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", True)),
            "norm_type": "layer",
            "rms_norm_eps": None,
            "norm_eps": eps,
            "norm_offset": 0.0,
            "query_pre_attn_scalar": None,
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "attention_bias": True,
            "attention_out_bias": True,
            "mlp_bias": True,
            "qk_norm": False,
            "sandwich_norms": False,
            "position_embedding": "learned",
            "qkv_layout": "fused_conv1d",
            "max_position_embeddings": int(cfg["n_positions"]),
            **special_token_ids(cfg),
        }

    def hf_config(self, model_config: dict) -> dict:
        mc = model_config
        eos = mc["eos_token_id"]
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": mc["vocab_size"],
            "n_positions": mc["max_position_embeddings"],
            "n_embd": mc["hidden_size"],
            "n_layer": mc["num_layers"],
            "n_head": mc["num_q_heads"],
            "n_inner": mc["intermediate_size"],
            "activation_function": mc["activation"],
            "layer_norm_epsilon": mc["norm_eps"],
            "bos_token_id": mc["bos_token_id"],
            "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
            "pad_token_id": mc.get("pad_token_id"),
            "tie_word_embeddings": mc["tie_word_embeddings"],
            "torch_dtype": "float32",
        }

    def model_flags(self, model_config: dict) -> dict:
        return {"qkv_layout": "fused_conv1d", "norm_type": "layer", "norm_offset": 0.0,
                "activation": self.defaults["activation_function"],
                "position_embedding": "learned", "attention_bias": True, "mlp_bias": True,
                "embed_scale": 1.0}

    def gguf_transposed(self, gguf_name: str) -> bool:
        # Conv1D weights ([in, out]) stored by llama.cpp as [out, in]
        return gguf_name.endswith(("attn_qkv.weight", "attn_output.weight", "ffn_up.weight",
                                   "ffn_down.weight"))

    # ------------------------------------------------------------ tensors
    def gate_key(self, layer: int) -> str:
        return f"h.{layer}.mlp.c_fc.weight"

    def up_key(self, layer: int) -> None:
        return None  # a dense FFN: c_fc is the only input matrix (it is the "gate")

    def down_key(self, layer: int) -> str:
        return f"h.{layer}.mlp.c_proj.weight"

    def gate_rows(self, weight: np.ndarray) -> np.ndarray:
        return weight.T  # Conv1D [hidden, ffn] → rows (ffn, hidden)

    def gate_weight(self, rows: np.ndarray) -> np.ndarray:
        return rows.T

    def down_columns(self, weight: np.ndarray) -> np.ndarray:
        return weight.T  # Conv1D [ffn, hidden] → (hidden, ffn)

    def down_weight(self, columns: np.ndarray) -> np.ndarray:
        return columns.T

    def global_tensors(self, mc: dict):
        specs = [spec("wte.weight", "embed", "browse", None),
                 spec("wpe.weight", "pos_embed", "inference", None),
                 spec("ln_f.weight", "norm", "inference", None),
                 spec("ln_f.bias", "norm", "inference", None)]
        if not mc["tie_word_embeddings"]:
            specs.append(spec(self.lm_head_key, "lm_head", "inference", None))
        return specs

    def layer_tensors(self, mc: dict, layer: int):
        p = f"h.{layer}."
        return [
            spec(p + "ln_1.weight", "norm", "inference", layer),
            spec(p + "ln_1.bias", "norm", "inference", layer),
            spec(p + "attn.c_attn.weight", "attn", "inference", layer),
            spec(p + "attn.c_attn.bias", "attn", "inference", layer),
            spec(p + "attn.c_proj.weight", "attn", "inference", layer),
            spec(p + "attn.c_proj.bias", "attn", "inference", layer),
            spec(p + "ln_2.weight", "norm", "inference", layer),
            spec(p + "ln_2.bias", "norm", "inference", layer),
            spec(self.gate_key(layer), "gate", "browse", layer),
            spec(p + "mlp.c_fc.bias", "ffn_bias", "inference", layer, "up_weights.bin"),
            spec(self.down_key(layer), "down", "browse", layer),
            spec(p + "mlp.c_proj.bias", "ffn_bias", "inference", layer, "down_weights.bin"),
        ]
