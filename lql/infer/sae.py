"""SAE features over an inference target: the computations behind USE SAE's statements.

* the residual an SAE reads: ``ForwardOutput.residuals[sae.layer]`` — the residual after
  layer ``sae.layer`` (what ``Hooks.residual(layer, h)`` sees; transformers'
  ``hidden_states[layer + 1]``), every position;
* a feature's **lens tokens**: its decoder row ``W_dec[f]`` through the final norm and the
  unembedding (:meth:`lql.model.Model.logits_from_hidden`, the logit lens of the direction);
  ``lens_logit`` is that logit;
* WITH SAE rows (EXPLAIN INFER, TRACE): per position, the ``top`` features by activation
  (only features with activation > 0);
* DESCRIBE SAE FEATURE: the lens tokens, and over a prompt file the ``top`` (prompt,
  position) pairs where the feature is most active, with a context window;
* SELECT … FROM SAE FEATURES: one row per feature (``feature``, ``layer``, ``norm`` =
  ``‖W_dec[f]‖``, ``token`` = the top lens token, ``label``);
* EVALUATE SAE: :class:`lql.sae.metrics.Metrics` over every position of every prompt of
  a file except a leading BOS token.

Prompts from a file are tokenised raw (``tokenizer(text)``: BOS where the tokenizer adds
one, no chat template); every non-blank line is one prompt.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExecutionError
from ..model import Record
from ..result import Result
from ..sae import Sae
from ..sae.metrics import Metrics

__all__ = ["read_prompts", "prompt_ids", "layer_residuals", "lens_tokens", "feature_rows",
           "add_sae_rows", "describe_feature", "DEFAULT_TOP_FEATURES", "select_features", "evaluate", "check_fits"]

LENS_K = 5
#: features shown per position by WITH SAE (EXPLAIN INFER's TOP overrides it)
DEFAULT_TOP_FEATURES = 5
CHUNK = 256


def check_fits(target, sae: Sae) -> None:
    model = target.model
    sae.check_model(model.hidden_size, model.num_layers)


def read_prompts(path: Path) -> list[str]:
    """Every non-blank line of a UTF-8 text file (trailing newline / CR removed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ExecutionError(f"cannot read prompt file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ExecutionError(f"prompt file {str(path)!r} is not UTF-8 text ({exc.reason} at "
                             f"byte {exc.start})") from None
    prompts = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not prompts:
        raise ExecutionError(f"prompt file {str(path)!r} has no prompts (one per line)")
    return prompts


def prompt_ids(target, prompt: str) -> list[int]:
    """Raw token ids of ``prompt`` (as ``tokenizer(text)``), checked against the model's length."""
    from .prompt import checked_ids
    return checked_ids(target, prompt, list(target.tokenizer.encode(prompt).ids))


def layer_residuals(target, ids: list[int], layer: int) -> np.ndarray:
    """``[T, hidden]`` float32: the residual after ``layer`` at every position of ``ids``."""
    out = target.model.forward(list(ids), record=Record(residuals="all",
                                                        layers=frozenset({int(layer)})))
    assert out.residuals is not None
    return np.asarray(out.residuals[int(layer)], dtype=np.float32).reshape(len(ids), -1)


def lens_tokens(target, sae: Sae, features, k: int = LENS_K) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [n, k], logits [n, k])``: the top lens tokens of each feature's decoder row."""
    feats = [int(f) for f in features]
    ids_out = np.zeros((len(feats), k), dtype=np.int64)
    val_out = np.zeros((len(feats), k), dtype=np.float32)
    for c0 in range(0, len(feats), CHUNK):
        part = feats[c0:c0 + CHUNK]
        logits = np.asarray(target.model.logits_from_hidden(sae.W_dec[part]), dtype=np.float32)
        kk = min(k, logits.shape[1])
        top = np.argpartition(-logits, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        ids_out[c0:c0 + len(part), :kk] = top
        val_out[c0:c0 + len(part), :kk] = np.take_along_axis(logits, top, axis=1)
    return ids_out, val_out


def _label(sae: Sae, f: int) -> str | None:
    return sae.labels.get(int(f))


def feature_rows(target, sae: Sae, ids: list[int], *, positions: list[int] | None = None,
                 top: int = 5) -> list[dict[str, Any]]:
    """Rows ``kind = "sae"``: the ``top`` active features at each of ``positions`` (every
    position by default) of the prompt ``ids``."""
    check_fits(target, sae)
    acts = sae.encode(layer_residuals(target, ids, int(sae.layer or 0)))      # [T, d_sae]
    T = len(ids)
    pos_list = list(range(T)) if positions is None else positions
    picked: list[tuple[int, int, float]] = []
    for p in pos_list:
        a = acts[p]
        k = min(int(top), a.shape[0])
        idx = np.argpartition(-a, k - 1)[:k]
        idx = idx[np.argsort(-a[idx], kind="stable")]
        picked += [(p, int(f), float(a[f])) for f in idx if a[f] > 0]
    lens_ids, _ = lens_tokens(target, sae, sorted({f for _, f, _ in picked}), k=3)
    lens_of = dict(zip(sorted({f for _, f, _ in picked}), lens_ids.tolist()))
    return [{"kind": "sae", "layer": sae.layer, "position": p,
             "position_token": target.token_text(ids[p]), "feature": f, "activation": a,
             "label": _label(sae, f),
             "sae_tokens": [target.token_text(t) for t in lens_of[f]]} for p, f, a in picked]


def add_sae_rows(result: Result, rows: list[dict[str, Any]], *, sae_name: str) -> Result:
    """Append WITH SAE rows (and the columns they need) to an EXPLAIN INFER / TRACE result."""
    if "kind" not in result.columns:
        result.columns.insert(0, "kind")
        for row in result.rows:
            row.setdefault("kind", "lens")
    for col in ("position", "position_token", "feature", "activation", "label", "sae_tokens"):
        if col not in result.columns:
            result.columns.append(col)
    result.rows.extend(rows)
    result.meta["sae"] = {"name": sae_name, "layer": rows[0]["layer"] if rows else None,
                          "features_shown": len(rows)}
    return result


# --------------------------------------------------------------------------- DESCRIBE SAE FEATURE

def _iter_prompt_residuals(target, sae: Sae, prompts: list[str], check: Callable | None,
                           progress: Any = None) -> Iterator[tuple[int, list[int], np.ndarray]]:
    for i, prompt in enumerate(prompts):
        if check is not None:
            check()
        ids = prompt_ids(target, prompt)
        yield i, ids, layer_residuals(target, ids, int(sae.layer or 0))
        if progress is not None:
            progress.advance(1)


def describe_feature(target, sae: Sae, feature: int, *, name: str,
                     prompts: list[str] | None = None, top: int = 10, window: int = 8,
                     check: Callable | None = None, progress: Any = None) -> Result:
    check_fits(target, sae)
    f = sae.feature_index(feature)
    lens_ids, lens_vals = lens_tokens(target, sae, [f], k=top)
    rows: list[dict[str, Any]] = []
    for rank, (t, v) in enumerate(zip(lens_ids[0].tolist(), lens_vals[0].tolist()), 1):
        rows.append({"kind": "lens", "rank": rank, "token": target.token_text(t),
                     "token_id": int(t), "lens_logit": float(v)})
    meta: dict[str, Any] = {"sae": name, "feature": f, "layer": sae.layer,
                            "label": _label(sae, f), "norm": float(sae.decoder_norms[f])}
    if prompts is not None:
        hits: list[tuple[float, int, int, list[int]]] = []
        fired = 0
        for i, ids, res in _iter_prompt_residuals(target, sae, prompts, check, progress):
            a = sae.encode(res)[:, f]
            fired += int(np.count_nonzero(a > 0))
            for p in np.nonzero(a > 0)[0].tolist():
                hits.append((float(a[p]), i, int(p), ids))
            hits.sort(key=lambda h: (-h[0], h[1], h[2]))
            del hits[top:]
        for rank, (act, i, p, ids) in enumerate(hits, 1):
            lo = max(0, p - window)
            rows.append({"kind": "context", "rank": rank, "token": target.token_text(ids[p]),
                         "token_id": int(ids[p]), "activation": act, "prompt": i, "position": p,
                         "context": target.decode(ids[lo:p]) + "[[" + target.decode([ids[p]])
                         + "]]" + target.decode(ids[p + 1:p + 1 + window])})
        meta.update(prompts=len(prompts), positions_active=fired)
    columns = ["kind", "rank", "token", "token_id", "lens_logit"]
    if prompts is not None:
        columns += ["activation", "prompt", "position", "context"]
    label = meta["label"]
    shown = ", ".join(repr(r["token"]) for r in rows[:5] if r["kind"] == "lens")
    message = (f"SAE {name} feature {f} (layer {sae.layer}{', ' + repr(label) if label else ''}): "
               f"decoder direction → {shown}")
    if prompts is not None:
        message += f"; active at {meta['positions_active']} positions of {len(prompts)} prompts"
    return Result.table("DESCRIBE SAE FEATURE", columns, rows, message=message, **meta)


# --------------------------------------------------------------------------- SELECT FROM SAE FEATURES

SAE_FIELDS = ("feature", "layer", "norm", "token", "label")
_TEXT = frozenset({"token", "label"})


def _like(pattern: str) -> re.Pattern[str]:
    out = [".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern]
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _match(cond, actual) -> bool:
    field, op, value = cond.field, cond.op.upper(), cond.value
    text = field in _TEXT
    if not text:
        vals = value if isinstance(value, tuple) else (value,)
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ExecutionError(f"{field} is a number: compare it with a number, not {v!r}")
        if op == "LIKE":
            raise ExecutionError(f"LIKE compares text; {field} is a number")
    if op == "IN":
        vals = value if isinstance(value, tuple) else (value,)
        return actual is not None and actual in (vals if not text else tuple(str(v) for v in vals))
    if op == "LIKE":
        return actual is not None and _like(str(value)).fullmatch(str(actual)) is not None
    if op == "!=":
        return actual != value
    if actual is None:
        return False
    if text and not isinstance(value, str):
        value = str(value)
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
        ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}
    try:
        return ops[op](actual, value)
    except TypeError:
        raise ExecutionError(f"cannot compare {field} with {value!r}") from None


def select_features(target, sae: Sae, *, name: str, fields=None, where=(), order_by=None,
                    limit: int | None = None, check: Callable | None = None) -> Result:
    """SELECT … FROM SAE FEATURES: filter / sort / limit the features of ``sae``."""
    check_fits(target, sae)
    cols = list(SAE_FIELDS) if fields is None else list(fields)
    for c in list(cols) + [w.field for w in where] + ([order_by.field] if order_by else []):
        if c not in SAE_FIELDS:
            raise ExecutionError(f"SAE FEATURES has no field {c!r}; fields: {', '.join(SAE_FIELDS)}")
    need_token = "token" in cols or any(w.field == "token" for w in where) or \
        (order_by is not None and order_by.field == "token")
    norms = sae.decoder_norms
    cheap = [w for w in where if w.field != "token"]
    costly = [w for w in where if w.field == "token"]
    candidates = []
    for f in range(sae.d_sae):
        row = {"feature": f, "layer": sae.layer, "norm": float(norms[f]), "label": _label(sae, f)}
        if all(_match(w, row[w.field]) for w in cheap):
            candidates.append(row)
    early = limit if (order_by is None and limit is not None) else None
    rows: list[dict[str, Any]] = []
    for c0 in range(0, len(candidates), CHUNK):
        if check is not None:
            check()
        part = candidates[c0:c0 + CHUNK]
        if need_token:
            ids, _ = lens_tokens(target, sae, [r["feature"] for r in part], k=1)
            for r, t in zip(part, ids[:, 0].tolist()):
                r["token"] = target.token_text(int(t))
        rows += [r for r in part if all(_match(w, r.get(w.field)) for w in costly)]
        if early is not None and len(rows) >= early:
            break
    if order_by is not None:
        key = order_by.field
        present = [r for r in rows if r.get(key) is not None]
        absent = [r for r in rows if r.get(key) is None]
        present.sort(key=lambda r: r[key], reverse=order_by.descending)
        rows = present + absent
    if limit is not None:
        rows = rows[:limit]
    rows = [{c: r.get(c) for c in cols} for r in rows]
    return Result.table("SELECT", cols, rows, message=f"{len(rows)} SAE features ({name})",
                        sae=name, layer=sae.layer, d_sae=sae.d_sae)


# --------------------------------------------------------------------------- EVALUATE SAE

def evaluate(target, sae: Sae, prompts: list[str], *, name: str, check: Callable | None = None,
             progress: Any = None) -> Result:
    check_fits(target, sae)
    metrics = Metrics(sae)
    bos = target.model_config.get("bos_token_id")
    bos_ids = set(bos if isinstance(bos, list) else [bos]) - {None}
    tokens = 0
    for _, ids, res in _iter_prompt_residuals(target, sae, prompts, check, progress):
        start = 1 if ids and ids[0] in bos_ids and len(ids) > 1 else 0
        metrics.add(res[start:])
        tokens += len(ids)
    m = metrics.result()
    row = {"sae": name, "layer": sae.layer, "prompts": len(prompts), **m}
    columns = ["sae", "layer", "prompts", "vectors", "variance_explained", "mse", "l0",
               "dead_fraction", "alive", "d_sae", "cosine"]
    message = (f"SAE {name} at layer {sae.layer} over {len(prompts)} prompts ({m['vectors']} "
               f"positions): variance explained {m.get('variance_explained', float('nan')):.4f}, "
               f"MSE {m.get('mse', float('nan')):.6g}, L0 {m.get('l0', float('nan')):.2f}, "
               f"dead {m.get('dead_fraction', float('nan')):.2%}")
    return Result.table("EVALUATE SAE", columns, [row], message=message, tokens=tokens)
