"""A small declarative validator for the JSON files of a vindex (and its patches).

Every check names the file, the field and what was expected, in one line::

    /x/index.json: field 'num_layers' must be an integer 1..1000000, got 1e+400

A rule is a tuple built with the helpers below (``Int(lo, hi)``, ``Num(...)``,
``Str()``, ``OneOf(...)``, ``Opt(rule)`` ...); :func:`check_fields` applies a
``{field: rule}`` table to a dict.  No third-party dependency (start-up stays
light: ``import lql.vindex.validate`` costs well under a millisecond).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import VindexError

#: largest counts accepted anywhere (sizes beyond these are corrupt, not big models)
MAX_LAYERS = 100_000
MAX_HIDDEN = 1 << 20
MAX_VOCAB = 1 << 24
MAX_FEATURES = 1 << 24
MAX_TOP_K = 4096
MAX_BYTES = 1 << 50

_HEX64 = re.compile(r"[0-9a-f]{64}")

Rule = Callable[[Any], str | None]     # returns None when ok, else "what was expected"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def Int(lo: int | None = None, hi: int | None = None) -> Rule:
    desc = "an integer" + (f" {lo}..{hi}" if lo is not None and hi is not None
                           and hi < MAX_BYTES else f" >= {lo}" if lo is not None else "")

    def rule(v: Any) -> str | None:
        if is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi):
            return None
        if isinstance(v, float) and v.is_integer() and (lo is None or v >= lo) and \
                (hi is None or v <= hi):
            return None                       # 30.0 written by another tool
        return desc
    return rule


def Num(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Rule:
    if lo is None:
        desc = "a finite number"
    else:
        desc = f"a finite number {'>' if lo_open else '>='} {lo:g}" + (
            f" and <= {hi:g}" if hi is not None else "")

    def rule(v: Any) -> str | None:
        if not (isinstance(v, (int, float)) and not isinstance(v, bool)):
            return desc
        try:
            f = float(v)
        except OverflowError:
            return desc
        if not math.isfinite(f):
            return desc
        if lo is not None and (f <= lo if lo_open else f < lo):
            return desc
        if hi is not None and f > hi:
            return desc
        return None
    return rule


def Str() -> Rule:
    return lambda v: None if isinstance(v, str) else "a string"


def Bool() -> Rule:
    return lambda v: None if isinstance(v, bool) else "true or false"


def Dict() -> Rule:
    return lambda v: None if isinstance(v, dict) else "a JSON object"


def List(item: Rule | None = None, desc: str = "a list") -> Rule:
    def rule(v: Any) -> str | None:
        if not isinstance(v, list):
            return desc
        if item is not None and any(item(x) is not None for x in v):
            return desc
        return None
    return rule


def OneOf(*choices: Any) -> Rule:
    desc = "one of " + ", ".join(repr(c) for c in choices)
    return lambda v: None if isinstance(v, str) and v in choices else desc


def Opt(rule: Rule) -> Rule:
    def opt(v: Any) -> str | None:
        if v is None:
            return None
        r = rule(v)
        return None if r is None else f"null or {r}"
    return opt


def AnyOf(*rules: Rule, desc: str) -> Rule:
    return lambda v: None if any(r(v) is None for r in rules) else desc


def fail(where: str, message: str) -> VindexError:
    return VindexError(f"{where}: {message}", path=where.split(": ")[0])


def check_fields(doc: Mapping[str, Any], rules: Mapping[str, Rule], where: str,
                 prefix: str = "") -> None:
    """Apply ``rules`` to the fields of ``doc`` that are present; raise on the first failure."""
    for name, rule in rules.items():
        if name not in doc:
            continue
        problem = rule(doc[name])
        if problem is not None:
            raise fail(where, f"field '{prefix}{name}' must be {problem}, got "
                              f"{_show(doc[name])}")


# --------------------------------------------------------------------- index.json

def safe_file_name(name: Any) -> bool:
    """A plain file name inside the vindex folder: no separator, no ``..``, not hidden."""
    return (isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name
            and "\0" not in name and name not in (".", "..") and not name.startswith("."))


def _checksums(v: Any) -> str | None:
    desc = "an object of file name -> 64-digit lowercase sha256"
    if not isinstance(v, dict):
        return desc
    for k, s in v.items():
        if not safe_file_name(k):
            return f"{desc}, keys plain file names inside the vindex ({_show(k)} is not one)"
        if not isinstance(s, str) or not _HEX64.fullmatch(s):
            return f"{desc} ({_show(k)} has {_show(s)})"
    return None


INDEX_RULES: dict[str, Rule] = {
    "version": Int(1, 2),
    "model": Opt(Str()),
    "family": Opt(Str()),
    "dtype": OneOf("f16", "f32", "bf16"),
    "quant": Opt(OneOf("none", "q4k")),
    "source": Opt(Dict()),
    "checksums": Opt(_checksums),
    "index_checksum": Opt(lambda v: None if isinstance(v, str) and _HEX64.fullmatch(v)
                          else "a 64-digit lowercase sha256"),
    "num_layers": Int(1, MAX_LAYERS),
    "hidden_size": Int(1, MAX_HIDDEN),
    "intermediate_size": Opt(Int(0, MAX_FEATURES)),
    "vocab_size": Int(1, MAX_VOCAB),
    "embed_scale": Num(),
    "extract_level": OneOf("browse", "attention", "inference", "all"),
    "has_model_weights": Bool(),
    "down_top_k": Int(1, MAX_TOP_K),
    "layer_bands": Opt(Dict()),
    "layers": List(desc="a list of layer entries"),
    "model_config": Opt(Dict()),
    "weight_keys": Opt(Dict()),
}

_POS = Opt(Int(1, MAX_FEATURES * 16))
#: model_config fields the forward pass reads (others are kept and not checked)
MODEL_CONFIG_RULES: dict[str, Rule] = {
    "model_type": Opt(Str()),
    "hidden_size": _POS, "num_layers": _POS, "intermediate_size": Opt(Int(0, MAX_FEATURES * 16)),
    "vocab_size": _POS, "head_dim": _POS, "num_q_heads": _POS, "num_kv_heads": _POS,
    "embed_scale": Opt(Num()),
    "rope_base": Opt(Num(0, lo_open=True)), "rope_local_base": Opt(Num(0, lo_open=True)),
    "rope_scaling": Opt(Dict()),
    "partial_rotary_factor": Opt(Num(0, 1, lo_open=True)),
    "sliding_window": Opt(Int(1)),
    "layer_types": Opt(List(Str(), "a list of strings")),
    "activation": Opt(Str()), "norm_type": Opt(Str()),
    "rms_norm_eps": Opt(Num(0, lo_open=True)), "norm_eps": Opt(Num(0, lo_open=True)),
    "layer_norm_eps": Opt(Num(0, lo_open=True)),
    "norm_offset": Opt(Num()),
    "query_pre_attn_scalar": Opt(Num(0, lo_open=True)),
    "final_logit_softcapping": Opt(Num(0, lo_open=True)),
    "attn_logit_softcapping": Opt(Num(0, lo_open=True)),
    "tie_word_embeddings": Opt(Bool()), "attention_bias": Opt(Bool()),
    "attention_out_bias": Opt(Bool()), "mlp_bias": Opt(Bool()), "qk_norm": Opt(Bool()),
    "sandwich_norms": Opt(Bool()), "position_embedding": Opt(Str()),
    "max_position_embeddings": Opt(Int(1)),
    "bos_token_id": Opt(Int(0, MAX_VOCAB)), "pad_token_id": Opt(Int(0, MAX_VOCAB)),
    "eos_token_id": Opt(AnyOf(Int(0, MAX_VOCAB), List(Int(0, MAX_VOCAB)),
                              desc="a token id or a list of token ids")),
    # computation flags written by lql.families (docs/FAMILIES.md), Gemma 4's included
    "qkv_layout": Opt(Str()), "config_format": Opt(Str()),
    "per_layer": Opt(Dict()),
    "attn_scale": Opt(Num(0, lo_open=True)), "v_norm": Opt(Bool()), "layer_scalars": Opt(Bool()),
    "layer_k_eq_v": Opt(List(Bool(), "a list of true/false, one per layer")),
    "kv_shared_from": Opt(List(Opt(Int(0, MAX_LAYERS)), "a list of layer numbers or nulls")),
    "per_layer_input_size": Opt(Int(0, MAX_HIDDEN)),
    "per_layer_vocab_size": Opt(Int(1, MAX_VOCAB)),
    "num_experts": Opt(Int(0, 4096)), "top_k_experts": Opt(Int(0, 4096)),
    "moe_intermediate_size": Opt(Int(0, MAX_FEATURES * 16)),
}

_WEIGHT_KEYS_RULES: dict[str, Rule] = {"embed": Opt(Str()), "gate": Opt(Str()),
                                       "gate_transposed": Opt(Bool())}


def check_index(index: dict[str, Any], where: str) -> None:
    """Types and ranges of every index.json field a reader uses (``where``: the file)."""
    check_fields(index, INDEX_RULES, where)
    mc = index.get("model_config")
    if isinstance(mc, dict):
        check_fields(mc, MODEL_CONFIG_RULES, where, "model_config.")
    wk = index.get("weight_keys")
    if isinstance(wk, dict):
        check_fields(wk, _WEIGHT_KEYS_RULES, where, "weight_keys.")
        gate = wk.get("gate")
        if isinstance(gate, str):
            try:
                gate.format(layer=0)
            except (KeyError, IndexError, ValueError, AttributeError):
                raise fail(where, f"field 'weight_keys.gate' must be a pattern with only "
                                  f"{{layer}}, got {_show(gate)}") from None
    bands = index.get("layer_bands")
    if isinstance(bands, dict):
        n = int(index.get("num_layers", 0))
        for k, v in bands.items():
            if not (isinstance(v, list) and len(v) == 2 and all(is_int(x) for x in v)
                    and 0 <= v[0] <= v[1] < max(n, 1)):
                raise fail(where, f"field 'layer_bands.{k}' must be [lo, hi] with "
                                  f"0 <= lo <= hi <= {n - 1}, got {_show(v)}")


_LAYER_RULES: dict[str, Rule] = {"layer": Int(0, MAX_LAYERS), "num_features": Int(0, MAX_FEATURES),
                                 "offset": Int(0, MAX_BYTES), "length": Int(0, MAX_BYTES)}


def check_layer_entries(layers: list[Any], where: str) -> list[dict[str, int]]:
    """Each ``layers[i]`` has integer layer/num_features/offset/length ≥ 0; no layer twice;
    no two byte ranges overlap.  Returns the entries as plain int dicts."""
    out: list[dict[str, int]] = []
    seen: dict[int, int] = {}
    for i, e in enumerate(layers):
        if not isinstance(e, dict) or not all(k in e for k in _LAYER_RULES):
            raise fail(where, f"layers[{i}] must be an object with integer layer, "
                              f"num_features, offset, length")
        check_fields(e, _LAYER_RULES, where, f"layers[{i}].")
        entry = {k: int(e[k]) for k in _LAYER_RULES}
        if entry["layer"] in seen:
            raise fail(where, f"layers[{i}] repeats layer {entry['layer']} "
                              f"(also layers[{seen[entry['layer']]}])")
        seen[entry["layer"]] = i
        out.append(entry)
    spans = sorted((e["offset"], e["offset"] + e["length"], e["layer"]) for e in out if e["length"])
    for (a0, a1, la), (b0, _b1, lb) in zip(spans, spans[1:]):
        if b0 < a1:
            raise fail(where, f"layers {la} and {lb} overlap in gate_vectors.bin (bytes "
                              f"{a0}..{a1} and {b0}..)")
    return out


# --------------------------------------------------------------------- weight_manifest.json

_MANIFEST_RULES: dict[str, Rule] = {
    "key": Str(), "kind": Str(),
    "file": lambda v: None if safe_file_name(v) else "a plain file name inside the vindex",
    "offset": Int(0, MAX_BYTES), "length": Int(0, MAX_BYTES),
    "shape": List(Int(0, MAX_FEATURES * 16), "a list of non-negative integers"),
}


# --------------------------------------------------------------------- LARQL's structs
# What LARQL's serde (Divinci-AI/larql 4f6dfb4, crates/larql-vindex/src/config/types.rs)
# demands of an index.json: a required field must be present and non-null; an Option
# (``#[serde(default)]``) may be absent or null; a plain ``#[serde(default)]`` bool or enum
# may be absent but not null.  Unknown keys are ignored (no ``deny_unknown_fields``).
# Each entry: field -> (kind, required, source line).

def _usize(v: Any) -> bool:
    return is_int(v) and v >= 0


def _f64(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_usize(x) for x in v)


_LARQL_KINDS: dict[str, Callable[[Any], bool]] = {
    "u32": _usize, "usize": _usize, "u64": _usize, "f32": _f64, "f64": _f64,
    "string": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
    "map<string,string>": lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
    "vec<string>": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "level": lambda v: v in ("browse", "attention", "inference", "all"),       # :83-100
    "dtype": lambda v: v in ("f32", "f16"),                         # config/dtype.rs:9-16
    "quant": lambda v: v in ("none", "q4k"),                        # types.rs:142-148
    "(usize,usize)": _pair,
}

#: VindexConfig, types.rs:7-57
LARQL_INDEX_FIELDS: dict[str, tuple[str, bool, int]] = {
    "version": ("u32", True, 10), "model": ("string", True, 12), "family": ("string", True, 14),
    "source": ("object?", False, 17), "checksums": ("map<string,string>?", False, 20),
    "num_layers": ("usize", True, 22), "hidden_size": ("usize", True, 24),
    "intermediate_size": ("usize", True, 26), "vocab_size": ("usize", True, 28),
    "embed_scale": ("f32", True, 30), "extract_level": ("level", False, 33),
    "dtype": ("dtype", False, 36), "quant": ("quant", False, 43),
    "layer_bands": ("object?", False, 46), "layers": ("list", True, 48),
    "down_top_k": ("usize", True, 50), "has_model_weights": ("bool", False, 53),
    "model_config": ("object?", False, 56),
}
#: VindexSource, types.rs:61-72
LARQL_SOURCE_FIELDS: dict[str, tuple[str, bool, int]] = {
    "huggingface_repo": ("string?", False, 63), "huggingface_revision": ("string?", False, 65),
    "safetensors_sha256": ("string?", False, 67), "extracted_at": ("string", True, 69),
    "larql_version": ("string", True, 71),
}
#: LayerBands, types.rs:162-169
LARQL_BANDS_FIELDS: dict[str, tuple[str, bool, int]] = {
    "syntax": ("(usize,usize)", True, 164), "knowledge": ("(usize,usize)", True, 166),
    "output": ("(usize,usize)", True, 168),
}
#: VindexModelConfig, types.rs:251-306
LARQL_MODEL_CONFIG_FIELDS: dict[str, tuple[str, bool, int]] = {
    "model_type": ("string", True, 253), "head_dim": ("usize", True, 254),
    "num_q_heads": ("usize", True, 255), "num_kv_heads": ("usize", True, 256),
    "rope_base": ("f64", True, 257), "sliding_window": ("usize?", False, 259),
    "moe": ("object?", False, 262), "global_head_dim": ("usize?", False, 270),
    "num_global_kv_heads": ("usize?", False, 273), "partial_rotary_factor": ("f64?", False, 277),
    "sliding_window_pattern": ("usize?", False, 281), "layer_types": ("vec<string>?", False, 284),
    "attention_k_eq_v": ("bool", False, 287), "num_kv_shared_layers": ("usize?", False, 290),
    "per_layer_embed_dim": ("usize?", False, 293), "rope_local_base": ("f64?", False, 296),
    "query_pre_attn_scalar": ("f64?", False, 299), "final_logit_softcapping": ("f64?", False, 305),
}
#: MoeConfig, types.rs:310-329
LARQL_MOE_FIELDS: dict[str, tuple[str, bool, int]] = {
    "num_experts": ("usize", True, 312), "top_k": ("usize", True, 314),
    "shared_expert": ("bool", False, 317), "router_type": ("string", False, 320),
    "moe_intermediate_size": ("usize?", False, 324), "hybrid": ("bool", False, 328),
}
#: VindexLayerInfo, types.rs:337-350
LARQL_LAYER_FIELDS: dict[str, tuple[str, bool, int]] = {
    "layer": ("usize", True, 338), "num_features": ("usize", True, 339),
    "offset": ("u64", True, 341), "length": ("u64", True, 343),
    "num_experts": ("usize?", False, 346), "num_features_per_expert": ("usize?", False, 349),
}


def _larql_check(doc: Any, fields: dict[str, tuple[str, bool, int]], where: str) -> list[str]:
    if not isinstance(doc, dict):
        return [f"{where}: must be a JSON object"]
    problems = []
    for name, (kind, required, line) in fields.items():
        ref = f"types.rs:{line}"
        if name not in doc:
            if required:
                problems.append(f"{where}.{name}: missing (required, {ref})")
            continue
        v = doc[name]
        optional = kind.endswith("?")
        base = kind.rstrip("?")
        if v is None:
            if not optional:
                problems.append(f"{where}.{name}: null, LARQL's {base} is not optional ({ref})")
            continue
        check = _LARQL_KINDS.get(base)
        if base == "object":
            ok = isinstance(v, dict)
        elif base == "list":
            ok = isinstance(v, list)
        else:
            ok = check is not None and check(v)
        if not ok:
            problems.append(f"{where}.{name}: {_show(v)} is not a {base} ({ref})")
    return problems


def larql_index_problems(index: dict[str, Any]) -> list[str]:
    """Why LARQL's ``serde_json::from_str::<VindexConfig>`` would reject ``index`` (empty:
    it would accept it), checked against the structs transcribed above."""
    out = _larql_check(index, LARQL_INDEX_FIELDS, "index.json")
    if not isinstance(index, dict):
        return out
    if isinstance(index.get("source"), dict):
        out += _larql_check(index["source"], LARQL_SOURCE_FIELDS, "source")
    if isinstance(index.get("layer_bands"), dict):
        out += _larql_check(index["layer_bands"], LARQL_BANDS_FIELDS, "layer_bands")
    for i, e in enumerate(index.get("layers") or ()):
        out += _larql_check(e, LARQL_LAYER_FIELDS, f"layers[{i}]")
    mc = index.get("model_config")
    if isinstance(mc, dict):
        out += _larql_check(mc, LARQL_MODEL_CONFIG_FIELDS, "model_config")
        if isinstance(mc.get("moe"), dict):
            out += _larql_check(mc["moe"], LARQL_MOE_FIELDS, "model_config.moe")
    return out
