"""Gemma 4's per-layer embeddings as LARQL stores them: ``ple_weights.bin`` holding
``per_layer_model_projection``, ``embed_tokens_per_layer`` and each layer's
``per_layer_input_gate`` / ``per_layer_projection`` as ``tensor_f16`` manifest entries, in
that order (Divinci-AI/larql 4f6dfb4, format/weights/write.rs:912-990), the PLE norms as
``vector`` entries of norms.bin.  A vindex laid out so runs INFER exactly as our own layout
of the same f16 weights does."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import gemma4_fixtures  # noqa: E402

from lql.session import Session  # noqa: E402

PROMPT = "The capital of France is"
PLE_FILE = "ple_weights.bin"


def _larql_ple_layout(ours: Path, dst: Path) -> None:
    shutil.copytree(ours, dst)
    manifest = json.loads((dst / "weight_manifest.json").read_text())
    moved = [e for e in manifest if e["file"] == "per_layer_embeddings.bin"]
    assert moved, "our layout keeps the PLE tensors in per_layer_embeddings.bin"
    raw = (dst / "per_layer_embeddings.bin").read_bytes()
    layers = sorted({int(e["key"].split(".")[1]) for e in moved if e["key"].startswith("layers.")})
    order = ["per_layer_model_projection.weight", "embed_tokens_per_layer.weight"]
    for i in layers:
        order += [f"layers.{i}.per_layer_input_gate.weight", f"layers.{i}.per_layer_projection.weight"]
    by_key = {e["key"]: e for e in moved}
    ple, entries, offset = [], [], 0
    for key in order:                                   # write.rs:952-990
        e = by_key.pop(key)
        data = raw[e["offset"]:e["offset"] + e["length"]]
        assert len(data) == 2 * int(np.prod(e["shape"]))   # f16, as LARQL stores PLE
        entries.append({"key": key, "kind": "tensor_f16", "shape": e["shape"], "offset": offset,
                        "length": len(data), "file": PLE_FILE})
        ple.append(data)
        offset += len(data)
    norms = bytearray((dst / "norms.bin").read_bytes())
    for key, e in by_key.items():                       # the PLE norms: vectors of norms.bin
        assert e["kind"] == "vector", key
        entries.append({"key": key, "kind": "vector", "shape": e["shape"], "offset": len(norms),
                        "length": e["length"], "file": "norms.bin"})
        norms += raw[e["offset"]:e["offset"] + e["length"]]
    (dst / "norms.bin").unlink()                        # a hard link in the copy? never write through
    (dst / "norms.bin").write_bytes(bytes(norms))
    (dst / PLE_FILE).write_bytes(b"".join(ple))
    (dst / "per_layer_embeddings.bin").unlink()
    kept = [e for e in manifest if e["file"] != "per_layer_embeddings.bin"]
    (dst / "weight_manifest.json").write_text(json.dumps(kept + entries, indent=2))


def test_larqls_ple_weights_run_gemma4_as_ours(tmp_path):
    src = gemma4_fixtures() / "tiny-gemma4"
    if not (src / "model.safetensors").is_file():
        pytest.skip(f"{src} is missing")
    s = Session(cwd=tmp_path)
    s.query(f'EXTRACT MODEL "{src}" INTO "{tmp_path / "ours"}" WITH INFERENCE DTYPE F16')
    _larql_ple_layout(tmp_path / "ours", tmp_path / "larql")
    assert not (tmp_path / "larql" / "per_layer_embeddings.bin").exists()
    results = []
    for name in ("ours", "larql"):
        t = Session(cwd=tmp_path)
        t.query(f'USE "{tmp_path / name}"')
        results.append(t.query(f'INFER "{PROMPT}" TOP 5 RAW'))
        v = t.vindex
        assert v.weights["embed_tokens_per_layer.weight"].shape[0] == v.vocab_size
    a, b = results
    assert [r["token_id"] for r in a.rows] == [r["token_id"] for r in b.rows]
    np.testing.assert_array_equal([r["probability"] for r in a.rows],
                                  [r["probability"] for r in b.rows])
    # and the PLE branch matters: without its tensors the forward pass fails, naming one
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "larql", broken)
    m = json.loads((broken / "weight_manifest.json").read_text())
    (broken / "weight_manifest.json").write_text(json.dumps(
        [e for e in m if e["key"] != "layers.0.per_layer_input_gate.weight"]))
    t = Session(cwd=tmp_path)
    t.query(f'USE "{broken}"')
    with pytest.raises(Exception, match="per_layer_input_gate"):
        t.query(f'INFER "{PROMPT}" TOP 5 RAW')
