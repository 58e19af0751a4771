"""Steering and injection: vectors added to the residual stream, or put in place of a
token's input embedding, during INFER / GENERATE (docs/INTERPRET.md).

Both become :class:`lql.model.Hooks` passed to the one forward path
(:func:`lql.runtime.rank` / :func:`lql.runtime.greedy`), so they compose with overlay
edits (which live in the model's rebuilt layers) and the KV cache.

* **Steering** (``STEER <source> AT LAYER n SCALE s [%]``): ``hooks.residual`` adds
  ``s · v`` to the residual after layer ``n`` at every position of every call — the prompt
  and each generated step — like a forward hook on a transformers decoder layer's output.
  Several clauses add up.
  ``v`` is the file's vector as stored, or a unit direction (``CONTRAST``: unit-normalised
  mean difference; ``SAE FEATURE``: the decoder row divided by its norm).
  ``SCALE p %``: ``p/100 · mean‖h_n‖ · v/‖v‖``, where the mean residual norm is over the
  current prompt's positions *except the first* (when there are others) of an unsteered
  forward pass (overlay edits included). The first position is an attention sink in most
  models, BOS or not, with an outlier norm (SmolLM2 after layer 15: ~22,700 at position 0
  against ~160–200 elsewhere) that would otherwise set the scale alone.
* **Contrast**: ``v = mean_A h_n[last] − mean_B h_n[last]``, unit-normalised — the
  residual after layer ``n`` at each prompt's *last* position (where the next-token
  prediction is read, and which has attended to the whole prompt), prompts raw (no chat
  wrapping), one per non-blank line of each file.
* **Injection** (``INJECT "<file>" AT TOKEN "<placeholder>" [SCALE s]``): ``hooks.embed``
  replaces the (scaled) input embedding at every prompt position holding the placeholder
  token with ``s · x/‖x‖``; ``s`` defaults to the adapter's ``nla_meta.yaml``
  ``injection_scale`` (``USE MODEL ... WITH ADAPTER``) when present, else ``√hidden``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import ast
from ..errors import ExecutionError, LqlError

__all__ = ["SteerError", "load_vector", "read_prompts", "contrast_vector", "sae_direction",
           "resolve", "mean_residual_norm", "Prepared", "prepare", "injection_scale",
           "save_vector", "last_residuals"]

F32 = np.float32


class SteerError(ExecutionError):
    """A steering / injection input that cannot be used (file, shape, token, SAE)."""


# --------------------------------------------------------------------------- vectors

def load_vector(path: str | Path, hidden: int, what: str = "steering vector") -> np.ndarray:
    """One ``[hidden]`` float32 vector from ``.npy``, a single-array ``.npz`` or a
    single-tensor ``.safetensors`` (a ``[1, hidden]`` array is accepted)."""
    p = Path(path)
    if not p.is_file():
        raise SteerError(f"{what} file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                names = list(z.files)
                if len(names) != 1:
                    raise SteerError(f"{p} holds {len(names)} arrays ({', '.join(names[:5])}); "
                                     f"a {what} file holds exactly one")
                arr = z[names[0]]
        elif suffix == ".safetensors":
            from ..sources.safetensors_io import SafetensorsReader
            reader = SafetensorsReader([p], None)
            names = list(reader.names())
            if len(names) != 1:
                raise SteerError(f"{p} holds {len(names)} tensors ({', '.join(names[:5])}); "
                                 f"a {what} file holds exactly one")
            arr = reader.read(names[0])
        else:
            raise SteerError(f"{p}: a {what} is a .npy, .npz or .safetensors file")
    except LqlError:
        raise
    except (OSError, ValueError) as exc:
        raise SteerError(f"cannot read {what} {p}: {exc}") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiu":
        raise SteerError(f"{p}: a {what} holds numbers, not {arr.dtype}")
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != (hidden,):
        raise SteerError(f"{p}: {what} has shape {tuple(arr.shape)}, the model's hidden size "
                         f"is {hidden} (expected ({hidden},))")
    v = arr.astype(F32)
    if not np.isfinite(v).all():
        raise SteerError(f"{p}: {what} holds NaN/Inf")
    return v


def save_vector(path: Path, v: np.ndarray) -> None:
    """Write ``v`` as ``.npy`` (atomically; other suffixes refused)."""
    import io

    from ..atomic import atomic_write_bytes
    if path.suffix.lower() != ".npy":
        raise SteerError(f"SAVE STEER writes a .npy file, not {path.name}")
    buf = io.BytesIO()
    np.save(buf, np.asarray(v, dtype=F32), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-blank line (trailing whitespace stripped)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SteerError(f"cannot read prompt file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SteerError(f"prompt file {p} is not UTF-8 text") from None
    prompts = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SteerError(f"prompt file {p} holds no prompts (one per line)")
    return prompts


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(v.astype(np.float64)))
    if not norm > 0 or not math.isfinite(norm):
        raise SteerError(f"{what} has zero (or non-finite) norm: no direction to use")
    return (v / norm).astype(F32)


def _check_layer(target: Any, layer: int) -> None:
    n = target.model.num_layers
    if not 0 <= layer < n:
        raise SteerError(f"layer {layer} out of range 0..{n - 1}")


def last_residuals(target: Any, prompts: Sequence[str], layer: int,
                   check: Callable[[], None] | None = None) -> np.ndarray:
    """``[len(prompts), hidden]``: the residual after ``layer`` at each prompt's last
    position (raw prompts, overlay edits included, no steering)."""
    from ..model import Record
    rec = Record(residuals="last", layers=frozenset([layer]))
    rows = []
    for text in prompts:
        if check is not None:
            check()
        ids = target.tokenizer.encode(text).ids
        if not ids:
            raise SteerError(f"the prompt {text!r} produced no tokens")
        out = target.model.forward(list(ids), record=rec)
        rows.append(np.asarray(out.residuals[layer], dtype=np.float64))
    return np.stack(rows)


def contrast_vector(target: Any, a: Path, b: Path, layer: int,
                    check: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The unit-normalised ``mean(h_layer | A) − mean(h_layer | B)`` and what it was made of."""
    _check_layer(target, layer)
    pa, pb = read_prompts(a), read_prompts(b)
    diff = last_residuals(target, pa, layer, check).mean(0) - last_residuals(target, pb, layer, check).mean(0)
    raw = float(np.linalg.norm(diff))
    return _unit(diff.astype(F32), f"the contrast {a.name} vs {b.name}"), \
        {"prompts_a": len(pa), "prompts_b": len(pb), "difference_norm": raw}


def sae_direction(session: Any, feature: int, name: str | None, hidden: int) -> tuple[np.ndarray, Any]:
    """Feature ``feature``'s unit decoder direction from the session's SAE registry
    (``session.saes``: name → object with ``.W_dec [d_sae, hidden]`` and ``.layer``)."""
    saes = getattr(session, "saes", None) or {}
    if not saes:
        raise SteerError('no SAE loaded (USE SAE "<path>" [AT LAYER n] [AS name] first)')
    current = getattr(session, "sae_name", None)
    if name is None and current in saes:          # the current SAE: the last USE SAE
        sae = saes[current]
    elif name is None:
        if len(saes) > 1:
            raise SteerError(f"{len(saes)} SAEs are loaded ({', '.join(sorted(saes))}); "
                             "name one: SAE <name> FEATURE n")
        sae = next(iter(saes.values()))
    else:
        if name.lower() not in saes:
            raise SteerError(f"no SAE named {name!r} (loaded: {', '.join(sorted(saes))})")
        sae = saes[name.lower()]
    w = np.asarray(sae.W_dec)
    if w.ndim != 2 or w.shape[1] != hidden:
        raise SteerError(f"the SAE's decoder has shape {tuple(w.shape)}, the model's hidden size "
                         f"is {hidden}")
    if not 0 <= feature < w.shape[0]:
        raise SteerError(f"SAE feature {feature} out of range 0..{w.shape[0] - 1}")
    return _unit(np.asarray(w[feature], dtype=F32), f"SAE feature {feature}'s decoder row"), sae


def resolve(session: Any, target: Any, source: ast.SteerSource, layer: int,
            check: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """A STEER source → its vector (``[hidden]`` float32) and a description for ``meta``."""
    hidden = target.model.hidden_size
    _check_layer(target, layer)
    if isinstance(source, ast.SteerFile):
        p = session.resolve_path(source.path)
        return load_vector(p, hidden), {"source": "file", "path": str(p)}
    if isinstance(source, ast.SaeFeature):
        v, sae = sae_direction(session, source.feature, source.sae, hidden)
        info: dict[str, Any] = {"source": "sae", "feature": source.feature,
                                "sae": source.sae, "sae_layer": getattr(sae, "layer", None)}
        return v, info
    if isinstance(source, ast.Contrast):
        a, b = session.resolve_path(source.a), session.resolve_path(source.b)
        v, info = contrast_vector(target, a, b, layer, check)
        return v, {"source": "contrast", "a": str(a), "b": str(b), **info}
    raise TypeError(f"unknown steering source {source!r}")


def mean_residual_norm(target: Any, ids: Sequence[int], layer: int) -> float:
    """Mean L2 norm of the residual after ``layer`` over the prompt's positions (the first
    excluded when there are others: an attention sink's outlier norm), unsteered."""
    from ..model import Record
    out = target.model.forward(list(ids), record=Record(residuals="all", layers=frozenset([layer])))
    h = np.asarray(out.residuals[layer], dtype=np.float64)
    if len(ids) > 1:
        h = h[1:]
    return float(np.linalg.norm(h, axis=-1).mean())


# --------------------------------------------------------------------------- injection

def nla_meta(source: Any) -> dict[str, Any]:
    """The adapter's ``nla_meta.yaml`` (simple ``key: value`` lines) of a source loaded
    WITH ADAPTER, else ``{}``."""
    meta = getattr(source, "adapter_meta", None)
    return dict(meta) if isinstance(meta, dict) else {}


def injection_scale(target: Any) -> tuple[float, str]:
    """The default INJECT scale and where it came from."""
    meta = nla_meta(target.view) if target.kind == "model" else {}
    value = meta.get("injection_scale")
    if value is not None:
        try:
            return float(value), "nla_meta.yaml injection_scale"
        except (TypeError, ValueError):
            raise SteerError(f"nla_meta.yaml: injection_scale {value!r} is not a number") from None
    return math.sqrt(target.model.hidden_size), "sqrt(hidden)"


def placeholder_id(target: Any, token: str) -> int:
    """The id of ``token`` as one vocabulary entry (or text that encodes to one token)."""
    tok = target.tokenizer
    tid = tok.token_to_id(token)
    if tid is None:
        ids = tok.encode(token, add_special_tokens=False).ids
        if len(ids) == 1:
            tid = ids[0]
    if tid is None:
        raise SteerError(f"INJECT: {token!r} is not a single token of this tokenizer "
                         "(use a special or single-piece token as the placeholder)")
    return int(tid)


# --------------------------------------------------------------------------- hooks

@dataclass
class Prepared:
    """What INFER runs with: the hooks (or ``None``) and a description for ``meta``."""
    hooks: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


def prepare(session: Any, target: Any, stmt: ast.Infer, ids: Sequence[int],
            check: Callable[[], None] | None = None) -> Prepared:
    """Hooks for ``stmt``'s STEER and INJECT clauses on the prepared prompt ``ids``."""
    if not stmt.steer and not stmt.inject:
        return Prepared()
    from ..model import Hooks
    hidden = target.model.hidden_size
    adds: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(hidden, dtype=F32))
    steer_meta = []
    norms: dict[int, float] = {}
    for s in stmt.steer:
        v, info = resolve(session, target, s.source, s.layer, check)
        if s.percent:
            if s.layer not in norms:
                norms[s.layer] = mean_residual_norm(target, ids, s.layer)
            absolute = s.scale / 100.0 * norms[s.layer]
            vec = _unit(v, "the steering vector") * F32(absolute)
            info.update(mean_residual_norm=norms[s.layer], absolute_scale=absolute)
        else:
            vec = v * F32(s.scale)
        adds[s.layer] = adds[s.layer] + vec.astype(F32)
        steer_meta.append({"layer": s.layer, "scale": s.scale, "percent": s.percent,
                           "added_norm": float(np.linalg.norm(vec)), **info})

    inject: dict[int, np.ndarray] = {}
    inject_meta = []
    for inj in stmt.inject:
        p = session.resolve_path(inj.path)
        x = load_vector(p, hidden, "injected vector")
        tid = placeholder_id(target, inj.token)
        where = [i for i, t in enumerate(ids) if int(t) == tid]
        if not where:
            raise SteerError(f"INJECT: the placeholder {inj.token!r} (token {tid}) is not in the "
                             "prompt")
        if inj.scale is None:
            scale, origin = injection_scale(target)
        else:
            scale, origin = float(inj.scale), "SCALE"
        row = _unit(x, f"the injected vector {p.name}") * F32(scale)
        for i in where:
            inject[i] = row
        inject_meta.append({"path": str(p), "token": inj.token, "token_id": tid,
                            "positions": where, "scale": scale, "scale_from": origin})

    residual = None
    if adds:
        table = dict(adds)

        def residual(layer: int, h: np.ndarray) -> np.ndarray:
            v = table.get(layer)
            return h if v is None else h + v

    embed = None
    if inject:
        def embed(ids_: np.ndarray, positions: np.ndarray, h: np.ndarray) -> np.ndarray:
            hit = [(j, inject[int(pos)]) for j, pos in enumerate(positions) if int(pos) in inject]
            if not hit:
                return h
            h = np.array(h, dtype=F32, copy=True)
            for j, row in hit:
                h[j] = row
            return h

    meta: dict[str, Any] = {}
    if steer_meta:
        meta["steer"] = steer_meta
    if inject_meta:
        meta["inject"] = inject_meta
    return Prepared(Hooks(residual=residual, embed=embed), meta)
