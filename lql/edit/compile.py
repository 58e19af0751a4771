"""COMPILE: bake the overlay into a standalone vindex, or write a Hugging Face model folder.

* :func:`compile_vindex` — a new vindex directory: files the edits do not touch
  are hard-linked (copied where links are impossible); ``gate_vectors.bin``,
  ``up_weights.bin`` / ``down_weights.bin`` and ``down_meta.bin`` are rewritten
  with the edits applied (in the vindex's own dtype); ``index.json`` gets new
  checksums for rewritten files and a ``compiled_from`` provenance key (unknown
  keys preserved).  Built in a temporary sibling and renamed into place.
* :func:`compile_model` — safetensors with the family's own tensor names
  (``Family.hf_key``), ``config.json`` (``Family.hf_config``), the tokenizer files
  and the chat template, in the dtype the model runs in (:func:`model_dtype`: the
  source's; bfloat16 for Gemma, never float16 there).  Streamed tensor by tensor (one
  tensor's float32 copy at a time, never the model): one ``model.safetensors`` when it
  fits one shard, else ``model-0000k-of-0000n.safetensors`` shards of at most
  ``shard_bytes`` (default :data:`SHARD_BYTES`, 4 GiB) plus
  ``model.safetensors.index.json``, as Hugging Face writes them.

KNN entries are not weights: they cannot be baked into either output; the
result says how many were left out (keep the ``.vlp`` patch for them).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..atomic import AtomicDir
from ..errors import ExecutionError, LevelError, MissingTensorError, NotBuiltError
from .overlay import Overlay, OverlayVindex, ffn_layout

__all__ = ["compile_vindex", "compile_model", "resolve_conflicts", "model_dtype"]

_TORCH_NAMES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
                "f16": "float16", "half": "float16", "float32": "float32", "f32": "float32",
                "float": "float32"}


def model_dtype(base) -> str:
    """The dtype COMPILE INTO MODEL writes: the one the model can run in.  The source's own
    (``source_dtype`` in the provenance, from its ``config.json``) when recorded; else
    float32 (bfloat16 for the Gemma families).  float16 is never chosen for a Gemma family
    (its activations overflow: transformers then gives NaN logits)."""
    mc = dict(getattr(base, "model_config", None) or {})
    src = dict(getattr(base, "source", None) or {})
    found = None
    for d in (mc, src):
        for key in ("source_dtype", "torch_dtype"):
            name = _TORCH_NAMES.get(str(d.get(key, "")).lower())
            if name is not None:
                found = name
                break
        if found:
            break
    gemma = str(getattr(base, "family", "") or "").lower().startswith("gemma")
    if found is None and str(getattr(base, "dtype", "")) == "bf16":
        found = "bfloat16"                     # a bf16 vindex: its stored values, exactly
    if found is None:
        # the source's dtype is unknown (a GGUF): float16 is not safe — SmolLM2 and the Gemmas
        # give NaN logits in transformers' float16 — so f16 storage is written as float32
        # (its values exactly), bfloat16 for the Gemma families (what they are released in)
        found = "bfloat16" if gemma else "float32"
    if gemma and found == "float16":
        found = "bfloat16"
    return found


TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
#: the largest shard COMPILE INTO MODEL writes (a tensor larger than this gets a shard of its own)
SHARD_BYTES = 4 << 30
#: vindex dtype → (safetensors dtype, config torch_dtype, bytes per value)
_OUT_DTYPES = {"f32": ("F32", "float32", 4), "f16": ("F16", "float16", 2), "bf16": ("BF16", "bfloat16", 2)}


def _encode(arr: np.ndarray, store: str) -> np.ndarray:
    """float32 values as the words of storage ``store`` (``f32``, ``f16``, ``bf16``)."""
    if store == "bf16":
        from ..vindex.weights import f32_to_bf16
        return f32_to_bf16(arr)
    return np.ascontiguousarray(arr, dtype=np.dtype("<f2") if store == "f16" else np.dtype("<f4"))


def _check_out(out: Path, force: bool, base_path: Path | None) -> None:
    if base_path is not None and out.resolve() == base_path.resolve():
        raise ExecutionError("COMPILE cannot write over the vindex it reads; choose another path")
    if out.exists() and not force:
        raise ExecutionError(f"{out} already exists (add FORCE to replace it)")


def resolve_conflicts(view, policy: str | None):
    """The view to compile under an ON CONFLICT policy (conflict: two patches edit one
    ``(layer, feature)``).  LAST_WINS: the view itself.  FAIL: error listing them.
    HIGHEST_CONFIDENCE: a view where only the most confident patch's ops for that slot count."""
    ov = getattr(view, "overlay", None)
    if ov is None or policy in (None, "LAST_WINS"):
        return view
    owners: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for i, p in enumerate(ov.stack):
        for op in p.operations:
            if op.feature is not None:
                owners.setdefault((op.layer, op.feature), []).append(
                    (i, float(op.get("confidence") or 0.0)))
    conflicts = {k: v for k, v in owners.items() if len({i for i, _ in v}) > 1}
    if not conflicts:
        return view
    if policy == "FAIL":
        shown = ", ".join(f"L{l}:F{f}" for l, f in sorted(conflicts)[:8])
        raise ExecutionError(f"{len(conflicts)} features are edited by more than one patch "
                             f"({shown}); ON CONFLICT LAST_WINS or HIGHEST_CONFIDENCE")
    from .patch import Patch
    winner = {k: max(v, key=lambda t: (t[1], t[0]))[0] for k, v in conflicts.items()}
    tmp = Overlay(ov.base)
    for i, p in enumerate(ov.stack):
        ops = [op for op in p.operations if op.feature is None
               or winner.get((op.layer, op.feature), i) == i]
        tmp.stack.append(Patch(base_model=p.base_model, operations=ops, path=p.path))
    return OverlayVindex(ov.base, tmp)


# --------------------------------------------------------------------------- INTO VINDEX

def compile_vindex(view, out, *, force: bool = False, on_conflict: str | None = None) -> dict:
    from ..vindex.checksums import sha256_file
    from ..vindex.down_meta import DownMetaWriter
    from ..vindex.knn_store import FILE as KNN_FILE
    from ..vindex.knn_store import write_knn_store
    view = resolve_conflicts(view, on_conflict)
    ov = getattr(view, "overlay", None)
    base = getattr(view, "base", view)
    src = Path(base.path)
    out = Path(out)
    _check_out(out, force, src)
    edited_layers = sorted(ov.edited_layers()) if ov is not None else []
    feats = ov.features if ov is not None else {}
    lay = ffn_layout(base)
    index = json.loads((src / "index.json").read_text(encoding="utf-8"))
    dtype = str(base.dtype)
    manifest = {e["key"]: e for e in (getattr(base, "manifest", None) or [])}

    # which slices of which file change
    writes: dict[str, list[tuple[int, np.ndarray, str]]] = {}
    for layer in edited_layers:
        edits = [e for (l, _), e in feats.items() if l == layer]
        if any(e.gate is not None for e in edits):
            entry = base._layer_entry(layer)
            writes.setdefault("gate_vectors.bin", []).append(
                (entry["offset"], np.asarray(view.gate(layer), np.float32), dtype))
        for kind, key in (("up", lay.up_key(layer)), ("down", lay.down_key(layer))):
            low_rank = bool(ov is not None and kind == "down" and ov.low_rank.get(layer))
            if not key or not (low_rank or any(getattr(e, kind) is not None
                                               or (kind == "down" and e.deleted)
                                               for e in edits)):
                continue
            entry = manifest.get(key)
            if entry is None:
                continue                      # a BROWSE vindex has no up/down weights
            writes.setdefault(entry["file"], []).append(   # in the entry's own storage
                (entry["offset"], np.asarray(view.weights[key], np.float32), str(entry.get("_dtype", "f32"))))
    changed = set(writes) | ({"down_meta.bin"} if edited_layers else set())

    with AtomicDir(out, force, hint="FORCE") as staging:
        tmp = staging.folder
        for item in sorted(src.iterdir()):
            if item.name.startswith(".") or item.name == "index.json":
                continue
            dst = tmp / item.name
            if item.is_dir():
                shutil.copytree(item, dst)
            elif item.name in changed or (ov is not None and item.name == KNN_FILE):
                continue                      # rewritten below (the KNN store: from the overlay)
            else:
                try:
                    os.link(item, dst)
                except OSError:
                    shutil.copy2(item, dst)
        for name, parts in writes.items():
            dst = tmp / name
            shutil.copyfile(src / name, dst)   # a real copy: never write through a link
            with open(dst, "r+b") as fh:
                for offset, arr, store in parts:
                    fh.seek(offset)
                    fh.write(_encode(arr, store).tobytes())
        if edited_layers:
            dm = view.down_meta
            with open(tmp / "down_meta.bin", "wb") as fh:
                w = DownMetaWriter(fh, int(base.num_layers), int(dm.top_k))
                for layer in range(int(base.num_layers)):
                    n = base.down_meta.num_features(layer)
                    w.write_layer(layer, np.ascontiguousarray(dm.layer_records(layer))
                                  if n else None)
                w.finish()
        if ov is not None and ov.knn:
            # the session's KNN facts (the base store's, loaded at USE, included), as
            # LARQL's COMPILE INTO VINDEX saves its store (compile/into_vindex.rs:355-358)
            from .knn_facts import stored_facts
            write_knn_store(tmp / KNN_FILE, stored_facts(ov.knn))
        sums = dict(index.get("checksums") or {})
        base_gate_sum = sums.get("gate_vectors.bin")     # the base's, before any rewrite
        for name in changed:
            sums[name] = sha256_file(tmp / name)
        index["checksums"] = sums
        index["compiled_from"] = {
            "vindex": str(src), "base_checksum": base_gate_sum,
            "patches": [p.name for p in ov.stack] if ov is not None else [],
            "edited_features": len(feats)}
        from ..vindex.checksums import seal_index
        seal_index(index)
        with open(tmp / "index.json", "w", encoding="utf-8") as fh:
            json.dump(index, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
    return {"path": str(out), "rewritten": sorted(changed), "edited_features": len(feats),
            "knn_facts": len(ov.knn) if ov is not None else 0}


# --------------------------------------------------------------------------- INTO MODEL

def compile_model(view, out, *, format: str = "SAFETENSORS", force: bool = False,
                  shard_bytes: int | None = None) -> dict:
    from ..families import get_family
    if format.upper() == "GGUF":
        raise NotBuiltError("COMPILE ... INTO MODEL ... FORMAT GGUF is not supported yet; "
                            "use FORMAT SAFETENSORS (convert with llama.cpp's "
                            "convert_hf_to_gguf.py if you need a GGUF)")
    base = getattr(view, "base", view)
    out = Path(out)
    _check_out(out, force, Path(base.path))
    fam = get_family(base.family)
    mc = dict(base.model_config)
    mc.setdefault("num_layers", int(base.num_layers))
    mc.setdefault("hidden_size", int(base.hidden_size))
    mc.setdefault("vocab_size", int(base.vocab_size))
    mc.setdefault("intermediate_size", int(getattr(base, "intermediate_size", 0) or
                                           base.num_features(0)))
    keys = fam.keys(mc, "all")
    tied = bool(mc.get("tie_word_embeddings"))
    if tied:
        keys = [k for k in keys if k != fam.lm_head_key]
    missing = [k for k in keys if k not in view.weights]
    if missing:
        level = getattr(base, "level", "?")
        raise LevelError(f"COMPILE INTO MODEL needs every tensor; this vindex (extracted at "
                         f"{str(level).upper()}) lacks {len(missing)}, e.g. {missing[0]} — "
                         f"re-extract WITH ALL")
    torch_dtype = model_dtype(base)
    store = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[torch_dtype]
    st_dtype, _name, item = _OUT_DTYPES[store]
    shapes = {k: _shape(view.weights, k) for k in keys}
    shards = _plan_shards(keys, {k: item * int(np.prod(shapes[k], dtype=np.int64)) for k in keys},
                          SHARD_BYTES if shard_bytes is None else int(shard_bytes))
    cfg = fam.hf_config(mc)
    cfg["torch_dtype"] = torch_dtype
    cfg["dtype"] = torch_dtype                 # the key newer transformers reads
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    with AtomicDir(out, force, hint="FORCE") as staging:
        tmp = staging.folder
        weight_map: dict[str, str] = {}
        total = 0
        for name, shard in zip(names, shards, strict=True):
            total += _write_shard(tmp / name, [(fam.hf_key(k), shapes[k], k) for k in shard],
                                  view.weights, store, st_dtype)
            weight_map.update({fam.hf_key(k): name for k in shard})
        if len(shards) > 1:
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                indent=2) + "\n", encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        for name in TEXT_FILES:
            p = Path(base.path) / name
            if p.is_file():
                shutil.copyfile(p, tmp / name)
    ov = getattr(view, "overlay", None)
    return {"path": str(out), "tensors": len(keys), "dtype": cfg["torch_dtype"],
            "shards": len(shards),
            "edited_features": len(ov.features) if ov is not None else 0,
            "knn_left_out": len(ov.knn) if ov is not None else 0}


def _shape(weights, key: str) -> tuple[int, ...]:
    getter = getattr(weights, "shape", None)
    if callable(getter):
        try:
            return tuple(int(d) for d in getter(key))
        except (KeyError, MissingTensorError, TypeError):
            pass
    return tuple(int(d) for d in np.shape(weights[key]))


def _plan_shards(keys: list[str], sizes: dict[str, int], limit: int) -> list[list[str]]:
    """``keys`` in order, cut into shards of at most ``limit`` bytes (never an empty one)."""
    shards: list[list[str]] = [[]]
    used = 0
    for k in keys:
        if shards[-1] and used + sizes[k] > limit:
            shards.append([])
            used = 0
        shards[-1].append(k)
        used += sizes[k]
    return shards


def _write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...], str]], weights, store: str,
                 st_dtype: str) -> int:
    """One safetensors file, written tensor by tensor (header first: the shapes are known);
    returns its data bytes.  Each tensor's values come from ``weights`` (float32) one at a time."""
    item = 2 if store in ("f16", "bf16") else 4
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape, _ in tensors:
        n = item * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    release = getattr(weights, "release", None)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        for _name, shape, key in tensors:
            arr = np.asarray(weights[key], dtype=np.float32)
            if tuple(arr.shape) != tuple(shape):
                raise ExecutionError(f"tensor {key} has shape {arr.shape}, expected {shape}")
            fh.write(_encode(arr, store).data)
            del arr
            if release is not None:          # the source's mapped pages leave this process
                release(key)
        fh.flush()
        os.fsync(fh.fileno())
    return off
