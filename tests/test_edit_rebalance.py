"""REBALANCE on SmolLM2-135M (f32): COMPOSE-inserted facts brought into [FLOOR, CEILING],
measured independently with a forward pass through the overlay; a fact inserted too
strongly (large ALPHA) is scaled down; after UPDATE of a target and DELETE of a fact the
remaining facts converge, or the statement names those that did not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lql.session import Session  # noqa: E402

pytestmark = pytest.mark.slow

FLOOR, CEILING = 0.3, 0.9


@pytest.fixture(scope="module")
def smol():
    from vindex_fixtures import smollm2_vindex
    return smollm2_vindex(level="all", dtype="f32", source="hf")


def _session(path, cwd):
    s = Session(cwd=cwd)
    s.query(f'USE "{path}"')
    s.query("SET CHAT OFF")
    return s


def _insert(s, entity, relation, target, extra=""):
    return s.query(f'INSERT INTO EDGES (entity, relation, target) VALUES ("{entity}", '
                   f'"{relation}", "{target}") MODE COMPOSE{extra}')


def _p(s, prompt, target):
    from lql.runtime import predict
    tid = s.vindex.tokenizer.encode(" " + target, add_special_tokens=False).ids[0]
    return float(predict(s.vindex, prompt).probs[tid])


def _down(s, layer, feature):
    return np.array(s.overlay.features[(layer, feature)].down)


def _check_rows(s, r):
    """Every row's probability is the model's (recomputed), in range unless reported."""
    for row in r.rows:
        from lql.edit.prompts import canonical_prompt
        p = _p(s, canonical_prompt(row["entity"], row["relation"]), row["target"])
        assert p == pytest.approx(row["probability"], abs=1e-3)
        if row["status"] == "ok":
            assert FLOOR <= p <= CEILING
        else:
            assert not r.meta["converged"]
            assert f"({row['entity']}, {row['relation']}, {row['target']})" in r.message


def test_rebalance_brings_facts_into_range_and_scales_a_strong_one_down(smol, tmp_path):
    s = _session(smol, tmp_path)
    a = _insert(s, "Atlantis", "capital", "Poseidon", " ALPHA 0.3")     # too strong: P ≈ 0.99
    b = _insert(s, "Wakanda", "capital", "Birnin")
    fa, fb = (a.rows[0]["layer"], a.rows[0]["feature"]), (b.rows[0]["layer"], b.rows[0]["feature"])
    p_strong = _p(s, "The capital of Atlantis is", "Poseidon")
    assert p_strong > CEILING
    d0 = _down(s, *fa)
    r = s.query(f"REBALANCE FLOOR {FLOOR} CEILING {CEILING}")
    assert {row["entity"] for row in r.rows} == {"Atlantis", "Wakanda"}
    _check_rows(s, r)
    assert r.meta["converged"], r.message
    # the strong fact was scaled down: same direction, shorter down vector, and in range
    d1 = _down(s, *fa)
    assert np.linalg.norm(d1) < np.linalg.norm(d0)
    cos = float(d0 @ d1 / (np.linalg.norm(d0) * np.linalg.norm(d1)))
    assert cos == pytest.approx(1.0, abs=1e-5)
    assert FLOOR <= _p(s, "The capital of Atlantis is", "Poseidon") <= CEILING
    assert FLOOR <= _p(s, "The capital of Wakanda is", "Birnin") <= CEILING
    assert fb in s.overlay.features
    # the rebalance is recorded: REMOVE PATCH-free check through a saved and re-applied patch
    s.query('SAVE PATCH "rb.vlp"')
    s2 = _session(smol, tmp_path)
    s2.query('APPLY PATCH "rb.vlp"')
    assert _p(s2, "The capital of Atlantis is", "Poseidon") == \
        _p(s, "The capital of Atlantis is", "Poseidon")


def test_rebalance_after_update_and_delete(smol, tmp_path):
    s = _session(smol, tmp_path)
    _insert(s, "Atlantis", "capital", "Poseidon")
    _insert(s, "Wakanda", "capital", "Birnin")
    _insert(s, "Zubrowka", "capital", "Lutz", " ALPHA 0.4")
    s.query('UPDATE EDGES SET target = "Neptune" WHERE entity = "Atlantis"')
    s.query('DELETE FROM EDGES WHERE entity = "Wakanda"')
    r = s.query(f"REBALANCE FLOOR {FLOOR} CEILING {CEILING} MAX 16")
    got = {(row["entity"], row["target"]) for row in r.rows}
    assert got == {("Atlantis", "Neptune"), ("Zubrowka", "Lutz")}     # Wakanda is gone
    _check_rows(s, r)
    assert r.meta["converged"], r.message


def test_rebalance_reports_what_did_not_converge(smol, tmp_path):
    s = _session(smol, tmp_path)
    _insert(s, "Atlantis", "capital", "Poseidon", " ALPHA 0.3")
    r = s.query("REBALANCE FLOOR 0.3 CEILING 0.9 MAX 1")      # one measurement, no time to move
    assert not r.meta["converged"]
    assert r.rows[0]["status"] == "high" and "MAX" in r.rows[0]["reason"]
    assert "did not converge: (Atlantis, capital, Poseidon)" in r.message
    assert r.meta["not_converged"] == [("Atlantis", "capital", "Poseidon")]
