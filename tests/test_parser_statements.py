"""Every statement form of the spec parses to the AST written here by hand."""

from __future__ import annotations

import pytest

from lql import ast as A
from lql.parser import parse, parse_one

R = A.Range

CASES: list[tuple[str, A.Statement]] = [
    # ---- lifecycle --------------------------------------------------------------
    ('EXTRACT MODEL "google/gemma-3-4b-it" INTO "gemma3-4b.vindex"',
     A.Extract("google/gemma-3-4b-it", "gemma3-4b.vindex")),
    ('EXTRACT MODEL "m" INTO "v" WITH INFERENCE LAYERS 0-33 DTYPE F32',
     A.Extract("m", "v", level=A.Level.INFERENCE, layers=R(0, 33), dtype=A.DType.F32)),
    ('EXTRACT MODEL "m" INTO "v" WITH INFERENCE DTYPE bf16',
     A.Extract("m", "v", level=A.Level.INFERENCE, dtype=A.DType.BF16)),
    ('EXTRACT MODEL "m" INTO "v" COMPONENTS ffn_gate, ATTN_OV WITH WEIGHTS',
     A.Extract("m", "v", level=A.Level.INFERENCE, components=("FFN_GATE", "ATTN_OV"))),
    ('USE MODEL "m" AUTO_EXTRACT', A.UseModel("m", auto_extract=True)),
    ('EXPLAIN INFER "p" KNOWLEDGE RELATIONS ONLY',
     A.ExplainInfer("p", band=A.Band.KNOWLEDGE, relations_only=True)),
    ('EXTRACT MODEL "m" INTO "v" DTYPE F16 WITH ALL FORCE',
     A.Extract("m", "v", level=A.Level.ALL, dtype=A.DType.F16, force=True)),
    ('EXTRACT MODEL "m.gguf" INTO "v" WITH BROWSE LAYERS 5',
     A.Extract("m.gguf", "v", level=A.Level.BROWSE, layers=R(5, 5))),
    ('EXTRACT "m" INTO "v"', A.Extract("m", "v")),  # MODEL is optional
    ('USE "gemma3-4b.vindex"', A.Use("gemma3-4b.vindex")),
    ('USE MODEL "./smollm2"', A.UseModel("./smollm2")),
    ('USE REMOTE "http://localhost:8080"', A.UseRemote("http://localhost:8080")),
    ('COMPILE CURRENT INTO VINDEX "out.vindex"',
     A.Compile(None, A.CompileTarget.VINDEX, "out.vindex")),
    ('COMPILE "a.vindex" INTO VINDEX "b.vindex" ON CONFLICT HIGHEST_CONFIDENCE',
     A.Compile("a.vindex", A.CompileTarget.VINDEX, "b.vindex",
               on_conflict=A.Conflict.HIGHEST_CONFIDENCE)),
    ('COMPILE CURRENT INTO VINDEX "o" FORCE ON CONFLICT FAIL',
     A.Compile(None, A.CompileTarget.VINDEX, "o", on_conflict=A.Conflict.FAIL, force=True)),
    ('COMPILE CURRENT INTO VINDEX "o" ON CONFLICT LAST_WINS',
     A.Compile(None, A.CompileTarget.VINDEX, "o", on_conflict=A.Conflict.LAST_WINS)),
    ('COMPILE CURRENT INTO MODEL "out/"',
     A.Compile(None, A.CompileTarget.MODEL, "out/")),
    ('COMPILE "v" INTO MODEL "out" FORMAT GGUF FORCE',
     A.Compile("v", A.CompileTarget.MODEL, "out", format=A.ModelFormat.GGUF, force=True)),
    ('COMPILE CURRENT INTO MODEL "o" FORMAT SAFETENSORS',
     A.Compile(None, A.CompileTarget.MODEL, "o", format=A.ModelFormat.SAFETENSORS)),
    ('DIFF "a.vindex" "b.vindex"', A.Diff("a.vindex", "b.vindex")),
    ('DIFF "a.vindex" CURRENT LAYER 26 RELATION "capital" LIMIT 20 INTO PATCH "d.vlp"',
     A.Diff("a.vindex", None, layer=26, relation="capital", limit=20, into_patch="d.vlp")),
    ('DIFF "a" "b" INTO PATCH "p.vlp" LIMIT 3', A.Diff("a", "b", limit=3, into_patch="p.vlp")),
    # ---- browse -----------------------------------------------------------------
    ('WALK "The capital of France is"', A.Walk("The capital of France is")),
    ('WALK "x" TOP 20 LAYERS 14-27 MODE PURE COMPARE',
     A.Walk("x", top=20, layers=R(14, 27), mode=A.WalkMode.PURE, compare=True)),
    ('WALK "x" COMPARE MODE DENSE LAYERS ALL TOP 3',
     A.Walk("x", top=3, layers=A.ALL_LAYERS, mode=A.WalkMode.DENSE, compare=True)),
    ('WALK "x" MODE HYBRID LAYERS 27', A.Walk("x", layers=R(27, 27), mode=A.WalkMode.HYBRID)),
    ('WALK "x" LAYERS 3 EXPERTS TOP 4', A.Walk("x", top=4, layers=R(3, 3), experts=True)),
    ('DESCRIBE "France"', A.Describe("France")),
    ('DESCRIBE "France" EXPERTS ALL LAYERS', A.Describe("France", band=A.Band.ALL_LAYERS, experts=True)),
    ('SELECT * FROM EXPERTS WHERE layer = 3 AND expert IN (0, 2) AND feature = 17',
     A.Select(A.SelectSource.EXPERTS, where=(A.Condition("layer", "=", 3),
                                              A.Condition("expert", "IN", (0, 2)),
                                              A.Condition("feature", "=", 17)))),
    ('EXPLAIN WALK "x" EXPERTS VERBOSE', A.ExplainWalk("x", verbose=True, experts=True)),
    ('DESCRIBE "France" ALL LAYERS VERBOSE', A.Describe("France", band=A.Band.ALL_LAYERS,
                                                      verbosity=A.Verbosity.VERBOSE)),
    ('DESCRIBE "France" SYNTAX', A.Describe("France", band=A.Band.SYNTAX)),
    ('DESCRIBE "France" KNOWLEDGE BRIEF', A.Describe("France", band=A.Band.KNOWLEDGE,
                                                    verbosity=A.Verbosity.BRIEF)),
    ('DESCRIBE "France" OUTPUT RAW', A.Describe("France", band=A.Band.OUTPUT,
                                               verbosity=A.Verbosity.RAW)),
    ('DESCRIBE "Paris" AT LAYER 26 RELATIONS ONLY',
     A.Describe("Paris", layer=26, relations_only=True)),
    ('DESCRIBE "Paris" VIA RESIDUAL', A.Describe("Paris", via=A.Via.RESIDUAL)),
    ('DESCRIBE "France" VIA PROMPTS', A.Describe("France", via=A.Via.PROMPTS)),
    ('DESCRIBE "Einstein" VERBOSE VIA PROMPTS',
     A.Describe("Einstein", verbosity=A.Verbosity.VERBOSE, via=A.Via.PROMPTS)),
    ('DESCRIBE "Paris" VERBOSE VIA EMBEDDING AT LAYER 3 SYNTAX',
     A.Describe("Paris", band=A.Band.SYNTAX, layer=3, verbosity=A.Verbosity.VERBOSE,
                via=A.Via.EMBEDDING)),
    ('SELECT * FROM EDGES', A.Select(A.SelectSource.EDGES)),
    ('SELECT entity, relation, target FROM EDGES WHERE entity = "France"',
     A.Select(A.SelectSource.EDGES, fields=("entity", "relation", "target"),
              where=(A.Condition("entity", "=", "France"),))),
    ('SELECT * FROM FEATURES WHERE layer = 27 AND feature = 9515',
     A.Select(A.SelectSource.FEATURES, where=(A.Condition("layer", "=", 27),
                                             A.Condition("feature", "=", 9515)))),
    ('SELECT entity, distance FROM ENTITIES NEAREST TO "Paris" AT LAYER 26 LIMIT 10',
     A.Select(A.SelectSource.ENTITIES, fields=("entity", "distance"),
              nearest=A.Nearest("Paris", 26), limit=10)),
    ('SELECT * FROM EDGES WHERE relation = "capital" ORDER BY confidence DESC LIMIT 5',
     A.Select(A.SelectSource.EDGES, where=(A.Condition("relation", "=", "capital"),),
              order_by=A.OrderBy("confidence", True), limit=5)),
    ('SELECT target FROM EDGES ORDER BY gate ASC', A.Select(
        A.SelectSource.EDGES, fields=("target",), order_by=A.OrderBy("gate", False))),
    ('SELECT target FROM EDGES ORDER BY gate', A.Select(
        A.SelectSource.EDGES, fields=("target",), order_by=A.OrderBy("gate", False))),
    ('SELECT * FROM EDGES LIMIT 3 WHERE target LIKE "Par%"',  # clauses in any order
     A.Select(A.SelectSource.EDGES, where=(A.Condition("target", "LIKE", "Par%"),), limit=3)),
    ('SELECT * FROM EDGES WHERE layer IN (24, 25, 26) AND gate >= 0.5 AND gate <= 2.0 '
     'AND confidence > 0 AND confidence < 1 AND target != "the" AND target <> "a"',
     A.Select(A.SelectSource.EDGES, where=(
         A.Condition("layer", "IN", (24, 25, 26)), A.Condition("gate", ">=", 0.5),
         A.Condition("gate", "<=", 2.0), A.Condition("confidence", ">", 0),
         A.Condition("confidence", "<", 1), A.Condition("target", "!=", "the"),
         A.Condition("target", "!=", "a")))),
    ('SELECT * FROM EDGES WHERE entity IN ("France", \'Spain\', -1.5)',
     A.Select(A.SelectSource.EDGES, where=(A.Condition("entity", "IN", ("France", "Spain", -1.5)),))),
    ('EXPLAIN WALK "The capital of France is"', A.ExplainWalk("The capital of France is")),
    ('EXPLAIN WALK "x" LAYERS 20-27 TOP 5 VERBOSE',
     A.ExplainWalk("x", layers=R(20, 27), top=5, verbose=True)),
    # ---- inference ----------------------------------------------------------------
    ('INFER "The capital of France is"', A.Infer("The capital of France is")),
    ('INFER "x" TOP 10 COMPARE', A.Infer("x", top=10, compare=True)),
    ('INFER "x" CHAT SYSTEM "You are terse." GENERATE 20',
     A.Infer("x", wrap=A.PromptWrap.CHAT, system="You are terse.", generate=20)),
    ('INFER "x" RAW VERBOSE', A.Infer("x", wrap=A.PromptWrap.RAW, verbose=True)),
    ('EXPLAIN INFER "x"', A.ExplainInfer("x")),
    ('EXPLAIN INFER "x" LAYERS 20-27 TOP 3 VERBOSE WITH ATTENTION CHAT',
     A.ExplainInfer("x", layers=R(20, 27), top=3, verbose=True, with_attention=True,
                    wrap=A.PromptWrap.CHAT)),
    ('EXPLAIN INFER "x" RAW SYSTEM "s"', A.ExplainInfer("x", wrap=A.PromptWrap.RAW, system="s")),
    ('EXPLAIN INFER "The capital of France is" FOR "Paris"',
     A.ExplainInfer("The capital of France is", for_token="Paris")),
    ('EXPLAIN INFER "x" FOR " Paris" LAYERS 20-27 TOP 5 RAW',
     A.ExplainInfer("x", for_token=" Paris", layers=R(20, 27), top=5, wrap=A.PromptWrap.RAW)),
    ('TRACE "The capital of France is"', A.Trace("The capital of France is")),
    ('SAVE STEER CONTRAST FROM FILE "a.txt" VS "b.txt" AT LAYER 15 INTO "v.npy"',
     A.SaveSteer(A.Contrast("a.txt", "b.txt"), 15, "v.npy")),
    ('TRACE "x" FOR " Paris" DECOMPOSE LAYERS 10-20 POSITIONS ALL SAVE "r.npz" RAW',
     A.Trace("x", for_token=" Paris", decompose=True, layers=R(10, 20),
             positions=A.Positions.ALL, save="r.npz", wrap=A.PromptWrap.RAW)),
    ('TRACE "x" POSITIONS LAST CHAT SYSTEM "sys"',
     A.Trace("x", positions=A.Positions.LAST, wrap=A.PromptWrap.CHAT, system="sys")),
    # ---- interpretability (SAEs, capture) ---------------------------------------------
    ('USE SAE "res21"', A.UseSae("res21")),
    ('USE SAE "topk.safetensors" AT LAYER 21 AS res21', A.UseSae("topk.safetensors", layer=21,
                                                                 name="res21")),
    ('EXPLAIN INFER "x" TOP 3 WITH SAE', A.ExplainInfer("x", top=3, with_sae=True)),
    ('EXPLAIN INFER "x" WITH SAE res21 RAW', A.ExplainInfer("x", with_sae=True, sae="res21",
                                                            wrap=A.PromptWrap.RAW)),
    ('TRACE "x" WITH SAE POSITIONS ALL', A.Trace("x", with_sae=True, positions=A.Positions.ALL)),
    ('TRACE "x" WITH SAE res21 FOR " Paris"', A.Trace("x", for_token=" Paris", with_sae=True,
                                                      sae="res21")),
    ('DESCRIBE SAE FEATURE 1234', A.DescribeSaeFeature(1234)),
    ('DESCRIBE SAE res21 FEATURE 7 FROM FILE "p.txt" TOP 5',
     A.DescribeSaeFeature(7, sae="res21", file="p.txt", top=5)),
    ('SELECT * FROM SAE FEATURES', A.SelectSaeFeatures()),
    ('SELECT feature, token FROM SAE res21 FEATURES WHERE token = " Paris" ORDER BY norm DESC '
     'LIMIT 5', A.SelectSaeFeatures(fields=("feature", "token"), sae="res21",
                                    where=(A.Condition("token", "=", " Paris"),),
                                    order_by=A.OrderBy("norm", True), limit=5)),
    ('EVALUATE SAE FROM FILE "p.txt"', A.EvaluateSae("p.txt")),
    ('EVALUATE SAE res21 FROM FILE "p.txt"', A.EvaluateSae("p.txt", sae="res21")),
    ('CAPTURE "hello" AT LAYER 3 INTO "a.npy"', A.Capture(3, "a.npy", prompt="hello")),
    ('CAPTURE FROM FILE "p.txt" AT LAYER 21 POSITIONS ALL INTO "acts.npz"',
     A.Capture(21, "acts.npz", file="p.txt", positions=A.Positions.ALL)),
    # ---- mutation -----------------------------------------------------------------
    ('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", "Poseidon")',
     A.Insert("Atlantis", "capital", "Poseidon")),
    ('INSERT INTO EDGES (entity, relation, target) VALUES ("A", "r", "T") '
     'AT LAYER 24 CONFIDENCE 0.95 ALPHA 0.25 MODE COMPOSE PROMPT "The capital of {entity} is"',
     A.Insert("A", "r", "T", layer=24, confidence=0.95, alpha=0.25, mode=A.InsertMode.COMPOSE,
              prompt="The capital of {entity} is")),
    ('INSERT INTO EDGES VALUES ("A", "r", "T") MODE KNN CONFIDENCE 1',
     A.Insert("A", "r", "T", confidence=1.0, mode=A.InsertMode.KNN)),
    ('INSERT INTO EDGES (target, entity, relation) VALUES ("T", "A", "r")',  # columns reordered
     A.Insert("A", "r", "T")),
    ('DELETE FROM EDGES WHERE entity = "Atlantis" AND relation = "capital"',
     A.Delete((A.Condition("entity", "=", "Atlantis"), A.Condition("relation", "=", "capital")))),
    ('DELETE FROM EDGES WHERE layer = 26 AND feature = 8821',
     A.Delete((A.Condition("layer", "=", 26), A.Condition("feature", "=", 8821)))),
    ('DELETE FROM EDGES WHERE entity = "France" AND relation = "capital" MODE MEMIT',
     A.Delete((A.Condition("entity", "=", "France"), A.Condition("relation", "=", "capital")),
              mode=A.InsertMode.MEMIT)),
    ('UPDATE EDGES SET target = "Berlin" WHERE entity = "Germany"',
     A.Update((A.Assignment("target", "Berlin"),), (A.Condition("entity", "=", "Germany"),))),
    ('UPDATE EDGES SET target = "x", confidence = 0.5 WHERE layer = 26 AND feature = 1',
     A.Update((A.Assignment("target", "x"), A.Assignment("confidence", 0.5)),
              (A.Condition("layer", "=", 26), A.Condition("feature", "=", 1)))),
    ('MERGE "facts.vindex"', A.Merge("facts.vindex")),
    ('MERGE "a.vindex" INTO "b.vindex" ON CONFLICT KEEP_SOURCE',
     A.Merge("a.vindex", target="b.vindex", on_conflict=A.Conflict.KEEP_SOURCE)),
    ('MERGE "a" ON CONFLICT KEEP_TARGET', A.Merge("a", on_conflict=A.Conflict.KEEP_TARGET)),
    ('MERGE "a" ON CONFLICT HIGHEST_CONFIDENCE INTO "b"',
     A.Merge("a", target="b", on_conflict=A.Conflict.HIGHEST_CONFIDENCE)),
    ('REBALANCE', A.Rebalance()),
    ('REBALANCE UNTIL CONVERGED MAX 16 FLOOR 0.3 CEILING 0.9',
     A.Rebalance(until_converged=True, max_iterations=16, floor=0.3, ceiling=0.9)),
    ('REBALANCE CEILING 1 FLOOR 0', A.Rebalance(floor=0.0, ceiling=1.0)),
    # ---- patches ------------------------------------------------------------------
    ('BEGIN PATCH "medical.vlp"', A.BeginPatch("medical.vlp")),
    ('SAVE PATCH', A.SavePatch()),
    ('SAVE PATCH "named.vlp"', A.SavePatch("named.vlp")),
    ('APPLY PATCH "medical.vlp"', A.ApplyPatch("medical.vlp")),
    ('APPLY PATCH "medical.vlp" FORCE', A.ApplyPatch("medical.vlp", force=True)),
    ('REMOVE PATCH "medical.vlp"', A.RemovePatch("medical.vlp")),
    ('SHOW PATCHES', A.ShowPatches()),
    # ---- introspection and session ------------------------------------------------
    ('SHOW RELATIONS', A.ShowRelations()),
    ('SHOW RELATIONS AT LAYER 26 WITH EXAMPLES VERBOSE',
     A.ShowRelations(layer=26, with_examples=True, verbosity=A.Verbosity.VERBOSE)),
    ('SHOW RELATIONS RAW', A.ShowRelations(verbosity=A.Verbosity.RAW)),
    ('SHOW LAYERS', A.ShowLayers()),
    ('SHOW LAYERS 14-27', A.ShowLayers(R(14, 27))),
    ('SHOW LAYERS RANGE 14-27', A.ShowLayers(R(14, 27))),
    ('SHOW LAYERS RANGE', A.ShowLayers()),
    ('SHOW LAYERS 3', A.ShowLayers(R(3, 3))),
    ('SHOW FEATURES 26', A.ShowFeatures(26)),
    ('SHOW FEATURES 26 WHERE target = "Paris" LIMIT 5',
     A.ShowFeatures(26, where=(A.Condition("target", "=", "Paris"),), limit=5)),
    ('SHOW ENTITIES', A.ShowEntities()),
    ('SHOW ENTITIES AT LAYER 20 LIMIT 50', A.ShowEntities(layer=20, limit=50)),
    ('SHOW MODELS', A.ShowModels()),
    ('STATS', A.Stats()),
    ('STATS "gemma3-4b.vindex"', A.Stats("gemma3-4b.vindex")),
    ('SET CHAT AUTO', A.SetChat(A.ChatMode.AUTO)),
    ('SET CHAT ON', A.SetChat(A.ChatMode.ON)),
    ('SET CHAT OFF', A.SetChat(A.ChatMode.OFF)),
    ('HELP', A.Help()),
    ('HELP DESCRIBE', A.Help("DESCRIBE")),
    ('help explain   infer', A.Help("EXPLAIN INFER")),
    ('HELP show layers', A.Help("SHOW LAYERS")),
    # ---- pipes ----------------------------------------------------------------
    ('WALK "x" |> DESCRIBE "y"', A.Pipe(A.Walk("x"), A.Describe("y"))),
    ('INFER "a" |> TRACE "b" |> STATS',
     A.Pipe(A.Pipe(A.Infer("a"), A.Trace("b")), A.Stats())),
]


# issue 14: compaction statements and INSERT MODE MEMIT
CASES += [
    ('COMPACT MINOR', A.CompactMinor()),
    ('COMPACT MAJOR', A.CompactMajor()),
    ('compact major full with lambda = 0.25', A.CompactMajor(full=True, lambda_=0.25)),
    ('COMPACT MAJOR WITH LAMBDA = 2', A.CompactMajor(lambda_=2.0)),
    ('SHOW COMPACT STATUS', A.ShowCompactStatus()),
    ('INSERT INTO EDGES (entity, relation, target) VALUES ("a", "b", "c") MODE MEMIT',
     A.Insert("a", "b", "c", mode=A.InsertMode.MEMIT)),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][:60] for c in CASES])
def test_statement_parses_to_expected_ast(text, expected):
    assert parse(text) == [expected]
    assert parse(text + ";") == [expected]
    assert parse_one(text) == expected


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][:60] for c in CASES])
def test_to_lql_round_trips(text, expected):
    assert parse(expected.to_lql()) == [expected]


def test_every_statement_type_is_covered():
    covered = {type(stmt) for _, stmt in CASES}
    assert covered == set(A.STATEMENT_TYPES)


# ---- lexical rules ------------------------------------------------------------

def test_keywords_are_case_insensitive():
    expected = A.Describe("France", band=A.Band.ALL_LAYERS, verbosity=A.Verbosity.VERBOSE,
                          layer=3)
    for text in ('describe "France" all layers verbose at layer 3',
                 'DeScRiBe "France" ALL layers Verbose At Layer 3'):
        assert parse(text) == [expected]
    assert parse('select ENTITY, Layer from edges where TARGET = "x" order by GATE desc') == [
        A.Select(A.SelectSource.EDGES, fields=("entity", "layer"),
                 where=(A.Condition("target", "=", "x"),), order_by=A.OrderBy("gate", True))]


def test_string_escapes_and_quote_styles():
    assert parse(r'WALK "a \"quoted\" \\ back\nslash\ttab \' apostrophe"') == [
        A.Walk('a "quoted" \\ back\nslash\ttab \' apostrophe')]
    assert parse(r"WALK 'it\'s \"fine\"'") == [A.Walk('it\'s "fine"')]
    assert parse("WALK 'double \" inside single'") == [A.Walk('double " inside single')]
    assert parse('WALK "single \' inside double"') == [A.Walk("single ' inside double")]
    assert parse('WALK ""') == [A.Walk("")]
    assert parse('WALK "-- not a comment /* nor this */"') == [
        A.Walk("-- not a comment /* nor this */")]
    assert parse('WALK "ünïcödé 日本 🙂"') == [A.Walk("ünïcödé 日本 🙂")]


def test_numbers():
    where = parse('SELECT * FROM EDGES WHERE gate > -1.5 AND gate < 1e-3 AND layer = 26 '
                  'AND confidence >= 0.95 AND gate != .5 AND gate <= 2E+2 AND layer != -3')[0].where
    assert [c.value for c in where] == [-1.5, 1e-3, 26, 0.95, 0.5, 200.0, -3]
    assert [type(c.value) for c in where] == [float, float, int, float, float, float, int]


def test_range_versus_negative_number():
    # `14-27` is a range where a layer range is expected ...
    assert parse('WALK "x" LAYERS 14-27')[0].layers == R(14, 27)
    assert parse('WALK "x" LAYERS 14 - 27')[0].layers == R(14, 27)
    assert parse('EXPLAIN INFER "x" LAYERS 0-0')[0].layers == R(0, 0)
    assert parse('SHOW LAYERS 5-6')[0].layers == R(5, 6)
    # ... and a negative number still works where a value is expected
    assert parse('SELECT * FROM EDGES WHERE gate > -27')[0].where == (
        A.Condition("gate", ">", -27),)
    assert parse('SELECT * FROM EDGES WHERE gate IN (14,-27)')[0].where == (
        A.Condition("gate", "IN", (14, -27)),)
    assert parse('UPDATE EDGES SET confidence = -0.5 WHERE layer = 1')[0].assignments == (
        A.Assignment("confidence", -0.5),)


def test_comments_whitespace_and_empty_input():
    assert parse("") == []
    assert parse("   \n\t ") == []
    assert parse("-- only a comment") == []
    assert parse("/* block */ -- and line\n;;") == []
    assert parse('WALK /* inline */ "x" -- trailing\n TOP /* multi\nline */ 3') == [
        A.Walk("x", top=3)]


def test_multi_statement_script_with_comments_and_lines():
    script = '''-- a session
USE "gemma3-4b.vindex";

/* browse
   a bit */
DESCRIBE "France";
walk "The capital of France is" top 5;   -- inline comment
INSERT INTO EDGES (entity, relation, target)
    VALUES ("Atlantis", "capital", "Poseidon")
    AT LAYER 24;
INFER "The capital of Atlantis is" |> STATS
'''
    stmts = parse(script)
    assert stmts == [
        A.Use("gemma3-4b.vindex"),
        A.Describe("France"),
        A.Walk("The capital of France is", top=5),
        A.Insert("Atlantis", "capital", "Poseidon", layer=24),
        A.Pipe(A.Infer("The capital of Atlantis is"), A.Stats()),
    ]
    assert [s.line for s in stmts] == [2, 6, 7, 8, 11]
    assert [s.column for s in stmts] == [1, 1, 1, 1, 1]
    assert stmts[4].right.line == 11 and stmts[4].right.column == 39


def test_last_semicolon_optional_and_extra_semicolons():
    assert parse("STATS; SHOW MODELS") == parse("STATS; SHOW MODELS;") == parse(";STATS;;SHOW MODELS;;")
    assert len(parse("STATS; SHOW MODELS")) == 2


def test_line_is_not_compared():
    a, = parse('\n\nWALK "x"')
    assert a.line == 3 and a == A.Walk("x") and A.Walk("x").line is None
