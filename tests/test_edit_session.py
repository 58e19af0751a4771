"""Patch statements through the Session on a tiny vindex (fast): BEGIN / SAVE / APPLY /
REMOVE / SHOW PATCHES, direct DELETE, refusal of a foreign patch, base files untouched."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lql.errors import ExecutionError, NoVindexError  # noqa: E402
from lql.session import Session  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    from vindex_fixtures import tiny_vindex
    return tiny_vindex("llama", "all", "f32")


def _sums(path):
    from lql.vindex.checksums import sha256_file
    return {f: sha256_file(Path(path) / f) for f in sorted(os.listdir(path))
            if (Path(path) / f).is_file()}


def test_mutation_without_vindex():
    with pytest.raises(NoVindexError):
        Session().query("DELETE FROM EDGES WHERE layer = 0 AND feature = 1")


def test_patch_lifecycle(tiny, tmp_path):
    before = _sums(tiny)
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny}"')
    base = s.vindex
    g0 = np.array(base.gate(1), copy=True)
    r = s.query("DELETE FROM EDGES WHERE layer = 1 AND feature IN (2, 5)")
    assert r.meta["removed"] == 2 and r.meta["auto_patch"] is True
    assert "auto-patch" in r.message
    assert s.overlay.has_unsaved_edits()
    v = s.vindex
    assert not v.gate(1)[2].any() and not v.gate(1)[5].any()
    assert np.array_equal(np.delete(v.gate(1), [2, 5], 0), np.delete(g0, [2, 5], 0))
    rows = s.query("SHOW PATCHES").rows
    assert rows[0]["status"] == "recording (unsaved)" and rows[0]["deletes"] == 2
    with pytest.raises(ExecutionError, match="needs a path|no file"):
        s.query("SAVE PATCH")
    s.query('SAVE PATCH "a.vlp"')
    assert not s.overlay.has_unsaved_edits()
    doc = json.loads((tmp_path / "a.vlp").read_text())
    assert [o["op"] for o in doc["operations"]] == ["delete", "delete"]
    assert doc["base_model"] == base.model
    assert doc["base_checksum"] == base.index["checksums"]["gate_vectors.bin"]

    s.query('BEGIN PATCH "b.vlp"')
    s.query("DELETE FROM EDGES WHERE layer = 0 AND feature = 3")
    s.query("SAVE PATCH")
    assert [r["patch"] for r in s.query("SHOW PATCHES").rows] == \
        [str(tmp_path / "a.vlp"), str(tmp_path / "b.vlp")]
    s.query('REMOVE PATCH "a.vlp"')
    assert np.array_equal(s.vindex.gate(1), g0)           # exact revert
    assert not s.vindex.gate(0)[3].any()
    s.query('REMOVE PATCH "b.vlp"')
    for layer in range(base.num_layers):
        assert np.array_equal(s.vindex.gate(layer), base.gate(layer))

    # a fresh session re-applies the saved patch
    s2 = Session(cwd=tmp_path)
    s2.query(f'USE "{tiny}"')
    s2.query('APPLY PATCH "a.vlp"')
    assert not s2.vindex.gate(1)[2].any()
    with pytest.raises(ExecutionError, match="already applied"):
        s2.query('APPLY PATCH "a.vlp"')
    assert _sums(tiny) == before                           # base files never change


def test_foreign_patch_is_refused_unless_forced(tiny, tmp_path):
    doc = {"version": 1, "base_model": "someone/else", "base_checksum": None,
           "operations": [{"op": "delete", "layer": 0, "feature": 0}]}
    (tmp_path / "f.vlp").write_text(json.dumps(doc))
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny}"')
    with pytest.raises(ExecutionError, match="someone/else.*FORCE"):
        s.query('APPLY PATCH "f.vlp"')
    s.query('APPLY PATCH "f.vlp" FORCE')
    assert not s.vindex.gate(0)[0].any()


def test_patch_with_bad_layer_is_refused(tiny, tmp_path):
    doc = {"version": 1, "operations": [{"op": "delete", "layer": 99, "feature": 0}]}
    (tmp_path / "bad.vlp").write_text(json.dumps(doc))
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny}"')
    from lql.errors import VindexError
    with pytest.raises(VindexError, match="layer 99"):
        s.query('APPLY PATCH "bad.vlp"')


def test_compile_vindex_bakes_direct_edits(tiny, tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny}"')
    s.query("DELETE FROM EDGES WHERE layer = 1 AND feature = 4")
    want = {l: np.array(s.vindex.gate(l)) for l in range(s.vindex.num_layers)}
    down_key = "layers.1.mlp.down_proj.weight"
    want_down = np.array(s.vindex.weights[down_key])
    r = s.query('COMPILE CURRENT INTO VINDEX "out.vindex"')
    assert "down_meta.bin" in r.meta["rewritten"] and "gate_vectors.bin" in r.meta["rewritten"]
    from lql.vindex import open_vindex
    out = open_vindex(tmp_path / "out.vindex", verify=True)   # new checksums verify
    for l, g in want.items():
        assert np.array_equal(out.gate(l), g)
    assert np.array_equal(out.weights[down_key], want_down)
    assert out.down_meta.record(1, 4) is None
    with pytest.raises(ExecutionError, match="FORCE"):
        s.query('COMPILE CURRENT INTO VINDEX "out.vindex"')


def test_gguf_output_is_not_supported(tiny, tmp_path):
    from lql.errors import NotBuiltError
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny}"')
    with pytest.raises(NotBuiltError, match="GGUF"):
        s.query('COMPILE CURRENT INTO MODEL "m" FORMAT GGUF')


def test_diff_into_patch_and_merge_reproduce_the_edits(tiny, tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny}"')
    s.query("DELETE FROM EDGES WHERE layer = 1 AND feature = 6")
    s.query('UPDATE EDGES SET confidence = 0.5 WHERE layer = 0 AND feature = 2')  # metadata only
    r = s.query(f'DIFF "{tiny}" CURRENT INTO PATCH "d.vlp"')
    assert [(row["layer"], row["feature"], row["change"]) for row in r.rows] == [(1, 6, "deleted")]
    s2 = Session(cwd=tmp_path)
    s2.query(f'USE "{tiny}"')
    m = s2.query('MERGE "d.vlp"')
    assert m.meta["merged"] == 1
    for layer in range(s.vindex.num_layers):
        assert np.array_equal(s2.vindex.gate(layer), s.vindex.gate(layer))
    # KEEP_TARGET leaves an existing edit alone
    s3 = Session(cwd=tmp_path)
    s3.query(f'USE "{tiny}"')
    s3.query("DELETE FROM EDGES WHERE layer = 1 AND feature = 6")
    assert s3.query('MERGE "d.vlp" ON CONFLICT KEEP_TARGET').meta["skipped"] == 1


def test_update_target_of_a_base_feature(tiny, tmp_path):
    from lql.edit.insert import unembed_direction
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny}"')
    key = "layers.1.mlp.down_proj.weight"
    old = np.array(s.vindex.weights[key][:, 3])
    r = s.query('UPDATE EDGES SET target = "Paris" WHERE layer = 1 AND feature = 3')
    tid = s.vindex.tokenizer.encode(" Paris", add_special_tokens=False).ids[0]
    new = np.array(s.vindex.weights[key][:, 3])
    assert r.rows[0]["target"] == "Paris"
    assert np.isclose(np.linalg.norm(new), np.linalg.norm(old), rtol=1e-5)
    np.testing.assert_allclose(new / np.linalg.norm(new), unembed_direction(s.vindex, tid),
                               atol=1e-5)
    assert s.vindex.down_meta.top_ids(1)[3, 0] == tid


def test_compile_on_conflict_policies(tiny, tmp_path):
    """Two stacked patches edit (layer 1, feature 3): FAIL refuses, LAST_WINS bakes the
    upper patch, HIGHEST_CONFIDENCE the more confident one; other edits are kept."""
    from lql.edit.insert import unembed_direction
    from lql.vindex import open_vindex
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny}"')
    key = "layers.1.mlp.down_proj.weight"
    norm = float(np.linalg.norm(np.asarray(s.vindex.weights[key])[:, 3]))
    tok = s.vindex.tokenizer
    paris = tok.encode(" Paris", add_special_tokens=False).ids[0]
    berlin = tok.encode(" Berlin", add_special_tokens=False).ids[0]
    s.query('BEGIN PATCH "a.vlp"')
    s.query('UPDATE EDGES SET target = "Paris", confidence = 0.9 WHERE layer = 1 AND feature = 3')
    s.query("SAVE PATCH")
    s.query('BEGIN PATCH "b.vlp"')
    s.query('UPDATE EDGES SET target = "Berlin", confidence = 0.2 WHERE layer = 1 AND feature = 3')
    s.query("DELETE FROM EDGES WHERE layer = 0 AND feature = 2")
    s.query("SAVE PATCH")
    want = {paris: unembed_direction(s.vindex, paris) * norm,
            berlin: unembed_direction(s.vindex, berlin) * norm}

    with pytest.raises(ExecutionError, match=r"L1:F3.*LAST_WINS"):
        s.query('COMPILE CURRENT INTO VINDEX "fail.vindex" ON CONFLICT FAIL')
    assert not (tmp_path / "fail.vindex").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fail")]

    for policy, winner in (("LAST_WINS", berlin), ("HIGHEST_CONFIDENCE", paris)):
        out_path = tmp_path / f"{policy}.vindex"
        s.query(f'COMPILE CURRENT INTO VINDEX "{out_path.name}" ON CONFLICT {policy}')
        out = open_vindex(out_path, verify=True)
        np.testing.assert_allclose(np.asarray(out.weights[key])[:, 3], want[winner], atol=1e-6)
        assert out.down_meta.top_ids(1)[3, 0] == winner
        assert not out.gate(0)[2].any()                  # b's other edit is baked either way
    # the session itself is unchanged by compiling (last patch wins in the view)
    np.testing.assert_allclose(np.asarray(s.vindex.weights[key])[:, 3], want[berlin], atol=1e-6)


def test_knn_insert_on_a_browse_vindex(tmp_path):
    """BROWSE: the KNN key is the entity's mean token embedding × embed_scale; the entry is
    stored, saved, shown by DESCRIBE as inserted; INFER is a LevelError anyway."""
    from vindex_fixtures import tiny_vindex

    from lql.errors import LevelError
    from lql.vindex import open_vindex
    path = tiny_vindex("llama", "browse", "f32")
    s = Session(cwd=tmp_path)
    s.query(f'USE "{path}"')
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Wakanda", "capital", '
                '"Birnin")')
    assert r.rows[0]["mode"] == "knn" and r.rows[0]["feature"] is None
    assert "embedding" in r.message and "BROWSE" in r.message
    [entry] = s.overlay.knn
    base = open_vindex(path)
    ids = base.tokenizer.encode(" Wakanda", add_special_tokens=False).ids
    emb = np.asarray(base.weights["embed_tokens.weight"], np.float32)      # Llama's name
    key = emb[ids].mean(0) * float(base.embed_scale)
    np.testing.assert_allclose(entry.key, key / np.linalg.norm(key), atol=1e-6)
    assert entry.center is None
    assert entry.target_id == base.tokenizer.encode(" Birnin", add_special_tokens=False).ids[0]
    rows = s.query('DESCRIBE "Wakanda"').rows
    ins = [x for x in rows if x.get("source") == "inserted"]
    assert [(x["relation"], x["target"], x["mode"]) for x in ins] == [("capital", "Birnin", "knn")]
    assert not [x for x in s.query('DESCRIBE "France"').rows if x.get("source") == "inserted"]
    # SELECT FROM EDGES lists the KNN entry (an edge without a feature slot)
    sel = s.query('SELECT entity, target, feature FROM EDGES WHERE entity = "Wakanda"').rows
    assert {"entity": "Wakanda", "target": "Birnin", "feature": None} in sel
    sel = s.query('SELECT entity, target FROM EDGES WHERE relation = "capital"').rows
    assert sel == [{"entity": "Wakanda", "target": "Birnin"}]
    assert not s.query('SELECT * FROM EDGES WHERE relation = "language"').rows
    with pytest.raises(LevelError, match="BROWSE"):
        s.query('INFER "The capital of Wakanda is"')
    s.query('SAVE PATCH "k.vlp"')
    doc = json.loads((tmp_path / "k.vlp").read_text())
    assert [o["op"] for o in doc["operations"]] == ["insert_knn"]
    s2 = Session(cwd=tmp_path)
    s2.query(f'USE "{path}"')
    s2.query('APPLY PATCH "k.vlp"')
    np.testing.assert_allclose(s2.overlay.knn[0].key, entry.key, atol=1e-7)
    s2.query('DELETE FROM EDGES WHERE entity = "Wakanda"')
    assert s2.overlay.knn == []
