"""Inference statements: INFER, GENERATE, EXPLAIN INFER, TRACE (see docs/INFER.md).

* :mod:`lql.infer.engine` — :func:`target_for` (the model of the session's vindex,
  overlay view or live source, built once and cached);
* :mod:`lql.infer.prompt` — chat wrapping and token ids;
* :mod:`lql.infer.predict` — INFER rows, COMPARE, GENERATE (streaming);
* :mod:`lql.infer.explain` — EXPLAIN INFER;
* :mod:`lql.infer.trace` — TRACE (logit lens, direct logit attribution, SAVE).
"""
