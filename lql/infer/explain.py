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

__all__ = ["explain"]


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
