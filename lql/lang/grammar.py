"""The grammar file and what is read from it: keywords, statement keywords, Lark.

``grammar/lql.lark`` is the one place the language's words are written. This
module reads them from it (no keyword list is typed twice) and builds Lark's
LALR(1) parser from it (cached on disk; see :func:`lark_parser`).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any, Final

from .. import ast

GRAMMAR_PATH: Final = Path(__file__).resolve().parent.parent / "grammar" / "lql.lark"
GRAMMAR_TEXT: Final = GRAMMAR_PATH.read_text("utf-8")

#: Field names (lower case) accepted in SELECT / WHERE / ORDER BY / SET.
FIELDS: Final[tuple[str, ...]] = ast.FIELDS

#: Every LQL keyword, upper case: the grammar's keyword terminals (``WALK.2: /walk\b/i``).
KEYWORDS: Final[frozenset[str]] = frozenset(
    re.findall(r"^([A-Z][A-Z0-9_]*)\.2: /[a-z0-9_]+\\b/i$", GRAMMAR_TEXT, re.M))


def _rules(text: str) -> dict[str, list[list[str]]]:
    """``rule name → alternatives → symbols`` (enough of Lark's EBNF for FIRST sets).

    A rule starts at the beginning of a line (``name:`` or ``?name:``) and runs on
    over indented lines; alternatives are split at ``|`` outside parentheses.
    """
    rules: dict[str, list[list[str]]] = {}
    pattern = r"^\??([a-z_][a-z0-9_]*)[ \t]*:((?:[^\n]*)(?:\n[ \t]+[^\n]*)*)"
    for m in re.finditer(pattern, text, re.M):
        body = re.sub(r"//[^\n]*", "", m.group(2))
        body = re.sub(r"->[ \t]*[a-z_0-9]+", "", body)
        alternatives, depth, current = [], 0, ""
        for ch in body:
            depth += ch in "(["
            depth -= ch in ")]"
            if ch == "|" and depth == 0:
                alternatives.append(current)
                current = ""
            else:
                current += ch
        alternatives.append(current)
        rules[m.group(1)] = [re.findall(r"[()\[\]]|[A-Za-z_][A-Za-z0-9_]*[?*+]?", alt)
                             for alt in alternatives]
    return rules


def _first_terminals(rules: dict[str, list[list[str]]], name: str) -> set[str]:
    """The terminals a rule's text can begin with (each alternative's first symbol)."""
    out: set[str] = set()
    for alt in rules[name]:
        first = alt[0]
        if first[-1] in "?*+" or first in "([":
            raise ValueError(f"grammar rule {name!r}: an optional first symbol is not supported "
                             "by lql.lang.grammar._first_terminals")
        out |= {first} if first.isupper() else _first_terminals(rules, first)
    return out


def _statement_keywords(text: str) -> tuple[str, ...]:
    """The keywords a statement can start with: FIRST of the ``pipeline`` rule's
    statement alternatives (the ones that are not ``pipeline _PIPE ...``)."""
    rules = _rules(text)
    statements = [alt for alt in rules["pipeline"] if alt[0] != "pipeline"]
    first: set[str] = set()
    for alt in statements:
        first |= _first_terminals(rules, alt[0])
    return tuple(sorted(first))


#: The words a statement can start with (after ``;`` or ``|>``), sorted.
STATEMENT_KEYWORDS: Final[tuple[str, ...]] = _statement_keywords(GRAMMAR_TEXT)


# --------------------------------------------------------------------------- Lark

_lock = threading.Lock()
_parser: Any = None  # lark.Lark with the inline AST builder


def cache_file(name: str) -> str | None:
    """``~/.cache/lql/<name>`` (or under $XDG_CACHE_HOME), or None when not writable."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lql"
        base.mkdir(parents=True, exist_ok=True)
        return str(base / name) if os.access(base, os.W_OK) else None
    except Exception:
        return None


def caching() -> bool:
    """False when ``$LQL_NO_GRAMMAR_CACHE`` is set (always analyse the grammar afresh)."""
    return os.environ.get("LQL_NO_GRAMMAR_CACHE") is None


def grammar_digest() -> str:
    return hashlib.sha256(GRAMMAR_PATH.read_bytes()).hexdigest()[:16]


def _build(transformer: object) -> Any:
    import lark
    from lark import Lark

    kwargs: dict[str, Any] = dict(parser="lalr", lexer="contextual", start="start",
                                  maybe_placeholders=False, propagate_positions=False,
                                  transformer=transformer)
    cache = caching() and cache_file(
        f"grammar-lark-{grammar_digest()}-lark{lark.__version__}.cache")
    if cache:
        try:
            return Lark(GRAMMAR_TEXT, cache=cache, **kwargs)
        except Exception:
            try:  # a corrupt or foreign cache file: drop it and build afresh
                os.unlink(cache)
            except OSError:
                pass
    return Lark(GRAMMAR_TEXT, **kwargs)


def lark_parser() -> Any:
    """Lark's LALR(1) parser for the grammar, building the AST as it reduces."""
    global _parser
    if _parser is None:
        with _lock:
            if _parser is None:
                from .builder import Builder
                _parser = _build(Builder())
    return _parser
