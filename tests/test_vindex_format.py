"""Vindex format, reader, writer and verify on a small synthetic model (no real sources needed)."""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lql.errors import ExecutionError, LqlError, MissingTensorError, NoVindexError, VindexError  # noqa: E402
from lql.vindex import down_meta as dmod  # noqa: E402
from lql.vindex import extract, open_vindex, verify  # noqa: E402
from lql.vindex.format import derive_layer_bands  # noqa: E402

VOCAB, HIDDEN, FEAT, LAYERS = 700, 16, 24, 3


@dataclass(frozen=True)
class Spec:
    key: str
    role: str
    level: str
    layer: int | None
    file: str


class FakeFamily:
    """Just enough of the ``lql.families.Family`` interface for the writer."""
    name = "fakellama"
    embed_key = "embed_tokens.weight"

    def tensors(self, mc, level):
        order = ("browse", "inference", "all")
        specs = [Spec("embed_tokens.weight", "embed", "browse", None, "embeddings.bin"),
                 Spec("norm.weight", "norm", "inference", None, "norms.bin"),
                 Spec("lm_head.weight", "lm_head", "inference", None, "lm_head.bin")]
        for i in range(mc["num_layers"]):
            specs += [Spec(f"layers.{i}.mlp.gate_proj.weight", "gate", "browse", i, "gate_vectors.bin"),
                      Spec(f"layers.{i}.mlp.up_proj.weight", "up", "inference", i, "up_weights.bin"),
                      Spec(f"layers.{i}.mlp.down_proj.weight", "down", "inference", i, "down_weights.bin"),
                      Spec(f"layers.{i}.self_attn.q_proj.weight", "attn", "inference", i, "attn_weights.bin"),
                      Spec(f"layers.{i}.input_layernorm.weight", "norm", "inference", i, "norms.bin")]
        return [s for s in specs if order.index(s.level) <= order.index(level)]

    def gate_key(self, i):
        return f"layers.{i}.mlp.gate_proj.weight"

    def unclaimed(self, mc, keys):
        claimed = {s.key for s in self.tensors(mc, "all")}
        return sorted(k for k in keys if k not in claimed)

    def num_features(self, mc, layer):
        return mc["intermediate_size"]

    def down_key(self, i):
        return f"layers.{i}.mlp.down_proj.weight"

    def gate_rows(self, w):
        return w

    def down_columns(self, w):
        return w

    def embed_scale(self, mc):
        return 1.0

    def layer_bands(self, n):
        return derive_layer_bands(n)


class FakeSource:
    name = "fake/model"
    family = FakeFamily()
    hf_config = {"_name_or_path": "fake/model"}
    tokenizer_config = {"bos_token": "<s>"}
    chat_template = "{{ messages }}"

    def __init__(self, drop=()):
        rng = np.random.default_rng(7)
        self.model_config = {"model_type": "llama", "num_layers": LAYERS, "hidden_size": HIDDEN,
                             "intermediate_size": FEAT, "vocab_size": VOCAB}
        t = {"embed_tokens.weight": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
             "norm.weight": rng.standard_normal(HIDDEN).astype(np.float32),
             "lm_head.weight": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)}
        for i in range(LAYERS):
            t[f"layers.{i}.mlp.gate_proj.weight"] = rng.standard_normal((FEAT, HIDDEN)).astype(np.float32)
            t[f"layers.{i}.mlp.up_proj.weight"] = rng.standard_normal((FEAT, HIDDEN)).astype(np.float32)
            t[f"layers.{i}.mlp.down_proj.weight"] = rng.standard_normal((HIDDEN, FEAT)).astype(np.float32)
            t[f"layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
            t[f"layers.{i}.input_layernorm.weight"] = rng.standard_normal(HIDDEN).astype(np.float32)
        for k in drop:
            del t[k]
        self._t = t
        from tokenizers import Tokenizer, models, pre_tokenizers
        tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        self.tokenizer_json = tok.to_str()

    def keys(self):
        return list(self._t)

    def tensor(self, key):
        return self._t[key].copy()

    def shape(self, key):                 # the ModelSource interface the extractor reads
        return self._t[key].shape

    def tensor_rows(self, key, lo, hi):
        return self._t[key][lo:hi].copy()


def _extract(tmp_path, name="v", **kw):
    return extract(FakeSource(), tmp_path / name, progress=False, **kw)


@pytest.mark.parametrize("level", ["browse", "inference", "all"])
@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_round_trip(tmp_path, level, dtype):
    src = FakeSource()
    out = extract(src, tmp_path / "v", level=level, dtype=dtype, progress=False)
    v = open_vindex(out)
    assert (v.level, v.dtype, v.num_layers, v.hidden_size, v.vocab_size) == \
        (level, dtype, LAYERS, HIDDEN, VOCAB)
    cast = (lambda a: a) if dtype == "f32" else (lambda a: a.astype(np.float16).astype(np.float32))
    for i in range(LAYERS):
        assert v.num_features(i) == FEAT
        np.testing.assert_array_equal(v.gate(i), cast(src.tensor(f"layers.{i}.mlp.gate_proj.weight")))
        assert v.gate(i).dtype == np.float32
    np.testing.assert_array_equal(v.embed([3, 5]), cast(src.tensor("embed_tokens.weight")[[3, 5]]))
    assert set(v.layer_bands) == {"syntax", "knowledge", "output"}
    assert v.chat_template == "{{ messages }}" and v.tokenizer_config == {"bos_token": "<s>"}
    assert v.token_text(5) == "w5"
    if level == "browse":
        assert not (out / "weight_manifest.json").exists()
        with pytest.raises(MissingTensorError, match="INFERENCE"):
            v.weights["norm.weight"]
    else:
        for key in src.keys():
            np.testing.assert_array_equal(v.weights[key], cast(src.tensor(key)), err_msg=key)
        assert set(v.weights) == set(src.keys())
    assert verify(out).ok


def test_down_meta_matches_numpy(tmp_path):
    src = FakeSource()
    v = open_vindex(extract(src, tmp_path / "v", progress=False))
    emb = src.tensor("embed_tokens.weight")
    for i in range(LAYERS):
        scores = emb @ src.tensor(f"layers.{i}.mlp.down_proj.weight")      # (vocab, feat)
        ref = np.argsort(-scores, axis=0, kind="stable")[:10].T
        np.testing.assert_array_equal(v.down_meta.top_ids(i), ref)
        np.testing.assert_allclose(v.down_meta.top_scores(i),
                                   np.take_along_axis(scores.T, ref, 1), rtol=1e-5, atol=1e-5)
        rec = v.down_meta.record(i, 4)
        assert rec["top_token_id"] == ref[4, 0] and len(rec["top"]) == 10
        assert rec["c_score"] == pytest.approx(scores[ref[4, 0], 4], rel=1e-5)


@pytest.mark.parametrize("vocab", [50, 1000, 49152 // 8, 3001])
def test_top_k_two_stage_is_exact(vocab):
    rng = np.random.default_rng(vocab)
    s = rng.standard_normal((37, vocab)).astype(np.float32)
    s[3, :] = 0.0                                     # all ties: any 10 ids will do
    s[5, 1000 % vocab: 1000 % vocab + 3] = 50.0       # the best in one chunk
    ids, vals = dmod.top_k_scores(s, 10, chunk=16)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(vals, np.take_along_axis(s, ref, 1))
    np.testing.assert_array_equal(np.take_along_axis(s, ids, 1), vals)
    assert all(len(set(row)) == 10 for row in ids.tolist())
    np.testing.assert_array_equal(np.delete(ids, 3, 0), np.delete(ref, 3, 0))


@pytest.mark.parametrize("vocab", [50, 49152 // 8, 3001])
def test_top_k_columns_equals_rows(vocab):
    rng = np.random.default_rng(vocab + 1)
    s = rng.standard_normal((vocab, 29)).astype(np.float32)
    s[:, 3] = 0.0                                   # all ties
    s[100 % vocab: 100 % vocab + 5, 4] = 9.0        # the best five in one sub-chunk
    ids, vals = dmod.top_k_columns(s, 10, chunk=4, group=4)
    ref = np.argsort(-s.T, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(vals, np.take_along_axis(s.T, ref, 1))
    np.testing.assert_array_equal(np.take_along_axis(s.T, ids, 1), vals)
    ids, ref = np.delete(ids, 3, 0), np.delete(ref, 3, 0)
    np.testing.assert_array_equal(ids, ref)


def test_layer_records_block_boundaries():
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((600, 8)).astype(np.float32)
    down = rng.standard_normal((8, 70)).astype(np.float32)
    ref = dmod.layer_records(emb, lambda lo, hi: down[:, lo:hi], 70, 5, block=70)
    for block in (1, 32, 33):
        got = dmod.layer_records(emb, lambda lo, hi: down[:, lo:hi], 70, 5, block=block)
        np.testing.assert_array_equal(got["top"]["id"], ref["top"]["id"])   # BLAS may differ by an ulp
        np.testing.assert_allclose(got["top"]["score"], ref["top"]["score"], rtol=1e-5)
    scores = emb @ down
    np.testing.assert_array_equal(ref["top"]["id"], np.argsort(-scores.T, axis=1, kind="stable")[:, :5])
    assert dmod.auto_block(49152) == 512 and dmod.auto_block(262144) == 96


def test_subset_layers(tmp_path):
    v = open_vindex(_extract(tmp_path, layers=[0, 2], level="inference"))
    assert v.layers == [0, 2] and v.num_layers == LAYERS
    assert v.num_features(1) == 0 and v.down_meta.num_features(1) == 0
    with pytest.raises(ExecutionError, match="not extracted"):
        v.gate(1)
    assert "layers.1.mlp.up_proj.weight" not in v.weights
    assert "layers.2.mlp.up_proj.weight" in v.weights
    with pytest.raises(ExecutionError, match="out of range"):
        _extract(tmp_path, "w", layers=[5])


def test_unknown_keys_preserved_and_v1_defaults(tmp_path):
    from lql.vindex.format import update_index
    out = _extract(tmp_path)
    index = json.loads((out / "index.json").read_text())
    index["custom_key"] = {"x": 1}
    for k in ("version", "embed_scale", "extract_level", "down_top_k", "layer_bands",
              "model_config", "checksums"):
        del index[k]
    (out / "index.json").write_text(json.dumps(index))
    v = open_vindex(out)
    assert (v.version, v.embed_scale, v.level, v.down_top_k) == (1, 1.0, "browse", 10)
    assert v.layer_bands_derived and v.layer_bands["syntax"][0] == 0
    update_index(out, model="renamed")
    again = json.loads((out / "index.json").read_text())
    assert again["custom_key"] == {"x": 1} and again["model"] == "renamed"


# ------------------------------------------------------------------ errors

def test_truncated_gate_vectors(tmp_path):
    out = _extract(tmp_path)
    p = out / "gate_vectors.bin"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(VindexError, match=r"gate_vectors\.bin.*truncated"):
        open_vindex(out)


def test_truncated_embeddings_and_down_meta(tmp_path):
    out = _extract(tmp_path)
    for name in ("embeddings.bin", "down_meta.bin"):
        p = out / name
        good = p.read_bytes()
        p.write_bytes(good[:-4])
        with pytest.raises(VindexError, match=name.replace(".", r"\.") + ".*truncated"):
            open_vindex(out)
        p.write_bytes(good)
    open_vindex(out)


def test_bad_checksum_is_reported(tmp_path):
    out = _extract(tmp_path)
    p = out / "embeddings.bin"
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    report = verify(out)
    assert not report.ok
    status = {f.file: f.status for f in report.files}
    assert status["embeddings.bin"] == "mismatch" and status["gate_vectors.bin"] == "ok"
    with pytest.raises(VindexError, match=r"embeddings\.bin: checksum mismatch"):
        open_vindex(out, verify=True)
    open_vindex(out)          # open alone only checks sizes (documented)


def test_missing_file_reported(tmp_path):
    out = _extract(tmp_path)
    (out / "down_meta.bin").unlink()
    assert {f.file: f.status for f in verify(out).files}["down_meta.bin"] == "missing"
    with pytest.raises(VindexError, match=r"down_meta\.bin: file is missing"):
        open_vindex(out)


def test_missing_index_key(tmp_path):
    out = _extract(tmp_path)
    index = json.loads((out / "index.json").read_text())
    del index["hidden_size"]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(VindexError, match=r"index\.json: missing required key 'hidden_size'"):
        open_vindex(out)


def test_not_a_vindex(tmp_path):
    with pytest.raises(NoVindexError, match="EXTRACT"):
        open_vindex(tmp_path)
    with pytest.raises(NoVindexError, match="EXTRACT"):
        open_vindex(tmp_path / "nope")


def test_bad_down_meta_magic(tmp_path):
    out = _extract(tmp_path)
    p = out / "down_meta.bin"
    data = bytearray(p.read_bytes())
    data[0:4] = struct.pack("<I", 1234)
    p.write_bytes(bytes(data))
    with pytest.raises(VindexError, match="bad magic"):
        open_vindex(out)


def test_missing_source_tensor(tmp_path):
    src = FakeSource(drop=["layers.1.mlp.down_proj.weight"])
    with pytest.raises(MissingTensorError, match=r"layers\.1\.mlp\.down_proj\.weight"):
        extract(src, tmp_path / "v", progress=False)
    assert not (tmp_path / "v").exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ atomicity

class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_interrupted_extract_leaves_nothing(tmp_path, exc):
    src = FakeSource()
    calls = {"n": 0}
    orig = src.tensor

    def tensor(key):
        calls["n"] += 1
        if key == "layers.2.mlp.gate_proj.weight":
            raise exc()
        return orig(key)

    src.tensor = tensor
    with pytest.raises(exc):
        extract(src, tmp_path / "v", progress=False)
    assert calls["n"] > 3
    assert list(tmp_path.iterdir()) == []


def test_existing_target_refused_then_forced(tmp_path):
    out = _extract(tmp_path)
    before = (out / "index.json").read_text()
    with pytest.raises(LqlError, match="already exists"):
        _extract(tmp_path, dtype="f32")
    assert (out / "index.json").read_text() == before
    _extract(tmp_path, dtype="f32", force=True)
    assert open_vindex(out).dtype == "f32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_interrupted_forced_extract_keeps_old(tmp_path):
    out = _extract(tmp_path)
    src = FakeSource()
    src.tensor = lambda key: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        extract(src, out, force=True, progress=False)
    assert open_vindex(out).dtype == "f16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_gate_cache_is_bounded(tmp_path, monkeypatch):
    from lql.vindex import reader
    monkeypatch.setattr(reader, "GATE_CACHE_BYTES", FEAT * HIDDEN * 4 * 2)
    v = open_vindex(_extract(tmp_path))
    for i in range(LAYERS):
        g = v.gate(i)
        assert not g.flags.writeable
    assert len(v._gate_cache._items) == 2 and 0 not in v._gate_cache._items


def test_cli_verify(tmp_path, capsys):
    from argparse import Namespace

    from lql.vindex import cli_verify
    out = _extract(tmp_path)
    assert cli_verify(Namespace(path=str(out))) == 0
    assert "ok" in capsys.readouterr().out
    (out / "gate_vectors.bin").write_bytes(b"\0" * (out / "gate_vectors.bin").stat().st_size)
    assert cli_verify(Namespace(path=str(out))) == 1
    assert "mismatch" in capsys.readouterr().out


def test_f16_overflow_refused(tmp_path):
    src = FakeSource()
    src._t["layers.1.mlp.gate_proj.weight"][2, 3] = 1e6
    with pytest.raises(ExecutionError, match=r"layers\.1\.mlp\.gate_proj\.weight.*f16.*F32"):
        extract(src, tmp_path / "v", progress=False)
    assert list(tmp_path.iterdir()) == []
    v = open_vindex(extract(src, tmp_path / "v", dtype="f32", progress=False))
    assert v.gate(1)[2, 3] == 1e6


def test_open_by_index_json_path(tmp_path):
    out = _extract(tmp_path)
    assert open_vindex(out / "index.json").path == out.resolve()
