"""COMPACT MINOR / COMPACT MAJOR [FULL] [WITH LAMBDA = f] / SHOW COMPACT STATUS.

LARQL's three-tier fact store, with LARQL's meaning (its ``executor/mutation/compact.rs``):
L0 is the KNN store, L1 the COMPOSE features ("arch-A" edges), L2 the MEMIT updates.

* ``COMPACT MINOR`` promotes every L0 fact (its KNN entries, one per target token) to L1:
  INSERT MODE COMPOSE at the entry's layer, then the KNN entries are deleted.
* ``COMPACT MAJOR`` promotes L1 facts to L2: per layer, the COMPOSE slots are restored to
  their base vectors and one closed-form MEMIT update (``lql/edit/memit.py``) installs all
  of that layer's facts; ``WITH LAMBDA = f`` sets the covariance weight (default
  ``memit.LAMBDA``).  ``FULL`` runs COMPACT MINOR first, so every fact ends in L2.
* ``SHOW COMPACT STATUS``: how many facts each tier holds.

Every step is *checked*: after a promotion each fact's whole target must still be the
model's greedy continuation (every target token top-1 after the prompt and the tokens
before it); a step that loses a fact that worked before is rolled back (its operations are
dropped from the recording patch), and the row says so.  Every step is *reversible*: it
only appends operations to the patch being recorded (REMOVE PATCH / the auto-patch undo
it exactly; KNN → COMPOSE → MEMIT ops are ordinary ``.vlp`` operations).
"""

from __future__ import annotations

from typing import Any

from .. import ast
from ..edit.patch import PatchOp
from ..errors import ExecutionError
from ..result import Result
from ..runtime import check_level
from . import handler

COLUMNS = ["tier", "entity", "relation", "target", "layer", "status", "detail"]


def _fact_ok(view, prompt: str, ids: list[int]) -> bool:
    from ..edit.insert import fact_sequence
    from ..runtime import predict
    for i, t in enumerate(ids):
        if predict(view, list(fact_sequence(view, prompt, tuple(ids[:i]))), top=1).top1 != t:
            return False
    return True


def _knn_facts(ov) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for k in ov.knn:
        if k.prompt_form != "raw" or k.paraphrase or k.scope is not None:
            continue        # chat-form twins stay in their tier; other wordings' keys and
            # the scoped entry go with their fact (COMPOSE keys its feature on those
            # wordings itself)
        out.setdefault((k.entity, k.relation, k.target, k.layer), []).append(k)
    return out


def _compose_facts(ov) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for (l, _f), e in sorted(ov.features.items()):
        if e.inserted and e.info.get("mode") == "compose" \
                and e.info.get("prompt_form", "raw") == "raw":
            out.setdefault((e.info.get("entity"), e.info.get("relation"),
                            e.info.get("target"), l), []).append(e)
    return out


def _memit_facts(ov) -> list[tuple[int, dict]]:
    out = []
    for p in ov.stack:
        for op in p.operations:
            if op.op == "memit" and op.get("mode") != "suppress":   # not DELETE's
                out += [(int(op.get("layer")), f) for f in (op.get("facts") or [])]
    return out


def _rollback(ov, mark: int) -> None:
    if ov.recording is not None:
        del ov.recording.operations[mark:]
        ov._changed()


def compact_minor(ov, view) -> list[dict[str, Any]]:
    from ..edit.insert import install_compose, target_tokens
    from ..edit.prompts import canonical_prompt
    rows = []
    for (entity, relation, target, layer), _entries in sorted(_knn_facts(ov).items()):
        prompt = canonical_prompt(entity, relation)
        ids = target_tokens(view, target)
        mark = len(ov.recording.operations) if ov.recording is not None else 0
        for i, tid in enumerate(ids):
            install_compose(ov, view, entity, relation, target, layer=layer,
                            prefix=tuple(ids[:i]), token=tid)
        ov.record(PatchOp.make("delete_knn", entity=entity, relation=relation, target=target,
                               layer=layer, prompt_form="raw"))
        if _fact_ok(view, prompt, ids):
            rows.append({"tier": "L0 → L1", "entity": entity, "relation": relation,
                         "target": target, "layer": layer, "status": "promoted",
                         "detail": f"{len(ids)} COMPOSE feature(s); whole target checked"})
        else:
            _rollback(ov, mark)
            rows.append({"tier": "L0", "entity": entity, "relation": relation, "target": target,
                         "layer": layer, "status": "kept",
                         "detail": "as COMPOSE the whole target was not produced; "
                                   "the KNN entries stay"})
    return rows


def compact_major(ov, view, lam: float | None) -> list[dict[str, Any]]:
    from ..edit.insert import target_tokens
    from ..edit.memit import LAMBDA, MemitFact, calibrate_memit, memit_op
    from ..edit.prompts import canonical_prompt
    from .mutate import _restore_op
    lam = LAMBDA if lam is None else float(lam)
    by_layer: dict[int, list] = {}
    for (entity, relation, target, layer), entries in sorted(_compose_facts(ov).items()):
        by_layer.setdefault(layer, []).append((entity, relation, target, entries))
    rows = []
    for layer, facts in sorted(by_layer.items()):
        checks = []
        for entity, relation, target, _entries in facts:
            prompt = canonical_prompt(entity, relation)
            ids = target_tokens(view, target)
            checks.append((prompt, ids, _fact_ok(view, prompt, ids)))
        before = sum(ok for _, _, ok in checks)
        mark = len(ov.recording.operations) if ov.recording is not None else 0
        for _, _, _, entries in facts:
            for e in entries:
                ov.record(_restore_op(view, e.layer, e.feature, "COMPACT MAJOR"))
        op, tok_checks = memit_op(view, [MemitFact(e, r, t) for e, r, t, _ in facts],
                                  layer=layer, lam=lam)
        ov.record(op)
        cal = calibrate_memit(ov, view, op, tok_checks)
        after = [(_fact_ok(view, p, ids)) for p, ids, _ in checks]
        if sum(after) < before:
            _rollback(ov, mark)
            status, tier = "kept", "L1"
            detail = (f"as one MEMIT update {sum(after)}/{len(facts)} facts would be produced "
                      f"(COMPOSE: {before}); rolled back")
        else:
            status, tier = "promoted", "L1 → L2"
            detail = (f"rank-{op.get('rank')} MEMIT update, λ = {lam:g}, scale ×{cal['scale']:g}; "
                      f"{sum(after)}/{len(facts)} facts produce the whole target")
        for (entity, relation, target, _), ok in zip(facts, after):
            rows.append({"tier": tier, "entity": entity, "relation": relation, "target": target,
                         "layer": layer, "status": status if ok or status == "kept"
                         else "promoted (not produced)", "detail": detail})
    return rows


@handler(ast.CompactMinor)
def compact_minor_stmt(session, stmt: ast.CompactMinor) -> Result:
    ov = session.edit_overlay()
    view = session.vindex
    check_level(view, "COMPACT MINOR")
    if not ov.knn:
        return Result.table("COMPACT MINOR", COLUMNS, [],
                            message="COMPACT MINOR: L0 (KNN) is empty, nothing to compact")
    rows = compact_minor(ov, view)
    n = sum(r["status"] == "promoted" for r in rows)
    return Result.table("COMPACT MINOR", COLUMNS, rows, promoted=n, total=len(rows),
                        message=f"COMPACT MINOR: {n}/{len(rows)} KNN facts promoted to COMPOSE"
                                + ("" if n == len(rows) else
                                   f"; {len(rows) - n} kept in KNN (see the rows)"))


@handler(ast.CompactMajor)
def compact_major_stmt(session, stmt: ast.CompactMajor) -> Result:
    ov = session.edit_overlay()
    view = session.vindex
    check_level(view, "COMPACT MAJOR")
    if stmt.lambda_ is not None and stmt.lambda_ < 0:
        raise ExecutionError("LAMBDA must be ≥ 0")
    rows = compact_minor(ov, view) if stmt.full and ov.knn else []
    if not _compose_facts(ov):
        msg = "COMPACT MAJOR: L1 (COMPOSE) is empty, nothing to compact"
        return Result.table("COMPACT MAJOR", COLUMNS, rows, message=msg)
    major = compact_major(ov, view, stmt.lambda_)
    rows += major
    n = sum(r["status"] == "promoted" for r in major)
    return Result.table("COMPACT MAJOR", COLUMNS, rows, promoted=n, total=len(major),
                        message=f"COMPACT MAJOR: {n}/{len(major)} COMPOSE facts promoted to MEMIT"
                                + ("" if n == len(major) else
                                   f"; {len(major) - n} not (see the rows)"))


@handler(ast.ShowCompactStatus)
def show_compact_status(session, stmt: ast.ShowCompactStatus) -> Result:
    ov = getattr(session.vindex, "overlay", None)
    knn = _knn_facts(ov) if ov is not None else {}
    comp = _compose_facts(ov) if ov is not None else {}
    mem = _memit_facts(ov) if ov is not None else []
    rows = [{"tier": "L0", "store": "KNN", "facts": len(knn),
             "entries": sum(len(v) for v in knn.values())},
            {"tier": "L1", "store": "COMPOSE", "facts": len(comp),
             "entries": sum(len(v) for v in comp.values())},
            {"tier": "L2", "store": "MEMIT", "facts": len(mem),
             "entries": sum(1 for p in (ov.stack if ov else []) for o in p.operations
                            if o.op == "memit")}]
    return Result.table("SHOW COMPACT STATUS", ["tier", "store", "facts", "entries"], rows,
                        message=f"L0 KNN {len(knn)} facts, L1 COMPOSE {len(comp)}, "
                                f"L2 MEMIT {len(mem)}")
