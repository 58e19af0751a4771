"""Statements on Gemma 4 vindexes (the tiny fixtures in /work/shared/fixtures/gemma4):
TRACE's attribution identity with the PLE branch and the layer_scalar products, the model's
PLE-delta and routing records, EXPLAIN INFER's expert rows (against transformers' router),
STATS / browse on variable FFN widths, and edits + COMPILE INTO MODEL loading in
transformers as Gemma 4 with the session's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import gemma4_fixtures

from lql.session import Session

FIXTURES = gemma4_fixtures()
MODELS = ("tiny-gemma4", "tiny-gemma4-moe")
PROMPT = "The capital of Atlantis is"
if not (FIXTURES / "tiny-gemma4" / "config.json").is_file():
    pytest.skip(f"no Gemma 4 fixtures at {FIXTURES}", allow_module_level=True)


@pytest.fixture(scope="module")
def vindexes(tmp_path_factory) -> dict[str, Path]:
    from lql.sources import open_source
    from lql.vindex import extract
    root = tmp_path_factory.mktemp("g4v")
    return {m: extract(open_source(FIXTURES / m), root / f"{m}.vindex", level="all", dtype="f32")
            for m in MODELS}


def _session(path: Path, cwd: Path) -> Session:
    s = Session(cwd=cwd)
    s.query(f'USE "{path}"')
    s.query("SET CHAT OFF")
    return s


def _ids(s: Session, text: str) -> list[int]:
    return s.vindex.tokenizer.encode(text).ids


def _plain_token(s: Session, logits, skip: int = 0) -> int:
    """A token, ``skip`` places down the logits, whose text names it (no byte pieces)."""
    ok = [int(t) for t in np.argsort(-logits, kind="stable")
          if s.vindex.token_text(int(t)).strip().isalnum()
          and s.vindex.tokenizer.token_to_id(s.vindex.token_text(int(t))) == int(t)]
    return ok[skip]


def _model(s: Session):
    from lql.model import build_model
    return build_model(dict(s.vindex.model_config), s.vindex.weights)


# --------------------------------------------------------------------------- model records

@pytest.mark.parametrize("name", MODELS)
def test_recorded_deltas_rebuild_every_residual(name, vindexes, tmp_path):
    """residual_l = s_l · (residual_{l-1} + attn_l + ffn_l + ple_l), from the records alone."""
    from lql.model import Record
    s = _session(vindexes[name], tmp_path)
    model = _model(s)
    out = model.forward(_ids(s, PROMPT), record=Record(residuals="all", deltas="all"))
    has_ple = name == "tiny-gemma4"
    assert (out.ple_deltas is not None) == has_ple
    scalars = np.asarray(s.vindex.weights["layers.0.layer_scalar"])
    assert scalars.shape == (1,) and abs(float(scalars[0]) - 1.0) > 1e-3  # the fixture's scalars matter
    prev = np.asarray(out.embedding, np.float64)
    for layer in range(model.num_layers):
        sc = float(np.asarray(s.vindex.weights[f"layers.{layer}.layer_scalar"])[0])
        ple = out.ple_deltas[layer] if has_ple else 0.0
        want = sc * (prev + out.attn_deltas[layer] + out.ffn_deltas[layer] + ple)
        np.testing.assert_allclose(out.residuals[layer], want, rtol=1e-5, atol=1e-5)
        prev = np.asarray(out.residuals[layer], np.float64)
    if has_ple:
        assert all(np.linalg.norm(d) > 1e-3 for d in out.ple_deltas)   # the branch really adds


# --------------------------------------------------------------------------- TRACE

@pytest.mark.parametrize("name", MODELS)
def test_trace_identity_includes_ple_and_scalars(name, vindexes, tmp_path):
    s = _session(vindexes[name], tmp_path)
    model = _model(s)
    ids = _ids(s, PROMPT)
    out = model.forward(ids)
    tid = _plain_token(s, out.logits, 3)          # not the top token: any token works
    tok = s.vindex.token_text(tid)
    r = s.query(f'TRACE "{PROMPT}" FOR "{tok}" DECOMPOSE')
    d = r.meta["dla"]
    assert d["token_id"] == tid
    has_ple = name == "tiny-gemma4"
    assert ("ple_logit" in r.columns) == has_ple and "scale" in r.columns and ("ple_norm" in r.columns) == has_ple
    rows = {x["layer"]: x for x in r.rows}
    total = d["embedding_logit"] + d["bias_logit"] + sum(
        x["attn_logit"] + x["ffn_logit"] + x.get("ple_logit", 0.0) for x in rows.values())
    assert total == pytest.approx(d["final_logit"], abs=1e-4)
    # final_logit is the model's own logit before the final soft-cap
    cap = float(s.vindex.model_config["final_logit_softcapping"])
    assert cap * np.tanh(d["final_logit"] / cap) == pytest.approx(float(out.logits[tid]), abs=1e-4)
    # the scales are the products of the later layer scalars (independently of lql.infer.lens)
    sc = [float(np.asarray(s.vindex.weights[f"layers.{i}.layer_scalar"])[0]) for i in range(model.num_layers)]
    for layer, row in rows.items():
        assert row["scale"] == pytest.approx(float(np.prod(sc[layer:])), rel=1e-6)
    # dropping the scale (the old identity) would not sum up: the test can fail
    unscaled = d["embedding_logit"] / float(np.prod(sc)) + sum(
        (x["attn_logit"] + x["ffn_logit"] + x.get("ple_logit", 0.0)) / x["scale"] for x in rows.values())
    assert abs(unscaled - d["final_logit"]) > 1e-3
    if has_ple:
        assert abs(d["ple_logit_total"]) > 1e-4
        assert d["ple_logit_total"] == pytest.approx(sum(x["ple_logit"] for x in rows.values()), abs=1e-9)


def test_trace_identity_every_position_and_save(vindexes, tmp_path):
    s = _session(vindexes["tiny-gemma4"], tmp_path)
    model = _model(s)
    ids = _ids(s, PROMPT)
    tid = _plain_token(s, model.forward(ids).logits)
    r = s.query(f'TRACE "{PROMPT}" FOR "{s.vindex.token_text(tid)}" POSITIONS ALL SAVE "t.npz"')
    z = np.load(tmp_path / "t.npz")
    assert z["ple_deltas"].shape == z["attn_deltas"].shape and z["layer_scales"].shape == (model.num_layers,)
    res, c = z["residuals"].astype(np.float64), z["layer_scales"]
    # r_final = c_0 e + Σ c_l (a_l + f_l + p_l) at every position
    parts = z["attn_deltas"] + z["ffn_deltas"] + z["ple_deltas"]
    rebuilt = c[0] * res[0] + np.einsum("l,lth->th", c, parts.astype(np.float64))
    np.testing.assert_allclose(rebuilt, res[-1], rtol=1e-4, atol=1e-4)
    # per position: the row logits at the last layer are the lens logit of the final residual
    last = [x for x in r.rows if x["layer"] == model.num_layers - 1]
    assert len(last) == len(ids)


# --------------------------------------------------------------------------- EXPLAIN INFER

def test_explain_infer_lists_routed_experts_like_transformers(vindexes, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    s = _session(vindexes["tiny-gemma4-moe"], tmp_path)
    r = s.query(f'EXPLAIN INFER "{PROMPT}" TOP 3')
    assert {"expert", "router_weight"} <= set(r.columns)
    got: dict[int, list[tuple[int, float]]] = {}
    for x in r.rows:
        if x["kind"] == "expert":
            got.setdefault(x["layer"], []).append((x["expert"], x["router_weight"]))
    hf = transformers.Gemma4ForCausalLM.from_pretrained(FIXTURES / "tiny-gemma4-moe", dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    seen: dict[int, tuple] = {}
    hooks = [layer.router.register_forward_hook(
        lambda mod, inp, out, i=i: seen.__setitem__(i, out)) for i, layer in enumerate(hf.model.layers)]
    with torch.no_grad():
        hf(torch.tensor([_ids(s, PROMPT)]))
    for h in hooks:
        h.remove()
    assert sorted(got) == sorted(seen) == list(range(6))
    top_k = int(s.vindex.model_config["top_k_experts"])
    for layer, (_, weights, index) in seen.items():
        want = list(zip(index[-1].tolist(), weights[-1].tolist(), strict=True))
        assert len(got[layer]) == top_k
        assert [e for e, _ in got[layer]] == [e for e, _ in want], layer
        np.testing.assert_allclose([w for _, w in got[layer]], [w for _, w in want], atol=1e-5)


def test_explain_infer_without_experts_is_unchanged(vindexes, tmp_path):
    s = _session(vindexes["tiny-gemma4"], tmp_path)
    r = s.query(f'EXPLAIN INFER "{PROMPT}" TOP 2')
    assert r.columns == ["layer", "kind", "feature", "activation", "label", "top_token", "down_tokens"]
    assert {x["kind"] for x in r.rows} == {"ffn"}


# --------------------------------------------------------------------------- browse

@pytest.mark.parametrize("name", MODELS)
def test_stats_and_browse_on_variable_widths(name, vindexes, tmp_path):
    cfg = json.loads((FIXTURES / name / "config.json").read_text())
    n, base = cfg["num_hidden_layers"], cfg["intermediate_size"]
    shared = cfg.get("num_kv_shared_layers") or 0
    widths = [base * (2 if cfg.get("use_double_wide_mlp") and i >= n - shared else 1) for i in range(n)]
    s = _session(vindexes[name], tmp_path)
    stats = s.query("STATS").rows[0]
    assert stats["features"] == sum(widths)
    wide = n - 1
    r = s.query(f"SELECT * FROM FEATURES WHERE layer = {wide} AND feature >= {widths[wide] - 2}")
    assert [x["feature"] for x in r.rows] == [widths[wide] - 2, widths[wide] - 1]
    w = s.query(f'WALK "{PROMPT}" TOP 3')
    assert {x["layer"] for x in w.rows} == set(range(n))
    assert all(0 <= x["feature"] < widths[x["layer"]] for x in w.rows)
    assert s.query(f'EXPLAIN WALK "{PROMPT}" TOP 2').rows
    s.query('DESCRIBE "Atlantis"')


# --------------------------------------------------------------------------- edits + COMPILE

def _hf_model(path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.Gemma4ForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                         attn_implementation="eager").eval()


def _hf_probs(model, ids):
    import torch
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].double().softmax(-1).numpy()


@pytest.mark.parametrize("name", MODELS)
def test_compile_without_edits_writes_the_source(name, vindexes, tmp_path):
    from safetensors.numpy import load_file
    s = _session(vindexes[name], tmp_path)
    s.query('COMPILE CURRENT INTO MODEL "plain"')
    src = load_file(FIXTURES / name / "model.safetensors")
    out = load_file(tmp_path / "plain" / "model.safetensors")
    assert set(out) == set(src)                     # PLE tables, experts, layer scalars included
    for k, v in out.items():
        assert v.dtype == src[k].dtype and np.array_equal(v, src[k]), k
    want = json.loads((FIXTURES / name / "config.json").read_text())
    got = json.loads((tmp_path / "plain" / "config.json").read_text())
    for key in ("per_layer_config", "layer_types", "rope_parameters", "num_kv_shared_layers",
                "use_double_wide_mlp", "attention_k_eq_v", "enable_moe_block", "num_experts",
                "top_k_experts", "moe_intermediate_size", "hidden_size_per_layer_input",
                "intermediate_size", "head_dim", "num_key_value_heads", "final_logit_softcapping"):
        assert got.get(key) == want.get(key), key
    _hf_model(tmp_path / "plain")


def test_compile_keeps_the_hub_config_format(tmp_path):
    from lql.families.gemma4 import Gemma4
    cfg = json.loads((FIXTURES / "tiny-gemma4-moe" / "config.json").read_text())
    del cfg["per_layer_config"]
    cfg.update(global_head_dim=32, num_global_key_value_heads=1)
    mc = Gemma4().model_config(cfg)
    out = Gemma4().hf_config(mc)
    assert "per_layer_config" not in out and out["global_head_dim"] == 32 and out["num_global_key_value_heads"] == 1
    assert Gemma4().model_config(out)["per_layer"]["head_dim"] == mc["per_layer"]["head_dim"]
    assert Gemma4().model_config(out)["per_layer"]["num_kv_heads"] == mc["per_layer"]["num_kv_heads"]


@pytest.mark.parametrize("name", MODELS)
def test_edits_compile_into_a_gemma4_transformers_loads(name, vindexes, tmp_path):
    s = _session(vindexes[name], tmp_path)
    before = s.query(f'INFER "{PROMPT}" TOP 5')
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", "Paris") '
                'MODE COMPOSE')
    layer, feature = r.rows[0]["layer"], r.rows[0]["feature"]
    s.query("DELETE FROM EDGES WHERE layer = 1 AND feature = 3")
    s.query('UPDATE EDGES SET confidence = 0.5 WHERE layer = 0 AND feature = 2')
    after = s.query(f'INFER "{PROMPT}" TOP 10')
    assert [x["probability"] for x in after.rows[:5]] != [x["probability"] for x in before.rows]
    s.query('COMPILE CURRENT INTO MODEL "edited"')
    from safetensors.numpy import load_file
    t = load_file(tmp_path / "edited" / "model.safetensors")
    assert not t["model.layers.1.mlp.down_proj.weight"][:, 3].any()          # DELETE zeroes the down column
    src = load_file(FIXTURES / name / "model.safetensors")
    assert not np.array_equal(t[f"model.layers.{layer}.mlp.gate_proj.weight"][feature],
                              src[f"model.layers.{layer}.mlp.gate_proj.weight"][feature])
    model = _hf_model(tmp_path / "edited")
    for prompt in (PROMPT, "Once upon a time"):
        ref = _hf_probs(model, _ids(s, prompt))
        mine = s.query(f'INFER "{prompt}" TOP 10')
        assert [x["token_id"] for x in mine.rows] == np.argsort(-ref, kind="stable")[:10].tolist(), prompt
        for x in mine.rows:
            assert abs(x["probability"] - ref[x["token_id"]]) <= 1e-5
