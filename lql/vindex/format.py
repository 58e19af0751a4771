"""The vindex on-disk format: file names, levels, dtypes, index.json fields.

See ``docs/VINDEX.md`` and the format spec.  Everything here is pure data and
small helpers shared by the reader, the writer and ``verify``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VindexError

FORMAT_VERSION = 2
INDEX = "index.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
GATE = "gate_vectors.bin"
EMBEDDINGS = "embeddings.bin"
DOWN_META = "down_meta.bin"
ATTN = "attn_weights.bin"
NORMS = "norms.bin"
UP = "up_weights.bin"
DOWN = "down_weights.bin"
LM_HEAD = "lm_head.bin"
MANIFEST = "weight_manifest.json"
FEATURE_LABELS = "feature_labels.json"
RELATION_CLUSTERS = "relation_clusters.json"
FEATURE_CLUSTERS = "feature_clusters.jsonl"

#: the levels a vindex may declare, lowest first.  LARQL's four (its
#: crates/larql-vindex/src/config/types.rs:86-100 ``ExtractLevel``); ``attention`` (attention
#: weights + norms, no FFN up/down) is read but never written here.
LEVELS = ("browse", "attention", "inference", "all")
#: the levels ``EXTRACT`` writes
EXTRACT_LEVELS = ("browse", "inference", "all")
#: numpy dtypes of the stored words; ``bf16`` is stored as its 16-bit patterns (``<u2``: numpy
#: has no bfloat16) and must be converted with :func:`lql.vindex.weights.bf16_to_f32`, never
#: ``astype`` (see :func:`to_f32`)
DTYPES: dict[str, np.dtype] = {"f16": np.dtype("<f2"), "f32": np.dtype("<f4"), "bf16": np.dtype("<u2")}
#: the numpy dtype that stands for bfloat16 words
BF16 = np.dtype("<u2")
DEFAULT_TOP_K = 10

#: files every vindex of a level must have (the weight files an inference/all
#: vindex needs are the ones its weight_manifest.json names)
REQUIRED_FILES = {
    "browse": (TOKENIZER, GATE, EMBEDDINGS, DOWN_META),
    "attention": (TOKENIZER, GATE, EMBEDDINGS, DOWN_META, MANIFEST),
    "inference": (TOKENIZER, GATE, EMBEDDINGS, DOWN_META, MANIFEST),
    "all": (TOKENIZER, GATE, EMBEDDINGS, DOWN_META, MANIFEST),
}

#: index.json keys a reader cannot do without
#: (``dtype`` may be missing: LARQL's serde default is f32, config/types.rs:34-36 + dtype.rs:12-14)
REQUIRED_KEYS = ("num_layers", "hidden_size", "vocab_size", "layers")

#: defaults for keys a version-1 (or foreign) index.json may lack
DEFAULTS: dict[str, Any] = {
    "version": 1,
    "dtype": "f32",
    "quant": "none",
    "model": None,
    "family": None,
    "source": {},
    "checksums": {},
    "embed_scale": 1.0,
    "extract_level": "browse",
    "has_model_weights": False,
    "down_top_k": DEFAULT_TOP_K,
    "layer_bands": None,
    "model_config": {},
}


def level_rank(level: str) -> int:
    return LEVELS.index(level)


def np_dtype(name: str, where: str = INDEX) -> np.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise VindexError(f"{where}: unsupported dtype {name!r} (supported: f16, f32, bf16)",
                          path=where) from None


def to_f32(raw: np.ndarray) -> np.ndarray:
    """Stored words (``<f4``, ``<f2`` or bf16 as ``<u2``) → float32 (no copy for f32)."""
    if raw.dtype == BF16:
        from .weights import bf16_to_f32
        return bf16_to_f32(raw)
    return raw if raw.dtype == np.float32 else raw.astype(np.float32)


def derive_layer_bands(num_layers: int) -> dict[str, list[int]]:
    """Bands from the layer count alone (LARQL's fallback rule, ≈ 40 / 40 / 20).

    Uses ``lql.families.bands.derive_bands`` (one definition for the project);
    the local fallback below only runs when that package is unavailable.
    """
    try:
        from ..families.bands import derive_bands
    except ImportError:
        pass
    else:
        if int(num_layers) > 0:
            return derive_bands(int(num_layers))
    n = int(num_layers)
    if n <= 0:
        return {}
    last = n - 1
    syn_hi = max(0, min(last, round(n * 0.30) - 1))
    know_hi = max(syn_hi + 1, min(last, round(n * 0.75) - 1))
    if know_hi >= last:
        know_hi = max(syn_hi, last - 1)
    know_lo = min(syn_hi + 1, last)
    out_lo = min(know_hi + 1, last)
    return {"syntax": [0, syn_hi], "knowledge": [know_lo, max(know_lo, know_hi)],
            "output": [out_lo, last]}


def read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        raise VindexError(f"{path}: file is missing", path=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VindexError(f"{path}: not valid JSON ({exc})", path=str(path)) from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary sibling, fsync, and rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_index(root: Path) -> dict[str, Any]:
    """index.json as a raw dict (unknown keys kept), validated for required keys."""
    path = Path(root) / INDEX
    index = read_json(path)
    if not isinstance(index, dict):
        raise VindexError(f"{path}: expected a JSON object", path=str(path))
    # the published SVD vindexes have num_feats instead of a layers list (lql.vindex.larql)
    missing = [k for k in REQUIRED_KEYS if k not in index
               and not (k == "layers" and "num_feats" in index)]
    if missing:
        raise VindexError(f"{path}: missing required key{'s' if len(missing) > 1 else ''} "
                          + ", ".join(repr(k) for k in missing), path=str(path))
    return index


def update_index(root: Path, **changes: Any) -> dict[str, Any]:
    """Rewrite index.json with ``changes`` applied; unknown keys are preserved."""
    from .checksums import INDEX_CHECKSUM_KEY, seal_index
    index = load_index(root)
    index.update(changes)
    if INDEX_CHECKSUM_KEY in index:
        seal_index(index)
    write_json_atomic(Path(root) / INDEX, index)
    return index
