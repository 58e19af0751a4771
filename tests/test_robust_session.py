"""Threads sharing one Session: mutating statements are serialised (the robustness issue,
case 8: concurrent INSERT COMPOSE put 4 facts in one slot and lost 3 silently)."""

from __future__ import annotations

import threading

import pytest
from vindex_fixtures import tiny_vindex

from lql import ast
from lql.session import _MUTATING, Session

FACTS = [("Atlantis", "Poseidon"), ("Lemuria", "Mu"), ("Avalon", "Arthur"), ("Thule", "Odin")]


def _insert(entity: str, target: str) -> str:
    return (f'INSERT INTO EDGES (entity, relation, target) VALUES ("{entity}", "capital", '
            f'"{target}") MODE COMPOSE')


@pytest.mark.parametrize("rounds", [2])
def test_concurrent_inserts_each_get_their_own_slot(tmp_path, rounds):
    for _ in range(rounds):
        s = Session(cwd=tmp_path)
        s.query(f'USE "{tiny_vindex("llama", "all", "f32")}"')
        s.query("SET CHAT OFF")
        rows, errors = [], []
        barrier = threading.Barrier(len(FACTS))

        def work(entity: str, target: str, s=s, rows=rows, errors=errors,
                 barrier=barrier) -> None:
            try:
                barrier.wait()
                rows.append(s.query(_insert(entity, target)).rows[0])
            except Exception as exc:  # collected: the assertion below reports it
                errors.append(exc)

        threads = [threading.Thread(target=work, args=f) for f in FACTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        slots = {(r["layer"], r["feature"]) for r in rows}
        assert len(slots) == len(FACTS)              # four facts, four slots
        edges = {e["entity"] for e in s.vindex.inserted_edges()}
        assert edges == {e for e, _ in FACTS}        # none lost


def test_every_statement_that_changes_state_is_serialised():
    assert {ast.Insert, ast.Delete, ast.Update, ast.Merge, ast.Rebalance, ast.ApplyPatch,
            ast.RemovePatch, ast.BeginPatch, ast.SavePatch, ast.Use, ast.UseModel} <= set(_MUTATING)
