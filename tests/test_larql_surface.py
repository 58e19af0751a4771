"""LQL text that LARQL's parser accepts (crates/larql-lql/src/parser/) and what lql does with it.

The forms are the ones LARQL's lifecycle/introspection/mutation parsers take
(docs/LARQL.md, "LQL surface"): EXTRACT ... COMPONENTS / WITH WEIGHTS,
USE MODEL ... AUTO_EXTRACT, DIFF ... RELATIONS, SHOW ENTITIES <layer>,
REBALANCE ... FLOOR = p CEILING = p.
"""

from __future__ import annotations

import pytest
from model_fixtures import tiny_model_dir
from vindex_fixtures import tiny_vindex

from lql import ast
from lql.errors import ExecutionError, LqlSyntaxError
from lql.parser import parse
from lql.session import Session


def one(text: str) -> ast.Statement:
    [stmt] = parse(text)
    assert parse(stmt.to_lql()) == [stmt], stmt.to_lql()      # the canonical form round-trips
    return stmt


def test_extract_components_and_weights_parse():
    s = one('EXTRACT MODEL "m" INTO "o" COMPONENTS ffn_gate, FFN_DOWN, FFN_UP, EMBEDDINGS '
            'LAYERS 0-3;')
    assert s.components == ("FFN_GATE", "FFN_DOWN", "FFN_UP", "EMBEDDINGS")
    assert s.layers == ast.Range(0, 3) and s.level is None
    s = one('EXTRACT MODEL "m" INTO "o" COMPONENTS ATTN_OV, ATTN_QK WITH ALL;')
    assert s.components == ("ATTN_OV", "ATTN_QK") and s.level is ast.Level.ALL
    # LARQL: WITH WEIGHTS is the legacy spelling of WITH INFERENCE
    assert one('EXTRACT MODEL "m" INTO "o" WITH WEIGHTS;').level is ast.Level.INFERENCE
    with pytest.raises(LqlSyntaxError) as e:
        parse('EXTRACT MODEL "m" INTO "o" COMPONENTS FFN_GAT;')
    assert "unknown component FFN_GAT" in str(e.value) and e.value.suggestion == "FFN_GATE"


def test_other_larql_forms_parse():
    s = one('USE MODEL "google/gemma-3-4b-it" AUTO_EXTRACT;')
    assert isinstance(s, ast.UseModel) and s.auto_extract
    assert not one('USE MODEL "x";').auto_extract
    assert one('DIFF "a.vindex" "b.vindex" RELATIONS "capital-of";').relation == "capital-of"
    assert one('SHOW ENTITIES 26;') == ast.ShowEntities(layer=26)
    assert one('SHOW ENTITIES 26 LIMIT 5;') == ast.ShowEntities(layer=26, limit=5)
    with pytest.raises(LqlSyntaxError, match="one layer"):
        parse("SHOW ENTITIES 26 AT LAYER 3;")
    s = one("REBALANCE UNTIL CONVERGED MAX 16 FLOOR = 0.25 CEILING = 0.95;")
    assert (s.max_iterations, s.floor, s.ceiling) == (16, 0.25, 0.95)
    assert s == one("REBALANCE UNTIL CONVERGED MAX = 16 FLOOR 0.25 CEILING 0.95;")


@pytest.mark.parametrize("components, level, expected", [
    ("FFN_GATE, FFN_DOWN, EMBEDDINGS", "", "browse"),
    ("FFN_GATE, ATTN_OV", "", "inference"),
    ("FFN_GATE", "WITH ALL", "all"),
])
def test_extract_components_choose_the_level(tmp_path, components, level, expected):
    s = Session(cwd=tmp_path)
    src = tiny_model_dir("llama")
    r = s.query(f'EXTRACT MODEL "{src}" INTO "v" COMPONENTS {components} {level};')
    assert r.rows[0]["level"] == expected
    assert "stores them" in r.message and expected.upper() in r.message


def test_extract_components_refuse_a_level_that_lacks_them(tmp_path):
    s = Session(cwd=tmp_path)
    with pytest.raises(ExecutionError, match="ATTN_QK need WITH INFERENCE"):
        s.query(f'EXTRACT MODEL "{tiny_model_dir("llama")}" INTO "v" '
                'COMPONENTS FFN_GATE, ATTN_QK WITH BROWSE;')
    assert not (tmp_path / "v").exists()          # refused before anything was written


def test_use_model_auto_extract_extracts_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("LQL_VINDEX_CACHE", str(tmp_path / "cache"))
    src = tiny_model_dir("llama")
    s = Session(cwd=tmp_path)
    r = s.query(f'USE MODEL "{src}" AUTO_EXTRACT;')
    info = r.meta["auto_extract"]
    assert info["reused"] is False and "extracted it" in r.message
    assert s.vindex is not None and s.model_source is None
    assert s.vindex.level == "inference"
    assert str(s.vindex.path) == info["vindex"]
    assert info["vindex"].startswith(str(tmp_path / "cache"))
    walk = s.query('WALK "The capital of France is" TOP 3;')
    assert len(walk.rows) > 0
    infer = s.query('INFER "The capital of France is" TOP 3;')
    # the same answer as the live weights (f16 storage rounding only)
    live = Session(cwd=tmp_path)
    live.query(f'USE MODEL "{src}";')
    ref = live.query('INFER "The capital of France is" TOP 3;')
    assert [row["token"] for row in infer.rows] == [row["token"] for row in ref.rows]
    again = Session(cwd=tmp_path).query(f'USE MODEL "{src}" AUTO_EXTRACT;')
    assert again.meta["auto_extract"]["reused"] is True
    assert again.meta["auto_extract"]["vindex"] == info["vindex"]
    assert "reused the cached vindex" in again.message


def test_show_entities_bare_layer_is_at_layer():
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", "browse", "f16")}";')
    bare = s.query("SHOW ENTITIES 1 LIMIT 5;")
    at = s.query("SHOW ENTITIES AT LAYER 1 LIMIT 5;")
    assert bare.rows == at.rows


def test_explain_infer_band_and_relations_only(tmp_path):
    import json
    import os
    import shutil

    from lql.browse.core import bands_of
    src = tiny_vindex("llama", "inference", "f32")
    d = tmp_path / "v"
    shutil.copytree(src, d, copy_function=os.link)
    s = Session()
    s.query(f'USE "{d}";')
    lo, hi = bands_of(s.vindex)["knowledge"]
    prompt = '"The capital of France is" TOP 4 RAW'
    band = s.query(f"EXPLAIN INFER {prompt} KNOWLEDGE;")
    assert band.rows == s.query(f"EXPLAIN INFER {prompt} LAYERS {lo}-{hi};").rows
    assert {r["layer"] for r in band.rows} == set(range(lo, hi + 1))
    with pytest.raises(ExecutionError, match="LAYERS or a band"):
        s.query(f"EXPLAIN INFER {prompt} LAYERS 0-1 OUTPUT;")
    full = s.query(f"EXPLAIN INFER {prompt};").rows
    assert s.query(f"EXPLAIN INFER {prompt} ALL LAYERS;").rows == full
    none = s.query(f"EXPLAIN INFER {prompt} RELATIONS ONLY;")
    assert none.rows == [] and "no labels" in none.message
    # label two of the features EXPLAIN shows (LARQL's key format), one per sign if possible
    pick = sorted(full, key=lambda r: r["activation"])[:1] + \
        sorted(full, key=lambda r: -r["activation"])[:1]
    (d / "feature_labels.json").write_text(json.dumps(
        {f"L{r['layer']}_F{r['feature']}": "capital" for r in pick}))
    s2 = Session()
    s2.query(f'USE "{d}";')
    only = s2.query(f"EXPLAIN INFER {prompt} RELATIONS ONLY;").rows
    assert {(r["layer"], r["feature"]) for r in only} == {(r["layer"], r["feature"]) for r in pick}
    assert all(r["label"] == "capital" for r in only)
    for layer in {r["layer"] for r in only}:          # positive activations first per layer
        acts = [r["activation"] for r in only if r["layer"] == layer]
        assert acts == sorted(acts, key=lambda a: (a <= 0, -abs(a)))
