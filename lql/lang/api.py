"""parse / parse_one / expected_at: LQL text → :mod:`lql.ast` statements.

Every failure is an :class:`~lql.errors.LqlSyntaxError` with a 1-based line
and column, the source line, what was expected (named as a user reads it)
and a did-you-mean for misspelt keywords — never a Lark exception.
"""

from __future__ import annotations

import re
from typing import Any

from .. import ast
from ..errors import LqlSyntaxError
from . import lalr, messages
from .grammar import STATEMENT_KEYWORDS
from .text import strip_bom

_WORD_AT_END = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _statements(value: Any) -> list[ast.Statement]:
    assert isinstance(value, list)
    return value


def parse(text: str) -> list[ast.Statement]:
    """Parse an LQL script into statements. Blank / comment-only text gives ``[]``.

    A leading UTF-8 byte-order mark is ignored. Raises :class:`LqlSyntaxError`
    (and nothing else) for any malformed input.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a str, not {type(text).__name__}")
    text = strip_bom(text)
    try:
        return _statements(lalr.drive(text))
    except LqlSyntaxError:
        raise
    except Exception as err:  # every driver / builder failure becomes a syntax error
        raise messages.convert(text, err) from None


def parse_reference(text: str) -> list[ast.Statement]:
    """parse() through Lark's own contextual lexer and LALR loop (the oracle for tests)."""
    from .grammar import lark_parser

    text = strip_bom(text)
    try:
        return _statements(lark_parser().parse(text))
    except LqlSyntaxError:
        raise
    except Exception as err:
        raise messages.convert(text, err) from None


def parse_one(text: str) -> ast.Statement:
    """Parse exactly one statement (a pipe counts as one)."""
    statements = parse(text)
    if len(statements) == 1:
        return statements[0]
    text = strip_bom(text)
    if not statements:
        line, column = messages.end_position(text)
        raise messages.syntax_error(text, "expected a statement, found none", line, column,
                                    STATEMENT_KEYWORDS)
    second = statements[1]
    line, column = second.line or 1, second.column or 1
    raise messages.syntax_error(text, f"expected exactly one statement, found {len(statements)}",
                                line, column)


def expected_at(text: str) -> set[str]:
    """What may come next at the end of ``text`` (for context-aware completion).

    Names are as in error messages: keywords upper case (``"TOP"``), and
    ``"a string"``, ``"a number"``, ``"a layer range"``, ``"a field name"``,
    ``"a statement name"`` (after HELP), ``";"``, ``"|>"``, ``"("`` ... .
    If ``text`` ends inside a word (no trailing space), that word is the one
    being completed and is left out: ``expected_at("DESC")`` gives the
    statement keywords, ``expected_at("DESCRIBE ")`` gives ``{"a string"}``.
    Text that is already invalid before the end gives an empty set.
    """
    if not isinstance(text, str):
        return set()
    text = strip_bom(text)
    m = _WORD_AT_END.search(text)
    if m:  # the word being typed is not part of the context
        text = text[:m.start()]
    try:
        viable = lalr.drive(text, complete=False)
    except Exception:  # already invalid before the end: nothing sensible to offer
        return set()
    return set(messages.friendly(viable))
