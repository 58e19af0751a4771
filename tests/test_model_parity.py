"""lql.model against transformers (float32, eager attention): logits, top-10, generation,
recorded internals — for every tiny family and for SmolLM2."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from model_fixtures import FAMILIES, smollm2_hf_dir, tiny_model_dir
from test_model_adapter import load_model_inputs

from lql.model import Record, build_model
from lql.runtime import greedy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity
torch.set_num_threads(2)

PROMPTS = (
    "The capital of France is",
    "Hi",
    # longer than the tiny models' sliding window (6) several times over
    "Once upon a time, in a small village by the sea, there lived an old fisherman who told stories",
)


def _folder(name: str):
    return smollm2_hf_dir() if name == "smollm2" else tiny_model_dir(name)


@functools.lru_cache(maxsize=2)
def ours(name: str):
    cfg, weights = load_model_inputs(_folder(name))
    return build_model(cfg, weights)


@functools.lru_cache(maxsize=1)
def reference(name: str):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(_folder(name), dtype=torch.float32,
                                                attn_implementation="eager").eval()


@functools.lru_cache(maxsize=1)
def tokenizer():
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(smollm2_hf_dir() / "tokenizer.json"))


def encode(text: str) -> list[int]:
    return tokenizer().encode(text).ids


def ref_logits(name: str, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return reference(name)(torch.tensor([ids])).logits[0, -1].numpy()


def softmax(x):
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def check_parity(name: str, ids: list[int], logit_tol: float):
    out = ours(name).forward(ids)
    ref = ref_logits(name, ids)
    assert out.logits.shape == ref.shape
    top_ours = np.argsort(-out.logits, kind="stable")[:10]
    top_ref = np.argsort(-ref, kind="stable")[:10]
    assert top_ours.tolist() == top_ref.tolist()
    assert np.abs(softmax(out.logits) - softmax(ref)).max() <= 1e-4
    # random tiny models have near-uniform probabilities, so also bound the logits
    assert np.abs(out.logits - ref).max() <= logit_tol


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_tiny_family_matches_transformers(family, prompt):
    ids = encode(prompt)
    if family == FAMILIES[0] and prompt == PROMPTS[2]:
        assert len(ids) > 12  # really exceeds the window of 6
    check_parity(family, ids, logit_tol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_smollm2_matches_transformers(prompt):
    check_parity("smollm2", encode(prompt), logit_tol=2e-3)


@pytest.mark.slow
def test_smollm2_capital_of_france():
    out = ours("smollm2").forward(encode("The capital of France is"))
    token, p = out.top_k(1)[0]
    assert tokenizer().decode([token]) == " Paris"
    assert abs(p - 0.7725387) < 1e-4  # transformers float32 measured 0.7725387


def ref_generate(name: str, ids: list[int], n: int) -> list[int]:
    model = reference(name)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             pad_token_id=model.config.eos_token_id)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text", "gpt2"])
def test_tiny_greedy_generation_matches_transformers(family):
    ids = encode(PROMPTS[0])
    assert list(greedy(ours(family), ids, 20)) == ref_generate(family, ids, 20)


@pytest.mark.slow
def test_smollm2_greedy_generation_matches_transformers():
    ids = encode("Once upon a time")
    got = list(greedy(ours("smollm2"), ids, 20))
    assert len(got) == 20
    assert got == ref_generate("smollm2", ids, 20)


# ------------------------------------------------------------------ internals vs transformers

@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "gemma3_text", "gpt2"])
def test_recorded_internals_match_transformers(family):
    ids = encode(PROMPTS[2])
    model = reference(family)
    blocks = model.transformer.h if family == "gpt2" else model.model.layers
    down_inputs = {}

    def grab(i):
        def hook(_module, args):
            down_inputs[i] = args[0][0, -1].detach().numpy().copy()
        return hook

    handles = [(b.mlp.c_proj if family == "gpt2" else b.mlp.down_proj).register_forward_pre_hook(grab(i))
               for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            ref = model(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    out = ours(family).forward(ids, record=Record.everything("last"))
    n = len(blocks)
    # hidden_states[0] is the embedding, [i + 1] the residual after layer i (the last one is normed)
    np.testing.assert_allclose(out.embedding, ref.hidden_states[0][0, -1].numpy(), atol=1e-5)
    for i in range(n - 1):
        np.testing.assert_allclose(out.residuals[i], ref.hidden_states[i + 1][0, -1].numpy(), atol=1e-4)
    for i in range(n):
        np.testing.assert_allclose(out.ffn_activations[i], down_inputs[i], atol=1e-4)
        np.testing.assert_allclose(out.attention[i], ref.attentions[i][0, :, -1].numpy(), atol=1e-5)
