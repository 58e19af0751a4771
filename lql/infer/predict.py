"""INFER: the next-token distribution (TOP n, COMPARE) and GENERATE.

Probabilities are a float64 softmax of the model's float32 logits. The ranking is
:func:`lql.runtime.rank` — through an overlay the dense edits are in the model's
weights, and a KNN-store hit (cosine > 0.75 at its layer) puts the stored target on
top; rows then carry ``source`` (``"knn"`` for the override, ``"model"`` for the rest).
GENERATE is :func:`lql.runtime.greedy` with the same KNN store picking tokens.
"""

from __future__ import annotations

from ..model import Record
from ..result import Result
from ..runtime import KnnPicker, Prediction, greedy, knn_record, rank, softmax64, top_ids

__all__ = ["softmax64", "top_ids", "Prediction", "rank_next", "infer_result", "generate_ids",
           "generate_result", "DEFAULT_TOP"]

DEFAULT_TOP = 5


def rank_next(target, ids, top: int, *, record: Record | None = None,
              hooks=None, cache=None) -> Prediction:
    """Run ``ids`` through ``target`` and rank the next token (KNN store applied;
    ``hooks``: steering / injection, :mod:`lql.steer`; ``cache``: a KV cache to fill)."""
    return rank(target.model, ids, top, view=target.view if target.is_overlay else None,
                record=record, hooks=hooks, cache=cache)


def _rows(target, ranked: Prediction, with_source: bool) -> list[dict]:
    rows = []
    for i, (tid, p, src) in enumerate(ranked.top, 1):
        row = {"rank": i, "token": target.token_text(tid), "token_id": tid, "probability": p}
        if with_source:
            row["source"] = src
        rows.append(row)
    return rows


def infer_result(target, prep, *, top: int | None = None, compare: bool = False,
                 verbose: bool = False, hooks=None, steer_meta: dict | None = None) -> Result:
    top = DEFAULT_TOP if top is None else int(top)
    if top < 1:
        from ..errors import ExecutionError
        raise ExecutionError(f"TOP must be at least 1, not {top}")
    ranked = rank_next(target, prep.ids, top, hooks=hooks)
    with_source = ranked.knn is not None
    rows = _rows(target, ranked, with_source)
    columns = ["rank", "token", "token_id", "probability"] + (["source"] if with_source else [])
    meta = {"prompt": prep.text, "chat_wrapped": prep.chat_wrapped, "num_tokens": len(prep.ids),
            "model": target.name, **(steer_meta or {})}
    message = None
    if ranked.knn is not None:
        k = ranked.knn
        meta["knn"] = {key: k.get(key) for key in ("layer", "cosine", "target_id", "entity",
                                                   "relation", "target", "confidence")}
        message = (f"KNN override at layer {k['layer']} (cosine {k['cosine']:.3f}): "
                   f"{k.get('entity')!s} → {k.get('target')!s}")
    if compare:
        base = target.base()
        dense = ranked if base is target else rank_next(base, prep.ids, top, hooks=hooks)
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

def generate_ids(target, ids, n: int, *, on_token=None, check=None, hooks=None):
    """Greedy decoding (:func:`lql.runtime.greedy`, KNN store applied at each step).
    Yields ``(token_id, new_text)``; stops after an end-of-sequence / end-of-turn id
    (included), after ``n`` tokens, or at the model's last position. ``new_text`` is the
    text this token adds (multi-byte characters are emitted once complete). Returns the
    stop reason via ``StopIteration.value``."""
    layers = target.knn_layers()
    pick = KnnPicker(target.view, layers, ids).pick if layers else None
    rec = knn_record(layers)
    stop = target.stop_ids
    gen = greedy(target.model, ids, n, stop_ids=stop, pick=pick, record=rec, hooks=hooks,
                 max_positions=target.max_positions, check=check)
    produced: list[int] = []
    shown = ""
    while True:
        try:
            token = next(gen)
        except StopIteration as done:
            return done.value
        if token in stop:                # the end-of-turn token adds no text
            yield token, ""
            continue
        produced.append(token)
        text = target.decode(produced)
        new = text[len(shown):] if text.startswith(shown) and not text.endswith("\ufffd") else ""
        if new:
            shown = text
        if on_token is not None and new:
            on_token(new)
        yield token, new


def generate_result(target, prep, n: int, *, on_token=None, check=None, hooks=None,
                    steer_meta: dict | None = None) -> Result:
    if n < 1:
        from ..errors import ExecutionError
        raise ExecutionError(f"GENERATE needs at least 1 token, not {n}")
    gen = generate_ids(target, prep.ids, n, on_token=on_token, check=check, hooks=hooks)
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
                       streamed=on_token is not None, model=target.name, **(steer_meta or {}))
