"""RoPE scaling types against transformers: inverse frequencies, and whole-model logits
with scaled RoPE (Llama with llama3/linear/yarn/dynamic; Gemma 3 with linear on global layers)."""

from __future__ import annotations

import numpy as np
import pytest
from model_fixtures import tiny_model_dir
from test_model_adapter import hf_model_config, hf_weights

from lql.model import build_model
from lql.model.config import RopeSpec, _freeze
from lql.model.rope import Rope

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity

IDS = [504, 3458, 282, 4649, 314, 1069, 28, 253, 1345, 6341, 30, 378, 800, 2, 99, 1200, 77, 901, 3, 45]

SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
}


def _hf_config(scaling: dict, max_pos: int):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=max_pos,
                       rope_parameters={"rope_theta": 10000.0, **scaling})


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_inverse_frequencies_match_transformers(name):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    scaling = SCALINGS[name]
    max_pos = 16 if name == "dynamic" else 512
    seq_len = 40 if name == "dynamic" else None
    ref, ref_attention = ROPE_INIT_FUNCTIONS[name](_hf_config(scaling, max_pos), "cpu", seq_len=seq_len)
    rope = Rope(RopeSpec(10000.0, 16, _freeze(scaling), max_pos))
    ours = rope._inv_freq_for(seq_len or 1)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    assert rope.attention_factor == pytest.approx(ref_attention)
    if name != "dynamic":
        default = Rope(RopeSpec(10000.0, 16, None, max_pos)).inv_freq
        assert np.abs(ours - default).max() > 1e-3  # the scaling really does something


def _parity(family: str, hf_overrides: dict, our_overrides: dict):
    import json

    from transformers import AutoConfig, AutoModelForCausalLM
    folder = tiny_model_dir(family)
    config = AutoConfig.from_pretrained(folder)
    for k, v in hf_overrides.items():
        setattr(config, k, v)
    ref_model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    with torch.no_grad():
        ref = ref_model(torch.tensor([IDS])).logits[0, -1].numpy()
    cfg = dict(hf_model_config(json.loads((folder / "config.json").read_text())), **our_overrides)
    weights = hf_weights(folder)
    ours = build_model(cfg, weights).forward(IDS).logits
    plain = build_model(hf_model_config(json.loads((folder / "config.json").read_text())), weights)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert np.abs(plain.forward(IDS).logits - ref).max() > 1e-3  # scaling changed the model


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_llama_with_rope_scaling_matches_transformers(name):
    scaling = SCALINGS[name]
    max_pos = 8 if name == "dynamic" else 512  # dynamic only acts past max_position_embeddings
    _parity("llama", {"rope_parameters": {"rope_theta": 10000.0, **scaling}, "max_position_embeddings": max_pos},
            {"rope_scaling": scaling, "max_position_embeddings": max_pos})


def test_gemma3_linear_scaling_on_global_layers_matches_transformers():
    params = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
              "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    _parity("gemma3_text", {"rope_parameters": params}, {"rope_scaling": {"rope_type": "linear", "factor": 8.0}})
