"""Gemma 4 text models in lql.model against transformers (float32, eager attention).

Fixtures: the two tiny Gemma 4 models in /work/shared/fixtures/gemma4 (dense + PLE + KV
sharing + double-wide MLP + proportional RoPE; MoE + attention_k_eq_v), and variants built
here with transformers: one whose config.json is in the Hub format
(``global_head_dim`` / ``num_global_key_value_heads``), and one
``Gemma4ForConditionalGeneration`` checkpoint (``model.language_model.`` prefixes,
``text_config`` nested, a vision tower to ignore, zero-padded ``per_layer_config`` keys).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import _build_once, _code_key, gemma4_fixtures

from lql.families.gemma4 import Gemma4
from lql.model import Record, build_model
from lql.runtime import greedy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Gemma4ForCausalLM"):
    pytest.skip("transformers has no Gemma 4", allow_module_level=True)
pytestmark = pytest.mark.parity
torch.set_num_threads(2)

FIXTURES = gemma4_fixtures()
MODELS = ("tiny-gemma4", "tiny-gemma4-moe", "hub-format", "conditional")
PROMPTS = (
    [2, 17],
    # well past the sliding window (4) of every model here
    [2, 105, 33, 200, 7, 7, 211, 48, 90, 241, 23, 5, 160, 299, 64, 3],
)
_KEY = _code_key(hashlib.sha256(Path(__file__).read_bytes()).hexdigest())


def _perturb(model) -> None:
    """Move every norm weight / layer_scalar / router scale away from its init value."""
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.1)
        for name, buf in model.named_buffers():
            if name.endswith("layer_scalar"):
                buf.mul_(1.0 + 0.2 * torch.rand_like(buf))


def _text_kwargs(**over):
    kw = dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, sliding_window=4, max_position_embeddings=256,
              hidden_size_per_layer_input=4, vocab_size_per_layer_input=300, final_logit_softcapping=20.0,
              initializer_range=0.15, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    kw.update(over)
    return kw


def _build_hub(out: Path) -> None:
    """KV sharing + PLE + double-wide + k_eq_v, config.json rewritten to the Hub format."""
    cfg = transformers.Gemma4TextConfig(**_text_kwargs(
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                     "full_attention", "full_attention"],
        num_kv_shared_layers=2, use_double_wide_mlp=True, attention_k_eq_v=True,
        global_head_dim=16, num_global_key_value_heads=1))
    torch.manual_seed(7)
    model = transformers.Gemma4ForCausalLM(cfg).eval()
    _perturb(model)
    model.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["per_layer_config"]  # what transformers writes ...
    del saved["per_layer_config"]     # ... and what Hub checkpoints have instead
    saved["global_head_dim"], saved["num_global_key_value_heads"] = 16, 1
    (out / "config.json").write_text(json.dumps(saved, indent=2))


def _build_conditional(out: Path) -> None:
    """Gemma4ForConditionalGeneration: 11 layers so per_layer_config keys are zero-padded."""
    types = ["sliding_attention", "sliding_attention", "full_attention"] * 3 + ["sliding_attention",
                                                                                 "full_attention"]
    text = transformers.Gemma4TextConfig(**_text_kwargs(num_hidden_layers=11, layer_types=types,
                                                        num_kv_shared_layers=3, global_head_dim=16,
                                                        tie_word_embeddings=True))
    vision = transformers.Gemma4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                             position_embedding_size=64)
    cfg = transformers.Gemma4Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                    tie_word_embeddings=True)
    torch.manual_seed(11)
    model = transformers.Gemma4ForConditionalGeneration(cfg).eval()
    _perturb(model)
    model.save_pretrained(out)


def folder(name: str) -> Path:
    if name in ("tiny-gemma4", "tiny-gemma4-moe"):
        path = FIXTURES / name
        if not (path / "model.safetensors").is_file():
            pytest.skip(f"{path} is missing")
        return path
    build = {"hub-format": _build_hub, "conditional": _build_conditional}[name]
    return _build_once(f"gemma4-{name}-{_KEY}", build)


def load(path: Path) -> tuple[dict, dict]:
    """(model_config, normalised weights) through the gemma4 family description."""
    from safetensors.numpy import load_file

    fam = Gemma4()
    mc = fam.model_config(json.loads((path / "config.json").read_text()))
    fam = fam.for_config(mc)
    weights = {}
    for key, value in load_file(str(path / "model.safetensors")).items():
        norm = fam.normalise_key(key)
        if norm is not None:
            weights[norm] = value
    return mc, weights


@functools.lru_cache(maxsize=4)
def ours(name: str):
    return build_model(*load(folder(name)))


@functools.lru_cache(maxsize=1)
def reference(name: str):
    cls = transformers.Gemma4ForConditionalGeneration if name == "conditional" else transformers.Gemma4ForCausalLM
    return cls.from_pretrained(folder(name), dtype=torch.float32, attn_implementation="eager").eval()


def softmax(x):
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


# ------------------------------------------------------------------ config mapping

def test_config_mapping_of_the_fixtures():
    mc, weights = load(folder("tiny-gemma4"))
    assert mc["per_layer"]["head_dim"] == [16, 16, 32, 16, 16, 32]
    assert mc["kv_shared_from"] == [None, None, None, 1, 1, 2]
    assert mc["per_layer"]["intermediate_size"] == [128, 128, 128, 256, 256, 256]
    assert mc["per_layer_input_size"] == 8 and mc["norm_offset"] == 0.0 and mc["attn_scale"] == 1.0
    assert mc["rope_scaling"]["full_attention"]["rope_type"] == "proportional"
    moe, _ = load(folder("tiny-gemma4-moe"))
    assert moe["per_layer"]["num_kv_heads"] == [2, 2, 2, 2, 2, 1]
    assert moe["layer_k_eq_v"] == [False] * 5 + [True]
    assert (moe["num_experts"], moe["top_k_experts"], moe["per_layer_input_size"]) == (4, 2, 0)


def test_hub_and_conditional_configs_map_like_transformers():
    for name in ("hub-format", "conditional"):
        mc, weights = load(folder(name))
        text = reference(name).config.get_text_config()
        for i in range(mc["num_layers"]):
            layer = text.per_layer_config[i]
            assert mc["per_layer"]["head_dim"][i] == layer.head_dim
            assert mc["per_layer"]["num_kv_heads"][i] == layer.num_key_value_heads
        modes = text.kv_sharing_modes
        assert [s is not None for s in mc["kv_shared_from"]] == [m == "reuse" for m in modes]
        assert not any(k.startswith(("vision", "embed_vision", "model.")) for k in weights)
    raw = json.loads((folder("conditional") / "config.json").read_text())
    assert "08" in raw["text_config"]["per_layer_config"]  # zero-padded keys were read


def test_shipped_kv_tensors_on_shared_layers_are_ignored():
    mc, weights = load(folder("tiny-gemma4"))
    weights = dict(weights)
    weights["layers.4.self_attn.k_proj.weight"] = np.full((16, 64), np.nan, np.float32)
    fam = Gemma4().for_config(mc)
    assert fam.normalise_key("model.layers.4.self_attn.k_proj.weight") is None
    assert fam.normalise_key("model.language_model.layers.2.self_attn.k_proj.weight") == \
        "layers.2.self_attn.k_proj.weight"
    assert np.isfinite(build_model(mc, weights).forward(PROMPTS[1]).logits).all()


# ------------------------------------------------------------------ numbers

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(name, prompt):
    out = ours(name).forward(prompt)
    with torch.no_grad():
        ref = reference(name)(torch.tensor([prompt])).logits[0, -1].numpy()
    assert np.argsort(-out.logits, kind="stable")[:10].tolist() == np.argsort(-ref, kind="stable")[:10].tolist()
    assert np.abs(softmax(out.logits) - softmax(ref)).max() <= 1e-4
    assert np.abs(out.logits - ref).max() <= 1e-4


@functools.lru_cache(maxsize=1)
def reference64(name: str):
    import copy
    model = copy.deepcopy(reference(name)).double()
    model.config.get_text_config()._experts_implementation = "eager"  # grouped_mm has no float64
    for module in model.modules():
        if hasattr(module, "config") and hasattr(module.config, "_experts_implementation"):
            module.config._experts_implementation = "eager"
    return model


@pytest.mark.parametrize("name", MODELS)
def test_hidden_states_per_layer_match_transformers(name):
    ids = PROMPTS[1]
    model = ours(name)
    out = model.forward(ids, record=Record(residuals="all"))
    with torch.no_grad():
        ref = reference(name)(torch.tensor([ids]), output_hidden_states=True).hidden_states
        ref64 = reference64(name)(torch.tensor([ids]), output_hidden_states=True).hidden_states
    n = model.num_layers
    assert len(ref) == n + 1
    np.testing.assert_allclose(out.embedding, ref[0][0].numpy(), atol=1e-5)
    # transformers' last hidden state is after the final norm
    mine = [out.residuals[i] for i in range(n - 1)] + [model.final_norm(out.residuals[n - 1])]
    for i, h in enumerate(mine):
        theirs, exact = ref[i + 1][0].numpy(), ref64[i + 1][0].numpy()
        err = float(np.abs(h - theirs).max())
        # Within 1e-4 of transformers float32 — or, where the norms of the deeper layers amplify
        # float32 rounding (transformers float32 is itself ~1e-4 off its own float64 there), an
        # error against float64 of the same order as transformers float32's own.
        own_err, hf_err = float(np.abs(h - exact).max()), float(np.abs(theirs - exact).max())
        assert err <= 1e-4 or own_err <= 2 * max(hf_err, 1e-4), (i, err, own_err, hf_err)
        assert err <= 5e-4, (i, err)


def _recompute_greedy(model, ids, n, stop):
    seq, out = list(ids), []
    for _ in range(n):
        token = int(np.argmax(model.forward(seq).logits))
        out.append(token)
        seq.append(token)
        if token in stop:
            break
    return out


@pytest.mark.parametrize("name", MODELS)
def test_greedy_generation_matches_transformers_and_recompute(name):
    ids = PROMPTS[1][:6]
    model = ours(name)
    got = list(greedy(model, ids, 20))  # stops after <eos> (id 1), as transformers does
    assert len(got) >= 8
    with torch.no_grad():
        ref = reference(name).generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                                       attention_mask=torch.ones(1, len(ids), dtype=torch.long), pad_token_id=0)
    assert got == ref[0, len(ids):].tolist()
    assert got == _recompute_greedy(model, ids, 20, set(model.spec.eos_token_ids))


# ------------------------------------------------------------------ structure

def test_shared_layers_alias_their_source_cache():
    model = ours("tiny-gemma4")
    cache = model.new_cache()
    assert cache.layers[3] is cache.layers[1] and cache.layers[4] is cache.layers[1]
    assert cache.layers[5] is cache.layers[2] and cache.layers[2] is not cache.layers[1]
    model.forward(PROMPTS[1], cache=cache)
    own = {id(c): c for c in cache.layers}.values()
    assert cache.nbytes() == sum(c.keys.nbytes + c.values.nbytes for c in own)
    assert cache.layers[5].length == len(PROMPTS[1])


def test_per_layer_table_is_gathered_in_its_storage_dtype(tmp_path):
    mc, weights = load(folder("tiny-gemma4"))
    table = weights["embed_tokens_per_layer.weight"]
    mm = np.lib.format.open_memmap(tmp_path / "ple.npy", mode="w+", dtype=np.float16, shape=table.shape)
    mm[:] = table.astype(np.float16)
    weights = dict(weights, **{"embed_tokens_per_layer.weight": mm})
    model = build_model(mc, weights)
    assert model.per_layer_embed.table is mm  # not converted to float32 as a whole
    rows = model.per_layer_embed.token_part(np.array([5, 9]))
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows[1].reshape(-1), mm[9].astype(np.float32) * np.float32(np.sqrt(8)))


def test_proportional_rope_frequencies():
    from lql.model.rope import proportional_inv_freq
    inv = proportional_inv_freq(1_000_000.0, 32, 0.25)
    assert inv.shape == (16,) and (inv[4:] == 0).all()
    expected = 1.0 / (1_000_000.0 ** (np.arange(0, 8, 2) / 32))
    np.testing.assert_allclose(inv[:4], expected, rtol=1e-6)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = reference("tiny-gemma4").config
    ref, _ = ROPE_INIT_FUNCTIONS["proportional"](cfg, None, layer_type="full_attention")
    np.testing.assert_array_equal(inv, ref.numpy())
