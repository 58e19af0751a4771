"""Error wording: every parse failure → one :class:`~lql.errors.LqlSyntaxError`.

The message names what was found (``unexpected keyword TOP``), where (1-based
line and column, the source line) and what was expected, in the words a user
reads (``a string``, ``;``, keywords upper case), with a did-you-mean for a
misspelt keyword. Nothing here knows how the text was parsed: :func:`convert`
takes the failure of either parser (the fast driver's or Lark's own).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from ..errors import LqlSyntaxError
from .builder import NodeError, Token
from .grammar import KEYWORDS, STATEMENT_KEYWORDS
from .lalr import LexFailure, ParseFailure

#: Terminal names → what a user reads in "expected ...".
FRIENDLY: dict[str, str] = {
    "STRING": "a string", "NUMBER": "a number", "LAYER_RANGE": "a layer range",
    "NAME": "a field name", "HELP_WORD": "a statement name",
    "_SEMI": ";", "_PIPE": "|>", "_LPAR": "(", "_RPAR": ")", "_COMMA": ",", "STAR": "*",
    "EQ": "=", "NE": "!=", "LT": "<", "GT": ">", "LE": "<=", "GE": ">=",
    "$END": "end of input",
}
_ORDER = ["a string", "a number", "a layer range", "a field name", "a statement name", "*",
          "(", ")", ",", "=", "!=", "<", ">", "<=", ">=", "|>", ";", "end of input"]
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: The message of a text that stops before its statement does.
UNEXPECTED_END = "unexpected end of input"


def friendly(terminals: Iterable[str]) -> tuple[str, ...]:
    """Terminal names → sorted user-facing names: keywords first (A-Z), then the rest."""
    names = {FRIENDLY.get(t, t) for t in terminals}
    if "a layer range" in names:
        names.discard("a number")  # a single layer is a range of one
    keywords = sorted(n for n in names if n in KEYWORDS)
    others = sorted(n for n in names if n not in KEYWORDS)
    others.sort(key=lambda n: _ORDER.index(n) if n in _ORDER else -1)
    return tuple(keywords + others)


def suggest(word: str, expected_keywords: Iterable[str]) -> str | None:
    """Did-you-mean: the closest keyword valid here or any statement keyword."""
    up = word.upper()
    candidates = set(expected_keywords) | set(STATEMENT_KEYWORDS)
    candidates.discard(up)
    close = difflib.get_close_matches(up, sorted(candidates), n=1, cutoff=0.75)
    return close[0] if close else None


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of input"
    if tok.type == "STRING":
        return f"string {tok.value}"
    if tok.type in ("NUMBER", "LAYER_RANGE"):
        return f"number {tok.value}"
    return repr(tok.value) if tok.type not in KEYWORDS else f"keyword {tok.value.upper()}"


def source_line(text: str, line: int) -> str:
    lines = text.split("\n")
    return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""


def syntax_error(text: str, message: str, line: int, column: int, expected: Iterable[str] = (),
                 suggestion: str | None = None) -> LqlSyntaxError:
    return LqlSyntaxError(message, line=line, column=column,
                          source_line=source_line(text, line), expected=tuple(expected),
                          suggestion=suggestion)


def end_position(text: str) -> tuple[int, int]:
    """Line/column just past the last non-blank character (where input 'ends')."""
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    column = len(stripped) - (stripped.rfind("\n") + 1) + 1
    return line, column


def convert(text: str, err: BaseException) -> LqlSyntaxError:
    """Any failure of either parser (or of the AST builder) → LqlSyntaxError."""
    if isinstance(err, ParseFailure):
        return _unexpected_token(text, err.token, err.expected)
    if isinstance(err, LexFailure):
        return _bad_character(text, err.pos, err.line, err.column, err.expected)
    if isinstance(err, NodeError):
        return _node_error(text, err)
    if isinstance(err, RecursionError):
        return syntax_error(text, "statement nested too deeply", 1, 1)
    from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken, VisitError

    if isinstance(err, VisitError):
        return convert(text, err.orig_exc)
    if isinstance(err, UnexpectedToken):
        return _unexpected_token(text, err.token, set(err.expected or ()))
    if isinstance(err, UnexpectedCharacters):
        return _bad_character(text, err.pos_in_stream or 0, err.line or 1, err.column or 1,
                              err.allowed or ())
    if isinstance(err, UnexpectedEOF):
        line, column = end_position(text)
        return syntax_error(text, UNEXPECTED_END, line, column, friendly(err.expected or ()))
    return syntax_error(text, f"could not parse: {err}", 1, 1)


def _node_error(text: str, err: NodeError) -> LqlSyntaxError:
    tok = err.token
    if tok is None:
        line, column = end_position(text)
    else:
        line, column = tok.line, tok.column + err.offset
    return syntax_error(text, err.message, line, column, err.expected, err.suggestion)


def _unexpected_token(text: str, tok: Any, expected_terms: Iterable[str]) -> LqlSyntaxError:
    expected = friendly(t for t in expected_terms if t != "$END")
    if tok.type == "$END":  # the caret goes just after the last token
        line = getattr(tok, "end_line", None) or tok.line
        column = getattr(tok, "end_column", None) or tok.column
        return syntax_error(text, UNEXPECTED_END, line, column, expected)
    suggestion = None
    message = f"unexpected {_describe_token(tok)}"
    if _WORD.fullmatch(tok.value or ""):
        suggestion = suggest(tok.value, [e for e in expected if e in KEYWORDS])
        if suggestion is None and "a string" in expected:
            message += f' (strings need quotes: "{tok.value}")'
    return syntax_error(text, message, tok.line, tok.column, expected, suggestion)


def _bad_character(text: str, pos: int, line: int, column: int,
                   allowed: Iterable[str]) -> LqlSyntaxError:
    ch = text[pos] if 0 <= pos < len(text) else ""
    expected = friendly(t for t in allowed if t != "$END")
    if ch in "\"'" and ch:
        return syntax_error(text, f"unterminated string (no closing {ch} on this line)",
                            line, column)
    if text.startswith("/*", pos):
        return syntax_error(text, "unterminated /* comment", line, column)
    m = _WORD.match(text, pos)
    if m:
        word = m.group(0)
        return syntax_error(text, f"unexpected {word!r}", line, column, expected,
                            suggest(word, [e for e in expected if e in KEYWORDS]))
    shown = repr(ch) if ch else "character"
    return syntax_error(text, f"unexpected character {shown}", line, column, expected)
