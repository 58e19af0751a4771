"""INFER / GENERATE / TRACE against transformers (float32, eager): the statement path
(``Session.execute`` on extracted vindexes) gives transformers' numbers."""

from __future__ import annotations

import functools
import gc
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import smollm2_hf_dir, tiny_model_dir  # noqa: E402
from vindex_fixtures import smollm2_vindex, tiny_vindex  # noqa: E402

from lql.session import Session  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity
torch.set_num_threads(2)

PROMPT = "The capital of France is"


@functools.lru_cache(maxsize=1)
def reference(folder: str):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def ref_probs(folder: Path, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = reference(str(folder))(torch.tensor([ids])).logits[0, -1].double().numpy()
    e = np.exp(logits - logits.max())
    return e / e.sum()


def ref_ids(folder: Path, text: str) -> list[int]:
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    return tok(text)["input_ids"]


def _check_top10(session: Session, folder: Path, prompt: str, tol: float = 1e-4):
    r = session.query(f'INFER "{prompt}" TOP 10 RAW VERBOSE')
    ids = ref_ids(folder, prompt)
    assert r.meta["token_ids"] == ids                        # same tokens fed to the model
    p = ref_probs(folder, ids)
    want = np.argsort(-p, kind="stable")[:10]
    assert [row["token_id"] for row in r.rows] == want.tolist()
    for row in r.rows:
        assert abs(row["probability"] - p[row["token_id"]]) <= tol
    return r, p


@pytest.mark.slow
def test_smollm2_f32_vindex_top10_and_generate():
    s = Session()
    s.query(f'USE "{smollm2_vindex("inference", "f32", source="hf")}"')
    r, p = _check_top10(s, smollm2_hf_dir(), PROMPT)
    assert r.rows[0]["token"] == " Paris"
    assert abs(r.rows[0]["probability"] - 0.7725387) <= 1e-4
    # GENERATE 20 == transformers greedy generate
    ids = ref_ids(smollm2_hf_dir(), "Once upon a time")
    model = reference(str(smollm2_hf_dir()))
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             pad_token_id=model.config.eos_token_id)
    want = out[0, len(ids):].tolist()
    g = s.query('INFER "Once upon a time" RAW GENERATE 20')
    assert g.kind == "text" and g.meta["token_ids"] == want
    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_hf_dir()))
    assert g.message == tok.decode(want)


@pytest.mark.slow
def test_smollm2_f16_vindex_paris_near_transformers():
    s = Session()
    s.query(f'USE "{smollm2_vindex("inference")}"')
    r = s.query(f'INFER "{PROMPT}" TOP 5 RAW')
    p = ref_probs(smollm2_hf_dir(), ref_ids(smollm2_hf_dir(), PROMPT))
    paris = int(np.argmax(p))
    assert r.rows[0]["token_id"] == paris and r.rows[0]["token"] == " Paris"
    assert abs(r.rows[0]["probability"] - p[paris]) <= 2e-3


@pytest.mark.slow
def test_smollm2_chat_generate_matches_transformers():
    """CHAT wrapping + greedy generation until <|im_end|>, as transformers does it."""
    s = Session()
    s.query(f'USE "{smollm2_vindex("inference", "f32", source="hf")}"')
    folder = smollm2_hf_dir()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    ids = list(ids)
    model = reference(str(folder))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             eos_token_id=[im_end, model.config.eos_token_id],
                             pad_token_id=model.config.eos_token_id)
    want = out[0, len(ids):].tolist()
    g = s.query('INFER "What is the capital of France?" CHAT GENERATE 30')
    assert g.meta["token_ids"] == want


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_tiny_family_vindex_top10(family):
    s = Session()
    s.query(f'USE "{tiny_vindex(family, level="inference")}"')
    # random tiny models: near-uniform probabilities, so compare tightly
    _check_top10(s, tiny_model_dir(family), PROMPT, tol=1e-6)
    reference.cache_clear()
    gc.collect()


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_tiny_trace_residuals_match_hidden_states(family, tmp_path):
    """SAVE's residuals equal transformers' hidden_states (before the final norm);
    EXPLAIN INFER's attention weights equal transformers' attentions."""
    s = Session()
    s.query(f'USE "{tiny_vindex(family, level="inference")}"')
    path = tmp_path / "t.npz"
    s.query(f'TRACE "{PROMPT}" SAVE "{path}" RAW')
    z = np.load(path)
    folder = tiny_model_dir(family)
    ids = ref_ids(folder, PROMPT)
    with torch.no_grad():
        out = reference(str(folder))(torch.tensor([ids]), output_hidden_states=True,
                                     output_attentions=True)
    hs = [h[0].numpy() for h in out.hidden_states]
    L = len(hs) - 1
    assert z["residuals"].shape[0] == L + 1
    for i in range(L):                       # the last hidden state has the final norm applied
        assert np.allclose(z["residuals"][i], hs[i], atol=1e-4), i
    e = s.query(f'EXPLAIN INFER "{PROMPT}" TOP 2 WITH ATTENTION RAW')
    for row in (r for r in e.rows if r["kind"] == "attention"):
        att = out.attentions[row["layer"]][0, row["head"], -1].numpy()
        assert row["attention"] == pytest.approx(float(att[1:].max()), abs=1e-5)
        assert row["position"] == 1 + int(np.argmax(att[1:]))
    reference.cache_clear()
    gc.collect()
