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
    if sae is not None:                      # WITH SAE: top features at every position
        from ..infer.sae import DEFAULT_TOP_FEATURES, add_sae_rows, feature_rows
        rows = feature_rows(target, sae, prep.ids, top=stmt.top or DEFAULT_TOP_FEATURES)
        add_sae_rows(result, rows, sae_name=stmt.sae or session.sae_name)
    return attach_plot(result, plot)


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
