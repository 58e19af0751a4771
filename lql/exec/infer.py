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
    target = target_for(session, "INFER")
    prep = _prepare(session, stmt, target)
    if stmt.generate is not None:
        return generate_result(target, prep, int(stmt.generate),
                               on_token=session.on_token,
                               check=session.check_cancelled)
    return _noted(infer_result(target, prep, top=stmt.top, compare=stmt.compare,
                               verbose=stmt.verbose), target)


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
    target = target_for(session, "EXPLAIN INFER")
    prep = _prepare(session, stmt, target)
    return explain(target, prep, layers=stmt.layers, top=stmt.top, verbose=stmt.verbose,
                   with_attention=stmt.with_attention,
                   check=session.check_cancelled)


@handler(ast.Trace)
def trace(session, stmt) -> Result:
    from ..infer.engine import target_for
    from ..infer.trace import trace as compute
    target = target_for(session, "TRACE")
    prep = _prepare(session, stmt, target)
    save = session.resolve_path(stmt.save) if stmt.save else None
    return compute(target, prep, for_token=stmt.for_token, decompose=stmt.decompose,
                   layers=stmt.layers, positions=stmt.positions, save=save)
