"""lql.lang — the one owner of LQL text.

Modules (each with one job):

* :mod:`~lql.lang.tokens` — the token definition (one set of patterns for the
  parser's lexer, statement splitting, the REPL's completeness check and highlighting);
* :mod:`~lql.lang.grammar` — ``grammar/lql.lark`` and what is read from it
  (``KEYWORDS``, ``STATEMENT_KEYWORDS``), and Lark's parser for it;
* :mod:`~lql.lang.builder` — grammar rule → AST node, children picked by name;
* :mod:`~lql.lang.lalr` — the fast LALR driver over Lark's table (the only
  reader of Lark internals);
* :mod:`~lql.lang.messages` — error wording (LqlSyntaxError, expected tokens, did-you-mean);
* :mod:`~lql.lang.text` — splitting, completeness, highlighting (no parsing);
* :mod:`~lql.lang.api` — ``parse``, ``parse_one``, ``expected_at``.
"""

from __future__ import annotations

from ..errors import LqlSyntaxError
from .api import expected_at, parse, parse_one, parse_reference
from .grammar import FIELDS, GRAMMAR_PATH, KEYWORDS, STATEMENT_KEYWORDS
from .text import highlight, is_complete, split_statements, statement_tail, strip_bom

__all__ = ["parse", "parse_one", "expected_at", "parse_reference", "KEYWORDS",
           "STATEMENT_KEYWORDS", "FIELDS", "GRAMMAR_PATH", "LqlSyntaxError", "split_statements",
           "is_complete", "statement_tail", "highlight", "strip_bom"]
