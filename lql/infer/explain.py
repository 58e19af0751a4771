"""EXPLAIN INFER: the prediction plus, per layer, the FFN features that fired most
at the last position, and (WITH ATTENTION) the heads that attended hardest.

* Features are ranked by ``|activation|`` — the FFN hidden value
  ``act(gate·x) · (up·x)`` at the last position (the coefficient of the feature's
  down vector in the FFN output); the signed value is reported. Each row carries
  the feature's label (``v.feature_labels``) and its down vector's top output
  tokens (down_meta; on live weights, the down column projected on the embeddings).
* Heads are ranked by their largest attention weight from the last position to
  any position other than the first (position 0 is the usual "attention sink";
  a one-token prompt keeps it); the row names that position and its token.
* Mixture-of-experts layers (Gemma 4) add rows ``kind = "expert"``: the experts the
  router chose at the last position, in the router's order (largest weight first),
  with ``expert`` (its id) and ``router_weight`` (its top-k-renormalised probability
  times ``router.per_expert_scale`` — the factor its output is multiplied by). The
  ``ffn`` rows of such a layer are the dense FFN's features. Models without experts
  get neither the rows nor the columns.
"""

from __future__ import annotations

import numpy as np

from ..errors import ExecutionError
from ..model import Record
from ..result import Result
from .predict import DEFAULT_TOP, rank_next
from .trace import select_layers

__all__ = ["explain", "explain_for", "for_token_id", "FOR_TOP"]


def explain(target, prep, *, layers=None, top: int | None = None, verbose: bool = False,
            with_attention: bool = False, check=None) -> Result:
    top = DEFAULT_TOP if top is None else int(top)
    if top < 1:
        raise ExecutionError(f"TOP must be at least 1, not {top}")
    model = target.model
    chosen = select_layers(layers, model.num_layers)
    knn = target.knn_layers()
    moe = bool(getattr(model, "model_config", None) and model.model_config.get("num_experts"))
    rec = Record(ffn_activations=True, attention="last" if with_attention else None,
                 residuals="last" if knn else None,
                 layers=None if knn else frozenset(chosen), experts=moe)
    ranked = rank_next(target, prep.ids, top, record=rec)
    out = ranked.output
    labels = target.feature_labels
    T = len(prep.ids)

    columns = ["layer", "kind", "feature", "activation", "label", "top_token", "down_tokens"]
    if moe:
        columns += ["expert", "router_weight"]
    if with_attention:
        columns += ["head", "position", "attended_token", "attention"]
    rows: list[dict] = []
    for layer in chosen:
        if check is not None:
            check()
        acts = np.asarray(out.ffn_activations[layer], dtype=np.float32)
        k = min(top, acts.shape[0])
        idx = np.argpartition(-np.abs(acts), k - 1)[:k]
        idx = idx[np.argsort(-np.abs(acts[idx]), kind="stable")]
        downs = target.down_tokens(layer, idx, k=3)
        for f, down in zip(idx, downs):
            f = int(f)
            rows.append({"layer": layer, "kind": "ffn", "feature": f, "activation": float(acts[f]),
                         "label": labels.get((layer, f)),
                         "top_token": target.token_text(down[0]) if down else None,
                         "down_tokens": [target.token_text(t) for t in down]})
        routed = out.experts[layer] if moe and out.experts is not None else None
        if routed is not None:
            for e, w in zip(*routed):
                rows.append({"layer": layer, "kind": "expert", "expert": int(e), "router_weight": float(w)})
        if with_attention:
            probs = np.asarray(out.attention[layer], dtype=np.float32)      # [heads, S]
            view = probs[:, 1:] if probs.shape[1] > 1 else probs
            offset = 1 if probs.shape[1] > 1 else 0
            best_pos = np.argmax(view, axis=1)
            best_w = view[np.arange(view.shape[0]), best_pos]
            order = np.argsort(-best_w, kind="stable")[:min(top, probs.shape[0])]
            for h in order:
                pos = int(best_pos[h]) + offset
                rows.append({"layer": layer, "kind": "attention", "head": int(h), "position": pos,
                             "attended_token": target.token_text(prep.ids[pos]) if pos < T else None,
                             "attention": float(best_w[h])})

    prediction = [{"rank": i, "token": target.token_text(t), "token_id": t, "probability": p,
                   **({"source": s} if ranked.knn is not None else {})}
                  for i, (t, p, s) in enumerate(ranked.top, 1)]
    shown = ", ".join(f"{r['token']!r} {r['probability']:.4f}" for r in prediction)
    message = f"prediction: {shown}"
    if ranked.knn is not None:
        message += f" (KNN override at layer {ranked.knn['layer']})"
    if verbose:
        message += (f"\nprompt sent ({T} tokens{', chat-wrapped' if prep.chat_wrapped else ''}):\n"
                    f"{prep.text}")
    meta = {"prompt": prep.text, "chat_wrapped": prep.chat_wrapped, "num_tokens": T,
            "prediction": prediction, "layers": chosen, "model": target.name}
    if verbose:
        meta["token_ids"] = list(prep.ids)
        meta["tokens"] = [target.token_text(i) for i in prep.ids]
    return Result.table("EXPLAIN INFER", columns, rows, message=message, **meta)


#: rows EXPLAIN INFER … FOR shows without TOP
FOR_TOP = 20
FOR_COLUMNS = ["rank", "layer", "feature", "contribution", "activation", "label", "top_token",
               "down_tokens"]


def for_token_id(target, text: str, probs: np.ndarray) -> tuple[int, str | None]:
    """The token ``FOR text`` names on this prompt, and a note when it is not taken literally:
    a text that is one token and a leading-space variant that is one token too — the more
    probable of the two here (``"Paris"`` after "is" means ``" Paris"``); a text of several
    tokens — its first token (word-initial when the text has no leading space)."""
    from .trace import resolve_token
    tok = target.tokenizer
    if text is None or text == "":
        raise ExecutionError('FOR needs a token, e.g. FOR "Paris"')
    spaced = None
    if not text.startswith(" "):
        ids = tok.encode(" " + text, add_special_tokens=False).ids
        spaced = [int(i) for i in ids]
    try:
        tid, note = resolve_token(target, text)
    except ExecutionError:
        ids = spaced or [int(i) for i in tok.encode(text, add_special_tokens=False).ids]
        if not ids:
            raise
        pieces = ", ".join(repr(target.token_text(i)) for i in ids)
        return ids[0], (f"FOR {text!r} is {len(ids)} tokens ({pieces}); explaining the first, "
                        f"{target.token_text(ids[0])!r}")
    if spaced and len(spaced) == 1 and spaced[0] != tid and probs[spaced[0]] > probs[tid]:
        return spaced[0], (f"FOR {text!r}: explaining {target.token_text(spaced[0])!r} (with a "
                           f"leading space), the more probable token here")
    return tid, note


def explain_for(target, prep, for_token: str, *, layers=None, top: int | None = None,
                verbose: bool = False, check=None) -> Result:
    """``EXPLAIN INFER <prompt> FOR <token>``: the FFN features that carry ``for_token`` at
    the last position, ranked by their contribution (:func:`lql.infer.attribution.carriers`:
    activation × down · (u(token) − mean u(the model's 10 other top candidates)), DELETE's
    attribution; post-FFN norms passed through), positive contributions only."""
    from .attribution import carriers
    top = FOR_TOP if top is None else int(top)
    if top < 1:
        raise ExecutionError(f"TOP must be at least 1, not {top}")
    model = target.model
    chosen = select_layers(layers, model.num_layers)
    if check is not None:
        check()
    ranked = rank_next(target, prep.ids, 5, record=Record(ffn_activations=True))
    probs = ranked.probs
    tid, note = for_token_id(target, for_token, probs)
    found = carriers(model, target.model_config, ranked.output.ffn_activations, probs, tid,
                     layers=chosen, top=top)
    labels = target.feature_labels
    rows = []
    by_layer: dict[int, list[int]] = {}
    for _s, layer, f, _a in found:
        by_layer.setdefault(layer, []).append(f)
    downs = {layer: dict(zip(fs, target.down_tokens(layer, fs, k=3))) for layer, fs in by_layer.items()}
    for i, (score, layer, f, act) in enumerate(found, 1):
        down = downs[layer][f]
        rows.append({"rank": i, "layer": layer, "feature": f, "contribution": score,
                     "activation": act, "label": labels.get((layer, f)),
                     "top_token": target.token_text(down[0]) if down else None,
                     "down_tokens": [target.token_text(t) for t in down]})
    p = ranked.p(tid)
    rank = int(np.sum(probs > probs[tid])) + 1
    token = target.token_text(tid)
    message = (f"{token!r}: probability {p:.4f}, rank {rank}; {len(rows)} features carry it "
               f"(contribution = activation × down · (u(token) − mean u(top-10 others)))")
    if not rows:
        message = f"{token!r}: probability {p:.4f}, rank {rank}; no feature pushes it here"
    if note:
        message = f"{note}\n{message}"
    if verbose:
        message += (f"\nprompt sent ({len(prep.ids)} tokens"
                    f"{', chat-wrapped' if prep.chat_wrapped else ''}):\n{prep.text}")
    meta = {"prompt": prep.text, "chat_wrapped": prep.chat_wrapped, "num_tokens": len(prep.ids),
            "for_token": token, "token_id": tid, "probability": p, "rank": rank,
            "layers": chosen, "model": target.name,
            "prediction": [{"rank": i, "token": target.token_text(t), "token_id": t,
                            "probability": q} for i, (t, q, _s) in enumerate(ranked.top, 1)]}
    return Result.table("EXPLAIN INFER", FOR_COLUMNS, rows, message=message, **meta)
