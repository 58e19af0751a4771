"""Property tests: round trip over generated statements, fuzzing, fast path = Lark's path."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lql import ast as A
from lql.errors import LqlSyntaxError
from lql.parser import KEYWORDS, _parse_reference, expected_at, parse

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies

awkward = st.one_of(
    st.text(max_size=30),
    st.text(alphabet='"\'\\\n\t\r -/*;|>(),=ab€日🙂\x00\u2028', max_size=20),
    st.sampled_from(['', '"', "'", "\\", '\\"', "\\n", "--", "/*", "*/", "WALK", "{entity}"]),
)
counts = st.integers(0, 10**6) | st.sampled_from([0, 1, 2**63])
layers_ = st.integers(0, 200)
floats = st.floats(allow_nan=False, allow_infinity=False)
opt = st.none().__or__


@st.composite
def ranges(draw):
    a = draw(layers_)
    return A.Range(a, a + draw(st.integers(0, 60)))


layer_specs = ranges() | st.just(A.ALL_LAYERS)
steer_sources = (st.builds(A.SteerFile, awkward)
                 | st.builds(A.SaeFeature, layers_, opt(st.sampled_from(["res", "sae_21"])))
                 | st.builds(A.Contrast, awkward, awkward))
steers = st.lists(st.builds(A.Steer, steer_sources, layers_, floats, st.booleans()),
                  max_size=3).map(tuple)
injects = st.lists(st.builds(A.Inject, awkward, awkward, opt(floats)), max_size=2).map(tuple)
fields = st.sampled_from(A.FIELDS)
values = awkward | st.integers(-10**9, 10**9) | floats


@st.composite
def conditions(draw):
    op = draw(st.sampled_from(A.OPERATORS))
    if op == "IN":
        value = tuple(draw(st.lists(values, min_size=1, max_size=4)))
    elif op == "LIKE":
        value = draw(awkward)
    else:
        value = draw(values)
    return A.Condition(draw(fields), op, value)


wheres = st.lists(conditions(), min_size=1, max_size=3).map(tuple)
sae_names = st.sampled_from(["res21", "sae_a", "x1", "gemma_l21"])
help_topics = st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                       min_size=1, max_size=3).map(lambda ws: " ".join(w.upper() for w in ws))

STRATEGIES: dict = {  # one entry per statement type (COMPILE: two)
    A.Extract: st.builds(A.Extract, awkward, awkward, level=opt(st.sampled_from(A.Level)),
        layers=opt(layer_specs), dtype=opt(st.sampled_from(A.DType)), force=st.booleans(), adapter=opt(awkward),
        components=st.lists(st.sampled_from(A.COMPONENTS), max_size=3, unique=True).map(tuple)),
    A.Use: st.builds(A.Use, awkward),
    A.UseModel: st.builds(A.UseModel, awkward, adapter=opt(awkward), auto_extract=st.booleans()),
    A.UseRemote: st.builds(A.UseRemote, awkward),
    A.Compile: st.builds(A.Compile, opt(awkward), st.just(A.CompileTarget.VINDEX), awkward,
        on_conflict=opt(st.sampled_from([A.Conflict.LAST_WINS, A.Conflict.FAIL,
                                         A.Conflict.HIGHEST_CONFIDENCE])),
        force=st.booleans()),
    (A.Compile, 'model'): st.builds(
        A.Compile, opt(awkward), st.just(A.CompileTarget.MODEL), awkward,
        format=opt(st.sampled_from(A.ModelFormat)), force=st.booleans()),
    A.Diff: st.builds(A.Diff, awkward, opt(awkward), layer=opt(layers_), relation=opt(awkward),
        limit=opt(counts), into_patch=opt(awkward)),
    A.Walk: st.builds(A.Walk, awkward, top=opt(counts), layers=opt(layer_specs),
        mode=opt(st.sampled_from(A.WalkMode)), compare=st.booleans()),
    A.Describe: st.builds(
        A.Describe, awkward, band=opt(st.sampled_from(A.Band)), layer=opt(layers_),
        relations_only=st.booleans(), verbosity=opt(st.sampled_from(A.Verbosity)),
        via=opt(st.sampled_from(A.Via))),
    A.Select: st.builds(A.Select, st.sampled_from(A.SelectSource),
        fields=opt(st.lists(fields, min_size=1, max_size=4).map(tuple)),
        nearest=opt(st.builds(A.Nearest, awkward, layers_)), where=st.just(()) | wheres,
        order_by=opt(st.builds(A.OrderBy, fields, st.booleans())), limit=opt(counts)),
    A.ExplainWalk: st.builds(A.ExplainWalk, awkward, layers=opt(layer_specs), top=opt(counts),
        verbose=st.booleans()),
    A.Infer: st.builds(A.Infer, awkward, top=opt(counts), compare=st.booleans(),
        wrap=opt(st.sampled_from(A.PromptWrap)), system=opt(awkward),
        generate=opt(counts), verbose=st.booleans(), steer=steers, inject=injects),
    A.SaveSteer: st.builds(A.SaveSteer, steer_sources, layers_, awkward),
    A.ExplainInfer: st.builds(A.ExplainInfer, awkward, layers=opt(layer_specs), top=opt(counts),
        verbose=st.booleans(), with_attention=st.booleans(),
        wrap=opt(st.sampled_from(A.PromptWrap)), system=opt(awkward),
        band=opt(st.sampled_from(A.Band)), relations_only=st.booleans()),
    (A.ExplainInfer, 'sae'): st.builds(A.ExplainInfer, awkward, top=opt(counts),
        with_sae=st.just(True), sae=opt(sae_names)),
    A.Trace: st.builds(A.Trace, awkward, for_token=opt(awkward), decompose=st.booleans(),
        layers=opt(layer_specs), positions=opt(st.sampled_from(A.Positions)),
        save=opt(awkward), wrap=opt(st.sampled_from(A.PromptWrap)), system=opt(awkward)),
    (A.Trace, 'sae'): st.builds(A.Trace, awkward, positions=opt(st.sampled_from(A.Positions)),
        with_sae=st.just(True), sae=opt(sae_names)),
    A.Insert: st.builds(
        A.Insert, awkward, awkward, awkward, layer=opt(layers_), confidence=opt(floats),
        alpha=opt(floats), mode=opt(st.sampled_from(A.InsertMode)), prompt=opt(awkward)),
    A.Delete: st.builds(A.Delete, wheres),
    A.Update: st.builds(A.Update, st.lists(st.builds(A.Assignment, fields, values), min_size=1,
        max_size=3).map(tuple), wheres),
    A.Merge: st.builds(A.Merge, awkward, target=opt(awkward),
        on_conflict=opt(st.sampled_from([A.Conflict.KEEP_SOURCE, A.Conflict.KEEP_TARGET,
                                               A.Conflict.HIGHEST_CONFIDENCE]))),
    A.Rebalance: st.builds(A.Rebalance, until_converged=st.booleans(), max_iterations=opt(counts),
        floor=opt(floats), ceiling=opt(floats)),
    A.BeginPatch: st.builds(A.BeginPatch, awkward),
    A.SavePatch: st.builds(A.SavePatch, opt(awkward)),
    A.ApplyPatch: st.builds(A.ApplyPatch, awkward, force=st.booleans()),
    A.RemovePatch: st.builds(A.RemovePatch, awkward),
    A.ShowPatches: st.builds(A.ShowPatches),
    A.CompactMinor: st.builds(A.CompactMinor),
    A.CompactMajor: st.builds(A.CompactMajor, full=st.booleans(), lambda_=opt(floats)),
    A.ShowCompactStatus: st.builds(A.ShowCompactStatus),
    A.ShowRelations: st.builds(A.ShowRelations, layer=opt(layers_), with_examples=st.booleans(),
        verbosity=opt(st.sampled_from(A.Verbosity))),
    A.ShowLayers: st.builds(A.ShowLayers, opt(layer_specs)),
    A.ShowFeatures: st.builds(
        A.ShowFeatures, layers_, where=st.just(()) | wheres, limit=opt(counts)),
    A.ShowEntities: st.builds(A.ShowEntities, layer=opt(layers_), limit=opt(counts)),
    A.ShowModels: st.builds(A.ShowModels),
    A.Stats: st.builds(A.Stats, opt(awkward)),
    A.SetChat: st.builds(A.SetChat, st.sampled_from(A.ChatMode)),
    A.Help: st.builds(A.Help, opt(help_topics)),
    A.UseSae: st.builds(A.UseSae, awkward, layer=opt(layers_), name=opt(sae_names)),
    A.DescribeSaeFeature: st.builds(A.DescribeSaeFeature, counts, sae=opt(sae_names),
        file=opt(awkward), top=opt(counts)),
    A.SelectSaeFeatures: st.builds(A.SelectSaeFeatures,
        fields=opt(st.lists(fields, min_size=1, max_size=4).map(tuple)), sae=opt(sae_names),
        where=st.just(()) | wheres, order_by=opt(st.builds(A.OrderBy, fields, st.booleans())),
        limit=opt(counts)),
    A.EvaluateSae: st.builds(A.EvaluateSae, awkward, sae=opt(sae_names)),
    A.Capture: st.builds(A.Capture, layers_, awkward, prompt=awkward,
        positions=opt(st.sampled_from(A.Positions))),
    (A.Capture, 'file'): st.builds(A.Capture, layers_, awkward, file=awkward,
        positions=opt(st.sampled_from(A.Positions))),
}

simple_statements = st.one_of(list(STRATEGIES.values()))

# pipes are left-associative: `a |> b |> c` is Pipe(Pipe(a, b), c)
statements = st.recursive(
    simple_statements,
    lambda inner: st.builds(A.Pipe, inner, simple_statements),
    max_leaves=4,
)


def test_strategies_cover_every_statement_type():
    covered = {k[0] if isinstance(k, tuple) else k for k in STRATEGIES}
    assert covered | {A.Pipe} == set(A.STATEMENT_TYPES)


# ---------------------------------------------------------------- round trip

@SETTINGS
@given(statements)
def test_to_lql_round_trips(stmt):
    text = stmt.to_lql()
    assert parse(text) == [stmt], text
    assert "\n" not in text  # canonical text is one line (newlines are escaped)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(statements, max_size=6), st.lists(st.sampled_from(
    [";\n", "; ", ";\n-- comment ; WALK\n", "; /* block\n ; */\n", ";\n\n\t"]), min_size=6,
    max_size=6), st.booleans())
def test_scripts_round_trip_with_lines(stmts, separators, final_semicolon):
    text = ""
    expected_lines = []
    for stmt, sep in zip(stmts, separators):
        expected_lines.append(text.count("\n") + 1)
        text += stmt.to_lql() + sep
    if stmts and not final_semicolon:
        text = text[: text.rstrip().rfind(";")] if text.rstrip().endswith(";") else text
    parsed = parse(text)
    assert parsed == stmts
    assert [s.line for s in parsed] == expected_lines


@SETTINGS
@given(statements)
def test_case_insensitive_keywords(stmt):
    """Lower-casing everything outside strings gives the same statement."""
    text = stmt.to_lql()
    out, i = [], 0
    while i < len(text):  # lower-case outside "..." (canonical strings are double-quoted)
        ch = text[i]
        if ch == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            out.append(ch.lower())
            i += 1
    assert parse("".join(out)) == [stmt]


# ---------------------------------------------------------------- fuzzing

def _only_syntax_errors(text: str):
    try:
        result = parse(text)
    except LqlSyntaxError as err:
        assert err.line >= 1 and err.column >= 1
        assert isinstance(str(err), str) and isinstance(err.pretty(), str)
        return None
    return result


@SETTINGS
@given(st.text())
def test_random_text_raises_only_syntax_errors(text):
    _only_syntax_errors(text)


_SOUP = sorted(KEYWORDS) + [
    ";", "|>", "(", ")", ",", "*", "=", "!=", "<>", "<", ">", "<=", ">=", "-", "|", "@", "/*",
    "*/", "--", '"x"', "'y'", '"', "'", '"a\\"b"', '"\\q"', "0", "26", "-1.5", "1e-3", "1e999",
    "14-27", "27-14", "3 - 5", ".5", "entity", "layer", "relation", "target", "gate",
    "confidence", "feature", "distance", "foo", "DESCRIBR", "Ä", "\n", "\t",
]
soups = st.lists(st.sampled_from(_SOUP), max_size=25).flatmap(
    lambda toks: st.lists(st.sampled_from([" ", "\n", "", "  ", "\t"]), min_size=len(toks),
                          max_size=len(toks)).map(
        lambda seps: "".join(t + s for t, s in zip(toks, seps))))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(soups)
def test_token_soup_raises_only_syntax_errors_and_round_trips(text):
    result = _only_syntax_errors(text)
    if result is not None:
        assert parse(";\n".join(s.to_lql() for s in result)) == result


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(soups | st.text(alphabet=st.characters(blacklist_characters="\u017f\u212a"), max_size=40))
def test_fast_driver_agrees_with_lark(text):
    """parse() (hand-written lexer over Lark's tables) = Lark's own lexer and parser."""
    try:
        fast = parse(text)
    except LqlSyntaxError:
        fast = None
    try:
        ref = _parse_reference(text)
    except LqlSyntaxError:
        ref = None
    assert fast == ref
    if fast is not None:
        assert [(s.line, s.column) for s in fast] == [(s.line, s.column) for s in ref]


@SETTINGS
@given(soups | st.text(max_size=40))
def test_expected_at_never_raises(text):
    result = expected_at(text)
    assert isinstance(result, set)
    assert all(isinstance(x, str) for x in result)
