"""knn_store.bin in a session: USE loads a vindex's KNN facts (LARQL's, keyed by the FFN
input), INFER fires them, COMPILE INTO VINDEX writes the session's facts back and a USE
of the compiled vindex fires them again (LARQL: use_cmd.rs:66-73, into_vindex.rs:355-358)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vindex_fixtures import tiny_vindex  # noqa: E402

from lql.runtime import ffn_inputs  # noqa: E402
from lql.session import Session  # noqa: E402
from lql.vindex import open_vindex  # noqa: E402
from lql.vindex.knn_store import StoredFact, read_knn_store, write_knn_store  # noqa: E402

PROMPT = "The capital of France is"
OTHER = "Water is made of"
LAYER = 1


@pytest.fixture()
def larql_vindex(tmp_path):
    """A copy of the tiny Llama vindex with a LARQL-style knn_store.bin: one fact whose key
    is the FFN input at LAYER on PROMPT (what LARQL's INSERT ... MODE KNN stores), with
    LARQL's four metadata fields only."""
    dst = tmp_path / "v"
    shutil.copytree(tiny_vindex("llama", level="inference"), dst)
    v = open_vindex(dst)
    key = ffn_inputs(v, PROMPT, [LAYER])[LAYER]
    paris = v.tokenizer.token_to_id("ĠParis")
    write_knn_store(dst / "knn_store.bin", [StoredFact(
        layer=LAYER, key=key / np.linalg.norm(key), target_id=paris, target_token="Paris",
        entity="France", relation="capital", confidence=1.0)])
    other = ffn_inputs(v, OTHER, [LAYER])[LAYER]
    cos = float(key @ other / np.linalg.norm(key) / np.linalg.norm(other))
    assert cos < 0.75, cos          # precondition: OTHER is not this key's neighbour
    return dst, paris


def test_use_loads_larqls_store_and_infer_fires_it(larql_vindex):
    path, paris = larql_vindex
    s = Session()
    r = s.query(f'USE "{path}"')
    assert "1 KNN fact from knn_store.bin" in r.message and r.meta["knn_facts"] == 1
    assert [e.key_kind for e in s.overlay.knn] == ["ffn_input"]
    top = s.query(f'INFER "{PROMPT}" TOP 3 RAW')
    assert top.rows[0]["token_id"] == paris and top.rows[0]["source"] == "knn"
    assert top.meta["knn"]["cosine"] == pytest.approx(1.0, abs=1e-3)   # f16 key
    assert s.query(f'INFER "{OTHER}" TOP 3 RAW').meta.get("knn") is None
    assert not s.has_unsaved_edits()          # loading the store is not an edit
    # the base vindex is not touched
    assert len(read_knn_store(path / "knn_store.bin")) == 1


def test_compile_into_vindex_keeps_knn_facts(larql_vindex, tmp_path):
    path, paris = larql_vindex
    s = Session()
    s.query(f'USE "{path}"')
    s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Water", "made of", "Paris") '
            'AT LAYER 1 MODE KNN')
    ours = [e for e in s.overlay.knn if e.entity == "Water"][0]
    water = [op for op in s.overlay.recording.operations if op.op == "insert_knn"][0].get("prompt")
    out = tmp_path / "compiled"
    # this model has a chat template and the session wraps (SET CHAT AUTO): INSERT also
    # keyed the fact on the prompt as a chat user turn; each form has its scoped entry
    assert [(e.prompt_form, e.scope is not None) for e in s.overlay.knn if e.entity == "Water"] \
        == [("raw", False), ("raw", True), ("chat", False), ("chat", True)]
    r = s.query(f'COMPILE CURRENT INTO VINDEX "{out}"')
    assert r.meta["knn_facts"] == 5 and "5 KNN facts written to knn_store.bin" in r.message
    facts = read_knn_store(out / "knn_store.bin")
    assert [(f.entity, f.layer) for f in facts] == [("France", 1)] + [("Water", 1)] * 4
    assert "key_kind" not in facts[0].extra                  # LARQL's own: nothing added
    assert "subject" not in facts[0].extra and facts[1].extra["subject"] == "Water"
    assert facts[1].extra["key_kind"] == ours.key_kind
    assert facts[1].extra["threshold"] == pytest.approx(ours.threshold)
    assert "prompt_form" not in facts[1].extra and facts[3].extra["prompt_form"] == "chat"
    s2 = Session()
    assert s2.query(f'USE "{out}"').meta["knn_facts"] == 5
    assert [e.prompt_form for e in s2.overlay.knn] == ["raw", "raw", "raw", "chat", "chat"]
    back = [e for e in s2.overlay.knn if e.entity == "Water"][0]
    assert back.key_kind == ours.key_kind and back.threshold == pytest.approx(ours.threshold)
    np.testing.assert_array_equal(back.center, ours.center)    # f32 in the metadata
    for prompt in (PROMPT, water):
        a = s.query(f'INFER "{prompt}" TOP 3 RAW')
        b = s2.query(f'INFER "{prompt}" TOP 3 RAW')
        assert a.rows[0]["token_id"] == b.rows[0]["token_id"] == paris
        assert b.rows[0]["source"] == "knn"
        assert b.meta["knn"]["cosine"] == pytest.approx(a.meta["knn"]["cosine"], abs=2e-3)


def test_deleting_every_fact_compiles_without_a_store(larql_vindex, tmp_path):
    path, _ = larql_vindex
    s = Session()
    s.query(f'USE "{path}"')
    s.query('DELETE FROM EDGES WHERE entity = "France" AND relation = "capital"')
    assert s.overlay.knn == []
    out = tmp_path / "compiled"
    s.query(f'COMPILE CURRENT INTO VINDEX "{out}"')
    assert not (out / "knn_store.bin").exists()
    assert (path / "knn_store.bin").exists()


def test_a_malformed_store_is_said_and_left_out(larql_vindex):
    path, _ = larql_vindex
    data = (path / "knn_store.bin").read_bytes()
    (path / "knn_store.bin").write_bytes(data[:-7])
    s = Session()
    r = s.query(f'USE "{path}"')
    assert "knn_store.bin not loaded" in r.message and "truncated" in r.message
    assert r.meta["knn_facts"] == 0
    assert s.query(f'INFER "{PROMPT}" TOP 3 RAW').meta.get("knn") is None


def test_a_larql_knn_patch_fires_on_the_ffn_input(larql_vindex, tmp_path):
    """A LARQL patch's insert_knn (format.rs:72-84: no key kind; LARQL's INSERT keys it by
    the FFN input) fires here on the FFN input, not on the residual."""
    import base64
    import json
    path, paris = larql_vindex
    (path / "knn_store.bin").unlink()
    v = open_vindex(path)
    key = ffn_inputs(v, PROMPT, [LAYER])[LAYER]
    key = (key / np.linalg.norm(key)).astype("<f4")
    doc = {"version": 1, "base_model": v.model, "created_at": "2026-01-01T00:00:00Z",
           "operations": [{"op": "insert_knn", "layer": LAYER, "entity": "France",
                           "relation": "capital", "target": "Paris", "target_id": paris,
                           "confidence": 1.0,
                           "key_vector_b64": base64.b64encode(key.tobytes()).decode()}]}
    patch = tmp_path / "larql.vlp"
    patch.write_text(json.dumps(doc))
    s = Session()
    s.query(f'USE "{path}"')
    s.query(f'APPLY PATCH "{patch}"')
    assert [e.key_kind for e in s.overlay.knn] == ["ffn_input"]
    r = s.query(f'INFER "{PROMPT}" TOP 3 RAW')
    assert r.rows[0]["token_id"] == paris and r.rows[0]["source"] == "knn"
    assert r.meta["knn"]["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_every_way_of_using_a_vindex_loads_its_store(larql_vindex):
    """Session.use_vindex (what the server's per-client sessions call) loads the store
    as USE does."""
    path, paris = larql_vindex
    s = Session()
    s.use_vindex(open_vindex(path))
    assert s.knn_store_facts == 1 and len(s.overlay.knn) == 1
    assert s.query(f'INFER "{PROMPT}" TOP 1 RAW').rows[0]["token_id"] == paris
    s.use_vindex(None)
    assert s.overlay is None and s.knn_store_facts == 0


def _atlantis_capital_paris(larql_vindex):
    """A raw session on the LARQL vindex with ("Atlantis", "capital", "Paris") inserted in
    MODE KNN at layer 1, and the fact's KNN entries."""
    path, _ = larql_vindex
    s = Session()
    s.query(f'USE "{path}"')
    s.query("SET CHAT OFF")
    s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", '
            '"Paris") AT LAYER 1 MODE KNN')
    return s, [e for e in s.overlay.knn if e.entity == "Atlantis"]


def test_other_wording_keys_survive_compile_into_vindex(larql_vindex, tmp_path):
    """A fact of a relation in lql.edit.prompts.PARAPHRASES gets a KNN key on each of its
    other wordings; COMPILE INTO VINDEX writes their ``paraphrase`` flag into the entry's
    metadata and a USE of the compiled vindex reads it back (COMPACT MINOR moves them with
    their fact, so the flag must not be lost)."""
    from lql.edit.prompts import PARAPHRASES
    s, ours = _atlantis_capital_paris(larql_vindex)
    n_tok = len(s.vindex.tokenizer.encode(" Paris", add_special_tokens=False).ids)
    # one per target token and wording, and the scoped entry
    assert len(ours) == n_tok * (1 + len(PARAPHRASES["capital"])) + 1
    assert sum(not e.paraphrase and e.scope is None for e in ours) == n_tok
    out = tmp_path / "compiled"
    s.query(f'COMPILE CURRENT INTO VINDEX "{out}"')
    facts = [f for f in read_knn_store(out / "knn_store.bin") if f.entity == "Atlantis"]
    assert [bool(f.extra.get("paraphrase")) for f in facts] == [e.paraphrase for e in ours]
    s2 = Session()
    s2.query(f'USE "{out}"')
    assert [e.paraphrase for e in s2.overlay.knn if e.entity == "Atlantis"] == \
        [e.paraphrase for e in ours]


def test_scoped_entry_survives_compile_into_vindex(larql_vindex, tmp_path):
    """INSERT ... MODE KNN adds a scoped entry (its subject, its other keys and rival keys,
    the whole target's ids) and scopes every key to the entity; COMPILE INTO VINDEX writes
    them into knn_store.bin's metadata and a USE of the compiled vindex reads them back:
    the same entries, the same predictions."""
    from lql.runtime import predict
    s, ours = _atlantis_capital_paris(larql_vindex)
    assert all(e.subject == "Atlantis" for e in ours)
    scoped = [e for e in ours if e.scope is not None]
    assert len(scoped) == 1
    sc = scoped[0].scope
    ids = s.vindex.tokenizer.encode(" Paris", add_special_tokens=False).ids
    assert list(sc.target_ids) == ids and len(sc.rivals) > 0 and len(sc.keys) > 0
    prompts = ["The capital city of Atlantis is", "The capital of Atlantis is",
               "Atlantis is famous for its"]
    before = [predict(s.vindex, p).top1 for p in prompts]
    out = tmp_path / "compiled"
    s.query(f'COMPILE CURRENT INTO VINDEX "{out}"')
    s2 = Session()
    s2.query(f'USE "{out}"')
    s2.query("SET CHAT OFF")
    back = [e for e in s2.overlay.knn if e.entity == "Atlantis"]
    assert [e.subject for e in back] == [e.subject for e in ours]
    sc2 = [e for e in back if e.scope is not None][0].scope
    assert sc2.target_ids == sc.target_ids
    assert np.allclose(sc2.rivals, sc.rivals, atol=1e-6) and np.allclose(sc2.keys, sc.keys, atol=1e-6)
    assert [predict(s2.vindex, p).top1 for p in prompts] == before
    # the plain keys keep their target prefix and find their scoped entry again
    assert [e.prefix_ids for e in back] == [e.prefix_ids for e in ours]
    assert any(e.prefix_ids for e in ours) or len(ids) == 1
    assert all((e.sibling is not None) == (e.scope is None) for e in back)


def test_a_scoped_facts_rivals_leave_out_its_own_relation_in_any_spelling(larql_vindex, monkeypatch):
    """The rivals of a scoped entry are the other relations' wordings: a relation's alias
    ("colour" for "color", "official language" for "language") is the same question."""
    from lql.edit import insert
    from lql.edit.prompts import PARAPHRASES, TEMPLATES, same_relation
    assert same_relation("Official_Language") == "language" and same_relation("colour") == "color"
    path, _ = larql_vindex
    view = open_vindex(path)
    seen: list[str] = []
    real = insert._knn_vectors

    def spy(v, prompts, layer, kind):
        seen.extend(p for p in prompts if isinstance(p, str))
        return real(v, prompts, layer, kind)
    monkeypatch.setattr(insert, "_knn_vectors", spy)
    ids = view.tokenizer.encode(" blue", add_special_tokens=False).ids
    insert.scope_op(view, "Atlantis", "color", "blue", ids, layer=1)
    assert TEMPLATES["colour"].replace("{entity}", "Atlantis") not in seen
    assert TEMPLATES["capital"].replace("{entity}", "Atlantis") in seen       # a rival
    assert PARAPHRASES["capital"][0].replace("{entity}", "Atlantis") in seen


def test_compile_into_model_names_the_knn_facts_it_leaves_out_and_compact_minor_bakes_them(tmp_path):
    """KNN entries are not weights: COMPILE INTO MODEL says how many it left out and how to
    bake them (COMPACT MINOR); after COMPACT MINOR none is left out and the compiled
    weights carry the facts' features."""
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny_vindex("llama", level="all")}"')
    s.query("SET CHAT OFF")
    s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", '
            f'"Paris") AT LAYER {LAYER}')        # one token: the tiny random model takes it
    n = len(s.overlay.knn)
    r = s.query(f'COMPILE CURRENT INTO MODEL "{tmp_path / "m1"}"')
    assert n > 0 and r.meta["knn_left_out"] == n and r.meta["edited_features"] == 0
    assert f"{n} KNN entries are not weights" in r.message and "COMPACT MINOR" in r.message
    c = s.query("COMPACT MINOR")
    assert c.meta["promoted"] == 1, c.message
    r2 = s.query(f'COMPILE CURRENT INTO MODEL "{tmp_path / "m2"}"')
    assert r2.meta["knn_left_out"] == 0 and r2.meta["edited_features"] > 0
    assert "not weights" not in r2.message
