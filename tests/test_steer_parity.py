"""STEER and INJECT on INFER / GENERATE against transformers with the equivalent forward
hooks (a vector added to a decoder layer's output; an embedding row replaced), on SmolLM2
and a tiny Gemma 3; and ``USE MODEL ... WITH ADAPTER`` against peft's merged model."""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import smollm2_hf_dir, tiny_model_dir  # noqa: E402

from lql.session import Session  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity
torch.set_num_threads(2)

PROMPT = "The weather today is"


def _folder(name: str) -> Path:
    return smollm2_hf_dir() if name == "smollm2" else tiny_model_dir("gemma3_text")


@functools.lru_cache(maxsize=2)
def reference(folder: str):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def _probs(logits) -> np.ndarray:
    z = logits.double().numpy()
    e = np.exp(z - z.max())
    return e / e.sum()


def _steer_hook(vec: np.ndarray):
    v = torch.tensor(vec, dtype=torch.float32)

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (output[0] + v,) + tuple(output[1:])
        return output + v
    return hook


def _check(r, p, tol=1e-4):
    want = np.argsort(-p, kind="stable")[:10]
    assert [row["token_id"] for row in r.rows] == want.tolist()
    for row in r.rows:
        assert abs(row["probability"] - p[row["token_id"]]) <= tol


def _session(folder: Path, tmp_path: Path) -> Session:
    s = Session(cwd=tmp_path)
    s.query(f'USE MODEL "{folder}"')
    return s


@pytest.mark.parametrize("name,layer,norm", [("smollm2", 15, 60.0), ("gemma", 2, 8.0)])
def test_steer_infer_and_generate_equal_transformers_hook(name, layer, norm, tmp_path):
    folder = _folder(name)
    model = reference(str(folder))
    hidden = model.config.hidden_size
    rng = np.random.default_rng(7)
    v = rng.standard_normal(hidden).astype(np.float32)
    v = v / np.linalg.norm(v)
    np.save(tmp_path / "v.npy", v)
    w = rng.standard_normal(hidden).astype(np.float32)      # a second, stacked clause
    np.save(tmp_path / "w.npy", w)
    s = _session(folder, tmp_path)
    r = s.query(f'INFER "{PROMPT}" RAW TOP 10 VERBOSE STEER "v.npy" AT LAYER {layer} SCALE {norm} '
                f'STEER "w.npy" AT LAYER 1 SCALE -0.5')
    ids = r.meta["token_ids"]
    layers = model.model.layers
    handles = [layers[layer].register_forward_hook(_steer_hook(v * np.float32(norm))),
               layers[1].register_forward_hook(_steer_hook(w * np.float32(-0.5)))]
    try:
        with torch.no_grad():
            p = _probs(model(torch.tensor([ids])).logits[0, -1])
            out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 pad_token_id=model.config.eos_token_id)
    finally:
        for h in handles:
            h.remove()
    _check(r, p)
    with torch.no_grad():
        p0 = _probs(model(torch.tensor([ids])).logits[0, -1])
    assert 0.5 * np.abs(p - p0).sum() > 0.02    # the steering changed the distribution
    g = s.query(f'INFER "{PROMPT}" RAW GENERATE 12 STEER "v.npy" AT LAYER {layer} SCALE {norm} '
                f'STEER "w.npy" AT LAYER 1 SCALE -0.5')
    want = out[0, len(ids):].tolist()
    assert g.meta["token_ids"][:len(want)] == want


def test_steer_percent_scale_is_the_prompts_mean_norm(tmp_path):
    folder = _folder("smollm2")
    model = reference(str(folder))
    v = np.random.default_rng(3).standard_normal(model.config.hidden_size).astype(np.float32) * 3
    np.save(tmp_path / "v.npy", v)
    s = _session(folder, tmp_path)
    r = s.query(f'INFER "{PROMPT}" RAW TOP 10 VERBOSE STEER "v.npy" AT LAYER 10 SCALE 25 %')
    ids = r.meta["token_ids"]
    with torch.no_grad():
        hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[11][0].double().numpy()
    mean = float(np.linalg.norm(hs[1:], axis=-1).mean())      # first position excluded
    assert abs(r.meta["steer"][0]["mean_residual_norm"] - mean) <= 1e-3 * mean
    add = v / np.linalg.norm(v) * np.float32(0.25 * mean)
    h = model.model.layers[10].register_forward_hook(_steer_hook(add.astype(np.float32)))
    try:
        with torch.no_grad():
            p = _probs(model(torch.tensor([ids])).logits[0, -1])
    finally:
        h.remove()
    _check(r, p)


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_inject_equals_transformers_embedding_hook(name, tmp_path):
    folder = _folder(name)
    model = reference(str(folder))
    hidden = model.config.hidden_size
    x = np.random.default_rng(11).standard_normal(hidden).astype(np.float32) * 5
    np.save(tmp_path / "x.npy", x)
    s = _session(folder, tmp_path)
    prompt = "Explain <|im_start|> in words:"
    r = s.query(f'INFER "{prompt}" RAW TOP 10 VERBOSE INJECT "x.npy" AT TOKEN "<|im_start|>"')
    ids = r.meta["token_ids"]
    where = [i for i, t in enumerate(ids) if t == r.meta["inject"][0]["token_id"]]
    assert where and r.meta["inject"][0]["positions"] == where
    scale = math.sqrt(hidden)                                 # the default without an adapter
    row = torch.tensor(x / np.linalg.norm(x) * scale, dtype=torch.float32)

    def hook(_m, _i, out):
        if out.shape[1] == len(ids):                          # the prompt call only
            out = out.clone()
            out[0, where] = row
        return out
    h = model.get_input_embeddings().register_forward_hook(hook)
    try:
        with torch.no_grad():
            p = _probs(model(torch.tensor([ids])).logits[0, -1])
            out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 pad_token_id=model.config.eos_token_id)
    finally:
        h.remove()
    _check(r, p)
    g = s.query(f'INFER "{prompt}" RAW GENERATE 8 INJECT "x.npy" AT TOKEN "<|im_start|>"')
    want = out[0, len(ids):].tolist()
    assert g.meta["token_ids"][:len(want)] == want


# --------------------------------------------------------------------------- adapters

def _make_adapter(folder: Path, out: Path, targets, *, r=4, alpha=8.0, rslora=False, seed=0):
    """A peft LoRA adapter with random A and B (non-zero) saved to ``out``; returns the
    merged transformers model."""
    import peft
    torch.manual_seed(seed)
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                attn_implementation="eager").eval()
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                          use_rslora=rslora, lora_dropout=0.0)
    pm = peft.get_peft_model(base, cfg)
    with torch.no_grad():                                     # a visible change
        for name, prm in pm.named_parameters():
            if "lora_B" in name:
                prm.mul_(3.0)
    pm.save_pretrained(str(out))
    return pm.merge_and_unload().eval()


REGEX = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@pytest.mark.parametrize("name,targets,rslora", [
    ("llama", ["q_proj", "v_proj", "down_proj"], False),
    ("llama", REGEX, True),
    ("gemma", REGEX, False),
    ("gemma", ["o_proj", "up_proj"], True),
])
def test_use_model_with_adapter_equals_peft_merged(name, targets, rslora, tmp_path):
    pytest.importorskip("peft")
    folder = tiny_model_dir("llama" if name == "llama" else "gemma3_text")
    merged = _make_adapter(folder, tmp_path / "adapter", targets, rslora=rslora)
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is rslora
    s = Session(cwd=tmp_path)
    msg = s.query(f'USE MODEL "{folder}" WITH ADAPTER "adapter"')
    assert msg.meta["adapter"]["modules"] > 0
    r = s.query(f'INFER "{PROMPT}" RAW TOP 10 VERBOSE')
    ids = r.meta["token_ids"]
    with torch.no_grad():
        p = _probs(merged(torch.tensor([ids])).logits[0, -1])
        p_base = _probs(reference(str(folder))(torch.tensor([ids])).logits[0, -1])
    assert 0.5 * np.abs(p - p_base).sum() > 0.02              # the adapter matters
    _check(r, p)


def test_extract_with_adapter_equals_peft_merged(tmp_path):
    pytest.importorskip("peft")
    folder = tiny_model_dir("llama")
    merged = _make_adapter(folder, tmp_path / "adapter", REGEX, seed=1)
    s = Session(cwd=tmp_path)
    s.query(f'EXTRACT MODEL "{folder}" INTO "m.vindex" WITH INFERENCE WITH ADAPTER "adapter" DTYPE F32')
    s.query('USE "m.vindex"')
    r = s.query(f'INFER "{PROMPT}" RAW TOP 10 VERBOSE')
    with torch.no_grad():
        p = _probs(merged(torch.tensor([r.meta["token_ids"]])).logits[0, -1])
    _check(r, p)


def test_gemma4_steer_and_inject_together_equal_transformers(tmp_path):
    """Gemma 4 (per-layer embeddings read the injected embedding; layer_scalar before the
    residual hook): STEER + INJECT in one statement against transformers' hooks."""
    from model_fixtures import gemma4_fixtures
    folder = gemma4_fixtures() / "tiny-gemma4"
    if not (folder / "model.safetensors").is_file() or not hasattr(transformers, "Gemma4ForCausalLM"):
        pytest.skip("no tiny Gemma 4 fixture / transformers without Gemma 4")
    model = transformers.Gemma4ForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager").eval()
    hidden = model.config.hidden_size
    rng = np.random.default_rng(2)
    v, x = rng.standard_normal(hidden).astype(np.float32), rng.standard_normal(hidden).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    np.save(tmp_path / "x.npy", x)
    s = _session(folder, tmp_path)
    clauses = 'STEER "v.npy" AT LAYER 3 SCALE 4 INJECT "x.npy" AT TOKEN "<mask>" SCALE 6'
    r = s.query(f'INFER "The <mask> weather" RAW TOP 10 VERBOSE {clauses}')
    ids = r.meta["token_ids"]
    where = r.meta["inject"][0]["positions"]
    assert where
    row = torch.tensor(x / np.linalg.norm(x) * 6, dtype=torch.float32)

    def embed_hook(_m, _i, out):
        if out.shape[1] == len(ids):
            out = out.clone()
            out[0, where] = row
        return out
    handles = [model.get_input_embeddings().register_forward_hook(embed_hook),
               model.model.layers[3].register_forward_hook(_steer_hook(v * np.float32(4)))]
    try:
        with torch.no_grad():
            p = _probs(model(torch.tensor([ids])).logits[0, -1])
            out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 pad_token_id=0)
    finally:
        for h in handles:
            h.remove()
    _check(r, p)
    g = s.query(f'INFER "The <mask> weather" RAW GENERATE 6 {clauses}')
    want = out[0, len(ids):].tolist()
    assert g.meta["token_ids"][:len(want)] == want
