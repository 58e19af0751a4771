"""The one token definition of LQL text.

Every piece of code that cuts LQL text into tokens reads this module: the
parser's lexer (:data:`TOKEN_RE`, mirrors the terminals of ``grammar/lql.lark``;
``tests/test_lang_tokens.py`` checks they agree), statement splitting and the
REPL's completeness check and highlighting (:func:`scan`, which is the same
patterns plus the three ways text can be unfinished or wrong: an open string, an
open ``/*`` comment and a character that starts no token).

The rule for strings across lines: a string literal never holds a raw line
break (write ``\\n``). A quote left open at the end of a line is an
*unterminated string*: the parser rejects it, and no later line can repair it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

#: Blanks between tokens (Lark's ``common.WS``).
BLANK: Final = r"[ \t\f\r\n]"

#: (group name, pattern) in matching order. Names are the parser's token kinds;
#: WORD is a keyword, a NAME or a HELP_WORD depending on the parser state.
PATTERNS: Final[tuple[tuple[str, str], ...]] = (
    ("STRING", r'"(?:[^"\\\n]|\\.)*"' r"|'(?:[^'\\\n]|\\.)*'"),
    ("WORD", r"[A-Za-z_][A-Za-z0-9_]*"),
    ("RANGE", r"[0-9]+[ \t]*-[ \t]*[0-9]+"),
    ("NUMBER", r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"),
    ("PUNCT", r"\|>|!=|<>|<=|>=|[;(),*=<>%]"),
    ("COMMENT", r"--[^\n]*"),
    ("BLOCK", r"/\*(?:[^*]|\*(?!/))*\*/"),
)

#: Kinds :func:`scan` adds for text the parser cannot take (never seen by the parser).
OPEN_STRING: Final = "OPEN_STRING"   # a quote with no closing quote on its line
OPEN_BLOCK: Final = "OPEN_BLOCK"     # ``/*`` with no ``*/`` before the end of the text
OTHER: Final = "OTHER"               # one character that starts no token
BLANKS: Final = "BLANKS"

_PATTERN = dict(PATTERNS)

#: The parser's lexer: leading blanks, then one token (or the end of the text, EOF).
TOKEN_RE: Final = re.compile(
    BLANK + "*(?:" + "|".join(f"(?P<{name}>{pat})" for name, pat in PATTERNS) + "|(?P<EOF>$))")

#: Just a NUMBER (a RANGE where no range is accepted lexes as its leading number).
NUMBER_RE: Final = re.compile(_PATTERN["NUMBER"])

#: Blanks only (where the parser reports a character no token fits).
BLANKS_RE: Final = re.compile(BLANK + "*")

#: Punctuation → the grammar's terminal name.
PUNCT: Final[dict[str, str]] = {
    "|>": "_PIPE", ";": "_SEMI", "(": "_LPAR", ")": "_RPAR", ",": "_COMMA", "*": "STAR",
    "%": "PERCENT", "=": "EQ", "!=": "NE", "<>": "NE", "<=": "LE", ">=": "GE", "<": "LT", ">": "GT"}

_SCAN_RE: Final = re.compile(
    f"(?P<{BLANKS}>{BLANK}+)|"
    + "|".join(f"(?P<{name}>{pat})" for name, pat in PATTERNS)
    + rf"""|(?P<{OPEN_STRING}>"(?:[^"\\\n]|\\.)*\\?|'(?:[^'\\\n]|\\.)*\\?)"""
    + rf"|(?P<{OPEN_BLOCK}>/\*[\s\S]*)"
    + rf"|(?P<{OTHER}>[\s\S])")


def scan(text: str) -> Iterator[tuple[str, int, int]]:
    """``(kind, start, end)`` for every piece of ``text``, blanks included, in order.

    Kinds are the names of :data:`PATTERNS` (``STRING``, ``WORD``, ``RANGE``,
    ``NUMBER``, ``PUNCT``, ``COMMENT``, ``BLOCK``) plus ``BLANKS``,
    ``OPEN_STRING`` (runs to the end of its line), ``OPEN_BLOCK`` (runs to the end
    of the text) and ``OTHER`` (one character). The pieces cover ``text`` exactly.
    """
    for m in _SCAN_RE.finditer(text):
        kind = m.lastgroup
        assert kind is not None
        yield kind, m.start(), m.end()
