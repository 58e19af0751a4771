"""Grammar rule → AST node: the reduce callbacks of the LALR parser.

Each method is named after a grammar rule (or its ``-> alias``) and gets that
rule's children: the tokens it matched (punctuation such as ``(`` and ``;`` is
filtered out by the grammar's ``_`` names) and the values of its sub-rules.
Children are read **by name**, never by position: a token by its terminal name
(:func:`_tok`, :func:`_toks`, :func:`_opt`), a keyword choice by the enum it
names (:func:`_choice`), a sub-rule's value by the slot of its :class:`Clause`
(:func:`_collect`). The only positional read is :func:`_head`, the keyword a
statement or clause rule begins with (its position in error messages and the
AST); ``tests/test_lang_grammar.py`` checks that every such rule does begin with
a keyword.

Errors are :class:`NodeError` (converted to ``LqlSyntaxError`` with the source
line by :mod:`lql.lang.messages`).
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

from .. import ast
from .grammar import FIELDS


class Token(Protocol):
    """What the builder reads of a token (``lark.Token`` or the fast lexer's ``Tok``)."""
    type: str
    value: str
    line: int
    column: int


class NodeError(Exception):
    """A semantic error found while building a node (an int that must be whole, ...)."""

    def __init__(self, message: str, token: Token | None, *, expected: Iterable[str] = (),
                 suggestion: str | None = None, offset: int = 0):
        super().__init__(message)
        self.message = message
        self.token = token
        self.expected = tuple(expected)
        self.suggestion = suggestion
        self.offset = offset  # columns from the token's start (an escape inside a string)


class Clause:
    """A sub-rule's value under its slot name (at most once per statement), with its first
    token (where a duplicate is reported)."""
    __slots__ = ("slot", "value", "token")

    def __init__(self, slot: str, value: Any, token: Token):
        self.slot = slot
        self.value = value
        self.token = token


class At:
    """A position without a token (where an error about a whole statement points)."""
    __slots__ = ("type", "value", "line", "column")

    def __init__(self, line: int, column: int):
        self.type, self.value, self.line, self.column = "", "", line, column


#: The most statements one pipe may join. A pipe is a left-nested ``Pipe`` node, and
#: comparing, printing or running one recurses once per stage: past ~400 stages that
#: would hit Python's recursion limit, so the parser refuses long chains up front.
MAX_PIPE = 256

Children = Sequence[Any]
E = TypeVar("E", bound=enum.Enum)

_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "t": "\t"}
_ESCAPE_RE = re.compile(r"\\(.)", re.S)
_OPERATORS = {"EQ": "=", "NE": "!=", "LT": "<", "GT": ">", "LE": "<=", "GE": ">=",
              "LIKE": "LIKE", "IN": "IN"}


# --------------------------------------------------------------------------- picking children

def _head(c: Children) -> Token:
    """The keyword the rule begins with."""
    tok: Token = c[0]
    return tok


def _toks(c: Children, *types: str) -> list[Token]:
    """The tokens among the children whose terminal is one of ``types``, in order."""
    return [x for x in c if not isinstance(x, Clause) and getattr(x, "type", None) in types]


def _opt(c: Children, *types: str) -> Token | None:
    """The one token of one of ``types``, or None when the optional item is absent."""
    for x in c:
        if not isinstance(x, Clause) and getattr(x, "type", None) in types:
            tok: Token = x
            return tok
    return None


def _tok(c: Children, *types: str) -> Token:
    """The one token of one of ``types`` (the grammar guarantees it is there)."""
    tok = _opt(c, *types)
    assert tok is not None, types
    return tok


def _choice(c: Children, enum_cls: type[E]) -> E:
    """The member of ``enum_cls`` named by the keyword token among the children."""
    members = enum_cls.__members__
    for x in c:
        kind = getattr(x, "type", None)
        if isinstance(kind, str) and kind in members and not isinstance(x, Clause):
            return members[kind]
    raise AssertionError(f"no {enum_cls.__name__} keyword among {c!r}")


def _pos(tok: Token) -> dict[str, int]:
    return {"line": tok.line, "column": tok.column}


def _collect(c: Children) -> dict[str, Any]:
    """The children's clauses → {slot: value}, rejecting a clause given twice
    (the error points at the duplicate)."""
    seen: dict[str, Clause] = {}
    for clause in c:
        if not isinstance(clause, Clause):
            continue
        first = seen.get(clause.slot)
        if first is not None:
            new, old = clause.token.value.upper(), first.token.value.upper()
            if new == old:
                msg = f"duplicate {new} clause (each clause may appear at most once)"
            else:
                msg = f"{new} conflicts with {old} given earlier"
            raise NodeError(msg, clause.token)
        seen[clause.slot] = clause
    return {slot: cl.value for slot, cl in seen.items()}


# --------------------------------------------------------------------------- token values

def string(tok: Token) -> str:
    """Decode a STRING token (either quote style) into its text."""
    body = tok.value[1:-1]
    if "\\" not in body:
        return body

    def unescape(m: re.Match[str]) -> str:
        ch = m.group(1)
        try:
            return _ESCAPES[ch]
        except KeyError:
            raise NodeError(f"unknown escape \\{ch} in string (use \\\\ for a backslash)", tok,
                            offset=1 + m.start()) from None

    return _ESCAPE_RE.sub(unescape, body)


def _int(tok: Token, what: str = "a whole number") -> int:
    text = tok.value
    if not text.isdigit() or not text.isascii():
        raise NodeError(f"{what} must be a whole number ≥ 0, got {text}", tok,
                        expected=("a number",))
    return int(text)


def _float(tok: Token) -> float:
    value = float(tok.value)
    if value != value or value in (float("inf"), float("-inf")):
        raise NodeError(f"number out of range: {tok.value}", tok)
    return value


def _number(tok: Token) -> int | float:
    """A condition value: int when written as an integer, else float."""
    text = tok.value
    body = text[1:] if text.startswith("-") else text
    if body.isdigit():
        return int(text)
    return _float(tok)


def _value(tok: Token) -> str | int | float:
    return string(tok) if tok.type == "STRING" else _number(tok)


def _layer_spec(tok: Token) -> ast.Range | ast.AllLayers:
    """ALL, a single layer ``27`` (= 27-27) or a range ``14-27``."""
    if tok.type == "ALL":
        return ast.ALL_LAYERS
    if tok.type == "NUMBER":
        n = _int(tok, "a layer")
        return ast.Range(n, n)
    lo, hi = (int(p) for p in tok.value.replace(" ", "").replace("\t", "").split("-"))
    if lo > hi:
        raise NodeError(f"layer range {tok.value} runs backwards (write {hi}-{lo})", tok)
    return ast.Range(lo, hi)


def _field(tok: Token) -> str:
    """A NAME token used as a field: lower-cased and checked against FIELDS."""
    name = tok.value.lower()
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.6)
        raise NodeError(f"unknown field {tok.value!r}", tok, expected=FIELDS,
                        suggestion=close[0] if close else None)
    return name


_LAYER_SPEC = ("LAYER_RANGE", "NUMBER", "ALL")


# --------------------------------------------------------------------------- the builder

class Builder:
    """Inline LALR callbacks: rule name → AST node (or :class:`Clause` for a sub-rule)."""

    # ---- shared clauses ----------------------------------------------------
    def with_level(self, c: Children) -> Clause:
        if _opt(c, "WEIGHTS") is not None:      # LARQL's legacy WITH WEIGHTS = WITH INFERENCE
            return Clause("level", ast.Level.INFERENCE, _head(c))
        return Clause("level", _choice(c, ast.Level), _head(c))

    def layers(self, c: Children) -> Clause:
        return Clause("layers", _layer_spec(_tok(c, *_LAYER_SPEC)), _head(c))

    def dtype(self, c: Children) -> Clause:
        return Clause("dtype", _choice(c, ast.DType), _head(c))

    def force(self, c: Children) -> Clause:
        return Clause("force", True, _head(c))

    def top(self, c: Children) -> Clause:
        return Clause("top", _int(_tok(c, "NUMBER"), "TOP"), _head(c))

    def limit(self, c: Children) -> Clause:
        return Clause("limit", _int(_tok(c, "NUMBER"), "LIMIT"), _head(c))

    def walk_mode(self, c: Children) -> Clause:
        return Clause("mode", _choice(c, ast.WalkMode), _head(c))

    def compare(self, c: Children) -> Clause:
        return Clause("compare", True, _head(c))

    def experts(self, c: Children) -> Clause:
        return Clause("experts", True, _head(c))

    def at_layer(self, c: Children) -> Clause:
        return Clause("layer", _int(_tok(c, "NUMBER"), "a layer"), _head(c))

    def verbosity(self, c: Children) -> Clause:
        return Clause("verbosity", _choice(c, ast.Verbosity), _head(c))

    def verbose(self, c: Children) -> Clause:
        return Clause("verbose", True, _head(c))

    def wrap(self, c: Children) -> Clause:
        return Clause("wrap", _choice(c, ast.PromptWrap), _head(c))

    def system(self, c: Children) -> Clause:
        return Clause("system", string(_tok(c, "STRING")), _head(c))

    def condition(self, c: Children) -> ast.Condition:
        name = _field(_tok(c, "NAME"))
        op = _OPERATORS[_tok(c, *_OPERATORS).type]
        values = _toks(c, "STRING", "NUMBER")
        if op == "IN":
            return ast.Condition(name, op, tuple(_value(t) for t in values))
        if op == "LIKE":
            return ast.Condition(name, op, string(values[0]))
        return ast.Condition(name, op, _value(values[0]))

    def where(self, c: Children) -> Clause:
        return Clause("where", tuple(x for x in c if isinstance(x, ast.Condition)), _head(c))

    # ---- lifecycle ---------------------------------------------------------
    def extract(self, c: Children) -> ast.Extract:
        source, output = _toks(c, "STRING")   # EXTRACT [MODEL] source INTO output
        d = _collect(c)
        return ast.Extract(string(source), string(output), level=d.get("level"),
                           layers=d.get("layers"), dtype=d.get("dtype"),
                           force=d.get("force", False), adapter=d.get("adapter"),
                           components=d.get("components", ()), **_pos(_head(c)))

    def components(self, c: Children) -> Clause:
        names = []
        for tok in _toks(c, "NAME"):
            name = tok.value.upper()
            if name not in ast.COMPONENTS:
                close = difflib.get_close_matches(name, ast.COMPONENTS, n=1, cutoff=0.6)
                raise NodeError(f"unknown component {tok.value}", tok, expected=ast.COMPONENTS,
                                suggestion=close[0] if close else None)
            if name not in names:
                names.append(name)
        return Clause("components", tuple(names), _head(c))

    def auto_extract(self, c: Children) -> Clause:
        return Clause("auto_extract", True, _head(c))

    def with_adapter(self, c: Children) -> Clause:
        return Clause("adapter", string(_tok(c, "STRING")), _head(c))

    def use(self, c: Children) -> ast.Use:
        return ast.Use(string(_tok(c, "STRING")), **_pos(_head(c)))

    def use_model(self, c: Children) -> ast.UseModel:
        d = _collect(c)
        return ast.UseModel(string(_tok(c, "STRING")), adapter=d.get("adapter"),
                            auto_extract=d.get("auto_extract", False), **_pos(_head(c)))

    def use_remote(self, c: Children) -> ast.UseRemote:
        return ast.UseRemote(string(_tok(c, "STRING")), **_pos(_head(c)))

    def compile_source(self, c: Children) -> Clause:
        tok = _tok(c, "CURRENT", "STRING")
        return Clause("source", None if tok.type == "CURRENT" else string(tok), tok)

    def compile_conflict(self, c: Children) -> Clause:
        return Clause("on_conflict", _choice(c, ast.Conflict), _head(c))

    def model_format(self, c: Children) -> Clause:
        return Clause("format", _choice(c, ast.ModelFormat), _head(c))

    def compile_vindex(self, c: Children) -> ast.Compile:
        d = _collect(c)
        return ast.Compile(d["source"], ast.CompileTarget.VINDEX, string(_tok(c, "STRING")),
                           on_conflict=d.get("on_conflict"), force=d.get("force", False),
                           line=_head(c).line, column=_head(c).column)

    def compile_model(self, c: Children) -> ast.Compile:
        d = _collect(c)
        return ast.Compile(d["source"], ast.CompileTarget.MODEL, string(_tok(c, "STRING")),
                           format=d.get("format"), force=d.get("force", False),
                           line=_head(c).line, column=_head(c).column)

    def diff_layer(self, c: Children) -> Clause:
        return Clause("layer", _int(_tok(c, "NUMBER"), "a layer"), _head(c))

    def diff_relation(self, c: Children) -> Clause:
        return Clause("relation", string(_tok(c, "STRING")), _head(c))

    def into_patch(self, c: Children) -> Clause:
        return Clause("into_patch", string(_tok(c, "STRING")), _head(c))

    def diff(self, c: Children) -> ast.Diff:
        strings = _toks(c, "STRING")            # DIFF a (b | CURRENT)
        d = _collect(c)
        b = string(strings[1]) if len(strings) > 1 else None
        return ast.Diff(string(strings[0]), b, layer=d.get("layer"), relation=d.get("relation"),
                        limit=d.get("limit"), into_patch=d.get("into_patch"), **_pos(_head(c)))

    # ---- browse ------------------------------------------------------------
    def walk(self, c: Children) -> ast.Walk:
        d = _collect(c)
        return ast.Walk(string(_tok(c, "STRING")), top=d.get("top"), layers=d.get("layers"),
                        mode=d.get("mode"), compare=d.get("compare", False),
                        experts=d.get("experts", False), plot=d.get("plot"), **_pos(_head(c)))

    def band(self, c: Children) -> Clause:
        band = ast.Band.ALL_LAYERS if _opt(c, "ALL") else _choice(c, ast.Band)
        return Clause("band", band, _head(c))

    def relations_only(self, c: Children) -> Clause:
        return Clause("relations_only", True, _head(c))

    def via(self, c: Children) -> Clause:
        return Clause("via", _choice(c, ast.Via), _head(c))

    def describe(self, c: Children) -> ast.Describe:
        d = _collect(c)
        return ast.Describe(string(_tok(c, "STRING")), band=d.get("band"), layer=d.get("layer"),
                            relations_only=d.get("relations_only", False),
                            verbosity=d.get("verbosity"), via=d.get("via"),
                            experts=d.get("experts", False), plot=d.get("plot"), **_pos(_head(c)))

    def select_fields(self, c: Children) -> Clause:
        star = _opt(c, "STAR")
        fields = None if star else tuple(_field(t) for t in _toks(c, "NAME"))
        return Clause("fields", fields, _head(c))

    def select_source(self, c: Children) -> Clause:
        return Clause("source", _choice(c, ast.SelectSource), _head(c))

    def nearest(self, c: Children) -> Clause:
        near = ast.Nearest(string(_tok(c, "STRING")), _int(_tok(c, "NUMBER"), "a layer"))
        return Clause("nearest", near, _head(c))

    def order_by(self, c: Children) -> Clause:
        order = ast.OrderBy(_field(_tok(c, "NAME")), _opt(c, "DESC") is not None)
        return Clause("order_by", order, _head(c))

    def select(self, c: Children) -> ast.Select:
        d = _collect(c)
        return ast.Select(d["source"], fields=d["fields"], nearest=d.get("nearest"),
                          where=d.get("where", ()), order_by=d.get("order_by"),
                          limit=d.get("limit"), **_pos(_head(c)))

    def explain_walk(self, c: Children) -> ast.ExplainWalk:
        d = _collect(c)
        return ast.ExplainWalk(string(_tok(c, "STRING")), layers=d.get("layers"),
                               top=d.get("top"), verbose=d.get("verbose", False),
                               experts=d.get("experts", False), **_pos(_head(c)))

    # ---- inference ---------------------------------------------------------
    def generate(self, c: Children) -> Clause:
        return Clause("generate", _int(_tok(c, "NUMBER"), "GENERATE"), _head(c))

    def infer(self, c: Children) -> ast.Infer:
        d = _collect(c)
        return ast.Infer(string(_tok(c, "STRING")), top=d.get("top"),
                         compare=d.get("compare", False), wrap=d.get("wrap"),
                         system=d.get("system"), generate=d.get("generate"),
                         verbose=d.get("verbose", False),
                         steer=tuple(x for x in c if isinstance(x, ast.Steer)),
                         inject=tuple(x for x in c if isinstance(x, ast.Inject)),
                         plot=d.get("plot"), **_pos(_head(c)))

    # ---- steering and injection (several clauses stack: AST nodes, not Clauses)
    def steer_source(self, c: Children) -> Clause:
        """A vector file, ``SAE [name] FEATURE n`` or ``CONTRAST FROM FILE a VS b``."""
        head = _head(c)
        if head.type == "SAE":
            name = _opt(c, "NAME")
            return Clause("source", ast.SaeFeature(_int(_tok(c, "NUMBER"), "an SAE feature"),
                                                   None if name is None else name.value), head)
        if head.type == "CONTRAST":
            a, b = _toks(c, "STRING")
            return Clause("source", ast.Contrast(string(a), string(b)), head)
        return Clause("source", ast.SteerFile(string(head)), head)

    def steer(self, c: Children) -> ast.Steer:
        source = next(x for x in c if isinstance(x, Clause)).value
        layer, scale = _toks(c, "NUMBER")[-2:]   # an SAE FEATURE number comes inside the source
        return ast.Steer(source, _int(layer, "a layer"), _float(scale),
                         percent=_opt(c, "PERCENT") is not None)

    def inject(self, c: Children) -> ast.Inject:
        path, token = _toks(c, "STRING")
        scale = _opt(c, "NUMBER")
        return ast.Inject(string(path), string(token), None if scale is None else _float(scale))

    def save_steer(self, c: Children) -> ast.SaveSteer:
        source = next(x for x in c if isinstance(x, Clause)).value
        return ast.SaveSteer(source, _int(_tok(c, "NUMBER"), "a layer"),
                             string(_toks(c, "STRING")[-1]), **_pos(_head(c)))

    def with_attention(self, c: Children) -> Clause:
        return Clause("with_attention", True, _head(c))

    def explain_infer(self, c: Children) -> ast.ExplainInfer:
        d = _collect(c)
        return ast.ExplainInfer(string(_tok(c, "STRING")), layers=d.get("layers"),
                                top=d.get("top"), verbose=d.get("verbose", False),
                                with_attention=d.get("with_attention", False),
                                wrap=d.get("wrap"), system=d.get("system"),
                                with_sae="sae" in d, sae=d.get("sae"), plot=d.get("plot"),
                                band=d.get("band"), relations_only=d.get("relations_only", False),
                                for_token=d.get("for_token"), **_pos(_head(c)))

    def for_token(self, c: Children) -> Clause:
        return Clause("for_token", string(_tok(c, "STRING")), _head(c))

    def decompose(self, c: Children) -> Clause:
        return Clause("decompose", True, _head(c))

    def positions(self, c: Children) -> Clause:
        return Clause("positions", _choice(c, ast.Positions), _head(c))

    def plot_to(self, c: Children) -> Clause:
        return Clause("plot", string(_tok(c, "STRING")), _head(c))

    def save_to(self, c: Children) -> Clause:
        return Clause("save", string(_tok(c, "STRING")), _head(c))

    def trace(self, c: Children) -> ast.Trace:
        d = _collect(c)
        return ast.Trace(string(_tok(c, "STRING")), for_token=d.get("for_token"),
                         decompose=d.get("decompose", False), layers=d.get("layers"),
                         positions=d.get("positions"), save=d.get("save"), wrap=d.get("wrap"),
                         system=d.get("system"), with_sae="sae" in d, sae=d.get("sae"),
                         plot=d.get("plot"), **_pos(_head(c)))

    # ---- interpretability (SAEs, capture) -----------------------------------
    def use_sae(self, c: Children) -> ast.UseSae:
        d = _collect(c)
        return ast.UseSae(string(_tok(c, "STRING")), layer=d.get("layer"), name=d.get("name"),
                          **_pos(_head(c)))

    def sae_alias(self, c: Children) -> Clause:
        return Clause("name", _tok(c, "NAME").value.lower(), _head(c))   # names: any case

    def with_sae(self, c: Children) -> Clause:
        # the value is the name (None: the current SAE); "sae" in the clauses means WITH SAE
        name = _opt(c, "NAME")
        return Clause("sae", name.value.lower() if name else None, _head(c))

    def from_file(self, c: Children) -> Clause:
        return Clause("file", string(_tok(c, "STRING")), _head(c))

    def describe_sae(self, c: Children) -> ast.DescribeSaeFeature:
        d = _collect(c)
        name = _opt(c, "NAME")
        return ast.DescribeSaeFeature(_int(_tok(c, "NUMBER"), "an SAE feature"),
                                      sae=name.value.lower() if name else None, file=d.get("file"),
                                      top=d.get("top"), **_pos(_head(c)))

    def select_sae(self, c: Children) -> ast.SelectSaeFeatures:
        d = _collect(c)
        # the SAE's name is the NAME token after SAE (select_fields' names are inside its Clause)
        name = _opt(c, "NAME")
        return ast.SelectSaeFeatures(fields=d["fields"], sae=name.value.lower() if name else None,
                                     where=d.get("where", ()), order_by=d.get("order_by"),
                                     limit=d.get("limit"), **_pos(_head(c)))

    def evaluate_sae(self, c: Children) -> ast.EvaluateSae:
        name = _opt(c, "NAME")
        return ast.EvaluateSae(_collect(c)["file"], sae=name.value.lower() if name else None,
                               **_pos(_head(c)))

    def capture(self, c: Children) -> ast.Capture:
        d = _collect(c)
        strings = _toks(c, "STRING")          # [prompt,] output (FROM FILE's is in its clause)
        prompt = string(strings[0]) if len(strings) == 2 else None
        return ast.Capture(d["layer"], string(strings[-1]), prompt=prompt, file=d.get("file"),
                           positions=d.get("positions"), **_pos(_head(c)))

    # ---- mutation ----------------------------------------------------------
    def insert_columns(self, c: Children) -> Clause:
        toks = _toks(c, "NAME")
        names = [t.value.lower() for t in toks]
        for i, (tok, name) in enumerate(zip(toks, names)):
            if name not in ("entity", "relation", "target") or name in names[:i]:
                raise NodeError("INSERT INTO EDGES takes the columns (entity, relation, target)"
                                f", got {tok.value!r}", tok,
                                expected=("entity", "relation", "target"))
        return Clause("columns", tuple(names), toks[0])

    def confidence(self, c: Children) -> Clause:
        return Clause("confidence", _float(_tok(c, "NUMBER")), _head(c))

    def alpha(self, c: Children) -> Clause:
        return Clause("alpha", _float(_tok(c, "NUMBER")), _head(c))

    def insert_mode(self, c: Children) -> Clause:
        return Clause("mode", _choice(c, ast.InsertMode), _head(c))

    def prompt(self, c: Children) -> Clause:
        return Clause("prompt", string(_tok(c, "STRING")), _head(c))

    def insert(self, c: Children) -> ast.Insert:
        d = _collect(c)
        columns = d.get("columns", ("entity", "relation", "target"))
        values = dict(zip(columns, (string(t) for t in _toks(c, "STRING"))))
        return ast.Insert(values["entity"], values["relation"], values["target"],
                          layer=d.get("layer"), confidence=d.get("confidence"),
                          alpha=d.get("alpha"), mode=d.get("mode"), prompt=d.get("prompt"),
                          **_pos(_head(c)))

    def delete(self, c: Children) -> ast.Delete:
        d = _collect(c)
        return ast.Delete(d["where"], mode=d.get("mode"), **_pos(_head(c)))

    def assignment(self, c: Children) -> ast.Assignment:
        return ast.Assignment(_field(_tok(c, "NAME")), _value(_tok(c, "STRING", "NUMBER")))

    def update(self, c: Children) -> ast.Update:
        assignments = tuple(x for x in c if isinstance(x, ast.Assignment))
        return ast.Update(assignments, _collect(c)["where"], **_pos(_head(c)))

    def merge_into(self, c: Children) -> Clause:
        return Clause("target", string(_tok(c, "STRING")), _head(c))

    def merge_conflict(self, c: Children) -> Clause:
        return Clause("on_conflict", _choice(c, ast.Conflict), _head(c))

    def merge(self, c: Children) -> ast.Merge:
        d = _collect(c)
        return ast.Merge(string(_tok(c, "STRING")), target=d.get("target"),
                         on_conflict=d.get("on_conflict"), **_pos(_head(c)))

    def until_converged(self, c: Children) -> Clause:
        return Clause("until_converged", True, _head(c))

    def max_iterations(self, c: Children) -> Clause:
        return Clause("max_iterations", _int(_tok(c, "NUMBER"), "MAX"), _head(c))

    def floor(self, c: Children) -> Clause:
        return Clause("floor", _float(_tok(c, "NUMBER")), _head(c))

    def ceiling(self, c: Children) -> Clause:
        return Clause("ceiling", _float(_tok(c, "NUMBER")), _head(c))

    def rebalance(self, c: Children) -> ast.Rebalance:
        d = _collect(c)
        return ast.Rebalance(until_converged=d.get("until_converged", False),
                             max_iterations=d.get("max_iterations"), floor=d.get("floor"),
                             ceiling=d.get("ceiling"), **_pos(_head(c)))

    # ---- patches -----------------------------------------------------------
    def begin_patch(self, c: Children) -> ast.BeginPatch:
        return ast.BeginPatch(string(_tok(c, "STRING")), **_pos(_head(c)))

    def save_patch(self, c: Children) -> ast.SavePatch:
        path = _opt(c, "STRING")
        return ast.SavePatch(string(path) if path else None, **_pos(_head(c)))

    def apply_patch(self, c: Children) -> ast.ApplyPatch:
        return ast.ApplyPatch(string(_tok(c, "STRING")), force=_collect(c).get("force", False),
                              **_pos(_head(c)))

    def remove_patch(self, c: Children) -> ast.RemovePatch:
        return ast.RemovePatch(string(_tok(c, "STRING")), **_pos(_head(c)))

    def show_patches(self, c: Children) -> ast.ShowPatches:
        return ast.ShowPatches(**_pos(_head(c)))

    # ---- introspection, session -------------------------------------------
    def with_examples(self, c: Children) -> Clause:
        return Clause("with_examples", True, _head(c))

    def show_relations(self, c: Children) -> ast.ShowRelations:
        d = _collect(c)
        return ast.ShowRelations(layer=d.get("layer"), with_examples=d.get("with_examples", False),
                                 verbosity=d.get("verbosity"), **_pos(_head(c)))

    def show_layers(self, c: Children) -> ast.ShowLayers:
        spec = _opt(c, *_LAYER_SPEC)
        return ast.ShowLayers(_layer_spec(spec) if spec else None, **_pos(_head(c)))

    def show_features(self, c: Children) -> ast.ShowFeatures:
        d = _collect(c)
        return ast.ShowFeatures(_int(_tok(c, "NUMBER"), "a layer"), where=d.get("where", ()),
                                limit=d.get("limit"), **_pos(_head(c)))

    def show_entities(self, c: Children) -> ast.ShowEntities:
        d = _collect(c)
        bare = _opt(c, "NUMBER")                # LARQL's SHOW ENTITIES 26: the layer
        if bare is not None:
            if "layer" in d:
                raise NodeError("SHOW ENTITIES takes one layer: a bare number or AT LAYER, "
                                "not both", bare)
            d["layer"] = _int(bare, "a layer")
        return ast.ShowEntities(layer=d.get("layer"), limit=d.get("limit"), **_pos(_head(c)))

    def show_models(self, c: Children) -> ast.ShowModels:
        return ast.ShowModels(**_pos(_head(c)))

    def stats(self, c: Children) -> ast.Stats:
        path = _opt(c, "STRING")
        return ast.Stats(string(path) if path else None, **_pos(_head(c)))

    def set_chat(self, c: Children) -> ast.SetChat:
        return ast.SetChat(_choice(c, ast.ChatMode), **_pos(_head(c)))

    def help(self, c: Children) -> ast.Help:
        topic = " ".join(t.value.upper() for t in _toks(c, "HELP_WORD")) or None
        return ast.Help(topic, **_pos(_head(c)))

    def pipe(self, c: Children) -> ast.Pipe:
        left, right = c                          # pipeline |> statement (the |> is filtered)
        stages, node = 2, left
        while isinstance(node, ast.Pipe):        # bounded: longer chains never get built
            stages, node = stages + 1, node.left
        if stages > MAX_PIPE:
            raise NodeError(f"pipe too long: more than {MAX_PIPE} statements joined by |> "
                            "(end statements with ; to run them one after another)",
                            At(right.line or 1, right.column or 1))
        return ast.Pipe(left, right, line=left.line, column=left.column)

    def start(self, c: Children) -> list[ast.Statement]:
        return list(c)

    # ---- compaction (issue 14) ---------------------------------------------
    def compact_minor(self, c: Children) -> ast.CompactMinor:
        return ast.CompactMinor(**_pos(_head(c)))

    def compact_full(self, c: Children) -> Clause:
        return Clause("full", True, _head(c))

    def compact_lambda(self, c: Children) -> Clause:
        return Clause("lambda_", _float(_tok(c, "NUMBER")), _head(c))

    def compact_major(self, c: Children) -> ast.CompactMajor:
        d = _collect(c)
        return ast.CompactMajor(full=d.get("full", False), lambda_=d.get("lambda_"),
                                **_pos(_head(c)))

    def show_compact_status(self, c: Children) -> ast.ShowCompactStatus:
        return ast.ShowCompactStatus(**_pos(_head(c)))
