"""Browse statements: USE, USE MODEL, STATS, SHOW LAYERS / FEATURES / RELATIONS /
ENTITIES, WALK, EXPLAIN WALK, DESCRIBE, SELECT.

Thin handlers: they pick the vindex view from the session and call the pure
computations in :mod:`lql.browse` (the Python API in :mod:`lql.api` calls the
same functions). ``session.vindex`` is the view browsed — after an edit it is
the overlay view (``lql.edit.overlay.OverlayVindex``), whose ``.base`` is the
overlay-free vindex that ``WALK ... COMPARE`` compares against.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import ast
from ..errors import ExecutionError, NoVindexError, VindexError
from ..result import Result
from ..runtime.view import EditedView, VindexView, overlay_of
from . import handler

__all__ = ["open_vindex_checked", "current_view"]


# --------------------------------------------------------------------------- helpers

def _extract_hint(given: str) -> str:
    name = Path(given.rstrip("/\\")).stem or "model"
    return f'EXTRACT MODEL "{given}" INTO "{name}.vindex"; USE "{name}.vindex"'


def open_vindex_checked(session, given: str):
    """Open the vindex at ``given`` (relative to the session's cwd) with clear errors."""
    path = session.resolve_path(given)
    if not path.exists():
        raise VindexError(f"{given}: no such vindex (nothing at {path}); make one with "
                          f'EXTRACT MODEL "<model folder or .gguf>" INTO "{given}"', path=str(path))
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            raise VindexError(f"{given} is a GGUF model, not a vindex: {_extract_hint(given)} "
                              f'(or USE MODEL "{given}" for live weights)', path=str(path))
        raise VindexError(f"{given} is a file, not a vindex folder (a vindex is a directory with "
                          f"index.json); make one with {_extract_hint(given)}", path=str(path))
    if not (path / "index.json").is_file():
        if (path / "config.json").is_file():
            raise VindexError(f"{given} is a Hugging Face model folder, not a vindex: "
                              f'{_extract_hint(given)} (or USE MODEL "{given}" for live weights)',
                              path=str(path))
        raise VindexError(f"{given} is not a vindex (no index.json); make one with "
                          f'EXTRACT MODEL "<model folder or .gguf>" INTO "{given}"', path=str(path))
    from ..vindex import open_vindex
    return open_vindex(path)


def current_view(session) -> VindexView:
    """The vindex (or overlay view) statements browse; a clear error when there is none."""
    v = session.vindex
    if v is None:
        if session.model_source is not None:
            raise NoVindexError("this statement browses a vindex, but the session uses live "
                                "weights (USE MODEL); run EXTRACT MODEL \"<source>\" INTO "
                                "\"model.vindex\"; USE \"model.vindex\"; first")
        raise NoVindexError()
    return v


def _base_of(view: VindexView) -> VindexView | None:
    return view.base if isinstance(view, EditedView) else None


def _check(session):
    return session.check_cancelled


# --------------------------------------------------------------------------- USE

@handler(ast.Use)
def use(session, stmt) -> Result:
    from ..browse.info import total_features
    from ..browse.labels import labels_of
    v = open_vindex_checked(session, stmt.path)
    check_tok = getattr(v, "tokenizer_caveat", None)
    if callable(check_tok):
        check_tok()                        # a substitute tokenizer: said below, as a caveat
    session.use_vindex(v)                  # a new base: edits start a fresh overlay
    knn_note, n_knn = session.knn_store_note, session.knn_store_facts
    lab = labels_of(v)
    n_clusters = len((lab.clusters or {}).get("labels") or []) if isinstance(lab.clusters, dict) else 0
    present = sum(1 for l in range(v.num_layers) if v.num_features(l) > 0)
    layers = f"{v.num_layers} layers" if present == v.num_layers else \
        f"{present} of {v.num_layers} layers"
    msg = (f"Using {stmt.path}: {v.model or '?'} ({v.family or '?'}), {layers}, "
           f"{total_features(v):,} features, level {str(v.level).upper()}, dtype {v.dtype}, "
           f"{len(lab.probe)} probe labels, {n_clusters} relation clusters, no patches")
    if knn_note:
        msg += f"; {knn_note}"
    assumed = dict(getattr(v, "assumed", None) or {})
    if assumed:                            # never silently: say what index.json lacked
        msg += ("; assumed (absent from index.json, the family's defaults): "
                + ", ".join(f"{k}={val}" for k, val in assumed.items()))
    for caveat in getattr(v, "caveats", None) or ():
        msg += f"; note: {caveat}"
    return Result.msg("USE", msg, path=str(v.path), model=v.model, family=v.family,
                      num_layers=v.num_layers, features=total_features(v), level=v.level,
                      dtype=v.dtype, labels=len(lab.probe), clusters=n_clusters, patches=0,
                      knn_facts=n_knn, **({"assumed": assumed} if assumed else {}))


@handler(ast.UseModel)
def use_model(session, stmt) -> Result:
    from ..sources import open_source
    from ..sources.adapter import AdapterSource
    where = session.resolve_source(stmt.source)
    src = open_source(where)
    adapter = None
    if stmt.adapter is not None:
        src = lora = AdapterSource(src, session.resolve_path(stmt.adapter))
        adapter = {"path": str(lora.adapter_path), "modules": len(lora.merged_modules),
                   "scaling": lora.scaling}
    if stmt.auto_extract:
        return _auto_extract(session, stmt, src)
    session.use_source(src)
    cfg = src.model_config or {}
    layers = cfg.get("num_layers") or (src.hf_config or {}).get("num_hidden_layers")
    merged = (f" with the LoRA adapter {stmt.adapter} merged ({adapter['modules']} modules, "
              f"scaling {adapter['scaling']:.4g})" if adapter else "")
    return Result.msg("USE MODEL", f"Using live weights of {stmt.source}{merged}: {src.name or '?'} "
                      f"({src.family or '?'}), {layers} layers — INFER, EXPLAIN INFER, "
                      f"TRACE and STATS work on it; browsing and edits need a vindex",
                      path=str(src.path or where), model=src.name, family=src.family,
                      **({"adapter": adapter} if adapter else {}))


def _auto_extract(session, stmt, src) -> Result:
    """``USE MODEL … AUTO_EXTRACT``: extract the source once (INFERENCE, f16) into the
    vindex cache (:mod:`lql.vindex.autocache`), then USE it — browsing, INFER and edits
    all work; a later AUTO_EXTRACT of the unchanged source reuses the folder."""
    from ..vindex import extract as run_extract
    from ..vindex.autocache import cached_path
    try:
        out = cached_path(src, level="inference", dtype="f16")
    except ValueError as e:
        raise ExecutionError(str(e)) from None
    reused = (out / "index.json").is_file()
    t0 = time.perf_counter()
    if not reused:
        out.parent.mkdir(parents=True, exist_ok=True)
        run_extract(src, out, level="inference", dtype="f16",
                    check_cancelled=session.check_cancelled)
    seconds = round(time.perf_counter() - t0, 2)
    used = use(session, ast.Use(str(out)))
    how = "reused the cached vindex" if reused else f"extracted it in {seconds} s into"
    return Result.msg("USE MODEL", f"AUTO_EXTRACT {stmt.source}: {how} {out}. {used.message}",
                      **{**used.meta, "auto_extract": {"vindex": str(out), "reused": reused,
                                                       "seconds": seconds}})


# --------------------------------------------------------------------------- STATS / SHOW

def _source_stats(src) -> Result:
    cfg = dict(src.model_config or {})
    hf = dict(src.hf_config or {})
    layers = cfg.get("num_layers") or hf.get("num_hidden_layers") or hf.get("n_layer")
    ffn = cfg.get("intermediate_size") or hf.get("intermediate_size") or hf.get("n_inner")
    row = {"model": src.name, "family": src.family,
           "num_layers": layers, "hidden_size": cfg.get("hidden_size") or hf.get("hidden_size"),
           "vocab_size": cfg.get("vocab_size") or hf.get("vocab_size"),
           "features": (layers * ffn) if (layers and ffn) else None, "dtype": "live",
           "extract_level": "model", "patches": 0}
    return Result.table("STATS", list(row), [row], message="live model weights (USE MODEL)")


@handler(ast.Stats)
def stats(session, stmt) -> Result:
    from ..browse.info import stats as compute
    if stmt.path is not None:
        return compute(open_vindex_checked(session, stmt.path))
    if session.vindex is None and session.model_source is not None:
        return _source_stats(session.model_source)
    v = current_view(session)
    return compute(v, overlay=session.overlay or overlay_of(v))


@handler(ast.ShowLayers)
def show_layers(session, stmt) -> Result:
    from ..browse.info import show_layers as compute
    return compute(current_view(session), stmt.layers)


@handler(ast.ShowFeatures)
def show_features(session, stmt) -> Result:
    from ..browse.info import show_features as compute
    return compute(current_view(session), stmt.layer, stmt.where, stmt.limit)


@handler(ast.ShowRelations)
def show_relations(session, stmt) -> Result:
    from ..browse.info import show_relations as compute
    return compute(current_view(session), stmt.layer, stmt.with_examples, stmt.verbosity)


@handler(ast.ShowEntities)
def show_entities(session, stmt) -> Result:
    from ..browse.info import show_entities as compute
    return compute(current_view(session), stmt.layer, stmt.limit, check=_check(session))


# --------------------------------------------------------------------------- WALK / DESCRIBE / SELECT

@handler(ast.Walk)
def walk(session, stmt) -> Result:
    from ..browse.walk import walk as compute
    from ..plot import attach_plot, plot_target
    plot = plot_target(session, stmt)
    v = current_view(session)
    return attach_plot(compute(v, stmt.prompt, top=stmt.top, layers=stmt.layers, mode=stmt.mode,
                               compare=stmt.compare,
                               compare_base=_base_of(v) if stmt.compare else None,
                               experts=stmt.experts, check=_check(session)), plot)


@handler(ast.ExplainWalk)
def explain_walk(session, stmt) -> Result:
    from ..browse.walk import walk as compute
    return compute(current_view(session), stmt.prompt, top=stmt.top, layers=stmt.layers,
                   explain=True, verbose=stmt.verbose, experts=stmt.experts, check=_check(session))


@handler(ast.Describe)
def describe(session, stmt) -> Result:
    from ..browse.describe import describe as compute
    from ..plot import attach_plot, plot_target
    plot = plot_target(session, stmt)
    if stmt.via is ast.Via.PROMPTS:
        return attach_plot(_describe_prompts(session, stmt), plot)
    return attach_plot(compute(current_view(session), stmt.entity, band=stmt.band,
                               layer=stmt.layer, relations_only=stmt.relations_only,
                               verbosity=stmt.verbosity, via=stmt.via, experts=stmt.experts,
                               check=_check(session)),
                       plot)


def _describe_prompts(session, stmt) -> Result:
    """DESCRIBE ... VIA PROMPTS: the relation templates answered by the model (an INFERENCE
    vindex or live weights; raw or chat as SET CHAT says); a band / AT LAYER narrows where
    the carrying features are looked for."""
    from ..browse.core import band_layers, bands_of, check_layer
    from ..errors import ExecutionError
    from ..infer.engine import target_for
    from ..infer.relations import describe_prompts
    if stmt.experts:
        raise ExecutionError("DESCRIBE ... VIA PROMPTS reports dense FFN features; drop EXPERTS")
    target = target_for(session, "DESCRIBE ... VIA PROMPTS")
    layers = None
    if session.vindex is not None and (stmt.layer is not None or stmt.band is not None):
        v = session.vindex
        if stmt.layer is not None:
            layers = [check_layer(v, int(stmt.layer))]
        elif stmt.band is not ast.Band.ALL_LAYERS:
            name = str(stmt.band.value).lower()
            if name not in bands_of(v):
                raise ExecutionError(f"unknown band {stmt.band.value!r}")
            layers = band_layers(v, name)
    return describe_prompts(target, stmt.entity, chat_mode=session.chat_mode,
                            verbosity=stmt.verbosity, layers=layers, check=_check(session))


@handler(ast.Select)
def select(session, stmt) -> Result:
    from ..browse.select import select as compute
    return compute(current_view(session), stmt.source, fields=stmt.fields, nearest=stmt.nearest,
                   where=stmt.where, order_by=stmt.order_by, limit=stmt.limit,
                   check=_check(session))
