"""lql.lang: byte-order marks, long pipes, splitting and highlighting."""

from __future__ import annotations

import pytest

from lql import ast as A
from lql.errors import LqlSyntaxError
from lql.lang import highlight, is_complete, parse, parse_reference, split_statements
from lql.lang.builder import MAX_PIPE
from lql.session import Session


def test_a_script_beginning_with_a_bom_parses(tmp_path):
    text = '\ufeffSTATS;\nWALK "x" TOP 2;\n'
    assert parse(text) == [A.Stats(), A.Walk("x", top=2)]
    assert parse(text)[0].column == 1
    assert parse_reference(text) == parse(text)
    assert is_complete("\ufeff") and is_complete(text)
    assert [text[a:b].strip() for a, b in split_statements(text)] == \
        ["\ufeffSTATS;", 'WALK "x" TOP 2;']
    script = tmp_path / "bom.lql"
    script.write_bytes(b"\xef\xbb\xbfSET CHAT OFF;\n")
    for continue_on_error in (False, True):
        results = Session(cwd=tmp_path).run_file(script, continue_on_error=continue_on_error)
        assert [r.kind for r in results] != ["error"], results
        assert len(results) == 1 and "OFF" in results[0].message


def test_a_pipe_of_thousands_of_statements_is_a_clear_syntax_error():
    text = "STATS" + " |> STATS" * 1500
    for fn in (parse, parse_reference):
        with pytest.raises(LqlSyntaxError, match="pipe too long") as ei:
            fn(text)
        assert ei.value.line == 1 and ei.value.column == len("STATS" + " |> STATS" * MAX_PIPE) - 4


def test_the_longest_pipe_allowed_can_be_compared_printed_and_run():
    text = "SET CHAT OFF" + " |> SET CHAT OFF" * (MAX_PIPE - 1)
    [pipe] = parse(text)
    assert pipe == parse(text)[0] and repr(pipe) and hash(pipe) is not None
    assert parse(pipe.to_lql()) == [pipe]
    assert len(Session().execute(text)) == MAX_PIPE


def test_highlight_classes():
    pieces = highlight('WALK "x" TOP 5 LAYERS 14-27 -- c\nSELECT entity /* b', {"WALK", "TOP",
                       "LAYERS", "SELECT"}, ("entity",))
    classes = {p: c for c, p in pieces}
    assert classes["WALK"] == "keyword" and classes['"x"'] == "string"
    assert classes["14-27"] == "number" and classes["-- c"] == "comment"
    assert classes["entity"] == "field" and classes["/* b"] == "comment"
    assert "".join(p for _c, p in pieces) == 'WALK "x" TOP 5 LAYERS 14-27 -- c\nSELECT entity /* b'


def test_split_follows_the_parsers_string_rule():
    text = 'WALK "a\n; STATS;'           # the string breaks at the line end: the ; splits
    assert [text[a:b] for a, b in split_statements(text)] == ['WALK "a\n;', " STATS;"]
