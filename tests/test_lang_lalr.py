"""The Lark behaviour lql.lang.lalr relies on, pinned (it reads Lark's LALR table)."""

from __future__ import annotations

import pytest

from lql.lang import grammar, lalr, tokens
from lql.lang.api import expected_at


def test_lark_exposes_the_table_the_driver_reads():
    from lark.parsers.lalr_analysis import Reduce, Shift

    table = grammar.lark_parser().parser.parser.parser.parse_table
    assert isinstance(table.states, dict) and "start" in table.start_states
    assert "start" in table.end_states
    actions = {action for row in table.states.values() for action, _arg in row.values()}
    assert actions == {Shift, Reduce}
    rule = next(arg for row in table.states.values() for action, arg in row.values()
                if action is Reduce)
    for attribute in ("expansion", "origin", "alias", "options"):
        assert hasattr(rule, attribute)
    assert hasattr(rule.options, "expand1") and hasattr(rule.origin, "name")
    for sym in rule.expansion:
        assert hasattr(sym, "is_term") and hasattr(sym, "name")
        if sym.is_term:
            assert hasattr(sym, "filter_out")


def test_table_round_trips_through_the_check():
    table = lalr.table_from_lark()
    lalr.check_table(table)
    with pytest.raises(AssertionError):
        lalr.check_table({"states": {}, "rules": [], "start": 0, "end": 0})


def _prefixes(text: str) -> list[str]:
    cuts = [a for kind, a, _b in tokens.scan(text) if kind == tokens.BLANKS]
    return [text[:c + 1] for c in cuts] + [text]


@pytest.mark.parametrize("statement", [
    'WALK "x" TOP 10 LAYERS 14-27 MODE HYBRID',
    'DESCRIBE "Paris" ALL LAYERS AT LAYER 26 RELATIONS ONLY VIA RESIDUAL',
    'SELECT entity, relation FROM EDGES WHERE entity = "France" AND layer >= 20 ORDER BY gate DESC',
    'INSERT INTO EDGES (entity, relation, target) VALUES ("a", "b", "c") AT LAYER 24',
    'UPDATE EDGES SET target = "Berlin", confidence = 0.9 WHERE layer IN (1, 2)',
    'SHOW LAYERS RANGE 3-5 |> HELP DESCRIBE',
    'COMPILE CURRENT INTO VINDEX "v" ON CONFLICT FAIL FORCE',
])
def test_viable_terminals_match_larks_interactive_parser(statement):
    """The driver's "what can come next" = Lark's public InteractiveParser.accepts()."""
    for prefix in _prefixes(statement):
        ip = grammar.lark_parser().parse_interactive(prefix)
        ip.exhaust_lexer()
        theirs = {t for t in ip.accepts() if t != "$END"}
        assert lalr.drive(prefix, complete=False) == theirs, prefix
        assert expected_at(prefix)  # something is always offered after a valid prefix
