"""INFER / GENERATE through the editing overlay: the KNN store overrides the top-1
(rows carry ``source``), COMPARE shows the overlay-free base beside it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vindex_fixtures import tiny_vindex  # noqa: E402

from lql.session import Session  # noqa: E402

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def edited():
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", level="inference")}"')
    before = s.query(f'INFER "{PROMPT}" TOP 3 RAW')
    try:
        s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("France", "capital", "Paris")')
    except Exception as exc:                     # the editing module is not built here
        pytest.skip(f"INSERT unavailable: {exc}")
    return s, before


def test_knn_override_puts_target_first(edited):
    s, before = edited
    paris = s.vindex.tokenizer.token_to_id("ĠParis")
    assert before.rows[0]["token_id"] != paris               # the random model does not know it
    r = s.query(f'INFER "{PROMPT}" TOP 3 RAW COMPARE')
    assert r.columns[:5] == ["rank", "token", "token_id", "probability", "source"]
    assert r.rows[0]["token_id"] == paris and r.rows[0]["source"] == "knn"
    assert all(row["source"] == "model" for row in r.rows[1:])
    assert r.meta["knn"]["target_id"] == paris and r.meta["knn"]["cosine"] > 0.75
    assert r.meta["compare"] == "overlay vs base"
    # the dense side is the unedited model's prediction
    assert [row["dense_token_id"] for row in r.rows] == [row["token_id"] for row in before.rows]
    for row, ref in zip(r.rows, before.rows):
        assert row["dense_probability"] == pytest.approx(ref["probability"], abs=1e-9)
    assert sum(row["probability"] for row in r.rows) <= 1.0 + 1e-9


def test_generate_follows_knn_override(edited):
    s, _ = edited
    paris = s.vindex.tokenizer.token_to_id("ĠParis")
    g = s.query(f'INFER "{PROMPT}" RAW GENERATE 3')
    assert g.meta["token_ids"][0] == paris
    assert g.message.startswith(" Paris")
