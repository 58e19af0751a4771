"""What the Rust LARQL writes that our own writer does not: its index.json ``model_config``
and its label keys.  (Facts cite ``Divinci-AI/larql`` at 4f6dfb4; see docs/LARQL.md.)

LARQL's ``VindexModelConfig`` (crates/larql-vindex/src/config/types.rs:251-306) keeps only
``model_type, head_dim, num_q_heads, num_kv_heads, rope_base, sliding_window, moe,
attention_k_eq_v`` and optional Gemma 4 geometry; our forward pass needs more (norm epsilon,
activation, ...).  :func:`complete_larql_config` rebuilds the config.json LARQL's own loader
rebuilds (format/weights/load.rs:121-146), runs it through the family's ``model_config``
(which applies the family's ``transformers`` defaults) and reports every value that came
from a default as *assumed*.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import VindexError

__all__ = ["complete_larql_config", "is_larql_config", "label_key", "parse_label_key",
           "ASSUMABLE", "for_larql", "LARQL_DEFAULT_ROPE_BASE"]

#: the RoPE base LARQL assumes for a non-Gemma config without one
#: (larql-models/src/detect.rs:108-109, 131-135)
LARQL_DEFAULT_ROPE_BASE = 10_000.0


def for_larql(model_config: dict[str, Any]) -> dict[str, Any]:
    """``model_config`` as written to index.json, so that LARQL's ``VindexModelConfig``
    (larql-vindex/src/config/types.rs:251-306) accepts it: its non-optional ``rope_base``
    (f64, :257) gets LARQL's default where the family has no RoPE (GPT-2: ``null`` made
    LARQL reject the whole index.json); a ``null`` non-optional bool
    (``attention_k_eq_v``, :287) is left out.  Our reader ignores ``rope_base`` for a
    model with learned positions (lql/model/config.py ``_rope_specs``)."""
    out = dict(model_config)
    if out.get("rope_base") is None:
        out["rope_base"] = LARQL_DEFAULT_ROPE_BASE
    if "attention_k_eq_v" in out and out["attention_k_eq_v"] is None:
        del out["attention_k_eq_v"]
    # LARQL's MoE description (MoeConfig, types.rs:310-329), as its extractor fills it
    # (extract/streaming.rs:603-614; Gemma 4's router and hybrid flag: larql-models
    # architectures/gemma4.rs:243-270).  Our flat keys stay: our reader uses them.
    if int(out.get("num_experts") or 0) > 0 and not isinstance(out.get("moe"), dict):
        hybrid = str(out.get("model_type", "")).startswith("gemma4")
        moe: dict[str, Any] = {
            "num_experts": int(out["num_experts"]), "top_k": int(out.get("top_k_experts") or 0),
            "shared_expert": False,
            "router_type": "gemma4_top_k_softmax" if hybrid else "top_k_softmax",
            "hybrid": hybrid}
        if int(out.get("moe_intermediate_size") or 0) > 0:
            moe["moe_intermediate_size"] = int(out["moe_intermediate_size"])
        out["moe"] = moe
    # Gemma 4's per-layer-embedding width under LARQL's name (types.rs:293)
    if out.get("per_layer_input_size") and out.get("per_layer_embed_dim") is None:
        out["per_layer_embed_dim"] = int(out["per_layer_input_size"])
    return out

#: normalised model_config keys whose value comes from a config.json field LARQL does not
#: store: when LARQL's model_config lacks one, the family's default is used and reported
ASSUMABLE = ("rms_norm_eps", "norm_eps", "activation", "max_position_embeddings",
             "rope_scaling", "rope_local_base", "query_pre_attn_scalar",
             "final_logit_softcapping", "attn_logit_softcapping", "attention_bias",
             "mlp_bias", "bos_token_id", "eos_token_id", "pad_token_id")

#: LARQL model_config key → config.json key, as LARQL's loader maps them
#: (format/weights/load.rs:122-146; moe: load.rs:394-399)
_TO_HF = {"head_dim": "head_dim", "num_q_heads": "num_attention_heads",
          "num_kv_heads": "num_key_value_heads", "rope_base": "rope_theta",
          "sliding_window": "sliding_window", "global_head_dim": "global_head_dim",
          "num_global_kv_heads": "num_global_key_value_heads",
          "partial_rotary_factor": "partial_rotary_factor",
          "sliding_window_pattern": "sliding_window_pattern", "layer_types": "layer_types",
          "attention_k_eq_v": "attention_k_eq_v", "num_kv_shared_layers": "num_kv_shared_layers",
          "per_layer_embed_dim": "hidden_size_per_layer_input",
          "rope_local_base": "rope_local_base_freq",
          "query_pre_attn_scalar": "query_pre_attn_scalar",
          "final_logit_softcapping": "final_logit_softcapping"}


def is_larql_config(model_config: dict[str, Any]) -> bool:
    """A model_config written by LARQL (or any writer that keeps only LARQL's fields): it
    has none of the norm settings every lql-written model_config carries."""
    has_eps = any(model_config.get(k) is not None
                  for k in ("norm_eps", "rms_norm_eps", "layer_norm_eps"))
    return not has_eps or model_config.get("activation") is None


#: keys a model_config may carry under their config.json names (passed on as they are)
_HF_SAME = ("rms_norm_eps", "max_position_embeddings", "rope_scaling", "tie_word_embeddings",
            "bos_token_id", "eos_token_id", "pad_token_id", "attention_bias", "mlp_bias",
            "attn_logit_softcapping")


def _hf_config(index: dict[str, Any], mc: dict[str, Any], model_type: str,
               activation_key: str = "hidden_act") -> dict[str, Any]:
    hf: dict[str, Any] = {"model_type": model_type,
                          "hidden_size": index.get("hidden_size"),
                          "num_hidden_layers": index.get("num_layers"),
                          "intermediate_size": index.get("intermediate_size"),
                          "vocab_size": index.get("vocab_size")}
    for key, hf_key in _TO_HF.items():
        if mc.get(key) is not None:
            hf[hf_key] = mc[key]
    for key in _HF_SAME:                 # config.json names another writer may have kept
        if mc.get(key) is not None:
            hf[key] = mc[key]
    if mc.get("rms_norm_eps") is None and mc.get("norm_eps") is not None:
        hf["rms_norm_eps"] = mc["norm_eps"]
    if mc.get("activation") is not None:
        hf[activation_key] = mc["activation"]
    moe = mc.get("moe")
    if isinstance(moe, dict):
        hf["num_experts"] = moe.get("num_experts")
        hf["top_k_experts"] = moe.get("top_k")
        if moe.get("moe_intermediate_size") is not None:
            hf["moe_intermediate_size"] = moe["moe_intermediate_size"]
        if moe.get("hybrid"):
            hf["enable_moe_block"] = True
    return {k: v for k, v in hf.items() if v is not None}


def complete_larql_config(index: dict[str, Any], model_config: dict[str, Any],
                          stored: set[str]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``(model_config, assumed, caveats)`` for an index.json's model_config.

    An lql-written model_config (see :func:`is_larql_config`) or one whose ``model_type``
    no family covers comes back unchanged, with nothing assumed.  Otherwise: the full
    normalised model_config; ``assumed`` maps each key filled from the family's defaults to
    its value; ``caveats`` says what a forward pass does differently from the original model
    (``stored``: the weight keys of weight_manifest.json)."""
    if not is_larql_config(model_config):
        return model_config, {}, []
    from ..errors import LqlError
    from ..families import get_family
    model_type = str(model_config.get("model_type") or index.get("family") or "")
    try:
        fam = get_family(model_type)
    except LqlError:
        return model_config, {}, []
    hf = _hf_config(index, model_config, fam.model_types[0],
                    str(getattr(fam, "activation_key", "hidden_act")))
    if stored and "tie_word_embeddings" not in hf:
        # LARQL ties lm_head to the embeddings when it stored none (load.rs:302-311)
        hf["tie_word_embeddings"] = fam.lm_head_key not in stored
    try:
        full = fam.model_config(hf)
    except LqlError:
        return model_config, {}, []
    given = {k for k, v in model_config.items() if v is not None}
    if given & {"norm_eps", "rms_norm_eps"}:
        given |= {"norm_eps", "rms_norm_eps"}
    assumed = {k: full[k] for k in ASSUMABLE
               if k in full and k not in given and full[k] is not None and full[k] != []}
    caveats: list[str] = []
    if stored:
        for flag, suffix, what in (("attention_bias", "self_attn.q_proj.bias", "q/k/v_proj"),
                                   ("attention_out_bias", "self_attn.o_proj.bias", "o_proj"),
                                   ("mlp_bias", "mlp.up_proj.bias", "MLP")):
            if full.get(flag) and f"layers.0.{suffix}" not in stored:
                full[flag] = False
                assumed.pop(flag, None)
                caveats.append(f"{what} biases are not stored in this vindex (LARQL writes "
                               f"none), so the forward pass runs without them and differs "
                               f"from the original {fam.name} model")
    out = {**model_config, **full}
    out["model_type"] = fam.model_types[0]
    return out, assumed, caveats


_LARQL_KEY = re.compile(r"L(\d+)_F(\d+)")
_OUR_KEY = re.compile(r"(\d+):(\d+)")


def parse_label_key(key: object) -> tuple[int, int] | None:
    """``(layer, feature)`` of a feature_labels.json key: LARQL's ``"L27_F9515"``
    (larql-lql/src/relations.rs:55-63, larql-server/src/state.rs:167-197) or the older
    lql ``"27:9515"``; ``None`` for anything else."""
    text = str(key).strip()
    m = _LARQL_KEY.fullmatch(text) or _OUR_KEY.fullmatch(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def label_key(layer: int, feature: int) -> str:
    """The feature_labels.json key LARQL reads: ``"L<layer>_F<feature>"``."""
    return f"L{int(layer)}_F{int(feature)}"


# ---------------------------------------------------------------- published layouts

#: what the features of a LARQL SVD vindex are (STATS ``features_are``, USE's note)
SVD_FEATURES = ("the top-{k} SVD directions of each layer's gate_proj (gate_vectors.bin) and "
                "down_proj (down_features.bin), not FFN neurons: a feature's gate is a singular "
                "direction, its output tokens those of the matching down direction")


def svd_layout(index: dict[str, Any], folder: Path) -> tuple[dict[str, Any], dict[str, Any],
                                                             list[str]] | None:
    """The published Qwen3-8B SVD vindex: index.json has ``num_layers, hidden_size,
    num_feats, vocab_size`` and no ``layers`` list; gate_vectors.bin / down_features.bin
    hold ``[L × num_feats × H]`` f16.  Returns the index with the ``layers`` entries (and
    ``dtype``, ``intermediate_size``) it implies, what was assumed, and the notes to say
    — or ``None`` for any other index.json."""
    if "layers" in index or "num_feats" not in index:
        return None
    where = str(folder / "index.json")
    vals = {k: index.get(k) for k in ("num_layers", "hidden_size", "num_feats")}
    bad = [k for k, v in vals.items() if not (isinstance(v, int) and not isinstance(v, bool)
                                              and v > 0)]
    if bad:
        raise VindexError(f"{where}: an SVD vindex (num_feats, no layers) needs positive "
                          f"integers for {', '.join(bad)}", path=where)
    n_layers, hidden, k = (int(vals[key] or 0) for key in ("num_layers", "hidden_size", "num_feats"))
    assumed: dict[str, Any] = {"layers": f"{n_layers} × {k} features (from num_feats)"}
    dtype = index.get("dtype")
    if dtype is None:
        gate = folder / "gate_vectors.bin"
        size = gate.stat().st_size if gate.is_file() else None
        dtype = {n_layers * k * hidden * 2: "f16", n_layers * k * hidden * 4: "f32"}.get(
            size or -1, "f16")
        assumed["dtype"] = f"{dtype} (from gate_vectors.bin's size)"
    item = 2 if dtype == "f16" else 4
    length = k * hidden * item
    out = {**index, "dtype": dtype, "intermediate_size": index.get("intermediate_size") or k,
           "layers": [{"layer": n, "num_features": k, "offset": n * length, "length": length}
                      for n in range(n_layers)]}
    return out, assumed, [SVD_FEATURES.format(k=k)]


def row_text(row: int) -> str:
    """How a token row the tokenizer does not cover is shown (never decoded)."""
    return f"⟨row {row}⟩"
