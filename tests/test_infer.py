"""INFER / GENERATE / chat wrapping through ``Session``, on real extracted vindexes.

Expected values come from independent sources: transformers (parity tests, in
test_infer_parity.py), the measured SmolLM2 fact in /work/shared/fixtures.md
(" Paris" at p = 0.7725387 on the float32 model), jinja rendering by
transformers' own ``apply_chat_template``, and numpy on the source weights.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import smollm2_hf_dir  # noqa: E402
from vindex_fixtures import smollm2_vindex, tiny_vindex  # noqa: E402

from lql.errors import ExecutionError, LevelError, NoVindexError  # noqa: E402
from lql.session import Session  # noqa: E402

PARIS_P = 0.7725387          # transformers, float32 model (fixtures.md)
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smol():
    s = Session()
    s.query(f'USE "{smollm2_vindex("inference")}"')       # f16, from the GGUF
    return s


@pytest.fixture(scope="module")
def paris(smol):
    return smol.query(f'INFER "{PROMPT}" TOP 5 RAW')


# --------------------------------------------------------------------------- INFER

@pytest.mark.slow
def test_infer_paris_f16(paris):
    r = paris
    assert r.statement == "INFER" and r.kind == "table"
    assert r.columns == ["rank", "token", "token_id", "probability"]
    assert [row["rank"] for row in r.rows] == [1, 2, 3, 4, 5]
    top = r.rows[0]
    assert top["token"] == " Paris"
    assert abs(top["probability"] - PARIS_P) <= 2e-3
    probs = [row["probability"] for row in r.rows]
    assert probs == sorted(probs, reverse=True)
    assert r.meta["chat_wrapped"] is False
    assert r.meta["prompt"] == PROMPT
    d = r.to_dict()
    assert d["rows"][0]["token_id"] == top["token_id"] and isinstance(d["rows"][0]["token_id"], int)


@pytest.mark.slow
def test_infer_matches_numpy_reference_on_vindex_weights(smol, paris):
    """An independent numpy Llama forward on the vindex's own weights gives the same top-5."""
    v = smol.vindex
    ids = v.tokenizer.encode(PROMPT).ids
    logits = _numpy_llama(v.weights, v.model_config, ids)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p)[:5]
    assert [row["token_id"] for row in paris.rows] == order.tolist()
    for row in paris.rows:
        assert abs(row["probability"] - p[row["token_id"]]) <= 1e-4


def _numpy_llama(w, cfg, ids):
    """Straight-line float64 Llama (RMSNorm, RoPE, GQA, SwiGLU, tied head) — no lql.model code."""
    E = np.asarray(w["embed_tokens.weight"], dtype=np.float64)
    h = E[ids]
    T = len(ids)
    nq, nkv, d = cfg["num_q_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    inv = 1.0 / cfg["rope_base"] ** (np.arange(0, d, 2) / d)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_layers"]):
        g = lambda k, i=i: np.asarray(w[f"layers.{i}.{k}"], dtype=np.float64)  # noqa: E731
        x = rms(h, g("input_layernorm.weight"))
        q = (x @ g("self_attn.q_proj.weight").T).reshape(T, nq, d).transpose(1, 0, 2)
        k = (x @ g("self_attn.k_proj.weight").T).reshape(T, nkv, d).transpose(1, 0, 2)
        v = (x @ g("self_attn.v_proj.weight").T).reshape(T, nkv, d).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, nq // nkv, 0), np.repeat(v, nq // nkv, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(T, nq * d)
        h = h + o @ g("self_attn.o_proj.weight").T
        x = rms(h, g("post_attention_layernorm.weight"))
        a = x @ g("mlp.gate_proj.weight").T
        u = x @ g("mlp.up_proj.weight").T
        h = h + (a / (1 + np.exp(-a)) * u) @ g("mlp.down_proj.weight").T
    x = rms(h[-1], np.asarray(w["norm.weight"], dtype=np.float64))
    return E @ x


@pytest.mark.slow
def test_infer_default_top_and_compare_without_overlay(smol, paris):
    r = smol.query(f'INFER "{PROMPT}" RAW COMPARE')
    assert len(r.rows) == 5                                      # default TOP 5
    assert r.meta["compare"] == "no overlay"
    assert "no edits" in r.message
    for row, ref in zip(r.rows, paris.rows):
        assert row["token_id"] == ref["token_id"] == row["dense_token_id"]
        assert row["dense_probability"] == pytest.approx(row["probability"], abs=1e-12)


@pytest.mark.slow
def test_set_chat_off_equals_raw(smol, paris):
    from lql import ast
    try:
        smol.query("SET CHAT OFF")
        r = smol.query(f'INFER "{PROMPT}" TOP 5')
    finally:
        smol.chat_mode = ast.ChatMode.AUTO
    assert r.meta["chat_wrapped"] is False
    assert [x["token_id"] for x in r.rows] == [x["token_id"] for x in paris.rows]


# --------------------------------------------------------------------------- chat wrapping

def _hf_tokenizer():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_hf_dir()))


@pytest.mark.slow
@pytest.mark.parametrize("system", [None, "You are a terse geography teacher."])
def test_chat_wrapping_equals_apply_chat_template(smol, system):
    tok = _hf_tokenizer()
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": PROMPT}]
    want_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    want_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(want_ids, dict) or hasattr(want_ids, "keys"):
        want_ids = want_ids["input_ids"]
    sys_clause = f' SYSTEM "{system}"' if system else ""
    r = smol.query(f'INFER "{PROMPT}" TOP 1 CHAT{sys_clause} VERBOSE')
    assert r.meta["chat_wrapped"] is True
    assert r.meta["prompt"] == want_text
    assert r.meta["token_ids"] == list(want_ids)
    # AUTO (the default) wraps, because SmolLM2-Instruct has a template
    auto = smol.query(f'INFER "{PROMPT}" TOP 1{sys_clause}')
    assert auto.meta["chat_wrapped"] is True and auto.meta["prompt"] == want_text
    assert auto.rows[0]["token_id"] == r.rows[0]["token_id"]


@pytest.mark.slow
def test_generate_chat_stops_at_end_of_turn(smol):
    """ChatML's <|im_end|> (tokenizer_config eos_token) ends the continuation."""
    pieces: list[str] = []
    smol.on_token = pieces.append
    try:
        r = smol.query('INFER "What is the capital of France?" CHAT GENERATE 40')
    finally:
        smol.on_token = None
    assert r.kind == "text" and r.statement == "INFER"
    im_end = smol.vindex.tokenizer.token_to_id("<|im_end|>")
    assert r.meta["stop"] == "eos" and r.meta["token_ids"][-1] == im_end
    assert len(r.meta["token_ids"]) < 40
    assert "Paris" in r.message and "<|im_end|>" not in r.message
    assert "".join(pieces) == r.message                      # streamed as produced
    assert r.meta["streamed"] is True


# --------------------------------------------------------------------------- errors

def test_no_vindex_in_use():
    with pytest.raises(NoVindexError):
        Session().query(f'INFER "{PROMPT}"')


def test_browse_vindex_needs_inference_level():
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", level="browse")}"')
    with pytest.raises(LevelError) as err:
        s.query(f'INFER "{PROMPT}"')
    msg = str(err.value)
    assert "BROWSE" in msg and "WITH INFERENCE" in msg and "EXTRACT MODEL" in msg


@pytest.fixture(scope="module")
def tiny():
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", level="inference")}"')
    return s


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(tiny, prompt):
    with pytest.raises(ExecutionError, match="empty"):
        tiny.query(f'INFER "{prompt}"')


def test_prompt_longer_than_positions(tiny):
    limit = tiny.vindex.model_config["max_position_embeddings"]
    with pytest.raises(ExecutionError, match=f"{limit} positions"):
        tiny.query('INFER "' + "hello " * (limit + 10) + '" RAW')


def test_system_without_wrapping(tiny):
    with pytest.raises(ExecutionError, match="SYSTEM"):
        tiny.query(f'INFER "{PROMPT}" RAW SYSTEM "be brief"')


def test_top_must_be_positive(tiny):
    with pytest.raises(ExecutionError, match="TOP"):
        tiny.query(f'INFER "{PROMPT}" TOP 0 RAW')


def test_chat_without_template(tmp_path):
    src = tiny_vindex("llama", level="inference")
    dst = tmp_path / "notemplate.vindex"
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    tc = dst / "tokenizer_config.json"
    if tc.is_file():
        import json
        cfg = json.loads(tc.read_text())
        cfg.pop("chat_template", None)
        tc.write_text(json.dumps(cfg))
    s = Session()
    s.query(f'USE "{dst}"')
    with pytest.raises(ExecutionError, match="no chat template"):
        s.query(f'INFER "{PROMPT}" CHAT')
    r = s.query(f'INFER "{PROMPT}" TOP 2')                  # AUTO: no template → raw
    assert r.meta["chat_wrapped"] is False and r.meta["prompt"] == PROMPT
