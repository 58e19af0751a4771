"""``.vlp`` reading/writing and the overlay's patch stack, on an in-memory vindex."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from edit_fakes import FakeVindex  # noqa: E402

from lql import atomic  # noqa: E402
from lql.edit.overlay import Overlay, OverlayVindex  # noqa: E402
from lql.edit.patch import (  # noqa: E402
    Patch,
    PatchOp,
    decode_vector,
    encode_vector,
    read_patch,
    validate_patch,
    write_patch,
)
from lql.errors import ExecutionError, VindexError  # noqa: E402


def test_vector_encoding_is_little_endian_f32_base64():
    vec = np.array([1.0, -2.5, 3.25], dtype=np.float32)
    text = encode_vector(vec)
    raw = base64.b64decode(text)
    assert raw == np.array([1.0, -2.5, 3.25], dtype="<f4").tobytes()
    assert np.array_equal(decode_vector(text), vec)


def test_round_trip_keeps_unknown_keys(tmp_path):
    doc = {"version": 1, "base_model": "m", "base_checksum": None, "created_at": "2026-01-01T00:00:00Z",
           "description": "d", "author": None, "tags": ["x"], "vendor_key": {"a": 1},
           "operations": [
               {"op": "insert", "layer": 1, "feature": 3, "entity": "E", "target": "T",
                "gate_vector_b64": encode_vector(np.ones(8)), "down_meta": {"t": "T", "i": 5, "c": 2.0},
                "custom": [1, 2]},
               {"op": "delete", "layer": 2, "feature": 0, "reason": "r"},
               {"op": "delete_knn", "entity": "E"}]}
    p = tmp_path / "a.vlp"
    p.write_text(json.dumps(doc))
    patch = read_patch(p)
    out = tmp_path / "b.vlp"
    write_patch(patch, out)
    again = json.loads(out.read_text())
    assert again == doc


@pytest.mark.parametrize("bad, msg", [
    ("{not json", "not valid JSON"),
    ('{"operations": [{"op": "explode"}]}', "unknown op"),
    ('{"operations": [{"op": "insert", "layer": "x", "feature": 1}]}', "integer"),
    ('{"version": 99, "operations": []}', "unsupported patch version"),
])
def test_bad_patch_files_are_clear_errors(tmp_path, bad, msg):
    p = tmp_path / "bad.vlp"
    p.write_text(bad)
    with pytest.raises(VindexError, match=msg):
        read_patch(p)


def test_missing_patch_file():
    with pytest.raises(ExecutionError, match="does not exist"):
        read_patch("/nonexistent/x.vlp")


def test_crash_during_save_leaves_old_file_intact(tmp_path, monkeypatch):
    p = tmp_path / "keep.vlp"
    write_patch(Patch(base_model="old"), p)
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk on fire")
    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError):
        write_patch(Patch(base_model="new", operations=[PatchOp.make("delete", layer=0, feature=1)]), p)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["keep.vlp"]   # no temp file left behind


def test_crash_mid_write_leaves_old_file_intact(tmp_path, monkeypatch):
    p = tmp_path / "keep.vlp"
    write_patch(Patch(base_model="old"), p)
    before = p.read_bytes()
    real_fsync = os.fsync

    def fail_fsync(fd):
        raise OSError("power cut")
    monkeypatch.setattr(atomic.os, "fsync", fail_fsync)
    with pytest.raises(OSError):
        write_patch(Patch(base_model="new"), p)
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert p.read_bytes() == before


# --------------------------------------------------------------------------- overlay

def _insert(layer, feature, hidden, seed, **info):
    rng = np.random.default_rng(seed)
    return PatchOp.make("insert", layer=layer, feature=feature, vectors={
        "gate": rng.standard_normal(hidden), "up": rng.standard_normal(hidden),
        "down": rng.standard_normal(hidden)}, **info)


def test_overlay_applies_and_reverts_exactly():
    base = FakeVindex()
    snap = base.snapshot()
    ov = Overlay(base)
    view = OverlayVindex(base, ov)
    op = _insert(1, 4, 8, 1, entity="E", relation="r", target="T")
    ov.record(op)
    w = view.weights
    g = w["layers.1.mlp.gate_proj.weight"]
    assert np.array_equal(g[4], op.vector("gate").astype(np.float32))
    assert np.array_equal(np.delete(g, 4, 0), np.delete(snap["layers.1.mlp.gate_proj.weight"], 4, 0))
    assert np.array_equal(view.gate(1)[4], op.vector("gate"))
    assert np.array_equal(w["layers.1.mlp.up_proj.weight"][4], op.vector("up"))
    assert np.array_equal(w["layers.1.mlp.down_proj.weight"][:, 4], op.vector("down"))
    # down-meta of the inserted feature: top token of E·down, computed independently
    want = int(np.argmax(base.embeddings @ op.vector("down")))
    assert view.down_meta.top_ids(1)[4, 0] == want
    assert view.feature_labels[(1, 4)] == "r"
    # other layers untouched, base never modified
    assert w["layers.0.mlp.gate_proj.weight"] is base.weights["layers.0.mlp.gate_proj.weight"]
    for k, v in snap.items():
        assert np.array_equal(base.weights[k], v)
    ov.remove(ov.recording)
    for k, v in snap.items():
        assert np.array_equal(view.weights[k], v), k
    assert np.array_equal(view.down_meta.top_ids(1), base.down_meta.top_ids(1))


def test_delete_zeroes_gate_and_down_only():
    base = FakeVindex()
    ov = Overlay(base)
    view = OverlayVindex(base, ov)
    ov.record(PatchOp.make("delete", layer=2, feature=7, reason="test"))
    assert not view.gate(2)[7].any()
    assert not view.weights["layers.2.mlp.down_proj.weight"][:, 7].any()
    assert np.array_equal(view.weights["layers.2.mlp.up_proj.weight"],
                          base.weights["layers.2.mlp.up_proj.weight"])
    assert view.down_meta.record(2, 7) is None


def test_later_patches_win_and_removing_the_top_restores_the_lower():
    base = FakeVindex()
    ov = Overlay(base)
    view = OverlayVindex(base, ov)
    a = Patch(operations=[_insert(0, 2, 8, 1)], path=Path("/a.vlp"))
    b = Patch(operations=[_insert(0, 2, 8, 2)], path=Path("/b.vlp"))
    ov.apply(a)
    ov.apply(b)
    assert np.array_equal(view.gate(0)[2], b.operations[0].vector("gate"))
    ov.remove(b)
    assert np.array_equal(view.gate(0)[2], a.operations[0].vector("gate"))
    ov.remove(a)
    assert np.array_equal(view.gate(0), base.gate(0))


def test_knn_store_threshold_and_delete_knn():
    base = FakeVindex()
    ov = Overlay(base)
    key = np.zeros(8, np.float32)
    key[0] = 3.0
    ov.record(PatchOp.make("insert_knn", layer=1, entity="E", relation="r", target="T",
                           target_id=9, vectors={"key": key / 3.0}))
    # no key_kind and no center: LARQL's key, the FFN input at the layer
    assert ov.knn[0].key_kind == "ffn_input"
    r = np.zeros(8, np.float32)
    r[0], r[1] = 1.0, 0.5          # cosine 0.894 > 0.75
    other = np.zeros(8, np.float32)
    other[5] = 1.0
    assert ov.knn_override(1, other, r) == (9, pytest.approx(1 / np.sqrt(1.25), rel=1e-5))
    assert ov.knn_override(1, r, other) is None     # the residual is not its key
    assert ov.knn_override(1, r) is None            # no FFN input recorded: never fires
    r[1] = 1.0                     # cosine 0.707 < 0.75
    assert ov.knn_override(1, other, r) is None
    assert ov.knn_override(0, other, key) is None   # other layer
    ov.record(PatchOp.make("delete_knn", entity="e"))  # case-insensitive match
    assert ov.knn == []
    # an explicit residual key compares the residual
    ov.record(PatchOp.make("insert_knn", layer=1, entity="E", relation="r", target="T",
                           target_id=9, key_kind="residual", vectors={"key": key / 3.0}))
    r[1] = 0.5
    assert ov.knn_override(1, r, other) == (9, pytest.approx(1 / np.sqrt(1.25), rel=1e-5))
    assert ov.knn_override(1, other, r) is None


def test_knn_key_kind_read_back_and_checked(tmp_path):
    key = np.ones(8, np.float32) / np.sqrt(8)
    for kind in ("ffn_input", "residual", "embedding"):
        p = Patch(operations=[PatchOp.make("insert_knn", layer=0, entity="E", relation="r",
                                           target="T", target_id=1, key_kind=kind,
                                           vectors={"key": key})])
        path = write_patch(p, tmp_path / f"{kind}.vlp")
        assert read_patch(path).operations[0].get("key_kind") == kind
    doc = json.loads(path.read_text())
    doc["operations"][0]["key_kind"] = "attention_output"
    path.write_text(json.dumps(doc))
    with pytest.raises(VindexError, match="key_kind 'attention_output'"):
        read_patch(path)


def test_unsaved_edits_flag():
    base = FakeVindex()
    ov = Overlay(base)
    assert not ov.has_unsaved_edits()
    started = ov.record(PatchOp.make("delete", layer=0, feature=0))
    assert started and ov.has_unsaved_edits()
    ov.finish_recording(Path("/x.vlp"))
    assert not ov.has_unsaved_edits()


def _e(i: int, n: int = 8) -> np.ndarray:
    v = np.zeros(n, np.float32)
    v[i] = 1.0
    return v


def test_scoped_knn_entry_subject_rivals_and_whole_target():
    """A scoped entry (INSERT's scope op) fires only where its subject is named, only when
    its own keys are nearer than every rival's, and then writes its whole target: token j
    where the context ends with the first j target tokens and the position before them
    fired."""
    from lql.runtime.view import KnnContext
    base = FakeVindex()
    ov = Overlay(base)
    ov.record(PatchOp.make("insert_knn", layer=1, entity="Atlantis", relation="capital",
                           target="Poseidonia", target_id=9, key_kind="residual",
                           threshold=0.5, subject="Atlantis", scope=True,
                           target_ids=[9, 10, 11],
                           vectors={"key": _e(0), "alt_keys": _e(1), "rivals": _e(2)}))
    e = ov.knn[0]
    assert e.subject == "Atlantis" and e.scope is not None and e.scope.target_ids == (9, 10, 11)
    asks = _e(1) + 0.3 * _e(3)                    # near the second own key
    other = _e(5)

    def ctx(ids, text, *rows):
        return KnnContext(list(ids), text, {1: np.stack(rows)})

    hit = ov.knn_match(1, asks, None, ctx([1, 2], "the seat of atlantis is", asks))
    assert hit is not None and hit[2] == 9 and hit[1] == pytest.approx(1 / np.sqrt(1.09), rel=1e-5)
    assert ov.knn_match(1, asks, None, ctx([1, 2], "the seat of atlanta is", asks)) is None
    assert ov.knn_match(1, asks, None, None) is None            # no context: never fires
    assert ov.knn_match(1, asks, None, ctx([1, 2], "the seat of atlantis is", other)) is None
    near_rival = _e(1) + 1.5 * _e(2)               # above the threshold, but a rival is nearer
    assert ov.knn_match(1, near_rival, None, ctx([1], "atlantis", near_rival)) is None
    # the rest of the target follows the position that fired
    assert ov.knn_match(1, other, None, ctx([1, 9], "atlantis", asks, other))[2] == 10
    assert ov.knn_match(1, other, None, ctx([1, 9, 10], "atlantis", asks, other, other))[2] == 11
    assert ov.knn_match(1, other, None, ctx([1, 9], "atlantis", other, other)) is None
    assert ov.knn_match(1, other, None, ctx([1, 8], "atlantis", asks, other)) is None
    # a plain entry with a subject: needs it named too
    ov.record(PatchOp.make("insert_knn", layer=1, entity="Lemuria", relation="r", target="T",
                           target_id=7, key_kind="residual", subject="Lemuria",
                           vectors={"key": _e(6)}))
    assert ov.knn_match(1, _e(6), None, ctx([1], "lemuria's", _e(6)))[2] == 7
    assert ov.knn_match(1, _e(6), None, ctx([1], "lemurian", _e(6))) is None   # whole words
    # the scoped op survives a patch file
    from lql.edit.overlay import knn_entry_op
    op = knn_entry_op(e)
    assert op.get("scope") and op.get("target_ids") == [9, 10, 11] and op.get("subject") == "Atlantis"
    assert np.allclose(op.vector("rivals"), _e(2)) and np.allclose(op.vector("alt_keys"), _e(1))


def test_scoped_knn_op_checked():
    base = FakeVindex()
    op = PatchOp.make("insert_knn", layer=1, entity="A", relation="r", target="T", target_id=9,
                      scope=True, target_ids=[9, 10], vectors={"key": _e(0), "rivals": np.ones(12)})
    with pytest.raises(VindexError, match="rivals matrix of 12 values"):
        validate_patch(Patch(operations=[op]), base, "p.vlp")
    op = PatchOp.make("insert_knn", layer=1, entity="A", relation="r", target="T", target_id=9,
                      scope=True, target_ids="9", vectors={"key": _e(0)})
    with pytest.raises(VindexError, match="target_ids"):
        validate_patch(Patch(operations=[op]), base, "p.vlp")
