"""LARQL's knn_store.bin (lql.vindex.knn_store): read, write, and refuse broken files.

The reference bytes are laid out here field by field from LARQL's writer
(crates/larql-vindex/src/patch/knn_store_io.rs, ``KnnStore::save``), not by our encoder.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from lql.errors import VindexError
from lql.vindex.knn_store import StoredFact, encode_knn_store, read_knn_store, write_knn_store


def larql_bytes(layers: dict[int, list[tuple[np.ndarray, int, dict]]], dim: int) -> bytes:
    out = b"LKNN" + struct.pack("<I", 1) + struct.pack("<I", dim) + struct.pack("<I", len(layers))
    for layer, entries in layers.items():
        out += struct.pack("<I", layer) + struct.pack("<I", len(entries))
        for key, _tid, _meta in entries:
            out += b"".join(struct.pack("<e", float(v)) for v in key)
        for _key, tid, _meta in entries:
            out += struct.pack("<I", tid)
        for _key, _tid, meta in entries:
            blob = json.dumps(meta).encode()
            out += struct.pack("<I", len(blob)) + blob
    return out


def test_reads_what_larql_writes(tmp_path):
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((3, 8)).astype(np.float16).astype(np.float32)
    meta = [{"target_token": " Tokyo", "entity": "Eiffel Tower", "relation": "located in",
             "confidence": 0.75},
            {"target_token": " Poseidon", "entity": "Atlantis", "relation": "capital",
             "confidence": 1.0},
            {"target_token": "", "entity": "x", "relation": "", "confidence": 0.5}]
    data = larql_bytes({14: [(keys[0], 11, meta[0]), (keys[1], 22, meta[1])],
                        20: [(keys[2], 33, meta[2])]}, 8)
    path = tmp_path / "knn_store.bin"
    path.write_bytes(data)
    facts = read_knn_store(path)
    assert [(f.layer, f.target_id, f.entity, f.relation, f.target_token, f.confidence)
            for f in facts] == [(14, 11, "Eiffel Tower", "located in", " Tokyo", 0.75),
                                (14, 22, "Atlantis", "capital", " Poseidon", 1.0),
                                (20, 33, "x", "", "", 0.5)]
    np.testing.assert_array_equal(np.stack([f.key for f in facts]), keys)
    # and our encoder writes those same bytes back
    assert encode_knn_store(facts) == data
    out = write_knn_store(tmp_path / "again.bin", facts)
    assert out.read_bytes() == data


def test_round_trip_and_empty(tmp_path):
    facts = [StoredFact(layer=3, key=np.arange(4, dtype=np.float32) / 8, target_id=7,
                        target_token="ü", entity="É", relation="r", confidence=0.25)]
    back = read_knn_store(write_knn_store(tmp_path / "k.bin", facts))
    assert back[0].entity == "É" and back[0].target_token == "ü"
    np.testing.assert_array_equal(back[0].key, facts[0].key)
    assert read_knn_store(write_knn_store(tmp_path / "e.bin", [])) == []
    with pytest.raises(ValueError, match="different sizes"):
        encode_knn_store([facts[0], StoredFact(3, np.zeros(5, np.float32), 1)])
    with pytest.raises(ValueError, match="does not fit f16"):
        encode_knn_store([StoredFact(3, np.full(4, 1e6, np.float32), 1)])


@pytest.mark.parametrize("cut, message", [
    (lambda d: b"LKNX" + d[4:], "magic is not LKNN"),
    (lambda d: d[:4] + struct.pack("<I", 2) + d[8:], "version 2"),
    (lambda d: d[:-3], "truncated"),
    (lambda d: d + b"\0", "1 bytes after the last layer"),
    (lambda d: d[:-2] + b"}{", "not JSON"),
])
def test_broken_files_are_named(tmp_path, cut, message):
    data = larql_bytes({2: [(np.ones(4, np.float32), 5, {"entity": "a"})]}, 4)
    path = tmp_path / "knn_store.bin"
    path.write_bytes(cut(data))
    with pytest.raises(VindexError, match=message) as e:
        read_knn_store(path)
    assert str(path) in str(e.value)
