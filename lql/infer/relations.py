"""DESCRIBE <entity> VIA PROMPTS: ask the model, relation by relation, and report what it answers.

The shipped template set (``data/relation_prompts.json``: ~30 relations — capital,
language, currency, continent, country, located in, occupation, nationality, born in,
known for, made of, colour, is a, used for, …, each with one or two completion templates
and a chat question) is run on the entity:

1. prompt: raw — the relation's question and the template with ``{entity}`` filled in,
   framed as ``Question: <question>\\nAnswer: <template>`` (:data:`RAW_FRAME`), tokenised
   as INFER ``RAW`` does (the bare template drew weaker answers: precision@10 0.411 → 0.569
   on SmolLM2, 0.519 → 0.606 on Gemma 3, 36 entities, docs/BROWSE.md); chat (``CHAT``,
   or the session's ``SET CHAT`` when the model has a template) —
   the relation's question as one user turn, wrapped in the model's chat template, and
   the template's text opening the assistant's answer.
2. one forward pass (:func:`lql.infer.predict.rank_next`, the INFER computation: overlay
   edits and the KNN store included), the :data:`CANDIDATES` most probable next tokens.
3. each candidate with probability ≥ :data:`MIN_P` is completed to a whole word (greedy,
   while the most probable next token continues the word — no leading space, a letter or
   digit — with probability ≥ :data:`CONTINUE_P`, at most :data:`MAX_PIECES` tokens); the
   word is dropped when it is a stop word (``lql.browse.tokens.STOP_WORDS``), a filler of
   the data file ("known", "located", …), has no letter, or is the entity's own word; the
   first :data:`PER_TEMPLATE` surviving words are the template's answers.
4. specificity: the answer's first-token probability minus its mean probability on the
   same template filled with the :data:`REFERENCE_ENTITIES` (ten unrelated fillers —
   Portugal, Nairobi, Galileo, Chopin, copper, horse, …; computed once per model and chat
   mode, on the overlay-free model, the ten prompts of a template packed into one pass:
   :meth:`lql.model.Model.forward_many`): what the template says for *any* entity ("Europe"
   as every continent, "English" as every language, "various") is not something the
   model associates with this one.  An answer with specificity ≤ 0 is dropped.  The
   score is ``p · log(p / b)`` (:func:`_specificity`, the answer's share of the KL
   divergence from the references' distribution); ``p − b`` gave precision@10 0.400
   against 0.364 for plain probability and 0.436 for ``p · log(p / b)`` on SmolLM2 (raw
   bare templates, 36 entities).  Until 2026-12-07 an *answer hub* (a candidate for more
   than 5 of the 10 references) was dropped too; with the question-framed prompts that
   filter cost precision on every model and form measured (docs/BROWSE.md), so it is gone.
   Kinds: the entity is first asked what kind of thing it is (the file's ``types``
   prompt); the next-token mass of each kind's words ("country", "physicist", "metal",
   "company", …) gives its share of place / person / animal / substance / thing /
   organisation (:func:`entity_kinds`), and a relation asked of some kinds only has its
   answers' specificity multiplied by their share, at least :data:`KIND_FLOOR`
   (:func:`relation_weight`; docs/BROWSE.md has the measured effect, small: off-kind
   templates still draw associates).
5. answers merge by word (case-folded) over templates and relations: the edge keeps the
   prompt where it is most specific — its ``probability`` there (the first token's,
   exactly what INFER reports for it on that prompt), ``specificity``, the relation,
   ``word_probability`` (the product over the word's tokens) — plus ``count`` (templates
   that gave it) and ``relations``.
6. sorted by specificity, best first (BRIEF 10 edges, VERBOSE / RAW 30; RAW keeps stop
   words and fillers, skips the baseline and sorts by probability); each shown edge gets
   ``features``: the :data:`TOP_FEATURES`
   features with the largest contribution to its first token on its prompt
   (:func:`lql.infer.attribution.carriers`, EXPLAIN INFER … FOR's ranking).
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExecutionError
from ..model import Record
from ..result import Result
from ..runtime import rank_many
from .predict import rank_next
from .prompt import checked_ids, should_wrap

__all__ = ["Relation", "relations", "fillers", "entity_kinds", "relation_weight", "kind_words",
           "describe_prompts", "relation_prompt",
           "DESCRIBE_PROMPTS_COLUMNS", "CANDIDATES", "MIN_P", "PER_TEMPLATE", "TOP_FEATURES"]

DATA = Path(__file__).with_name("data") / "relation_prompts.json"
CANDIDATES = 8          # next-token candidates looked at per template
MIN_P = 0.01            # a candidate below this probability is not an answer
PER_TEMPLATE = 3        # answers kept per template (2 until 2026-12-07: docs/BROWSE.md)
CONTINUE_P = 0.3        # a word continues with a next piece at least this probable
MAX_PIECES = 4          # tokens per answer word at most
TOP_FEATURES = 3        # carrying features reported per edge
LIMITS = {"BRIEF": 10, "VERBOSE": 30, "RAW": 30}
#: a raw prompt: the relation's question, then the template opening the answer (the
#: bare template alone drew weaker answers from a small base model: module doc, step 1)
RAW_FRAME = "Question: {question}\nAnswer: {completion}"
#: fillers of every template whose answers are the baseline: what a template says for any
#: entity ("Europe" for every continent, "English" for every language) is not specific
REFERENCE_ENTITIES = ("Portugal", "Nairobi", "Galileo", "Chopin", "copper", "horse", "banana",
                      "violin", "Toyota", "glass")
#: the kind words' probability mass below which the kind prompt says nothing
KIND_MIN_MASS = 0.05
#: the least factor on the answers of a relation not asked of the entity's kinds
KIND_FLOOR = 0.3
DESCRIBE_PROMPTS_COLUMNS = ["relation", "target", "probability", "specificity",
                            "word_probability", "count", "features", "prompt"]


@dataclass(frozen=True)
class Relation:
    name: str
    templates: tuple[str, ...]
    question: str
    #: the kinds of entity the relation is asked of (``()``: any; see :func:`entity_kinds`)
    types: tuple[str, ...] = ()


@cache
def _data() -> dict:
    with open(DATA, encoding="utf-8") as fh:
        return dict(json.load(fh))


def relations() -> tuple[Relation, ...]:
    """The shipped relation templates, in file order."""
    return tuple(Relation(name, tuple(r["templates"]), r["question"], tuple(r.get("types", ())))
                 for name, r in _data()["relations"].items())


def kind_prompt() -> Relation:
    """The prompt that asks what kind of thing an entity is (``types.prompt``)."""
    spec = _data()["types"]["prompt"]
    return Relation("kind", tuple(spec["templates"]), spec["question"])


def kind_words() -> dict[str, tuple[str, ...]]:
    """Per kind (place, person, animal, substance, thing, organisation) the words that say
    an entity is of that kind after the kind prompt ("country", "physicist", "metal", …)."""
    return {k: tuple(v) for k, v in _data()["types"]["words"].items()}


def _kind_ids(target) -> dict[str, frozenset[int]]:
    """Per kind, the first tokens of its words after a space (a token two kinds share
    counts for neither)."""
    tok = target.tokenizer
    firsts: dict[str, set[int]] = {}
    for kind, words in kind_words().items():
        for w in words:
            ids = tok.encode(" " + w, add_special_tokens=False).ids
            if ids:
                firsts.setdefault(kind, set()).add(int(ids[0]))
    shared = {t for k, ts in firsts.items() for t in ts
              if sum(t in other for other in firsts.values()) > 1}
    return {k: frozenset(ts - shared) for k, ts in firsts.items()}


def entity_kinds(target, entity: str, *, chat: bool) -> dict[str, float] | None:
    """How much the model takes ``entity`` for each kind: the next-token probability mass
    of each kind's words after the kind prompt ("France is a" → " country"), normalised
    over the kinds; ``None`` when that mass is below :data:`KIND_MIN_MASS` (the model
    does not say: every relation is asked as before)."""
    rel = kind_prompt()
    ids_of = _kind_ids(target)
    mass = dict.fromkeys(ids_of, 0.0)
    for template in rel.templates:
        _text, ids = relation_prompt(target, rel, template, entity, chat=chat)
        probs = np.asarray(rank_next(target, ids, 1).probs, dtype=np.float64)
        for kind, tids in ids_of.items():
            mass[kind] += float(probs[list(tids)].sum()) / len(rel.templates)
    total = sum(mass.values())
    if total < KIND_MIN_MASS:
        return None
    return {k: v / total for k, v in mass.items()}


def relation_weight(rel: Relation, kinds: dict[str, float] | None) -> float:
    """The factor on a relation's answers: the share of the entity's kinds the relation
    is asked of (at least :data:`KIND_FLOOR`); 1 for a relation of any kind or when the
    kinds are unknown."""
    if kinds is None or not rel.types:
        return 1.0
    return max(KIND_FLOOR, min(1.0, sum(kinds.get(t, 0.0) for t in rel.types)))


def fillers() -> frozenset[str]:
    return frozenset(w.casefold() for w in _data()["fillers"])


def relation_prompt(target, rel: Relation, template: str, entity: str, *, chat: bool) -> tuple[str, list[int]]:
    """``(text sent, token ids)`` of one template on ``entity`` (see module doc, step 1)."""
    completion = template.replace("{entity}", entity)
    tok = target.tokenizer
    if chat:
        from ..model.chat import render_chat, special_tokens, user_prompt
        text = render_chat(target.chat_template,
                           user_prompt(rel.question.replace("{entity}", entity), None),
                           special_tokens(target.tokenizer_config), add_generation_prompt=True)
        text += completion
        ids = list(tok.encode(text, add_special_tokens=False).ids)
    else:
        text = RAW_FRAME.format(question=rel.question.replace("{entity}", entity),
                                completion=completion)
        ids = list(tok.encode(text).ids)
    return text, checked_ids(target, text, ids)


@dataclass(frozen=True)
class Baseline:
    """What the templates say for the :data:`REFERENCE_ENTITIES`: per template the mean
    next-token distribution (an answer the model gives whatever the entity is scores
    low against it)."""
    means: dict[tuple[str, str], np.ndarray]


def _special_ids(target) -> frozenset[int]:
    try:
        return frozenset(i for i, t in target.tokenizer.get_added_tokens_decoder().items()
                         if getattr(t, "special", False))
    except AttributeError:                    # older tokenizers
        return frozenset()


def _candidate_ok(target, tid: int, skip: frozenset[str], special: frozenset[int]) -> bool:
    """A first token that can start an answer: not special, not a stop word / filler,
    with a letter."""
    if int(tid) in special:
        return False
    first = target.token_text(tid).strip().casefold()
    return bool(first) and first not in skip and any(ch.isalpha() for ch in first)


def _baseline_build(target, chat: bool) -> Baseline:
    means: dict[tuple[str, str], np.ndarray] = {}
    for rel in relations():
        for template in rel.templates:
            acc = np.zeros(int(target.model.vocab_size), dtype=np.float32)
            prompts = [relation_prompt(target, rel, template, ref, chat=chat)[1] for ref in REFERENCE_ENTITIES]
            # the reference entities' prompts in one packed pass (the base model: no edits)
            for ranked in rank_many(target.model, prompts, CANDIDATES):
                acc += np.asarray(ranked.probs, np.float32)
            means[(rel.name, template)] = acc / np.float32(len(REFERENCE_ENTITIES))
    return Baseline(means)


_BASELINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def baseline(target, chat: bool) -> Baseline:
    """The :class:`Baseline` of ``target``'s overlay-free model for raw or chat prompts
    (computed once per model and chat mode: 10 × ~50 forward passes), so an edit is
    measured against what the base model says for other entities."""
    base = target.base()
    key = base.view
    try:
        per = _BASELINES.setdefault(key, {})
    except TypeError:                        # not weak-referenceable: no memo
        return _baseline_build(base, chat)
    if chat not in per:
        per[chat] = _baseline_build(base, chat)
    return per[chat]


def _specificity(p: float, b: float) -> float:
    """``p · log(p / b)``: the answer's share of the KL divergence of this entity's answer
    distribution from the reference entities' (``b``: its mean reference probability)."""
    return p * float(np.log(p / max(b, 1e-9)))


@dataclass
class _Answer:
    key: str
    word: str
    token_id: int
    probability: float
    specificity: float
    word_probability: float
    relation: str
    prompt: str
    ids: list[int]
    output: Any = None
    probs: Any = None
    count: int = 1
    relations: list[str] = field(default_factory=list)


def _rollback(cache, length: int) -> None:
    """Forget what ``cache`` holds past ``length`` tokens (the next append overwrites it)."""
    for layer in {id(c): c for c in cache.layers}.values():
        layer.length = min(layer.length, length)
    cache.length = length


def _complete(target, cache, tid: int, p: float) -> tuple[str, float]:
    """The whole word starting with token ``tid`` (module doc, step 3) and its probability,
    continued greedily from ``cache`` (the prompt's keys), which is rolled back after."""
    from ..runtime import softmax64
    start = cache.length
    pieces, wp = [int(tid)], float(p)
    try:
        for _ in range(MAX_PIECES - 1):
            probs = softmax64(target.model.forward([pieces[-1]], cache=cache).logits)
            nxt = int(probs.argmax())
            text = target.token_text(nxt)
            if not text or not text[0].isalnum() or probs[nxt] < CONTINUE_P:
                break
            pieces.append(nxt)
            wp *= float(probs[nxt])
    finally:
        _rollback(cache, start)
    return target.decode(pieces).strip(), wp


def _own_words(entity: str) -> set[str]:
    words = {entity.strip().casefold()} | {w.casefold() for w in entity.split()}
    return words | {w.strip("'s") for w in words}


def describe_prompts(target, entity: str, *, chat_mode=None, wrap=None, verbosity=None,
                     layers=None, top_features: int = TOP_FEATURES, contrast: bool = True,
                     check=None) -> Result:
    """The DESCRIBE ... VIA PROMPTS result for ``entity`` on ``target``
    (:class:`lql.infer.engine.Target`); ``layers``: where carrying features are looked for."""
    from ..browse.tokens import STOP_WORDS
    from .attribution import carriers
    if not isinstance(entity, str) or not entity.strip():
        raise ExecutionError('DESCRIBE needs an entity, e.g. DESCRIBE "France" VIA PROMPTS')
    entity = entity.strip()
    verb = str(getattr(verbosity, "value", verbosity) or "BRIEF").upper()
    chat = should_wrap(wrap, chat_mode, bool(target.chat_template))
    filtered = verb != "RAW"
    skip = (STOP_WORDS | fillers()) if filtered else frozenset()
    own = _own_words(entity)
    special = _special_ids(target)
    base = baseline(target, chat) if (contrast and filtered) else None
    kinds = entity_kinds(target, entity, chat=chat) if base is not None else None
    answers: dict[str, _Answer] = {}
    n_prompts = 0
    for rel in relations():
        weight = relation_weight(rel, kinds)
        for template in rel.templates:
            if check is not None:
                check()
            text, ids = relation_prompt(target, rel, template, entity, chat=chat)
            n_prompts += 1
            cache = target.model.new_cache()
            ranked = rank_next(target, ids, CANDIDATES, record=Record(ffn_activations=True),
                               cache=cache)
            taken = 0
            for tid, p, _src in ranked.top:
                if p < MIN_P or taken >= PER_TEMPLATE:
                    break
                if filtered and not _candidate_ok(target, tid, skip, special):
                    continue                  # a stop word / filler / punctuation: no answer
                word, wp = _complete(target, cache, tid, p)
                key = word.casefold().strip(".,;:!?\"'()")
                if not key or key in own or key.rstrip("s") in own or (filtered and (key in skip or not any(
                        ch.isalpha() for ch in key))):
                    continue
                spec = _specificity(float(p), float(base.means[(rel.name, template)][tid])) \
                    if base is not None else float(p)
                if base is not None and spec <= 0:
                    continue                  # no more likely here than for any entity
                spec *= weight                # a relation not asked of this kind of entity
                taken += 1
                a = answers.get(key)
                if a is None:
                    a = answers[key] = _Answer(key, word, int(tid), float(p), spec, wp, rel.name,
                                               text, ids, ranked.output, ranked.probs, 0)
                elif spec > a.specificity:
                    a.word, a.token_id, a.probability, a.word_probability = word, int(tid), float(p), wp
                    a.specificity = spec
                    a.relation, a.prompt, a.ids, a.output, a.probs = rel.name, text, ids, ranked.output, ranked.probs
                a.count += 1
                if rel.name not in a.relations:
                    a.relations.append(rel.name)
    edges = sorted(answers.values(), key=lambda a: (-a.specificity, a.key))
    limit = LIMITS.get(verb, 10)
    rows = []
    for a in edges[:limit]:
        feats = carriers(target.model, target.model_config, a.output.ffn_activations, a.probs,
                         a.token_id, layers=layers, top=top_features) if top_features else []
        rows.append({"relation": a.relation, "target": a.word,
                     "probability": round(a.probability, 6),
                     "specificity": round(a.specificity, 6),
                     "word_probability": round(a.word_probability, 6), "count": a.count,
                     "features": [f"L{l}:F{f}" for _s, l, f, _act in feats],
                     "prompt": a.prompt, "token_id": a.token_id, "relations": list(a.relations),
                     "contributions": [round(s, 4) for s, _l, _f, _act in feats]})
    message = None if rows else "(no edges found)"
    return Result.table("DESCRIBE", DESCRIBE_PROMPTS_COLUMNS, rows, message=message,
                        entity=entity, via="PROMPTS", verbosity=verb.lower(), chat_wrapped=chat,
                        prompts=n_prompts, total_edges=len(edges), found=True,
                        kinds=None if kinds is None else {k: round(v, 4) for k, v in kinds.items()})
