"""The AST: canonical to_lql() text, keywords, helpers, dataclass behaviour."""

from __future__ import annotations

import dataclasses

import pytest

from lql import ast as A

R = A.Range

CANONICAL = [
    (A.Extract("m", "v", level=A.Level.ALL, layers=R(0, 3), dtype=A.DType.F32, force=True),
     'EXTRACT MODEL "m" INTO "v" WITH ALL LAYERS 0-3 DTYPE F32 FORCE'),
    (A.Use('a "b"'), r'USE "a \"b\""'),
    (A.UseModel("m"), 'USE MODEL "m"'),
    (A.UseRemote("http://h:1"), 'USE REMOTE "http://h:1"'),
    (A.Compile(None, A.CompileTarget.VINDEX, "o", on_conflict=A.Conflict.FAIL),
     'COMPILE CURRENT INTO VINDEX "o" ON CONFLICT FAIL'),
    (A.Compile("v", A.CompileTarget.MODEL, "o", format=A.ModelFormat.GGUF, force=True),
     'COMPILE "v" INTO MODEL "o" FORMAT GGUF FORCE'),
    (A.Diff("a", None, layer=3, relation="r", limit=5, into_patch="p"),
     'DIFF "a" CURRENT LAYER 3 RELATION "r" LIMIT 5 INTO PATCH "p"'),
    (A.Walk("x", top=5, layers=A.ALL_LAYERS, mode=A.WalkMode.DENSE, compare=True),
     'WALK "x" TOP 5 LAYERS ALL MODE DENSE COMPARE'),
    (A.Walk("x", layers=R(27, 27)), 'WALK "x" LAYERS 27'),
    (A.Describe("x", band=A.Band.ALL_LAYERS, layer=2, relations_only=True,
                verbosity=A.Verbosity.RAW, via=A.Via.RESIDUAL),
     'DESCRIBE "x" ALL LAYERS AT LAYER 2 RELATIONS ONLY RAW VIA RESIDUAL'),
    (A.Describe("two  spaces"), 'DESCRIBE "two  spaces"'),
    (A.Select(A.SelectSource.EDGES, fields=("entity", "target"), nearest=A.Nearest("P", 4),
              where=(A.Condition("layer", "IN", (1, 2.5, "x")), A.Condition("target", "LIKE", "a%")),
              order_by=A.OrderBy("gate", True), limit=3),
     'SELECT entity, target FROM EDGES NEAREST TO "P" AT LAYER 4 '
     'WHERE layer IN (1, 2.5, "x") AND target LIKE "a%" ORDER BY gate DESC LIMIT 3'),
    (A.Select(A.SelectSource.FEATURES), "SELECT * FROM FEATURES"),
    (A.ExplainWalk("x", layers=R(1, 2), top=3, verbose=True),
     'EXPLAIN WALK "x" LAYERS 1-2 TOP 3 VERBOSE'),
    (A.Infer("x", top=3, compare=True, wrap=A.PromptWrap.RAW, system="s", generate=4,
             verbose=True), 'INFER "x" TOP 3 COMPARE RAW SYSTEM "s" GENERATE 4 VERBOSE'),
    (A.ExplainInfer("x", layers=R(1, 2), top=3, verbose=True, with_attention=True,
                    wrap=A.PromptWrap.CHAT, system="s"),
     'EXPLAIN INFER "x" LAYERS 1-2 TOP 3 VERBOSE WITH ATTENTION CHAT SYSTEM "s"'),
    (A.Trace("x", for_token=" P", decompose=True, layers=R(0, 1), positions=A.Positions.ALL,
             save="t.npz", wrap=A.PromptWrap.CHAT, system="s"),
     'TRACE "x" FOR " P" DECOMPOSE LAYERS 0-1 POSITIONS ALL SAVE "t.npz" CHAT SYSTEM "s"'),
    (A.Insert("a", "r", "t", layer=2, confidence=1, alpha=0.1, mode=A.InsertMode.KNN,
              prompt="{entity} is"),
     'INSERT INTO EDGES (entity, relation, target) VALUES ("a", "r", "t") AT LAYER 2 '
     'CONFIDENCE 1.0 ALPHA 0.1 MODE KNN PROMPT "{entity} is"'),
    (A.Delete((A.Condition("layer", "=", 1), A.Condition("feature", "!=", -2))),
     "DELETE FROM EDGES WHERE layer = 1 AND feature != -2"),
    (A.Update((A.Assignment("target", "x"), A.Assignment("confidence", 0.5)),
              (A.Condition("layer", ">=", 1),)),
     'UPDATE EDGES SET target = "x", confidence = 0.5 WHERE layer >= 1'),
    (A.Merge("a", target="b", on_conflict=A.Conflict.KEEP_TARGET),
     'MERGE "a" INTO "b" ON CONFLICT KEEP_TARGET'),
    (A.Rebalance(until_converged=True, max_iterations=4, floor=0.3, ceiling=0.9),
     "REBALANCE UNTIL CONVERGED MAX 4 FLOOR 0.3 CEILING 0.9"),
    (A.Rebalance(), "REBALANCE"),
    (A.BeginPatch("p"), 'BEGIN PATCH "p"'),
    (A.SavePatch(), "SAVE PATCH"),
    (A.SavePatch("p"), 'SAVE PATCH "p"'),
    (A.ApplyPatch("p", force=True), 'APPLY PATCH "p" FORCE'),
    (A.RemovePatch("p"), 'REMOVE PATCH "p"'),
    (A.ShowPatches(), "SHOW PATCHES"),
    (A.ShowRelations(layer=3, with_examples=True, verbosity=A.Verbosity.BRIEF),
     "SHOW RELATIONS AT LAYER 3 WITH EXAMPLES BRIEF"),
    (A.ShowLayers(), "SHOW LAYERS"),
    (A.ShowLayers(R(2, 9)), "SHOW LAYERS 2-9"),
    (A.ShowFeatures(3, where=(A.Condition("target", "=", "P"),), limit=2),
     'SHOW FEATURES 3 WHERE target = "P" LIMIT 2'),
    (A.ShowEntities(layer=1, limit=2), "SHOW ENTITIES AT LAYER 1 LIMIT 2"),
    (A.ShowModels(), "SHOW MODELS"),
    (A.Stats(), "STATS"),
    (A.Stats("v"), 'STATS "v"'),
    (A.SetChat(A.ChatMode.OFF), "SET CHAT OFF"),
    (A.Help(), "HELP"),
    (A.Help("EXPLAIN INFER"), "HELP EXPLAIN INFER"),
    (A.Pipe(A.Pipe(A.Walk("a"), A.Stats()), A.ShowModels()), 'WALK "a" |> STATS |> SHOW MODELS'),
]


@pytest.mark.parametrize("stmt,text", CANONICAL, ids=[t for _, t in CANONICAL])
def test_to_lql_is_canonical(stmt, text):
    assert stmt.to_lql() == text


def test_quote_escapes():
    assert A.quote('a"b\\c\nd\te\'f') == r'"a\"b\\c\nd\te' + "'f\""
    assert A.quote("") == '""'


KEYWORDS = {
    A.Extract: "EXTRACT", A.Use: "USE", A.UseModel: "USE MODEL", A.UseRemote: "USE REMOTE",
    A.Compile: "COMPILE", A.Diff: "DIFF", A.Walk: "WALK", A.Describe: "DESCRIBE",
    A.Select: "SELECT", A.ExplainWalk: "EXPLAIN WALK", A.Infer: "INFER",
    A.ExplainInfer: "EXPLAIN INFER", A.Trace: "TRACE",
    A.SaveSteer: "SAVE STEER", A.Insert: "INSERT", A.Delete: "DELETE",
    A.Update: "UPDATE", A.Merge: "MERGE", A.Rebalance: "REBALANCE", A.BeginPatch: "BEGIN PATCH",
    A.SavePatch: "SAVE PATCH", A.ApplyPatch: "APPLY PATCH", A.RemovePatch: "REMOVE PATCH",
    A.ShowPatches: "SHOW PATCHES", A.ShowRelations: "SHOW RELATIONS",
    A.ShowLayers: "SHOW LAYERS", A.ShowFeatures: "SHOW FEATURES",
    A.ShowEntities: "SHOW ENTITIES", A.ShowModels: "SHOW MODELS", A.Stats: "STATS",
    A.SetChat: "SET CHAT", A.Pipe: "PIPE", A.Help: "HELP",
    A.UseSae: "USE SAE", A.DescribeSaeFeature: "DESCRIBE SAE FEATURE",
    A.SelectSaeFeatures: "SELECT", A.EvaluateSae: "EVALUATE SAE", A.Capture: "CAPTURE",
}


KEYWORDS.update({A.CompactMinor: "COMPACT MINOR", A.CompactMajor: "COMPACT MAJOR",
                 A.ShowCompactStatus: "SHOW COMPACT STATUS"})


def test_every_statement_has_its_result_contract_keyword():
    assert set(KEYWORDS) == set(A.STATEMENT_TYPES)
    for cls, keyword in KEYWORDS.items():
        assert cls.keyword == keyword
        assert issubclass(cls, A.Statement)


def test_statements_are_frozen_and_compare_without_position():
    w = A.Walk("x", top=3, line=7, column=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.top = 4  # type: ignore[misc]
    assert w == A.Walk("x", top=3)
    assert hash(w) == hash(A.Walk("x", top=3))
    assert (w.line, w.column) == (7, 2)
    assert "line" not in repr(w)
    assert A.Walk("x") != A.Walk("y") and A.Walk("x") != A.Infer("x")


def test_optional_clauses_default_to_none():
    d = A.Describe("x")
    assert (d.band, d.layer, d.verbosity, d.via, d.relations_only) == (None, None, None, None, False)
    i = A.Infer("x")
    assert (i.top, i.wrap, i.system, i.generate) == (None, None, None, None)


def test_range_helpers():
    r = R(14, 27)
    assert 14 in r and 27 in r and 13 not in r and 28 not in r
    assert list(R(2, 4)) == [2, 3, 4] and len(r) == 14
    assert r.to_lql() == "14-27" and R(5, 5).to_lql() == "5"
    assert A.ALL_LAYERS == A.AllLayers() and A.ALL_LAYERS.to_lql() == "ALL"


def test_enum_values_are_their_lql_spelling():
    assert A.Band.ALL_LAYERS.value == "ALL LAYERS" and str(A.Band.SYNTAX) == "SYNTAX"
    assert [m.name for m in A.Conflict] == ["LAST_WINS", "HIGHEST_CONFIDENCE", "FAIL",
                                            "KEEP_SOURCE", "KEEP_TARGET"]
    for enum_cls in (A.Level, A.DType, A.WalkMode, A.Verbosity, A.ChatMode, A.PromptWrap,
                     A.InsertMode, A.Via, A.Positions, A.CompileTarget, A.ModelFormat,
                     A.SelectSource):
        for member in enum_cls:
            assert member.value == member.name


def test_format_value():
    assert A.format_value(3) == "3" and A.format_value(-2.5) == "-2.5"
    assert A.format_value(("a", 1)) == '("a", 1)'
    with pytest.raises(TypeError):
        A.format_value(True)
