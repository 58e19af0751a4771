"""Interpretability handlers: USE SAE, DESCRIBE SAE FEATURE, SELECT … FROM SAE FEATURES,
EVALUATE SAE and CAPTURE (EXPLAIN INFER / TRACE ``WITH SAE`` live in :mod:`lql.exec.infer`).

Thin: SAEs are read by :mod:`lql.sae` and registered on the session
(:meth:`lql.session.Session.use_sae`, ``session.saes``, :meth:`~lql.session.Session.sae`);
the computations are in :mod:`lql.infer.sae` and :mod:`lql.infer.capture`. Behaviour,
formulas and file layouts: docs/INTERPRET.md.
"""

from __future__ import annotations

import re

from .. import ast
from ..errors import ExecutionError
from ..result import Result
from . import handler

_NAME_RE = re.compile(r"[^A-Za-z0-9_]+")


def _default_name(path) -> str:
    stem = path.name
    for suffix in (".safetensors", ".npz"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    name = _NAME_RE.sub("_", stem).strip("_") or "sae"
    name = name.lower()
    return name if not name[0].isdigit() else "sae_" + name


def _target_or_none(session):
    if session.vindex is None and session.model_source is None:
        return None
    from ..infer.engine import target_for
    return target_for(session, "USE SAE")


@handler(ast.UseSae)
def use_sae(session, stmt) -> Result:
    from ..sae import load_sae
    path = session.resolve_path(stmt.path)
    sae = load_sae(path, layer=stmt.layer)
    target = _target_or_none(session)
    if target is not None:
        sae.check_model(target.model.hidden_size, target.model.num_layers)
    name = stmt.name or _default_name(path)
    session.use_sae(name, sae)
    checked = (f"checked against {target.name}" if target is not None
               else "not checked yet: no model in use")
    labels = f", {len(sae.labels)} labels" if sae.labels else ""
    row = {"name": name, "path": str(path), "architecture": sae.architecture, "layer": sae.layer,
           "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k, "hook_name": sae.hook_name,
           "labels": len(sae.labels), "format": sae.format}
    return Result.table("USE SAE", list(row), [row],
                        message=f"using SAE {name}: {sae.describe()}{labels} ({checked})")


def _target(session, statement: str):
    from ..infer.engine import target_for
    return target_for(session, statement)


def _sae_name(session, given: str | None) -> str:
    return given if given is not None else str(session.sae_name)


@handler(ast.DescribeSaeFeature)
def describe_sae_feature(session, stmt) -> Result:
    from ..infer.sae import describe_feature, read_prompts
    from ..vindex.progress import progress_display
    sae = session.sae(stmt.sae)
    target = _target(session, "DESCRIBE SAE FEATURE")
    top = 10 if stmt.top is None else int(stmt.top)
    if top < 1:
        raise ExecutionError(f"TOP must be at least 1, not {top}")
    prompts = read_prompts(session.resolve_path(stmt.file)) if stmt.file else None
    with progress_display(None) as bars, \
            bars.stage("describe", total=len(prompts) if prompts else None) as bar:
        return describe_feature(target, sae, stmt.feature, name=_sae_name(session, stmt.sae),
                                prompts=prompts, top=top, check=session.check_cancelled,
                                progress=bar)


@handler(ast.SelectSaeFeatures)
def select_sae_features(session, stmt) -> Result:
    from ..infer.sae import select_features
    sae = session.sae(stmt.sae)
    target = _target(session, "SELECT")
    return select_features(target, sae, name=_sae_name(session, stmt.sae), fields=stmt.fields,
                           where=stmt.where, order_by=stmt.order_by, limit=stmt.limit,
                           check=session.check_cancelled)


@handler(ast.EvaluateSae)
def evaluate_sae(session, stmt) -> Result:
    from ..infer.sae import evaluate, read_prompts
    from ..vindex.progress import progress_display
    sae = session.sae(stmt.sae)
    target = _target(session, "EVALUATE SAE")
    prompts = read_prompts(session.resolve_path(stmt.file))
    with progress_display(None) as bars, bars.stage("evaluate", total=len(prompts)) as bar:
        return evaluate(target, sae, prompts, name=_sae_name(session, stmt.sae),
                        check=session.check_cancelled, progress=bar)


@handler(ast.Capture)
def capture(session, stmt) -> Result:
    from ..infer.capture import capture as run_capture
    from ..infer.sae import read_prompts
    if (stmt.prompt is None) == (stmt.file is None):
        raise ExecutionError("CAPTURE needs either a prompt or FROM FILE <prompts>")
    target = _target(session, "CAPTURE")
    if stmt.file is not None:
        prompts = read_prompts(session.resolve_path(stmt.file))
    else:
        if not str(stmt.prompt).strip():
            raise ExecutionError("CAPTURE: the prompt is empty")
        prompts = [str(stmt.prompt)]
    out = run_capture(target, prompts, layer=stmt.layer, output=session.resolve_path(stmt.output),
                      all_positions=stmt.positions is ast.Positions.ALL,
                      check=session.check_cancelled)
    message = (f"captured {out['rows']} × {out['hidden_size']} residuals after layer "
               f"{out['layer']} ({out['positions']} positions of {out['prompts']} prompts) "
               f"into {out['path']}")
    return Result.table("CAPTURE", list(out), [out], message=message, model=target.name)
