"""INSERT: build the patch operation that installs a fact (MODE COMPOSE or KNN).

Both modes read the model on the fact's canonical prompt (``prompts.py``) at
the install layer L (default: one below the top of the knowledge band).

**Template centering.**  At the last position of a prompt most of the
residual is the template itself: "The capital of Atlantis is" and "The
capital of France is" have residual cosine ≈ 0.9 at SmolLM2's layer 22.  So
both modes subtract a *center*: the mean of the same vector on the same
template filled with :data:`REFERENCE_ENTITIES` (the entity itself left out).
What remains is what the entity contributes.

**KNN.**  key = normalise(r_L − center_r), r_L the residual after layer L at
the last position; stored with the target's first token id and the center
(``center_vector_b64``).  At INFER the entry fires when
cos(r_L − center, key) > 0.75.  On a BROWSE vindex (no forward pass) the key
is the entity's mean token embedding × embed_scale, with no center.

**COMPOSE.**  A real FFN feature in the free (all-zero gate) or weakest
(smallest ‖gate‖·‖up‖·‖down‖) slot of layer L.  With u the FFN input (after
the FFN's input norm) on the canonical prompt and c its template center, the
gate is the vector w in span{u − c, c} with w·u = +A and w·c = −3A: it is
positive only past 3/4 of the way from the template's center to this entity
(the same 0.75 as KNN), so the feature stays silent on other entities and
other prompts.  A is the largest |gate_f·u| among the layer's own features
(the base model's, not features INSERT added: those would compound over a
batch).  up = w·(A_up/A) with A_up the largest |up_f·u|.  down points along
the target's unembedding direction as the final norm sees it (head[target] ⊙
final-norm weight), scaled so that on the canonical prompt the feature
writes a vector of norm 10·ALPHA·‖r_L‖ (ALPHA 0.10: as long as the residual
stream at L).  REBALANCE rescales down later.  The gate is also kept off at the
earlier positions of the fact's and the fillers' prompts and after the target
(:func:`selective_direction`, :func:`_earlier_positions`).
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ExecutionError
from ..runtime import can_forward, model_for, run, states_many
from .overlay import OverlayVindex, ffn_layout
from .patch import PatchOp
from .prompts import canonical_prompt, paraphrase_templates, template_for

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["ordinary_chunks", "REFERENCE_ENTITIES", "DEFAULT_ALPHA", "install_layer", "target_token", "compose_op",
           "knn_op", "choose_slot", "unembed_direction", "GATE_THRESHOLD", "quiet_older",
           "install_compose"]

#: fillers of a template whose mean is the template's "center"
REFERENCE_ENTITIES = ("France", "Japan", "Brazil", "Egypt", "Canada", "India", "John Smith",
                      "Maria Lopez")
DEFAULT_ALPHA = 0.10
#: fraction of the way from the template center to the entity where the gate turns on
GATE_THRESHOLD = 0.75
#: ALPHA × this × ‖r_L‖ is the norm the feature writes on its canonical prompt
ALPHA_UNIT = 10.0


def install_layer(view: VindexView, at_layer: int | None) -> int:
    n = int(view.num_layers)
    if at_layer is not None:
        if not 0 <= at_layer < n:
            raise ExecutionError(f"layer {at_layer} out of range 0..{n - 1}")
        return int(at_layer)
    bands = getattr(view, "layer_bands", None) or {}
    know = bands.get("knowledge")
    if know:
        return max(int(know[0]), int(know[1]) - 1)
    return max(0, (3 * n) // 4 - 1)


def target_token(view: VindexView, target: str) -> tuple[int, str]:
    """The first token of the target as it follows a prompt (leading space added)."""
    text = target if target.startswith(" ") else " " + target.strip()
    ids = view.tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise ExecutionError(f"target {target!r} does not tokenize")
    return int(ids[0]), view.token_text(int(ids[0]))


def target_tokens(view: VindexView, target: str) -> list[int]:
    """Every token of the target as it follows a prompt (leading space added)."""
    text = target if target.startswith(" ") else " " + target.strip()
    ids = [int(i) for i in view.tokenizer.encode(text, add_special_tokens=False).ids]
    if not ids:
        raise ExecutionError(f"target {target!r} does not tokenize")
    return ids


def reply_tokens(view: VindexView, target: str) -> list[int]:
    """Every token of the target as the start of a chat reply (no leading space)."""
    ids = [int(i) for i in view.tokenizer.encode(target.strip(), add_special_tokens=False).ids]
    if not ids:
        raise ExecutionError(f"target {target!r} does not tokenize")
    return ids


def fact_sequence(view: VindexView, prompt: str, prefix: tuple[int, ...] = (), *,
                  chat: bool = False) -> tuple[int, ...]:
    """The token ids of ``prompt`` followed by the target tokens already produced;
    ``chat``: the prompt sent as one user turn in the model's chat template (what INFER
    runs under SET CHAT AUTO), the target then being the start of the reply."""
    from ..runtime import prompt_ids
    ids = chat_prompt_ids(view, prompt) if chat else prompt_ids(view, prompt)
    return tuple(ids) + tuple(int(i) for i in prefix)


def chat_prompt_ids(view: VindexView, prompt: str) -> list[int]:
    """``prompt`` as one user turn in the model's chat template, with the generation
    prompt (the ids INFER ... CHAT runs)."""
    from ..model.chat import chat_token_ids, special_tokens, user_prompt
    template = getattr(view, "chat_template", None)
    if not template:
        raise ExecutionError("this model has no chat template: a fact cannot be installed "
                             "for chat-wrapped prompts")
    return chat_token_ids(view.tokenizer, template, user_prompt(prompt),
                          special_tokens(view.tokenizer_config))


def _seq(view: VindexView, prompt: str, prefix: tuple[int, ...], chat: bool) -> str | tuple[int, ...]:
    """What a forward pass is given for ``prompt`` + ``prefix``: the text itself when it is
    a raw prompt with no prefix (tokenised by the runtime), else the ids."""
    return fact_sequence(view, prompt, prefix, chat=chat) if (prefix or chat) else prompt


#: look-alike tokens the down direction is contrasted with (" Py" vs "Py", " Es" vs "Es")
NEIGHBOURS = 8


def unembed_direction(view: VindexView, token_id: int) -> np.ndarray:
    """Unit vector in the residual basis along the target's unembedding direction as the
    final norm sees it (head row ⊙ final-norm weight), contrasted with its
    :data:`NEIGHBOURS` most similar head rows so the target itself wins, not a look-alike."""
    m = model_for(view)
    head = np.asarray(m.head, dtype=np.float32)
    row = head[token_id]
    cos = (head @ row) / (np.linalg.norm(head, axis=1) * float(np.linalg.norm(row)) + 1e-12)
    cos[token_id] = -np.inf
    nbrs = np.argpartition(-cos, NEIGHBOURS)[:NEIGHBOURS]
    d = row - head[nbrs].mean(0)
    if str(view.model_config.get("norm_type", "rms")) == "rms":
        w = np.asarray(m.final_norm(np.ones((1, row.shape[0]), dtype=np.float32))[0], np.float32)
        d = d * w
    n = float(np.linalg.norm(d))
    if n == 0.0:
        raise ExecutionError(f"token {token_id} has a zero unembedding row")
    return (d / n).astype(np.float32)


def _references(entity: str) -> list[str]:
    low = entity.strip().lower()
    return [e for e in REFERENCE_ENTITIES if e.lower() != low]


def _centers(view: VindexView, template: str, entity: str, layer: int, want: str,
             prefix: tuple[int, ...] = (), chat: bool = False) -> np.ndarray:
    """Mean over the reference fillers of the FFN input (``want="ffn"``) or the residual
    after the layer (``want="residual"``) at the last position."""
    prompts = [_seq(view, template.replace("{entity}", ref), prefix, chat)
               for ref in _references(entity)]
    packed = states_many(view, prompts, layer)         # the references in one packed pass
    vecs = packed.ffn_inputs[layer] if want == "ffn" else packed.residuals[layer]
    return np.mean(vecs, axis=0).astype(np.float32)


def choose_slot(view: VindexView, layer: int, exclude: AbstractSet[int] = frozenset()) -> tuple[int, str]:
    """A free feature slot (all-zero gate, not edited) or else the weakest one."""
    g = np.asarray(view.gate(layer), dtype=np.float32)
    lay = view.overlay.layout if hasattr(view, "overlay") else None
    gn = np.linalg.norm(g, axis=1)
    taken = set(exclude)
    if hasattr(view, "overlay"):
        taken |= {f for (l, f) in view.overlay.features if l == layer}
    free = [int(f) for f in np.flatnonzero(gn == 0) if int(f) not in taken]
    if free:
        return free[0], "free"
    strength = gn.copy()
    if lay is not None:
        up_key, down_key = lay.up_key(layer), lay.down_key(layer)
        if up_key and up_key in view.weights:
            strength *= np.linalg.norm(lay.rows(np.asarray(view.weights[up_key])), axis=1)
        if down_key in view.weights:
            strength *= np.linalg.norm(lay.columns(np.asarray(view.weights[down_key])), axis=0)
    for f in np.argsort(strength, kind="stable"):
        if int(f) not in taken:
            return int(f), "weakest"
    raise ExecutionError(f"layer {layer} has no feature slot left")


@dataclass
class InsertPlan:
    op: PatchOp
    layer: int
    feature: int | None
    slot: str | None
    prompt: str
    target_id: int
    target_text: str
    seq: tuple[int, ...] = ()           # prompt ids + the target prefix (whole targets)


def compose_op(view: OverlayVindex, entity: str, relation: str, target: str, *, layer: int,
               alpha: float | None = None, confidence: float | None = None,
               prompt: str | None = None, prefix: tuple[int, ...] = (),
               token: int | None = None, push: float = 1.0, chat: bool = False,
               ref_prefixes: Mapping[str, tuple[int, ...]] | None = None) -> InsertPlan:
    """``prefix``/``token``: for a multi-token target, the feature that produces target
    token ``token`` after the prompt and the target tokens ``prefix`` (one per token);
    ``ref_prefixes``: each reference filler's own prefix where it is not ``prefix`` (a
    chat reply that names the entity before the target: DELETE in chat replies).
    ``chat``: keyed on the prompt sent as a user turn in the chat template (the feature
    starts the reply); its op records ``prompt_form: "chat"``."""
    from ..model import Record
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    template = template_for(relation, prompt)
    base_text = canonical_prompt(entity, relation, prompt)
    tid, ttext = _token_of(view, target, token)
    seq = fact_sequence(view, base_text, prefix, chat=chat)
    text = base_text + "".join(view.token_text(int(i)) for i in prefix)
    u = _ffn_input(view, seq, layer)
    negatives = _negatives(view, template, entity, text, layer, prefix, chat, ref_prefixes)
    c = negatives[:len(_references(entity))].mean(0)
    # and the fact's own sequence once this token is written, and a little further on:
    # without these a later token's feature fired again further on in the reply
    # ("Poseidon and theidon and the seaidon" in a chat reply on SmolLM2)
    after = (tuple(seq) + (tid,), tuple(seq) + (tid,) + tuple(
        view.tokenizer.encode(AFTER_TARGET, add_special_tokens=False).ids))
    negatives = np.concatenate([negatives, np.stack(_ffn_inputs(view, list(after), layer))])
    earlier = np.concatenate([_earlier_positions(view, template, entity, seq, layer),
                              _ordinary_positions(view, layer, multilingual=push < 0)])
    if float(np.linalg.norm(u - c)) < 1e-6 * max(1.0, float(np.linalg.norm(u))):
        raise ExecutionError(f"the entity {entity!r} does not change the model's state on "
                             f"{text!r} at layer {layer}; try another layer or PROMPT")
    lay = view.overlay.layout
    # the magnitudes come from the model's own features (the base vindex), never from
    # features INSERT put here: measured against those, each new gate and up vector was a
    # multiple of the last one's and a batch of facts at one layer grew them geometrically
    # until the FFN overflowed (Gemma 3 270M, layer 12: 45 facts, gate·x ≈ 2·10¹³)
    base = getattr(view, "base", view)
    gates = np.asarray(base.gate(layer), dtype=np.float32)
    a_gate = float(np.max(np.abs(gates @ u)))
    up_key = lay.up_key(layer)
    w = selective_direction(u, negatives, earlier)
    gate = w * a_gate
    feature, slot = choose_slot(view, layer)
    vectors = {"gate": gate}
    if up_key and up_key in view.weights:          # a gated (GLU) FFN
        a_up = float(np.max(np.abs(lay.rows(np.asarray(base.weights[up_key])) @ u)))
        vectors["up"] = w * a_up
        act = _activation(view, a_gate) * a_up    # the feature's activation on the prompt
    else:
        # a dense FFN (GPT-2): act(gate·u + bias); the slot keeps its base bias
        act = _activation(view, a_gate + _ffn_bias(view, layer, feature))
    if act <= 0:
        raise ExecutionError(f"the new feature would not fire on {text!r} at layer {layer}; "
                             f"try another AT LAYER")
    out = run(view, seq, record=Record(residuals="last", layers=frozenset([layer])))
    r_norm = float(np.linalg.norm(out.residuals[layer]))
    direction = unembed_direction(view, tid) * np.float32(1.0 if push >= 0 else -1.0)
    if has_post_ffn_norm(view, layer):
        # Gemma 2/3/4: the FFN output is RMS-normed before it joins the residual, so the
        # down vector is solved through that norm (see post_norm_down)
        down = post_norm_down(view, seq, layer, direction, alpha, act)
    else:
        down = _through_post_norm(view, layer, direction)
        down = down * (ALPHA_UNIT * alpha * r_norm / act)
    vectors["down"] = down
    emb = np.asarray(view.embed([tid]), dtype=np.float32)[0]
    op = PatchOp.make("insert", layer=layer, feature=feature, relation=relation, entity=entity,
                      target=target, confidence=1.0 if confidence is None else float(confidence),
                      mode="compose" if push >= 0 else "suppress", alpha=alpha, prompt=text,
                      prefix_ids=[int(i) for i in prefix] or None,
                      prompt_form="chat" if chat else None,
                      down_meta={"t": ttext.strip(), "i": tid, "c": float(emb @ down)},
                      vectors=vectors)
    return InsertPlan(op, layer, feature, slot, text, tid, ttext, seq)


def _feature_sequence(view: VindexView, e) -> tuple[int, ...] | None:
    """The sequence an inserted feature was keyed on (its prompt and target prefix), from
    what its op records; ``None`` when it cannot be rebuilt."""
    text = e.info.get("prompt")
    if not text:
        return None
    prefix = tuple(int(i) for i in (e.info.get("prefix_ids") or ()))
    suffix = "".join(view.token_text(i) for i in prefix)
    if suffix and not str(text).endswith(suffix):
        return None
    base_text = str(text)[:len(str(text)) - len(suffix)] if suffix else str(text)
    return fact_sequence(view, base_text, prefix, chat=e.info.get("prompt_form") == "chat")


def quiet_older(overlay, view: VindexView, plan: InsertPlan) -> int:
    """Make the COMPOSE features INSERT put in ``plan``'s layer earlier silent on
    ``plan``'s sequence (and on it once the token is written, and " and the" after it)
    where they fire there: each one's gate (and up vector) gets the smallest change that
    keeps its value on its own sequence and sets it to the negative margin on those (an
    ``update`` op in the recording patch).  A new fact's
    feature is solved against the earlier facts' prompts, but not the other way round:
    measured on SmolLM2, "The capital of Germany is" → " Tokyo" fired on "The official
    language of Germany is" and the language fact could not be installed (P 0.000).
    Returns how many features changed."""
    ov = overlay
    layer = plan.layer
    seq = tuple(plan.seq) if plan.seq else None
    if seq is None:
        return 0
    after = view.tokenizer.encode(AFTER_TARGET, add_special_tokens=False).ids
    new_seqs = [seq, seq + (plan.target_id,), seq + (plan.target_id,) + tuple(after)]
    xs = np.stack(_ffn_inputs(view, new_seqs, layer)).astype(np.float64)
    me = (plan.op.get("entity"), plan.op.get("relation"), plan.op.get("target"))
    changed = 0
    for (l, f), e in sorted(ov.features.items()):
        if l != layer or not e.inserted or e.gate is None or f == plan.feature \
                or e.info.get("mode") != "compose" \
                or (e.info.get("entity"), e.info.get("relation"), e.info.get("target")) == me:
            continue
        g = np.asarray(e.gate, np.float64)
        loud = xs[xs @ g > 0.0]
        if not len(loud):
            continue
        own = _feature_sequence(view, e)
        if own is None:
            continue
        u = _ffn_input(view, own, layer).astype(np.float64)
        a = float(g @ u)
        if a <= 0.0:
            continue
        w = g / a
        X = np.concatenate([u[None], loud])
        gram = X @ X.T
        want = np.concatenate([[0.0], NEGATIVE_MARGIN - loud @ w])
        delta = X.T @ np.linalg.solve(gram + 1e-6 * float(np.trace(gram)) * np.eye(len(X)),
                                      want)
        vectors = {"gate": (w + delta) * a}
        if e.up is not None:
            up = np.asarray(e.up, np.float64)
            vectors["up"] = (w + delta) * float(up @ u)
        ov.record(PatchOp.make("update", layer=layer, feature=f, vectors=vectors,
                               reason=f"quiet on {plan.prompt!r}"))
        changed += 1
    return changed


#: prompts of other kinds the inserted feature must stay silent on
GENERIC_NEGATIVES = ("Once upon a time", "The weather today is", "My favourite food is",
                     "He opened the door and", "The best way to learn is",
                     "Water boils at a temperature of", "The author of Hamlet is",
                     "In the morning I usually")
#: text after a whole target on which its features must be silent again
AFTER_TARGET = " and the"
#: pre-activation (in units of the target's) the gate must reach on each negative
NEGATIVE_MARGIN = -3.0
#: and on the earlier positions of the fact's and the reference fillers' prompts
QUIET_MARGIN = -1.0
#: rounds of adding the earlier positions where the gate still fires
QUIET_ROUNDS = 4


def _ffn_input(view: VindexView, prompt: str | tuple[int, ...], layer: int) -> np.ndarray:
    """FFN input at ``layer`` (last position), memoised per overlay state below ``layer``."""
    return _ffn_inputs(view, [prompt], layer)[0]


def _ffn_inputs(view: VindexView, prompts: Sequence[str | tuple[int, ...]], layer: int) -> list[np.ndarray]:
    """:func:`_ffn_input` of each prompt; those not memoised run packed in one pass."""
    def compute(todo: list) -> list[np.ndarray]:
        vecs = states_many(view, todo, layer).ffn_inputs[layer]
        return [vecs[j].copy() for j in range(len(todo))]
    return _memoised(view, "_ffn_input_cache", 4096, prompts, layer, compute)


#: states of unedited layers shared by every session of the process (:func:`_memoised`):
#: least recently used first, at most this many bytes
SHARED_BYTES = 256 << 20
_SHARED: OrderedDict[tuple, np.ndarray] = OrderedDict()
_SHARED_SIZE = [0]


def _base_fingerprint(view: VindexView) -> tuple | None:
    """What identifies the base vindex's weights across sessions: its folder and its
    ``index.json``'s size and modification time (a re-extraction changes them)."""
    base = getattr(view, "base", view)
    path = getattr(base, "path", None)
    if path is None:
        return None
    try:
        st = os.stat(Path(path) / "index.json")
    except OSError:
        return None
    return (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def _shared_put(key: tuple, value: np.ndarray) -> None:
    if key in _SHARED:
        return
    _SHARED[key] = value
    _SHARED_SIZE[0] += int(value.nbytes)
    while _SHARED_SIZE[0] > SHARED_BYTES and _SHARED:
        _, old = _SHARED.popitem(last=False)
        _SHARED_SIZE[0] -= int(old.nbytes)


def _memoised(view: VindexView, name: str, limit: int, prompts: Sequence, layer: int,
              compute, *, after: bool = False) -> list[np.ndarray]:
    """``compute(todo)`` of each prompt not yet in the overlay's cache ``name`` (keyed by
    the prompt, ``layer`` and the overlay's edits below it -- at it too for states
    ``after`` the layer: what the states depend on), each computed once per call; the
    cache is cleared past ``limit``.  When none of those layers is edited the states are
    the base model's, and a process-wide cache (:data:`SHARED_BYTES`, keyed by the base
    vindex) serves every session: an INSERT in a new session does not recompute its
    reference prompts."""
    ov = getattr(view, "overlay", None)
    top = layer + 1 if after else layer
    below: tuple = () if ov is None else tuple(sorted(
        (l, f, id(e)) for (l, f), e in ov.features.items() if l < top)) + tuple(sorted(
            (l, "low_rank", len(v)) for l, v in ov.state.low_rank.items() if l < top))
    cache = getattr(ov, name, None) if ov is not None else None
    if ov is not None and cache is None:
        cache = {}
        setattr(ov, name, cache)
    keys = [(p, layer, below) for p in prompts]
    got = {k: cache[k] for k in keys if cache is not None and k in cache}
    fp = _base_fingerprint(view) if not below else None
    for k in keys if fp is not None else ():
        shared = (fp, name, k[0], layer)
        if k not in got and shared in _SHARED:
            _SHARED.move_to_end(shared)
            got[k] = _SHARED[shared]
    todo = list(dict.fromkeys(k for k in keys if k not in got))
    if todo:
        new = dict(zip(todo, compute([k[0] for k in todo])))
        got.update(new)
        if cache is not None:
            if len(cache) > limit:
                cache.clear()
            cache.update(new)
        if fp is not None:
            for k, v in new.items():
                _shared_put((fp, name, k[0], layer), v)
    return [got[k] for k in keys]


def _negatives(view: VindexView, template: str, entity: str, prompt: str, layer: int,
               prefix: tuple[int, ...] = (), chat: bool = False,
               ref_prefixes: Mapping[str, tuple[int, ...]] | None = None) -> np.ndarray:
    """FFN inputs the new feature must not fire on: the template with the reference
    fillers (first, in order; followed by the same target prefix, or each filler's own
    from ``ref_prefixes``), generic prompts, and
    other facts already inserted here (each in the prompt form it was installed for);
    ``chat``: the fillers and generic prompts chat-wrapped like the fact's."""
    own_prefix = ref_prefixes or {}
    prompts: list = [_seq(view, template.replace("{entity}", r), own_prefix.get(r, prefix), chat)
                     for r in _references(entity)]
    prompts += [_seq(view, g, (), chat) for g in GENERIC_NEGATIVES]
    if chat:
        # a chat-form feature must stay silent on raw prompts as well: keyed on a chat
        # context it was otherwise free to fire on raw ones (SmolLM2, 10 facts in both
        # forms: raw efficacy 1.0 → 0.5, specificity 0.8 → 0.2)
        prompts += [template.replace("{entity}", r) for r in _references(entity)]
        prompts += list(GENERIC_NEGATIVES)
    own = _seq(view, prompt, (), chat)
    ov = getattr(view, "overlay", None)
    if ov is not None:
        for (l, _), e in sorted(ov.features.items()):
            p = e.info.get("prompt")
            if not (l == layer and e.inserted and p):
                continue
            q = _seq(view, p, (), e.info.get("prompt_form") == "chat")
            if q != own and q not in prompts:
                prompts.append(q)
    return np.stack(_ffn_inputs(view, prompts, layer))


def _earlier_positions(view: VindexView, template: str, entity: str, seq: tuple[int, ...],
                       layer: int) -> np.ndarray:
    """FFN inputs the feature must not fire at although no last position is there: every
    position but the last of the fact's own sequence and of the template filled with the
    reference entities, and, on a model with a chat template, every position of those
    prompts sent as chat user turns (one packed pass, every position recorded).

    A gate silent at the last position of "The capital of Sweden is" can still fire at
    " Sweden", and what it writes there reaches the last position through attention (a
    feature did: pre-activation 18 at the entity, −21 at the end; alone it turned
    SmolLM2's " Stockholm" into " the"); and a raw-keyed gate fired inside chat prompts
    (SmolLM2, 10 facts: every neighbourhood prompt's chat reply changed).  The chat user
    turns come with the base model's greedy reply to them (:func:`_with_reply`): a raw
    DELETE's suppression feature changed a third of the siblings' chat replies, in the
    reply."""
    from ..runtime import prompt_ids
    chat = bool(getattr(view, "chat_template", None))
    raw = tuple(tuple(prompt_ids(view, template.replace("{entity}", r)))
                for r in _references(entity))
    wrapped = tuple(_with_reply(view, tuple(chat_prompt_ids(view, template.replace("{entity}", r))))
                    for r in _references(entity)) if chat else ()
    refs = _every_position(view, (tuple(seq),), layer, drop_last=True)
    return np.concatenate([refs, _every_position(view, raw, layer, drop_last=True),
                           _every_position(view, wrapped, layer, drop_last=False)])


#: tokens of the base model's chat reply a gate is kept quiet on (:func:`_with_reply`)
REPLY_QUIET = 12
_REPLIES: dict[tuple, tuple[int, ...]] = {}


def _with_reply(view: VindexView, ids: tuple[int, ...]) -> tuple[int, ...]:
    """``ids`` (a chat-wrapped user turn) followed by the *base* model's greedy reply, at
    most :data:`REPLY_QUIET` tokens, the end of the turn not included (memoised per base
    vindex and sequence)."""
    from ..runtime import greedy_ids
    base = getattr(view, "base", view)
    key = (id(base), ids)
    if key not in _REPLIES:
        reply = greedy_ids(base, ids, REPLY_QUIET)
        if len(_REPLIES) > 512:
            _REPLIES.clear()
        _REPLIES[key] = ids + tuple(reply)
    return _REPLIES[key]


#: tokens per chunk of the ordinary text a gate must stay silent on
ORDINARY_CHUNK = 96


def _ordinary_positions(view: VindexView, layer: int, *, multilingual: bool = False) -> np.ndarray:
    """The FFN inputs at every position of ordinary text (the covariance sample MEMIT
    uses, ``lql/edit/data/covariance_sample.txt``, in chunks; ``multilingual``: and
    :func:`_multilingual_text`, for DELETE's suppression features): a gate must not fire
    in text that has nothing to do with its fact (those of its positions where a gate
    fires join the earlier positions' active set, :func:`selective_direction`).
    Measured with ``benchmarks/eval_edits.py``, batches of 10 facts: fluency (n-gram
    entropy of free generations) 4.04 → 4.45 on SmolLM2, 3.40 → 3.98 on Gemma 3 270M.
    The other languages are for suppression features only: on INSERT's gates they cost
    SmolLM2's held-out paraphrases at 10 facts 0.17 → 0.10 (COMPOSE) for no gain."""
    chunks = ordinary_chunks(view)
    if multilingual:
        chunks += ordinary_chunks(view, _multilingual_text())
    return _every_position(view, chunks, layer, drop_last=False)


@functools.cache
def _multilingual_text() -> str:
    """Ordinary text in eight other languages (``lql/edit/data/ordinary_multilingual.txt``):
    a model's chat reply to another entity may switch language (SmolLM2: "The capital of
    Mexico is" → "El capital de la …", Russia's in Cyrillic), and a DELETE feature fitted
    on English text alone fired there harder than on its own fact."""
    return (Path(__file__).parent / "data" / "ordinary_multilingual.txt").read_text(encoding="utf-8")


def ordinary_chunks(view: VindexView, text: str | None = None) -> tuple[tuple[int, ...], ...]:
    """The token ids of ordinary text (``text``, else the shipped sample MEMIT's covariance
    uses, ``lql/edit/data/covariance_sample.txt``) in chunks of :data:`ORDINARY_CHUNK`
    tokens, a last chunk under 8 tokens left out."""
    from .memit import SAMPLE
    if text is None:
        text = SAMPLE.read_text(encoding="utf-8")
    ids = view.tokenizer.encode(text, add_special_tokens=False).ids
    return tuple(tuple(ids[lo:lo + ORDINARY_CHUNK]) for lo in range(0, len(ids), ORDINARY_CHUNK)
                 if len(ids[lo:lo + ORDINARY_CHUNK]) >= 8)


def _every_position(view: VindexView, seqs: tuple[tuple[int, ...], ...], layer: int, *,
                    drop_last: bool) -> np.ndarray:
    """The FFN inputs at every position of ``seqs`` (``drop_last``: but their last), those
    not memoised (:func:`_memoised`, like :func:`_ffn_inputs`) in one packed pass; rows
    repeated across sequences (a chat template's shared prefix) kept once."""
    if not seqs:
        return np.zeros((0, int(view.hidden_size)), np.float32)

    def compute(todo: list) -> list[np.ndarray]:
        packed = states_many(view, todo, layer, every_position=True)
        return [np.asarray(x, np.float32) for x in packed.ffn_inputs_all[layer]]
    got = _memoised(view, "_every_position_cache", 1024, seqs, layer, compute)
    return np.unique(np.concatenate([x[:-1] if drop_last else x for x in got]), axis=0)


def selective_direction(u: np.ndarray, negatives: np.ndarray,
                        quiet: np.ndarray | None = None) -> np.ndarray:
    """The smallest ``w`` (ridge-regularised) with ``w·u = 1`` and ``w·x = -3`` for each
    negative ``x``: a gate that is positive on ``u`` and off on the negatives.  Each of
    ``quiet`` (earlier positions) must come out at ``w·x ≤ 0``: those that do not are
    added as constraints ``w·x = -1`` and ``w`` solved again (a few rounds) — only the
    ones that need it, since every equality costs norm and a larger gate fires more
    elsewhere (all of them at −3 or −1 made SmolLM2's generic text degenerate)."""
    quiet = np.zeros((0, len(u)), np.float32) if quiet is None else np.asarray(quiet)
    active = np.zeros(len(quiet), dtype=bool)
    best: np.ndarray | None = None
    for _ in range(QUIET_ROUNDS):
        X = np.concatenate([u[None], negatives, quiet[active]]).astype(np.float64)
        b = np.concatenate([[1.0], np.full(len(negatives), NEGATIVE_MARGIN),
                            np.full(int(active.sum()), QUIET_MARGIN)])
        gram = X @ X.T
        lam = 1e-4 * float(np.trace(gram)) / len(gram)
        w = X.T @ np.linalg.solve(gram + lam * np.eye(len(gram)), b)
        s = float(w @ u)
        if s <= 0:
            if best is None:
                raise ExecutionError("cannot separate the entity from the template at this "
                                     "layer; try another AT LAYER or PROMPT")
            break              # too many constraints for the width: keep the last gate
        best = w / s
        loud = (quiet.astype(np.float64) @ best) > 0.0
        if not (loud & ~active).any():
            break
        active |= loud
    assert best is not None
    return best.astype(np.float32)


def _token_of(view: VindexView, target: str, token: int | None) -> tuple[int, str]:
    """The token a feature / KNN entry writes: ``token`` (one of a whole target's tokens)
    when given, else the target's first token."""
    if token is None:
        return target_token(view, target)
    return int(token), view.token_text(int(token))


#: the vector INSERT ... MODE KNN keys a fact by (:data:`lql.edit.patch.KNN_KEY_KINDS`)
DEFAULT_KNN_KEY = "residual"


def _knn_vector(view: VindexView, prompt, layer: int, key_kind: str) -> np.ndarray:
    """The last position's vector a KNN key of ``key_kind`` compares at ``layer``."""
    return _knn_vectors(view, [prompt], layer, key_kind)[0]


def _knn_vectors(view: VindexView, prompts: Sequence, layer: int, key_kind: str) -> list[np.ndarray]:
    """:func:`_knn_vector` of each prompt, those not memoised in one packed pass."""
    def compute(todo: list) -> list[np.ndarray]:
        packed = states_many(view, todo, layer)
        vecs = packed.ffn_inputs[layer] if key_kind == "ffn_input" else packed.residuals[layer]
        return [np.asarray(vecs[j], np.float32).copy() for j in range(len(todo))]
    return _memoised(view, f"_knn_{key_kind}_cache", 4096, prompts, layer, compute,
                     after=key_kind == "residual")


def knn_op(view: VindexView, entity: str, relation: str, target: str, *, layer: int,
           confidence: float | None = None, prompt: str | None = None,
           prefix: tuple[int, ...] = (), token: int | None = None,
           key_kind: str | None = None, chat: bool = False,
           wording: str | None = None) -> InsertPlan:
    """An ``insert_knn`` op keyed by ``key_kind`` (:data:`DEFAULT_KNN_KEY` when None):
    the centred vector of that kind on the canonical prompt, with a calibrated
    threshold; without weights, the entity's mean embedding (``"embedding"``).
    ``wording``: keyed on that other template of the relation instead (a paraphrase
    twin, its op records ``paraphrase: true``; its threshold is calibrated on that
    wording: keys are centred per wording, and another wording's prompts come out far
    from them — SmolLM2, cosine 0.0–0.3)."""
    kind = DEFAULT_KNN_KEY if key_kind is None else key_kind
    if kind not in ("residual", "ffn_input"):
        raise ExecutionError(f"KNN key kind {kind!r}: use 'residual' or 'ffn_input'")
    tid, ttext = _token_of(view, target, token)
    canonical = template_for(relation, prompt)
    template = canonical if wording is None else wording
    base_text = template.replace("{entity}", entity) if wording is not None \
        else canonical_prompt(entity, relation, prompt)
    text = base_text + "".join(view.token_text(int(i)) for i in prefix)
    seq = fact_sequence(view, base_text, prefix, chat=chat) if can_forward(view) else ()
    center = None
    if not can_forward(view):
        if wording is not None:
            raise ExecutionError("a paraphrase KNN key needs a forward pass (INFERENCE level)")
        ids = view.tokenizer.encode(" " + entity.strip(), add_special_tokens=False).ids
        if not ids:
            raise ExecutionError(f"entity {entity!r} does not tokenize")
        key = np.asarray(view.embed(ids), dtype=np.float32).mean(0) * float(view.embed_scale)
        kind = "embedding"
    else:
        r = _knn_vector(view, seq, layer, kind)
        center = _centers(view, template, entity, layer,
                          "ffn" if kind == "ffn_input" else "residual", prefix, chat)
        key = r - center
    n = float(np.linalg.norm(key))
    if n == 0.0:
        raise ExecutionError(f"the key for {entity!r} at layer {layer} is zero")
    vectors = {"key": key / n}
    threshold = None
    if center is not None:
        vectors["center"] = center
        threshold = knn_threshold(view, template, entity, layer, key / n, center, prefix,
                                  key_kind=kind, chat=chat)
    op = PatchOp.make("insert_knn", layer=layer, entity=entity, relation=relation, target=target,
                      key_kind=kind,
                      target_id=tid, confidence=1.0 if confidence is None else float(confidence),
                      prompt=text, prefix_ids=[int(i) for i in prefix] or None,
                      prompt_form="chat" if chat else None,
                      paraphrase=True if wording is not None else None,
                      subject=entity if center is not None else None,
                      threshold=threshold, vectors=vectors)
    return InsertPlan(op, layer, None, None, text, tid, ttext, seq)


#: off-topic contexts of a scoped fact's entity: its threshold sits above them
#: (:func:`scope_op`); none of them is a prompt of ``benchmarks/data/counterfact_edits.json``
SCOPE_OFF = ("{entity} is famous for its", "{entity} is known for", "I went to {entity} last year and",
             "The weather in {entity} is", "{entity} is a", "The history of {entity} is",
             "My friend told me about {entity} and", "{entity} has a population of",
             "What do you think of {entity}? I think", "Tell me about {entity}.", "{entity}")
#: a scoped fact keeps this many rival keys (every other relation's canonical wording,
#: then the nearest to its own)
SCOPE_RIVALS = 32
#: its threshold is at least this far above the off-topic contexts' cosine
SCOPE_MARGIN = 0.03


def _ordinary_mean(view: VindexView, layer: int) -> np.ndarray:
    """The mean residual after ``layer`` over every position of the shipped text sample
    (what a scoped key is centred on), memoised like the other states."""
    from ..model import Record

    def compute(todo: list) -> list[np.ndarray]:
        rows = [np.asarray(run(view, chunk, record=Record(residuals="all",
                                                          layers=frozenset({layer})))
                           .residuals[layer], np.float64)
                for chunk in ordinary_chunks(view)]
        return [np.concatenate(rows).mean(axis=0).astype(np.float32)]
    return _memoised(view, "_ordinary_mean_cache", 64, ["ordinary"], layer, compute,
                     after=True)[0]


def _unit_rows(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=1, keepdims=True)
    out: np.ndarray = (m / np.where(n > 0, n, 1.0)).astype(np.float32)
    return out


def rival_templates(relation: str, own: Sequence[str], *, wordings: bool = True) -> list[str]:
    """Every other relation's templates in the table (:data:`~lql.edit.prompts.TEMPLATES`
    and, with ``wordings``, :data:`~lql.edit.prompts.PARAPHRASES`): what the entity may be
    asked instead of ``relation`` (aliases of it and the ``own`` templates left out)."""
    from .prompts import PARAPHRASES, TEMPLATES, same_relation
    own_set = {t.strip().lower() for t in own}
    rel = same_relation(relation)
    out: list[str] = []
    for name in dict.fromkeys([*TEMPLATES, *(PARAPHRASES if wordings else ())]):
        if same_relation(name) == rel:       # the fact's own relation, in any spelling
            continue
        for t in (TEMPLATES.get(name), *(PARAPHRASES.get(name, ()) if wordings else ())):
            if t and t.strip().lower() not in own_set and t not in out:
                out.append(t)
    return out


def scope_op(view: VindexView, entity: str, relation: str, target: str, ids: Sequence[int], *,
             layer: int, confidence: float | None = None, prompt: str | None = None,
             chat: bool = False) -> PatchOp:
    """A *scoped* KNN entry for a fact (:class:`lql.edit.overlay.KnnScope`): it answers
    the relation asked about the entity in wordings INSERT never saw, and writes the whole
    target.

    Keys: the residual after ``layer`` at the last position of each of the fact's
    wordings (the canonical one and :func:`~lql.edit.prompts.paraphrase_templates`)
    filled with the entity, minus the mean over ordinary text (not the template center:
    what is compared here is which relation is asked, the entity being checked by name).
    Rivals: the same for every other relation's wordings in the table
    (:data:`~lql.edit.prompts.TEMPLATES`, :data:`~lql.edit.prompts.PARAPHRASES`):
    :data:`SCOPE_RIVALS` kept, the canonical ones first, then the nearest.
    Threshold: above the entity's off-topic contexts
    (:data:`SCOPE_OFF`) by :data:`SCOPE_MARGIN`, and at least halfway from them to the
    least similar pair of the fact's own wordings.  Measured on
    ``benchmarks/data/counterfact_edits.json`` (held-out wordings, the same entity):
    SmolLM2 layer 22 fires on 108/180 paraphrases, 2/900 other relations' wordings,
    0/300 off-topic contexts.  ``chat``: every wording sent as a chat user turn (the
    keys then compare the reply's first position), ``ids`` the reply's target tokens."""
    canonical = template_for(relation, prompt)
    own_t = [canonical, *paraphrase_templates(relation, prompt)]
    rival_t = rival_templates(relation, own_t)
    fill = [_seq(view, t.replace("{entity}", entity), (), chat)
            for t in own_t + rival_t + list(SCOPE_OFF)]
    vecs = np.stack(_knn_vectors(view, fill, layer, "residual")).astype(np.float64)
    mu = _ordinary_mean(view, layer)
    unit = _unit_rows(vecs - mu)
    own, rivals, off = np.split(unit, [len(own_t), len(own_t) + len(rival_t)])
    near = (rivals @ own.T).max(axis=1)
    # every other relation's canonical wording stays a rival (in a base model's chat
    # reply the wordings are so alike that "nearest 32" could leave one out: Gemma 3
    # fired India's currency fact on "The capital of India is"); the rest by nearness
    canon = set(rival_templates(relation, own_t, wordings=False))
    order = sorted(range(len(rival_t)), key=lambda i: (rival_t[i] not in canon, -near[i]))
    rivals = rivals[order[:max(SCOPE_RIVALS, len(canon))]]
    off_max = float((off @ own.T).max())
    limit = off_max + SCOPE_MARGIN
    if len(own) > 1:
        g = own @ own.T
        np.fill_diagonal(g, -1.0)
        limit = max(limit, 0.5 * (float(g.max(axis=1).min()) + off_max))
    limit = float(min(KNN_MAX_THRESHOLD, limit))
    tid, _ = _token_of(view, target, int(ids[0]))
    return PatchOp.make("insert_knn", layer=layer, entity=entity, relation=relation,
                        target=target, key_kind="residual", target_id=tid,
                        confidence=1.0 if confidence is None else float(confidence),
                        prompt=canonical_prompt(entity, relation, prompt), subject=entity,
                        prompt_form="chat" if chat else None, scope=True,
                        target_ids=[int(t) for t in ids], threshold=limit,
                        vectors={"key": own[0], "center": mu,
                                 **({"alt_keys": own[1:]} if len(own) > 1 else {}),
                                 "rivals": rivals})


def knn_plans(view: VindexView, entity: str, relation: str, target: str, ids: Sequence[int], *,
              layer: int, confidence: float | None = None, prompt: str | None = None,
              chat: bool = False) -> list[InsertPlan]:
    """Every KNN op INSERT records for a fact in one prompt form: one per target token
    (token i keyed on the prompt followed by the target's first i tokens), on the
    canonical prompt and, for the raw form, on each of the relation's other wordings
    (:func:`~lql.edit.prompts.paraphrase_templates`).  The canonical ones come first; a
    scoped entry (:func:`scope_op`, in either form) comes last.  The other wordings'
    plain keys are not made for the chat form: on SmolLM2 they left the chat paraphrase
    rate where it was (0.07–0.10 against 0.13) and made a chat INSERT 4× slower."""
    wordings: list[str | None] = [None]
    if can_forward(view) and not chat:
        wordings += list(paraphrase_templates(relation, prompt))
    plans = [knn_op(view, entity, relation, target, layer=layer, confidence=confidence,
                    prompt=prompt, prefix=tuple(ids[:i]), token=tid, chat=chat, wording=w)
             for w in wordings for i, tid in enumerate(ids)]
    if can_forward(view) and ids:
        # and one scoped entry: the relation asked in other words (scope_op)
        op = scope_op(view, entity, relation, target, ids, layer=layer, confidence=confidence,
                      prompt=prompt, chat=chat)
        text = canonical_prompt(entity, relation, prompt)
        plans.append(InsertPlan(op, layer, None, None, text, int(ids[0]),
                                view.token_text(int(ids[0])), fact_sequence(view, text, chat=chat)))
    return plans


#: a KNN key's threshold sits this far above the closest sibling's cosine
KNN_MARGIN = 0.05
#: and never above this (the canonical prompt itself has cosine 1)
KNN_MAX_THRESHOLD = 0.95


#: the neighbours a KNN key's threshold is calibrated against: entities of many kinds
#: (countries, cities, people, athletes, books, companies, things), since a fact about a
#: book or a company has its near neighbours among those, not among countries.  None of
#: them is an entity or neighbour of ``benchmarks/data/counterfact_edits.json``.
KNN_NEIGHBOURS = ("Portugal", "Chile", "Nigeria", "Nairobi", "Chicago", "Galileo", "Napoleon",
                  "Marie Curie", "Usain Bolt", "Pete Sampras", "Ulysses", "Jane Eyre",
                  "Siemens", "Pepsi", "copper", "violin")


def knn_threshold(view: VindexView, template: str, entity: str, layer: int,
                  key: np.ndarray, center: np.ndarray, prefix: tuple[int, ...] = (), *,
                  key_kind: str = "residual", chat: bool = False) -> float:
    """A calibrated threshold for a KNN key: above the cosine of every near neighbour (the
    key's template filled with :data:`KNN_NEIGHBOURS` not used for the center, and the
    generic negatives) by :data:`KNN_MARGIN`, at least ``KNN_THRESHOLD`` (0.75).  The
    entity asked another relation is not calibrated against here (that raised Gemma 3's
    thresholds past its held-out paraphrases: 0.80 → 0.47); in the chat form the fact's
    scoped entry silences the plain keys there (:meth:`lql.edit.overlay.KnnEntry.asks_own`)."""
    from .overlay import KNN_THRESHOLD
    refs = {e.lower() for e in REFERENCE_ENTITIES} | {entity.strip().lower()}
    prompts: list = [_seq(view, template.replace("{entity}", e), prefix, chat)
                     for e in KNN_NEIGHBOURS if e.lower() not in refs]
    prompts += [_seq(view, g, (), chat) for g in GENERIC_NEGATIVES[:3]]
    worst = -1.0
    for v in _knn_vectors(view, prompts, layer, key_kind):
        r = v - center
        nr = float(np.linalg.norm(r))
        if nr > 0:
            worst = max(worst, float(key @ r) / nr)
    return float(min(KNN_MAX_THRESHOLD, max(KNN_THRESHOLD, worst + KNN_MARGIN)))


def scale_down(overlay, op: PatchOp, factor: float) -> None:
    """Scale an inserted feature's down vector by ``factor``, with what the op records of
    it (``alpha``, ``down_meta.c``), and tell the overlay (INSERT's calibration, DELETE's
    suppression strength)."""
    down = op.vector("down")
    assert down is not None, "a feature op without a down vector"
    op.set_vector("down", down * np.float32(factor))
    op.data["alpha"] = float(op.data.get("alpha", DEFAULT_ALPHA)) * float(factor)
    meta = dict(op.data.get("down_meta") or {})
    if "c" in meta:
        meta["c"] = float(meta["c"]) * float(factor)
    op.data["down_meta"] = meta
    overlay._changed()


def calibrate_compose(overlay, view: VindexView, plan: InsertPlan, max_doublings: int = 3) -> dict:
    """After ``plan.op`` is recorded: double its down vector (at most ``max_doublings``
    times) until the target is top-1 on the canonical prompt.  Returns what happened."""
    from ..runtime import predict
    op = plan.op
    scale = 1.0

    def rescale(factor):
        scale_down(overlay, op, factor)

    # the response is not monotonic (it can dip, then rise; or collapse when the push
    # derails the later layers): take the first doubling that puts the target on top,
    # else the scale where its probability was highest
    seq = plan.seq or plan.prompt
    p = predict(view, seq, top=1)
    best = (float(p.probs[plan.target_id]), 1.0, p)
    for _ in range(max_doublings):
        if p.top1 == plan.target_id:
            break
        rescale(2.0)
        scale *= 2.0
        p = predict(view, seq, top=1)
        if float(p.probs[plan.target_id]) > best[0]:
            best = (float(p.probs[plan.target_id]), scale, p)
    if p.top1 != plan.target_id and best[1] != scale:
        rescale(best[1] / scale)
        scale, p = best[1], best[2]
    return {"retrieved": p.top1 == plan.target_id, "probability": p.top[0][1]
            if p.top1 == plan.target_id else float(p.probs[plan.target_id]),
            "scale": scale, "alpha": float(op.data.get("alpha", DEFAULT_ALPHA))}


@dataclass
class Installed:
    """What :func:`install_compose` did: the plan, its calibration, how many earlier
    features it made silent, and whether recording started an auto-patch."""
    plan: InsertPlan
    calibration: dict
    quieted: int
    started: bool


def install_compose(overlay, view: OverlayVindex, entity: str, relation: str, target: str,
                    **kw) -> Installed:
    """One COMPOSE feature the way INSERT installs it (and COMPACT MINOR, and the
    evaluation): :func:`compose_op` (``kw`` its options), recorded, the layer's earlier
    features made silent on it (:func:`quiet_older`), then calibrated."""
    plan = compose_op(view, entity, relation, target, **kw)
    started = overlay.record(plan.op)
    quieted = quiet_older(overlay, view, plan)
    return Installed(plan, calibrate_compose(overlay, view, plan), quieted, started)


def _ffn_bias(view: VindexView, layer: int, feature: int) -> float:
    """The FFN input bias of ``feature`` (GPT-2's ``c_fc.bias``), 0.0 when there is none."""
    key = ffn_layout(view).gate_key(layer)
    if key.endswith(".weight"):
        bias = key[:-len(".weight")] + ".bias"
        if bias in view.weights:
            return float(np.asarray(view.weights[bias])[feature])
    return 0.0


def _through_post_norm(view: VindexView, layer: int, direction: np.ndarray) -> np.ndarray:
    """The FFN-output direction that lands on ``direction`` in the residual stream.  Families
    with a post-FFN norm (Gemma 2/3 "sandwich" norms: ``post_feedforward_layernorm``, weight
    applied as ``1 + w``) multiply the FFN output elementwise by the norm's scale, so the down
    vector is divided by it first (an RMS norm then only rescales it).  Unit length."""
    block = model_for(view).blocks[layer]
    norm = getattr(block, "post_ffn_norm", None)
    if norm is None:
        return direction
    scale = np.asarray(norm(np.ones((1, direction.shape[0]), np.float32))[0], np.float64)
    safe = np.where(np.abs(scale) < 1e-3, np.copysign(1e-3, scale + 1e-12), scale)
    d = direction / safe
    return (d / float(np.linalg.norm(d))).astype(np.float32)


def has_post_ffn_norm(view: VindexView, layer: int) -> bool:
    """Whether ``layer``'s FFN output passes a norm before it joins the residual (Gemma 2/3/4)."""
    return getattr(model_for(view).blocks[layer], "post_ffn_norm", None) is not None


def raw_ffn_output(view: VindexView, prompt, layer: int) -> np.ndarray:
    """The FFN's raw output (before a post-FFN norm) at ``layer``, last position."""
    from ..model import Hooks
    got: dict[str, np.ndarray] = {}

    def grab(l: int, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if l == layer:
            got["o"] = np.array(out[-1], dtype=np.float64, copy=True)
        return out

    run(view, prompt, hooks=Hooks(ffn=grab))
    return got["o"]


#: strength of a post-norm push: the written vector's RMS is this × ALPHA × rms(FFN output)
POST_NORM_UNIT = 30.0


def post_norm_down(view: VindexView, prompt, layer: int, direction: np.ndarray,
                   alpha: float, act: float) -> np.ndarray:
    """The down vector for a layer whose FFN output ``o`` goes through an RMS norm ``N``
    with scale ``s`` before it joins the residual (Gemma 2/3/4 sandwich norms).

    ``N`` maps every output onto the ellipsoid ``rms(y/s) = 1``, so how far one feature can
    push is capped, and it is not capped equally in every direction: the largest
    ``direction·y`` on the ellipsoid is at ``y ∝ s²⊙direction``, reached by a pre-norm
    output along ``s⊙direction``.  So the feature writes ``x ∝ s⊙direction`` with
    ``rms(x) = POST_NORM_UNIT·alpha·rms(o)``; the normed output is then
    ``N(o + x)``, tending to the optimum as ``alpha`` grows.  Measured on Gemma 3 270M
    (the raw FFN output replaced by ``s⊙direction`` at layers 12–17 of 18): the target
    becomes top-1 with P > 0.99 for "The capital of Atlantis is" → " Poseidon" and
    "The capital of France is" → " Rome"; pushing along ``direction`` itself (what the
    norm then shrinks to ‖direction‖/rms(direction/s) ≈ 20–300, against ‖r_L‖ ≈ 10⁴) does
    nothing.  ``down = x / act``."""
    norm = model_for(view).blocks[layer].post_ffn_norm
    o = raw_ffn_output(view, prompt, layer)
    scale = np.asarray(norm(np.ones((1, o.shape[0]), np.float32))[0], np.float64)
    want = scale * np.asarray(direction, np.float64)

    def rms(v: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.square(v))))

    x = want * (POST_NORM_UNIT * alpha * rms(o) / max(rms(want), 1e-30))
    return (x / act).astype(np.float32)


def _activation(view: VindexView, x: float) -> float:
    from ..model.ffn import ACTIVATIONS, silu
    fn = ACTIVATIONS.get(str(view.model_config.get("activation", "silu")), silu)
    return float(fn(np.array([x], dtype=np.float32))[0])
