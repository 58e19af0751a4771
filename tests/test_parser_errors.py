"""Malformed LQL: always an LqlSyntaxError at the right line and column.

Positions below were counted by hand (1-based; a tab is one column).
"""

from __future__ import annotations

import pytest

from lql.errors import LqlError, LqlSyntaxError
from lql.parser import STATEMENT_KEYWORDS, parse, parse_one

# (text, line, column, substring of the short message, suggestion or None)
CORPUS: list[tuple[str, int, int, str, str | None]] = [
    # misspelt keywords → did-you-mean
    ('DESCRIBR "France"', 1, 1, "unexpected 'DESCRIBR'", "DESCRIBE"),
    ('SELCT * FROM EDGES', 1, 1, "unexpected 'SELCT'", "SELECT"),
    ('EXPLAN WALK "x"', 1, 1, "unexpected 'EXPLAN'", "EXPLAIN"),
    ('WALK "x" TOPP 5', 1, 10, "unexpected 'TOPP'", "TOP"),
    ('walk "x" topp 5', 1, 10, "unexpected 'topp'", "TOP"),
    ('WALK\t"x"\tTOPP', 1, 10, "unexpected 'TOPP'", "TOP"),
    ('WALK "x" TOP5', 1, 10, "unexpected 'TOP5'", "TOP"),
    ('DESCRIBE "x" VERBOS', 1, 14, "unexpected 'VERBOS'", "VERBOSE"),
    ('SELECT * FROM EDGE', 1, 15, "unexpected 'EDGE'", "EDGES"),
    ('SHOW LAYER', 1, 6, "unexpected keyword LAYER", "LAYERS"),
    ('SET CHATT ON', 1, 5, "unexpected 'CHATT'", "CHAT"),
    ('APPLY PATCHES "p"', 1, 7, "unexpected keyword PATCHES", "PATCH"),
    ('SELECT entty FROM EDGES', 1, 8, "unknown field 'entty'", "entity"),
    ('SELECT * FROM EDGES WHERE layr = 3', 1, 27, "unknown field 'layr'", "layer"),
    ('SELECT * FROM EDGES ORDER BY confidance', 1, 30, "unknown field", "confidence"),
    # duplicate / conflicting clauses → error at the second one
    ('WALK "x" TOP 5 TOP 6', 1, 16, "duplicate TOP clause", None),
    ('WALK "x" COMPARE COMPARE', 1, 18, "duplicate COMPARE", None),
    ('INFER "x" CHAT RAW', 1, 16, "RAW conflicts with CHAT", None),
    ('DESCRIBE "x" SYNTAX OUTPUT', 1, 21, "OUTPUT conflicts with SYNTAX", None),
    ('DESCRIBE "x" BRIEF RAW', 1, 20, "RAW conflicts with BRIEF", None),
    ('SELECT * FROM EDGES LIMIT 5 LIMIT 6', 1, 29, "duplicate LIMIT", None),
    ('SELECT * FROM EDGES WHERE layer = 1 WHERE layer = 2', 1, 37, "duplicate WHERE", None),
    ('INSERT INTO EDGES (entity, relation, target) VALUES ("a", "b", "c") MODE KNN MODE COMPOSE',
     1, 78, "duplicate MODE", None),
    ('WALK "x" TOP 5;\n  WALK "y" TOP 5 TOP 6', 2, 18, "duplicate TOP", None),
    # strings and comments
    ('WALK "abc', 1, 6, "unterminated string", None),
    ("WALK 'x", 1, 6, "unterminated string", None),
    ('WALK "line\nbreak"', 1, 6, "unterminated string", None),
    ('WALK "abc\\"', 1, 6, "unterminated string", None),
    ('USE "v";\n\nINFER "unclosed\n;', 3, 7, "unterminated string", None),
    ('/* never closed', 1, 1, "unterminated /* comment", None),
    ('WALK "x" /* open\n TOP 3', 1, 10, "unterminated /* comment", None),
    ('WALK "a\\qb"', 1, 8, "unknown escape \\q", None),
    # end of input
    ('WALK', 1, 5, "unexpected end of input", None),
    ('WALK "x" LAYERS', 1, 16, "unexpected end of input", None),
    ('DELETE FROM EDGES', 1, 18, "unexpected end of input", None),
    ('UPDATE EDGES SET target = "x"', 1, 30, "unexpected end of input", None),
    ('USE', 1, 4, "unexpected end of input", None),
    ('INFER "x" GENERATE', 1, 19, "unexpected end of input", None),
    ('TRACE "x" FOR', 1, 14, "unexpected end of input", None),
    ('SHOW', 1, 5, "unexpected end of input", None),
    ('SHOW FEATURES', 1, 14, "unexpected end of input", None),
    ('SHOW RELATIONS WITH', 1, 20, "unexpected end of input", None),
    ('REMOVE PATCH', 1, 13, "unexpected end of input", None),
    ('WALK "x" |>', 1, 12, "unexpected end of input", None),
    ('DESCRIBE "x" ALL', 1, 17, "unexpected end of input", None),
    ('DESCRIBE "x" RELATIONS', 1, 23, "unexpected end of input", None),
    ('REBALANCE UNTIL', 1, 16, "unexpected end of input", None),
    ('DIFF "a"', 1, 9, "unexpected end of input", None),
    ('INFER "x" SYSTEM', 1, 17, "unexpected end of input", None),
    ('SELECT * FROM EDGES NEAREST TO "x"', 1, 35, "unexpected end of input", None),
    ('WALK "x" -- c\nTOP', 2, 4, "unexpected end of input", None),
    (';;WALK', 1, 7, "unexpected end of input", None),
    ('WALK "x" TOP -- trailing comment\n\n', 1, 13, "unexpected end of input", None),
    ('WALK "x"\n  LAYERS\n/* c */\n', 2, 9, "unexpected end of input", None),
    ('/* one\ntwo */ WALK TOP', 2, 13, "unexpected keyword TOP", None),
    # wrong token
    ('EXPLAIN "x"', 1, 9, "unexpected string", None),
    ('"x"', 1, 1, "unexpected string", None),
    ('SELECT * EDGES', 1, 10, "unexpected keyword EDGES", None),
    ('SELECT FROM EDGES', 1, 8, "unexpected keyword FROM", None),
    ('SELECT entity, FROM EDGES', 1, 16, "unexpected keyword FROM", None),
    ('SELECT entity,, target FROM EDGES', 1, 15, "unexpected ','", None),
    ('INSERT INTO EDGES (entity, relation, target) VALUES ("a", "b")', 1, 62,
     "unexpected ')'", None),
    ('UPDATE EDGES WHERE layer = 1', 1, 14, "unexpected keyword WHERE", None),
    ('SET CHAT MAYBE', 1, 10, "unexpected 'MAYBE'", None),
    ('USE gemma', 1, 5, "unexpected 'gemma' (strings need quotes: \"gemma\")", None),
    ('SELECT * FROM EDGES WHERE entity = France', 1, 36, 'strings need quotes: "France"', None),
    ('COMPILE CURRENT INTO "out"', 1, 22, "unexpected string", None),
    ('COMPILE CURRENT INTO MODEL "o" ON CONFLICT FAIL', 1, 32, "unexpected keyword ON", None),
    ('COMPILE CURRENT INTO VINDEX "o" FORMAT GGUF', 1, 33, "unexpected keyword FORMAT", None),
    ('MERGE "a" ON CONFLICT LAST_WINS', 1, 23, "unexpected keyword LAST_WINS", None),
    ('EXTRACT MODEL "m" INTO "v" WITH EVERYTHING', 1, 33, "unexpected 'EVERYTHING'", None),
    ('EXTRACT MODEL "m" INTO "v" DTYPE F64', 1, 34, "unexpected 'F64'", None),
    ('WALK "x" MODE FAST', 1, 15, "unexpected 'FAST'", None),
    ('TRACE "x" POSITIONS FIRST', 1, 21, "unexpected 'FIRST'", None),
    ('STATS "a" "b"', 1, 11, "unexpected string", None),
    ('BEGIN "p.vlp"', 1, 7, "unexpected string", None),
    ('HELP "DESCRIBE"', 1, 6, "unexpected string", None),
    ('|> WALK "x"', 1, 1, "unexpected '|>'", None),
    ('WALK "x" @', 1, 10, "unexpected character '@'", None),
    ('WALK "x" TOP 5 !', 1, 16, "unexpected character '!'", None),
    ('WALK "x";\nDESCRIBE "y" TOP 3;', 2, 14, "unexpected keyword TOP", None),
    ('EXPLAIN WALK "x" WITH ATTENTION', 1, 18, "unexpected keyword WITH", None),
    ('SELECT * FROM EDGES WHERE layer 27', 1, 33, "unexpected number 27", None),
    ('SELECT * FROM EDGES WHERE layer LIKE 5', 1, 38, "unexpected number 5", None),
    ('SELECT * FROM EDGES WHERE layer IN ()', 1, 37, "unexpected ')'", None),
    ('SELECT * FROM EDGES ORDER layer', 1, 27, "unexpected keyword LAYER", None),
    ('SELECT * FROM EDGES ORDER BY layer DESC DESC', 1, 41, "unexpected keyword DESC", None),
    ('INSERT INTO EDGES (entity, relation, target) VALUES ("a", "b", "c") CONFIDENCE high',
     1, 80, "unexpected 'high'", None),
    ('INSERT INTO EDGES (entity, relation, object) VALUES ("a","b","c")', 1, 38,
     "takes the columns (entity, relation, target)", None),
    ('INSERT INTO EDGES (entity, entity, target) VALUES ("a","b","c")', 1, 28,
     "takes the columns", None),
    # numbers and ranges
    ('WALK "x" TOP 1.5', 1, 14, "whole number", None),
    ('WALK "x" TOP -3', 1, 14, "whole number", None),
    ('INFER "x" TOP 1e3', 1, 15, "whole number", None),
    ('REBALANCE MAX 1.5', 1, 15, "whole number", None),
    ('WALK "x" LAYERS -3', 1, 17, "whole number", None),
    ('WALK "x" LAYERS 27-14', 1, 17, "runs backwards", None),
    ('SELECT * FROM EDGES WHERE layer = 14-27', 1, 37, "unexpected number -27", None),
    ('SHOW FEATURES 14-27', 1, 17, "unexpected number -27", None),
    ('DIFF "a" "b" LAYER 1-2', 1, 21, "unexpected number -2", None),
    ('WALK "x" LAYERS ALL-3', 1, 20, "unexpected number -3", None),
    ('SHOW LAYERS 5 6', 1, 15, "unexpected number 6", None),
    ('SELECT * FROM EDGES WHERE gate > 1e999', 1, 34, "out of range", None),
]


@pytest.mark.parametrize("text,line,column,message,suggestion", CORPUS,
                         ids=[repr(c[0])[:50] for c in CORPUS])
def test_syntax_error_position_message_and_suggestion(text, line, column, message, suggestion):
    with pytest.raises(LqlSyntaxError) as info:
        parse(text)
    err = info.value
    assert (err.line, err.column) == (line, column), err.pretty()
    assert message in err.short, err.short
    assert err.suggestion == suggestion
    assert err.source_line == text.split("\n")[line - 1]
    assert isinstance(err, LqlError)


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 60


@pytest.mark.parametrize("text,expected", [
    ('WALK', ("a string",)),
    ('WALK "x" LAYERS', ("ALL", "a layer range")),
    ('WALK "x" TOPP 5', ("COMPARE", "EXPERTS", "LAYERS", "MODE", "PLOT", "TOP", "|>", ";")),
    ('SHOW', ("COMPACT", "ENTITIES", "FEATURES", "LAYERS", "MODELS", "PATCHES", "RELATIONS")),
    ('SET CHAT MAYBE', ("AUTO", "OFF", "ON")),
    ('SELECT FROM EDGES', ("a field name", "*")),
    ('SELECT * FROM EDGES WHERE layer 27', ("IN", "LIKE", "=", "!=", "<", ">", "<=", ">=")),
    ('SHOW FEATURES', ("a number",)),
    ('COMPILE CURRENT INTO "out"', ("MODEL", "VINDEX")),
    ('USE', ("MODEL", "REMOTE", "SAE", "a string")),
    ('DESCRIBR "x"', STATEMENT_KEYWORDS + (";",)),
    ('SELECT * FROM EDGES WHERE layer = 14-27',
     ("AND", "LIMIT", "NEAREST", "ORDER", "WHERE", "|>", ";")),
])
def test_expected_is_named_for_users(text, expected):
    with pytest.raises(LqlSyntaxError) as info:
        parse(text)
    assert info.value.expected == expected


def test_pretty_has_caret_under_the_column():
    with pytest.raises(LqlSyntaxError) as info:
        parse('USE "v";\nWALK "x" TOPP 5')
    assert info.value.pretty() == (
        "syntax error at line 2, column 10: unexpected 'TOPP' (did you mean TOP?); "
        "expected COMPARE, EXPERTS, LAYERS, MODE, PLOT, TOP, |>, ;\n"
        '  WALK "x" TOPP 5\n'
        "           ^")


def test_parse_one_requires_exactly_one_statement():
    with pytest.raises(LqlSyntaxError) as info:
        parse_one('WALK "a"; WALK "b"')
    assert (info.value.line, info.value.column) == (1, 11)
    assert "exactly one statement" in info.value.short
    with pytest.raises(LqlSyntaxError) as info:
        parse_one("  -- nothing\n")
    assert "found none" in info.value.short


def test_non_string_input_is_a_type_error():
    with pytest.raises(TypeError):
        parse(b"WALK 'x'")  # type: ignore[arg-type]
