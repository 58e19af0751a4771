"""lql.lang.grammar: keyword lists are read from the grammar, never typed twice."""

from __future__ import annotations

import inspect

from lql import repl
from lql.lang import builder, grammar
from lql.lang.api import expected_at


def test_statement_keywords_are_what_the_parser_accepts_first():
    assert set(grammar.STATEMENT_KEYWORDS) == expected_at("") - {";"}
    assert set(grammar.STATEMENT_KEYWORDS) == expected_at('STATS |> ')


def test_the_repl_offers_every_grammar_keyword():
    kws = repl.keywords()
    assert kws == set(grammar.KEYWORDS)
    assert {"EMBEDDING", "EXAMPLES", "FORCE", "PROMPT", "RESIDUAL", "VIA"} <= kws


def test_every_builder_method_is_a_grammar_rule():
    rules = grammar._rules(grammar.GRAMMAR_TEXT)
    aliases = {"compile_vindex", "compile_model", "pipe"}
    methods = {n for n, _ in inspect.getmembers(builder.Builder, inspect.isfunction)
               if not n.startswith("_")}
    assert methods - aliases <= set(rules)
    assert {r for r in rules if not r.startswith("_")} - {"pipeline", "compile"} <= methods | aliases


def test_rules_read_by_head_begin_with_a_keyword_token():
    """builder._head(c) is c[0]: every alternative of such a rule starts with a kept terminal."""
    rules = grammar._rules(grammar.GRAMMAR_TEXT)
    for name, fn in inspect.getmembers(builder.Builder, inspect.isfunction):
        if "_head(c)" not in inspect.getsource(fn):
            continue
        alternatives = rules["compile"] if name.startswith("compile_") else rules[name]
        for alt in alternatives:
            first = alt[0]
            assert first.isupper() and not first.startswith("_") and first[-1] not in "?*+", \
                (name, alt)
