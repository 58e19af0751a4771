"""Gemma 4: a ``model_config`` back to a ``config.json`` that transformers loads as
``Gemma4ForCausalLM`` (COMPILE ... INTO MODEL).

The inverse of :meth:`lql.families.gemma4.Gemma4.model_config`.  Per-layer head sizes /
KV-head counts / FFN widths are written the way the source wrote them (``config_format``
in the model_config): ``per_layer_config`` (what transformers ≥ 5.2x saves) or the Hub's
``global_head_dim`` / ``num_global_key_value_heads``; a width that format cannot express
falls back to ``per_layer_config``.  A multimodal source is written as its text model.
"""

from __future__ import annotations

from typing import Any


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


def hf_config(mc: dict) -> dict[str, Any]:
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


__all__ = ["hf_config"]
