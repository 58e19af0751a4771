"""Vindexes in LARQL's layout (tests/larql_fixtures.py builds them from our SmolLM2 vindex
the way LARQL's writer lays them out, citing its lines): each opens, and WALK / DESCRIBE
(and INFER where the level allows) give our own vindex's results.  Also: what we write
satisfies LARQL's serde structs, LARQL's band tables, its label formats, manifest kinds.
LARQL source: Divinci-AI/larql at 4f6dfb4 (docs/LARQL.md)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from larql_fixtures import larql_bands, larql_index, larql_labels, larql_vindex  # noqa: E402
from vindex_fixtures import smollm2_vindex  # noqa: E402

from lql.errors import LevelError, VindexError  # noqa: E402
from lql.session import Session  # noqa: E402
from lql.vindex import open_vindex  # noqa: E402
from lql.vindex.larql import complete_larql_config, label_key, parse_label_key  # noqa: E402
from lql.vindex.validate import larql_index_problems  # noqa: E402

PROMPT = 'INFER "The capital of France is" RAW TOP 5'
#: SmolLM2's real rms_norm_eps (its config.json: 1e-5, stored f32 by the GGUF)
SMOLLM2_EPS = 9.999999747378752e-06


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("larql")
    return {
        "browse": larql_vindex(root / "browse", "browse", "f16"),
        "attention": larql_vindex(root / "attention", "attention", "f16"),
        "inference": larql_vindex(root / "inference", "inference", "f16", norms_f32=True),
        "all": larql_vindex(root / "all", "all", "f16"),
        "f32": larql_vindex(root / "f32", "inference", "f32", drop_dtype=True),
        "root": root,
    }


def run(path: Path, *queries: str):
    s = Session()
    out = [s.query(f'USE "{path}"')]
    out += [s.query(q) for q in queries]
    return out


def walk_rows(r):
    return [(row["layer"], row["feature"], round(row["gate"], 5), row["top_token"]) for row in r.rows]


def describe_rows(r):
    return sorted((row["layer"], row["feature"], row["target"], round(row["gate"], 5),
                   row["relation"]) for row in r.rows)


WALK = 'WALK "Paris" TOP 8'
DESCRIBE = 'DESCRIBE "France" ALL LAYERS'


# ------------------------------------------------------------------ each level opens and agrees

def _ours_with_larql_bands(root: Path, level: str) -> Path:
    """Our vindex with LARQL's bands for its depth (LARQL has no llama-30 row and bands
    SmolLM2 0-11/12-23/24-29 where our table says 0-9/10-23/24-29; DESCRIBE groups by band,
    so the same bands are needed for the same rows)."""
    d = root / f"ours-{level}"
    if not d.exists():
        shutil.copytree(smollm2_vindex(level, "f16"), d, copy_function=os.link)
        ix = json.loads((d / "index.json").read_text())
        ix["layer_bands"] = larql_bands(ix["num_layers"])
        ix.pop("index_checksum", None)
        (d / "index.json").unlink()
        (d / "index.json").write_text(json.dumps(ix))
    return d


@pytest.mark.parametrize("level", ["browse", "attention", "inference", "all"])
def test_level_opens_and_browses_like_ours(built, level):
    ours = _ours_with_larql_bands(built["root"], "browse" if level == "browse" else "inference")
    _, w1, d1 = run(ours, WALK, DESCRIBE)
    use, w2, d2 = run(built[level], WALK, DESCRIBE)
    assert f"level {level.upper()}" in use.message
    assert walk_rows(w1) == walk_rows(w2) and w1.rows
    assert describe_rows(d1) == describe_rows(d2) and d1.rows
    v = open_vindex(built[level])
    assert v.level == level and v.quant == "none"
    assert larql_index_problems(json.loads((built[level] / "index.json").read_text())) == []


@pytest.mark.parametrize("level", ["browse", "attention"])
def test_levels_without_a_forward_pass_say_so(built, level):
    s = Session()
    s.query(f'USE "{built[level]}"')
    with pytest.raises(LevelError, match=f"extracted at {level.upper()}"):
        s.query(PROMPT)


def test_infer_matches_ours_within_the_assumed_eps(built):
    _, ours = run(smollm2_vindex("inference", "f16"), PROMPT)
    for level in ("inference", "all"):
        use, theirs = run(built[level], PROMPT)
        # LARQL stores no norm epsilon: the Llama default (1e-6) is assumed and said
        assert "model_config.rms_norm_eps=1e-06" in use.message
        assert [r["token_id"] for r in ours.rows] == [r["token_id"] for r in theirs.rows]
        diff = max(abs(a["probability"] - b["probability"]) for a, b in zip(ours.rows, theirs.rows))
        assert 0 < diff < 5e-3             # the eps changes the numbers a little, not the ranking


def test_infer_is_exact_once_the_eps_is_given(built, tmp_path):
    """With SmolLM2's own eps in model_config nothing numeric is assumed and INFER (f32
    norms in an f16 vindex, typed by their byte length) equals ours exactly."""
    d = tmp_path / "eps"
    shutil.copytree(built["inference"], d, copy_function=os.link)
    ix = json.loads((d / "index.json").read_text())
    ix["model_config"]["rms_norm_eps"] = SMOLLM2_EPS
    (d / "index.json").unlink()
    (d / "index.json").write_text(json.dumps(ix))
    v = open_vindex(d)
    assert "model_config.rms_norm_eps" not in v.assumed and "model_config.norm_eps" not in v.assumed
    norm = next(e for e in v.manifest if e["file"] == "norms.bin")
    assert norm["_dtype"] == "f32" and v.dtype == "f16"
    _, ours = run(smollm2_vindex("inference", "f16"), PROMPT)
    _, theirs = run(d, PROMPT)
    for a, b in zip(ours.rows, theirs.rows):
        assert a["token_id"] == b["token_id"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)


def test_missing_dtype_is_f32_and_said(built):
    v = open_vindex(built["f32"])
    assert v.dtype == "f32" and v.assumed["dtype"] == "f32"
    _, w1 = run(smollm2_vindex("inference", "f32", source="hf"), WALK)
    use, w2, stats = run(built["f32"], WALK, "STATS")
    assert walk_rows(w1) == walk_rows(w2)
    assert "dtype=f32" in use.message
    assert "assumed" in stats.columns and "dtype=f32" in stats.rows[0]["assumed"]
    assert "assumed" in stats.message


def test_stats_reports_larql_bands(built):
    _, stats = run(built["inference"], "STATS")
    n = stats.rows[0]["num_layers"]
    assert stats.rows[0]["bands"] == larql_bands(n) and not stats.rows[0]["bands_derived"]
    assert "model_config.activation=silu" in stats.rows[0]["assumed"]


def test_our_own_vindex_assumes_nothing():
    v = open_vindex(smollm2_vindex("inference", "f16"))
    assert v.assumed == {} and v.caveats == []
    use, stats = run(v.path, "STATS")
    assert "assumed" not in use.message and "assumed" not in stats.columns


# ------------------------------------------------------------------ manifest kinds

def _with_entries(src: Path, dst: Path, entries: list[dict], files: dict[str, bytes]) -> Path:
    shutil.copytree(src, dst, copy_function=os.link)
    m = json.loads((dst / "weight_manifest.json").read_text())
    (dst / "weight_manifest.json").unlink()
    (dst / "weight_manifest.json").write_text(json.dumps(m + entries))
    for name, data in files.items():
        (dst / name).write_bytes(data)
    return dst


def test_manifest_kinds_tensor_f16_packed_bf16_and_q4k(built, tmp_path):
    rng = np.random.default_rng(3)
    ple = rng.standard_normal((4, 6)).astype(np.float16)
    packed = rng.standard_normal((2, 3, 5)).astype(np.float32)
    bf16 = (packed.view(np.uint32) >> 16).astype("<u2")     # truncate to bf16 bit patterns
    want_bf16 = (bf16.astype(np.uint32) << 16).view(np.float32)
    entries = [  # write.rs:940-947 (tensor_f16), 758-765 (packed_bf16), 1007 (tensor_q4k)
        {"key": "per_layer_model_projection.weight", "kind": "tensor_f16", "shape": [4, 6],
         "offset": 0, "length": ple.nbytes, "file": "ple_weights.bin"},
        {"key": "layers.0.experts.gate_up_proj", "kind": "packed_bf16", "shape": [2, 3, 5],
         "offset": 0, "length": bf16.nbytes, "file": "experts_packed.bin"},
        {"key": "layers.0.q4k_thing", "kind": "tensor_q4k", "shape": [256], "offset": 0,
         "length": 144, "file": "q4k.bin"}]
    d = _with_entries(built["inference"], tmp_path / "kinds", entries,
                      {"ple_weights.bin": ple.tobytes(), "experts_packed.bin": bf16.tobytes(),
                       "q4k.bin": b"\0" * 144})
    v = open_vindex(d)
    np.testing.assert_array_equal(v.weights["per_layer_model_projection.weight"],
                                  ple.astype(np.float32))
    got = v.weights["layers.0.experts.gate_up_proj"]
    assert got.dtype == np.float32 and got.shape == (2, 3, 5)
    np.testing.assert_array_equal(got, want_bf16)
    assert np.abs(got - packed).max() < 2 ** -7 * np.abs(packed).max() + 1e-6
    # Q4_K blocks of zeros (d = dmin = 0) decode to zeros (lql.vindex.kquant; the values
    # themselves are tested in tests/test_larql_q4k.py)
    np.testing.assert_array_equal(v.weights["layers.0.q4k_thing"], np.zeros(256, np.float32))
    # a tensor_f16 whose length does not fit its shape at two bytes a value: named at open
    bad = [dict(entries[0], length=ple.nbytes * 2)]
    d2 = _with_entries(built["inference"], tmp_path / "bad", bad,
                       {"ple_weights.bin": ple.tobytes() * 2})
    with pytest.raises(VindexError, match=r"tensor_f16.*needs 48 bytes"):
        open_vindex(d2)


def test_quantised_browse_vindex_browses_and_a_forward_pass_needs_weights(built, tmp_path):
    # (a q4k INFERENCE vindex runs: tests/test_larql_q4k.py)
    d = tmp_path / "q4k"
    shutil.copytree(built["browse"], d, copy_function=os.link)
    ix = json.loads((d / "index.json").read_text())
    ix["quant"] = "q4k"
    (d / "index.json").unlink()
    (d / "index.json").write_text(json.dumps(ix))
    s = Session()
    s.query(f'USE "{d}"')
    assert s.query(WALK).rows
    with pytest.raises(LevelError, match="extracted at BROWSE"):
        s.query(PROMPT)


# ------------------------------------------------------------------ labels and clusters

def test_labels_in_larql_format_equal_ours(built, tmp_path):
    v = open_vindex(built["browse"])
    _, d0 = run(built["browse"], DESCRIBE)
    feats = sorted({(r["layer"], r["feature"]) for r in d0.rows})[:6]
    probe = {feats[0]: "capital", feats[1]: "language"}
    assign = {f: i % 2 for i, f in enumerate(feats[2:])}
    names = ["cluster-a", "cluster-b"]
    a = tmp_path / "larql"
    shutil.copytree(built["browse"], a, copy_function=os.link)
    larql_labels(a, probe, assign, names, v.hidden_size)
    b = tmp_path / "ours"                    # the older lql spellings of the same labels
    shutil.copytree(built["browse"], b, copy_function=os.link)
    (b / "feature_labels.json").write_text(json.dumps({f"{l}:{f}": x for (l, f), x in probe.items()}))
    (b / "feature_clusters.jsonl").write_text("".join(
        json.dumps({"layer": l, "feature": f, "cluster": c}) + "\n" for (l, f), c in assign.items()))
    (b / "relation_clusters.json").write_text(json.dumps({"k": 2, "labels": names}))
    use_a, da = run(a, DESCRIBE)
    use_b, db = run(b, DESCRIBE)
    assert describe_rows(da) == describe_rows(db)
    rel = {(r["layer"], r["feature"]): r["relation"] for r in da.rows}
    assert rel[feats[0]] == "capital" and rel[feats[1]] == "language"
    assert rel[feats[2]] == "cluster-a" and rel[feats[3]] == "cluster-b"
    assert "2 probe labels, 2 relation clusters" in use_a.message


def test_write_labels_writes_what_larql_reads(tmp_path):
    from lql.browse.labels import write_labels
    centres = [[0.5, -1.0], [1.0, 0.0]]
    names = write_labels(tmp_path, probe={(27, 9515): "capital", (3, 4): "language"},
                         assignments={(5, 6): 1, (2, 1): 0},
                         clusters={"k": 2, "centres": centres, "labels": ["a", "b"],
                                   "counts": [1, 1], "top_tokens": [[], []]})
    assert names == ["feature_labels.json", "feature_clusters.jsonl", "relation_clusters.json"]
    labels = json.loads((tmp_path / "feature_labels.json").read_text())
    assert labels == {"L27_F9515": "capital", "L3_F4": "language"}   # relations.rs:55-63
    recs = [json.loads(x) for x in (tmp_path / "feature_clusters.jsonl").read_text().splitlines()]
    assert recs == [{"l": 2, "f": 1, "c": 0}, {"l": 5, "f": 6, "c": 1}]  # build_helpers.rs:286
    rc = json.loads((tmp_path / "relation_clusters.json").read_text())
    assert set(rc) == {"k", "centres", "labels", "counts", "top_tokens"}  # clustering/mod.rs:27-33
    from lql.errors import ExecutionError
    with pytest.raises(ExecutionError, match="centres"):
        write_labels(tmp_path, clusters={"k": 1, "labels": ["a"], "counts": [1], "top_tokens": [[]]})


def test_label_keys():
    assert parse_label_key("L27_F9515") == (27, 9515) == parse_label_key("27:9515")
    assert label_key(27, 9515) == "L27_F9515"
    for bad in ("L27F9515", "L0_F", "x:1", "27_9515", "L-1_F2"):
        assert parse_label_key(bad) is None


def test_bad_label_key_is_named(built, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(built["browse"], d, copy_function=os.link)
    (d / "feature_labels.json").write_text(json.dumps({"L0-F1": "x"}))
    with pytest.raises(VindexError, match=r"bad key 'L0-F1'.*L<layer>_F<feature>"):
        _ = open_vindex(d).feature_labels


# ------------------------------------------------------------------ model_config completion

def test_gemma3_model_type_maps_to_gemma3_text():
    """LARQL writes model_type ``gemma3`` for GGUF sources (its arch config); it is read as
    our gemma3_text family, with Gemma 3's defaults assumed and listed."""
    index = {"num_layers": 34, "hidden_size": 2560, "intermediate_size": 10240,
             "vocab_size": 262208, "family": "gemma3"}
    mc = {"model_type": "gemma3", "head_dim": 256, "num_q_heads": 8, "num_kv_heads": 4,
          "rope_base": 1_000_000.0, "sliding_window": 1024, "moe": None,
          "attention_k_eq_v": False, "rope_local_base": 10000.0}
    out, assumed, caveats = complete_larql_config(index, mc, set())
    assert out["model_type"] == "gemma3_text" and out["num_layers"] == 34
    assert out["rope_base"] == 1_000_000.0 and out["rope_local_base"] == 10000.0
    assert out["layer_types"][:6] == ["sliding_attention"] * 5 + ["full_attention"]
    assert assumed["query_pre_attn_scalar"] == 256 and "rms_norm_eps" in assumed
    assert "rope_local_base" not in assumed and caveats == []


def test_qwen2_without_biases_says_so(tmp_path):
    from vindex_fixtures import tiny_vindex
    src = tiny_vindex("qwen2", "inference", "f32")
    d = tmp_path / "qwen2"
    d.mkdir()
    for p in src.iterdir():
        if p.name not in ("index.json", "weight_manifest.json"):
            os.link(p, d / p.name)
    ix = json.loads((src / "index.json").read_text())
    (d / "index.json").write_text(json.dumps(larql_index(ix, "inference")))
    m = json.loads((src / "weight_manifest.json").read_text())
    assert any(e["key"].endswith("q_proj.bias") for e in m)
    # LARQL's float writer stores q/k/v/o weights only (write.rs:272-288): no biases
    m = [{k: e[k] for k in ("key", "kind", "shape", "offset", "length", "file")}
         for e in m if not e["key"].endswith("_proj.bias")]
    (d / "weight_manifest.json").write_text(json.dumps(m))
    v = open_vindex(d)
    assert v.model_config["attention_bias"] is False and v.caveats
    use, infer = run(d, 'INFER "hello there" RAW TOP 3')
    assert "biases are not stored" in use.message
    assert "biases are not stored" in infer.message and infer.meta["caveats"] == v.caveats
    assert len(infer.rows) == 3 and all(math.isfinite(r["probability"]) for r in infer.rows)


# ------------------------------------------------------------------ what we write, LARQL reads

@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
                                    "gemma3_text", "gpt2"])
def test_our_index_json_satisfies_larql_structs(family):
    from vindex_fixtures import tiny_vindex
    ix = json.loads((tiny_vindex(family, "browse", "f32") / "index.json").read_text())
    assert larql_index_problems(ix) == []
    assert isinstance(ix["model_config"]["rope_base"], float)       # GPT-2 too (types.rs:257)


def test_larql_schema_can_fail():
    ix = json.loads((smollm2_vindex("browse", "f16") / "index.json").read_text())
    assert larql_index_problems(ix) == []
    bad = json.loads(json.dumps(ix))
    bad["model_config"]["rope_base"] = None
    del bad["embed_scale"]
    bad["layers"][0]["offset"] = -1
    bad["extract_level"] = "BROWSE"
    bad["layer_bands"]["syntax"] = [0]
    problems = "\n".join(larql_index_problems(bad))
    for want in ("model_config.rope_base: null", "embed_scale: missing", "layers[0].offset",
                 "extract_level", "layer_bands.syntax"):
        assert want in problems, want
    assert larql_index_problems(larql_index(ix, "browse")) == []


# ------------------------------------------------------------------ bands

def test_larql_band_tables_are_the_defaults():
    from lql.families import get_family
    from lql.families.bands import derive_bands
    assert get_family("gemma3_text").layer_bands(34) == {
        "syntax": [0, 13], "knowledge": [14, 27], "output": [28, 33]}     # types.rs:179
    assert get_family("qwen2").layer_bands(28) == {
        "syntax": [0, 10], "knowledge": [11, 22], "output": [23, 27]}     # types.rs:201
    assert get_family("gemma").layer_bands(26) == get_family("gemma2").layer_bands(26) == {
        "syntax": [0, 10], "knowledge": [11, 20], "output": [21, 25]}     # types.rs:181
    assert get_family("gpt2").layer_bands(12)["syntax"] == [0, 4]        # types.rs:212
    assert get_family("qwen3").layer_bands(28) == derive_bands(28)       # LARQL: no qwen3 row
    assert derive_bands(34) == {"syntax": [0, 12], "knowledge": [13, 26], "output": [27, 33]}
    assert get_family("llama").layer_bands(30)["syntax"] == [0, 9]       # our own table wins


def test_gemma4_index_json_carries_larqls_moe_and_ple_fields(tmp_path):
    """LARQL's extractor writes ``model_config.moe`` (MoeConfig, types.rs:310-329; values as
    extract/streaming.rs:603-614 and architectures/gemma4.rs:243-270 fill them) and
    ``per_layer_embed_dim`` (types.rs:293); ours does too, beside our flat keys."""
    from model_fixtures import gemma4_fixtures

    from lql.sources import open_source
    from lql.vindex import extract
    root = gemma4_fixtures()
    if not (root / "tiny-gemma4-moe" / "model.safetensors").is_file():
        pytest.skip(f"no Gemma 4 fixtures at {root}")
    cfg = json.loads((root / "tiny-gemma4-moe" / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    v = extract(open_source(root / "tiny-gemma4-moe"), tmp_path / "moe.vindex", level="browse",
                dtype="f32")
    ix = json.loads((Path(v) / "index.json").read_text())
    assert larql_index_problems(ix) == []
    assert ix["model_config"]["moe"] == {
        "num_experts": cfg["num_experts"], "top_k": cfg["top_k_experts"], "shared_expert": False,
        "router_type": "gemma4_top_k_softmax", "hybrid": True,
        "moe_intermediate_size": cfg["moe_intermediate_size"]}
    assert ix["model_config"]["num_experts"] == cfg["num_experts"]          # ours kept
    dense = extract(open_source(root / "tiny-gemma4"), tmp_path / "dense.vindex", level="browse",
                    dtype="f32")
    mc = json.loads((Path(dense) / "index.json").read_text())["model_config"]
    assert "moe" not in mc
    want = json.loads((root / "tiny-gemma4" / "config.json").read_text())
    assert mc["per_layer_embed_dim"] == want.get("text_config", want)["hidden_size_per_layer_input"]
