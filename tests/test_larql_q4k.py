"""LARQL's ``quant: q4k`` vindexes (lql.vindex.kquant): block layouts, the reader, a forward pass.

The block layouts are checked against blocks built here byte by byte from LARQL's
description (larql-models/src/quant/ggml.rs:476-530 Q4_K, 694-720 Q6_K), not against
our own decoder; the vindex fixture's encoder is a port of LARQL's quantisers
(tests/larql_fixtures.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from larql_fixtures import larql_q4k_vindex, quantize_q4_k, quantize_q6_k
from vindex_fixtures import smollm2_vindex

from lql.errors import VindexError
from lql.session import Session
from lql.vindex import open_vindex
from lql.vindex.kquant import dequantize


def _q4_k_block(d, dmin, scales, mins, nibbles):
    """One 144-byte block: llama.cpp's get_scale_min_k4 packing (ggml.rs:489-501)."""
    packed = bytearray(12)
    for j in range(4):
        packed[j] = (scales[j] & 0x3F) | ((scales[j + 4] >> 4) << 6)
        packed[j + 4] = (mins[j] & 0x3F) | ((mins[j + 4] >> 4) << 6)
        packed[j + 8] = (scales[j + 4] & 0x0F) | ((mins[j + 4] & 0x0F) << 4)
    qs = bytearray(128)
    for g in range(4):                      # byte g*32+l: low = sub-block 2g, high = 2g+1
        for l in range(32):
            qs[g * 32 + l] = nibbles[2 * g][l] | (nibbles[2 * g + 1][l] << 4)
    return np.float16(d).tobytes() + np.float16(dmin).tobytes() + bytes(packed) + bytes(qs)


def test_q4_k_layout():
    rng = np.random.default_rng(0)
    scales = [1, 2, 3, 40, 17, 33, 63, 5]           # ≥ 16 exercises the packed top bits
    mins = [0, 1, 2, 3, 20, 35, 63, 16]
    nibbles = rng.integers(0, 16, (8, 32))
    d, dmin = 0.125, 0.0625                         # exact in f16
    raw = np.frombuffer(_q4_k_block(d, dmin, scales, mins, nibbles), np.uint8)
    want = np.array([d * scales[j] * nibbles[j][i] - dmin * mins[j]
                     for j in range(8) for i in range(32)], np.float32)
    np.testing.assert_array_equal(dequantize(raw, "Q4_K", (256,), "t"), want)
    # a shape that is not a whole number of blocks: the padding is dropped
    np.testing.assert_array_equal(dequantize(raw, "Q4_K", (10, 20), "t"), want[:200].reshape(10, 20))


def test_q6_k_layout():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 64, 256)
    scales = rng.integers(-128, 128, 16).astype(np.int8)
    d = 0.0078125
    ql = bytes((q[2 * i] & 0x0F) | ((q[2 * i + 1] & 0x0F) << 4) for i in range(128))
    qh = bytes(sum(((q[4 * j + k] >> 4) & 0x03) << (2 * k) for k in range(4)) for j in range(64))
    raw = np.frombuffer(ql + qh + scales.tobytes() + np.float16(d).tobytes(), np.uint8)
    want = np.array([d * scales[i // 16] * (q[i] - 32) for i in range(256)], np.float32)
    np.testing.assert_allclose(dequantize(raw, "Q6_K", (256,), "t"), want, rtol=1e-6)


def test_round_trip_error_is_the_quantisation_error():
    x = np.random.default_rng(2).standard_normal((64, 384)).astype(np.float32)
    for fmt, enc, tol in (("Q4_K", quantize_q4_k, 0.12), ("Q6_K", quantize_q6_k, 0.03)):
        raw = np.frombuffer(enc(x), np.uint8)
        got = dequantize(raw, fmt, x.shape, "t")
        rel = np.linalg.norm(got - x) / np.linalg.norm(x)
        assert 0 < rel < tol, (fmt, rel)


def test_bad_blocks_are_named():
    raw = np.zeros(143, np.uint8)
    with pytest.raises(VindexError, match="143 bytes of Q4_K, shape \\[256\\] needs 144"):
        dequantize(raw, "Q4_K", (256,), "f.bin")
    with pytest.raises(VindexError, match="not Q4_K or Q6_K"):
        dequantize(np.zeros(144, np.uint8), "Q5_K", (256,), "f.bin")
    bad = np.frombuffer(_q4_k_block(np.inf, 0, [1] * 8, [0] * 8, np.ones((8, 32), int)), np.uint8)
    with pytest.raises(VindexError, match="non-finite"):
        dequantize(bad, "Q4_K", (256,), "f.bin")


@pytest.fixture(scope="module")
def q4k(tmp_path_factory):
    root = tmp_path_factory.mktemp("q4k")
    return {"gate": larql_q4k_vindex(root / "with_gate"),
            "nogate": larql_q4k_vindex(root / "no_gate", keep_gate=False)}


def test_reader_decodes_every_layout_entry(q4k):
    v = open_vindex(q4k["gate"])
    ref = open_vindex(smollm2_vindex("inference", "f16"))
    for key, form in (("layers.3.self_attn.q_proj.weight", "Q4_K"),
                      ("layers.3.self_attn.v_proj.weight", "Q6_K"),
                      ("layers.7.mlp.down_proj.weight", "Q6_K"),
                      ("lm_head.weight", "Q4_K")):
        got = v.weights[key]
        e = v.weights.entry(key)
        raw = np.fromfile(q4k["gate"] / e["file"], np.uint8)[e["offset"]: e["offset"] + e["length"]]
        np.testing.assert_array_equal(got, dequantize(raw, form, got.shape, "t"))
        orig = ref.weights["embed_tokens.weight" if key == "lm_head.weight" else key]
        rel = np.linalg.norm(got - orig) / np.linalg.norm(orig)
        assert rel < (0.12 if form == "Q4_K" else 0.03), (key, rel)


def test_infer_on_a_q4k_vindex(q4k):
    s = Session()
    s.query(f'USE "{q4k["gate"]}";')
    r = s.query('INFER "The capital of France is" TOP 3 RAW;')
    assert "Q4_K/Q6_K" in (r.message or "")            # the caveat is said
    ref = Session()
    ref.query(f'USE "{smollm2_vindex("inference", "f16")}";')
    want = ref.query('INFER "The capital of France is" TOP 3 RAW;')
    assert r.rows[0]["token"] == want.rows[0]["token"] == " Paris"
    assert abs(r.rows[0]["probability"] - want.rows[0]["probability"]) < 0.15


def test_gates_synthesised_from_interleaved_q4k(q4k):
    v = open_vindex(q4k["nogate"])
    assert not (q4k["nogate"] / "gate_vectors.bin").exists()
    with_gate = open_vindex(q4k["gate"])
    want = with_gate.weights["layers.5.mlp.gate_proj.weight"].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(v.gate(5), want)
    s = Session()
    s.query(f'USE "{q4k["nogate"]}";')
    assert len(s.query('WALK "The capital of France is" TOP 5;').rows) > 0


def test_broken_q4k_files_are_named(q4k, tmp_path):
    d = tmp_path / "trunc"
    shutil.copytree(q4k["nogate"], d)
    data = d / "interleaved_q4k.bin"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(VindexError, match="interleaved_q4k.bin: truncated"):
        open_vindex(d)
    d2 = tmp_path / "badlen"
    shutil.copytree(q4k["nogate"], d2)
    m = json.loads((d2 / "attn_weights_q4k_manifest.json").read_text())
    m[0]["length"] -= 144
    (d2 / "attn_weights_q4k_manifest.json").write_text(json.dumps(m))
    with pytest.raises(VindexError, match="q_proj.weight has length .* needs"):
        open_vindex(d2)
    d3 = tmp_path / "nogatekey"
    shutil.copytree(q4k["nogate"], d3)
    m = json.loads((d3 / "interleaved_q4k_manifest.json").read_text())
    (d3 / "interleaved_q4k_manifest.json").write_text(json.dumps(
        [e for e in m if e["key"] != "layers.2.mlp.gate_proj.weight"]))
    with pytest.raises(VindexError, match="no gate_vectors.bin and no layers.2.mlp.gate_proj"):
        open_vindex(d3).gate(2)


def test_q4k_layers_are_cast_not_streamed_at_budget_zero(q4k, monkeypatch):
    """Decoded Q4_K blocks are no stored words to stream: at budget 0 a decode step casts the
    layer (no float32 copy is kept outside the budget) and gives what the cached model gives."""
    from lql.model import build_model, layerstore
    from lql.runtime import greedy
    v = open_vindex(q4k["gate"])
    got = {}
    for budget in ("-1", "0"):
        monkeypatch.setenv("LQL_WEIGHT_CACHE_MB", budget)
        layerstore.clear_weight_cache()
        m = build_model(v.model_config, v.weights)
        ahead: list[int] = []

        def record(i: int, seen: list[int] = ahead, real=m.blocks.prefetch) -> None:
            seen.append(i)
            real(i)
        monkeypatch.setattr(m.blocks, "prefetch", record)
        got[budget] = list(greedy(m, [1, 504, 3458, 282], 3, stop_ids=()))
        if budget == "0":
            assert m.blocks.cached_layers() == []
            assert all(slot.cast_only and slot.stored is None for slot in m.blocks._slots)
            # short calls on layers that are always cast still read the next one ahead
            assert set(range(1, len(m.blocks))) <= set(ahead)
    assert got["0"] == got["-1"]
    layerstore.clear_weight_cache()
