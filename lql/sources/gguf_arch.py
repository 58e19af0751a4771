"""GGUF architecture knowledge: metadata → Hugging Face ``config.json`` dict, and
the per-tensor fix-ups llama.cpp's converter applied that must be undone.

llama.cpp's ``convert_hf_to_gguf.py`` (what made the GGUFs we read):
* Llama: Q and K projection rows (weights and biases) permuted for its RoPE
  layout — undone by :func:`reverse_permute` (as ``transformers`` does in
  ``modeling_gguf_pytorch_utils.LlamaTensorProcessor``).
* Gemma, Gemma 2, Gemma 3: every ``*norm.weight`` stored with ``+1`` folded in
  (llama.cpp applies ``x * w`` where Hugging Face applies ``x * (1 + w)``) —
  undone by subtracting 1.
* GPT-2: ``Conv1D`` weights (``[in, out]``) stored transposed to ``[out, in]`` —
  transposed back.
Qwen2/Qwen3 and the Gemmas use the NEOX RoPE layout in llama.cpp: no permutation.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedArchitectureError

#: GGUF ``general.architecture`` → our family name
GGUF_FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
                 "gemma2": "gemma2", "gemma3": "gemma3", "gpt2": "gpt2"}

#: GGUF metadata suffix (after ``<arch>.``) → Hugging Face config key, decoder families
_DECODER_KEYS = {
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
_GEMMA2_KEYS = dict(_DECODER_KEYS, **{
    "attention.sliding_window": "sliding_window",
    "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping",
})
_GEMMA3_KEYS = dict(_DECODER_KEYS, **{
    "attention.sliding_window": "sliding_window",
    "rope.freq_base_swa": "rope_local_base_freq",
    "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping",
})
_GPT2_KEYS = {
    "context_length": "n_positions",
    "block_count": "n_layer",
    "embedding_length": "n_embd",
    "feed_forward_length": "n_inner",
    "attention.head_count": "n_head",
    "attention.layer_norm_epsilon": "layer_norm_epsilon",
}
CONFIG_KEYS = {"llama": _DECODER_KEYS, "qwen2": _DECODER_KEYS, "qwen3": _DECODER_KEYS,
               "gemma": _DECODER_KEYS, "gemma2": _GEMMA2_KEYS, "gemma3": _GEMMA3_KEYS,
               "gpt2": _GPT2_KEYS}
HF_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
                  "gemma2": "gemma2", "gemma3": "gemma3_text", "gpt2": "gpt2"}
#: metadata that changes the computation in ways no family here implements
_REFUSED_KEYS = ("attention.scale", "logit_scale", "embedding_scale", "residual_scale",
                 "attention.clamp_kqv", "attention.max_alibi_bias", "use_parallel_residual",
                 "attention.temperature_scale")
#: metadata that must equal the head size when present
_HEAD_SIZED_KEYS = ("attention.key_length_swa", "attention.value_length_swa",
                    "rope.dimension_count_swa", "attention.value_length")
#: layer counts of llama.cpp's "27B" Gemma 2 / Gemma 3, whose attention scale is
#: 1/sqrt(hidden / heads) rather than 1/sqrt(head_dim)
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def unsupported(arch: str, detail: str = "") -> UnsupportedArchitectureError:
    name = f"{arch} GGUF" + (f" with {detail}" if detail else "")
    return UnsupportedArchitectureError(name, sorted(GGUF_FAMILIES))


def hf_config_from_gguf(arch: str, meta: dict, tensor_names: set[str],
                        embed_shape: tuple[int, ...]) -> dict:
    """A Hugging Face ``config.json`` dict for a GGUF (the way ``transformers``
    builds one when loading a GGUF), refusing what we cannot map."""
    if arch not in GGUF_FAMILIES:
        raise unsupported(arch)
    if meta.get(f"{arch}.expert_count"):
        raise unsupported(arch, "mixture-of-experts layers")
    if "rope_freqs.weight" in tensor_names:
        raise unsupported(arch, "rope_freqs (llama3-style RoPE scaling stored as a tensor)")
    for suffix in _REFUSED_KEYS:
        if meta.get(f"{arch}.{suffix}") not in (None, 0, False):
            raise unsupported(arch, f"{arch}.{suffix}={meta[f'{arch}.{suffix}']!r}")
    cfg: dict = {"model_type": HF_MODEL_TYPES[arch]}
    for suffix, key in CONFIG_KEYS[arch].items():
        value = meta.get(f"{arch}.{suffix}")
        if value is None:
            continue
        if isinstance(value, list):  # per-layer values (e.g. head_count_kv)
            if len(set(value)) != 1:
                raise unsupported(arch, f"per-layer {suffix} {sorted(set(value))}")
            value = value[0]
        cfg[key] = value
    cfg["vocab_size"] = int(embed_shape[0])
    cfg["tie_word_embeddings"] = "output.weight" not in tensor_names
    for gguf_key, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                          ("padding_token_id", "pad_token_id")):
        value = meta.get(f"tokenizer.ggml.{gguf_key}")
        if value is not None:
            cfg[key] = int(value)
    eot = meta.get("tokenizer.ggml.eot_token_id")
    if eot is not None and cfg.get("eos_token_id") is not None and int(eot) != cfg["eos_token_id"]:
        cfg["eos_token_id"] = [cfg["eos_token_id"], int(eot)]

    if arch == "gpt2":
        return cfg
    # RoPE: partial rotation and scaling are passed on for the family to accept or refuse
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    cfg["head_dim"] = head_dim
    for suffix in _HEAD_SIZED_KEYS:
        value = meta.get(f"{arch}.{suffix}")
        if value is not None and int(value) != head_dim:
            raise unsupported(arch, f"{arch}.{suffix}={value} (head size {head_dim})")
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if pattern is not None and arch in ("gemma2", "gemma3"):
        if isinstance(pattern, list):  # one flag per layer: True = sliding window
            cfg["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
        else:
            cfg["sliding_window_pattern"] = int(pattern)
    rot = meta.get(f"{arch}.rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        cfg["partial_rotary_factor"] = int(rot) / head_dim
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind not in (None, "none"):
        scaling = {"rope_type": kind}
        if meta.get(f"{arch}.rope.scaling.factor") is not None:
            scaling["factor"] = float(meta[f"{arch}.rope.scaling.factor"])
        cfg["rope_scaling"] = scaling
    if arch in ("gemma2", "gemma3"):
        n_layers = int(cfg["num_hidden_layers"])
        hidden = int(cfg["hidden_size"])
        cfg["query_pre_attn_scalar"] = hidden // heads if n_layers == _GEMMA_27B_LAYERS[arch] \
            else head_dim
    if arch == "qwen3":  # (Qwen2's q/k/v biases are not optional)
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
    if arch == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        cfg["mlp_bias"] = "blk.0.ffn_gate.bias" in tensor_names
    return cfg


def reverse_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's ``permute(w, n_head, n_head_kv)`` on Q (``n_head``) or K
    (``n_head_kv``) projection rows (weights or biases)."""
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


def permute_heads(arch: str, gguf_name: str, cfg: dict) -> int | None:
    """How many heads to un-permute a tensor by, or ``None``."""
    if arch != "llama":
        return None
    if ".attn_q." in gguf_name:
        return int(cfg["num_attention_heads"])
    if ".attn_k." in gguf_name:
        return int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    return None


def norm_shift(arch: str, gguf_name: str) -> float:
    """What llama.cpp added to this tensor (Gemma norms: 1.0)."""
    return 1.0 if arch in ("gemma", "gemma2", "gemma3") and gguf_name.endswith("norm.weight") else 0.0


def transposed(arch: str, gguf_name: str) -> bool:
    """GPT-2 Conv1D weights, stored by llama.cpp as ``[out, in]``."""
    return arch == "gpt2" and gguf_name.endswith(
        ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight"))
