"""Reading the parts of a Hugging Face ``config.json`` that several families share:
RoPE settings (old ``rope_theta``/``rope_scaling`` and newer ``rope_parameters``,
flat or per layer type), activation names, token ids, and loud refusals of
details no family here implements."""

from __future__ import annotations

from ..errors import UnsupportedArchitectureError

#: RoPE types the forward pass implements (``rope_scaling["rope_type"]``, lql/model/rope.py)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic")
#: fields each supported scaling type needs, besides ``rope_type``
ROPE_FIELDS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "dynamic": ("factor",),
}
#: fields a type may carry (passed on as they are)
ROPE_OPTIONAL = {
    "linear": (),
    "llama3": (),
    "yarn": ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"),
    "dynamic": ("original_max_position_embeddings",),
}
#: types whose original_max_position_embeddings defaults to max_position_embeddings
#: (what transformers' standardize_rope_params does)
_ORIG_DEFAULTED = ("llama3", "yarn")
#: activation names the forward pass implements; aliases map to them
SUPPORTED_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "gelu_new")
ACTIVATION_ALIASES = {"swish": "silu"}

LAYER_TYPES = ("full_attention", "sliding_attention")

#: config keys that change the computation and that no family here implements;
#: a truthy value is refused (value → why)
UNIMPLEMENTED_SWITCHES = {
    "use_bidirectional_attention": "bidirectional attention",
    "attention_chunk_size": "chunked attention",
    "attn_temperature_tuning": "attention temperature tuning",
    "no_rope_layers": "layers without RoPE",
    "use_qk_norm": "Llama-4 style q/k norm",
    "use_mrope": "multimodal RoPE",
    "quantization_config": "pre-quantised weights (GPTQ/AWQ/bitsandbytes/fp8 ...)",
}

NESTED_ROPE_KEYS = LAYER_TYPES


def refuse(family: str, detail: str, supported) -> UnsupportedArchitectureError:
    """The error for a config detail a family does not implement."""
    return UnsupportedArchitectureError(f"{family} with {detail}", supported)


def opt(cfg: dict, key: str, default):
    """``cfg[key]`` when present (even when ``None``), else ``default`` — the way a
    ``transformers`` config class fills a missing key with its class default."""
    return cfg[key] if key in cfg else default


def refuse_unimplemented(family: str, cfg: dict) -> None:
    for key, what in UNIMPLEMENTED_SWITCHES.items():
        if cfg.get(key):
            value = cfg[key]
            if isinstance(value, dict):  # name the method, not the whole dict
                value = value.get("quant_method", "...")
            raise refuse(family, f"{key}={value!r} ({what})", ("configs without " + key,))


def activation(family: str, name) -> str:
    act = ACTIVATION_ALIASES.get(name, name)
    if act not in SUPPORTED_ACTIVATIONS:
        raise refuse(family, f"activation {name!r}", SUPPORTED_ACTIVATIONS)
    return act


def eos_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def optional_int(value):
    return None if value is None else int(value)


def special_token_ids(cfg: dict) -> dict:
    """The ``bos_token_id`` / ``eos_token_id`` (a list) / ``pad_token_id`` of a config.json,
    as every family writes them into model_config."""
    return {"bos_token_id": optional_int(cfg.get("bos_token_id")),
            "eos_token_id": eos_list(cfg.get("eos_token_id")),
            "pad_token_id": optional_int(cfg.get("pad_token_id"))}


def optional_float(value):
    return None if value is None else float(value)


def _rope_type(params: dict) -> str:
    return params.get("rope_type", params.get("type", "default")) or "default"


def rope_scaling_of(family: str, params: dict | None, max_position_embeddings) -> dict | None:
    """``None`` for plain RoPE, else the validated scaling dict (``rope_type`` + its fields).

    Unknown types, and fields a type needs that are missing, are refused."""
    if not params:
        return None
    kind = _rope_type(params)
    if kind not in SUPPORTED_ROPE_TYPES:
        raise refuse(family, f"rope_scaling type {kind!r}", SUPPORTED_ROPE_TYPES)
    if kind == "default":
        return None
    out = {"rope_type": kind}
    for field in ROPE_FIELDS[kind]:
        value = params.get(field)
        if value is None and field == "original_max_position_embeddings" and kind in _ORIG_DEFAULTED:
            value = max_position_embeddings  # what transformers defaults it to
        if value is None:
            raise refuse(family, f"rope_scaling type {kind!r} without {field!r}",
                         (f"{kind} scaling with {', '.join(ROPE_FIELDS[kind])}",))
        out[field] = _rope_value(field, value)
    for field in ROPE_OPTIONAL[kind]:
        if params.get(field) is not None:
            out[field] = _rope_value(field, params[field])
    known = set(ROPE_FIELDS[kind]) | set(ROPE_OPTIONAL[kind]) \
        | {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
    extra = sorted(set(params) - known)
    if extra:
        raise refuse(family, f"rope_scaling fields {extra} for type {kind!r}",
                     (f"{kind} scaling with {', '.join(ROPE_FIELDS[kind])}",))
    return out


def _rope_value(field: str, value):
    if field == "original_max_position_embeddings":
        return int(value)
    if field == "truncate":
        return bool(value)
    return float(value)


def is_nested_rope(params) -> bool:
    return isinstance(params, dict) and any(isinstance(params.get(k), dict) for k in NESTED_ROPE_KEYS)


def rope_params(cfg: dict) -> dict:
    """The RoPE parameter dict the way ``transformers`` v5 picks it: an old-style
    ``rope_scaling`` wins over ``rope_parameters``; a copy, never the original."""
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if is_nested_rope(params):
        return {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    return dict(params)


def partial_rotary(family: str, cfg: dict, params: dict) -> float:
    value = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    value = 1.0 if value is None else float(value)
    if value != 1.0:
        raise refuse(family, f"partial_rotary_factor={value}", ("partial_rotary_factor 1.0",))
    return value


def flat_rope(family: str, cfg: dict, default_theta: float) -> tuple[float, dict | None, float]:
    """``(rope_base, rope_scaling, partial_rotary_factor)`` for a family with one RoPE."""
    params = rope_params(cfg)
    if is_nested_rope(params):
        raise refuse(family, "per-layer-type rope_parameters", ("one rope_parameters dict",))
    theta = params.get("rope_theta", cfg.get("rope_theta"))
    theta = default_theta if theta is None else float(theta)
    scaling = rope_scaling_of(family, params, cfg.get("max_position_embeddings"))
    return theta, scaling, partial_rotary(family, cfg, params)


def check_layer_types(family: str, layer_types, num_layers: int) -> list[str]:
    types = list(layer_types)
    if len(types) != num_layers:
        raise refuse(family, f"{len(types)} layer_types for {num_layers} layers",
                     ("one layer type per layer",))
    bad = sorted(set(types) - set(LAYER_TYPES))
    if bad:
        raise refuse(family, f"layer types {bad}", LAYER_TYPES)
    return types
