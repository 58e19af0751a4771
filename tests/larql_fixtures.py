"""LARQL-written vindexes for the tests, built from our own extracted SmolLM2 vindex by
rewriting what LARQL's writer writes differently.  No Rust toolchain: each step follows
the LARQL source it cites (Divinci-AI/larql at 4f6dfb4, crates/larql-vindex/src/...).

    path = larql_vindex(tmp, "attention", "f16")              # a LARQL ATTENTION vindex
    path = larql_vindex(tmp, "inference", "f16", norms_f32=True)

The binary files LARQL and we write alike (gate_vectors.bin, embeddings.bin,
down_meta.bin, attn/up/down_weights.bin: same layout, same manifest keys — LARQL's keys are
``layers.N.self_attn.q_proj.weight`` etc., larql-models/src/config.rs:143-226) are hard
links to our files; index.json, weight_manifest.json and the files LARQL omits are
rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vindex_fixtures import smollm2_vindex  # noqa: E402

#: files LARQL's writer does not produce (it copies only tokenizer.json:
#: extract/build.rs:397-407); ours are dropped so the fixture is LARQL's file set
NOT_WRITTEN_BY_LARQL = ("tokenizer_config.json", "chat_template.jinja")


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def larql_bands(n: int) -> dict[str, list[int]] | None:
    """LARQL's fallback bands (config/types.rs:217-230; llama has no table row for 30)."""
    if n < 8:
        return None
    s, k = n * 2 // 5, n * 4 // 5
    return {"syntax": [0, s - 1], "knowledge": [s, k - 1], "output": [k, n - 1]}


def larql_index(ours: dict, level: str) -> dict:
    """index.json as LARQL serialises ``VindexConfig`` (config/types.rs:7-57, field order
    = struct order): built at extract/build.rs:419-476 and streaming.rs:578-595,
    ``has_model_weights`` set by format/weights/write.rs:479, ``source`` by build.rs:489-495.
    ``model_config`` is ``VindexModelConfig`` (types.rs:251-306) as build.rs:437-475
    fills it; the ``skip_serializing_if = "Option::is_none"`` Gemma 4 fields are absent,
    ``sliding_window`` and ``moe`` serialise as null, ``attention_k_eq_v`` as false."""
    mc = ours["model_config"]
    return {
        "version": 2,
        "model": ours["model"],
        "family": ours["family"],
        "source": {"huggingface_repo": ours["model"], "huggingface_revision": None,
                   "safetensors_sha256": None, "extracted_at": "2026-05-04T00:00:00Z",
                   "larql_version": "0.4.0"},
        "checksums": None,
        "num_layers": ours["num_layers"],
        "hidden_size": ours["hidden_size"],
        "intermediate_size": ours["intermediate_size"],
        "vocab_size": ours["vocab_size"],
        "embed_scale": ours["embed_scale"],
        "extract_level": level,
        "dtype": ours["dtype"],
        "quant": "none",
        "layer_bands": larql_bands(ours["num_layers"]),
        "layers": [{k: e[k] for k in ("layer", "num_features", "offset", "length")}
                   for e in ours["layers"]],
        "down_top_k": ours["down_top_k"],
        "has_model_weights": level != "browse",
        "model_config": {
            "model_type": mc["model_type"], "head_dim": mc["head_dim"],
            "num_q_heads": mc["num_q_heads"], "num_kv_heads": mc["num_kv_heads"],
            "rope_base": mc["rope_base"], "sliding_window": mc.get("sliding_window"),
            "moe": None, "attention_k_eq_v": False,
        },
    }


def larql_vindex(root: Path, level: str = "inference", dtype: str = "f16", *,
                 norms_f32: bool = False, drop_dtype: bool = False) -> Path:
    """A LARQL-layout SmolLM2 vindex at ``root`` (created; must not exist).

    ``level``: browse / attention / inference / all.  An ATTENTION vindex is an
    INFERENCE one without up/down weights (write.rs:260-263 ``writes_attn``, 327
    ``write_ffn`` false, 410-452 norms kept).  ``norms_f32``: norms.bin in f32 whatever
    the dtype, as LARQL's Q4_K writer does (write.rs:789-792) — each manifest entry's
    length then says its dtype.  ``drop_dtype``: an index.json without ``dtype``
    (serde default f32, types.rs:34-36)."""
    ours_level = {"browse": "browse", "attention": "inference", "inference": "inference",
                  "all": "inference"}[level]
    src = smollm2_vindex(ours_level, dtype)
    root.mkdir(parents=True)
    ix = json.loads((src / "index.json").read_text())
    manifest = json.loads((src / "weight_manifest.json").read_text()) \
        if (src / "weight_manifest.json").is_file() else None
    skip = set(NOT_WRITTEN_BY_LARQL) | {"index.json", "weight_manifest.json"}
    if level == "attention":
        skip |= {"up_weights.bin", "down_weights.bin"}
        manifest = [e for e in manifest if e["file"] not in ("up_weights.bin", "down_weights.bin")]
    if norms_f32 and manifest is not None:
        skip.add("norms.bin")
        raw = np.fromfile(src / "norms.bin", dtype=np.float16 if dtype == "f16" else np.float32)
        item = 2 if dtype == "f16" else 4
        offset, chunks = 0, []
        for e in manifest:
            if e["file"] != "norms.bin":
                continue
            vec = raw[e["offset"] // item: (e["offset"] + e["length"]) // item].astype("<f4")
            e["offset"], e["length"] = offset, vec.nbytes
            offset += vec.nbytes
            chunks.append(vec.tobytes())
        (root / "norms.bin").write_bytes(b"".join(chunks))
    for p in src.iterdir():
        if p.is_file() and p.name not in skip:
            _link(p, root / p.name)
    index = larql_index(ix, level)
    if drop_dtype:
        del index["dtype"]
    (root / "index.json").write_text(json.dumps(index, indent=2))
    if manifest is not None:
        # WeightEntry {key, kind, shape, offset, length, file} (write.rs:27-36)
        entries = [{k: e[k] for k in ("key", "kind", "shape", "offset", "length", "file")}
                   for e in manifest]
        (root / "weight_manifest.json").write_text(json.dumps(entries, indent=2))
    return root


def larql_labels(root: Path, probe: dict[tuple[int, int], str],
                 assignments: dict[tuple[int, int], int], labels: list[str],
                 hidden: int) -> None:
    """Label files as LARQL writes them: feature_labels.json keys ``L<l>_F<f>``
    (read by larql-lql/src/relations.rs:48-69), feature_clusters.jsonl ``{"l","f","c"}``
    (extract/build_helpers.rs:283-291), relation_clusters.json = ``ClusterResult``
    (clustering/mod.rs:26-33, written build_helpers.rs:269-280)."""
    (root / "feature_labels.json").write_text(json.dumps(
        {f"L{l}_F{f}": lab for (l, f), lab in probe.items()}, indent=2))
    with open(root / "feature_clusters.jsonl", "w") as fh:
        for (l, f), c in assignments.items():
            fh.write(json.dumps({"l": l, "f": f, "c": c}) + "\n")
    k = len(labels)
    counts = [sum(1 for c in assignments.values() if c == i) for i in range(k)]
    (root / "relation_clusters.json").write_text(json.dumps({
        "k": k, "centres": [[0.0] * hidden for _ in range(k)], "labels": labels,
        "counts": counts, "top_tokens": [[] for _ in range(k)]}, indent=2))


__all__ = ["larql_vindex", "larql_index", "larql_labels", "larql_bands"]
