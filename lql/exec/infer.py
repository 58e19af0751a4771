"""Inference handlers: INFER (with GENERATE), EXPLAIN INFER, TRACE.

Thin: they resolve the session's target (:func:`lql.infer.engine.target_for`),
prepare the prompt (chat wrapping) and call :mod:`lql.infer`.

Streaming GENERATE: set ``session.on_token`` to a callable taking one ``str``;
it is called with each piece of text as it is produced (the REPL prints it),
and the finished continuation is still returned as the ``text`` result.
"""

from __future__ import annotations

from .. import ast
from ..result import Result
from . import handler


def _prepare(session, stmt, target):
    from ..infer.prompt import prepare
    return prepare(target, stmt.prompt, wrap=stmt.wrap, system=stmt.system,
                   chat_mode=session.chat_mode)


@handler(ast.Infer)
def infer(session, stmt) -> Result:
    from ..infer.engine import target_for
    from ..infer.predict import generate_result, infer_result
    from ..plot import attach_plot, plot_target
    from ..steer import prepare as steering
    plot = plot_target(session, stmt)
    target = target_for(session, "INFER")
    prep = _prepare(session, stmt, target)
    hooked = steering(session, target, stmt, prep.ids, check=session.check_cancelled)
    if stmt.generate is not None:
        return generate_result(target, prep, int(stmt.generate),
                               on_token=session.on_token,
                               check=session.check_cancelled,
                               hooks=hooked.hooks, steer_meta=hooked.meta)
    return attach_plot(_noted(infer_result(target, prep, top=stmt.top, compare=stmt.compare,
                                           verbose=stmt.verbose, hooks=hooked.hooks,
                                           steer_meta=hooked.meta), target), plot)


@handler(ast.SaveSteer)
def save_steer(session, stmt) -> Result:
    """SAVE STEER <source> AT LAYER n INTO "v.npy": the vector STEER would use at SCALE 1."""
    from ..infer.engine import target_for
    from ..steer import resolve, save_vector
    target = target_for(session, "SAVE STEER")
    v, info = resolve(session, target, stmt.source, stmt.layer, check=session.check_cancelled)
    out = session.resolve_path(stmt.output)
    save_vector(out, v)
    import numpy as np
    norm = float(np.linalg.norm(v))
    return Result.msg("SAVE STEER", f"Saved the {info['source']} vector at layer {stmt.layer} "
                      f"(norm {norm:.4g}, {v.shape[0]} values) to {out}",
                      path=str(out), layer=stmt.layer, norm=norm, **info)


def _noted(result: Result, target) -> Result:
    """Say what the vindex's forward pass does differently from the original model."""
    from ..runtime.models import forward_caveats
    notes = forward_caveats(target.view) if getattr(target, "kind", None) == "vindex" else []
    if notes:
        text = "; ".join(f"note: {n}" for n in notes)
        result.message = text if not result.message else f"{result.message}\n{text}"
        result.meta["caveats"] = notes
    return result


@handler(ast.ExplainInfer)
def explain_infer(session, stmt) -> Result:
    from ..infer.engine import target_for
    from ..infer.explain import explain
    from ..plot import attach_plot, plot_target
    plot = plot_target(session, stmt)
    target = target_for(session, "EXPLAIN INFER")
    if stmt.band is not None:                # LARQL's band clause: those layers
        stmt = _band_as_layers(session, stmt)
    prep = _prepare(session, stmt, target)
    sae = session.sae(stmt.sae) if stmt.with_sae else None       # unknown name: fail first
    for_token = getattr(stmt, "for_token", None)
    if for_token is not None:                # FOR <token>: the features carrying it
        if stmt.with_attention or sae is not None:
            from ..errors import ExecutionError
            raise ExecutionError("EXPLAIN INFER ... FOR ranks the features carrying a token; "
                                 "it takes no WITH ATTENTION / WITH SAE (run those without FOR)")
        from ..infer.explain import explain_for
        return attach_plot(explain_for(target, prep, for_token, layers=stmt.layers,
                                       top=stmt.top, verbose=stmt.verbose,
                                       check=session.check_cancelled), plot)
    result = explain(target, prep, layers=stmt.layers, top=stmt.top, verbose=stmt.verbose,
                     with_attention=stmt.with_attention,
                     check=session.check_cancelled)
    if stmt.relations_only:
        _relations_only(result)
    if sae is not None:                      # WITH SAE: top features at every position
        from ..infer.sae import DEFAULT_TOP_FEATURES, add_sae_rows, feature_rows
        rows = feature_rows(target, sae, prep.ids, top=stmt.top or DEFAULT_TOP_FEATURES)
        add_sae_rows(result, rows, sae_name=stmt.sae or session.sae_name)
    return attach_plot(result, plot)


def _band_as_layers(session, stmt):
    """``EXPLAIN INFER … KNOWLEDGE`` (LARQL's infer_trace.rs band filter): the band's layers
    of the vindex in use, as a LAYERS range; ALL LAYERS is every layer."""
    import dataclasses

    from ..browse.core import bands_of
    from ..errors import ExecutionError
    if stmt.layers is not None:
        raise ExecutionError("EXPLAIN INFER takes LAYERS or a band, not both")
    if stmt.band is ast.Band.ALL_LAYERS:
        return dataclasses.replace(stmt, band=None)
    if session.vindex is None:
        raise ExecutionError(f"a band ({stmt.band.value}) names layers of a vindex; with USE "
                             f"MODEL give LAYERS a-b instead")
    lo, hi = bands_of(session.vindex)[str(stmt.band.value).lower()]
    return dataclasses.replace(stmt, band=None, layers=ast.Range(lo, hi))


def _relations_only(result) -> None:
    """``RELATIONS ONLY`` (LARQL infer_trace.rs:300-325): FFN rows of labelled features only,
    each layer's positive activations first, then by |activation|; attention and expert rows
    stay."""
    kept: list[dict] = []
    by_layer: dict[int, list[dict]] = {}
    for row in result.rows:
        if row.get("kind") != "ffn":
            kept.append(row)
        elif row.get("label"):
            by_layer.setdefault(row["layer"], []).append(row)
    ffn = [r for layer in sorted(by_layer) for r in sorted(
        by_layer[layer], key=lambda r: (r["activation"] <= 0, -abs(r["activation"])))]
    dropped = sum(1 for r in result.rows if r.get("kind") == "ffn") - len(ffn)
    result.rows = sorted(ffn + kept, key=lambda r: r["layer"])
    note = f"RELATIONS ONLY: {len(ffn)} labelled feature rows ({dropped} unlabelled dropped)"
    if not ffn:
        note += " — this vindex has no labels on the top features (see SHOW RELATIONS)"
    result.message = f"{result.message}\n{note}" if result.message else note


@handler(ast.Trace)
def trace(session, stmt) -> Result:
    from ..infer.engine import target_for
    from ..infer.trace import trace as compute
    from ..plot import attach_plot, plot_target
    plot = plot_target(session, stmt)
    target = target_for(session, "TRACE")
    prep = _prepare(session, stmt, target)
    save = session.resolve_path(stmt.save) if stmt.save else None
    sae = session.sae(stmt.sae) if stmt.with_sae else None       # unknown name: fail first
    result = compute(target, prep, for_token=stmt.for_token, decompose=stmt.decompose,
                     layers=stmt.layers, positions=stmt.positions, save=save)
    if sae is not None:                      # WITH SAE: top features at the traced positions
        from ..infer.sae import DEFAULT_TOP_FEATURES, add_sae_rows, feature_rows
        last = [len(prep.ids) - 1] if stmt.positions is not ast.Positions.ALL else None
        rows = feature_rows(target, sae, prep.ids, positions=last, top=DEFAULT_TOP_FEATURES)
        add_sae_rows(result, rows, sae_name=stmt.sae or session.sae_name)
    return attach_plot(result, plot)
