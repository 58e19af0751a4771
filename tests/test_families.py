"""Family descriptions against ``transformers`` itself.

Every expected value here is read off a ``transformers`` model built from the
same config (its modules, buffers and state dict), not copied from our output."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from model_fixtures import FAMILIES as FIXTURE_FAMILIES
from model_fixtures import tiny_model_dir

from lql.errors import UnsupportedArchitectureError
from lql.families import (
    FAMILIES,
    SUPPORTED_ROPE_TYPES,
    derive_bands,
    family_for_config,
    get_family,
    supported,
)

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

ACT_NAMES = {"SiLUActivation": "silu", "SiLU": "silu", "GELUTanh": "gelu_pytorch_tanh",
             "PytorchGELUTanh": "gelu_pytorch_tanh", "NewGELUActivation": "gelu_new",
             "GELUActivation": "gelu"}


def tiny_config(family: str) -> dict:
    return json.loads((tiny_model_dir(family) / "config.json").read_text())


def build(cfg: dict):
    """The transformers model for a config dict (random weights, float32)."""
    config = tf.AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items()
                                                           if k != "model_type"})
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def inv_freq(base: float, dim: int, scaling: dict | None) -> np.ndarray:
    inv = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if scaling and scaling["rope_type"] == "linear":
        inv = inv / scaling["factor"]
    return inv


def expected_from_model(model) -> dict:
    """What the transformers modules actually do, as model_config values."""
    cfg = model.config
    if cfg.model_type == "gpt2":
        base = model.transformer
        block = base.h[0]
        return {"hidden_size": base.wte.weight.shape[1], "num_layers": len(base.h),
                "intermediate_size": block.mlp.c_fc.weight.shape[1],
                "vocab_size": base.wte.weight.shape[0], "num_q_heads": block.attn.num_heads,
                "num_kv_heads": block.attn.num_heads, "head_dim": block.attn.head_dim,
                "activation": ACT_NAMES[type(block.mlp.act).__name__],
                "norm_eps": base.ln_f.eps, "max_position_embeddings": base.wpe.weight.shape[0],
                "embed_scale": 1.0}
    base = model.model
    layers = base.layers
    attn = layers[0].self_attn
    head_dim = attn.head_dim
    norm = base.norm
    out = {
        "hidden_size": base.embed_tokens.weight.shape[1],
        "num_layers": len(layers),
        "intermediate_size": layers[0].mlp.gate_proj.weight.shape[0],
        "vocab_size": base.embed_tokens.weight.shape[0],
        "head_dim": head_dim,
        "num_q_heads": attn.q_proj.weight.shape[0] // head_dim,
        "num_kv_heads": attn.k_proj.weight.shape[0] // head_dim,
        "activation": ACT_NAMES[type(layers[0].mlp.act_fn).__name__],
        "norm_eps": getattr(norm, "eps", getattr(norm, "variance_epsilon", None)),
        "attention_bias": attn.q_proj.bias is not None,
        "attention_out_bias": attn.o_proj.bias is not None,
        "mlp_bias": layers[0].mlp.gate_proj.bias is not None,
        "qk_norm": hasattr(attn, "q_norm"),
        "sandwich_norms": hasattr(layers[0], "pre_feedforward_layernorm"),
        "embed_scale": float(getattr(base.embed_tokens, "embed_scale", 1.0)),
        "attn_logit_softcapping": getattr(attn, "attn_logit_softcapping", None),
        "final_logit_softcapping": getattr(cfg, "final_logit_softcapping", None),
        "scaling": attn.scaling,
    }
    if cfg.model_type == "mistral":
        window = cfg.sliding_window
        out["windows"] = [window] * len(layers)
    else:
        out["windows"] = [getattr(layer.self_attn, "sliding_window", None) for layer in layers]
    rot = base.rotary_emb
    if hasattr(rot, "inv_freq"):
        out["inv_freq"] = {"full": rot.inv_freq.double().numpy()}
    else:
        out["inv_freq"] = {"full": rot.full_attention_inv_freq.double().numpy(),
                           "sliding": rot.sliding_attention_inv_freq.double().numpy()}
    return out


def check_against_model(mc: dict, model, tied: bool) -> None:
    exp = expected_from_model(model)
    for key in ("hidden_size", "num_layers", "intermediate_size", "vocab_size", "head_dim",
                "num_q_heads", "num_kv_heads", "activation", "attention_bias",
                "attention_out_bias", "mlp_bias", "qk_norm", "sandwich_norms",
                "attn_logit_softcapping", "final_logit_softcapping", "max_position_embeddings"):
        if key in exp:
            assert mc[key] == exp[key], key
    assert mc["norm_eps"] == pytest.approx(exp["norm_eps"], rel=1e-6)
    assert mc["embed_scale"] == pytest.approx(exp["embed_scale"], rel=1e-6)
    assert mc["tie_word_embeddings"] == tied
    if mc["model_type"] == "gpt2":
        return
    scalar = mc["query_pre_attn_scalar"] or mc["head_dim"]
    assert scalar ** -0.5 == pytest.approx(exp["scaling"], rel=1e-9)
    windows = [mc["sliding_window"] if t == "sliding_attention" else None for t in mc["layer_types"]]
    assert windows == exp["windows"]
    kind = (mc["rope_scaling"] or {}).get("rope_type", "default")
    if kind in ("default", "linear", "dynamic"):  # (dynamic starts from the default table)
        assert np.allclose(inv_freq(mc["rope_base"], mc["head_dim"],
                                    mc["rope_scaling"] if kind == "linear" else None),
                           exp["inv_freq"]["full"], rtol=1e-5)
    if "sliding" in exp["inv_freq"]:
        assert np.allclose(inv_freq(mc["rope_local_base"], mc["head_dim"], None),
                           exp["inv_freq"]["sliding"], rtol=1e-5)
    if mc["norm_offset"]:  # Gemma RMSNorm: x * (1 + w); a zero weight must act as identity
        norm = model.model.norm
        with torch.no_grad():
            norm.weight.zero_()
            x = torch.randn(3, mc["hidden_size"])
            rms = x / torch.sqrt((x * x).mean(-1, keepdim=True) + mc["norm_eps"])
            assert torch.allclose(norm(x), rms, atol=1e-5)


def state_keys(family, model, mc) -> set[str]:
    keys = {family.normalise_key(k) for k in model.state_dict()}
    keys.discard(None)
    if mc["tie_word_embeddings"]:
        keys.discard("lm_head.weight")
    return keys


# ------------------------------------------------------------------ the tiny families

@pytest.mark.parametrize("name", FIXTURE_FAMILIES)
def test_model_config_matches_transformers_modules(name):
    cfg = tiny_config(name)
    fam = family_for_config(cfg)
    mc = fam.model_config(cfg)
    model = build(cfg)
    check_against_model(mc, model, tied=cfg["tie_word_embeddings"])
    assert set(fam.keys(mc, "all")) == state_keys(fam, model, mc)


@pytest.mark.parametrize("name", FIXTURE_FAMILIES)
def test_hf_config_round_trip(name):
    """hf_config(model_config) builds the same model and normalises back to the same dict."""
    cfg = tiny_config(name)
    fam = family_for_config(cfg)
    mc = fam.model_config(cfg)
    back = fam.hf_config(mc)
    assert json.loads(json.dumps(back)) == back        # plain JSON
    assert fam.model_config(back) == mc
    model = build(back)
    check_against_model(mc, model, tied=mc["tie_word_embeddings"])
    assert set(fam.keys(mc, "all")) == state_keys(fam, model, mc)


@pytest.mark.parametrize("name", FIXTURE_FAMILIES)
def test_levels_and_roles(name):
    cfg = tiny_config(name)
    fam = family_for_config(cfg)
    mc = fam.model_config(cfg)
    browse = fam.tensors(mc, "browse")
    inference = fam.tensors(mc, "inference")
    everything = fam.tensors(mc, "all")
    n = mc["num_layers"]
    assert {s.key for s in browse} == {fam.embed_key} | {fam.gate_key(i) for i in range(n)} \
        | {fam.down_key(i) for i in range(n)}
    assert {s.key for s in browse} <= {s.key for s in inference} <= {s.key for s in everything}
    assert (fam.lm_head_key in {s.key for s in inference}) == (not mc["tie_word_embeddings"])
    for s in everything:
        assert s.file.endswith(".bin") and s.role
        assert (s.layer is None) == (f".{s.layer}." not in f".{s.key}")
    roles = {s.key: s.role for s in everything}
    assert roles[fam.gate_key(0)] == "gate" and roles[fam.down_key(0)] == "down"
    assert len(set(roles)) == len(everything)


@pytest.mark.parametrize("name", FIXTURE_FAMILIES)
def test_gate_rows_and_down_columns_act_like_the_modules(name):
    """gate_rows(W) @ x is the FFN's input projection; down_columns(W) @ h its output."""
    from safetensors.numpy import load_file

    folder = tiny_model_dir(name)
    cfg = tiny_config(name)
    fam = family_for_config(cfg)
    mc = fam.model_config(cfg)
    tensors = load_file(folder / "model.safetensors")
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    layer = 1
    gate = fam.gate_rows(tensors[fam.hf_key(fam.gate_key(layer))])
    down = fam.down_columns(tensors[fam.hf_key(fam.down_key(layer))])
    hidden, feats = mc["hidden_size"], fam.num_features(mc, layer)
    assert gate.shape == (feats, hidden) and down.shape == (hidden, feats)
    x = np.random.default_rng(1).standard_normal((2, hidden)).astype(np.float32)
    h = np.random.default_rng(2).standard_normal((2, feats)).astype(np.float32)
    with torch.no_grad():
        if name == "gpt2":
            mlp = model.transformer.h[layer].mlp
            ref_in = mlp.c_fc(torch.from_numpy(x)).numpy() - mlp.c_fc.bias.numpy()
            ref_out = mlp.c_proj(torch.from_numpy(h)).numpy() - mlp.c_proj.bias.numpy()
        else:
            mlp = model.model.layers[layer].mlp
            ref_in = mlp.gate_proj(torch.from_numpy(x)).numpy()
            ref_out = mlp.down_proj(torch.from_numpy(h)).numpy()
    assert np.allclose(x @ gate.T, ref_in, atol=1e-5)
    assert np.allclose(h @ down.T, ref_out, atol=1e-5)
    assert np.array_equal(fam.gate_weight(gate), tensors[fam.hf_key(fam.gate_key(layer))])
    assert np.array_equal(fam.down_weight(down), tensors[fam.hf_key(fam.down_key(layer))])


@pytest.mark.parametrize("name", FIXTURE_FAMILIES)
def test_key_naming_round_trip(name):
    from safetensors import safe_open

    folder = tiny_model_dir(name)
    fam = family_for_config(tiny_config(name))
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        for hf_name in f.keys():
            key = fam.normalise_key(hf_name)
            assert key is not None and not key.startswith(("model.", "transformer."))
            assert fam.hf_key(key) == hf_name


# ------------------------------------------------------------------ config variants

def small(family_cls_name: str, **kw) -> dict:
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=8,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    base.update(kw)
    cfg = getattr(tf, family_cls_name)(**base).to_dict()
    return cfg


VARIANTS = {
    # Gemma 3 without layer_types: pattern from sliding_window_pattern (old configs)
    "gemma3-pattern": lambda: _without(small("Gemma3TextConfig", head_dim=16, sliding_window=5,
                                             query_pre_attn_scalar=20), "layer_types",
                                       extra={"sliding_window_pattern": 3}),
    # Gemma 3 old-style RoPE keys with linear scaling on full-attention layers
    "gemma3-old-rope": lambda: _old_gemma3_rope(),
    "gemma2-default-layout": lambda: _without(small("Gemma2Config", head_dim=16, sliding_window=4),
                                              "layer_types"),
    "qwen2-sliding": lambda: small("Qwen2Config", use_sliding_window=True, sliding_window=5,
                                   max_window_layers=3),
    "qwen3-bias": lambda: small("Qwen3Config", head_dim=8, attention_bias=True),
    "mistral-no-window": lambda: small("MistralConfig", sliding_window=None),
    "llama-biases-linear-rope": lambda: small(
        "LlamaConfig", attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0}),
    "llama-yarn": lambda: small(
        "LlamaConfig", rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4,
                                        "original_max_position_embeddings": 64,
                                        "beta_fast": 16.0}),
    "qwen2-dynamic": lambda: small(
        "Qwen2Config", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}),
    "llama3-rope": lambda: small(
        "LlamaConfig", rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 64}),
    "llama-no-head-dim": lambda: _without(small("LlamaConfig"), "head_dim"),
    "gemma-gelu": lambda: small("GemmaConfig", head_dim=16, hidden_act="gelu"),
    "gpt2-inner": lambda: tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4,
                                        n_inner=80, n_positions=64).to_dict(),
}


def _without(cfg: dict, *keys, extra=None) -> dict:
    cfg = {k: v for k, v in cfg.items() if k not in keys and not k.startswith("_")}
    cfg.update(extra or {})
    return cfg


def _old_gemma3_rope() -> dict:
    cfg = _without(small("Gemma3TextConfig", head_dim=16, sliding_window=5), "rope_parameters")
    cfg.update(rope_theta=200_000.0, rope_local_base_freq=7_000.0,
               rope_scaling={"rope_type": "linear", "factor": 8.0})
    return cfg


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_variants_match_transformers(variant):
    cfg = VARIANTS[variant]()
    fam = family_for_config(cfg)
    mc = fam.model_config(copy.deepcopy(cfg))
    model = build(copy.deepcopy(cfg))
    check_against_model(mc, model, tied=model.config.tie_word_embeddings)
    assert set(fam.keys(mc, "all")) == state_keys(fam, model, mc)
    assert fam.model_config(fam.hf_config(mc)) == mc


def test_variant_details():
    mc = get_family("qwen2").model_config(VARIANTS["qwen2-sliding"]())
    assert mc["layer_types"] == ["full_attention"] * 3 + ["sliding_attention"] * 5
    mc = get_family("gemma3").model_config(VARIANTS["gemma3-pattern"]())
    assert mc["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"] * 2 \
        + ["sliding_attention"] * 2
    mc = get_family("gemma3").model_config(VARIANTS["gemma3-old-rope"]())
    assert (mc["rope_base"], mc["rope_local_base"]) == (200_000.0, 7_000.0)
    assert mc["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    mc = get_family("llama").model_config(VARIANTS["llama-biases-linear-rope"]())
    assert mc["attention_bias"] and mc["attention_out_bias"] and mc["mlp_bias"]
    assert mc["rope_base"] == 5000.0
    mc = get_family("llama").model_config(VARIANTS["llama-yarn"]())
    assert mc["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0,
                                  "original_max_position_embeddings": 64, "beta_fast": 16.0}
    mc = get_family("llama").model_config(VARIANTS["llama3-rope"]())
    assert mc["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def test_gemma3_multimodal_config_uses_text_config():
    text = tiny_config("gemma3_text")
    wrapper = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
               "text_config": {k: v for k, v in text.items() if k != "model_type"},
               "vision_config": {"model_type": "siglip_vision_model"}}
    fam = family_for_config(wrapper)
    assert fam.name == "gemma3"
    assert fam.model_config(wrapper) == fam.model_config(text)
    assert fam.normalise_key("model.language_model.layers.0.mlp.gate_proj.weight") \
        == "layers.0.mlp.gate_proj.weight"
    assert fam.normalise_key("language_model.model.norm.weight") == "norm.weight"
    assert fam.normalise_key("language_model.lm_head.weight") == "lm_head.weight"
    assert fam.normalise_key("model.vision_tower.vision_model.embeddings.patch_embedding.weight") \
        is None
    assert fam.normalise_key("multi_modal_projector.mm_input_projection_weight") is None


# ------------------------------------------------------------------ refusals

def test_unsupported_model_type_names_it_and_the_supported_list():
    with pytest.raises(UnsupportedArchitectureError) as err:
        family_for_config({"model_type": "mamba", "architectures": ["MambaForCausalLM"]})
    assert err.value.architecture == "mamba"
    assert set(supported()) <= set(err.value.supported)
    assert "mamba" in str(err.value) and "llama" in str(err.value)
    with pytest.raises(UnsupportedArchitectureError):
        get_family("falcon")


@pytest.mark.parametrize("change, words", [
    ({"rope_parameters": {"rope_type": "longrope", "factor": 4.0, "rope_theta": 1e4}},
     "longrope"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0, "alpha": 3}}, "alpha"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}}, "factor"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"hidden_act": "relu"}, "relu"),
    ({"use_bidirectional_attention": True}, "bidirectional"),
    ({"attention_chunk_size": 128}, "chunk"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "gptq"),
])
def test_unimplemented_config_details_are_refused(change, words):
    cfg = dict(tiny_config("llama"), **change)
    with pytest.raises(UnsupportedArchitectureError) as err:
        family_for_config(cfg).model_config(cfg)
    assert words in str(err.value)


@pytest.mark.parametrize("change", [{"scale_attn_by_inverse_layer_idx": True},
                                    {"scale_attn_weights": False},
                                    {"add_cross_attention": True}])
def test_gpt2_attention_tricks_are_refused(change):
    cfg = dict(tiny_config("gpt2"), **change)
    with pytest.raises(UnsupportedArchitectureError) as err:
        get_family("gpt2").model_config(cfg)
    assert next(iter(change)).split("_")[0] in str(err.value)


def test_gemma3_scaling_on_sliding_layers_is_refused():
    cfg = tiny_config("gemma3_text")
    cfg["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                              "sliding_attention": {"rope_type": "linear", "factor": 2.0,
                                                    "rope_theta": 1e4}}
    with pytest.raises(UnsupportedArchitectureError, match="sliding"):
        get_family("gemma3").model_config(cfg)


def test_supported_lists():
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text",
            "gemma4", "gemma4_text", "gpt2"} == set(supported())
    assert set(FAMILIES) == {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
                             "gemma4", "gpt2"}
    assert "default" in SUPPORTED_ROPE_TYPES
    assert family_for_config({"architectures": ["Qwen2ForCausalLM"]}).name == "qwen2"


# ------------------------------------------------------------------ bands

@pytest.mark.parametrize("n", range(1, 81))
def test_derived_bands_cover_every_layer(n):
    bands = derive_bands(n)
    assert set(bands) == {"syntax", "knowledge", "output"}
    (s0, s1), (k0, k1), (o0, o1) = bands["syntax"], bands["knowledge"], bands["output"]
    assert s0 == 0 and o1 == n - 1
    covered = set(range(s0, s1 + 1)) | set(range(k0, k1 + 1)) | set(range(o0, o1 + 1))
    assert covered == set(range(n))
    if n >= 3:
        assert s1 + 1 == k0 and k1 + 1 == o0 and s1 >= s0 and k1 >= k0 and o1 >= o0
    if n >= 8:       # LARQL's fallback (larql-vindex config/types.rs:217-227): 40 / 40 / 20
        assert s1 + 1 == n * 2 // 5 and o0 == n * 4 // 5


def test_known_bands_for_smollm2_depth():
    fam = get_family("llama")
    assert fam.bands_are_known(30)
    assert fam.layer_bands(30) == {"syntax": [0, 9], "knowledge": [10, 23], "output": [24, 29]}
    assert not fam.bands_are_known(31)
    assert fam.layer_bands(31) == derive_bands(31)


# ------------------------------------------------------------------ the family seams
# (lql.model reads flags only; each family owns its flags, GGUF names and extra tensors)

FLAG_KEYS = ("qkv_layout", "norm_type", "norm_offset", "activation", "position_embedding",
             "embed_scale", "qk_norm", "sandwich_norms", "attention_bias", "mlp_bias")


@pytest.mark.parametrize("mt", FIXTURE_FAMILIES)
def test_model_layout_reads_exactly_the_forward_keys(mt):
    """The tensors lql.model's layout (picked by the qkv_layout flag) reads are the ones
    the family declares its forward pass needs."""
    from lql.model.config import arch_spec
    from lql.model.layouts import layout_for
    fam = get_family(mt)
    mc = fam.model_config(tiny_config(mt))
    spec = arch_spec(mc, num_layers=mc["num_layers"], hidden_size=mc["hidden_size"])
    required = layout_for(mc).required(spec, mc["tie_word_embeddings"])
    assert set(required) == set(fam.forward_keys(mc))


@pytest.mark.parametrize("mt", FIXTURE_FAMILIES)
def test_model_flags_agree_with_model_config(mt):
    fam = get_family(mt)
    mc = fam.model_config(tiny_config(mt))
    flags = fam.model_flags(mc)
    assert "qkv_layout" in flags
    for key, value in flags.items():
        assert mc[key] == value, key


@pytest.mark.parametrize("mt", FIXTURE_FAMILIES)
def test_legacy_model_config_is_completed_from_model_type(mt):
    """An index.json model_config written before the flags existed builds the same model."""
    from test_model_adapter import hf_weights

    from lql.families import complete_model_config
    from lql.model import build_model
    fam = get_family(mt)
    mc = fam.model_config(tiny_config(mt))
    legacy = {k: v for k, v in mc.items() if k not in fam.model_flags(mc)}
    legacy.pop("qkv_layout", None)
    assert complete_model_config(legacy) == mc
    weights = hf_weights(tiny_model_dir(mt))
    ids = [1, 5, 9, 3]
    np.testing.assert_array_equal(build_model(legacy, weights).forward(ids).logits,
                                  build_model(mc, weights).forward(ids).logits)


def test_complete_model_config_refuses_an_unknown_model_type():
    from lql.families import complete_model_config
    with pytest.raises(UnsupportedArchitectureError, match="mamba"):
        complete_model_config({"model_type": "mamba"})


def test_lql_model_holds_no_family_names():
    """No model_type comparisons and no family-name literals in lql/model's code
    (docstrings may name the families a computation came from)."""
    import ast
    from pathlib import Path

    import lql.model
    names = set(supported()) | set(FAMILIES)
    for path in Path(lql.model.__file__).parent.glob("*.py"):
        if path.name == "chat.py":
            continue  # chat templates: token text, not architecture
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings:
                assert node.value not in names, f"{path.name}: {node.value!r}"
        assert "model_type ==" not in path.read_text(), path.name


def test_gguf_architectures_come_from_the_families():
    from lql.families import family_for_gguf, gguf_architectures
    assert gguf_architectures() == ["gemma", "gemma2", "gemma3", "gemma4", "gpt2", "llama", "qwen2",
                                    "qwen3"]
    assert family_for_gguf("gemma3").model_types[0] == "gemma3_text"
    assert family_for_gguf("llama") is get_family("llama")
    with pytest.raises(UnsupportedArchitectureError, match="mamba GGUF"):
        family_for_gguf("mamba")
    gemma, gpt2, llama = get_family("gemma2"), get_family("gpt2"), get_family("llama")
    assert gemma.gguf_norm_shift("blk.0.attn_norm.weight") == 1.0
    assert gemma.gguf_norm_shift("blk.0.attn_q.weight") == 0.0
    assert llama.gguf_norm_shift("blk.0.attn_norm.weight") == 0.0
    assert gpt2.gguf_transposed("blk.0.ffn_up.weight") and not llama.gguf_transposed("blk.0.ffn_up.weight")
    assert llama.gguf_permute_heads("blk.0.attn_k.weight",
                                    {"num_attention_heads": 8, "num_key_value_heads": 2}) == 2
    assert get_family("qwen2").gguf_permute_heads("blk.0.attn_k.weight",
                                                  {"num_attention_heads": 8}) is None


def test_a_new_family_declares_extra_tensors_geometry_and_ignored_tensors():
    """The seams a family like Gemma 4 needs, on a made-up subclass."""
    from lql.families.base import TensorSpec, spec
    from lql.families.llama import Llama

    class PerLayerLlama(Llama):
        name = "per_layer_llama"
        ignored_prefixes = ("audio_tower.",)

        def extra_tensors(self, mc):
            return [spec("embed_tokens_per_layer.weight", "embed", "inference", None,
                         "per_layer_embeddings.bin")]

    fam = PerLayerLlama()
    mc = get_family("llama").model_config(tiny_config("llama"))
    n = mc["num_layers"]
    mc["per_layer"] = {"head_dim": [mc["head_dim"]] * (n - 1) + [2 * mc["head_dim"]],
                       "intermediate_size": [7] * n}
    extra = [s for s in fam.tensors(mc, "inference") if s.file == "per_layer_embeddings.bin"]
    assert extra == [TensorSpec("embed_tokens_per_layer.weight", "embed", "inference", None,
                                "per_layer_embeddings.bin")]
    assert not [s for s in fam.tensors(mc, "browse") if s.file == "per_layer_embeddings.bin"]
    assert fam.layer_geometry(mc, n - 1).head_dim == 2 * mc["head_dim"]
    assert fam.layer_geometry(mc, 0).head_dim == mc["head_dim"]
    assert fam.num_features(mc, 0) == 7
    keys = fam.keys(mc) + ["audio_tower.conv.weight", "layers.0.mlp.router.weight"]
    assert fam.unclaimed(mc, keys) == ["layers.0.mlp.router.weight"]
    assert fam.normalise_key("model.audio_tower.conv.weight") is None


def test_lql_model_runs_per_layer_head_geometry():
    """per_layer head counts equal to the model-wide ones change nothing; a wrong length
    is refused."""
    from test_model_adapter import hf_weights

    from lql.errors import LqlError
    from lql.model import build_model
    mc = get_family("qwen2").model_config(tiny_config("qwen2"))
    n = mc["num_layers"]
    weights = hf_weights(tiny_model_dir("qwen2"))
    per = dict(mc, per_layer={"num_kv_heads": [mc["num_kv_heads"]] * n,
                              "head_dim": [mc["head_dim"]] * n})
    ids = [4, 2, 7]
    np.testing.assert_array_equal(build_model(per, weights).forward(ids).logits,
                                  build_model(mc, weights).forward(ids).logits)
    with pytest.raises(LqlError, match="per_layer.head_dim"):
        build_model(dict(mc, per_layer={"head_dim": [mc["head_dim"]]}), weights)
    # a real per-layer change reaches the layer: layer 0 with twice the KV heads no longer fits
    kv = [2 * mc["num_kv_heads"]] + [mc["num_kv_heads"]] * (n - 1)
    if mc["num_q_heads"] % (2 * mc["num_kv_heads"]) == 0:
        with pytest.raises(LqlError, match="layers.0.self_attn.k_proj"):
            build_model(dict(mc, per_layer={"num_kv_heads": kv}), weights)


def test_vindex_weights_without_weight_keys_use_the_family_names():
    from lql.vindex.weights import VindexWeights

    class FakeVindex:
        index: dict = {}
        layers = [0, 1]
        level = "browse"
        path = "x"

        def __init__(self, family):
            self.family = family

        def gate(self, layer):
            return np.arange(6, dtype=np.float32).reshape(3, 2)

    # VindexWeights holds a weak proxy of its vindex (the vindex owns it): keep it alive
    gpt2_vindex = FakeVindex("gpt2")
    w = VindexWeights(gpt2_vindex, [])
    assert "wte.weight" in w and "h.1.mlp.c_fc.weight" in w and "embed_tokens.weight" not in w
    assert w["h.0.mlp.c_fc.weight"].shape == (2, 3)  # Conv1D: stored transposed
    llama_vindex = FakeVindex("llama")
    w = VindexWeights(llama_vindex, [])
    assert "layers.1.mlp.gate_proj.weight" in w and "wte.weight" not in w
    assert w["layers.0.mlp.gate_proj.weight"].shape == (3, 2)
