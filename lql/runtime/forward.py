"""Forward passes through a view: next-token prediction with the KNN store, and greedy decoding.

* :func:`predict` / :func:`rank` — the INFER computation: a float64 softmax of the
  model's logits; when the view's overlay holds KNN entries the residual after each of
  their layers is recorded (last position) and :func:`knn_hit` compares it with the
  stored keys; a hit (cosine > 0.75) puts the stored target first (``source = "knn"``),
  distribution ``(1 − c)·p + c·onehot(target)`` with ``c`` the entry's confidence.
* :func:`greedy` — the one greedy decoding loop (KV cache, stop ids, optional KNN pick).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import ExecutionError
from .models import model_for
from .view import KnnContext, VindexView, overlay_of

__all__ = ["softmax64", "top_ids", "prompt_ids", "run", "ffn_inputs", "knn_layers", "knn_hit", "knn_record",
           "knn_context", "knn_depth", "KnnPicker",
           "Prediction", "rank", "rank_many", "states_many", "predict", "greedy", "greedy_ids"]


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Softmax in float64 (no overflow, tiny probabilities kept)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    p: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return p


def top_ids(p: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most probable ids, best first (ties: lower id first)."""
    k = max(1, min(int(k), p.shape[-1]))
    ids = np.argpartition(-p, k - 1)[:k]
    return ids[np.argsort(-p[ids], kind="stable")]


# --------------------------------------------------------------------------- forward

def prompt_ids(view: VindexView, prompt: str) -> list[int]:
    ids = view.tokenizer.encode(prompt).ids
    if not ids:
        raise ExecutionError(f"the prompt {prompt!r} produced no tokens")
    return list(ids)


def run(view: VindexView, prompt_or_ids: str | Sequence[int], *, record: Any = None,
        hooks: Any = None) -> Any:
    """One forward pass of ``view``'s model (overlay edits included) → ``ForwardOutput``."""
    ids = prompt_ids(view, prompt_or_ids) if isinstance(prompt_or_ids, str) else prompt_or_ids
    return model_for(view).forward(list(ids), record=record, hooks=hooks)


def ffn_inputs(view: VindexView, prompt: str | Sequence[int], layers: Iterable[int]) -> dict[int, np.ndarray]:
    """The FFN input (the residual after the FFN's input norm) at the last position, per layer."""
    from ..model import Hooks
    want = set(layers)
    got: dict[int, np.ndarray] = {}

    def grab(layer: int, x: np.ndarray, out: Any) -> Any:
        if layer in want:
            got[layer] = np.array(x[-1], dtype=np.float32, copy=True)
        return out

    run(view, prompt, hooks=Hooks(ffn=grab))
    return got


def states_many(view: VindexView, prompts: Sequence[str | Sequence[int]], layer: int, *,
                every_position: bool = False) -> Any:
    """The FFN input and the residual after ``layer`` at the last position of each prompt
    through ``view``'s model (overlay edits included), the prompts packed into one pass
    that stops after ``layer`` (:meth:`lql.model.Model.forward_many`: ``ffn_inputs[layer]``
    and ``residuals[layer]``, one row per prompt; ``every_position``: also
    ``ffn_inputs_all[layer]``, every position's FFN input per prompt)."""
    seqs = [prompt_ids(view, p) if isinstance(p, str) else list(p) for p in prompts]
    return model_for(view).forward_many(seqs, layers=[layer], logits=False,
                                        every_position=every_position)


# --------------------------------------------------------------------------- KNN store

def knn_layers(view: object) -> list[int]:
    """Layers at which ``view``'s overlay holds KNN keys (``[]`` without an overlay)."""
    ov = overlay_of(view)
    return sorted(ov.knn_layers()) if ov is not None else []


def knn_depth(view: object) -> int:
    """How many last positions the KNN store compares: the longest scoped fact's target
    (a scoped entry writes token ``j`` of its target when the position ``j`` back fired),
    1 without one."""
    ov = overlay_of(view)
    return 1 if ov is None else ov.knn_depth()


def _needs_context(view: object) -> bool:
    ov = overlay_of(view)
    return ov is not None and ov.knn_needs_context()


def _rows(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    return a.reshape(1, -1) if a.ndim == 1 else a


def knn_context(view: object, ids: Sequence[int], output: Any, layers: Iterable[int],
                trail: dict[int, np.ndarray] | None = None) -> Any:
    """The :class:`~lql.edit.overlay.KnnContext` of ``ids`` after ``output`` (the forward
    pass that ended at ``ids``' last token): its text, and per layer the residuals of the
    last positions (``trail``: those before ``output``'s, from earlier passes), or
    ``None`` when no entry needs one."""
    if not _needs_context(view):
        return None
    depth = knn_depth(view)
    rows: dict[int, np.ndarray] = {}
    for layer in layers:
        res = None if output.residuals is None else output.residuals[layer]
        if res is None:
            continue
        got = _rows(res)
        if trail is not None and layer in trail:
            got = np.concatenate([trail[layer], got])
        rows[layer] = got[-depth:]
    text = view.tokenizer.decode([int(t) for t in ids]).lower()   # type: ignore[attr-defined]
    return KnnContext([int(t) for t in ids], text, rows)


def knn_hit(view: object, output: Any, layers: Iterable[int],
            context: Any = None) -> dict[str, Any] | None:
    """The best-matching KNN entry for ``output``'s last-position vectors at ``layers``:
    ``{"layer", "cosine", "target_id", "entity", "relation", "target", "confidence",
    "weight"}`` (weight = confidence clipped to [0, 1]), or ``None``.  ``context``
    (:func:`knn_context`): what entries scoped to a subject compare; without it they
    never fire."""
    ov = overlay_of(view)
    if ov is None or output.residuals is None:
        return None
    best: dict[str, Any] | None = None
    ffn_in = getattr(output, "ffn_inputs", None)
    for layer in layers:
        res = output.residuals[layer]
        if res is None:
            continue
        res = _rows(res)[-1]
        hit = ov.knn_match(layer, res, None if ffn_in is None else ffn_in[layer], context)
        if hit is not None and (best is None or hit[1] > best["cosine"]):
            entry, cos, tid = hit
            best = {"layer": layer, "cosine": cos, "target_id": int(tid),
                    "entity": entry.entity, "relation": entry.relation, "target": entry.target,
                    "confidence": entry.confidence}
    if best is not None:
        best["weight"] = float(min(max(best["confidence"], 0.0), 1.0))
    return best


def knn_record(layers: Iterable[int], record: Any = None) -> Any:
    """``record`` widened to keep what the KNN store compares at ``layers``: the residual
    (at every position, for the scoped entries' trail, unless ``record`` asks for the
    last only) and the FFN input at the last position (a KNN key is one or the other)."""
    layers = list(layers)
    if not layers:
        return record
    from ..model import Record
    if record is None:
        return Record(residuals="all", ffn_inputs=True, layers=frozenset(layers))
    return replace(record, residuals=record.residuals or "all", ffn_inputs=True,
                   layers=None if record.layers is None else record.layers | frozenset(layers))


class KnnPicker:
    """The KNN store across one greedy decoding: ``pick(output)`` is the next token (the
    stored target where an entry fires, else the argmax), keeping the context -- the ids
    so far and the last positions' residuals -- that scoped entries compare."""

    def __init__(self, view: object, layers: Iterable[int], ids: Sequence[int]):
        self.view, self.layers = view, list(layers)
        self.ids = [int(t) for t in ids]
        self.trail: dict[int, np.ndarray] = {}
        self.last_hit: dict[str, Any] | None = None

    def hit(self, output: Any) -> dict[str, Any] | None:
        ctx = knn_context(self.view, self.ids, output, self.layers, self.trail)
        if ctx is not None:
            self.trail = ctx.trail
        self.last_hit = knn_hit(self.view, output, self.layers, ctx)
        return self.last_hit

    def pick(self, output: Any) -> int:
        hit = self.hit(output)
        token = int(hit["target_id"]) if hit is not None else int(np.argmax(output.logits))
        self.ids.append(token)
        return token


# --------------------------------------------------------------------------- prediction

@dataclass
class Prediction:
    """The next-token prediction: ``top`` is ``[(token_id, probability, source)]`` best
    first (``source`` is ``"knn"`` for a KNN override, else ``"model"``)."""
    top: list[tuple[int, float, str]]
    probs: np.ndarray                     # the dense distribution (float64, edits applied)
    output: Any = None                    # the ForwardOutput
    knn: dict[str, Any] | None = None     # the KNN hit (see knn_hit), None without one
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def top1(self) -> int:
        return self.top[0][0]

    def p(self, token_id: int) -> float:
        """Probability of ``token_id`` in the reported distribution."""
        for t, p, _ in self.top:
            if t == token_id:
                return p
        scale = 1.0 - (self.knn["weight"] if self.knn else 0.0)
        return float(self.probs[token_id]) * scale


def rank(model: Any, ids: Sequence[int], top: int, *, view: object = None,
         record: Any = None, hooks: Any = None, cache: Any = None) -> Prediction:
    """Run ``ids`` through ``model`` and rank the next token; ``view``'s KNN store applied;
    ``hooks`` (steering, injection: :class:`lql.model.Hooks`) passed to the forward pass;
    ``cache``: a KV cache the pass fills (to continue from it)."""
    layers = knn_layers(view) if view is not None else []
    out = model.forward(list(ids), record=knn_record(layers, record), hooks=hooks, cache=cache)
    probs = softmax64(out.logits)
    hit = knn_hit(view, out, layers, knn_context(view, ids, out, layers)) if layers else None
    ranked = [(int(t), float(probs[t]), "model")
              for t in top_ids(probs, top + (1 if hit is not None else 0))]
    if hit is not None:
        # the stored target takes over: p' = (1 - w)·p_dense + w·onehot(target), w = confidence
        w, tid = hit["weight"], hit["target_id"]
        rest = [(t, p * (1.0 - w), s) for t, p, s in ranked if t != tid]
        ranked = [(tid, float(probs[tid]) * (1.0 - w) + w, "knn")] + rest
    return Prediction(top=ranked[:max(int(top), 1)], probs=probs, output=out, knn=hit)


def rank_many(model: Any, seqs: Sequence[Sequence[int]], top: int) -> list[Prediction]:
    """:func:`rank` of each of ``seqs`` through the base ``model`` (no view: no KNN store,
    no hooks), run packed in one pass (:meth:`lql.model.Model.forward_many`)."""
    out = []
    packed = model.forward_many([list(s) for s in seqs]).logits
    assert packed is not None
    for logits in packed:
        probs = softmax64(logits)
        out.append(Prediction(top=[(int(t), float(probs[t]), "model") for t in top_ids(probs, top)],
                              probs=probs))
    return out


def predict(view: VindexView, prompt_or_ids: str | Sequence[int], *, top: int = 5,
            record: Any = None, hooks: Any = None) -> Prediction:
    """The INFER computation through ``view`` (overlay edits and KNN store included)."""
    ids = prompt_ids(view, prompt_or_ids) if isinstance(prompt_or_ids, str) else prompt_or_ids
    return rank(model_for(view), ids, top, view=view, record=record, hooks=hooks)


# --------------------------------------------------------------------------- generation

def greedy(model: Any, ids: Sequence[int], n: int, *, stop_ids: Iterable[int] | None = None,
           pick: Callable[[Any], int | None] | None = None, record: Any = None,
           hooks: Any = None, max_positions: int | None = None,
           check: Callable[[], None] | None = None) -> Generator[int, None, str]:
    """Greedy decoding with a KV cache: yields up to ``n`` token ids. A stop id
    (default: the model's ``eos_token_id``s; ``()`` for none) is yielded, then it stops.
    ``pick(output)`` may choose a token before the argmax (the KNN store); ``check()`` is
    called before each step (cancellation). Returns the stop reason (``"eos"``,
    ``"length"``, ``"max_positions"``) as ``StopIteration.value``."""
    stop = frozenset(int(t) for t in (model.spec.eos_token_ids if stop_ids is None else stop_ids))
    cache = model.new_cache()
    out = model.forward(list(ids), cache=cache, record=record, hooks=hooks)
    for step in range(n):
        if check is not None:
            check()
        token = pick(out) if pick is not None else None
        if token is None:
            token = int(np.argmax(out.logits))
        yield token
        if token in stop:
            return "eos"
        if step == n - 1:
            return "length"
        if max_positions is not None and cache.length >= max_positions:
            return "max_positions"
        out = model.forward([token], cache=cache, record=record, hooks=hooks)
    return "length"


def greedy_ids(view: VindexView, ids: Sequence[int], n: int, *,
               to_end_of_turn: bool = True) -> list[int]:
    """The greedy continuation of ``ids`` on ``view`` (its overlay and KNN store applied:
    a stored fact's key picks its token), at most ``n`` tokens; ``to_end_of_turn``: stop at
    the model's end-of-sequence / end-of-turn token, which is not returned."""
    layers = knn_layers(view)
    pick = KnnPicker(view, layers, ids).pick if layers else None
    model = model_for(view)
    stop = frozenset(int(t) for t in model.spec.eos_token_ids) if to_end_of_turn else frozenset()
    out: list[int] = []
    for t in greedy(model, list(ids), n, stop_ids=stop, pick=pick, record=knn_record(layers)):
        if int(t) in stop:
            break
        out.append(int(t))
    return out

