"""The LQL abstract syntax tree: one frozen dataclass per statement.

Conventions (other modules rely on them):

* Optional clauses default to ``None`` (flags to ``False``, condition lists to
  ``()``); the *executor* applies the language defaults (TOP 10, BROWSE, ...),
  so ``parse(stmt.to_lql()) == [stmt]`` holds exactly.
* ``None`` in a path position that also accepts ``CURRENT`` means CURRENT
  (``Compile.source``, ``Diff.b``).
* Strings are already unescaped; ``to_lql()`` re-quotes them canonically.
* ``line`` / ``column`` (keyword-only, not compared, not in ``repr``) are the
  1-based position where the statement starts in the parsed text, or ``None``
  when built by hand.
* ``stmt.keyword`` is the statement's result-contract name ("WALK",
  "EXPLAIN INFER", "SHOW LAYERS", "BEGIN PATCH", ...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    # helpers
    "Range", "AllLayers", "ALL_LAYERS", "Condition", "OrderBy", "Assignment", "Nearest",
    "SteerFile", "SaeFeature", "Contrast", "SteerSource", "Steer", "Inject",
    "FIELDS", "OPERATORS", "quote", "format_value",
    # enums
    "Level", "DType", "WalkMode", "Band", "Verbosity", "ChatMode", "PromptWrap", "InsertMode",
    "Via", "Positions", "CompileTarget", "ModelFormat", "Conflict", "SelectSource",
    # statements
    "Statement", "Extract", "Use", "UseModel", "UseRemote", "Compile", "Diff", "Walk",
    "Describe", "Select", "ExplainWalk", "Infer", "ExplainInfer", "Trace", "SaveSteer", "Insert",
    "Delete",
    "Update", "Merge", "Rebalance", "BeginPatch", "SavePatch", "ApplyPatch", "RemovePatch",
    "ShowPatches", "ShowRelations", "ShowLayers", "ShowFeatures", "ShowEntities", "ShowModels",
    "Stats", "SetChat", "Pipe", "Help", "STATEMENT_TYPES",
    # interpretability (SAEs, capture)
    "UseSae", "DescribeSaeFeature", "SelectSaeFeatures", "EvaluateSae", "Capture",
]

#: Field names usable in SELECT lists, WHERE / ORDER BY and UPDATE ... SET.
FIELDS: tuple[str, ...] = ("entity", "relation", "target", "layer", "feature", "expert",
                           "confidence", "gate", "distance",
                           "label", "token", "norm")        # the last three: SAE FEATURES
#: Comparison operators of a :class:`Condition` (``<>`` parses as ``!=``).
OPERATORS: tuple[str, ...] = ("=", "!=", ">", "<", ">=", "<=", "LIKE", "IN")


# --------------------------------------------------------------------------- rendering helpers

def quote(text: str) -> str:
    """``text`` as a canonical LQL string literal: double quotes, ``\\" \\\\ \\n \\t`` escaped."""
    return '"' + (text.replace("\\", "\\\\").replace('"', '\\"')
                  .replace("\n", "\\n").replace("\t", "\\t")) + '"'


def format_value(value) -> str:
    """A condition / assignment value as LQL text (string, int, float or IN tuple)."""
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if isinstance(value, bool):  # not an LQL value; refuse rather than print True
        raise TypeError("LQL has no boolean literals")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _num(value: float) -> str:
    return repr(float(value))


# --------------------------------------------------------------------------- enums

class _KeywordEnum(enum.Enum):
    """An enum whose value is its LQL spelling."""

    def to_lql(self) -> str:
        return self.value

    def __str__(self) -> str:
        return self.value


class Level(_KeywordEnum):
    BROWSE = "BROWSE"
    INFERENCE = "INFERENCE"
    ALL = "ALL"


# LARQL's EXTRACT COMPONENTS names, and the smallest level that stores each (lql extracts
# by level; COMPONENTS chooses the level when WITH is not given: docs/LARQL.md)
COMPONENT_LEVELS: dict[str, Level] = {
    "FFN_GATE": Level.BROWSE, "FFN_DOWN": Level.BROWSE, "EMBEDDINGS": Level.BROWSE,
    "FFN_UP": Level.INFERENCE, "ATTN_OV": Level.INFERENCE, "ATTN_QK": Level.INFERENCE,
}
COMPONENTS: tuple[str, ...] = tuple(COMPONENT_LEVELS)


class DType(_KeywordEnum):
    F16 = "F16"
    F32 = "F32"
    BF16 = "BF16"


class WalkMode(_KeywordEnum):
    HYBRID = "HYBRID"
    PURE = "PURE"
    DENSE = "DENSE"


class Band(_KeywordEnum):
    ALL_LAYERS = "ALL LAYERS"
    SYNTAX = "SYNTAX"
    KNOWLEDGE = "KNOWLEDGE"
    OUTPUT = "OUTPUT"


class Verbosity(_KeywordEnum):
    BRIEF = "BRIEF"
    VERBOSE = "VERBOSE"
    RAW = "RAW"


class ChatMode(_KeywordEnum):
    """Session default set by ``SET CHAT``."""
    AUTO = "AUTO"
    ON = "ON"
    OFF = "OFF"


class PromptWrap(_KeywordEnum):
    """Per-statement chat wrapping (``CHAT`` forces, ``RAW`` forbids)."""
    CHAT = "CHAT"
    RAW = "RAW"


class InsertMode(_KeywordEnum):
    KNN = "KNN"
    COMPOSE = "COMPOSE"
    MEMIT = "MEMIT"


class Via(_KeywordEnum):
    EMBEDDING = "EMBEDDING"
    RESIDUAL = "RESIDUAL"
    PROMPTS = "PROMPTS"                 # run relation templates (lql.browse.prompts)


class Positions(_KeywordEnum):
    LAST = "LAST"
    ALL = "ALL"


class CompileTarget(_KeywordEnum):
    VINDEX = "VINDEX"
    MODEL = "MODEL"


class ModelFormat(_KeywordEnum):
    SAFETENSORS = "SAFETENSORS"
    GGUF = "GGUF"


class Conflict(_KeywordEnum):
    LAST_WINS = "LAST_WINS"
    HIGHEST_CONFIDENCE = "HIGHEST_CONFIDENCE"
    FAIL = "FAIL"
    KEEP_SOURCE = "KEEP_SOURCE"
    KEEP_TARGET = "KEEP_TARGET"


class SelectSource(_KeywordEnum):
    EDGES = "EDGES"
    FEATURES = "FEATURES"
    ENTITIES = "ENTITIES"
    EXPERTS = "EXPERTS"


# --------------------------------------------------------------------------- helper nodes

@dataclass(frozen=True)
class Range:
    """Layers ``start``..``end``, both inclusive (``27`` is ``Range(27, 27)``)."""
    start: int
    end: int

    def __contains__(self, layer: int) -> bool:
        return self.start <= layer <= self.end

    def __iter__(self):
        return iter(range(self.start, self.end + 1))

    def __len__(self) -> int:
        return max(0, self.end - self.start + 1)

    def to_lql(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"


@dataclass(frozen=True)
class AllLayers:
    """``LAYERS ALL``: every layer of the model."""

    def to_lql(self) -> str:
        return "ALL"


ALL_LAYERS = AllLayers()
LayerSpec = Range | AllLayers
Value = str | int | float


@dataclass(frozen=True)
class Condition:
    """``field op value``; ``op`` in :data:`OPERATORS`; for ``IN`` the value is a tuple."""
    field: str
    op: str
    value: Value | tuple[Value, ...]

    def to_lql(self) -> str:
        return f"{self.field} {self.op} {format_value(self.value)}"


@dataclass(frozen=True)
class OrderBy:
    field: str
    descending: bool = False

    def to_lql(self) -> str:
        return f"ORDER BY {self.field}" + (" DESC" if self.descending else "")


@dataclass(frozen=True)
class Assignment:
    field: str
    value: Value

    def to_lql(self) -> str:
        return f"{self.field} = {format_value(self.value)}"


@dataclass(frozen=True)
class Nearest:
    """``NEAREST TO <entity> AT LAYER <layer>``."""
    entity: str
    layer: int

    def to_lql(self) -> str:
        return f"NEAREST TO {quote(self.entity)} AT LAYER {self.layer}"


@dataclass(frozen=True)
class SteerFile:
    """A steering vector from a file (``.npy``, single-array ``.npz``, single-tensor ``.safetensors``)."""
    path: str

    def to_lql(self) -> str:
        return quote(self.path)


@dataclass(frozen=True)
class SaeFeature:
    """``SAE [name] FEATURE n``: the decoder direction of feature ``n`` of a loaded SAE."""
    feature: int
    sae: str | None = None

    def to_lql(self) -> str:
        return _join("SAE", self.sae, f"FEATURE {self.feature}")


@dataclass(frozen=True)
class Contrast:
    """``CONTRAST FROM FILE "a.txt" VS "b.txt"``: mean residual of A minus B, unit-normalised."""
    a: str
    b: str

    def to_lql(self) -> str:
        return f"CONTRAST FROM FILE {quote(self.a)} VS {quote(self.b)}"


SteerSource = SteerFile | SaeFeature | Contrast


@dataclass(frozen=True)
class Steer:
    """``STEER <source> AT LAYER n SCALE s [%]`` (``percent``: s is a percentage of the
    layer's mean residual norm)."""
    source: SteerSource
    layer: int
    scale: float
    percent: bool = False

    def to_lql(self) -> str:
        return (f"STEER {self.source.to_lql()} AT LAYER {self.layer} SCALE {_num(self.scale)}"
                + (" %" if self.percent else ""))


@dataclass(frozen=True)
class Inject:
    """``INJECT "<vector file>" AT TOKEN "<placeholder>" [SCALE s]`` (``scale=None``: the
    adapter's ``injection_scale``, else √hidden)."""
    path: str
    token: str
    scale: float | None = None

    def to_lql(self) -> str:
        return _join("INJECT", quote(self.path), "AT TOKEN", quote(self.token),
                     _opt("SCALE", self.scale, _num))


def _where(conditions: tuple[Condition, ...]) -> str | None:
    if not conditions:
        return None
    return "WHERE " + " AND ".join(c.to_lql() for c in conditions)


def _join(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def _opt(prefix: str, value, render=str) -> str | None:
    if value is None:
        return None
    return f"{prefix} {render(value)}" if prefix else render(value)


def _flag(text: str, on: bool) -> str | None:
    return text if on else None


def _with_sae(on: bool, name: str | None) -> str | None:
    if not on:
        return None
    return "WITH SAE" if name is None else f"WITH SAE {name}"


# --------------------------------------------------------------------------- statements

@dataclass(frozen=True)
class Statement:
    """Base of every statement.

    ``line`` / ``column``: 1-based position of the statement's first token in the
    parsed text (``None`` when built by hand); not compared, not in ``repr``.
    """
    keyword: ClassVar[str] = ""
    line: int | None = field(default=None, compare=False, repr=False, kw_only=True)
    column: int | None = field(default=None, compare=False, repr=False, kw_only=True)

    def to_lql(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


# ---- lifecycle

@dataclass(frozen=True)
class Extract(Statement):
    keyword: ClassVar[str] = "EXTRACT"
    source: str
    output: str
    level: Level | None = None          # default BROWSE
    layers: LayerSpec | None = None
    dtype: DType | None = None          # default F16
    force: bool = False
    adapter: str | None = None          # WITH ADAPTER "<peft dir>": a LoRA merged first
    components: tuple[str, ...] = ()    # LARQL's COMPONENTS list (upper case); () = none given

    def to_lql(self) -> str:
        return _join("EXTRACT MODEL", quote(self.source), "INTO", quote(self.output),
                     _opt("WITH", self.level, str), _opt("WITH ADAPTER", self.adapter, quote),
                     _opt("LAYERS", self.layers, _lql),
                     _opt("DTYPE", self.dtype, str), _flag("FORCE", self.force),
                     _opt("COMPONENTS", ", ".join(self.components) or None))


@dataclass(frozen=True)
class Use(Statement):
    keyword: ClassVar[str] = "USE"
    path: str

    def to_lql(self) -> str:
        return f"USE {quote(self.path)}"


@dataclass(frozen=True)
class UseModel(Statement):
    keyword: ClassVar[str] = "USE MODEL"
    source: str
    adapter: str | None = None          # WITH ADAPTER "<peft dir>": a LoRA merged at load
    auto_extract: bool = False          # AUTO_EXTRACT: extract (cached) and USE the vindex

    def to_lql(self) -> str:
        return _join(f"USE MODEL {quote(self.source)}", _opt("WITH ADAPTER", self.adapter, quote),
                     _flag("AUTO_EXTRACT", self.auto_extract))


@dataclass(frozen=True)
class UseRemote(Statement):
    keyword: ClassVar[str] = "USE REMOTE"
    url: str

    def to_lql(self) -> str:
        return f"USE REMOTE {quote(self.url)}"


@dataclass(frozen=True)
class Compile(Statement):
    """``COMPILE {CURRENT | <path>} INTO {VINDEX | MODEL} <output>``; ``source=None`` is CURRENT.

    ``on_conflict`` only with VINDEX, ``format`` only with MODEL (the parser enforces it).
    """
    keyword: ClassVar[str] = "COMPILE"
    source: str | None
    target: CompileTarget
    output: str
    on_conflict: Conflict | None = None  # LAST_WINS | HIGHEST_CONFIDENCE | FAIL
    format: ModelFormat | None = None    # default SAFETENSORS
    force: bool = False

    def to_lql(self) -> str:
        src = "CURRENT" if self.source is None else quote(self.source)
        return _join("COMPILE", src, "INTO", str(self.target), quote(self.output),
                     _opt("ON CONFLICT", self.on_conflict, str),
                     _opt("FORMAT", self.format, str), _flag("FORCE", self.force))


@dataclass(frozen=True)
class Diff(Statement):
    """``DIFF <a> {<b> | CURRENT}``; ``b=None`` is CURRENT."""
    keyword: ClassVar[str] = "DIFF"
    a: str
    b: str | None
    layer: int | None = None
    relation: str | None = None
    limit: int | None = None
    into_patch: str | None = None

    def to_lql(self) -> str:
        b = "CURRENT" if self.b is None else quote(self.b)
        return _join("DIFF", quote(self.a), b, _opt("LAYER", self.layer),
                     _opt("RELATION", self.relation, quote), _opt("LIMIT", self.limit),
                     _opt("INTO PATCH", self.into_patch, quote))


# ---- browse

@dataclass(frozen=True)
class Walk(Statement):
    keyword: ClassVar[str] = "WALK"
    prompt: str
    top: int | None = None              # default 10
    layers: LayerSpec | None = None
    mode: WalkMode | None = None        # default HYBRID
    compare: bool = False
    experts: bool = False               # rank MoE expert rows beside the dense features
    plot: str | None = None             # PLOT "<file>" (docs/NOTEBOOKS.md)

    def to_lql(self) -> str:
        return _join("WALK", quote(self.prompt), _opt("TOP", self.top),
                     _opt("LAYERS", self.layers, _lql), _opt("MODE", self.mode, str),
                     _flag("COMPARE", self.compare), _flag("EXPERTS", self.experts),
                     _opt("PLOT", self.plot, quote))


@dataclass(frozen=True)
class Describe(Statement):
    keyword: ClassVar[str] = "DESCRIBE"
    entity: str
    band: Band | None = None            # default KNOWLEDGE
    layer: int | None = None            # AT LAYER n
    relations_only: bool = False
    verbosity: Verbosity | None = None  # default BRIEF
    via: Via | None = None              # default EMBEDDING
    experts: bool = False               # MoE expert rows feed edges too
    plot: str | None = None

    def to_lql(self) -> str:
        return _join("DESCRIBE", quote(self.entity), _opt("", self.band, str),
                     _opt("AT LAYER", self.layer), _flag("RELATIONS ONLY", self.relations_only),
                     _opt("", self.verbosity, str), _opt("VIA", self.via, str),
                     _flag("EXPERTS", self.experts), _opt("PLOT", self.plot, quote))


@dataclass(frozen=True)
class Select(Statement):
    """``SELECT <fields | *> FROM <source> ...``; ``fields=None`` is ``*``."""
    keyword: ClassVar[str] = "SELECT"
    source: SelectSource
    fields: tuple[str, ...] | None = None
    nearest: Nearest | None = None
    where: tuple[Condition, ...] = ()
    order_by: OrderBy | None = None
    limit: int | None = None

    def to_lql(self) -> str:
        cols = "*" if self.fields is None else ", ".join(self.fields)
        return _join("SELECT", cols, "FROM", str(self.source),
                     self.nearest.to_lql() if self.nearest else None, _where(self.where),
                     self.order_by.to_lql() if self.order_by else None, _opt("LIMIT", self.limit))


@dataclass(frozen=True)
class ExplainWalk(Statement):
    keyword: ClassVar[str] = "EXPLAIN WALK"
    prompt: str
    layers: LayerSpec | None = None
    top: int | None = None
    verbose: bool = False
    experts: bool = False

    def to_lql(self) -> str:
        return _join("EXPLAIN WALK", quote(self.prompt), _opt("LAYERS", self.layers, _lql),
                     _opt("TOP", self.top), _flag("VERBOSE", self.verbose), _flag("EXPERTS", self.experts))


# ---- inference

@dataclass(frozen=True)
class Infer(Statement):
    keyword: ClassVar[str] = "INFER"
    prompt: str
    top: int | None = None              # default 5
    compare: bool = False
    wrap: PromptWrap | None = None      # None: session default (SET CHAT)
    system: str | None = None
    generate: int | None = None
    verbose: bool = False
    steer: tuple[Steer, ...] = ()       # STEER clauses, in order (they add up)
    inject: tuple[Inject, ...] = ()     # INJECT clauses, in order
    plot: str | None = None

    def to_lql(self) -> str:
        return _join("INFER", quote(self.prompt), _opt("TOP", self.top),
                     _flag("COMPARE", self.compare), _opt("", self.wrap, str),
                     _opt("SYSTEM", self.system, quote), _opt("GENERATE", self.generate),
                     _flag("VERBOSE", self.verbose), *(s.to_lql() for s in self.steer),
                     *(i.to_lql() for i in self.inject), _opt("PLOT", self.plot, quote))


@dataclass(frozen=True)
class ExplainInfer(Statement):
    keyword: ClassVar[str] = "EXPLAIN INFER"
    prompt: str
    layers: LayerSpec | None = None
    top: int | None = None
    verbose: bool = False
    with_attention: bool = False
    wrap: PromptWrap | None = None
    system: str | None = None
    with_sae: bool = False              # WITH SAE [name]
    sae: str | None = None              # the SAE's name (None: the session's current SAE)
    plot: str | None = None
    for_token: str | None = None        # FOR <token>: the features carrying that token
    band: Band | None = None            # LARQL: SYNTAX / KNOWLEDGE / OUTPUT / ALL LAYERS
    relations_only: bool = False        # LARQL: RELATIONS ONLY (labelled features only)

    def to_lql(self) -> str:
        return _join("EXPLAIN INFER", quote(self.prompt), _opt("LAYERS", self.layers, _lql),
                     _opt("TOP", self.top), _flag("VERBOSE", self.verbose),
                     _flag("WITH ATTENTION", self.with_attention),
                     _with_sae(self.with_sae, self.sae), _opt("", self.wrap, str),
                     _opt("SYSTEM", self.system, quote), _opt("PLOT", self.plot, quote),
                     _opt("FOR", self.for_token, quote), _opt("", self.band, str),
                     _flag("RELATIONS ONLY", self.relations_only))


@dataclass(frozen=True)
class Trace(Statement):
    keyword: ClassVar[str] = "TRACE"
    prompt: str
    for_token: str | None = None
    decompose: bool = False
    layers: LayerSpec | None = None
    positions: Positions | None = None  # default LAST
    save: str | None = None
    wrap: PromptWrap | None = None
    system: str | None = None
    with_sae: bool = False              # WITH SAE [name]
    sae: str | None = None
    plot: str | None = None

    def to_lql(self) -> str:
        return _join("TRACE", quote(self.prompt), _opt("FOR", self.for_token, quote),
                     _flag("DECOMPOSE", self.decompose), _opt("LAYERS", self.layers, _lql),
                     _opt("POSITIONS", self.positions, str), _opt("SAVE", self.save, quote),
                     _with_sae(self.with_sae, self.sae),
                     _opt("", self.wrap, str), _opt("SYSTEM", self.system, quote),
                     _opt("PLOT", self.plot, quote))


@dataclass(frozen=True)
class SaveSteer(Statement):
    """``SAVE STEER <source> AT LAYER n INTO "v.npy"``: write the steering vector to a file."""
    keyword: ClassVar[str] = "SAVE STEER"
    source: SteerSource
    layer: int
    output: str

    def to_lql(self) -> str:
        return f"SAVE STEER {self.source.to_lql()} AT LAYER {self.layer} INTO {quote(self.output)}"


# ---- mutation

@dataclass(frozen=True)
class Insert(Statement):
    keyword: ClassVar[str] = "INSERT"
    entity: str
    relation: str
    target: str
    layer: int | None = None            # AT LAYER n; default: one below the knowledge band's top
    confidence: float | None = None
    alpha: float | None = None          # default 0.10
    mode: InsertMode | None = None      # default KNN
    prompt: str | None = None           # canonical prompt template with {entity}

    def to_lql(self) -> str:
        return _join("INSERT INTO EDGES (entity, relation, target) VALUES",
                     f"({quote(self.entity)}, {quote(self.relation)}, {quote(self.target)})",
                     _opt("AT LAYER", self.layer), _opt("CONFIDENCE", self.confidence, _num),
                     _opt("ALPHA", self.alpha, _num), _opt("MODE", self.mode, str),
                     _opt("PROMPT", self.prompt, quote))


@dataclass(frozen=True)
class Delete(Statement):
    keyword: ClassVar[str] = "DELETE"
    where: tuple[Condition, ...]
    #: how a fact the model knows is removed: COMPOSE (a suppression feature, the
    #: default) or MEMIT (a closed-form low-rank update)
    mode: InsertMode | None = None

    def to_lql(self) -> str:
        return _join("DELETE FROM EDGES", _where(self.where), _opt("MODE", self.mode, str))


@dataclass(frozen=True)
class Update(Statement):
    keyword: ClassVar[str] = "UPDATE"
    assignments: tuple[Assignment, ...]
    where: tuple[Condition, ...]

    def to_lql(self) -> str:
        sets = ", ".join(a.to_lql() for a in self.assignments)
        return _join("UPDATE EDGES SET", sets, _where(self.where))


@dataclass(frozen=True)
class Merge(Statement):
    keyword: ClassVar[str] = "MERGE"
    source: str
    target: str | None = None           # None: the current vindex
    on_conflict: Conflict | None = None  # KEEP_SOURCE | KEEP_TARGET | HIGHEST_CONFIDENCE

    def to_lql(self) -> str:
        return _join("MERGE", quote(self.source), _opt("INTO", self.target, quote),
                     _opt("ON CONFLICT", self.on_conflict, str))


@dataclass(frozen=True)
class Rebalance(Statement):
    keyword: ClassVar[str] = "REBALANCE"
    until_converged: bool = False
    max_iterations: int | None = None   # MAX n, default 16
    floor: float | None = None          # default 0.30
    ceiling: float | None = None        # default 0.90

    def to_lql(self) -> str:
        return _join("REBALANCE", _flag("UNTIL CONVERGED", self.until_converged),
                     _opt("MAX", self.max_iterations), _opt("FLOOR", self.floor, _num),
                     _opt("CEILING", self.ceiling, _num))


# ---- patches

@dataclass(frozen=True)
class BeginPatch(Statement):
    keyword: ClassVar[str] = "BEGIN PATCH"
    path: str

    def to_lql(self) -> str:
        return f"BEGIN PATCH {quote(self.path)}"


@dataclass(frozen=True)
class SavePatch(Statement):
    keyword: ClassVar[str] = "SAVE PATCH"
    path: str | None = None

    def to_lql(self) -> str:
        return _join("SAVE PATCH", _opt("", self.path, quote))


@dataclass(frozen=True)
class ApplyPatch(Statement):
    keyword: ClassVar[str] = "APPLY PATCH"
    path: str
    force: bool = False

    def to_lql(self) -> str:
        return _join("APPLY PATCH", quote(self.path), _flag("FORCE", self.force))


@dataclass(frozen=True)
class RemovePatch(Statement):
    keyword: ClassVar[str] = "REMOVE PATCH"
    path: str

    def to_lql(self) -> str:
        return f"REMOVE PATCH {quote(self.path)}"


@dataclass(frozen=True)
class ShowPatches(Statement):
    keyword: ClassVar[str] = "SHOW PATCHES"

    def to_lql(self) -> str:
        return "SHOW PATCHES"


# ---- introspection and session

@dataclass(frozen=True)
class ShowRelations(Statement):
    keyword: ClassVar[str] = "SHOW RELATIONS"
    layer: int | None = None
    with_examples: bool = False
    verbosity: Verbosity | None = None

    def to_lql(self) -> str:
        return _join("SHOW RELATIONS", _opt("AT LAYER", self.layer),
                     _flag("WITH EXAMPLES", self.with_examples), _opt("", self.verbosity, str))


@dataclass(frozen=True)
class ShowLayers(Statement):
    keyword: ClassVar[str] = "SHOW LAYERS"
    layers: LayerSpec | None = None

    def to_lql(self) -> str:
        return _join("SHOW LAYERS", _opt("", self.layers, _lql))


@dataclass(frozen=True)
class ShowFeatures(Statement):
    keyword: ClassVar[str] = "SHOW FEATURES"
    layer: int
    where: tuple[Condition, ...] = ()
    limit: int | None = None

    def to_lql(self) -> str:
        return _join("SHOW FEATURES", str(self.layer), _where(self.where), _opt("LIMIT", self.limit))


@dataclass(frozen=True)
class ShowEntities(Statement):
    keyword: ClassVar[str] = "SHOW ENTITIES"
    layer: int | None = None
    limit: int | None = None

    def to_lql(self) -> str:
        return _join("SHOW ENTITIES", _opt("AT LAYER", self.layer), _opt("LIMIT", self.limit))


@dataclass(frozen=True)
class ShowModels(Statement):
    keyword: ClassVar[str] = "SHOW MODELS"

    def to_lql(self) -> str:
        return "SHOW MODELS"


@dataclass(frozen=True)
class Stats(Statement):
    keyword: ClassVar[str] = "STATS"
    path: str | None = None             # None: the vindex in use

    def to_lql(self) -> str:
        return "STATS" if self.path is None else f"STATS {quote(self.path)}"


@dataclass(frozen=True)
class SetChat(Statement):
    keyword: ClassVar[str] = "SET CHAT"
    mode: ChatMode

    def to_lql(self) -> str:
        return f"SET CHAT {self.mode}"


@dataclass(frozen=True)
class Help(Statement):
    """``HELP [<statement words>]``; ``topic`` upper-cased, single-spaced (``"EXPLAIN INFER"``)."""
    keyword: ClassVar[str] = "HELP"
    topic: str | None = None

    def to_lql(self) -> str:
        return "HELP" if not self.topic else f"HELP {self.topic}"


@dataclass(frozen=True)
class Pipe(Statement):
    """``left |> right``: run ``left``, then ``right`` with ``left``'s result as context."""
    keyword: ClassVar[str] = "PIPE"
    left: Statement
    right: Statement

    def to_lql(self) -> str:
        return f"{self.left.to_lql()} |> {self.right.to_lql()}"


# ---- interpretability: SAEs and activation capture (docs/INTERPRET.md)

@dataclass(frozen=True)
class UseSae(Statement):
    """``USE SAE <path> [AT LAYER n] [AS name]``; ``name=None``: named after the file."""
    keyword: ClassVar[str] = "USE SAE"
    path: str
    layer: int | None = None
    name: str | None = None

    def to_lql(self) -> str:
        return _join("USE SAE", quote(self.path), _opt("AT LAYER", self.layer),
                     _opt("AS", self.name))


@dataclass(frozen=True)
class DescribeSaeFeature(Statement):
    """``DESCRIBE SAE [name] FEATURE n [FROM FILE <prompts>] [TOP k]``."""
    keyword: ClassVar[str] = "DESCRIBE SAE FEATURE"
    feature: int
    sae: str | None = None
    file: str | None = None
    top: int | None = None              # default 10

    def to_lql(self) -> str:
        return _join("DESCRIBE SAE", self.sae, "FEATURE", str(self.feature),
                     _opt("FROM FILE", self.file, quote), _opt("TOP", self.top))


@dataclass(frozen=True)
class SelectSaeFeatures(Statement):
    """``SELECT <fields | *> FROM SAE [name] FEATURES [WHERE ...] [ORDER BY ...] [LIMIT n]``."""
    keyword: ClassVar[str] = "SELECT"
    fields: tuple[str, ...] | None = None
    sae: str | None = None
    where: tuple[Condition, ...] = ()
    order_by: OrderBy | None = None
    limit: int | None = None

    def to_lql(self) -> str:
        cols = "*" if self.fields is None else ", ".join(self.fields)
        return _join("SELECT", cols, "FROM SAE", self.sae, "FEATURES", _where(self.where),
                     self.order_by.to_lql() if self.order_by else None, _opt("LIMIT", self.limit))


@dataclass(frozen=True)
class EvaluateSae(Statement):
    """``EVALUATE SAE [name] FROM FILE <prompts>``: reconstruction metrics."""
    keyword: ClassVar[str] = "EVALUATE SAE"
    file: str
    sae: str | None = None

    def to_lql(self) -> str:
        return _join("EVALUATE SAE", self.sae, "FROM FILE", quote(self.file))


@dataclass(frozen=True)
class Capture(Statement):
    """``CAPTURE {<prompt> | FROM FILE <prompts>} AT LAYER n [POSITIONS {LAST | ALL}]
    INTO <file>``; exactly one of ``prompt`` / ``file`` is set."""
    keyword: ClassVar[str] = "CAPTURE"
    layer: int
    output: str
    prompt: str | None = None
    file: str | None = None
    positions: Positions | None = None  # default LAST

    def to_lql(self) -> str:
        src = (f"FROM FILE {quote(self.file)}" if self.file is not None
               else quote(self.prompt) if self.prompt is not None else None)
        return _join("CAPTURE", src,
                     f"AT LAYER {self.layer}", _opt("POSITIONS", self.positions, str),
                     "INTO", quote(self.output))


def _lql(node) -> str:
    return node.to_lql()


#: Every concrete statement class, in spec order.
STATEMENT_TYPES: tuple[type[Statement], ...] = (
    Extract, Use, UseModel, UseRemote, Compile, Diff, Walk, Describe, Select, ExplainWalk,
    Infer, ExplainInfer, Trace, SaveSteer, Insert, Delete, Update, Merge, Rebalance, BeginPatch, SavePatch,
    ApplyPatch, RemovePatch, ShowPatches, ShowRelations, ShowLayers, ShowFeatures, ShowEntities,
    ShowModels, Stats, SetChat, Pipe, Help,
    UseSae, DescribeSaeFeature, SelectSaeFeatures, EvaluateSae, Capture,
)


# ---- compaction (issue 14): KNN → COMPOSE → MEMIT

@dataclass(frozen=True)
class CompactMinor(Statement):
    keyword: ClassVar[str] = "COMPACT MINOR"

    def to_lql(self) -> str:
        return "COMPACT MINOR"


@dataclass(frozen=True)
class CompactMajor(Statement):
    keyword: ClassVar[str] = "COMPACT MAJOR"
    full: bool = False
    lambda_: float | None = None

    def to_lql(self) -> str:
        return _join("COMPACT MAJOR", _flag("FULL", self.full),
                     None if self.lambda_ is None else f"WITH LAMBDA = {_num(self.lambda_)}")


@dataclass(frozen=True)
class ShowCompactStatus(Statement):
    keyword: ClassVar[str] = "SHOW COMPACT STATUS"

    def to_lql(self) -> str:
        return "SHOW COMPACT STATUS"


STATEMENT_TYPES = STATEMENT_TYPES + (CompactMinor, CompactMajor, ShowCompactStatus)
__all__ += ["CompactMinor", "CompactMajor", "ShowCompactStatus"]
