"""Browse computations on a small in-memory vindex (random matrices + a real tokenizer),
where labels, noise and overlay markings can be set up exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import tiny_model_dir  # noqa: E402

from lql import ast  # noqa: E402
from lql.browse import describe, select, show_relations, walk  # noqa: E402
from lql.browse.tokens import tokens_of  # noqa: E402
from lql.browse.where import matches  # noqa: E402
from lql.errors import ExecutionError  # noqa: E402

H, F, L, K = 16, 24, 4, 4


class FakeDownMeta:
    def __init__(self, ids, scores):
        self.ids, self.scores = ids, scores

    def top_ids(self, layer):
        return self.ids[layer]

    def top_scores(self, layer):
        return self.scores[layer]


class FakeVindex:
    """The Vindex interface browse uses, in memory."""

    def __init__(self, seed=0):
        from tokenizers import Tokenizer
        self.tokenizer = Tokenizer.from_file(str(tiny_model_dir("llama") / "tokenizer.json"))
        rng = np.random.default_rng(seed)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.num_layers, self.hidden_size, self.embed_scale = L, H, 1.0
        self.model, self.family, self.dtype, self.level = "fake", "llama", "f32", "browse"
        self.layer_bands = {"syntax": (0, 0), "knowledge": (1, 2), "output": (3, 3)}
        self.index = {"layer_bands": self.layer_bands}
        self._emb = rng.standard_normal((self.vocab_size, H)).astype(np.float32)
        self._gates = [rng.standard_normal((F, H)).astype(np.float32) for _ in range(L)]
        ids = rng.integers(1000, 20000, size=(L, F, K))
        scores = np.sort(rng.random((L, F, K)).astype(np.float32) + 1, axis=2)[:, :, ::-1].copy()
        self.down_meta = FakeDownMeta(ids, scores)
        self.feature_labels = {}
        self.relation_clusters = None

    def num_features(self, layer):
        return F

    def gate(self, layer):
        return self._gates[layer]

    def embed(self, ids):
        return self._emb[np.asarray(ids)]

    def token_text(self, i):
        return self.tokenizer.decode([int(i)])

    def tid(self, text):
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        assert len(ids) == 1, text
        return ids[0]

    def aim(self, layer, feature, entity, strength=50.0):
        """Make ``feature`` fire strongly for the entity (DESCRIBE's query)."""
        ids = self.tokenizer.encode(" " + entity, add_special_tokens=False).ids
        q = self._emb[ids].mean(axis=0)
        self._gates[layer][feature] = strength * q / np.dot(q, q)


@pytest.fixture
def v():
    return FakeVindex()


def test_noise_rules(v):
    toks = tokens_of(v)
    assert toks.is_noise(v.tid(","))
    assert toks.is_noise(v.tid(" the"))                     # stop word
    assert toks.is_noise(0) or 0 in toks.special_ids        # a special token
    assert not toks.is_noise(v.tid(" Paris"))
    assert not toks.is_noise(v.tid("Paris"))                # a word: " Paris" is one token
    frag = next(t for t in ("ington", "ization", "ically") if
                len(v.tokenizer.encode(t, add_special_tokens=False).ids) == 1)
    assert toks.is_noise(v.tid(frag))                       # a sub-word fragment


def test_walk_equals_numpy(v):
    r = walk(v, "The capital of France is", top=3, layers=None)
    q = v._emb[v.tokenizer.encode("The capital of France is", add_special_tokens=False).ids[-1]]
    for l in range(L):
        s = v._gates[l] @ q
        want = np.argsort(-np.abs(s), kind="stable")[:3]
        got = [row for row in r.rows if row["layer"] == l]
        assert [row["feature"] for row in got] == want.tolist()
        assert [row["gate"] for row in got] == pytest.approx(s[want].tolist(), rel=1e-5)
        for row in got:
            assert row["top_token"] == v.token_text(v.down_meta.ids[l, row["feature"], 0])


def test_describe_merges_labels_and_filters(v):
    paris, comma = v.tid(" Paris"), v.tid(",")
    for layer, feat in ((1, 3), (2, 5)):                    # two layers push " Paris"
        v.aim(layer, feat, "France")
        v.down_meta.ids[layer, feat, 0] = paris
    v.aim(1, 7, "France", 40.0)                             # noise target: dropped
    v.down_meta.ids[1, 7, 0] = comma
    v.aim(2, 9, "France", 45.0)                             # the entity itself: dropped
    v.down_meta.ids[2, 9, 0] = v.tid(" France")
    v.feature_labels = {(2, 5): "capital"}
    r = describe(v, "France", verbosity="VERBOSE")
    top = r.rows[0]
    assert top["target"] == " Paris" and top["relation"] == "capital"
    assert (top["layer_min"], top["layer_max"], top["count"]) == (1, 2, 2)
    targets = [row["target"] for row in r.rows]
    assert "," not in targets and " France" not in targets
    only = describe(v, "France", relations_only=True)
    assert [row["target"] for row in only.rows] == [" Paris"]
    raw = describe(v, "France", verbosity="RAW")
    assert all(row["relation"] is None for row in raw.rows)
    assert "," in [row["target"] for row in raw.rows]       # RAW keeps noise targets
    assert describe(v, "").message == "(not found)"


def test_describe_marks_inserted(v):
    v.aim(1, 2, "Atlantis")
    v.down_meta.ids[1, 2, 0] = v.tid(" Paris")
    v.inserted_edges = lambda: [
        {"entity": "Atlantis", "relation": "capital", "target": " Paris", "layer": 1,
         "feature": 2, "confidence": 0.9, "mode": "compose"},
        {"entity": "Atlantis", "relation": "ruler", "target": "Poseidon", "layer": 2,
         "feature": None, "confidence": 1.0, "mode": "knn"}]
    r = describe(v, "Atlantis", verbosity="VERBOSE")
    by_target = {row["target"]: row for row in r.rows}
    assert by_target[" Paris"]["source"] == "inserted"
    assert by_target["Poseidon"]["source"] == "inserted"
    assert by_target["Poseidon"]["relation"] == "ruler"


def test_show_relations_probe_beats_cluster(v, tmp_path):
    v.path = tmp_path
    v.relation_clusters = {"k": 2, "labels": ["capital-ish", "language"], "counts": [3, 4],
                           "top_tokens": [[" Paris"], [" French"]]}
    (tmp_path / "feature_clusters.jsonl").write_text(
        '{"layer": 1, "feature": 4, "cluster": 0}\n{"layer": 2, "feature": 6, "cluster": 1}\n')
    v.feature_labels = {(1, 4): "capital"}
    r = show_relations(v, with_examples=True)
    rels = {(row["relation"], row["source"]) for row in r.rows}
    assert ("capital", "probe") in rels and ("language", "cluster") in rels
    assert ("capital-ish", "cluster") in rels                 # listed from the clusters file
    empty = show_relations(FakeVindex())
    assert empty.rows == [] and "no relation labels" in empty.message


def test_where_operators():
    assert matches("target", "=", "Paris", " Paris")
    assert matches("target", "LIKE", "par%", " Paris")
    assert not matches("target", "LIKE", "par_", " Paris!")
    assert matches("layer", "IN", (1, 2), 2) and not matches("layer", "IN", (1, 2), 3)
    assert matches("gate", ">=", 1.5, 1.5) and matches("gate", "<", 2, 1.5)
    assert matches("relation", "!=", "capital", None)
    with pytest.raises(ExecutionError, match="number"):
        matches("layer", "=", "x", 3)


def test_select_sources(v):
    v.feature_labels = {(1, 4): "capital", (3, 2): "capital", (2, 2): "language"}
    cap = select(v, ast.SelectSource.EDGES, where=(ast.Condition("relation", "=", "capital"),))
    assert [(r["layer"], r["feature"]) for r in cap.rows] == [(1, 4), (3, 2)]
    order = select(v, ast.SelectSource.FEATURES, fields=("layer", "feature", "confidence"),
                   where=(ast.Condition("layer", "=", 2),),
                   order_by=ast.OrderBy("confidence", descending=True), limit=3)
    want = np.sort(v.down_meta.scores[2][:, 0])[::-1][:3]
    assert [r["confidence"] for r in order.rows] == pytest.approx(want.tolist(), rel=1e-5)
    assert order.columns == ["layer", "feature", "confidence"]
    with pytest.raises(ExecutionError, match="unknown field"):
        select(v, ast.SelectSource.EDGES, order_by=ast.OrderBy("nope"))
    with pytest.raises(ExecutionError, match="out of range"):
        select(v, ast.SelectSource.FEATURES, where=(ast.Condition("layer", "=", 9),))
