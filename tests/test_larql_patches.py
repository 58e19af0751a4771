"""Patches between lql and LARQL, both ways (docs/LARQL.md, "Patches").

LARQL's patch is ``VindexPatch`` with ``PatchOp`` tagged by ``op`` (Divinci-AI/larql at
4f6dfb4, crates/larql-vindex/src/patch/format.rs): header ``version, base_model,
created_at`` (+ optional ``base_checksum, description, author, tags``); ``insert {layer,
feature, entity, target, relation?, confidence?, gate_vector_b64?, down_meta? {t, i, c}}``,
``update {layer, feature, gate_vector_b64?, down_meta?}``, ``delete {layer, feature,
reason?}``, ``insert_knn {layer, entity, relation, target, target_id, confidence?,
key_vector_b64}``, ``delete_knn {entity}``; serde ignores unknown fields.  ``larql_read``
below is that reading, written from the struct, so what LARQL keeps of our patch is
tested, not assumed.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from vindex_fixtures import smollm2_vindex

from lql.session import Session

HEADER = {"version": int, "base_model": str, "created_at": str}
OPTIONAL_HEADER = {"base_checksum": (str, type(None)), "description": (str, type(None)),
                   "author": (str, type(None)), "tags": list}
OPS = {  # field → (type, required)
    "insert": {"layer": (int, True), "feature": (int, True), "entity": (str, True),
               "target": (str, True), "relation": (str, False), "confidence": (float, False),
               "gate_vector_b64": (str, False), "down_meta": (dict, False)},
    "update": {"layer": (int, True), "feature": (int, True), "gate_vector_b64": (str, False),
               "down_meta": (dict, False)},
    "delete": {"layer": (int, True), "feature": (int, True), "reason": (str, False)},
    "insert_knn": {"layer": (int, True), "entity": (str, True), "relation": (str, True),
                   "target": (str, True), "target_id": (int, True),
                   "confidence": (float, False), "key_vector_b64": (str, True)},
    "delete_knn": {"entity": (str, True)},
}


def larql_read(doc: dict) -> list[dict]:
    """The operations as LARQL's serde derive reads them (unknown fields dropped); raises
    AssertionError where LARQL would refuse the file."""
    for k, t in HEADER.items():
        assert isinstance(doc.get(k), t), f"LARQL needs {k}: {t.__name__}"
    for k, t in OPTIONAL_HEADER.items():
        assert k not in doc or isinstance(doc[k], t), k
    out = []
    for o in doc["operations"]:
        fields = OPS.get(o.get("op"))
        assert fields is not None, f"LARQL has no op {o.get('op')!r}"
        kept = {"op": o["op"]}
        for name, (t, required) in fields.items():
            if name not in o or o[name] is None:
                assert not required, f"{o['op']} needs {name}"
                continue
            ok = isinstance(o[name], (int, float) if t is float else t) and not isinstance(
                o[name], bool)
            assert ok, f"{o['op']}.{name} must be {t.__name__}"
            kept[name] = o[name]
        if "down_meta" in kept:
            dm = kept["down_meta"]
            assert isinstance(dm.get("t"), str) and isinstance(dm.get("i"), int) and \
                isinstance(dm.get("c"), (int, float)), "down_meta needs t, i, c"
        out.append(kept)
    return out


def f32(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


@pytest.fixture(scope="module")
def vindex():
    return smollm2_vindex("inference", "f16")


def test_our_patch_read_the_larql_way(vindex, tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE "{vindex}";')
    s.query('BEGIN PATCH "ours.vlp";')
    ins = s.query('INSERT INTO EDGES (entity, relation, target) VALUES '
                  '("Atlantis", "capital", "Poseidon") MODE COMPOSE;')
    s.query("DELETE FROM EDGES WHERE layer = 20 AND feature = 7;")
    s.query("SAVE PATCH;")
    doc = json.loads((tmp_path / "ours.vlp").read_text())
    ops = larql_read(doc)                    # LARQL accepts the whole file
    inserts = [o for o in ops if o["op"] == "insert"]
    assert inserts and any(o["op"] == "delete" and (o["layer"], o["feature"]) == (20, 7)
                           for o in ops)
    hidden = s.vindex.hidden_size
    edits = s.overlay.features
    for o in inserts:
        gate = f32(o["gate_vector_b64"])
        assert gate.shape == (hidden,)
        np.testing.assert_array_equal(gate, edits[(o["layer"], o["feature"])].gate)
        # down_meta names the token the feature's down vector writes (LARQL's label)
        assert s.vindex.token_text(o["down_meta"]["i"]).strip() == o["down_meta"]["t"].strip()
    # what LARQL cannot represent: COMPOSE's up and down vectors (its insert has no field
    # for them), so in LARQL the fact routes (gate) and is labelled (down_meta) but does
    # not write the target into the residual
    raw_inserts = [o for o in doc["operations"] if o["op"] == "insert"]
    assert all("down_vector_b64" in o and "down_vector_b64" not in k
               for o, k in zip(raw_inserts, inserts))
    # the fact itself, as LARQL reads it
    assert {(o["entity"], o["relation"], o["target"]) for o in inserts} == \
        {("Atlantis", "capital", "Poseidon")}
    assert "Poseidon" in (ins.message or "")


def test_larql_patch_applied_here_and_removed(vindex, tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE "{vindex}";')
    walk = 'WALK "The capital of France is" TOP 20;'
    before = s.query(walk).rows
    victim = before[0]
    donor = before[1]
    gate = np.asarray(s.vindex.gate(donor["layer"])[donor["feature"]], dtype="<f4")
    target_id = s.vindex.tokenizer.token_to_id("ĠParis")
    doc = {"version": 1, "base_model": s.vindex.model, "created_at": "2026-05-04T00:00:00Z",
           "operations": [
               {"op": "delete", "layer": victim["layer"], "feature": victim["feature"],
                "reason": "test"},
               {"op": "update", "layer": donor["layer"], "feature": donor["feature"],
                "down_meta": {"t": "Paris", "i": target_id, "c": 3.5}},
               {"op": "insert", "layer": 5, "feature": 11, "entity": "France",
                "relation": "capital", "target": "Paris", "confidence": 0.9,
                "gate_vector_b64": base64.b64encode((gate * 2).tobytes()).decode(),
                "down_meta": {"t": "Paris", "i": target_id, "c": 3.5}}]}
    larql_read(doc)                          # a patch LARQL itself would load
    (tmp_path / "larql.vlp").write_text(json.dumps(doc))
    s.query('APPLY PATCH "larql.vlp";')
    after = s.query(walk).rows
    hits = {(r["layer"], r["feature"]): r for r in after}
    assert (victim["layer"], victim["feature"]) not in hits
    new = hits.get((5, 11))
    assert new is not None and new["top_token"] == " Paris"
    assert new["gate"] == pytest.approx(2 * donor["gate"], rel=1e-3)
    assert hits[(donor["layer"], donor["feature"])]["top_token"] == " Paris"
    s.query('REMOVE PATCH "larql.vlp";')
    assert s.query(walk).rows == before
