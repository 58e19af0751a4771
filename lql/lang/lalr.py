"""The fast LALR(1) driver: Lark's parse table, driven by :data:`lql.lang.tokens.TOKEN_RE`.

Lark's own lexer + LALR loop run at ~110k tokens/s; the parser benchmark's goal
(≥ 20,000 statements/s) needs more. :func:`drive` runs Lark's *table* and the
:class:`~lql.lang.builder.Builder` callbacks with the single master regex of
:mod:`lql.lang.tokens`: it is the grammar's contextual lexer written out (a
word is a keyword only where the parser state accepts that keyword, else NAME /
HELP_WORD; ``14-27`` is a LAYER_RANGE only where one is accepted).

This is the one module that reads Lark internals (the table behind
``Lark.parser.parser.parser.parse_table`` and its rules: ``expansion``,
``origin``, ``alias``, ``options.expand1``, ``is_term``, ``filter_out``).
``tests/test_lang_lalr.py`` pins each of them, and checks that the driver agrees
with Lark's own parser and with its public interactive parser (``accepts()``).
The table is cached on disk as plain data (:mod:`marshal`), so a parse in a
fresh process never imports Lark once the cache exists.
"""

from __future__ import annotations

import marshal
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from . import grammar
from .grammar import FIELDS, KEYWORDS
from .tokens import BLANKS_RE, NUMBER_RE, PUNCT, TOKEN_RE

#: One reduce: (number of symbols, rule name, callback over the children).
Reduce = tuple[int, str, Callable[[list[Any]], Any]]
#: state → {terminal or rule name: (True, next state) | (False, Reduce)}.
States = dict[int, dict[str, tuple[bool, Any]]]

TABLE_FORMAT = 1  # bump when table_from_lark's output changes shape

_UNICODE_WORD_RE = re.compile(r"\w")
_KEYWORD_FIELDS = frozenset(f.upper() for f in FIELDS) & KEYWORDS


class Tok:
    """A token, duck-compatible with lark.Token for the builder and the error wording."""
    __slots__ = ("type", "value", "line", "column")

    def __init__(self, type_: str, value: str, line: int, column: int):
        self.type = type_
        self.value = value
        self.line = line
        self.column = column

    def __repr__(self) -> str:
        return f"Tok({self.type}, {self.value!r}, {self.line}:{self.column})"


class LexFailure(Exception):
    """No token fits at ``pos``; ``expected``: the terminals viable there."""

    def __init__(self, pos: int, line: int, column: int, expected: set[str]):
        super().__init__(pos)
        self.pos, self.line, self.column, self.expected = pos, line, column, expected


class ParseFailure(Exception):
    """``token`` is not accepted; ``expected``: the terminals viable there."""

    def __init__(self, token: Tok, expected: set[str]):
        super().__init__(token)
        self.token, self.expected = token, expected


# --------------------------------------------------------------------------- the table

def table_from_lark() -> dict[str, Any]:
    """Lark's LALR table as plain data (marshal-able), with what each rule's callback needs.

    ``states``: state → {terminal or rule name: (1, next state) | (0, rule index)};
    ``rules``: (size, origin, callback name, kept child indices, spliced child indices,
    expand1).
    """
    from lark.parsers.lalr_analysis import Shift

    table = grammar.lark_parser().parser.parser.parser.parse_table
    rules: list[tuple[int, str, str, tuple[int, ...], tuple[int, ...], bool]] = []
    index: dict[Any, int] = {}
    states: dict[int, dict[str, tuple[int, int]]] = {}
    for state, row in table.states.items():
        new_row: dict[str, tuple[int, int]] = {}
        for term, (action, arg) in row.items():
            if action is Shift:
                new_row[str(term)] = (1, int(arg))
                continue
            if arg not in index:
                symbols = arg.expansion
                keep = [i for i, sym in enumerate(symbols) if not (sym.is_term and sym.filter_out)]
                splice = [i for i in keep
                          if not symbols[i].is_term and symbols[i].name.startswith("_")]
                index[arg] = len(rules)
                rules.append((len(symbols), str(arg.origin.name),
                              str(arg.alias or arg.origin.name), tuple(keep), tuple(splice),
                              bool(arg.options.expand1)))
            new_row[str(term)] = (0, index[arg])
        states[int(state)] = new_row
    return {"states": states, "rules": rules, "start": int(table.start_states["start"]),
            "end": int(table.end_states["start"])}


def load_table() -> dict[str, Any]:
    """The driver's table: from the on-disk cache when fresh, else from Lark (then cached)."""
    path = None
    if grammar.caching():
        py = f"{sys.version_info[0]}{sys.version_info[1]}"
        path = grammar.cache_file(
            f"grammar-table{TABLE_FORMAT}-{grammar.grammar_digest()}-py{py}.marshal")
    if path:
        try:
            with open(path, "rb") as f:
                table: dict[str, Any] = marshal.load(f)
            check_table(table)
            return table
        except Exception:  # missing, truncated or foreign: rebuild below
            pass
    table = table_from_lark()
    if path:
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                marshal.dump(table, f)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        except Exception:  # a cache we cannot write is not an error
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return table


def check_table(table: dict[str, Any]) -> None:
    """Raise unless ``table`` has the shape table_from_lark produces and fits this grammar."""
    from .builder import Builder

    states, rules = table["states"], table["rules"]
    assert isinstance(states, dict) and isinstance(rules, list)
    assert table["start"] in states and table["end"] in states
    for row in states.values():
        for shift, arg in row.values():
            assert (arg in states) if shift else (0 <= arg < len(rules))
    for _size, _origin, name, _keep, _splice, expand1 in rules:
        assert name.startswith("_") or hasattr(Builder, name) or expand1, name


_tables: tuple[States, int, int] | None = None


def get_tables() -> tuple[States, int, int]:
    """(states, start state, end state), with each reduce's callback bound to a Builder."""
    global _tables
    if _tables is None:
        from .builder import Builder

        table = load_table()
        builder = Builder()
        reduces = [(size, origin, make_callback(name, keep, splice, expand1, size, builder))
                   for size, origin, name, keep, splice, expand1 in table["rules"]]
        states: States = {
            state: {term: (True, arg) if shift else (False, reduces[arg])
                    for term, (shift, arg) in row.items()}
            for state, row in table["states"].items()}
        _tables = (states, table["start"], table["end"])
    return _tables


class _Inline(list[Any]):
    """The children of an inlined rule (``_name`` / lark's ``__x_star_n``), spliced by the parent."""
    __slots__ = ()


def make_callback(name: str, keep: Iterable[int], splice_: Iterable[int], expand1: bool,
                  size: int, builder: object) -> Callable[[list[Any]], Any]:
    """A reduce callback equivalent to Lark's (token filtering, ``_rule`` inlining, ``?rule``)."""
    keep = tuple(keep)
    splice = frozenset(splice_)
    target: Callable[[list[Any]], Any] | None = (
        _Inline if name.startswith("_") else getattr(builder, name, None))
    if target is None:  # only `?rule`s that always have one child may lack a builder method
        assert expand1, f"lql.lang.builder.Builder has no method for grammar rule {name!r}"
        target = _Inline
    build = target
    everything = len(keep) == size and not splice

    # specialised for the common shapes: this runs on every reduction
    if everything and not expand1:
        return build
    if everything and size == 1:  # `?rule: x`: pass the child through
        return _first
    if not expand1 and len(keep) == 2 and splice == {keep[0]} and keep[1] not in splice:
        first, second = keep  # `__x_star: __x_star item`: extend the list

        def append(children: list[Any]) -> Any:
            out = children[first]
            out.append(children[second])
            return build(out) if build is not _Inline else out
        return append

    def callback(children: list[Any]) -> Any:
        if everything:
            out = children
        else:
            out = []
            for i in keep:
                if i in splice:
                    out.extend(children[i])
                else:
                    out.append(children[i])
        if expand1 and len(out) == 1:
            return out[0]
        return build(out)

    return callback


def _first(children: list[Any]) -> Any:
    return children[0]


def _terminals(row: Iterable[str]) -> set[str]:
    return {t for t in row if t.isupper() and t != "$END"}


def viable(states: States, state_stack: list[int], terminals: Iterable[str]) -> set[str]:
    """The terminals that would really be shifted next (LALR tables over-approximate)."""
    ok = set()
    for term in terminals:
        stack = list(state_stack)
        while True:
            action = states[stack[-1]].get(term)
            if action is None:
                break
            shift, arg = action
            if shift:
                ok.add(term)
                break
            size, name, _ = arg
            if size:
                del stack[-size:]
            stack.append(states[stack[-1]][name][1])
    return ok


# --------------------------------------------------------------------------- the driver

def drive(text: str, complete: bool = True) -> Any:
    """Parse ``text`` into the start rule's value (the statement list).

    With ``complete=False`` return instead the set of terminals viable at its end
    (empty when the end is inside a ``--`` comment). Raises :class:`LexFailure`,
    :class:`ParseFailure` or the builder's ``NodeError``.
    """
    states, start_state, end_state = get_tables()
    keywords = KEYWORDS
    punct = PUNCT
    match = TOKEN_RE.match
    state_stack = [start_state]
    value_stack: list[Any] = []
    pos, n, line, line_start = 0, len(text), 1, 0
    tok: Tok | None = None
    while True:
        m = match(text, pos)
        if m is None:  # no token fits: find where the blanks end, report there
            blanks = BLANKS_RE.match(text, pos)
            pos = blanks.end() if blanks else pos
            line = text.count("\n", 0, pos) + 1
            line_start = text.rfind("\n", 0, pos) + 1
            raise LexFailure(pos, line, pos - line_start + 1,
                             viable(states, state_stack, _terminals(states[state_stack[-1]])))
        kind = m.lastgroup or "EOF"
        start = m.start(kind)
        if start != pos and (start - pos > 1 or text[pos] == "\n"):  # blanks: count lines
            newlines = text.count("\n", pos, start)
            if newlines:
                line += newlines
                line_start = text.rfind("\n", pos, start) + 1
        end = m.end()
        row = states[state_stack[-1]]
        if kind == "WORD":
            value = m.group(kind)
            up = value.upper()
            if up in keywords and not (end < n and text[end] >= "\x80"
                                       and _UNICODE_WORD_RE.match(text, end)):
                # a keyword; where it is not accepted it may still be a HELP topic
                # word, or a field that happens to be a keyword (layer, relation)
                if up in row:
                    ttype = up
                elif "HELP_WORD" in row:
                    ttype = "HELP_WORD"
                elif "NAME" in row and up in _KEYWORD_FIELDS:
                    ttype = "NAME"
                else:
                    ttype = up  # reported as "unexpected keyword X"
            else:
                ttype = "HELP_WORD" if "HELP_WORD" in row else "NAME"
        elif kind == "STRING" or kind == "NUMBER":
            value = m.group(kind)
            ttype = kind
        elif kind == "PUNCT":
            value = m.group(kind)
            ttype = punct[value]
        elif kind == "RANGE":
            value = m.group(kind)
            if "LAYER_RANGE" in row:
                ttype = "LAYER_RANGE"
            else:  # not a range here: lex the leading number only (`14` then `-27`)
                number = NUMBER_RE.match(text, start)
                assert number is not None
                value = number.group()
                end = start + len(value)
                ttype = "NUMBER"
        elif kind == "EOF":
            if not complete:
                return viable(states, state_stack, _terminals(row))
            ttype = "$END"  # positioned just after the last token, for "unexpected end"
            tok = Tok(ttype, "", tok.line, tok.column + len(tok.value)) if tok else \
                Tok(ttype, "", 1, 1)
            pos = end
        else:  # COMMENT or BLOCK
            if not complete and end == n and kind == "COMMENT":
                return set()  # the end is inside a comment: nothing to complete
            if kind == "BLOCK":
                newlines = text.count("\n", start, end)
                if newlines:
                    line += newlines
                    line_start = text.rfind("\n", start, end) + 1
            pos = end
            continue
        if ttype != "$END":
            tok = Tok(ttype, value, line, start - line_start + 1)
            pos = end
        assert tok is not None
        while True:  # feed tok (as lark's ParserState.feed_token)
            action = row.get(ttype)
            if action is None:
                raise ParseFailure(tok, viable(states, state_stack, _terminals(row)))
            shift, arg = action
            if shift:
                state_stack.append(arg)
                value_stack.append(tok)
                break
            size, name, callback = arg
            if size:
                children = value_stack[-size:]
                del state_stack[-size:]
                del value_stack[-size:]
            else:
                children = []
            value_stack.append(callback(children))
            new_state = states[state_stack[-1]][name][1]
            if ttype == "$END" and new_state == end_state:
                return value_stack[-1]
            state_stack.append(new_state)
            row = states[new_state]
