"""The REPL's completeness check and the parser agree (lql.lang.text.is_complete vs parse).

``is_complete(text)`` decides whether Enter submits. It does not parse: it cuts the
text with the parser's own token patterns (lql.lang.tokens) and looks at the end.
The rule it must keep with ``parse``:

1. **complete ⇒ the parser does not say the text ended early.** ``parse(text)``
   succeeds, or raises an LqlSyntaxError that is not an *ended-early* error.
   Ended early means: "unexpected end of input", an "unterminated string" whose
   quote is on the text's last line with nothing after it (a later character could
   close it), or an "unterminated /* comment" (it runs to the end by definition).
2. **incomplete ⇒ more text can finish it.** Each incomplete text in the corpus
   below is a proper prefix of a parseable script (the corpus gives the rest), and
   ``parse(prefix)`` either succeeds (a statement waiting for its ``;``) or fails
   with an ended-early error. Texts with an error *before* their end (``A; B``)
   still wait for a ``;`` (the REPL submits at ``;``, psql-style, and the parser
   reports the error then); this is not a disagreement because rule 3 holds.
3. **Never stuck:** for any text, appending ``"\\n*/;"`` makes it complete (the
   line break ends a ``--`` comment or breaks an open string, ``*/`` closes a
   block comment, ``;`` ends the statement).

Strings across lines: a string literal never holds a raw line break (the parser's
rule since the grammar's first version). A quote still open at a line break is an
error no later line repairs, so the text is complete: Enter submits and the parser
reports "unterminated string". At the very end of the text a string is still open,
so the text is incomplete.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lql.errors import LqlSyntaxError
from lql.lang import is_complete, parse
from lql.lang.messages import UNEXPECTED_END

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ended_early(text: str, err: LqlSyntaxError) -> bool:
    """The parser's error says the text stopped before its statement did."""
    if UNEXPECTED_END in str(err):
        return True
    if "unterminated /* comment" in str(err):
        return True
    if "unterminated string" in str(err):
        lines = text.split("\n")
        return err.line == len(lines)          # the open quote is on the last line
    return False


def parse_outcome(text: str) -> str:
    """'ok', 'early' (ended early) or 'error' (an error before the end)."""
    try:
        parse(text)
    except LqlSyntaxError as err:
        return "early" if ended_early(text, err) else "error"
    return "ok"


COMPLETE = [
    "",
    "   \n\t",
    "-- only a comment",
    "/* only a block */",
    "SHOW MODELS;",
    "SHOW MODELS;   -- trailing comment",
    "SHOW MODELS; /* trailing\nblock */\n",
    'DESCRIBE "a;b";',
    "DESCRIBE 'it''s';",                         # two strings: an error, but not at the end
    'WALK "x" TOP 5 |> DESCRIBE "y";',
    'WALK "x"\n  TOP 5\n  LAYERS 14-27;',
    'STATS; WALK "x";\nSHOW MODELS;',
    'WALK "esc \\" quote";',
    'WALK "a" /* ; inside a block */ TOP 3;',
    'WALK "a" -- ; in a comment\n TOP 3;',
    'WALK "abc\ndef";',                          # broken string (the issue's example)
    'WALK "abc\n',                               # broken string, nothing after
    "WALK 'abc\ndef' TOP 3",
    'WALK @;',                                   # a bad character: reported at once
    'WALK "x" TOP;',                             # an error at the ; (not "ended early")
    "SHOW MODELS; SHOW MODELS;",
    "\ufeffSHOW MODELS;",                        # a byte-order mark is not code
]

INCOMPLETE = [  # (prefix, rest): prefix + rest parses
    ("SHOW MODELS", ";"),
    ("SHOW", " MODELS;"),
    ('WALK "x" TOP', " 5;"),
    ('WALK "x" |>', ' STATS;'),
    ('WALK "x" |> DESCRIBE "y"', ";"),
    ('DESCRIBE "a;', '";'),
    ("DESCRIBE 'a;", "';"),
    ('DESCRIBE "a\\";', '";'),                  # the ; is inside the string
    ('DESCRIBE "a\\', 'n";'),                    # a trailing backslash escapes what comes next
    ("SET CHAT /* ; ", "*/ OFF;"),
    ("SET CHAT /* a\nb", " */ OFF;"),
    ("SHOW MODELS; -- done\nSTATS", ";"),
    ('WALK "x"\n  TOP 5\n', "  LAYERS 14-27;"),
    ("SHOW MODELS;\nSELECT * FROM EDGES WHERE", ' entity = "x";'),
    ("INSERT INTO EDGES VALUES (", '"a", "b", "c");'),
    ("HELP", ";"),
    ("SHOW MODELS -- no semicolon yet", "\n;"),
]


@pytest.mark.parametrize("text", COMPLETE)
def test_complete_texts_never_ended_early(text):
    assert is_complete(text) is True
    assert parse_outcome(text) in ("ok", "error"), text


@pytest.mark.parametrize("prefix,rest", INCOMPLETE)
def test_incomplete_texts_are_prefixes_the_parser_wants_more_of(prefix, rest):
    assert is_complete(prefix) is False
    assert parse_outcome(prefix) in ("ok", "early"), prefix
    parse(prefix + rest)                          # the rest finishes it
    assert is_complete(prefix + rest) is True


def test_the_issue_example_is_submitted_and_rejected():
    text = 'WALK "abc\ndef";'
    assert is_complete(text)
    with pytest.raises(LqlSyntaxError, match="unterminated string") as ei:
        parse(text)
    assert (ei.value.line, ei.value.column) == (1, 6)


_SOUP = ['WALK', 'DESCRIBE', 'SHOW', 'MODELS', 'TOP', '5', '"x"', "'y'", '"', "'", "\\", ";",
         "|>", "--", "/*", "*/", "\n", " ", "(", ")", ",", "@", '"a;b"', "14-27", "STATS",
         "\ufeff"]
soups = st.lists(st.sampled_from(_SOUP), max_size=14).map("".join)


@SETTINGS
@given(soups | st.text(max_size=30))
def test_complete_implies_not_ended_early(text):
    if is_complete(text):
        assert parse_outcome(text) != "early", text


@SETTINGS
@given(soups | st.text(max_size=30))
def test_ended_early_implies_incomplete_and_ok_without_semicolon_waits(text):
    outcome = parse_outcome(text)
    if outcome == "early":
        assert not is_complete(text), text
    if outcome == "ok" and not is_complete(text):
        assert parse(text + "\n;") == parse(text)  # only the final ; is missing


@SETTINGS
@given(soups | st.text(max_size=30))
def test_never_stuck(text):
    assert is_complete(text + "\n*/;")
