"""COMPACT MINOR / MAJOR / SHOW COMPACT STATUS on SmolLM2: each step keeps the facts'
retrieval (whole target, greedy), moves them a tier (KNN → COMPOSE → MEMIT), and REMOVE
PATCH reverts everything exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lql.session import Session  # noqa: E402

pytestmark = pytest.mark.slow

FACTS = [("Atlantis", "capital", "Poseidon"), ("Wakanda", "capital", "Birnin")]
CONTROL = "The capital of France is"


def _tiers(s):
    return {r["store"]: r["facts"] for r in s.query("SHOW COMPACT STATUS").rows}


def _produces(s, entity, target):
    from lql.edit.insert import fact_sequence, target_tokens
    from lql.runtime import predict
    view = s.vindex
    ids = target_tokens(view, target)
    prompt = f"The capital of {entity} is"
    return all(predict(view, list(fact_sequence(view, prompt, tuple(ids[:i]))), top=1).top1 == t
               for i, t in enumerate(ids))


def test_compact_minor_major_keep_retrieval_and_remove_reverts(tmp_path):
    from vindex_fixtures import smollm2_vindex

    from lql.runtime import predict
    s = Session(cwd=tmp_path)
    s.query(f'USE "{smollm2_vindex(level="inference", dtype="f32", source="hf")}"')
    s.query("SET CHAT OFF")
    p0 = predict(s.vindex, CONTROL).probs.copy() if hasattr(s.vindex, "overlay") else None
    s.query('BEGIN PATCH "c.vlp"')
    base = predict(s.vindex, CONTROL).probs.copy()
    for e, r, t in FACTS:
        s.query(f'INSERT INTO EDGES (entity, relation, target) VALUES ("{e}", "{r}", "{t}")')
    assert _tiers(s) == {"KNN": 2, "COMPOSE": 0, "MEMIT": 0}
    assert any(k.paraphrase for k in s.overlay.knn)     # keys on other wordings: same facts
    assert all(_produces(s, e, t) for e, _, t in FACTS)

    r = s.query("COMPACT MINOR")
    assert r.meta["promoted"] == 2, r.message
    assert _tiers(s) == {"KNN": 0, "COMPOSE": 2, "MEMIT": 0}
    assert not s.overlay.knn           # the keys on the relation's other wordings went too
    assert all(_produces(s, e, t) for e, _, t in FACTS)

    r = s.query("COMPACT MAJOR WITH LAMBDA = 0.5")
    assert r.meta["promoted"] == 2, r.message
    assert _tiers(s) == {"KNN": 0, "COMPOSE": 0, "MEMIT": 2}
    assert all(_produces(s, e, t) for e, _, t in FACTS)

    s.query('REMOVE PATCH "c.vlp"')
    assert np.array_equal(predict(s.vindex, CONTROL).probs, base)
    assert _tiers(s) == {"KNN": 0, "COMPOSE": 0, "MEMIT": 0}
    del p0
