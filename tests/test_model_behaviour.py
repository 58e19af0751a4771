"""lql.model without transformers: errors, KV cache, records, hooks, generation — checked
against independent numpy computations on the source weights."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from model_fixtures import tiny_model_dir
from test_model_adapter import hf_model_config, hf_weights

from lql.errors import ExecutionError, LqlError, MissingTensorError, UnsupportedArchitectureError
from lql.model import Hooks, Record, build_model
from lql.runtime import greedy

IDS = [504, 3458, 282, 4649, 314, 1069, 28, 253, 1345, 6341, 30, 378, 800, 2]  # 14 tokens > window 6


@functools.cache
def inputs(family):
    import json
    folder = tiny_model_dir(family)
    return hf_model_config(json.loads((folder / "config.json").read_text())), hf_weights(folder)


def model(family, **overrides):
    cfg, weights = inputs(family)
    return build_model(dict(cfg, **overrides), weights)


# ------------------------------------------------------------------ refusals

def test_missing_tensor_names_every_missing_key():
    cfg, weights = inputs("llama")
    partial = {k: v for k, v in weights.items()
               if k not in ("layers.1.mlp.up_proj.weight", "lm_head.weight")}
    with pytest.raises(MissingTensorError) as err:
        build_model(cfg, partial)
    assert set(err.value.keys) == {"layers.1.mlp.up_proj.weight", "lm_head.weight"}
    assert "layers.1.mlp.up_proj.weight" in str(err.value)


def test_missing_family_specific_tensors():
    cfg, weights = inputs("gemma3_text")
    partial = {k: v for k, v in weights.items() if "q_norm" not in k}
    with pytest.raises(MissingTensorError) as err:
        build_model(cfg, partial)
    assert "layers.0.self_attn.q_norm.weight" in err.value.keys


def test_wrong_shape_names_the_tensor():
    cfg, weights = inputs("llama")
    bad = dict(weights)
    bad["layers.2.self_attn.k_proj.weight"] = np.zeros((3, 64), np.float32)
    with pytest.raises(LqlError, match="layers.2.self_attn.k_proj.weight"):
        build_model(cfg, bad)


@pytest.mark.parametrize("override, match", [
    (dict(model_type="mamba"), "mamba"),
    (dict(rope_scaling={"rope_type": "longrope", "factor": 2.0}), "longrope"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(activation="relu2"), "relu2"),
    (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    (dict(layer_types=["full_attention", "chunked_attention", "full_attention"]), "chunked_attention"),
])
def test_unimplemented_config_is_refused(override, match):
    with pytest.raises(UnsupportedArchitectureError, match=match):
        model("llama", **override)


def test_bad_tokens_and_positions_are_execution_errors():
    with pytest.raises(ExecutionError, match="out of range"):
        model("llama").forward([10**6])
    with pytest.raises(ExecutionError, match="positions"):
        model("gpt2").forward(list(range(600)))


# ------------------------------------------------------------------ KV cache and generation

@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "gemma3_text", "gpt2"])
def test_kv_cache_matches_full_forward(family):
    m = model(family)
    full = m.forward(IDS).logits
    cache = m.new_cache()
    m.forward(IDS[:5], cache=cache)
    m.forward(IDS[5:9], cache=cache)
    for token in IDS[9:]:
        out = m.forward([token], cache=cache)
    assert cache.length == len(IDS)
    np.testing.assert_allclose(out.logits, full, atol=1e-4)


def test_generate_is_argmax_of_full_forward_and_stops():
    m = model("qwen2")
    got = list(greedy(m, IDS[:4], 6, stop_ids=()))
    seq = list(IDS[:4])
    for token in got:
        assert token == int(np.argmax(m.forward(seq).logits))
        seq.append(token)
    assert len(got) == 6
    stopped = list(greedy(m, IDS[:4], 6, stop_ids=[got[2]]))
    assert stopped == got[:3]


# ------------------------------------------------------------------ records

@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_records_are_consistent(family):
    m = model(family)
    out = m.forward(IDS, record=Record.everything("all"))
    total = out.embedding + sum(out.attn_deltas) + sum(out.ffn_deltas)
    np.testing.assert_allclose(total, out.residuals[-1], atol=1e-4)
    np.testing.assert_allclose(out.residuals[-1][-1], out.hidden, atol=0)
    np.testing.assert_allclose(m.logits_from_hidden(out.hidden), out.logits, atol=1e-5)
    assert out.attention[0].shape == (m.spec.num_q_heads, len(IDS), len(IDS))
    np.testing.assert_allclose(out.attention[0].sum(-1), 1.0, atol=1e-5)
    last = m.forward(IDS, record=Record(residuals="last", attention="last", layers=frozenset({1})))
    assert last.residuals[0] is None and last.residuals[2] is None
    np.testing.assert_allclose(last.residuals[1], out.residuals[1][-1], atol=1e-6)
    np.testing.assert_allclose(last.attention[1], out.attention[1][:, -1], atol=1e-7)


def test_sliding_window_hides_old_positions():
    out = model("mistral").forward(IDS, record=Record(attention="last"))
    probs = out.attention[0]  # [heads, S] for the last query
    assert np.all(probs[:, :len(IDS) - 6] == 0) and np.all(probs[:, len(IDS) - 6:] > 0)


def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def test_ffn_activations_match_numpy_on_source_weights():
    cfg, w = inputs("llama")
    m = model("llama")
    out = m.forward(IDS, record=Record(residuals="last", deltas="last", ffn_activations=True))
    for i in range(m.num_layers):
        before_ffn = out.residuals[i] - out.ffn_deltas[i]
        x = rms(before_ffn, w[f"layers.{i}.post_attention_layernorm.weight"], cfg["rms_norm_eps"])
        gate = w[f"layers.{i}.mlp.gate_proj.weight"] @ x
        up = w[f"layers.{i}.mlp.up_proj.weight"] @ x
        expect = gate / (1 + np.exp(-gate)) * up
        np.testing.assert_allclose(out.ffn_activations[i], expect, atol=1e-4)
        np.testing.assert_allclose(w[f"layers.{i}.mlp.down_proj.weight"] @ expect, out.ffn_deltas[i], atol=1e-4)


# ------------------------------------------------------------------ hooks

@pytest.mark.parametrize("family, down", [("llama", "layers.1.mlp.down_proj.weight"),
                                           ("gpt2", "h.1.mlp.c_proj.weight"),
                                           ("gemma2", "layers.1.mlp.down_proj.weight")])
def test_ffn_hook_equals_editing_the_weights(family, down):
    cfg, weights = inputs(family)
    zeroed = dict(weights)
    zeroed[down] = np.zeros_like(weights[down])
    if family == "gpt2":
        zeroed["h.1.mlp.c_proj.bias"] = np.zeros_like(weights["h.1.mlp.c_proj.bias"])
    expect = build_model(cfg, zeroed).forward(IDS).logits
    seen = []

    def kill_layer_1(layer, x, out):
        seen.append((layer, x.shape))
        return np.zeros_like(out) if layer == 1 else out

    got = model(family).forward(IDS, hooks=Hooks(ffn=kill_layer_1)).logits
    np.testing.assert_allclose(got, expect, atol=1e-5)
    assert seen[0] == (0, (len(IDS), cfg["hidden_size"]))
    plain = model(family).forward(IDS).logits
    assert np.abs(plain - expect).max() > 1e-3  # the edit really changed something


def test_identity_hooks_change_nothing_and_residual_hook_steers():
    m = model("qwen3")
    plain = m.forward(IDS).logits
    ident = Hooks(attention=lambda i, x, o: o, ffn=lambda i, x, o: o, residual=lambda i, h: h)
    np.testing.assert_array_equal(m.forward(IDS, hooks=ident).logits, plain)
    direction = m.head[1234] / np.linalg.norm(m.head[1234])
    steer = Hooks(residual=lambda i, h: h + 50 * direction if i == m.num_layers - 1 else h)
    steered = m.forward(IDS, hooks=steer).logits
    assert steered[1234] - plain[1234] > 1.0
    assert int(np.argmax(steered)) == 1234


# ------------------------------------------------------------------ non-finite guard

def test_nan_in_a_weight_is_an_error_naming_the_layer_and_the_weight():
    from lql.errors import NonFiniteError
    cfg, weights = inputs("llama")
    poisoned = dict(weights)
    w = np.array(weights["layers.1.mlp.down_proj.weight"], dtype=np.float32)
    w[3, 5] = np.nan
    poisoned["layers.1.mlp.down_proj.weight"] = w
    m = build_model(cfg, poisoned)
    with pytest.raises(NonFiniteError) as err:
        m.forward(IDS[:5])
    assert err.value.layer == 1                      # layer 0 is clean: found at the first bad layer
    assert "after layer 1" in str(err.value) and "holds NaN/Inf" in str(err.value)
    assert err.value.tensor is not None and "down" in err.value.tensor


def test_non_finite_from_finite_weights_names_the_layer_and_says_so():
    from lql.errors import NonFiniteError
    cfg, weights = inputs("llama")
    huge = dict(weights)
    huge["layers.0.mlp.down_proj.weight"] = np.full_like(
        np.asarray(weights["layers.0.mlp.down_proj.weight"], dtype=np.float32), 3e38)
    m = build_model(cfg, huge)
    with np.errstate(over="ignore"), \
            pytest.raises(NonFiniteError, match=r"after layer 0 \(the weights it read are finite"):
        m.forward(IDS[:5])                           # the overflow is the point: no warning


def test_finite_model_is_unaffected_by_the_guard():
    m = model("llama")
    out = m.forward(IDS[:5])
    assert np.isfinite(out.logits).all()
