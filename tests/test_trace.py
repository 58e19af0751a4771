"""TRACE and EXPLAIN INFER through ``Session``: logit lens, direct logit attribution,
DECOMPOSE, POSITIONS ALL, SAVE (.npz), per-layer features and attention heads.

Independent checks: numpy on the vindex's own weights (RMSNorm, SwiGLU, the tied
head) applied to the saved residuals, and INFER's distribution.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vindex_fixtures import smollm2_vindex, tiny_vindex  # noqa: E402

from lql.errors import ExecutionError, LevelError  # noqa: E402
from lql.session import Session  # noqa: E402

PROMPT = "The capital of France is"


def _rms(x, g, eps):
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.asarray(g, dtype=np.float64)


# --------------------------------------------------------------------------- tiny Llama (fast)

@pytest.fixture(scope="module")
def tiny():
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", level="inference")}"')
    return s


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "trace"          # ".npz" is appended
    r = tiny.query(f'TRACE "{PROMPT}" FOR " Paris" DECOMPOSE POSITIONS ALL SAVE "{path}" RAW')
    return r, np.load(str(path) + ".npz", allow_pickle=False)


def test_save_layout(tiny, saved):
    r, z = saved
    v = tiny.vindex
    L, H = v.num_layers, v.hidden_size
    ids = v.tokenizer.encode(PROMPT).ids
    T = len(ids)
    assert r.meta["saved"].endswith("trace.npz")
    assert z["residuals"].shape == (L + 1, T, H) and z["residuals"].dtype == np.float32
    assert z["attn_deltas"].shape == (L, T, H) and z["ffn_deltas"].shape == (L, T, H)
    assert z["token_ids"].tolist() == ids
    assert str(z["prompt"]) == PROMPT and str(z["user_prompt"]) == PROMPT
    assert bool(z["chat_wrapped"]) is False
    assert z["tokens"].tolist() == [v.token_text(i) for i in ids]
    assert z["logits"].shape == (v.vocab_size,)
    assert int(z["for_token_id"]) == v.tokenizer.token_to_id("ĠParis")
    # the residual stream is the running sum of its parts
    res, a, f = (z[k].astype(np.float64) for k in ("residuals", "attn_deltas", "ffn_deltas"))
    assert np.allclose(res[1:], res[:-1] + a + f, atol=1e-4)
    # the embedding row is the token embeddings
    assert np.allclose(res[0], v.embed(ids), atol=1e-6)
    # the final residual through the final norm and the (untied) head gives the saved logits
    w = v.weights
    head = w["lm_head.weight"] if "lm_head.weight" in w else w["embed_tokens.weight"]
    ref = np.asarray(head, np.float64) @ _rms(res[-1, -1], w["norm.weight"],
                                              v.model_config["rms_norm_eps"])
    assert np.allclose(z["logits"], ref, atol=1e-4)
    assert not [p for p in Path(r.meta["saved"]).parent.iterdir() if p.name.endswith(".tmp")]


def test_positions_all_rows(tiny, saved):
    r, z = saved
    L, T = tiny.vindex.num_layers, len(z["token_ids"])
    assert len(r.rows) == L * T
    assert [row["position"] for row in r.rows[::L]] == list(range(T))
    assert r.rows[0]["position_token"] == str(z["tokens"][0])
    for k in ("layer", "top_token", "top_probability", "rank", "probability", "attn_logit",
              "ffn_logit", "attn_norm", "ffn_norm"):
        assert k in r.columns


def test_logit_lens_and_dla_match_numpy(tiny, saved):
    """Each row against numpy on the saved residuals and the vindex weights."""
    r, z = saved
    v = tiny.vindex
    w = v.weights
    eps = v.model_config["rms_norm_eps"]
    g = np.asarray(w["norm.weight"], np.float64)
    head = np.asarray(w["lm_head.weight"] if "lm_head.weight" in w else w["embed_tokens.weight"],
                      np.float64)
    tid = int(z["for_token_id"])
    res = z["residuals"].astype(np.float64)
    L = v.num_layers
    for row in r.rows:
        p, layer = row["position"], row["layer"]
        logits = head @ _rms(res[layer + 1, p], g, eps)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        assert row["top_token_id"] == int(np.argmax(probs))
        assert row["top_probability"] == pytest.approx(probs.max(), abs=1e-5)
        assert row["probability"] == pytest.approx(probs[tid], rel=1e-3, abs=1e-9)
        assert row["rank"] == 1 + int(np.sum(probs > probs[tid]))
        # direct logit attribution with the final norm frozen at the final residual
        rf = res[L, p]
        s = 1.0 / np.sqrt(np.mean(rf * rf) + eps)
        assert row["attn_logit"] == pytest.approx(head[tid] @ (g * z["attn_deltas"][layer, p] * s), abs=1e-4)
        assert row["ffn_logit"] == pytest.approx(head[tid] @ (g * z["ffn_deltas"][layer, p] * s), abs=1e-4)
        assert row["attn_norm"] == pytest.approx(np.linalg.norm(z["attn_deltas"][layer, p]), rel=1e-5)


def test_dla_identity_sums_to_final_logit(tiny, saved):
    """embedding + Σ attn + Σ ffn (+ norm bias) = the final logit of the token."""
    r, z = saved
    d = r.meta["dla"]
    last = [row for row in r.rows if row["position"] == len(z["token_ids"]) - 1]
    total = d["embedding_logit"] + sum(x["attn_logit"] for x in last) + \
        sum(x["ffn_logit"] for x in last) + d["bias_logit"]
    assert total == pytest.approx(d["final_logit"], abs=1e-4)
    assert d["final_logit"] == pytest.approx(float(z["logits"][int(z["for_token_id"])]), abs=1e-4)


def test_trace_last_layer_equals_infer(tiny):
    t = tiny.query(f'TRACE "{PROMPT}" RAW')
    i = tiny.query(f'INFER "{PROMPT}" TOP 1 RAW')
    assert t.columns == ["layer", "top_token", "top_probability"]
    assert [row["layer"] for row in t.rows] == list(range(tiny.vindex.num_layers))
    assert t.rows[-1]["top_token"] == i.rows[0]["token"]
    assert t.rows[-1]["top_probability"] == pytest.approx(i.rows[0]["probability"], abs=1e-6)


def test_trace_layers_range(tiny):
    r = tiny.query(f'TRACE "{PROMPT}" LAYERS 1-2 RAW')
    assert [row["layer"] for row in r.rows] == [1, 2]
    with pytest.raises(ExecutionError, match="out of range"):
        tiny.query(f'TRACE "{PROMPT}" LAYERS 0-99 RAW')


def test_for_token_resolution(tiny):
    tok = tiny.vindex.tokenizer
    r = tiny.query(f'TRACE "{PROMPT}" FOR "Paris" RAW')
    bare = tok.encode("Paris", add_special_tokens=False).ids
    assert len(bare) == 1 and r.meta["token_id"] == bare[0]       # taken literally
    with pytest.raises(ExecutionError, match="tokens"):
        tiny.query(f'TRACE "{PROMPT}" FOR " Paris is lovely" RAW')
    with pytest.raises(ExecutionError, match="FOR"):
        tiny.query(f'TRACE "{PROMPT}" FOR "" RAW')


def test_save_into_missing_folder(tiny, tmp_path):
    with pytest.raises(ExecutionError, match="does not exist"):
        tiny.query(f'TRACE "{PROMPT}" SAVE "{tmp_path}/nope/t.npz" RAW')


def test_trace_needs_inference_level():
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", level="browse")}"')
    for stmt in (f'TRACE "{PROMPT}"', f'EXPLAIN INFER "{PROMPT}"'):
        with pytest.raises(LevelError, match="WITH INFERENCE"):
            s.query(stmt)


# --------------------------------------------------------------------------- EXPLAIN INFER

def test_explain_infer_features_match_numpy(tiny, saved):
    _, z = saved
    v = tiny.vindex
    w = v.weights
    eps = v.model_config["rms_norm_eps"]
    r = tiny.query(f'EXPLAIN INFER "{PROMPT}" TOP 3 VERBOSE RAW')
    assert r.statement == "EXPLAIN INFER"
    assert r.meta["prompt"] == PROMPT and PROMPT in r.message
    infer = tiny.query(f'INFER "{PROMPT}" TOP 3 RAW')
    assert [p["token_id"] for p in r.meta["prediction"]] == [x["token_id"] for x in infer.rows]
    for layer in range(v.num_layers):
        feats = [row for row in r.rows if row["layer"] == layer]
        assert len(feats) == 3 and all(f["kind"] == "ffn" for f in feats)
        # FFN activation at the last position from the saved residual + attention delta
        h_mid = z["residuals"][layer, -1].astype(np.float64) + z["attn_deltas"][layer, -1]
        x = _rms(h_mid, w[f"layers.{layer}.post_attention_layernorm.weight"], eps)
        gate = np.asarray(w[f"layers.{layer}.mlp.gate_proj.weight"], np.float64) @ x
        up = np.asarray(w[f"layers.{layer}.mlp.up_proj.weight"], np.float64) @ x
        act = gate / (1 + np.exp(-gate)) * up
        want = np.argsort(-np.abs(act))[:3]
        assert [f["feature"] for f in feats] == want.tolist()
        for f in feats:
            assert f["activation"] == pytest.approx(act[f["feature"]], rel=1e-3, abs=1e-4)
            top_ids = v.down_meta.top_ids(layer)[f["feature"]]
            assert f["top_token"] == v.token_text(int(top_ids[0]))
            assert f["down_tokens"] == [v.token_text(int(t)) for t in top_ids[:3]]
            assert f["label"] == v.feature_labels.get((layer, f["feature"]))


def test_explain_infer_with_attention(tiny):
    r = tiny.query(f'EXPLAIN INFER "{PROMPT}" LAYERS 1-2 TOP 2 WITH ATTENTION RAW')
    assert {row["layer"] for row in r.rows} == {1, 2}
    heads = [row for row in r.rows if row["kind"] == "attention"]
    assert len(heads) == 4
    n = len(tiny.vindex.tokenizer.encode(PROMPT).ids)
    for h in heads:
        assert 1 <= h["position"] < n and 0.0 < h["attention"] <= 1.0
        assert h["attended_token"] == tiny.vindex.token_text(tiny.vindex.tokenizer.encode(PROMPT).ids[h["position"]])
    for layer in (1, 2):
        ws = [h["attention"] for h in heads if h["layer"] == layer]
        assert ws == sorted(ws, reverse=True)


# --------------------------------------------------------------------------- SmolLM2 (real model)

@pytest.fixture(scope="module")
def smol():
    s = Session()
    s.query(f'USE "{smollm2_vindex("inference")}"')
    return s


@pytest.mark.slow
def test_smollm2_trace_for_paris(smol):
    i = smol.query(f'INFER "{PROMPT}" TOP 1 RAW')
    t = smol.query(f'TRACE "{PROMPT}" FOR " Paris" RAW')
    last = t.rows[-1]
    assert last["layer"] == 29 and last["top_token"] == " Paris" == i.rows[0]["token"]
    assert last["top_probability"] == pytest.approx(i.rows[0]["probability"], abs=1e-6)
    assert last["rank"] == 1 and last["probability"] == pytest.approx(i.rows[0]["probability"], abs=1e-6)
    d = t.meta["dla"]
    total = d["embedding_logit"] + sum(r["attn_logit"] for r in t.rows) + \
        sum(r["ffn_logit"] for r in t.rows) + d["bias_logit"]
    assert total == pytest.approx(d["final_logit"], abs=1e-3)
    assert d["final_logit"] == pytest.approx(last["logit"], abs=1e-3)
    # early layers do not predict Paris yet; the lens rank falls to 1 by the end
    assert t.rows[0]["rank"] > 1


@pytest.mark.slow
def test_smollm2_explain_infer(smol):
    r = smol.query(f'EXPLAIN INFER "{PROMPT}" LAYERS 25-29 TOP 3 WITH ATTENTION RAW')
    assert r.meta["prediction"][0]["token"] == " Paris"
    assert {row["layer"] for row in r.rows} == set(range(25, 30))
    assert sum(row["kind"] == "ffn" for row in r.rows) == 15
    assert sum(row["kind"] == "attention" for row in r.rows) == 15
