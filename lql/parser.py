"""LQL text → AST: the public face of :mod:`lql.lang` (kept for existing imports).

``parse(text)`` turns a script into a list of :mod:`lql.ast` statements; every
failure is an :class:`~lql.errors.LqlSyntaxError`. The implementation lives in
:mod:`lql.lang` (tokens, grammar, builder, LALR driver, error wording).
"""

from __future__ import annotations

from .errors import LqlSyntaxError
from .lang.api import expected_at, parse, parse_one
from .lang.api import parse_reference as _parse_reference
from .lang.grammar import FIELDS, GRAMMAR_PATH, KEYWORDS, STATEMENT_KEYWORDS

__all__ = ["parse", "parse_one", "expected_at", "KEYWORDS", "STATEMENT_KEYWORDS", "FIELDS",
           "LqlSyntaxError", "GRAMMAR_PATH"]
_ = _parse_reference  # tests compare parse() with Lark's own parser through this name
