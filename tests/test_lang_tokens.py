"""lql.lang.tokens: one token definition, mirroring the grammar's terminals."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lql.lang import tokens
from lql.lang.grammar import GRAMMAR_TEXT


def _grammar_terminal(name: str) -> list[str]:
    """The regex alternatives of a terminal as written in grammar/lql.lark."""
    m = re.search(rf"^{name}(?:\.\d+)?: (.*)$", GRAMMAR_TEXT, re.M)
    assert m, name
    return re.findall(r"/((?:[^/\\]|\\.)*)/", m.group(1))


@pytest.mark.parametrize("terminal,pattern", [
    ("STRING", "STRING"), ("NUMBER", "NUMBER"), ("LAYER_RANGE", "RANGE"), ("NAME", "WORD"),
    ("HELP_WORD", "WORD"), ("COMMENT", "COMMENT"), ("BLOCK_COMMENT", "BLOCK"),
])
def test_patterns_mirror_the_grammar_terminals(terminal, pattern):
    ours = dict(tokens.PATTERNS)[pattern]
    theirs = "|".join(p.replace(r"\/", "/") for p in _grammar_terminal(terminal))
    samples = ['"a\\"b"', "'x'", '"\n"', "12", "-1.5e3", ".5", "14-27", "3 - 5", "abc_9", "A9",
               "-- c", "/* a\n*/", "/* a", '"open', "1e", "é"]
    for s in samples:
        assert bool(re.fullmatch(ours, s)) == bool(re.fullmatch(theirs, s)), (terminal, s)


def test_punctuation_is_the_grammars():
    for text, name in tokens.PUNCT.items():
        line = re.search(rf"^{name}: (.*)$", GRAMMAR_TEXT, re.M)
        assert line and f'"{text}"' in line.group(1), (text, name)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='"\'\\\n ab;-/*|>0123456789.', max_size=30) | st.text(max_size=30))
def test_scan_covers_the_text_exactly(text):
    pieces = list(tokens.scan(text))
    assert "".join(text[a:b] for _k, a, b in pieces) == text
    assert all(a < b for _k, a, b in pieces)
    for kind, a, b in pieces:
        if kind == tokens.OPEN_STRING:    # runs to the end of its line, never past it
            assert "\n" not in text[a:b] and (b == len(text) or text[b] == "\n")
        if kind == "STRING":
            assert "\n" not in text[a:b]  # the one rule for strings: no raw line breaks


def test_no_newline_inside_a_string_even_escaped():
    assert [k for k, _a, _b in tokens.scan('"a\\\nb"')][0] == tokens.OPEN_STRING
    assert tokens.TOKEN_RE.match('"a\nb"') is None      # the parser's lexer: no token fits
