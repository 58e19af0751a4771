"""LQL text → AST.

``parse(text)`` turns a script into a list of :mod:`lql.ast` statements.
The grammar (``grammar/lql.lark``) is analysed by Lark into an LALR(1) table
once per process (the analysis is cached on disk, see :func:`_build`). The AST
is built *during* parsing by the reduce callbacks of :class:`_Builder`, so no
parse tree is ever materialised. For speed, :func:`parse` drives Lark's table
with its own single-regex lexer (:func:`_parse_fast`); :func:`_parse_reference`
runs the same grammar and builder through Lark's own lexer and parser, and the
tests check that both agree.

Every failure is an :class:`~lql.errors.LqlSyntaxError` with a 1-based line
and column, the source line, what was expected (named as a user reads it)
and a did-you-mean for misspelt keywords — never a Lark exception.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import threading
from pathlib import Path

from . import ast
from .errors import LqlSyntaxError

__all__ = ["parse", "parse_one", "expected_at", "KEYWORDS", "STATEMENT_KEYWORDS", "FIELDS",
           "LqlSyntaxError"]

GRAMMAR_PATH = Path(__file__).parent / "grammar" / "lql.lark"

#: Field names (lower case) accepted in SELECT / WHERE / ORDER BY / SET.
FIELDS: tuple[str, ...] = ast.FIELDS

#: Every LQL keyword, upper case (read from the grammar's keyword terminals).
KEYWORDS: frozenset[str] = frozenset(
    re.findall(r"^([A-Z][A-Z0-9_]*)\.2: /[a-z0-9_]+\\b/i$", GRAMMAR_PATH.read_text("utf-8"), re.M))

#: The words a statement can start with (after ``;`` or ``|>``).
STATEMENT_KEYWORDS: tuple[str, ...] = (
    "APPLY", "BEGIN", "COMPILE", "DELETE", "DESCRIBE", "DIFF", "EXPLAIN", "EXTRACT", "HELP",
    "INFER", "INSERT", "MERGE", "REBALANCE", "REMOVE", "SAVE", "SELECT", "SET", "SHOW", "STATS",
    "TRACE", "UPDATE", "USE", "WALK")

# Terminal names → what a user reads in "expected ...".
_FRIENDLY = {
    "STRING": "a string", "NUMBER": "a number", "LAYER_RANGE": "a layer range",
    "NAME": "a field name", "HELP_WORD": "a statement name",
    "_SEMI": ";", "_PIPE": "|>", "_LPAR": "(", "_RPAR": ")", "_COMMA": ",", "STAR": "*",
    "EQ": "=", "NE": "!=", "LT": "<", "GT": ">", "LE": "<=", "GE": ">=",
    "$END": "end of input",
}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "t": "\t"}
_ESCAPE_RE = re.compile(r"\\(.)", re.S)


# --------------------------------------------------------------------------- internal errors

class _NodeError(Exception):
    """Raised by the transformer; converted to LqlSyntaxError (with the source) by parse()."""

    def __init__(self, message: str, token, *, expected=(), suggestion=None, offset: int = 0):
        super().__init__(message)
        self.message = message
        self.token = token
        self.expected = tuple(expected)
        self.suggestion = suggestion
        self.offset = offset  # columns from the token's start (an escape inside a string)


class _Clause:
    """One optional clause: its slot (for at-most-once), its value, its first token."""
    __slots__ = ("slot", "value", "token")

    def __init__(self, slot: str, value, token):
        self.slot = slot
        self.value = value
        self.token = token


# --------------------------------------------------------------------------- token helpers

def _string(tok) -> str:
    """Decode a STRING token (either quote style) into its text."""
    body = tok.value[1:-1]
    if "\\" not in body:
        return body

    def unescape(m: re.Match) -> str:
        ch = m.group(1)
        try:
            return _ESCAPES[ch]
        except KeyError:
            raise _NodeError(f"unknown escape \\{ch} in string (use \\\\ for a backslash)", tok,
                             offset=1 + m.start()) from None

    return _ESCAPE_RE.sub(unescape, body)


def _int(tok, what: str = "a whole number") -> int:
    text = tok.value
    if not text.isdigit() or not text.isascii():
        raise _NodeError(f"{what} must be a whole number ≥ 0, got {text}", tok,
                         expected=("a number",))
    return int(text)


def _float(tok) -> float:
    value = float(tok.value)
    if value != value or value in (float("inf"), float("-inf")):
        raise _NodeError(f"number out of range: {tok.value}", tok)
    return value


def _number(tok) -> int | float:
    """A condition value: int when written as an integer, else float."""
    text = tok.value
    body = text[1:] if text.startswith("-") else text
    if body.isdigit():
        return int(text)
    return _float(tok)


def _value(tok):
    return _string(tok) if tok.type == "STRING" else _number(tok)


def _enum(enum_cls, tok):
    return enum_cls[tok.value.upper()]


def _layer_spec(tok) -> ast.Range | ast.AllLayers:
    """ALL, a single layer ``27`` (= 27-27) or a range ``14-27``."""
    if tok.type == "ALL":
        return ast.ALL_LAYERS
    if tok.type == "NUMBER":
        n = _int(tok, "a layer")
        return ast.Range(n, n)
    lo, hi = (int(p) for p in tok.value.replace(" ", "").replace("\t", "").split("-"))
    if lo > hi:
        raise _NodeError(f"layer range {tok.value} runs backwards (write {hi}-{lo})", tok)
    return ast.Range(lo, hi)


def _field(tok) -> str:
    """A NAME token used as a field: lower-cased and checked against FIELDS."""
    name = tok.value.lower()
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.6)
        raise _NodeError(f"unknown field {tok.value!r}", tok, expected=FIELDS,
                         suggestion=close[0] if close else None)
    return name


def _collect(clauses) -> dict:
    """Clauses → {slot: value}, rejecting a clause given twice (error at the duplicate)."""
    seen: dict[str, _Clause] = {}
    for clause in clauses:
        first = seen.get(clause.slot)
        if first is not None:
            new, old = clause.token.value.upper(), first.token.value.upper()
            if new == old:
                msg = f"duplicate {new} clause (each clause may appear at most once)"
            else:
                msg = f"{new} conflicts with {old} given earlier"
            raise _NodeError(msg, clause.token)
        seen[clause.slot] = clause
    return {slot: c.value for slot, c in seen.items()}


# --------------------------------------------------------------------------- transformer

class _Builder:
    """Inline LALR callbacks: rule name → AST node. Children are lists of tokens/values."""

    # ---- shared clauses ----------------------------------------------------
    def with_level(self, c):
        return _Clause("level", _enum(ast.Level, c[1]), c[0])

    def layers(self, c):
        return _Clause("layers", _layer_spec(c[1]), c[0])

    def dtype(self, c):
        return _Clause("dtype", _enum(ast.DType, c[1]), c[0])

    def force(self, c):
        return _Clause("force", True, c[0])

    def top(self, c):
        return _Clause("top", _int(c[1], "TOP"), c[0])

    def limit(self, c):
        return _Clause("limit", _int(c[1], "LIMIT"), c[0])

    def walk_mode(self, c):
        return _Clause("mode", _enum(ast.WalkMode, c[1]), c[0])

    def compare(self, c):
        return _Clause("compare", True, c[0])

    def at_layer(self, c):
        return _Clause("layer", _int(c[2], "a layer"), c[0])

    def verbosity(self, c):
        return _Clause("verbosity", _enum(ast.Verbosity, c[0]), c[0])

    def verbose(self, c):
        return _Clause("verbose", True, c[0])

    def wrap(self, c):
        return _Clause("wrap", _enum(ast.PromptWrap, c[0]), c[0])

    def system(self, c):
        return _Clause("system", _string(c[1]), c[0])

    def condition(self, c):
        name, op = _field(c[0]), c[1]
        if op.type == "IN":
            return ast.Condition(name, "IN", tuple(_value(t) for t in c[2:]))
        if op.type == "LIKE":
            return ast.Condition(name, "LIKE", _string(c[2]))
        return ast.Condition(name, "!=" if op.type == "NE" else op.value, _value(c[2]))

    def where(self, c):
        return _Clause("where", tuple(x for x in c[1:] if isinstance(x, ast.Condition)), c[0])

    # ---- lifecycle ---------------------------------------------------------
    def extract(self, c):
        kw = c[0]
        i = 2 if c[1].type == "MODEL" else 1   # EXTRACT [MODEL] source INTO output clause*
        d = _collect(c[i + 3:])
        return ast.Extract(_string(c[i]), _string(c[i + 2]), level=d.get("level"),
                           layers=d.get("layers"), dtype=d.get("dtype"),
                           force=d.get("force", False), line=kw.line, column=kw.column)

    def use(self, c):
        return ast.Use(_string(c[1]), line=c[0].line, column=c[0].column)

    def use_model(self, c):
        return ast.UseModel(_string(c[2]), line=c[0].line, column=c[0].column)

    def use_remote(self, c):
        return ast.UseRemote(_string(c[2]), line=c[0].line, column=c[0].column)

    def compile_source(self, c):
        return None if c[0].type == "CURRENT" else _string(c[0])

    def compile_conflict(self, c):
        return _Clause("on_conflict", _enum(ast.Conflict, c[2]), c[0])

    def model_format(self, c):
        return _Clause("format", _enum(ast.ModelFormat, c[1]), c[0])

    def compile_vindex(self, c):
        d = _collect(c[5:])
        return ast.Compile(c[1], ast.CompileTarget.VINDEX, _string(c[4]),
                           on_conflict=d.get("on_conflict"), force=d.get("force", False),
                           line=c[0].line, column=c[0].column)

    def compile_model(self, c):
        d = _collect(c[5:])
        return ast.Compile(c[1], ast.CompileTarget.MODEL, _string(c[4]), format=d.get("format"),
                           force=d.get("force", False), line=c[0].line, column=c[0].column)

    def diff_layer(self, c):
        return _Clause("layer", _int(c[1], "a layer"), c[0])

    def diff_relation(self, c):
        return _Clause("relation", _string(c[1]), c[0])

    def into_patch(self, c):
        return _Clause("into_patch", _string(c[2]), c[0])

    def diff(self, c):
        d = _collect(c[3:])
        b = None if c[2].type == "CURRENT" else _string(c[2])
        return ast.Diff(_string(c[1]), b, layer=d.get("layer"), relation=d.get("relation"),
                        limit=d.get("limit"), into_patch=d.get("into_patch"), line=c[0].line, column=c[0].column)

    # ---- browse ------------------------------------------------------------
    def walk(self, c):
        d = _collect(c[2:])
        return ast.Walk(_string(c[1]), top=d.get("top"), layers=d.get("layers"),
                        mode=d.get("mode"), compare=d.get("compare", False), line=c[0].line, column=c[0].column)

    def band(self, c):
        return _Clause("band", _enum(ast.Band, c[0]) if c[0].type != "ALL" else ast.Band.ALL_LAYERS,
                       c[0])

    def relations_only(self, c):
        return _Clause("relations_only", True, c[0])

    def via(self, c):
        return _Clause("via", _enum(ast.Via, c[1]), c[0])

    def describe(self, c):
        d = _collect(c[2:])
        return ast.Describe(_string(c[1]), band=d.get("band"), layer=d.get("layer"),
                            relations_only=d.get("relations_only", False),
                            verbosity=d.get("verbosity"), via=d.get("via"), line=c[0].line, column=c[0].column)

    def select_fields(self, c):
        if c[0].type == "STAR":
            return None
        return tuple(_field(t) for t in c)

    def select_source(self, c):
        return _enum(ast.SelectSource, c[0])

    def nearest(self, c):
        return _Clause("nearest", ast.Nearest(_string(c[2]), _int(c[5], "a layer")), c[0])

    def order_by(self, c):
        desc = len(c) == 4 and c[3].type == "DESC"
        return _Clause("order_by", ast.OrderBy(_field(c[2]), desc), c[0])

    def select(self, c):
        d = _collect(c[4:])
        return ast.Select(c[3], fields=c[1], nearest=d.get("nearest"), where=d.get("where", ()),
                          order_by=d.get("order_by"), limit=d.get("limit"), line=c[0].line, column=c[0].column)

    def explain_walk(self, c):
        d = _collect(c[3:])
        return ast.ExplainWalk(_string(c[2]), layers=d.get("layers"), top=d.get("top"),
                               verbose=d.get("verbose", False), line=c[0].line, column=c[0].column)

    # ---- inference ---------------------------------------------------------
    def generate(self, c):
        return _Clause("generate", _int(c[1], "GENERATE"), c[0])

    def infer(self, c):
        d = _collect(c[2:])
        return ast.Infer(_string(c[1]), top=d.get("top"), compare=d.get("compare", False),
                         wrap=d.get("wrap"), system=d.get("system"), generate=d.get("generate"),
                         verbose=d.get("verbose", False), line=c[0].line, column=c[0].column)

    def with_attention(self, c):
        return _Clause("with_attention", True, c[0])

    def explain_infer(self, c):
        d = _collect(c[3:])
        return ast.ExplainInfer(_string(c[2]), layers=d.get("layers"), top=d.get("top"),
                                verbose=d.get("verbose", False),
                                with_attention=d.get("with_attention", False),
                                wrap=d.get("wrap"), system=d.get("system"), line=c[0].line, column=c[0].column)

    def for_token(self, c):
        return _Clause("for_token", _string(c[1]), c[0])

    def decompose(self, c):
        return _Clause("decompose", True, c[0])

    def positions(self, c):
        return _Clause("positions", _enum(ast.Positions, c[1]), c[0])

    def save_to(self, c):
        return _Clause("save", _string(c[1]), c[0])

    def trace(self, c):
        d = _collect(c[2:])
        return ast.Trace(_string(c[1]), for_token=d.get("for_token"),
                         decompose=d.get("decompose", False), layers=d.get("layers"),
                         positions=d.get("positions"), save=d.get("save"), wrap=d.get("wrap"),
                         system=d.get("system"), line=c[0].line, column=c[0].column)

    # ---- mutation ----------------------------------------------------------
    def insert_columns(self, c):
        names = [t.value.lower() for t in c]
        for i, (tok, name) in enumerate(zip(c, names)):
            if name not in ("entity", "relation", "target") or name in names[:i]:
                raise _NodeError("INSERT INTO EDGES takes the columns (entity, relation, target)"
                                 f", got {tok.value!r}", tok,
                                 expected=("entity", "relation", "target"))
        return tuple(names)

    def confidence(self, c):
        return _Clause("confidence", _float(c[1]), c[0])

    def alpha(self, c):
        return _Clause("alpha", _float(c[1]), c[0])

    def insert_mode(self, c):
        return _Clause("mode", _enum(ast.InsertMode, c[1]), c[0])

    def prompt(self, c):
        return _Clause("prompt", _string(c[1]), c[0])

    def insert(self, c):
        kw = c[0]
        i = 3
        columns = ("entity", "relation", "target")
        if isinstance(c[i], tuple):
            columns = c[i]
            i += 1
        i += 1  # VALUES
        values = dict(zip(columns, (_string(t) for t in c[i:i + 3])))
        d = _collect(c[i + 3:])
        return ast.Insert(values["entity"], values["relation"], values["target"],
                          layer=d.get("layer"), confidence=d.get("confidence"),
                          alpha=d.get("alpha"), mode=d.get("mode"), prompt=d.get("prompt"),
                          line=kw.line, column=kw.column)

    def delete(self, c):
        return ast.Delete(c[3].value, line=c[0].line, column=c[0].column)

    def assignment(self, c):
        return ast.Assignment(_field(c[0]), _value(c[2]))

    def update(self, c):
        return ast.Update(tuple(c[3:-1]), c[-1].value, line=c[0].line, column=c[0].column)

    def merge_into(self, c):
        return _Clause("target", _string(c[1]), c[0])

    def merge_conflict(self, c):
        return _Clause("on_conflict", _enum(ast.Conflict, c[2]), c[0])

    def merge(self, c):
        d = _collect(c[2:])
        return ast.Merge(_string(c[1]), target=d.get("target"),
                         on_conflict=d.get("on_conflict"), line=c[0].line, column=c[0].column)

    def until_converged(self, c):
        return _Clause("until_converged", True, c[0])

    def max_iterations(self, c):
        return _Clause("max_iterations", _int(c[1], "MAX"), c[0])

    def floor(self, c):
        return _Clause("floor", _float(c[1]), c[0])

    def ceiling(self, c):
        return _Clause("ceiling", _float(c[1]), c[0])

    def rebalance(self, c):
        d = _collect(c[1:])
        return ast.Rebalance(until_converged=d.get("until_converged", False),
                             max_iterations=d.get("max_iterations"), floor=d.get("floor"),
                             ceiling=d.get("ceiling"), line=c[0].line, column=c[0].column)

    # ---- patches -----------------------------------------------------------
    def begin_patch(self, c):
        return ast.BeginPatch(_string(c[2]), line=c[0].line, column=c[0].column)

    def save_patch(self, c):
        return ast.SavePatch(_string(c[2]) if len(c) > 2 else None, line=c[0].line, column=c[0].column)

    def apply_patch(self, c):
        return ast.ApplyPatch(_string(c[2]), force=len(c) > 3, line=c[0].line, column=c[0].column)

    def remove_patch(self, c):
        return ast.RemovePatch(_string(c[2]), line=c[0].line, column=c[0].column)

    def show_patches(self, c):
        return ast.ShowPatches(line=c[0].line, column=c[0].column)

    # ---- introspection, session -------------------------------------------
    def with_examples(self, c):
        return _Clause("with_examples", True, c[0])

    def show_relations(self, c):
        d = _collect(c[2:])
        return ast.ShowRelations(layer=d.get("layer"), with_examples=d.get("with_examples", False),
                                 verbosity=d.get("verbosity"), line=c[0].line, column=c[0].column)

    def show_layers(self, c):
        last = c[-1]
        spec = _layer_spec(last) if last.type in ("LAYER_RANGE", "NUMBER", "ALL") else None
        return ast.ShowLayers(spec, line=c[0].line, column=c[0].column)

    def show_features(self, c):
        d = _collect(c[3:])
        return ast.ShowFeatures(_int(c[2], "a layer"), where=d.get("where", ()),
                                limit=d.get("limit"), line=c[0].line, column=c[0].column)

    def show_entities(self, c):
        d = _collect(c[2:])
        return ast.ShowEntities(layer=d.get("layer"), limit=d.get("limit"), line=c[0].line, column=c[0].column)

    def show_models(self, c):
        return ast.ShowModels(line=c[0].line, column=c[0].column)

    def stats(self, c):
        return ast.Stats(_string(c[1]) if len(c) > 1 else None, line=c[0].line, column=c[0].column)

    def set_chat(self, c):
        return ast.SetChat(_enum(ast.ChatMode, c[2]), line=c[0].line, column=c[0].column)

    def help(self, c):
        topic = " ".join(t.value.upper() for t in c[1:]) or None
        return ast.Help(topic, line=c[0].line, column=c[0].column)

    def pipe(self, c):
        return ast.Pipe(c[0], c[1], line=c[0].line, column=c[0].column)

    def start(self, c):
        return c


# --------------------------------------------------------------------------- the Lark parser

_lock = threading.Lock()
_parser = None  # Lark with the inline AST builder (its tables also drive _parse_fast)


def _cache_file(name: str) -> str | None:
    """``~/.cache/lql/<name>`` (or under $XDG_CACHE_HOME), or None when not writable."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lql"
        base.mkdir(parents=True, exist_ok=True)
        return str(base / name) if os.access(base, os.W_OK) else None
    except Exception:
        return None


def _grammar_digest() -> str:
    return hashlib.sha256(GRAMMAR_PATH.read_bytes()).hexdigest()[:16]


def _build(transformer):
    from lark import Lark

    kwargs = dict(parser="lalr", lexer="contextual", start="start", maybe_placeholders=False,
                  propagate_positions=False, transformer=transformer)
    import lark

    cache = os.environ.get("LQL_NO_GRAMMAR_CACHE") is None and _cache_file(
        f"grammar-lark-{_grammar_digest()}-lark{lark.__version__}.cache")
    text = GRAMMAR_PATH.read_text("utf-8")
    if cache:
        try:
            return Lark(text, cache=cache, **kwargs)
        except Exception:
            try:  # a corrupt or foreign cache file: drop it and build afresh
                os.unlink(cache)
            except OSError:
                pass
    return Lark(text, **kwargs)


def _get_parser():
    global _parser
    if _parser is None:
        with _lock:
            if _parser is None:
                _parser = _build(_Builder())
    return _parser


# --------------------------------------------------------------------------- errors

def _source_line(text: str, line: int) -> str:
    lines = text.split("\n")
    return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""


def _friendly(terminals) -> tuple[str, ...]:
    """Terminal names → sorted user-facing names: keywords first (A-Z), then the rest."""
    names = {_FRIENDLY.get(t, t) for t in terminals}
    if "a layer range" in names:
        names.discard("a number")  # a single layer is a range of one
    keywords = sorted(n for n in names if n in KEYWORDS)
    others = sorted(n for n in names if n not in KEYWORDS)
    order = ["a string", "a number", "a layer range", "a field name", "a statement name", "*",
             "(", ")", ",", "=", "!=", "<", ">", "<=", ">=", "|>", ";", "end of input"]
    others.sort(key=lambda n: order.index(n) if n in order else -1)
    return tuple(keywords + others)


def _suggest(word: str, expected_keywords) -> str | None:
    """Did-you-mean: the closest keyword valid here or any statement keyword."""
    up = word.upper()
    candidates = set(expected_keywords) | set(STATEMENT_KEYWORDS)
    candidates.discard(up)
    close = difflib.get_close_matches(up, sorted(candidates), n=1, cutoff=0.75)
    return close[0] if close else None


def _describe_token(tok) -> str:
    if tok.type == "$END":
        return "end of input"
    if tok.type == "STRING":
        return f"string {tok.value}"
    if tok.type in ("NUMBER", "LAYER_RANGE"):
        return f"number {tok.value}"
    return repr(tok.value) if tok.type not in KEYWORDS else f"keyword {tok.value.upper()}"


def _syntax_error(text: str, message: str, line: int, column: int, expected=(),
                  suggestion=None) -> LqlSyntaxError:
    return LqlSyntaxError(message, line=line, column=column,
                          source_line=_source_line(text, line), expected=tuple(expected),
                          suggestion=suggestion)


def _end_position(text: str) -> tuple[int, int]:
    """Line/column just past the last non-blank character (where input 'ends')."""
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    column = len(stripped) - (stripped.rfind("\n") + 1) + 1
    return line, column


def _convert(text: str, err: Exception) -> LqlSyntaxError:
    """Any Lark / transformer exception → LqlSyntaxError."""
    from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken, VisitError

    if isinstance(err, VisitError):
        err = err.orig_exc
    if isinstance(err, _ParseFailure):
        return _unexpected_token(text, err.token, err.expected)
    if isinstance(err, _LexFailure):
        return _bad_character(text, err.pos, err.line, err.column, err.expected)
    if isinstance(err, _NodeError):
        tok = err.token
        if tok is None:
            line, column = _end_position(text)
        else:
            line, column = tok.line, tok.column + err.offset
        return _syntax_error(text, err.message, line, column, err.expected, err.suggestion)
    if isinstance(err, UnexpectedToken):
        return _unexpected_token(text, err.token, set(err.expected or ()))
    if isinstance(err, UnexpectedCharacters):
        return _bad_character(text, err.pos_in_stream, err.line, err.column, err.allowed or ())
    if isinstance(err, UnexpectedEOF):
        line, column = _end_position(text)
        return _syntax_error(text, "unexpected end of input", line, column,
                             _friendly(err.expected or ()))
    return _syntax_error(text, f"could not parse: {err}", 1, 1)


def _unexpected_token(text: str, tok, expected_terms) -> LqlSyntaxError:
    expected = _friendly(t for t in expected_terms if t != "$END")
    if tok.type == "$END":  # the caret goes just after the last token
        line = getattr(tok, "end_line", None) or tok.line
        column = getattr(tok, "end_column", None) or tok.column
        return _syntax_error(text, "unexpected end of input", line, column, expected)
    suggestion = None
    message = f"unexpected {_describe_token(tok)}"
    if _WORD.fullmatch(tok.value or ""):
        suggestion = _suggest(tok.value, [e for e in expected if e in KEYWORDS])
        if suggestion is None and "a string" in expected:
            message += f' (strings need quotes: "{tok.value}")'
    return _syntax_error(text, message, tok.line, tok.column, expected, suggestion)


def _bad_character(text: str, pos: int, line: int, column: int, allowed) -> LqlSyntaxError:
    ch = text[pos] if 0 <= pos < len(text) else ""
    expected = _friendly(t for t in allowed if t != "$END")
    if ch in "\"'":
        return _syntax_error(text, f"unterminated string (no closing {ch} on this line)",
                             line, column)
    if text.startswith("/*", pos):
        return _syntax_error(text, "unterminated /* comment", line, column)
    m = _WORD.match(text, pos)
    if m:
        word = m.group(0)
        return _syntax_error(text, f"unexpected {word!r}", line, column, expected,
                             _suggest(word, [e for e in expected if e in KEYWORDS]))
    shown = repr(ch) if ch else "character"
    return _syntax_error(text, f"unexpected character {shown}", line, column, expected)


# --------------------------------------------------------------------------- fast driver
#
# Lark's own lexer + LALR loop run at ~110k tokens/s. parse() instead drives
# Lark's *parse table and callbacks* with a single master regex: it is the
# contextual lexer of the grammar written out by hand (a word is a keyword only
# where the parser state accepts that keyword, else NAME / HELP_WORD; `14-27`
# is a LAYER_RANGE only where one is accepted). tests/test_parser_fuzz.py checks
# that it agrees with Lark's lexer on random input (_parse_reference).

_TOKEN_RE = re.compile(r"""
    [ \t\f\r\n]*                  # leading blanks are skipped with the token
    (?:
        (?P<STRING>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<WORD>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<RANGE>[0-9]+[ \t]*-[ \t]*[0-9]+)
      | (?P<NUMBER>-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
      | (?P<PUNCT>\|>|!=|<>|<=|>=|[;(),*=<>])
      | (?P<COMMENT>--[^\n]*)
      | (?P<BLOCK>/\*(?:[^*]|\*(?!/))*\*/)
      | (?P<EOF>$)
    )
""", re.X)
_NUMBER_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_UNICODE_WORD = re.compile(r"\w")
_KEYWORD_FIELDS = frozenset(f.upper() for f in FIELDS) & KEYWORDS
_PUNCT = {"|>": "_PIPE", ";": "_SEMI", "(": "_LPAR", ")": "_RPAR", ",": "_COMMA", "*": "STAR",
          "=": "EQ", "!=": "NE", "<>": "NE", "<=": "LE", ">=": "GE", "<": "LT", ">": "GT"}


class _Tok:
    """A token, duck-compatible with lark.Token for the builder and error code."""
    __slots__ = ("type", "value", "line", "column")

    def __init__(self, type_: str, value: str, line: int, column: int):
        self.type = type_
        self.value = value
        self.line = line
        self.column = column

    def __repr__(self) -> str:
        return f"_Tok({self.type}, {self.value!r}, {self.line}:{self.column})"


class _LexFailure(Exception):
    def __init__(self, pos: int, line: int, column: int, expected):
        self.pos, self.line, self.column, self.expected = pos, line, column, expected


class _ParseFailure(Exception):
    def __init__(self, token: _Tok, expected):
        self.token, self.expected = token, expected


_tables = None
_TABLE_FORMAT = 1  # bump when _table_from_lark's output changes shape


def _table_from_lark() -> dict:
    """Lark's LALR table as plain data (marshal-able), with what each rule's callback needs.

    ``states``: state → {terminal or rule name: (1, next state) | (0, rule index)};
    ``rules``: (size, callback name, kept child indices, spliced child indices, expand1).
    """
    from lark.parsers.lalr_analysis import Shift

    table = _get_parser().parser.parser.parser.parse_table
    rules: list = []
    index: dict = {}
    states = {}
    for state, row in table.states.items():
        new_row = {}
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


def _load_table() -> dict:
    """The driver's table: from the on-disk cache when fresh, else from Lark (then cached).

    The cache is plain data read with :mod:`marshal`, so parsing never imports Lark
    once it exists (cold start ≈ imports of lql.ast + this module).
    """
    import marshal
    import sys

    path = None
    if os.environ.get("LQL_NO_GRAMMAR_CACHE") is None:
        py = f"{sys.version_info[0]}{sys.version_info[1]}"
        path = _cache_file(f"grammar-table{_TABLE_FORMAT}-{_grammar_digest()}-py{py}.marshal")
    if path:
        try:
            with open(path, "rb") as f:
                table = marshal.load(f)
            _check_table(table)
            return table
        except Exception:  # missing, truncated or foreign: rebuild below
            pass
    table = _table_from_lark()
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


def _check_table(table) -> None:
    """Raise unless ``table`` has the shape _table_from_lark produces and fits this grammar."""
    states, rules = table["states"], table["rules"]
    assert isinstance(states, dict) and isinstance(rules, list)
    assert table["start"] in states and table["end"] in states
    for row in states.values():
        for shift, arg in row.values():
            assert (arg in states) if shift else (0 <= arg < len(rules))
    for _size, _origin, name, _keep, _splice, expand1 in rules:
        assert name.startswith("_") or hasattr(_Builder, name) or expand1, name


def _get_tables():
    """The driver's table: state → {terminal or rule name: (shift?, target)}.

    For a shift the target is the next state; for a reduce it is
    ``(size, rule name, callback)``.
    """
    global _tables
    if _tables is None:
        table = _load_table()
        builder = _Builder()
        reduces = [(size, origin, _make_callback(name, keep, splice, expand1, size, builder))
                   for size, origin, name, keep, splice, expand1 in table["rules"]]
        states = {state: {term: (True, arg) if shift else (False, reduces[arg])
                          for term, (shift, arg) in row.items()}
                  for state, row in table["states"].items()}
        _tables = (states, table["start"], table["end"])
    return _tables


class _Inline(list):
    """The children of an inlined rule (``_name`` / lark's ``__x_star_n``), spliced by the parent."""
    __slots__ = ()


def _make_callback(name: str, keep, splice, expand1: bool, size: int, builder):
    """A reduce callback equivalent to Lark's (token filtering, ``_rule`` inlining, ``?rule``)."""
    splice = frozenset(splice)
    target = _Inline if name.startswith("_") else getattr(builder, name, None)
    if target is None:  # only `?rule`s that always have one child may lack a builder method
        assert expand1, f"lql.parser._Builder has no method for grammar rule {name!r}"
        target = _Inline
    everything = len(keep) == size and not splice

    # specialised for the common shapes: this runs on every reduction
    if everything and not expand1:
        return target
    if everything and size == 1:  # `?rule: x`: pass the child through
        return _first
    if not expand1 and len(keep) == 2 and splice == {keep[0]} and keep[1] not in splice:
        first, second = keep  # `__x_star: __x_star item`: extend the list

        def append(children):
            out = children[first]
            out.append(children[second])
            return target(out) if target is not _Inline else out
        return append

    def callback(children):
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
        return target(out)

    return callback


def _first(children):
    return children[0]


def _terminals(row) -> set[str]:
    return {t for t in row if t.isupper() and t != "$END"}


def _viable(states, state_stack, terminals) -> set[str]:
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


def _parse_fast(text: str, complete: bool = True):
    """Parse ``text``; with ``complete=False`` return the terminals viable at its end instead."""
    states, start_state, end_state = _get_tables()
    keywords = KEYWORDS
    punct = _PUNCT
    match = _TOKEN_RE.match
    state_stack = [start_state]
    value_stack: list = []
    pos, n, line, line_start = 0, len(text), 1, 0
    tok = None
    while True:
        m = match(text, pos)
        if m is None:  # no token fits: find where the blanks end, report there
            pos = re.compile(r"[ \t\f\r\n]*").match(text, pos).end()
            line = text.count("\n", 0, pos) + 1
            line_start = text.rfind("\n", 0, pos) + 1
            raise _LexFailure(pos, line, pos - line_start + 1,
                              _viable(states, state_stack, _terminals(states[state_stack[-1]])))
        kind = m.lastgroup
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
                                       and _UNICODE_WORD.match(text, end)):
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
                value = _NUMBER_RE.match(text, start).group()
                end = start + len(value)
                ttype = "NUMBER"
        elif kind == "EOF":
            if not complete:
                return _viable(states, state_stack, _terminals(row))
            ttype = "$END"  # positioned just after the last token, for "unexpected end"
            tok = _Tok(ttype, "", tok.line, tok.column + len(tok.value)) if tok else \
                _Tok(ttype, "", 1, 1)
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
            tok = _Tok(ttype, value, line, start - line_start + 1)
            pos = end
        while True:  # feed tok (as lark's ParserState.feed_token)
            action = row.get(ttype)
            if action is None:
                raise _ParseFailure(tok, _viable(states, state_stack, _terminals(row)))
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


# --------------------------------------------------------------------------- public API

def parse(text: str) -> list[ast.Statement]:
    """Parse an LQL script into statements. Blank / comment-only text gives ``[]``.

    Raises :class:`LqlSyntaxError` (and nothing else) for any malformed input.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a str, not {type(text).__name__}")
    try:
        return _parse_fast(text)
    except LqlSyntaxError:
        raise
    except RecursionError:
        raise _syntax_error(text, "statement nested too deeply", 1, 1) from None
    except Exception as err:  # every Lark / transformer failure becomes a syntax error
        raise _convert(text, err) from None


def _parse_reference(text: str) -> list[ast.Statement]:
    """parse() through Lark's own contextual lexer and LALR loop (the oracle for tests)."""
    try:
        return _get_parser().parse(text)
    except LqlSyntaxError:
        raise
    except RecursionError:
        raise _syntax_error(text, "statement nested too deeply", 1, 1) from None
    except Exception as err:
        raise _convert(text, err) from None


def parse_one(text: str) -> ast.Statement:
    """Parse exactly one statement (a pipe counts as one)."""
    statements = parse(text)
    if len(statements) == 1:
        return statements[0]
    if not statements:
        line, column = _end_position(text)
        raise _syntax_error(text, "expected a statement, found none", line, column,
                            STATEMENT_KEYWORDS)
    second = statements[1]
    line, column = second.line or 1, second.column or 1
    raise _syntax_error(text, f"expected exactly one statement, found {len(statements)}",
                        line, column)


def expected_at(text: str) -> set[str]:
    """What may come next at the end of ``text`` (for context-aware completion).

    Names are as in error messages: keywords upper case (``"TOP"``), and
    ``"a string"``, ``"a number"``, ``"a layer range"``, ``"a field name"``,
    ``"a statement name"`` (after HELP), ``";"``, ``"|>"``, ``"("`` ... .
    If ``text`` ends inside a word (no trailing space), that word is the one
    being completed and is left out: ``expected_at("DESC")`` gives the
    statement keywords, ``expected_at("DESCRIBE ")`` gives ``{"a string"}``.
    Text that is already invalid before the end gives an empty set.
    """
    if not isinstance(text, str):
        return set()
    m = re.search(r"[A-Za-z_][A-Za-z0-9_]*\Z", text)
    if m:  # the word being typed is not part of the context
        text = text[:m.start()]
    try:
        viable = _parse_fast(text, complete=False)
    except Exception:  # already invalid before the end: nothing sensible to offer
        return set()
    return set(_friendly(viable))
