"""The parser's other public API: expected_at (REPL completion), KEYWORDS, parse_one."""

from __future__ import annotations

import pytest

from lql import ast as A
from lql.parser import FIELDS, KEYWORDS, STATEMENT_KEYWORDS, expected_at, parse, parse_one

STATEMENT_START = set(STATEMENT_KEYWORDS) | {";"}


@pytest.mark.parametrize("text,expected", [
    ("", STATEMENT_START),
    ("DESC", STATEMENT_START),              # the word being typed is left out
    ("  -- comment\n", STATEMENT_START),
    ("DESCRIBE ", {"a string", "SAE"}),          # DESCRIBE SAE FEATURE n
    ('DESCRIBE "France" ', {"ALL", "AT", "BRIEF", "EXPERTS", "KNOWLEDGE", "OUTPUT", "PLOT", "RAW",
                            "RELATIONS", "SYNTAX", "VERBOSE", "VIA", ";", "|>"}),
    ('WALK "x" ', {"COMPARE", "EXPERTS", "LAYERS", "MODE", "PLOT", "TOP", ";", "|>"}),
    ('WALK "x" TOP 5 ', {"COMPARE", "EXPERTS", "LAYERS", "MODE", "PLOT", "TOP", ";", "|>"}),
    ('WALK "x" LAYERS ', {"ALL", "a layer range"}),
    ('walk "x" mode ', {"DENSE", "HYBRID", "PURE"}),
    ("SELECT ", {"*", "a field name"}),
    ("SELECT * ", {"FROM"}),
    ("SELECT * FROM ", {"EDGES", "ENTITIES", "EXPERTS", "FEATURES", "SAE"}),   # FROM SAE FEATURES
    ("SELECT * FROM EDGES WHERE layer ", {"=", "!=", "<", ">", "<=", ">=", "IN", "LIKE"}),
    ("SELECT * FROM EDGES WHERE layer = 3 ", {"AND", "LIMIT", "NEAREST", "ORDER", "WHERE",
                                              ";", "|>"}),
    ("SHOW ", {"COMPACT", "ENTITIES", "FEATURES", "LAYERS", "MODELS", "PATCHES", "RELATIONS"}),
    ("SET CHAT ", {"AUTO", "OFF", "ON"}),
    ("HELP ", {"a statement name", ";", "|>"}),
    ('INFER "x" |> ', set(STATEMENT_KEYWORDS)),
    ('STATS; ', STATEMENT_START),
    ('WALK "unterminated', set()),
    ("WALK @ ", set()),
    ("-- a comm", set()),                     # inside a comment: nothing to complete
    ("/* open block ", set()),
    ("SELECT entity, ", {"a field name"}),
])
def test_expected_at(text, expected):
    assert expected_at(text) == expected


def test_keywords():
    assert {"WALK", "DESCRIBE", "EXPLAIN", "INFER", "TRACE", "SELECT", "FROM", "WHERE", "TOP",
            "LAYERS", "FORCE", "VIA", "RESIDUAL", "EMBEDDING", "PROMPT", "HELP", "LAST_WINS",
            "KEEP_SOURCE", "HIGHEST_CONFIDENCE"} <= KEYWORDS
    assert all(k.isupper() for k in KEYWORDS)
    assert set(STATEMENT_KEYWORDS) <= KEYWORDS
    assert FIELDS == A.FIELDS


def test_every_keyword_is_case_insensitive_as_a_word():
    # each keyword appears somewhere in a statement that parses; lower-case it
    for kw in ("describe", "Describe", "dEsCrIbE"):
        assert parse(f'{kw} "x"') == [A.Describe("x")]


def test_parse_one():
    assert parse_one('WALK "x" |> STATS') == A.Pipe(A.Walk("x"), A.Stats())
    assert parse_one('  WALK "x";  ') == A.Walk("x")


def test_parse_is_exported_from_the_package():
    import lql
    assert lql.parse('STATS') == [A.Stats()]


def test_table_cache_is_written_and_survives_corruption(tmp_path, monkeypatch):
    import lql.lang.lalr as L
    import lql.parser as P

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("LQL_NO_GRAMMAR_CACHE", raising=False)
    monkeypatch.setattr(L, "_tables", None)
    assert P.parse('WALK "x" TOP 2') == [A.Walk("x", top=2)]
    cached = list((tmp_path / "lql").glob("grammar-table*.marshal"))
    assert len(cached) == 1
    for garbage in (b"", b"\x00garbage", cached[0].read_bytes()[:100]):
        cached[0].write_bytes(garbage)
        monkeypatch.setattr(L, "_tables", None)
        assert P.parse('WALK "x" TOP 2') == [A.Walk("x", top=2)]
    monkeypatch.setattr(L, "_tables", None)  # the next test rebuilds from the real cache
