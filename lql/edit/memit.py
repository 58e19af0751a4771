"""INSERT ... MODE MEMIT: a closed-form low-rank update of one layer's FFN down weights.

For the facts of one statement (every target token of each: the key of token i is taken
after the prompt and the target's first i tokens), with

* ``K`` (features × n): the FFN hidden activations ``act(gate·x) ⊙ (up·x)`` at the last
  position of each key's sequence — what the down projection reads;
* ``R`` (hidden × n): the change each key's FFN output should make — the same push INSERT
  MODE COMPOSE writes (along the target's unembedding direction, ``10·ALPHA·‖r_L‖`` long;
  through the post-FFN norm on Gemma, :func:`lql.edit.insert.post_norm_down`); plus, for
  each key, the same template filled with :data:`PRESERVE` reference entities with a
  *zero* target (the template dominates a last-position key: without these the update
  fires for every entity of the template);
* ``C`` (features × features): the keys' second moment ``E[k kᵀ]`` over every position of
  a text sample (:data:`SAMPLE`, shipped with lql, or ``sample`` given), scaled so its
  trace per key equals that of the fact keys,

the update minimising ``‖ΔW·K − R‖² + λ·n·tr(ΔW·C·ΔWᵀ)`` is
``ΔW = R·Kᵀ·(K·Kᵀ + λ·n·C)⁻¹`` (MEMIT's closed form, one layer), of rank ≤ n.  It is stored
as the factors ``U = R`` and ``V = (K·Kᵀ + λ·n·C)⁻¹·K`` in one ``memit`` patch operation
(ΔW = U·Vᵀ); the overlay adds it to the layer's down weights, REMOVE PATCH drops it exactly,
COMPILE bakes it in.  The covariance term keeps the update small on ordinary text: a key
unlike the facts' (most of the sample) is barely moved.  After recording, the statement
checks the facts on their prompts and doubles ``R`` (at most 3 times) while a target is
not top-1.  :func:`memit_spread` spreads the push over a band of layers (MEMIT's order:
each layer's keys read after the lower layers' updates); measured worse than one layer
on SmolLM2 and Gemma 3 (docs/EDITING.md, "MODE MEMIT"), so the statements use one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model import Hooks, Record
from ..runtime import model_for, predict, run
from .insert import (
    ALPHA_UNIT,
    DEFAULT_ALPHA,
    ORDINARY_CHUNK,
    _references,
    fact_sequence,
    has_post_ffn_norm,
    ordinary_chunks,
    post_norm_down,
    target_tokens,
    unembed_direction,
)
from .patch import PatchOp, encode_vector
from .prompts import canonical_prompt, template_for

__all__ = ["SAMPLE", "LAMBDA", "covariance", "ffn_keys", "memit_update", "memit_op",
           "memit_spread", "spread_layers", "calibrate_memit", "MemitFact"]

SAMPLE = Path(__file__).with_name("data") / "covariance_sample.txt"
#: weight of the covariance term (per key)
LAMBDA = 0.5
#: reference fillers of the template whose keys are kept fixed (zero target), per key
PRESERVE = 7
#: tokens per chunk of the sample (:func:`lql.edit.insert.ordinary_chunks`)
CHUNK = ORDINARY_CHUNK

_COV: dict[tuple, np.ndarray] = {}


def ffn_keys(view, seq, layer: int, every: bool = False) -> np.ndarray:
    """The FFN hidden activations at ``layer``: the last position (``[features]``) or every
    position (``[T, features]``)."""
    block = model_for(view).blocks[layer]
    got: dict[str, np.ndarray] = {}

    def grab(l: int, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if l == layer:
            got["x"] = np.array(x, dtype=np.float32, copy=True)
        return out

    run(view, seq, hooks=Hooks(ffn=grab))
    _, hidden = block.ffn(got["x"])
    h = np.asarray(hidden, np.float64)
    return h if every else h[-1]


def covariance(view, layer: int, sample: str | None = None) -> np.ndarray:
    """``E[k kᵀ]`` of the FFN keys at ``layer`` over the sample text (memoised)."""
    text = sample if sample is not None else SAMPLE.read_text(encoding="utf-8")
    ov = getattr(view, "overlay", None)
    key = (id(getattr(view, "base", view)), layer, hashlib.sha256(text.encode()).hexdigest(),
           0 if ov is None else ov.version)
    if key in _COV:
        return _COV[key]
    acc = None
    n = 0
    for chunk in ordinary_chunks(view, text):
        h = ffn_keys(view, chunk, layer, every=True)
        acc = h.T @ h if acc is None else acc + h.T @ h
        n += h.shape[0]
    if acc is None:
        raise ValueError("the covariance sample is too short")
    c = acc / n
    if len(_COV) > 8:
        _COV.clear()
    _COV[key] = c
    return c


def memit_update(K: np.ndarray, R: np.ndarray, C: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """``(U, V)`` with ``U·Vᵀ = R·Kᵀ·(K·Kᵀ + lam·n·Ĉ)⁻¹``, Ĉ = C scaled to the keys' trace."""
    n = K.shape[1]
    kk = K @ K.T
    c = C * (np.trace(kk) / n) / max(float(np.trace(C)), 1e-30)
    A = kk + lam * n * c
    A += 1e-8 * float(np.trace(A)) / A.shape[0] * np.eye(A.shape[0])
    V = np.linalg.solve(A, K)
    return R.astype(np.float64), V


@dataclass
class MemitFact:
    entity: str
    relation: str
    target: str
    prompt: str | None = None


def _push(view, seq, layer: int, tid: int, alpha: float, sign: float = 1.0) -> np.ndarray:
    d = unembed_direction(view, tid) * np.float32(sign)
    if has_post_ffn_norm(view, layer):
        return post_norm_down(view, seq, layer, d, alpha, 1.0).astype(np.float64)
    out = run(view, seq, record=Record(residuals="last", layers=frozenset([layer])))
    r = float(np.linalg.norm(out.residuals[layer]))
    return (d * (ALPHA_UNIT * alpha * r)).astype(np.float64)


def memit_op(view, facts: Sequence[MemitFact], *, layer: int, alpha: float | None = None,
             lam: float = LAMBDA, sample: str | None = None,
             suppress: bool = False) -> tuple[PatchOp, list]:
    """The ``memit`` operation for ``facts`` at ``layer`` and the checks to run after it:
    ``[(sequence, target token id)]`` (one per target token).  ``suppress``: the update
    pushes *against* each fact's first target token instead (DELETE ... MODE MEMIT)."""
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    keys, pushes, checks = [], [], []
    for f in facts:
        text = canonical_prompt(f.entity, f.relation, f.prompt)
        ids = target_tokens(view, f.target)[:1] if suppress else target_tokens(view, f.target)
        for i, tid in enumerate(ids):
            seq = fact_sequence(view, text, tuple(ids[:i]))
            keys.append(ffn_keys(view, seq, layer))
            pushes.append(_push(view, seq, layer, tid, alpha, -1.0 if suppress else 1.0))
            checks.append((seq, tid))
            # the same template filled with other entities must not move: their keys are
            # constraints with a zero target (at the last position the template dominates
            # the key, so without them the update fires for every entity)
            for ref in _references(f.entity)[:PRESERVE]:
                rseq = fact_sequence(view, template_for(f.relation, f.prompt)
                                     .replace("{entity}", ref), tuple(ids[:i]))
                keys.append(ffn_keys(view, rseq, layer))
                pushes.append(np.zeros_like(pushes[-1]))
    K = np.stack(keys, axis=1)
    R = np.stack(pushes, axis=1)
    U, V = memit_update(K, R, covariance(view, layer, sample), lam)
    op = PatchOp.make("memit", layer=layer, rank=int(K.shape[1]), alpha=alpha, lam=lam,
                      facts=[{"entity": f.entity, "relation": f.relation, "target": f.target}
                             for f in facts], mode="suppress" if suppress else None,
                      memit_u_b64=encode_vector(U.astype(np.float32).reshape(-1)),
                      memit_v_b64=encode_vector(V.astype(np.float32).reshape(-1)))
    return op, checks


def spread_layers(top: int, n: int = 1) -> list[int]:
    """The ``n`` layers ending at ``top`` (MEMIT's critical-layer band), at least layer 0."""
    return list(range(max(0, int(top) - max(1, int(n)) + 1), int(top) + 1))


def memit_spread(overlay, view, facts: Sequence[MemitFact], *, layers: Sequence[int],
                 alpha: float | None = None, lam: float = LAMBDA, sample: str | None = None,
                 suppress: bool = False) -> tuple[list[PatchOp], list]:
    """MEMIT over several layers: each of ``layers`` (lowest first) takes an equal share
    of the push (``alpha / len(layers)``), its update solved with the keys read *after*
    the lower layers' updates are in place (MEMIT's order: a later layer sees what the
    earlier ones changed) and its own covariance.  Each update is one ``memit`` op,
    recorded as it is made; returns the ops and the checks (:func:`memit_op`)."""
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    band = sorted(set(int(l) for l in layers))
    ops: list[PatchOp] = []
    checks: list = []
    for layer in band:
        op, checks = memit_op(view, facts, layer=layer, alpha=alpha / len(band), lam=lam,
                              sample=sample, suppress=suppress)
        if len(band) > 1:
            op.data["spread"] = band
        overlay.record(op)
        ops.append(op)
    return ops, checks


def calibrate_memit(overlay, view, op: PatchOp | Sequence[PatchOp], checks: list,
                    max_doublings: int = 3) -> dict:
    """Double the update (``U`` of each op, when spread over layers) while a checked
    target is not top-1 (at most ``max_doublings`` times); returns ``{"retrieved", "of",
    "scale"}``."""
    from .patch import decode_vector
    ops = [op] if isinstance(op, PatchOp) else list(op)

    def hits() -> int:
        return sum(predict(view, list(seq), top=1).top1 == tid for seq, tid in checks)

    def scale_by(f: float) -> None:
        for o in ops:
            o.data["memit_u_b64"] = encode_vector(decode_vector(o.data["memit_u_b64"]) * f)
        overlay._changed()

    scale = 1.0
    got = hits()
    for _ in range(max_doublings):
        if got == len(checks):
            break
        scale_by(2.0)
        scale *= 2.0
        new = hits()
        if new < got:                     # past the peak: undo the last doubling
            scale_by(0.5)
            scale /= 2.0
            break
        got = new
    return {"retrieved": got, "of": len(checks), "scale": scale}
