"""The two vindex layouts our users publish, built small from SmolLM2 (tests/larql_fixtures.py):

* *Gemma 4 E2B (LarQL v0.2)*: down_features.bin, a substitute tokenizer with fewer tokens
  than the embedding rows, manifest.json, no weight manifest;
* *Qwen3-8B SVD*: index.json with ``num_feats`` and no ``layers``/``dtype``,
  ``[L × k × H]`` f16 SVD directions in gate_vectors.bin / down_features.bin, SHA256SUMS.

Each must open and browse (WALK, DESCRIBE, SELECT, SHOW, STATS) with the results of the
same data in our own layout.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from larql_fixtures import larql_e2b_layout, larql_svd_layout
from vindex_fixtures import smollm2_vindex

from lql.errors import VindexError
from lql.session import Session
from lql.vindex import open_vindex

PROMPT = 'WALK "The capital of France is" TOP 8;'
TOKENS = 20000


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    svd = larql_svd_layout(root / "svd")
    return {"e2b": larql_e2b_layout(root / "e2b", TOKENS), "svd": svd,
            "svd_ref": larql_svd_layout(root / "svd_ref", explicit=True, reuse=svd)}


def _session(path):
    s = Session()
    r = s.query(f'USE "{path}";')
    return s, r


def test_e2b_substitute_tokenizer_is_reported_and_rows_beyond_it_are_never_decoded(layouts):
    s, use = _session(layouts["e2b"])
    assert f"tokenizer.json has {TOKENS:,} tokens but the embeddings have 49,152 rows" in use.message
    stats = s.query("STATS;")
    assert stats.rows[0]["tokenizer_size"] == TOKENS and "substitute" in stats.message
    ref, _ = _session(smollm2_vindex("browse", "f16"))
    got, want = s.query(PROMPT), ref.query(PROMPT)
    # the prompt's tokens are below the cut, so the same features fire with the same gates
    assert [(r["layer"], r["feature"], r["gate"]) for r in got.rows] == \
        [(r["layer"], r["feature"], r["gate"]) for r in want.rows]
    for g, w in zip(got.rows, want.rows):
        tid = w["top_token_id"]
        assert g["top_token"] == (w["top_token"] if tid < TOKENS else f"⟨row {tid}⟩")
    v = s.vindex
    beyond = [(n, f) for n in (3, 20) for f in range(v.num_features(n))
              if v.down_meta.top_ids(n)[f, 0] >= TOKENS][:3]
    assert beyond, "the fixture should have features whose top token is beyond the cut"
    for n, f in beyond:
        rows = s.query(f"SELECT * FROM FEATURES WHERE layer = {n} AND feature = {f};").rows
        assert rows[0]["target"] == f"⟨row {v.down_meta.top_ids(n)[f, 0]}⟩"
    d = s.query('DESCRIBE "France";')
    assert d.rows and all(not r["target"] or r["target"].startswith("⟨row ")
                          or r["target_id"] < TOKENS for r in d.rows)


def test_e2b_down_features_are_the_down_projection(layouts):
    v = open_vindex(layouts["e2b"])
    ref = open_vindex(smollm2_vindex("inference", "f16"))
    for n in (0, 17, 29):
        down = ref.weights[f"layers.{n}.mlp.down_proj.weight"]
        np.testing.assert_array_equal(v.down_features(n), down.T)
        np.testing.assert_array_equal(v.weights[f"layers.{n}.mlp.down_proj.weight"], down)
    assert v.weights.shape("layers.3.mlp.down_proj.weight") == down.shape


def test_e2b_truncated_down_features_is_named(layouts, tmp_path):
    d = tmp_path / "e2b"
    shutil.copytree(layouts["e2b"], d)
    path = d / "down_features.bin"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(VindexError, match="down_features.bin: .* bytes"):
        open_vindex(d).down_features(0)


def test_svd_vindex_opens_says_what_its_features_are_and_browses_like_the_reference(layouts):
    s, use = _session(layouts["svd"])
    assert "layers=30 × 16 features (from num_feats)" in use.message
    assert "dtype=f16 (from gate_vectors.bin's size)" in use.message
    st = s.query("STATS;").rows[0]
    assert st["features"] == 30 * 16 and st["dtype"] == "f16"
    assert st["features_are"].startswith("the top-16 SVD directions")
    ref, _ = _session(layouts["svd_ref"])
    assert ref.query("STATS;").rows[0].get("features_are") is None
    for stmt in (PROMPT, "SELECT * FROM FEATURES WHERE layer = 5;",
                 "SHOW FEATURES 7 LIMIT 5;", "SHOW ENTITIES 12 LIMIT 5;"):
        assert s.query(stmt).rows == ref.query(stmt).rows, stmt
    # DESCRIBE: the SVD index.json names no family, so its bands are derived (not LARQL's
    # llama table) and the edges chosen per band differ; each edge is a stored direction
    edges = s.query('DESCRIBE "France" ALL LAYERS;').rows
    assert edges and all(0 <= e["feature"] < 16 for e in edges)
    # the layers synthesised from num_feats: the gates are the stored directions
    v = open_vindex(layouts["svd"])
    raw = np.fromfile(layouts["svd"] / "gate_vectors.bin", dtype="<f2").reshape(30, 16, -1)
    np.testing.assert_array_equal(v.gate(11), raw[11].astype(np.float32))
    assert v.down_features(11).shape == (16, v.hidden_size)


def test_svd_index_with_bad_num_feats_is_refused(layouts, tmp_path):
    d = tmp_path / "svd"
    shutil.copytree(layouts["svd"], d)
    ix = json.loads((d / "index.json").read_text())
    ix["num_feats"] = 0
    (d / "index.json").write_text(json.dumps(ix))
    with pytest.raises(VindexError, match="needs positive integers for num_feats"):
        open_vindex(d)
    ix["num_feats"] = 17                      # more features than gate_vectors.bin holds
    (d / "index.json").write_text(json.dumps(ix))
    with pytest.raises(VindexError, match="gate_vectors.bin"):
        open_vindex(d)
