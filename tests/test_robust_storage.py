"""Robustness of the storage engine: index.json / manifest / down_meta.bin validated at open,
verify checks every file, index.json's own checksum (cases 1, 5, 6, 7 of the robustness issue)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robust_fixtures import base_vindex, broken_copy  # noqa: E402

from lql.errors import LqlError, VindexError  # noqa: E402
from lql.vindex import open_vindex, verify  # noqa: E402


@pytest.fixture(scope="module")
def base():
    return base_vindex()


def _set(key, value):
    return lambda ix: ix.__setitem__(key, value)


BAD_INDEX = [
    ("version", "abc", r"field 'version' must be an integer"),
    ("model_config", "x", r"field 'model_config' must be null or a JSON object"),
    ("model_config", [1], r"field 'model_config' must be null or a JSON object"),
    ("layer_bands", "x", r"field 'layer_bands'"),
    ("checksums", ["a"], r"field 'checksums'"),
    ("source", "x", r"field 'source'"),
    ("dtype", 5, r"field 'dtype' must be one of"),
    ("hidden_size", "64", r"field 'hidden_size' must be an integer"),
    ("vocab_size", -1, r"field 'vocab_size'"),
    ("embed_scale", "x", r"field 'embed_scale' must be a finite number"),
    ("down_top_k", 0, r"field 'down_top_k'"),
    ("weight_keys", "x", r"field 'weight_keys'"),
    ("layers", {"a": 1}, r"field 'layers' must be a list"),
    ("extract_level", 5, r"field 'extract_level' must be one of"),
    ("has_model_weights", "yes", r"field 'has_model_weights' must be true or false"),
]


@pytest.mark.parametrize("key,value,match", BAD_INDEX, ids=[f"{k}={v!r}" for k, v, _ in BAD_INDEX])
def test_index_field_of_wrong_type_is_a_one_line_vindex_error(tmp_path, base, key, value, match):
    d = broken_copy(tmp_path / "v", base, index=_set(key, value))
    with pytest.raises(VindexError, match=r"index\.json: " + match) as err:
        open_vindex(d)
    assert "\n" not in str(err.value)


def test_num_layers_1e400(tmp_path, base):
    d = broken_copy(tmp_path / "v", base)
    text = (base / "index.json").read_text()
    (d / "index.json").unlink()
    (d / "index.json").write_text(text.replace('"num_layers": 3', '"num_layers": 1e400', 1))
    with pytest.raises(VindexError, match=r"field 'num_layers' must be an integer 1\.\.100000, got inf"):
        open_vindex(d)


@pytest.mark.parametrize("key,value", [("rope_base", 0), ("norm_eps", -1), ("rms_norm_eps", float("nan")),
                                       ("head_dim", "x"), ("partial_rotary_factor", 2.0),
                                       # the families' computation flags (the fuzz found a dict here)
                                       ("qkv_layout", {}), ("per_layer", 5), ("kv_shared_from", ["x"]),
                                       ("num_experts", -1), ("attn_scale", 0)])
def test_model_config_non_finite_or_out_of_range(tmp_path, base, key, value):
    d = broken_copy(tmp_path / "v", base, index=lambda ix: ix["model_config"].__setitem__(key, value))
    with pytest.raises(VindexError, match=rf"field 'model_config\.{key}' must be"):
        open_vindex(d)


def test_layer_offset_string(tmp_path, base):
    d = broken_copy(tmp_path / "v", base, index=lambda ix: ix["layers"][0].__setitem__("offset", "0"))
    with pytest.raises(VindexError, match=r"field 'layers\[0\]\.offset' must be an integer"):
        open_vindex(d)


def test_weight_keys_gate_bad_pattern(tmp_path, base):
    d = broken_copy(tmp_path / "v", base,
                    index=lambda ix: ix["weight_keys"].__setitem__("gate", "layers.{lay}.x"))
    with pytest.raises(VindexError, match=r"weight_keys\.gate"):
        open_vindex(d)


@pytest.mark.parametrize("field,value,match", [
    ("offset", "0", r"field '\[0\]\.offset' must be an integer"),
    ("shape", "x", r"field '\[0\]\.shape' must be a list"),
    ("shape", [-1], r"field '\[0\]\.shape' must be a list of non-negative"),
    ("file", "../x", r"field '\[0\]\.file' must be a plain file name"),
])
def test_manifest_field_of_wrong_type(tmp_path, base, field, value, match):
    man = json.loads((base / "weight_manifest.json").read_text())
    man[0][field] = value
    d = broken_copy(tmp_path / "v", base, files={"weight_manifest.json": json.dumps(man).encode()})
    with pytest.raises(VindexError, match=r"weight_manifest\.json: " + match):
        open_vindex(d)


def test_manifest_missing_file_named_with_its_folder(tmp_path, base):
    d = broken_copy(tmp_path / "v", base, files={"up_weights.bin": None})
    with pytest.raises(VindexError) as err:
        open_vindex(d)
    assert str(d / "up_weights.bin") in str(err.value)


def test_down_meta_header_top_k_huge(tmp_path, base):
    dm = bytearray((base / "down_meta.bin").read_bytes())
    struct.pack_into("<I", dm, 12, 0xFFFFFFFF)
    d = broken_copy(tmp_path / "v", base, files={"down_meta.bin": bytes(dm)})
    with pytest.raises(VindexError, match=r"down_meta\.bin: header top_k 4294967295 out of range"):
        open_vindex(d)


def test_down_meta_record_id_beyond_vocab(tmp_path, base):
    """Case 1: a token id in down_meta.bin used to become np.bincount's array size."""
    dm = bytearray((base / "down_meta.bin").read_bytes())
    struct.pack_into("<I", dm, 16 + 4 + 8, 2_000_000_000)     # layer 0, feature 0, top[0].id
    d = broken_copy(tmp_path / "v", base, files={"down_meta.bin": bytes(dm)})
    from lql.session import Session
    s = Session()
    s.execute(f'USE "{d}"')
    with pytest.raises(VindexError, match=r"layer 0 has token id 2000000000, the vocabulary has"):
        s.execute('DESCRIBE "France"')
    assert not verify(d).ok


def test_tokenizer_config_a_list(tmp_path, base):
    d = broken_copy(tmp_path / "v", base, files={"tokenizer_config.json": b"[1, 2]"})
    with pytest.raises(VindexError, match=r"tokenizer_config\.json: expected a JSON object"):
        open_vindex(d).tokenizer_config    # noqa: B018


# --------------------------------------------------------------------- verify

def _overlap(ix):
    ix["layers"][1]["offset"] = ix["layers"][0]["offset"]


def _dup(ix):
    ix["layers"][1] = dict(ix["layers"][0])


def _neg(ix):
    ix["layers"][0]["offset"] = -5


@pytest.mark.parametrize("edit,match", [
    (_overlap, r"overlap"), (_dup, r"repeats layer 0"),
    (lambda ix: ix["layers"].pop(), r"no layer entry|no entry for it|more bytes"),
    (_neg, r"layers\[0\]\.offset"),
], ids=["overlap", "duplicate", "missing", "negative"])
def test_verify_reports_broken_layer_table(tmp_path, base, edit, match):
    d = broken_copy(tmp_path / "v", base, index=edit)
    report = verify(d)
    assert not report.ok and report.error and __import__("re").search(match, report.error), report.error


def test_verify_empty_checksums_is_not_ok(tmp_path, base, capsys):
    from lql.vindex import cli_verify
    from lql.vindex.checksums import seal_index
    d = broken_copy(tmp_path / "v", base, index=lambda ix: seal_index({**ix, "checksums": {}})
                    and ix.update(seal_index({**ix, "checksums": {}})))
    report = verify(d)
    assert report.ok and not report.complete
    assert {f.file: f.status for f in report.files}["gate_vectors.bin"] == "unchecked"
    assert cli_verify(type("A", (), {"path": str(d)})()) == 1
    out = capsys.readouterr().out
    assert "vindex ok" not in out and "not verified" in out


@pytest.mark.parametrize("key", ["/etc/hostname", "../../x", ".hidden"])
def test_verify_never_hashes_outside_the_vindex(tmp_path, base, key, monkeypatch):
    d = broken_copy(tmp_path / "v", base, index=lambda ix: ix["checksums"].update({key: "0" * 64}))
    opened = []
    import lql.vindex.verifier as ver
    real = ver.sha256_file
    monkeypatch.setattr(ver, "sha256_file", lambda p: opened.append(Path(p)) or real(p))
    report = verify(d)
    assert not report.ok and "inside the vindex" in report.first_problem()
    assert {f.file: f.status for f in report.files}[key] == "bad-name"
    assert all(p.parent == d for p in opened)
    with pytest.raises(VindexError, match=r"checksums"):
        open_vindex(d)


def test_index_json_is_checksummed(tmp_path, base):
    from lql.vindex.checksums import index_digest
    ix = json.loads((base / "index.json").read_text())
    assert ix["index_checksum"] == index_digest(ix)
    report = verify(base)
    assert report.complete, report.rows()
    assert {f.file: f.status for f in report.files}["index.json"] == "ok"
    d = broken_copy(tmp_path / "v", base, index=lambda ix: ix.update(model="tampered"))
    report = verify(d)
    assert {f.file: f.status for f in report.files}["index.json"] == "mismatch"
    assert not report.ok


def test_every_failure_is_lql_error(tmp_path, base):
    """A few more malformed index.json files: only LqlError, never another exception."""
    for i, edit in enumerate([_set("layers", [5]), _set("layers", [{"layer": "a"}]),
                              _set("layer_bands", {"syntax": "x"}), _set("num_layers", 10 ** 30),
                              lambda ix: ix.pop("layers"), _set("dtype", "bf16")]):
        d = broken_copy(tmp_path / f"v{i}", base, index=edit)
        with pytest.raises(LqlError):
            open_vindex(d)
    # no dtype is no longer malformed: LARQL's serde default is f32 (docs/LARQL.md), and
    # the reader says it assumed it
    d = broken_copy(tmp_path / "nodtype", base, index=lambda ix: ix.pop("dtype"))
    v = open_vindex(d)
    assert v.dtype == "f32" and v.assumed["dtype"] == "f32"
