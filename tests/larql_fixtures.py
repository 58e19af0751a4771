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
    # f32: the HF folder's vindex (the same weights, dequantised by transformers), which
    # the suite extracts anyway; f16: the GGUF's
    src = smollm2_vindex(ours_level, dtype, source="hf" if dtype == "f32" else "gguf")
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


__all__ = ["larql_vindex", "larql_index", "larql_labels", "larql_bands", "larql_q4k_vindex",
           "quantize_q4_k", "quantize_q6_k", "larql_e2b_layout", "larql_svd_layout",
           "truncated_tokenizer"]


# ---------------------------------------------------------------- quant: q4k

def _f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype("<f2")


def _round(x: np.ndarray) -> np.ndarray:
    """Rust's ``f32::round``: half away from zero (numpy rounds half to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_q4_k(values: np.ndarray) -> bytes:
    """LARQL's ``quantize_q4_k`` (larql-compute/src/cpu/ops/q4_common.rs:131-220), vectorised
    over super-blocks: 144-byte llama.cpp ``block_q4_K`` blocks of 256 values (zero-padded)."""
    x = np.asarray(values, dtype=np.float32).reshape(-1)
    x = np.concatenate([x, np.zeros(-x.size % 256, np.float32)])
    blk = x.reshape(-1, 8, 32)
    mins = np.minimum(blk.min(-1), 0.0)
    maxs = np.maximum(blk.max(-1), 0.0)
    rng = maxs - mins
    gmax, gmin = rng.max(-1), mins.min(-1)
    d = np.where(gmax > 0, gmax / np.float32(15 * 63), 0).astype(np.float32)
    dmin = np.where(gmin < 0, -gmin / np.float32(63), 0).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        qs = np.where(d[:, None] > 0, np.clip(_round(rng / (15 * d[:, None])), 0, 63), 0)
        qm = np.where(dmin[:, None] > 0, np.clip(_round(-mins / dmin[:, None]), 0, 63), 0)
    qs, qm = qs.astype(np.uint8), qm.astype(np.uint8)
    packed = np.zeros((blk.shape[0], 12), np.uint8)
    for j in range(4):
        packed[:, j] = (qs[:, j] & 0x3F) | (((qs[:, j + 4] >> 4) & 0x03) << 6)
        packed[:, j + 4] = (qm[:, j] & 0x3F) | (((qm[:, j + 4] >> 4) & 0x03) << 6)
        packed[:, j + 8] = (qs[:, j + 4] & 0x0F) | ((qm[:, j + 4] & 0x0F) << 4)
    scale = d[:, None] * qs                                  # (blocks, 8)
    low = dmin[:, None] * qm
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(scale > 0, 1.0 / scale, 0.0).astype(np.float32)
    enc = np.clip(_round((blk + low[:, :, None]) * inv[:, :, None]), 0, 15).astype(np.uint8)
    nib = (enc[:, 0::2, :] | (enc[:, 1::2, :] << 4)).reshape(-1, 128)   # groups (2g, 2g+1)
    out = np.concatenate([_f16(d)[:, None].view(np.uint8), _f16(dmin)[:, None].view(np.uint8),
                          packed, nib], axis=1)
    return out.tobytes()


def quantize_q6_k(values: np.ndarray) -> bytes:
    """LARQL's ``quantize_q6_k`` (q4_common.rs:222-298): 210-byte blocks, LARQL's own
    in-order bit layout (not llama.cpp's interleaving)."""
    x = np.asarray(values, dtype=np.float32).reshape(-1)
    x = np.concatenate([x, np.zeros(-x.size % 256, np.float32)])
    blk = x.reshape(-1, 256)
    amax = np.abs(blk).max(-1)
    d = (amax / np.float32(31 * 127)).astype(np.float32)
    sub = np.abs(blk.reshape(-1, 16, 16)).max(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, sub / (31 * d[:, None]), 0)
    sc = np.clip(_round(sc), -128, 127).astype(np.int8)
    step = d[:, None] * sc.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(np.abs(step) > 1e-10, 1.0 / step, 0.0).astype(np.float32)
    q = (np.clip(_round(blk.reshape(-1, 16, 16) * inv[:, :, None]), -32, 31) + 32)
    q = q.astype(np.uint8).reshape(-1, 256)
    ql = (q[:, 0::2] & 0x0F) | ((q[:, 1::2] & 0x0F) << 4)
    hi = ((q >> 4) & 0x03).reshape(-1, 64, 4)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    out = np.concatenate([ql, qh, sc.view(np.uint8), _f16(d)[:, None].view(np.uint8)], axis=1)
    return out.tobytes()


def larql_q4k_vindex(root: Path, *, keep_gate: bool = True) -> Path:
    """A LARQL ``quant: q4k`` SmolLM2 vindex (write.rs:529-1030) at ``root``: Q/K/O Q4_K and
    V Q6_K in attn_weights_q4k.bin, gate/up Q4_K and down Q6_K in interleaved_q4k.bin (each
    with its ``{key, shape, format, offset, length}`` manifest), lm_head_q4.bin (Q4_K of the
    tied embeddings, kind ``tensor_q4k``), norms.bin f32 (kind ``vector``).  Without
    ``keep_gate`` there is no gate_vectors.bin (LARQL then synthesises the gates from
    interleaved_q4k.bin, format/load.rs:90-104)."""
    from lql.vindex import open_vindex
    src = smollm2_vindex("inference", "f16")
    v = open_vindex(src)
    root.mkdir(parents=True)
    keep = {"tokenizer.json", "embeddings.bin", "down_meta.bin"} | (
        {"gate_vectors.bin"} if keep_gate else set())
    for p in src.iterdir():
        if p.name in keep:
            _link(p, root / p.name)
    w = v.weights

    def write(name: str, keys: list[tuple[str, str]]) -> None:
        entries, offset, chunks = [], 0, []
        for key, form in keys:
            data = (quantize_q4_k if form == "Q4_K" else quantize_q6_k)(w[key])
            entries.append({"key": key, "shape": list(w.shape(key)), "format": form,
                            "offset": offset, "length": len(data)})
            offset += len(data)
            chunks.append(data)
        (root / name).write_bytes(b"".join(chunks))
        (root / name.replace(".bin", "_manifest.json")).write_text(json.dumps(entries, indent=2))

    L = v.num_layers
    write("attn_weights_q4k.bin", [
        (f"layers.{n}.self_attn.{p}_proj.weight", "Q6_K" if p == "v" else "Q4_K")
        for n in range(L) for p in "qkvo"])
    write("interleaved_q4k.bin", [
        (f"layers.{n}.mlp.{p}_proj.weight", "Q6_K" if p == "down" else "Q4_K")
        for n in range(L) for p in ("gate", "up", "down")])
    norms, entries, offset = [], [], 0
    for e in v.manifest or ():
        if e["file"] == "norms.bin":
            vec = w[e["key"]].astype("<f4")
            entries.append({"key": e["key"], "kind": "vector", "shape": list(vec.shape),
                            "offset": offset, "length": vec.nbytes, "file": "norms.bin"})
            offset += vec.nbytes
            norms.append(vec.tobytes())
    (root / "norms.bin").write_bytes(b"".join(norms))
    head = quantize_q4_k(v.embeddings.astype(np.float32))
    (root / "lm_head_q4.bin").write_bytes(head)
    entries.append({"key": "lm_head.weight", "kind": "tensor_q4k",
                    "shape": [v.vocab_size, v.hidden_size], "offset": 0, "length": len(head),
                    "file": "lm_head_q4.bin"})
    (root / "weight_manifest.json").write_text(json.dumps(entries, indent=2))
    index = larql_index(json.loads((src / "index.json").read_text()), "inference")
    index["quant"] = "q4k"
    (root / "index.json").write_text(json.dumps(index, indent=2))
    return root


# ---------------------------------------------------------------- the two published layouts

def truncated_tokenizer(src: Path, dst: Path, size: int) -> None:
    """SmolLM2's byte-level BPE cut to its first ``size`` tokens (ids kept; merges whose
    parts or result are beyond it dropped): a tokenizer that covers fewer tokens than the
    embedding rows, as the published Gemma-4-E2B vindex's substitute tokenizer does."""
    tj = json.loads(src.read_text())
    model = tj["model"]
    vocab = {t: i for t, i in model["vocab"].items() if i < size}
    merges = []
    for m in model["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    model["vocab"], model["merges"] = vocab, merges
    tj["added_tokens"] = [t for t in tj.get("added_tokens", []) if t["id"] < size]
    dst.write_text(json.dumps(tj))


def larql_e2b_layout(root: Path, tokens: int = 20000) -> Path:
    """The file set of the published *Gemma 4 E2B (LarQL v0.2)* vindex, built small from
    SmolLM2: gate_vectors.bin (f16), down_features.bin (down transposed, features × hidden,
    f32 as LARQL's build_down_features writes it: larql-vindex/examples/
    build_down_features.rs), embeddings.bin, down_meta.bin, feature_clusters.jsonl,
    relation_clusters.json, norms.bin, a substitute tokenizer.json with ``tokens`` tokens
    (fewer than the embedding rows), index.json (BROWSE, no weight manifest) and
    manifest.json (build provenance)."""
    from lql.vindex import open_vindex
    src = smollm2_vindex("inference", "f16")
    v = open_vindex(src)
    root.mkdir(parents=True)
    for name in ("gate_vectors.bin", "embeddings.bin", "down_meta.bin", "norms.bin"):
        _link(src / name, root / name)
    with open(root / "down_features.bin", "wb") as fh:
        for n in v.layers:
            fh.write(np.ascontiguousarray(
                v.weights[f"layers.{n}.mlp.down_proj.weight"].T, dtype="<f4").tobytes())
    truncated_tokenizer(src / "tokenizer.json", root / "tokenizer.json", tokens)
    ix = json.loads((src / "index.json").read_text())
    (root / "index.json").write_text(json.dumps(larql_index(ix, "browse"), indent=2))
    (root / "manifest.json").write_text(json.dumps(
        {"larql_version": "0.2.0", "built_at": "2026-04-01T00:00:00Z",
         "source": "google/gemma-4-E2B-it", "files": sorted(p.name for p in root.iterdir())}))
    larql_labels(root, {}, {(n, 0): 0 for n in v.layers}, ["capital"], v.hidden_size)
    return root


def larql_svd_layout(root: Path, k: int = 16, *, explicit: bool = False, reuse: Path | None = None) -> Path:
    """The published *Qwen3-8B SVD vindex* layout, built small from SmolLM2: per layer the
    top-``k`` right singular vectors of gate_proj (gate_vectors.bin) and left singular
    vectors of down_proj (down_features.bin), each scaled by its singular value, as
    ``[L × k × H]`` f16; down_meta.bin for those down directions (E · u, top 10);
    embeddings.bin, norms.bin, tokenizer.json, manifest.json, SHA256SUMS; index.json with
    only ``num_layers, hidden_size, num_feats, vocab_size`` (no ``layers``, no dtype).
    ``explicit``: the same files with our full index.json (the reference); ``reuse``: a
    layout already built with the same ``k``, whose data files are linked (the SVDs of 60
    matrices are the fixture's cost)."""
    import hashlib

    from lql.vindex import open_vindex
    src = smollm2_vindex("inference", "f16")
    v = open_vindex(src)
    root.mkdir(parents=True)
    for name in ("embeddings.bin", "norms.bin", "tokenizer.json"):
        _link(src / name, root / name)
    if reuse is not None:
        for name in ("down_meta.bin", "gate_vectors.bin", "down_features.bin"):
            _link(reuse / name, root / name)
    else:
        _svd_files(v, root, k)
    if explicit:
        ix = json.loads((src / "index.json").read_text())
        length = k * v.hidden_size * 2
        ix.update(intermediate_size=k, extract_level="browse", has_model_weights=False,
                  down_top_k=10, checksums=None,
                  layers=[{"layer": n, "num_features": k, "offset": n * length, "length": length}
                          for n in range(v.num_layers)])
        ix.pop("index_checksum", None)
    else:
        ix = {"num_layers": v.num_layers, "hidden_size": v.hidden_size, "num_feats": k,
              "vocab_size": v.vocab_size}
    (root / "index.json").write_text(json.dumps(ix, indent=2))
    (root / "manifest.json").write_text(json.dumps({"method": "svd", "num_feats": k}))
    sums = [f"{hashlib.sha256((root / p).read_bytes()).hexdigest()}  {p}"
            for p in sorted(x.name for x in root.iterdir())]
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return root


def _svd_files(v, root: Path, k: int) -> None:
    """gate_vectors.bin, down_features.bin and down_meta.bin of the SVD layout."""
    from lql.vindex.down_meta import DownMetaWriter, layer_records
    emb = np.ascontiguousarray(v.embeddings, dtype=np.float32)
    gates, downs = [], []
    with open(root / "down_meta.bin", "wb") as fh:
        w = DownMetaWriter(fh, v.num_layers, 10)
        for n in range(v.num_layers):
            g = v.weights[f"layers.{n}.mlp.gate_proj.weight"]            # (F, H)
            _u, s, vt = np.linalg.svd(g, full_matrices=False)
            gates.append((vt[:k] * s[:k, None]).astype("<f2"))
            d = v.weights[f"layers.{n}.mlp.down_proj.weight"]            # (H, F)
            u, s2, _vt = np.linalg.svd(d, full_matrices=False)
            dirs = (u[:, :k] * s2[:k]).T.astype("<f2")                   # (k, H)
            downs.append(dirs)
            cols = dirs.astype(np.float32).T
            w.write_layer(n, layer_records(emb, lambda lo, hi, c=cols: c[:, lo:hi], k, 10))
        w.finish()
    (root / "gate_vectors.bin").write_bytes(b"".join(g.tobytes() for g in gates))
    (root / "down_features.bin").write_bytes(b"".join(d.tobytes() for d in downs))
