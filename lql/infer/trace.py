"""TRACE: the residual stream layer by layer (logit lens), one token's story
(FOR: rank, probability, direct logit attribution of attention vs FFN),
DECOMPOSE, POSITIONS ALL and SAVE (.npz). Definitions in :mod:`lql.infer.lens`
and docs/INFER.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import ast
from ..atomic import atomic_writer
from ..errors import ExecutionError
from ..model import Record
from ..result import Result
from .lens import FinalNormLinear, has_layer_scalars, lens_logits, residual_scales
from .predict import softmax64

__all__ = ["trace", "resolve_token", "select_layers", "save_npz"]

CHUNK = 32


def select_layers(layers, num_layers: int) -> list[int]:
    """``LAYERS`` → sorted layer list (every layer by default); out of range is an error."""
    if layers is None or not hasattr(layers, "start"):
        return list(range(num_layers))
    lo, hi = int(layers.start), int(layers.end)
    if lo > hi:
        raise ExecutionError(f"LAYERS {lo}-{hi}: the range is empty (start after end)")
    if lo < 0 or hi >= num_layers:
        raise ExecutionError(f"LAYERS {lo}-{hi}: layer out of range — this model has layers "
                             f"0-{num_layers - 1}")
    return list(range(lo, hi + 1))


def resolve_token(target, text: str) -> tuple[int, str | None]:
    """The token id FOR ``text`` names, and a note when it is not taken literally.

    The text is encoded exactly as written (no special tokens): ``" Paris"`` (leading
    space) is the word-initial token a model predicts after "is", ``"Paris"`` the
    bare one. A text that is exactly one token is used as is; otherwise, when it
    has no leading space and ``" " + text`` is one token, that token is used (with a
    note); anything else — unknown or several tokens — is an error naming the pieces."""
    if text is None or text == "":
        raise ExecutionError("FOR needs a token, e.g. FOR \" Paris\"")
    tok = target.tokenizer
    tid = tok.token_to_id(text)
    if tid is not None and target.token_text(tid) == text:
        return int(tid), None
    ids = tok.encode(text, add_special_tokens=False).ids
    if len(ids) == 1:
        return int(ids[0]), None
    if not text.startswith(" "):
        spaced = tok.encode(" " + text, add_special_tokens=False).ids
        if len(spaced) == 1:
            return int(spaced[0]), (f"FOR {text!r} is not one token; tracking {target.token_text(spaced[0])!r} "
                                    f"(with a leading space)")
    if not ids:
        raise ExecutionError(f"FOR {text!r}: the text produces no tokens")
    pieces = ", ".join(repr(target.token_text(i)) for i in ids)
    raise ExecutionError(f"FOR {text!r} is {len(ids)} tokens ({pieces}), not one — trace a "
                         f"single token, e.g. FOR {target.token_text(ids[0])!r}")


def _stack(seq, want_all: bool) -> np.ndarray:
    """List of per-layer recordings → ``[L, T, H]`` (``want_all``) or ``[L, 1, H]``."""
    arr = np.stack([np.asarray(x, dtype=np.float32) for x in seq])
    return arr if want_all else arr[:, None, :]


def trace(target, prep, *, for_token: str | None = None, decompose: bool = False, layers=None,
          positions=None, save: Path | None = None) -> Result:
    model = target.model
    n_layers = model.num_layers
    chosen = select_layers(layers, n_layers)
    all_positions = positions is ast.Positions.ALL
    want_all = all_positions or save is not None
    where: Literal["all", "last"] = "all" if want_all else "last"
    out = model.forward(list(prep.ids), record=Record(residuals=where, deltas=where))

    emb = np.asarray(out.embedding, dtype=np.float32)
    emb = emb if want_all else emb[None, :]                       # [T|1, H]
    res = _stack(out.residuals, want_all)                          # [L, T|1, H]
    attn = _stack(out.attn_deltas, want_all)
    ffn = _stack(out.ffn_deltas, want_all)
    # Gemma 4: the per-layer-embedding branch's deltas (zeros on a layer without one) and the
    # layer scalars' products (lql.infer.lens.residual_scales)
    has_ple = out.ple_deltas is not None
    ple = _stack([np.zeros(np.shape(out.attn_deltas[0])) if x is None else x for x in out.ple_deltas], want_all) \
        if has_ple else None
    scaled = has_layer_scalars(model)
    scales = residual_scales(model)                                # [L] float64, ones if none
    T = len(prep.ids)
    pos_list = list(range(T)) if all_positions else [T - 1]
    idx_of = (lambda p: p) if want_all else (lambda p: 0)

    tid, note = (None, None)
    if for_token is not None:
        tid, note = resolve_token(target, for_token)
    head = model.head

    columns = (["position", "position_token"] if all_positions else []) + \
        ["layer", "top_token", "top_probability"]
    if tid is not None:
        columns += ["rank", "probability", "logit", "attn_logit", "ffn_logit"]
        columns += (["ple_logit"] if has_ple else []) + (["scale"] if scaled else [])
    if decompose:
        columns += ["attn_norm", "ffn_norm"] + (["ple_norm"] if has_ple else []) + \
            ["attn_top_token", "ffn_top_token"] + (["ple_top_token"] if has_ple else [])
    rows: list[dict] = []
    dla_meta: dict[str, Any] | None = None
    for p in pos_list:
        i = idx_of(p)
        r_final = res[-1, i]
        lin = FinalNormLinear.at(model, r_final) if (tid is not None or decompose) else None
        p_log = p_top = None
        if tid is not None:
            assert lin is not None
            # each part reaches r_final multiplied by its layer's scale (1 without layer scalars)
            a_log = lin.token_logits(head, tid, attn[:, i]) * scales
            f_log = lin.token_logits(head, tid, ffn[:, i]) * scales
            p_log = lin.token_logits(head, tid, ple[:, i]) * scales if ple is not None else None
            e_log = float(lin.token_logits(head, tid, emb[i][None, :])[0]) * (float(scales[0]) if n_layers else 1.0)
            b_log = lin.bias_logit(head, tid)
            pre = np.asarray(model.final_norm(r_final[None, :]), dtype=np.float64)[0] @ \
                np.asarray(head[tid], dtype=np.float64)
            if p == T - 1:
                dla_meta = {"token_id": tid, "embedding_logit": e_log, "bias_logit": b_log,
                            "attn_logit_total": float(a_log.sum()), "ffn_logit_total": float(f_log.sum()),
                            "final_logit": float(pre)}
                if p_log is not None:
                    dla_meta["ple_logit_total"] = float(p_log.sum())
                if scaled:
                    dla_meta["scales"] = [float(c) for c in scales]
        if decompose:
            assert lin is not None
            a_top = np.argmax(lin.vocab_logits(head, attn[chosen, i]), axis=1)
            f_top = np.argmax(lin.vocab_logits(head, ffn[chosen, i]), axis=1)
            p_top = np.argmax(lin.vocab_logits(head, ple[chosen, i]), axis=1) \
                if lin is not None and ple is not None else None
        for c0 in range(0, len(chosen), CHUNK):
            part = chosen[c0:c0 + CHUNK]
            logits = lens_logits(model, res[part, i])
            probs = softmax64(logits)
            for j, layer in enumerate(part):
                pr = probs[j]
                top = int(np.argmax(pr))
                row = {"position": p, "position_token": target.token_text(prep.ids[p])} if all_positions else {}
                row.update(layer=layer, top_token=target.token_text(top), top_token_id=top,
                           top_probability=float(pr[top]))
                if tid is not None:
                    row.update(rank=int(np.count_nonzero(pr > pr[tid])) + 1, probability=float(pr[tid]),
                               logit=float(logits[j, tid]), attn_logit=float(a_log[layer]),
                               ffn_logit=float(f_log[layer]))
                    if p_log is not None:
                        row["ple_logit"] = float(p_log[layer])
                    if scaled:
                        row["scale"] = float(scales[layer])
                if decompose:
                    k = c0 + j
                    row.update(attn_norm=float(np.linalg.norm(attn[layer, i])),
                               ffn_norm=float(np.linalg.norm(ffn[layer, i])))
                    if ple is not None:
                        row["ple_norm"] = float(np.linalg.norm(ple[layer, i]))
                    row.update(attn_top_token=target.token_text(int(a_top[k])),
                               ffn_top_token=target.token_text(int(f_top[k])))
                    if p_top is not None:
                        row["ple_top_token"] = target.token_text(int(p_top[k]))
                rows.append(row)

    meta = {"prompt": prep.text, "chat_wrapped": prep.chat_wrapped, "num_tokens": T,
            "layers": chosen, "positions": "all" if all_positions else "last", "model": target.name}
    message = note
    if tid is not None:
        meta["for_token"] = target.token_text(tid)
        meta["token_id"] = tid
        meta["dla"] = dla_meta
    if save is not None:
        path = save_npz(save, target=target, prep=prep, emb=emb, res=res, attn=attn, ffn=ffn,
                        logits=out.logits, for_id=tid, ple=ple, scales=scales if scaled else None)
        meta["saved"] = str(path)
        saved = f"saved residuals of {T} positions × {n_layers + 1} to {path}"
        message = saved if message is None else f"{message}; {saved}"
    return Result.table("TRACE", columns, rows, message=message, **meta)


def save_npz(path: Path, *, target, prep, emb, res, attn, ffn, logits, for_id=None, ple=None,
             scales=None) -> Path:
    """Write the trace as ``.npz`` (layout in docs/INFER.md), atomically: a temporary file
    in the same folder, fsync, then rename. ``.npz`` is appended when missing."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        path = path.with_name(path.name + ".npz")
    if not path.parent.is_dir():
        raise ExecutionError(f"SAVE {str(path)!r}: folder {str(path.parent)!r} does not exist")
    residuals = np.concatenate([emb[None], res], axis=0).astype(np.float32)   # [L+1, T, H]
    arrays = {
        "residuals": residuals,
        "attn_deltas": attn.astype(np.float32),
        "ffn_deltas": ffn.astype(np.float32),
        "token_ids": np.asarray(prep.ids, dtype=np.int64),
        "tokens": np.array([target.token_text(i) for i in prep.ids], dtype=np.str_),
        "prompt": np.array(prep.text, dtype=np.str_),
        "user_prompt": np.array(prep.prompt, dtype=np.str_),
        "chat_wrapped": np.array(bool(prep.chat_wrapped)),
        "logits": np.asarray(logits, dtype=np.float32),
        "model": np.array(str(target.name or ""), dtype=np.str_),
        "for_token_id": np.array(-1 if for_id is None else int(for_id), dtype=np.int64),
    }
    if ple is not None:
        arrays["ple_deltas"] = np.asarray(ple, dtype=np.float32)
    if scales is not None:
        arrays["layer_scales"] = np.asarray(scales, dtype=np.float64)
    with atomic_writer(path) as fh:
        np.savez(fh, **arrays)
    return path
