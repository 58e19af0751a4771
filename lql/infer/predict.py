"""INFER: the next-token distribution (TOP n, COMPARE) and GENERATE.

Probabilities are a float64 softmax of the model's float32 logits. Through an
overlay, the prediction is :func:`lql.edit.forward.predict` — the dense edits
are in the model's weights, and a KNN-store hit (cosine > 0.75 at its layer)
puts the stored target on top; rows then carry ``source`` (``"knn"`` for the
override, ``"model"`` for the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..model import Record
from ..result import Result

__all__ = ["softmax64", "Ranked", "rank_next", "infer_result", "generate_result", "DEFAULT_TOP"]

DEFAULT_TOP = 5


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Softmax in float64 (no overflow, tiny probabilities kept)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_ids(p: np.ndarray, k: int) -> np.ndarray:
    k = max(1, min(int(k), p.shape[-1]))
    ids = np.argpartition(-p, k - 1)[:k]
    return ids[np.argsort(-p[ids], kind="stable")]


@dataclass
class Ranked:
    """The next-token prediction: ``top`` is ``[(token_id, probability, source)]`` best first."""
    top: list[tuple[int, float, str]]
    probs: np.ndarray                     # the dense distribution (float64)
    output: object = None                 # the ForwardOutput
    knn: dict | None = None
    extra: dict = field(default_factory=dict)


def rank_next(target, ids, top: int, *, record: Record | None = None) -> Ranked:
    """Run ``ids`` through ``target`` and rank the next token (KNN store applied)."""
    if target.is_overlay and target.knn_layers():
        from ..edit.forward import predict
        pred = predict(target.view, list(ids), top=top, record=record)
        out = pred.output
        probs = softmax64(out.logits)
        if pred.knn is None:             # no hit: same as dense, but with float64 probabilities
            return Ranked([(int(t), float(probs[t]), "model") for t in top_ids(probs, top)],
                          probs, out)
        return Ranked([(int(t), float(p), s) for t, p, s in pred.top], probs, out, pred.knn)
    out = target.model.forward(list(ids), record=record)
    probs = softmax64(out.logits)
    return Ranked([(int(t), float(probs[t]), "model") for t in top_ids(probs, top)], probs, out)


def _rows(target, ranked: Ranked, with_source: bool) -> list[dict]:
    rows = []
    for i, (tid, p, src) in enumerate(ranked.top, 1):
        row = {"rank": i, "token": target.token_text(tid), "token_id": tid, "probability": p}
        if with_source:
            row["source"] = src
        rows.append(row)
    return rows


def infer_result(target, prep, *, top: int | None = None, compare: bool = False,
                 verbose: bool = False) -> Result:
    top = DEFAULT_TOP if top is None else int(top)
    if top < 1:
        from ..errors import ExecutionError
        raise ExecutionError(f"TOP must be at least 1, not {top}")
    ranked = rank_next(target, prep.ids, top)
    with_source = ranked.knn is not None
    rows = _rows(target, ranked, with_source)
    columns = ["rank", "token", "token_id", "probability"] + (["source"] if with_source else [])
    meta = {"prompt": prep.text, "chat_wrapped": prep.chat_wrapped, "num_tokens": len(prep.ids),
            "model": target.name}
    message = None
    if ranked.knn is not None:
        k = ranked.knn
        meta["knn"] = {key: k.get(key) for key in ("layer", "cosine", "target_id", "entity",
                                                   "relation", "target", "confidence")}
        message = (f"KNN override at layer {k['layer']} (cosine {k['cosine']:.3f}): "
                   f"{k.get('entity')!s} → {k.get('target')!s}")
    if compare:
        base = target.base()
        dense = ranked if base is target else rank_next(base, prep.ids, top)
        for row, (tid, p, _) in zip(rows, dense.top):
            row.update(dense_token=target.token_text(tid), dense_token_id=tid, dense_probability=p)
        columns += ["dense_token", "dense_token_id", "dense_probability"]
        if base is target:
            message = "no edits in this session: the dense (unedited) prediction is the same"
        meta["compare"] = "overlay vs base" if base is not target else "no overlay"
    if verbose:
        meta["token_ids"] = list(prep.ids)
        text = f"prompt sent ({len(prep.ids)} tokens{', chat-wrapped' if prep.chat_wrapped else ''}):\n" \
               f"{prep.text}"
        message = text if message is None else f"{message}\n{text}"
    return Result.table("INFER", columns, rows, message=message, **meta)


# --------------------------------------------------------------------------- GENERATE

def _knn_token(target, out) -> int | None:
    """A KNN-store hit at the last position → its target id (best cosine), else None."""
    best = None
    for layer in target.knn_layers():
        res = out.residuals[layer] if out.residuals is not None else None
        if res is None:
            continue
        hit = target.view.knn_override(layer, res)
        if hit is not None and (best is None or hit[1] > best[1]):
            best = hit
    return None if best is None else int(best[0])


def generate_ids(target, ids, n: int, *, on_token=None, check=None):
    """Greedy decoding with a KV cache. Yields ``(token_id, new_text)``; stops after an
    end-of-sequence / end-of-turn id (included), after ``n`` tokens, or at the model's
    last position. ``new_text`` is the text this token adds (multi-byte characters are
    emitted once complete). Returns the stop reason via ``StopIteration.value``."""
    model = target.model
    knn_layers = target.knn_layers()
    rec = Record(residuals="last", layers=frozenset(knn_layers)) if knn_layers else None
    stop = target.stop_ids
    limit = target.max_positions
    cache = model.new_cache()
    out = model.forward(list(ids), cache=cache, record=rec)
    produced: list[int] = []
    shown = ""
    for step in range(n):
        if check is not None:
            check()
        token = _knn_token(target, out) if knn_layers else None
        if token is None:
            token = int(np.argmax(out.logits))
        if token in stop:                # the end-of-turn token adds no text
            yield token, ""
            return "eos"
        produced.append(token)
        text = target.decode(produced)
        new = text[len(shown):] if text.startswith(shown) and not text.endswith("\ufffd") else ""
        if new:
            shown = text
        if on_token is not None and new:
            on_token(new)
        yield token, new
        if step == n - 1:
            return "length"
        if limit is not None and cache.length >= limit:
            return "max_positions"
        out = model.forward([token], cache=cache, record=rec)
    return "length"


def generate_result(target, prep, n: int, *, on_token=None, check=None) -> Result:
    if n < 1:
        from ..errors import ExecutionError
        raise ExecutionError(f"GENERATE needs at least 1 token, not {n}")
    gen = generate_ids(target, prep.ids, n, on_token=on_token, check=check)
    tokens: list[int] = []
    reason = "length"
    while True:
        try:
            tid, _ = next(gen)
        except StopIteration as stop:
            reason = stop.value or reason
            break
        tokens.append(tid)
    text = target.decode(tokens[:-1] if reason == "eos" else tokens)
    return Result.text("INFER", text, prompt=prep.text, chat_wrapped=prep.chat_wrapped,
                       token_ids=tokens, num_tokens=len(tokens), stop=reason,
                       streamed=on_token is not None, model=target.name)
