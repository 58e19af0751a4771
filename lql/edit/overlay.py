"""The overlay: a patched, read-only view over a base vindex.

Edits live in a stack of :class:`~lql.edit.patch.Patch` objects (applied
``.vlp`` files, then the patch being recorded).  The effective state is the
fold of every operation in stack order -- later operations win for the same
``(layer, feature)`` -- so removing a patch and re-folding reverts it exactly:
rows nobody edits are always read from the base files, which never change.

:class:`OverlayVindex` wraps the base ``Vindex`` and presents the same
interface with the edits applied (``gate(layer)``, ``weights``,
``down_meta``, ``feature_labels``; every other attribute of the
``lql.runtime.VindexView`` protocol is an explicit pass-through to the base), plus:

* ``knn_override(layer, residual) -> (token_id, cosine) | None`` -- the KNN
  store hook INFER calls at each layer of ``knn_layers()``;
* ``inserted_edges()`` -- the facts the overlay inserted (for DESCRIBE/SELECT);
* ``base`` / ``overlay`` / ``is_overlay``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from ..errors import ExecutionError
from ..families import Family, family_or_default
from ..runtime.view import KnnContext
from ..vindex.down_meta import RecordAccess
from .patch import Patch, PatchOp

if TYPE_CHECKING:
    from ..vindex.weights import VindexWeights

__all__ = ["Overlay", "OverlayVindex", "FeatureEdit", "KnnEntry", "KnnScope", "KnnContext",
           "names_subject", "overlay_view",
           "ffn_layout", "KNN_THRESHOLD"]

T = TypeVar("T")

#: cosine above which a stored KNN key takes over the prediction
KNN_THRESHOLD = 0.75


# --------------------------------------------------------------------------- FFN key layout

class FfnLayout:
    """Where a layer's gate / up / down live in ``v.weights`` and how to index features:
    all from the vindex's family description (``lql.families``; the default,
    Llama-style family when the vindex names none we know)."""

    def __init__(self, vindex):
        self.family = _family_of(vindex)
        self.num_layers = int(vindex.num_layers)

    def gate_key(self, layer: int) -> str:
        return self.family.gate_key(layer)

    def up_key(self, layer: int) -> str | None:
        return self.family.up_key(layer)

    def down_key(self, layer: int) -> str:
        return self.family.down_key(layer)

    def rows(self, weight: np.ndarray) -> np.ndarray:
        return self.family.gate_rows(weight)

    def unrows(self, rows: np.ndarray) -> np.ndarray:
        return self.family.gate_weight(rows)

    def columns(self, weight: np.ndarray) -> np.ndarray:
        return self.family.down_columns(weight)

    def uncolumns(self, cols: np.ndarray) -> np.ndarray:
        return self.family.down_weight(cols)

    def key_roles(self) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        for layer in range(self.num_layers):
            out[self.gate_key(layer)] = (layer, "gate")
            up = self.up_key(layer)
            if up:
                out[up] = (layer, "up")
            out[self.down_key(layer)] = (layer, "down")
        return out


def _family_of(vindex) -> Family:
    fam = getattr(vindex, "family_spec", None)
    if isinstance(fam, Family):
        return fam
    name = getattr(vindex, "family", None)
    return name if isinstance(name, Family) else family_or_default(name)


def ffn_layout(vindex) -> FfnLayout:
    return FfnLayout(getattr(vindex, "base", vindex))


# --------------------------------------------------------------------------- effective state

@dataclass
class FeatureEdit:
    """The effective edit of one ``(layer, feature)`` after folding the stack."""
    layer: int
    feature: int
    gate: np.ndarray | None = None      # (hidden,) row, None: base row
    up: np.ndarray | None = None
    down: np.ndarray | None = None      # (hidden,) column, None: base column
    down_meta: dict | None = None       # {"t", "i", "c"} from the patch, None: computed/base
    deleted: bool = False
    info: dict = field(default_factory=dict)   # entity, relation, target, confidence, mode, op
    patch: str = ""

    @property
    def inserted(self) -> bool:
        return not self.deleted and self.info.get("op") == "insert"


def default_key_kind(op: PatchOp) -> str:
    """An ``insert_knn`` op's key kind: its ``key_kind`` field; without one, ``"residual"``
    for an op carrying a ``center`` (this tool's INSERT before key kinds were written) and
    ``"ffn_input"`` otherwise (LARQL's INSERT captures the FFN input:
    executor/mutation/insert/knn.rs, WalkFfn::take_residuals)."""
    kind = op.get("key_kind")
    if kind is not None:
        return str(kind)
    return "residual" if op.vector("center") is not None else "ffn_input"


def knn_entry_op(entry: KnnEntry, **changes: Any) -> PatchOp:
    """An ``insert_knn`` op re-creating ``entry`` (key, center, threshold, key kind, prompt
    form and other-wording flag kept), with ``changes`` (e.g. a new ``confidence``) applied."""
    fields: dict[str, Any] = {"layer": entry.layer, "entity": entry.entity,
                              "relation": entry.relation, "target": entry.target,
                              "target_id": entry.target_id, "confidence": entry.confidence,
                              "key_kind": entry.key_kind, "threshold": entry.threshold,
                              "prompt_form": None if entry.prompt_form == "raw"
                              else entry.prompt_form,
                              "paraphrase": True if entry.paraphrase else None,
                              "prompt": entry.prompt or None,
                              "subject": entry.subject or None,
                              "prefix_ids": [int(t) for t in entry.prefix_ids] or None}
    vectors = {"key": entry.key, **({"center": entry.center} if entry.center is not None else {})}
    if entry.scope is not None:
        fields.update(scope=True, target_ids=list(entry.scope.target_ids))
        if len(entry.scope.keys):
            vectors["alt_keys"] = entry.scope.keys
        if len(entry.scope.rivals):
            vectors["rivals"] = entry.scope.rivals
    fields.update(changes)
    return PatchOp.make("insert_knn", vectors=vectors,
                        **{k: v for k, v in fields.items() if v is not None})


@dataclass
class KnnScope:
    """What makes a KNN entry *scoped* (INSERT's ``scope`` op, :func:`lql.edit.insert.scope_op`):
    it answers the relation asked in any wording, not only the ones it was keyed on.

    The entry's ``key`` and ``keys`` are the vectors at the last position of the fact's
    wordings filled with its entity (minus the entry's ``center``, the mean over ordinary
    text); ``rivals`` the same for the other relations' wordings with the same entity.  The
    entry fires where its best key is above the threshold *and* nearer than every rival --
    a nearest-neighbour choice among the relations one can ask about the entity -- and its
    subject is named in the context.  It then writes ``target_ids[0]``, and at the
    following positions the rest of the target: after the first ``j`` target tokens it
    writes token ``j`` when the position before them fired."""
    keys: np.ndarray                    # (m, hidden) L2-normalised, the other wordings' keys
    rivals: np.ndarray                  # (r, hidden) L2-normalised
    target_ids: tuple[int, ...]         # the whole target


#: a plain KNN entry of the chat form yields to its fact's scoped entry where a rival
#: relation's key is nearer than the fact's own by more than this
#: (:meth:`KnnEntry.asks_own`; raw entries do not: there it cost Gemma 3's held-out
#: paraphrases 0.83 → 0.57 at 10 facts, and raw misfires were few).  Chosen on
#: Gemma 3 270M, 60 facts of benchmarks/data/counterfact_edits.json (in-sample): the
#: plain keys fired above threshold on 4 raw and 10 chat neighbourhood prompts asking
#: the entity another relation (rival − own 0.04–0.30), and on held-out paraphrases
#: where rival − own was ≤ 0.02 in chat and up to 0.10 raw; 0 kept the 14 misfires out
#: but lost 11 of 114 raw and 47 of 143 chat paraphrase contexts, 0.03 lost 9 raw, 0 chat.
SIBLING_MARGIN = 0.03

_SUBJECT_PATTERNS: dict[str, Any] = {}


def names_subject(text_lower: str, subject: str) -> bool:
    """Whether ``subject`` appears in ``text_lower`` as whole words (case-insensitive)."""
    import re
    pat = _SUBJECT_PATTERNS.get(subject)
    if pat is None:
        words = re.escape(subject.strip().lower())
        pat = _SUBJECT_PATTERNS[subject] = re.compile(rf"(?<!\w){words}(?!\w)")
    return bool(pat.search(text_lower))


@dataclass
class KnnEntry:
    layer: int
    key: np.ndarray                     # L2-normalised (hidden,)
    target_id: int
    entity: str = ""
    relation: str = ""
    target: str = ""
    confidence: float = 1.0
    patch: str = ""
    center: np.ndarray | None = None    # subtracted from the compared vector before the cosine
    threshold: float | None = None      # this entry's calibrated cosine threshold (INSERT)
    #: which vector the key is (:data:`lql.edit.patch.KNN_KEY_KINDS`): ``"residual"`` (the residual after the
    #: layer: our INSERT's default), ``"ffn_input"`` (the FFN's normed input at the layer: LARQL's
    #: key), ``"embedding"`` (the entity's mean token embedding, written without weights;
    #: never fires)
    key_kind: str = "ffn_input"
    #: the prompt form the key was read on: ``"raw"`` or ``"chat"`` (chat-wrapped user turn)
    prompt_form: str = "raw"
    #: read on one of the relation's other wordings (:data:`lql.edit.prompts.PARAPHRASES`),
    #: not the canonical prompt: a twin of the fact's canonical entry
    paraphrase: bool = False
    #: the text the key was read on (the prompt and the target tokens before this one)
    prompt: str = ""
    #: fires only where this is named in the context (INSERT sets it to the entity; a
    #: store written by LARQL has none)
    subject: str = ""
    #: a scoped entry (:class:`KnnScope`): the relation asked in any wording
    scope: KnnScope | None = None
    #: the target tokens that follow the prompt in the text the key was read on
    prefix_ids: tuple[int, ...] = ()
    #: a plain entry's scoped entry of the same fact and prompt form (set when the state
    #: is built): where that one says another relation is asked, a chat-form plain entry
    #: is silent
    sibling: KnnEntry | None = field(default=None, repr=False, compare=False)

    @cached_property
    def _scope_keys(self) -> np.ndarray:
        """A scoped entry's own keys, its ``key`` first (stacked once, not at every step)."""
        extra = self.scope.keys if self.scope is not None else np.zeros((0, self.key.size))
        return np.vstack([self.key[None, :], extra]).astype(np.float32)

    def scope_hit(self, rows: np.ndarray | None, ids: list[int]) -> tuple[float, int] | None:
        """A scoped entry's ``(cosine, token id)`` at the current position: the target
        token after the target's first ``j`` tokens (the longest ``j`` that ends the
        context and whose position fired), or ``None``."""
        sc = self.scope
        if sc is None or rows is None or not len(rows):
            return None
        keys = self._scope_keys
        limit = KNN_THRESHOLD if self.threshold is None else self.threshold
        seq = sc.target_ids
        for j in range(min(len(seq), len(rows), len(ids)) - 1, -1, -1):
            if j and [int(t) for t in ids[len(ids) - j:]] != list(seq[:j]):
                continue
            x = self._unit(rows[len(rows) - 1 - j])
            if x is None:
                continue
            own = float((keys @ x).max())
            if own > limit and (not len(sc.rivals) or own > float((sc.rivals @ x).max())):
                return own, int(seq[j])
        return None

    def _unit(self, row: np.ndarray) -> np.ndarray | None:
        """``row`` minus the entry's center, unit length (``None`` when zero)."""
        x = np.asarray(row, np.float32).reshape(-1)
        if self.center is not None:
            x = x - self.center
        n = float(np.linalg.norm(x))
        return None if n == 0.0 else x / n

    def asks_own(self, row: np.ndarray, margin: float = 0.0) -> bool:
        """Whether, at a position whose residual is ``row``, a scoped entry's nearest key
        is its own rather than a rival's by more than ``margin`` (the relation test of
        :meth:`scope_hit`, without its threshold)."""
        sc = self.scope
        if sc is None or not len(sc.rivals):
            return True
        x = self._unit(row)
        if x is None:
            return True
        return float((self._scope_keys @ x).max()) + margin >= float((sc.rivals @ x).max())

    def cosine(self, residual: np.ndarray) -> float:
        r = residual if self.center is None else residual - self.center
        n = float(np.linalg.norm(r))
        return float(self.key @ r) / n if n > 0 else 0.0


@dataclass
class _State:
    features: dict[tuple[int, int], FeatureEdit]
    knn: list[KnnEntry]
    #: per layer, the low-rank down-weight updates of ``memit`` ops: [(U, V)], ΔW = U·Vᵀ
    low_rank: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


def _slot(op: PatchOp) -> tuple[int, int]:
    """The (layer, feature) an insert / update / delete op addresses (checked when the patch
    is read; an op built in-process always carries both)."""
    layer, feature = op.layer, op.feature
    if layer is None or feature is None:
        raise ExecutionError(f"{op.op} operation without 'layer' and 'feature'")
    return layer, feature


def _fold(patches: list[Patch], hidden: int) -> _State:
    feats: dict[tuple[int, int], FeatureEdit] = {}
    knn: list[KnnEntry] = []
    low_rank: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for patch in patches:
        for op in patch.operations:
            kind = op.op
            if kind == "memit":
                from .patch import memit_factors
                low_rank.setdefault(int(op.get("layer")), []).append(memit_factors(op))
            elif kind == "insert":
                e = FeatureEdit(*_slot(op), gate=op.vector("gate"), up=op.vector("up"),
                                down=op.vector("down"), down_meta=op.get("down_meta"),
                                info=_info(op), patch=patch.name)
                feats[(e.layer, e.feature)] = e
            elif kind == "update" and op.get("restore"):
                # written by DELETE of an inserted fact: the slot goes back to its base
                # vectors (which the op also carries, for tools that ignore "restore")
                feats.pop(_slot(op), None)
            elif kind == "update":
                slot = _slot(op)
                e = feats.get(slot) or FeatureEdit(*slot, patch=patch.name,
                                                  info={"op": "update"})
                for name in ("gate", "up", "down"):
                    vec = op.vector(name)
                    if vec is not None:
                        setattr(e, name, vec)
                if op.get("down_meta") is not None:
                    e.down_meta = op.get("down_meta")
                for k in ("entity", "relation", "target", "confidence", "mode"):
                    if op.get(k) is not None:
                        e.info[k] = op.get(k)
                e.deleted = False if e.info.get("op") == "insert" else e.deleted
                e.patch = patch.name
                feats[slot] = e
            elif kind == "delete":
                slot = _slot(op)
                feats[slot] = FeatureEdit(
                    *slot, gate=np.zeros(hidden, np.float32),
                    down=np.zeros(hidden, np.float32), deleted=True,
                    info={"op": "delete", "reason": op.get("reason")}, patch=patch.name)
            elif kind == "insert_knn":
                kvec = np.asarray(op.vector("key"), dtype=np.float32)
                n = float(np.linalg.norm(kvec))
                center = op.vector("center")
                knn.append(KnnEntry(int(op.get("layer")), kvec / n if n > 0 else kvec,
                                    int(op.get("target_id", 0)), op.get("entity", ""),
                                    op.get("relation", ""), op.get("target", ""),
                                    float(op.get("confidence", 1.0) or 1.0), patch.name,
                                    None if center is None else center.astype(np.float32),
                                    None if op.get("threshold") is None
                                    else float(op.get("threshold")),
                                    default_key_kind(op), str(op.get("prompt_form") or "raw"),
                                    bool(op.get("paraphrase")), str(op.get("prompt") or ""),
                                    str(op.get("subject") or ""), _scope_of(op, hidden),
                                    tuple(int(t) for t in op.get("prefix_ids") or ())))
            elif kind == "delete_knn":
                knn = [k for k in knn if not _knn_matches(k, op)]
    _link_siblings(knn)
    return _State(feats, knn, low_rank)


def _link_siblings(knn: list[KnnEntry]) -> None:
    """Point each plain entry with a subject at the scoped entry of its fact (same layer,
    entity, relation, target and prompt form), if the store has one."""
    def fact(e: KnnEntry) -> tuple:
        return (e.layer, e.entity.casefold(), e.relation, e.target, e.prompt_form, e.key_kind)
    scoped = {fact(e): e for e in knn if e.scope is not None}
    for e in knn:
        e.sibling = scoped.get(fact(e)) if e.scope is None and e.subject else None


def _rows(vec: np.ndarray | None, hidden: int) -> np.ndarray:
    """A flattened matrix vector as L2-normalised rows of ``hidden``."""
    if vec is None or not vec.size:
        return np.zeros((0, hidden), np.float32)
    m = np.asarray(vec, np.float32).reshape(-1, hidden)
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(n > 0, n, 1.0)


def _scope_of(op: PatchOp, hidden: int) -> KnnScope | None:
    """A scoped ``insert_knn`` op's :class:`KnnScope` (``None`` for a plain one)."""
    if not op.get("scope"):
        return None
    seq = op.get("target_ids") or [op.get("target_id", 0)]
    return KnnScope(_rows(op.vector("alt_keys"), hidden), _rows(op.vector("rivals"), hidden),
                    tuple(int(t) for t in seq))


def _info(op: PatchOp) -> dict:
    info = {"op": op.op}
    for k in ("entity", "relation", "target", "confidence", "mode", "alpha", "prompt",
              "prefix_ids", "prompt_form"):
        if op.get(k) is not None:
            info[k] = op.get(k)
    info.setdefault("mode", "compose" if op.vector("down") is not None else "insert")
    return info


def _knn_matches(entry: KnnEntry, op: PatchOp) -> bool:
    for k in ("entity", "relation", "target"):
        want = op.get(k)
        if want is not None and str(getattr(entry, k)).lower() != str(want).lower():
            return False
    if op.get("layer") is not None and entry.layer != int(op.get("layer")):
        return False
    if op.get("prompt_form") is not None and entry.prompt_form != op.get("prompt_form"):
        return False
    return True


# --------------------------------------------------------------------------- the overlay

class Overlay:
    """A stack of patches over one base vindex, plus the patch being recorded."""

    def __init__(self, base):
        self.base = base
        self.stack: list[Patch] = []
        self.recording: Patch | None = None
        self.recording_explicit = False      # True after BEGIN PATCH, False for an auto-patch
        self.version = 0
        self._state: _State | None = None
        self._layout: FfnLayout | None = None

    # ---- identity of the base
    @property
    def base_model(self) -> str | None:
        return getattr(self.base, "model", None)

    @property
    def base_checksum(self) -> str | None:
        idx = getattr(self.base, "index", None) or {}
        return (idx.get("checksums") or {}).get("gate_vectors.bin")

    @property
    def layout(self) -> FfnLayout:
        if self._layout is None:
            self._layout = FfnLayout(self.base)
        return self._layout

    def new_patch(self, path: Path | None = None) -> Patch:
        return Patch(base_model=self.base_model, base_checksum=self.base_checksum, path=path)

    # ---- state
    def _changed(self) -> None:
        self.version += 1
        self._state = None

    @property
    def state(self) -> _State:
        if self._state is None:
            self._state = _fold(self.stack, int(self.base.hidden_size))
        return self._state

    @property
    def features(self) -> dict[tuple[int, int], FeatureEdit]:
        return self.state.features

    @property
    def knn(self) -> list[KnnEntry]:
        return self.state.knn

    def is_empty(self) -> bool:
        return not any(p.operations for p in self.stack)

    def edited_layers(self) -> set[int]:
        return {layer for layer, _ in self.features} | set(self.state.low_rank)

    @property
    def low_rank(self) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
        """Per layer, the ``memit`` ops' low-rank down-weight updates ``[(U, V)]``."""
        return self.state.low_rank

    def has_unsaved_edits(self) -> bool:
        """True when the patch being recorded holds operations not written to disk."""
        return self.recording is not None and bool(self.recording.operations) and \
            self.recording.dirty

    # ---- recording
    def record(self, op: PatchOp) -> bool:
        """Append ``op`` to the recording patch; returns True if an auto-patch was started."""
        started = False
        if self.recording is None:
            self.recording = self.new_patch()
            self.recording_explicit = False
            self.stack.append(self.recording)
            started = True
        self.recording.operations.append(op)
        self.recording.dirty = True
        self._changed()
        return started

    def begin(self, path: Path) -> None:
        if self.recording is not None and self.recording.operations:
            what = "patch " + self.recording.name if self.recording_explicit else "the auto-patch"
            raise ExecutionError(f"{what} has unsaved edits; SAVE PATCH \"file.vlp\" (or "
                                 f"REMOVE PATCH) before BEGIN PATCH")
        if self.recording is not None:
            self.stack.remove(self.recording)
        self.recording = self.new_patch(path)
        self.recording_explicit = True
        self.stack.append(self.recording)
        self._changed()

    def finish_recording(self, path: Path) -> Patch:
        patch = self.recording
        assert patch is not None
        patch.path = path
        patch.dirty = False
        self.recording = None
        self.recording_explicit = False
        return patch

    def find(self, path: Path) -> Patch | None:
        for p in self.stack:
            if p.path is not None and Path(p.path) == Path(path):
                return p
        return None

    def apply(self, patch: Patch) -> None:
        if self.recording is not None and self.recording in self.stack:
            # applied patches go below the one being recorded: its edits stay on top
            self.stack.insert(self.stack.index(self.recording), patch)
        else:
            self.stack.append(patch)
        self._changed()

    def remove(self, patch: Patch) -> None:
        self.stack.remove(patch)
        if patch is self.recording:
            self.recording = None
            self.recording_explicit = False
        self._changed()

    # ---- KNN hook
    def knn_layers(self) -> set[int]:
        return {e.layer for e in self.knn}

    def knn_depth(self) -> int:
        """How many last positions the entries compare: the longest scoped fact's target
        (1 without one)."""
        return max([1] + [len(e.scope.target_ids) for e in self.knn if e.scope is not None])

    def knn_needs_context(self) -> bool:
        """Whether an entry is scoped to a subject or is a scoped fact (it then needs a
        :class:`~lql.runtime.view.KnnContext`)."""
        return any(e.subject or e.scope is not None for e in self.knn)

    def knn_override(self, layer: int, residual_last, ffn_input=None) -> tuple[int, float] | None:
        """The stored target whose key has cosine above its threshold (0.75 without a
        calibrated one) with the vector of its kind at ``layer`` (the best one), as
        ``(token_id, cosine)``; ``None`` when no key matches.

        An entry compares its key with ``residual_last`` (the residual after the layer)
        or ``ffn_input`` (the FFN's normed input at the layer) as its ``key_kind`` says,
        minus its ``center`` when it has one (written by this tool's INSERT)."""
        best = self.knn_match(layer, residual_last, ffn_input)
        return None if best is None else (best[2], best[1])

    def knn_match(self, layer: int, residual_last, ffn_input=None, context: KnnContext | None = None
                  ) -> tuple[KnnEntry, float, int] | None:
        """The best entry at ``layer`` -- the largest margin of its cosine over its threshold
        -- as ``(entry, cosine, token id)``.  An entry with a ``subject`` needs ``context``
        naming it; a scoped entry needs ``context``'s trail (:class:`KnnScope`)."""
        vectors = {"residual": residual_last, "ffn_input": ffn_input}
        best: tuple[float, KnnEntry, float, int] | None = None
        named: dict[str, bool] = {}          # each subject looked for once
        for e in self.knn:
            if e.layer != layer or e.key_kind == "embedding" or vectors.get(e.key_kind) is None:
                continue
            if e.subject:
                if context is None:
                    continue
                if e.subject not in named:
                    named[e.subject] = names_subject(context.text, e.subject)
                if not named[e.subject]:
                    continue
            limit = KNN_THRESHOLD if e.threshold is None else e.threshold
            if e.scope is not None:
                if context is None:
                    continue
                got = e.scope_hit(context.trail.get(layer), context.ids)
                if got is None:
                    continue
                cos, tid = got
            else:
                cos = e.cosine(np.asarray(vectors[e.key_kind], dtype=np.float32).reshape(-1))
                tid = int(e.target_id)
                if not cos > limit:
                    continue
                if e.sibling is not None and e.prompt_form == "chat" and not e.prefix_ids \
                        and e.key_kind == "residual" \
                        and not e.sibling.asks_own(vectors["residual"], SIBLING_MARGIN):
                    continue                 # the entity asked another relation (chat form)
            if best is None or cos - limit > best[0]:
                best = (cos - limit, e, cos, tid)
        return None if best is None else (best[1], best[2], best[3])


# --------------------------------------------------------------------------- the patched view

class OverlayWeights(Mapping):
    """``v.weights`` with the overlay's gate / up / down rows applied (copies; base untouched)."""

    def __init__(self, view: OverlayVindex):
        self._view = view
        self._roles: dict[str, tuple[int, str]] | None = None
        self._cache: dict[str, np.ndarray] = {}
        self._version = -1

    def _base(self) -> VindexWeights:
        return self._view.base.weights

    def __getitem__(self, key: str) -> np.ndarray:
        ov = self._view.overlay
        if self._version != ov.version:
            self._cache.clear()
            self._version = ov.version
        if key in self._cache:
            return self._cache[key]
        if self._roles is None:
            self._roles = ov.layout.key_roles()
        role = self._roles.get(key)
        if role is None:
            return self._base()[key]
        layer, kind = role
        edits = [e for (l, _), e in ov.features.items() if l == layer]
        if not edits and not (kind == "down" and ov.low_rank.get(layer)):
            return self._base()[key]
        out = self._patched(key, kind, edits, layer)
        self._cache[key] = out
        return out

    def _patched(self, key: str, kind: str, edits: list[FeatureEdit],
                 layer: int | None = None) -> np.ndarray:
        lay = self._view.overlay.layout
        if kind == "gate":
            rows = np.array(self._view.gate(edits[0].layer), dtype=np.float32, copy=True)
            return lay.unrows(rows)
        base = np.asarray(self._base()[key], dtype=np.float32)
        if kind == "up":
            rows = np.array(lay.rows(base), dtype=np.float32, copy=True)
            for e in edits:
                if e.up is not None:
                    rows[e.feature] = e.up
            return lay.unrows(rows)
        cols = np.array(lay.columns(base), dtype=np.float32, copy=True)
        for e in edits:
            if e.down is not None:
                cols[:, e.feature] = e.down
        for u, v in self._view.overlay.low_rank.get(layer if layer is not None else -1, []):
            cols += (u @ v.T).astype(np.float32)       # a memit op: ΔW = U·Vᵀ
        return lay.uncolumns(cols)

    def __contains__(self, key: object) -> bool:
        return key in self._base()

    def __iter__(self) -> Iterator[str]:
        return iter(self._base())

    def __len__(self) -> int:
        return len(self._base())

    def shape(self, key: str) -> tuple[int, ...]:
        return self._base().shape(key)          # edits never change a tensor's shape

    def release(self, key: str) -> None:
        """Drop the base's mapped pages of ``key`` from this process (edited copies stay)."""
        release = getattr(self._base(), "release", None)
        if release is not None:
            release(key)

    def entry(self, key: str) -> dict[str, Any] | None:
        return self._base().entry(key)

    def missing(self, keys) -> list[str]:
        return self._base().missing(keys)


class OverlayDownMeta(RecordAccess):
    """``v.down_meta`` with edited features' records replaced (computed from their down
    vectors against the embeddings, or taken from the patch's ``down_meta``)."""

    def __init__(self, view: OverlayVindex):
        self._view = view
        self._cache: dict[int, np.ndarray] = {}
        self._version = -1

    @property
    def _base(self):
        return self._view.base.down_meta

    # the base file's shape (edits replace records, never add or remove them)
    @property
    def path(self) -> Path:
        return self._base.path

    @property
    def num_layers(self) -> int:
        return self._base.num_layers

    @property
    def top_k(self) -> int:
        return self._base.top_k

    @property
    def dtype(self) -> np.dtype:
        return self._base.dtype

    def num_features(self, layer: int) -> int:
        return self._base.num_features(layer)

    def layer_records(self, layer: int) -> np.ndarray:
        ov = self._view.overlay
        if self._version != ov.version:
            self._cache.clear()
            self._version = ov.version
        if layer in self._cache:
            return self._cache[layer]
        base = self._base.layer_records(layer)
        edits = [e for (l, _), e in ov.features.items() if l == layer]
        if not edits:
            return base
        recs = np.array(base, copy=True)
        for e in edits:
            recs[e.feature] = record_for(self._view, e, recs.dtype)
        recs.flags.writeable = False
        self._cache[layer] = recs
        return recs


def record_for(view: OverlayVindex, e: FeatureEdit, dtype: np.dtype) -> np.ndarray:
    """The down_meta record (structured, ``dtype``) of an edited feature."""
    rec = np.zeros((), dtype=dtype)
    if e.deleted:
        return rec
    top_k = dtype["top"].shape[0]
    if e.down is not None:
        scores = np.asarray(view.base.embeddings, dtype=np.float32) @ e.down
        k = min(top_k, scores.shape[0])
        part = np.argpartition(scores, -k)[-k:]
        order = list(part[np.argsort(-scores[part], kind="stable")])
        named = (e.down_meta or {}).get("i")
        if named is not None:
            # an inserted or updated fact names its target: it leads the record (score E·down)
            named = int(named)
            order = [named] + [i for i in order if int(i) != named][:k - 1]
        ids = np.asarray(order, dtype=np.int64)
        rec["top"]["id"][:k] = ids
        rec["top"]["score"][:k] = scores[ids]
        rec["top_token_id"] = ids[0]
        rec["c_score"] = scores[ids[0]]
        return rec
    if e.down_meta:
        tid = int(e.down_meta.get("i", 0))
        c = float(e.down_meta.get("c", 0.0))
        rec["top_token_id"] = tid
        rec["c_score"] = c
        rec["top"]["id"][0] = tid
        rec["top"]["score"][0] = c
        return rec
    base = view.base.down_meta.layer_records(e.layer)[e.feature]
    return np.array(base, copy=True)


class _FromBase(Generic[T]):
    """An :class:`OverlayVindex` attribute read unchanged from its base vindex."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, view: OverlayVindex | None, owner: type | None = None) -> T:
        if view is None:                       # class access (help(), inspect)
            return self                        # type: ignore[return-value]
        return getattr(view.base, self.name)


class OverlayVindex:
    """The base ``Vindex`` seen through an :class:`Overlay` (a ``lql.runtime.VindexView``).

    Edited: ``gate``, ``weights``, ``down_meta``, ``feature_labels``. Every other attribute
    is listed below and read from the base (edits change no shape, text or metadata)."""

    is_overlay = True

    path: _FromBase[Any] = _FromBase()
    index: _FromBase[dict[str, Any]] = _FromBase()
    version: _FromBase[int] = _FromBase()              # the vindex format version
    model: _FromBase[str | None] = _FromBase()
    family: _FromBase[str | None] = _FromBase()
    dtype: _FromBase[str] = _FromBase()
    np_dtype: _FromBase[Any] = _FromBase()
    level: _FromBase[str] = _FromBase()
    source: _FromBase[dict[str, Any]] = _FromBase()
    checksums: _FromBase[dict[str, str]] = _FromBase()
    has_model_weights: _FromBase[bool] = _FromBase()
    model_config: _FromBase[dict[str, Any]] = _FromBase()
    num_layers: _FromBase[int] = _FromBase()
    layers: _FromBase[list[int]] = _FromBase()
    hidden_size: _FromBase[int] = _FromBase()
    intermediate_size: _FromBase[int] = _FromBase()
    vocab_size: _FromBase[int] = _FromBase()
    embed_scale: _FromBase[float] = _FromBase()
    down_top_k: _FromBase[int] = _FromBase()
    layer_bands: _FromBase[dict[str, tuple[int, int]]] = _FromBase()
    layer_bands_derived: _FromBase[bool] = _FromBase()
    embeddings: _FromBase[np.ndarray] = _FromBase()
    tokenizer: _FromBase[Any] = _FromBase()
    tokenizer_config: _FromBase[dict[str, Any]] = _FromBase()
    chat_template: _FromBase[str | None] = _FromBase()
    relation_clusters: _FromBase[dict[str, Any] | None] = _FromBase()
    manifest: _FromBase[list[dict[str, Any]] | None] = _FromBase()

    def num_features(self, layer: int) -> int:
        return self.base.num_features(layer)

    def has_layer(self, layer: int) -> bool:
        return self.base.has_layer(layer)

    def embed(self, ids) -> np.ndarray:
        return self.base.embed(ids)

    def token_text(self, token_id: int) -> str:
        return self.base.token_text(token_id)

    def gate_raw(self, layer: int) -> np.ndarray:
        """The base's stored gate rows (storage dtype; edits not applied — use ``gate``)."""
        return self.base.gate_raw(layer)

    def file_sizes(self) -> dict[str, int]:
        return self.base.file_sizes()

    def verify(self):
        return self.base.verify()

    def __init__(self, base, overlay: Overlay):
        self.base = base
        self.overlay = overlay
        self.weights = OverlayWeights(self)
        self.down_meta = OverlayDownMeta(self)
        self._gates: dict[int, np.ndarray] = {}
        self._gates_version = -1

    def __repr__(self) -> str:
        return f"<OverlayVindex {getattr(self.base, 'path', '?')} +{len(self.overlay.stack)} patches>"

    def gate(self, layer: int) -> np.ndarray:
        ov = self.overlay
        if self._gates_version != ov.version:
            self._gates.clear()
            self._gates_version = ov.version
        if layer in self._gates:
            return self._gates[layer]
        edits = [e for (l, _), e in ov.features.items() if l == layer and e.gate is not None]
        if not edits:
            return self.base.gate(layer)
        rows = np.array(self.base.gate(layer), dtype=np.float32, copy=True)
        for e in edits:
            rows[e.feature] = e.gate
        rows.flags.writeable = False
        self._gates[layer] = rows
        return rows

    @property
    def feature_labels(self) -> dict:
        labels = dict(getattr(self.base, "feature_labels", None) or {})
        for (l, f), e in self.overlay.features.items():
            if e.deleted:
                labels.pop((l, f), None)
            elif e.info.get("relation"):
                labels[(l, f)] = e.info["relation"]
        return labels

    def knn_layers(self) -> set[int]:
        return self.overlay.knn_layers()

    def knn_override(self, layer: int, residual_last, ffn_input=None) -> tuple[int, float] | None:
        return self.overlay.knn_override(layer, residual_last, ffn_input)

    def inserted_edges(self) -> list[dict[str, Any]]:
        """Facts the overlay inserted: COMPOSE features and KNN facts (one row per fact,
        not per entry: a KNN fact has an entry per target token, wording, prompt form
        and its scoped entry)."""
        out = []
        for (l, f), e in sorted(self.overlay.features.items()):
            if e.inserted:
                out.append({"entity": e.info.get("entity"), "relation": e.info.get("relation"),
                            "target": e.info.get("target"), "layer": l, "feature": f,
                            "confidence": e.info.get("confidence"),
                            "mode": e.info.get("mode", "compose"), "source": "inserted"})
        seen: set[tuple] = set()
        for k in self.overlay.knn:
            fact = (k.entity, k.relation, k.target, k.layer)
            if fact in seen:
                continue
            seen.add(fact)
            out.append({"entity": k.entity, "relation": k.relation, "target": k.target,
                        "layer": k.layer, "feature": None, "confidence": k.confidence,
                        "mode": "knn", "source": "inserted"})
        return out


# --------------------------------------------------------------------------- the edit target

def overlay_view(vindex: Any) -> OverlayVindex:
    """The patched view edits go through: ``vindex`` itself when it already is one, else a
    new :class:`OverlayVindex` over it with a fresh :class:`Overlay`.

    Nothing is assigned anywhere: the caller (:meth:`lql.session.Session.edit_overlay`)
    installs the returned view as the session's vindex.
    """
    if isinstance(vindex, OverlayVindex):
        return vindex
    return OverlayVindex(vindex, Overlay(vindex))
