"""DIFF: features whose gate / up / down vectors or down-meta differ between two vindexes.

Either side may be an overlay view (``CURRENT``).  :func:`diff_ops` turns the
differences into ``.vlp`` operations that transform ``a`` into ``b``: a feature
whose gate and down are all zero in ``b`` becomes a ``delete``, anything else an
``insert`` carrying b's gate / up / down vectors and down-meta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ExecutionError
from .overlay import ffn_layout
from .patch import PatchOp

__all__ = ["FeatureDiff", "diff_features", "diff_ops"]


@dataclass
class FeatureDiff:
    layer: int
    feature: int
    change: str               # "modified" | "deleted" | "added"
    fields: tuple[str, ...]   # which of gate / up / down / down_meta differ
    gate_cosine: float | None
    a_top: int | None
    b_top: int | None


def _check_compatible(a, b) -> None:
    for attr in ("num_layers", "hidden_size"):
        if int(getattr(a, attr)) != int(getattr(b, attr)):
            raise ExecutionError(f"cannot DIFF: {attr} differs ({getattr(a, attr)} vs "
                                 f"{getattr(b, attr)})")


def _ffn(v, layer: int, kind: str):
    lay = ffn_layout(v)
    key = lay.up_key(layer) if kind == "up" else lay.down_key(layer)
    if not key or key not in v.weights:
        return None
    w = np.asarray(v.weights[key], dtype=np.float32)
    return lay.rows(w) if kind == "up" else lay.columns(w).T


def diff_features(a, b, *, layer: int | None = None, tol: float = 0.0) -> list[FeatureDiff]:
    _check_compatible(a, b)
    layers = [layer] if layer is not None else range(int(a.num_layers))
    out: list[FeatureDiff] = []
    for l in layers:
        if not 0 <= l < int(a.num_layers):
            raise ExecutionError(f"layer {l} out of range 0..{int(a.num_layers) - 1}")
        if a.num_features(l) != b.num_features(l):
            raise ExecutionError(f"cannot DIFF: layer {l} has {a.num_features(l)} vs "
                                 f"{b.num_features(l)} features")
        if a.num_features(l) == 0:
            continue
        ga, gb = np.asarray(a.gate(l), np.float32), np.asarray(b.gate(l), np.float32)
        masks = {"gate": np.abs(ga - gb).max(1) > tol}
        for kind in ("up", "down"):
            xa, xb = _ffn(a, l, kind), _ffn(b, l, kind)
            if xa is not None and xb is not None:
                masks[kind] = np.abs(xa - xb).max(1) > tol
        ia, ib = a.down_meta.top_ids(l)[:, 0], b.down_meta.top_ids(l)[:, 0]
        masks["down_meta"] = ia != ib
        any_diff = np.zeros(ga.shape[0], bool)
        for m in masks.values():
            any_diff |= m
        downb = _ffn(b, l, "down")
        for fi in np.flatnonzero(any_diff):
            f = int(fi)
            fields = tuple(k for k, m in masks.items() if m[f])
            na, nb = float(np.linalg.norm(ga[f])), float(np.linalg.norm(gb[f]))
            cos = float(ga[f] @ gb[f] / (na * nb)) if na > 0 and nb > 0 else None
            b_zero = nb == 0 and (downb is None or not downb[f].any())
            change = "deleted" if b_zero else ("added" if na == 0 else "modified")
            out.append(FeatureDiff(l, f, change, fields, cos,
                                   int(ia[f]) if na > 0 else None,
                                   None if b_zero else int(ib[f])))
    return out


def diff_ops(b, diffs: list[FeatureDiff]) -> list[PatchOp]:
    """Operations that turn ``a`` into ``b`` for the given differences."""
    ops = []
    for d in diffs:
        if d.change == "deleted":
            ops.append(PatchOp.make("delete", layer=d.layer, feature=d.feature, reason="DIFF"))
            continue
        vectors = {"gate": np.asarray(b.gate(d.layer)[d.feature], np.float32)}
        for kind in ("up", "down"):
            x = _ffn(b, d.layer, kind)
            if x is not None:
                vectors[kind] = x[d.feature]
        rec = b.down_meta.record(d.layer, d.feature) or {}
        tid = rec.get("top_token_id")
        meta = None if tid is None else {"t": b.token_text(tid).strip(), "i": int(tid),
                                         "c": float(rec.get("c_score", 0.0))}
        info = {}
        ov = getattr(b, "overlay", None)
        if ov is not None:
            e = ov.features.get((d.layer, d.feature))
            if e is not None:
                info = {k: e.info.get(k) for k in ("entity", "relation", "target", "confidence",
                                                   "mode", "prompt")}
        ops.append(PatchOp.make("insert", layer=d.layer, feature=d.feature, down_meta=meta,
                                vectors=vectors, **info))
    return ops
