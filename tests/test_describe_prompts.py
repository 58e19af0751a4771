"""EXPLAIN INFER … FOR, DESCRIBE … VIA PROMPTS, the fan-in hub filter and SELECT FROM
FEATURES WHERE target = X (issue 14, deliverable 6).

* EXPLAIN INFER … FOR's ranking is recomputed independently from transformers' forward
  pass of the tiny Llama and the tiny Gemma 3 (post-FFN sandwich norm): the MLP's
  down-projection input at the last position, the checkpoint's down / lm_head / norm
  weights, numpy for the rest.
* DESCRIBE … VIA PROMPTS's probabilities are INFER's on the prompt each edge names
  (SmolLM2: "France" → capital " Paris").
* Hubs: every fan-in hub is a DESCRIBE target of more than 10 % of the reference words,
  memoised per vindex, and none reaches DESCRIBE's edges.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import tiny_model_dir  # noqa: E402
from vindex_fixtures import smollm2_vindex, tiny_vindex  # noqa: E402

from lql.session import Session  # noqa: E402

PROMPT = "The capital of France is"


def _hf_carriers(family: str, prompt: str, tid: int, top: int):
    """Independent contributions: transformers' activations and weights, numpy algebra."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    src = tiny_model_dir(family)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(src)
    ids = tok(prompt, return_tensors="pt").input_ids
    acts = {}
    layers = model.model.layers
    hooks = [layer.mlp.down_proj.register_forward_hook(
        lambda mod, args, out, i=i: acts.__setitem__(i, args[0][0, -1].detach().numpy().copy()))
        for i, layer in enumerate(layers)]
    with torch.no_grad():
        logits = model(ids).logits[0, -1].double()
    for h in hooks:
        h.remove()
    probs = torch.softmax(logits, -1).numpy()
    others = [int(t) for t in np.argsort(-probs)[:11] if int(t) != tid][:10]
    head = model.lm_head.weight.detach().numpy()
    norm = model.model.norm
    offset = 1.0 if family.startswith("gemma") else 0.0
    w_final = norm.weight.detach().numpy() + offset
    u = head[[tid] + others] * w_final
    direction = u[0] - u[1:].mean(0)
    found = []
    for i, layer in enumerate(layers):
        down = layer.mlp.down_proj.weight.detach().numpy()          # (hidden, ffn)
        a = acts[i]
        d = direction
        post = getattr(layer, "post_feedforward_layernorm", None)
        if post is not None:
            y = down @ a
            rms = np.sqrt(np.mean(y.astype(np.float64) ** 2) + post.eps)
            d = direction * (post.weight.detach().numpy() + offset) / rms
        score = a * (d @ down)
        found += [(float(score[f]), i, f) for f in range(score.shape[0]) if score[f] > 0]
    found.sort(key=lambda s: (-s[0], s[1], s[2]))
    return found[:top], tid


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_explain_for_ranking_equals_independent_computation(family):
    pytest.importorskip("transformers")
    s = Session()
    s.query(f'USE "{tiny_vindex(family, "inference", "f32")}"')
    top1 = s.query(f'INFER "{PROMPT}" TOP 1 RAW').rows[0]
    r = s.query(f'EXPLAIN INFER "{PROMPT}" FOR "{top1["token"]}" TOP 12 RAW')
    assert r.meta["token_id"] == top1["token_id"]
    want, _ = _hf_carriers(family, PROMPT, int(top1["token_id"]), 12)
    assert r.columns[:4] == ["rank", "layer", "feature", "contribution"]
    got = [(row["layer"], row["feature"]) for row in r.rows]
    assert got == [(l, f) for _s, l, f in want]
    for row, (score, _l, _f) in zip(r.rows, want):
        assert row["contribution"] == pytest.approx(score, rel=2e-3, abs=1e-5)
    assert [row["rank"] for row in r.rows] == list(range(1, len(r.rows) + 1))


def test_explain_for_multi_token_and_errors():
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", "inference", "f32")}"')
    r = s.query('EXPLAIN INFER "The capital of France is" FOR "Poseidonification" TOP 3 RAW')
    assert "explaining the first" in r.message
    from lql.errors import LqlError
    with pytest.raises(LqlError, match="WITH ATTENTION"):
        s.query('EXPLAIN INFER "x" FOR "Paris" WITH ATTENTION')


def test_delete_scores_use_the_shared_attribution():
    """DELETE's feature_scores (no baseline) equal the shared layer scores."""
    from lql.infer.attribution import feature_scores
    rng = np.random.default_rng(0)
    act = rng.normal(size=16).astype(np.float32)
    cols = rng.normal(size=(8, 16)).astype(np.float32)
    d = rng.normal(size=8).astype(np.float32)
    assert np.allclose(feature_scores(act, cols, d), act * (d @ cols))
    refs = rng.normal(size=(3, 16)).astype(np.float32)
    rdirs = rng.normal(size=(3, 8)).astype(np.float32)
    want = (act - refs.mean(0)) * (d @ cols) - 0.5 * np.maximum((refs * (rdirs @ cols)).max(0), 0)
    assert np.allclose(feature_scores(act, cols, d, ref_acts=refs, rival_dirs=rdirs), want)


# --------------------------------------------------------------------------- VIA PROMPTS

@pytest.fixture(scope="module")
def smol():
    s = Session()
    s.query(f'USE "{smollm2_vindex("inference")}"')
    s.query("SET CHAT OFF")
    return s


@pytest.mark.slow
def test_describe_via_prompts_probabilities_equal_infer(smol):
    r = smol.query('DESCRIBE "France" VIA PROMPTS RAW')
    assert r.meta["via"] == "PROMPTS" and r.meta["chat_wrapped"] is False
    assert r.rows
    capital = [row for row in r.rows if row["relation"] == "capital" and row["target"] == "Paris"]
    assert capital, [(row["relation"], row["target"]) for row in r.rows]
    from lql.ast import quote
    assert all(row["prompt"].startswith("Question: ") and "\nAnswer: " in row["prompt"] for row in r.rows)
    for row in r.rows[:8]:
        inf = smol.query(f'INFER {quote(row["prompt"])} TOP 8 RAW')
        p = {x["token_id"]: x["probability"] for x in inf.rows}
        assert row["probability"] == pytest.approx(p[row["token_id"]], abs=5e-7)
        assert row["features"] and all(f.startswith("L") for f in row["features"])
    # the features column is EXPLAIN INFER ... FOR's top 3
    row = capital[0]
    ex = smol.query(f'EXPLAIN INFER {quote(row["prompt"])} FOR "{row["target"]}" TOP 3 RAW')
    assert row["features"] == [f"L{x['layer']}:F{x['feature']}" for x in ex.rows]


@pytest.mark.slow
def test_describe_via_prompts_brief_is_specific(smol):
    r = smol.query('DESCRIBE "France" VIA PROMPTS')
    targets = [row["target"] for row in r.rows]
    assert "Paris" in targets and len(targets) <= 10
    spec = [row["specificity"] for row in r.rows]
    assert spec == sorted(spec, reverse=True) and all(x > 0 for x in spec)
    from lql.browse.tokens import STOP_WORDS
    assert not {t.casefold() for t in targets} & STOP_WORDS


@pytest.mark.slow
def test_entity_kinds_on_smollm2(smol):
    """The kind prompt's next-token mass puts a country, a physicist, a metal and a company
    in their kinds (raw prompts), and DESCRIBE reports them."""
    from lql.infer.engine import target_for
    from lql.infer.relations import entity_kinds
    t = target_for(smol)
    for entity, kind in (("France", "place"), ("Einstein", "person"), ("gold", "substance"),
                         ("Microsoft", "organisation")):
        kinds = entity_kinds(t, entity, chat=False)
        assert kinds is not None and max(kinds, key=kinds.get) == kind, (entity, kinds)
        assert sum(kinds.values()) == pytest.approx(1.0)
    r = smol.query('DESCRIBE "France" VIA PROMPTS')
    assert max(r.meta["kinds"], key=r.meta["kinds"].get) == "place"


def test_describe_via_prompts_needs_inference_level():
    from lql.errors import LevelError
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", "browse", "f32")}"')
    with pytest.raises(LevelError):
        s.query('DESCRIBE "France" VIA PROMPTS')


def test_relation_templates_ship():
    from lql.infer.relations import relations
    rels = {r.name: r for r in relations()}
    for name in ("capital", "language", "currency", "continent", "occupation", "nationality",
                 "born in", "located in", "made of", "colour"):
        assert name in rels
        assert all("{entity}" in t for t in rels[name].templates)
        assert "{entity}" in rels[name].question


def test_relation_kinds_ship_and_weigh():
    from lql.infer.relations import KIND_FLOOR, kind_prompt, kind_words, relation_weight, relations
    words = kind_words()
    assert {"place", "person", "animal", "substance", "thing", "organisation"} <= set(words)
    assert all(words.values())
    for rel in relations():
        assert set(rel.types) <= set(words), rel
    assert "{entity}" in kind_prompt().templates[0]
    rels = {r.name: r for r in relations()}
    person = {"person": 0.9, "place": 0.1}
    assert relation_weight(rels["occupation"], person) == pytest.approx(0.9)
    assert relation_weight(rels["capital"], person) == KIND_FLOOR     # 0.1, floored
    assert relation_weight(rels["capital"], {"place": 0.0, "person": 1.0}) == KIND_FLOOR
    assert relation_weight(rels["known for"], person) == 1.0         # asked of any kind
    assert relation_weight(rels["capital"], None) == 1.0             # kinds unknown


# --------------------------------------------------------------------------- hubs

def test_fan_in_hubs_are_computed_memoised_and_filtered():
    from lql.browse import hubs
    s = Session()
    s.query(f'USE "{smollm2_vindex("inference")}"')       # the suite extracts it anyway
    v = s.vindex
    found = hubs.query_hubs(v)
    assert hubs.query_hubs(v) is found                   # memoised per vindex
    counts = hubs.fan_in_counts(v)
    limit = hubs.QUERY_SHARE * len(hubs.REFERENCE_WORDS)
    assert found == frozenset(t for t, n in counts.items() if n > limit)
    assert found                                          # SmolLM2 has hubs
    for entity in ("France", "Einstein", "water"):
        r = s.query(f'DESCRIBE "{entity}" ALL LAYERS VERBOSE')
        assert not {row["target_id"] for row in r.rows} & found
    # without the fan-in filter some hub does come through (so the filter is what removes it)
    from lql.browse.core import band_layers, entity_query
    from lql.browse.describe import describe_edges
    layers = [l for b in ("syntax", "knowledge", "output") for l in band_layers(v, b)]
    seen = set()
    for entity in ("France", "Einstein", "water", "dog", "Monday"):
        q, ids = entity_query(v, entity)
        seen |= {e.target_id for e in describe_edges(v, ids, entity, layers,
                                                      lambda _l, q=q: q, labels=False,
                                                      fan_in=False)}
    assert seen & found


# --------------------------------------------------------------------------- SELECT

def test_select_features_where_target_finds_carriers(smol):
    r = smol.query('SELECT * FROM FEATURES WHERE target = "Paris" LIMIT 5')
    assert len(r.rows) == 5
    assert all(row["target"].strip() == "Paris" for row in r.rows)
    mags = [abs(row["confidence"]) for row in r.rows]
    assert mags == sorted(mags, reverse=True)
    # the score is down · (u(Paris) − mean u) with u = head ⊙ final-norm weight
    from lql.runtime import model_for
    m = model_for(smol.vindex)
    tid = smol.vindex.tokenizer.encode(" Paris", add_special_tokens=False).ids[0]
    head = np.asarray(m.head, np.float32)
    w = np.asarray(m.final_norm(np.ones((1, head.shape[1]), np.float32))[0])
    d = (head[tid] - head.mean(0)) * w
    row = r.rows[0]
    down = np.asarray(m.blocks[row["layer"]].ffn.down, np.float32)      # (ffn, hidden)
    assert row["confidence"] == pytest.approx(float(down[row["feature"]] @ d), rel=1e-3)
