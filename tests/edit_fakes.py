"""A small in-memory stand-in for a ``Vindex`` (the documented interface only),
so the overlay and patch machinery can be tested without extracting a model."""

from __future__ import annotations

import numpy as np

from lql.vindex.down_meta import layer_records


class FakeDownMeta:
    def __init__(self, recs):
        self._recs = recs
        self.top_k = recs[0].dtype["top"].shape[0]

    def layer_records(self, layer):
        return self._recs[layer]

    def top_ids(self, layer):
        return self._recs[layer]["top"]["id"].astype(np.int64)

    def top_scores(self, layer):
        return np.ascontiguousarray(self._recs[layer]["top"]["score"])

    def record(self, layer, feature):
        r = self._recs[layer][feature]
        return {"top_token_id": int(r["top_token_id"]), "c_score": float(r["c_score"])}


class FakeVindex:
    """``layers`` layers of ``features`` features, hidden ``hidden``, vocab ``vocab``."""

    def __init__(self, layers=3, features=16, hidden=8, vocab=32, seed=0, model="fake/model"):
        rng = np.random.default_rng(seed)
        self.model = model
        self.family = "llama"
        self.path = "/fake"
        self.num_layers, self.hidden_size, self.vocab_size = layers, hidden, vocab
        self.index = {"checksums": {"gate_vectors.bin": f"sum-{seed}"}}
        self.embeddings = rng.standard_normal((vocab, hidden)).astype(np.float32)
        self.weights = {"embed_tokens.weight": self.embeddings}
        self._features = features
        recs = []
        for layer in range(layers):
            g = rng.standard_normal((features, hidden)).astype(np.float32)
            u = rng.standard_normal((features, hidden)).astype(np.float32)
            d = rng.standard_normal((hidden, features)).astype(np.float32)
            for a in (g, u, d):
                a.flags.writeable = False
            self.weights[f"layers.{layer}.mlp.gate_proj.weight"] = g
            self.weights[f"layers.{layer}.mlp.up_proj.weight"] = u
            self.weights[f"layers.{layer}.mlp.down_proj.weight"] = d
            recs.append(layer_records(self.embeddings, lambda lo, hi, d=d: d[:, lo:hi],
                                      features, 4))
        self.down_meta = FakeDownMeta(recs)
        self.feature_labels = {(0, 1): "base-label"}

    def num_features(self, layer):
        return self._features

    def gate(self, layer):
        return self.weights[f"layers.{layer}.mlp.gate_proj.weight"]

    def snapshot(self):
        return {k: np.array(v, copy=True) for k, v in self.weights.items()}
