"""Expert rows of a Gemma 4 MoE vindex in WALK / EXPLAIN WALK / DESCRIBE / SELECT (EXPERTS).

Every number is checked against the fixture's own safetensors, read here with numpy
(``model.layers.L.experts.gate_up_proj`` [E, 2I, H], ``...down_proj`` [E, H, I],
``model.embed_tokens.weight``), not against lql's vindex."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import gemma4_fixtures

from lql.errors import ExecutionError, LevelError
from lql.session import Session

FIXTURES = gemma4_fixtures()
MOE = FIXTURES / "tiny-gemma4-moe"
DENSE = FIXTURES / "tiny-gemma4"
PROMPT = "The capital of Atlantis is"
if not (MOE / "config.json").is_file():
    pytest.skip(f"no Gemma 4 fixtures at {FIXTURES}", allow_module_level=True)


@pytest.fixture(scope="module")
def hf():
    from safetensors.numpy import load_file
    return load_file(str(MOE / "model.safetensors"))


@pytest.fixture(scope="module")
def vindexes(tmp_path_factory) -> dict[str, Path]:
    from lql.sources import open_source
    from lql.vindex import extract
    root = tmp_path_factory.mktemp("g4x")
    return {"moe": extract(open_source(MOE), root / "moe.vindex", level="inference", dtype="f32"),
            "moe-browse": extract(open_source(MOE), root / "moe-b.vindex", level="browse", dtype="f32"),
            "dense": extract(open_source(DENSE), root / "dense.vindex", level="inference", dtype="f32")}


def _session(path: Path) -> Session:
    s = Session()
    s.execute(f'USE "{path}"')
    return s


def _query(s: Session, hf, prompt: str) -> np.ndarray:
    tid = s.vindex.tokenizer.encode(prompt).ids[-1]
    emb = hf["model.embed_tokens.weight"].astype(np.float32)
    return emb[tid] * np.float32(math.sqrt(emb.shape[1]))      # Gemma's embedding scale


def _expert_scores(hf, layer: int, q: np.ndarray) -> np.ndarray:
    gu = hf[f"model.layers.{layer}.experts.gate_up_proj"]
    width = gu.shape[1] // 2
    return np.einsum("eih,h->ei", gu[:, :width].astype(np.float64), q.astype(np.float64))


def _dense_scores(hf, layer: int, q: np.ndarray) -> np.ndarray:
    return hf[f"model.layers.{layer}.mlp.gate_proj.weight"].astype(np.float64) @ q.astype(np.float64)


def _top_token(hf, layer: int, expert: int, row: int) -> int:
    col = hf[f"model.layers.{layer}.experts.down_proj"][expert, :, row].astype(np.float64)
    return int(np.argmax(hf["model.embed_tokens.weight"].astype(np.float64) @ col))


def test_walk_experts_ranks_expert_rows_beside_dense_features(vindexes, hf):
    s = _session(vindexes["moe"])
    r = s.query(f'WALK "{PROMPT}" TOP 6 EXPERTS')
    assert r.columns[:3] == ["layer", "feature", "expert"]
    q = _query(s, hf, PROMPT)
    layers = sorted({row["layer"] for row in r.rows})
    assert layers == list(range(6))
    seen_expert = 0
    for layer in layers:
        dense, ex = _dense_scores(hf, layer, q), _expert_scores(hf, layer, q)
        pool = [(abs(v), v, None, f) for f, v in enumerate(dense)]
        pool += [(abs(v), v, e, i) for (e, i), v in np.ndenumerate(ex)]
        pool.sort(key=lambda p: -p[0])
        want = [(p[2], p[3]) for p in pool[:6]]
        got = [(row["expert"], row["feature"]) for row in r.rows if row["layer"] == layer]
        assert got == want, layer
        for row, p in zip((x for x in r.rows if x["layer"] == layer), pool[:6]):
            assert row["gate"] == pytest.approx(p[1], abs=1e-5)
            if row["expert"] is not None:
                seen_expert += 1
                assert row["top_token_id"] == _top_token(hf, layer, row["expert"], row["feature"])
                assert row["relation"] is None
    assert seen_expert > 0                      # the fixture's experts do make the top 6


def test_walk_without_experts_is_unchanged_and_says_how_to_see_them(vindexes):
    s = _session(vindexes["moe"])
    r = s.query(f'WALK "{PROMPT}" TOP 3')
    assert "expert" not in r.columns and all("expert" not in row for row in r.rows)
    assert "EXPERTS" in (r.message or "")
    dense = _session(vindexes["dense"]).query(f'WALK "{PROMPT}" TOP 3')
    assert dense.message is None


def test_explain_walk_experts_ranks_within_layer(vindexes, hf):
    s = _session(vindexes["moe"])
    r = s.query(f'EXPLAIN WALK "{PROMPT}" LAYERS 2 TOP 8 EXPERTS VERBOSE')
    assert [row["rank"] for row in r.rows] == list(range(1, 9))
    assert [abs(row["gate"]) for row in r.rows] == sorted((abs(row["gate"]) for row in r.rows), reverse=True)
    for row in r.rows:
        if row["expert"] is not None:
            assert len(row["down_tokens"]) == 10 and len(row["down_scores"]) == 10
            assert row["down_scores"] == sorted(row["down_scores"], reverse=True)


def test_select_from_experts_addresses_one_row(vindexes, hf):
    s = _session(vindexes["moe"])
    r = s.query("SELECT * FROM EXPERTS WHERE layer = 3 AND expert = 2 AND feature = 7")
    assert r.columns == ["layer", "expert", "feature", "target", "confidence", "gate"]
    (row,) = r.rows
    gu = hf["model.layers.3.experts.gate_up_proj"]
    assert row["gate"] == pytest.approx(float(np.linalg.norm(gu[2, 7])), abs=1e-5)
    col = hf["model.layers.3.experts.down_proj"][2, :, 7].astype(np.float64)
    logits = hf["model.embed_tokens.weight"].astype(np.float64) @ col
    assert row["confidence"] == pytest.approx(float(logits.max()), abs=1e-5)
    assert row["target"] == s.vindex.token_text(int(np.argmax(logits)))


def test_select_from_experts_scans_with_conditions(vindexes):
    s = _session(vindexes["moe"])
    every = s.query("SELECT * FROM EXPERTS WHERE layer = 1 LIMIT 1000")
    assert len(every.rows) == 4 * 32                       # E × I of the fixture
    assert {(r["expert"], r["feature"]) for r in every.rows} == {(e, i) for e in range(4) for i in range(32)}
    strong = s.query("SELECT * FROM EXPERTS WHERE layer = 1 AND confidence > 0.25 ORDER BY confidence DESC")
    assert strong.rows and all(r["confidence"] > 0.25 for r in strong.rows)
    assert [r["confidence"] for r in strong.rows] == sorted((r["confidence"] for r in strong.rows), reverse=True)
    with pytest.raises(ExecutionError, match="expert 9 is out of range"):
        s.query("SELECT * FROM EXPERTS WHERE layer = 1 AND expert = 9")


def test_describe_experts_edges_name_their_expert(vindexes, hf):
    s = _session(vindexes["moe"])
    r = s.query('DESCRIBE "Atlantis" AT LAYER 1 RAW EXPERTS')
    assert "expert" in r.columns
    ids = s.vindex.tokenizer.encode(" Atlantis", add_special_tokens=False).ids
    emb = hf["model.embed_tokens.weight"].astype(np.float32)
    q = emb[ids].mean(axis=0) * np.float32(math.sqrt(emb.shape[1]))
    ex = _expert_scores(hf, 1, q)
    experts = [row for row in r.rows if row["expert"] is not None]
    assert experts
    for row in experts:
        assert row["gate"] == pytest.approx(ex[row["expert"], row["feature"]], abs=1e-5)
        assert row["gate"] > 0
        assert row["target_id"] == _top_token(hf, 1, row["expert"], row["feature"])
    plain = s.query('DESCRIBE "Atlantis" AT LAYER 1 RAW')
    assert "expert" not in plain.columns


def test_experts_refusals(vindexes):
    with pytest.raises(LevelError, match="WITH INFERENCE"):
        _session(vindexes["moe-browse"]).query(f'WALK "{PROMPT}" EXPERTS')
    with pytest.raises(ExecutionError, match="no mixture-of-experts layers"):
        _session(vindexes["dense"]).query(f'WALK "{PROMPT}" EXPERTS')
    s = _session(vindexes["moe"])
    with pytest.raises(ExecutionError, match="MODE DENSE"):
        s.query(f'WALK "{PROMPT}" MODE DENSE EXPERTS')
    with pytest.raises(ExecutionError, match="COMPARE"):
        s.query(f'WALK "{PROMPT}" COMPARE EXPERTS')
    with pytest.raises(ExecutionError, match="NEAREST"):
        s.query('SELECT * FROM EXPERTS NEAREST TO "Atlantis" AT LAYER 1')


def test_stats_counts_expert_rows_apart_from_features(vindexes, hf):
    row = _session(vindexes["moe"]).query("STATS").rows[0]
    gu = [hf[f"model.layers.{l}.experts.gate_up_proj"] for l in range(6)]
    dense = sum(hf[f"model.layers.{l}.mlp.gate_proj.weight"].shape[0] for l in range(6))
    assert row["features"] == dense
    assert row["expert_rows"] == {"experts": gu[0].shape[0], "width": gu[0].shape[1] // 2, "layers": 6,
                                  "total": sum(g.shape[0] * g.shape[1] // 2 for g in gu)}
    assert "expert_rows" not in _session(vindexes["dense"]).query("STATS").rows[0]
