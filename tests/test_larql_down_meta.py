"""``down_meta.bin`` byte for byte against LARQL's writer and reader.

``larql_write`` and ``larql_read`` are ports of ``write_binary`` / ``read_binary`` in
Divinci-AI/larql at 4f6dfb4, ``crates/larql-vindex/src/format/down_meta.rs:21-82`` and
``:86-160``: header ``magic 0x444D4554 "DMET", version 1, num_layers, top_k``; per layer a
u32 feature count (0 for an absent layer); per feature ``top_token_id u32, c_score f32``
then exactly ``top_k`` pairs ``(token_id u32, logit f32)``, zero-padded; an empty feature
is all zeros.  The reader drops a pair that is ``(0, 0.0)`` and reads an all-zero feature
with no pairs as absent (``None``).
"""

from __future__ import annotations

import io
import struct

import numpy as np

from lql.vindex.down_meta import DownMeta, DownMetaWriter, record_dtype

TOP_K = 4


def larql_write(layers, top_k: int) -> bytes:
    """down_meta.rs:21-82: ``layers`` is a list of ``None`` or lists of ``None`` or
    ``(top_token_id, c_score, [(token_id, logit), ...])``."""
    out = io.BytesIO()
    out.write(struct.pack("<4I", 0x444D4554, 1, len(layers), top_k))
    for feats in layers:
        if feats is None:
            out.write(struct.pack("<I", 0))
            continue
        out.write(struct.pack("<I", len(feats)))
        for meta in feats:
            if meta is None:
                out.write(struct.pack("<If", 0, 0.0) + struct.pack("<If", 0, 0.0) * top_k)
                continue
            top_id, c_score, top = meta
            out.write(struct.pack("<If", top_id, c_score))
            for i in range(top_k):
                tid, logit = top[i] if i < len(top) else (0, 0.0)
                out.write(struct.pack("<If", tid, logit))
    return out.getvalue()


def larql_read(data: bytes):
    """down_meta.rs:86-160, without the tokenizer (token ids stay ids)."""
    magic, version, num_layers, top_k = struct.unpack_from("<4I", data, 0)
    assert magic == 0x444D4554 and version == 1
    pos, layers = 16, []
    for _ in range(num_layers):
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if n == 0:
            layers.append(None)
            continue
        feats = []
        for _ in range(n):
            top_id, c_score = struct.unpack_from("<If", data, pos)
            pos += 8
            top = []
            for _ in range(top_k):
                tid, logit = struct.unpack_from("<If", data, pos)
                pos += 8
                if tid > 0 or logit != 0.0:
                    top.append((tid, logit))
            feats.append(None if top_id == 0 and c_score == 0.0 and not top
                         else (top_id, c_score, top))
        layers.append(feats)
    assert pos == len(data), "trailing bytes"
    return layers


def _records(rng, n: int, empty: set[int]) -> np.ndarray:
    recs = np.zeros(n, dtype=record_dtype(TOP_K))
    for f in range(n):
        if f in empty:
            continue
        ids = rng.choice(np.arange(1, 5000), size=TOP_K, replace=False).astype(np.uint32)
        scores = np.sort(rng.standard_normal(TOP_K).astype(np.float32))[::-1]
        recs[f]["top_token_id"] = ids[0]
        recs[f]["c_score"] = np.float32(rng.random())
        recs[f]["top"]["id"] = ids
        recs[f]["top"]["score"] = scores
    return recs


def _as_larql(recs: np.ndarray):
    out = []
    for r in recs:
        if not r.tobytes().strip(b"\0"):
            out.append(None)
            continue
        out.append((int(r["top_token_id"]), float(r["c_score"]),
                    [(int(i), float(s)) for i, s in zip(r["top"]["id"], r["top"]["score"], strict=True)]))
    return out


def test_our_writer_writes_larqls_bytes_and_larql_reads_them_back():
    rng = np.random.default_rng(7)
    layers = {0: _records(rng, 6, {2}), 2: _records(rng, 3, set()), 3: _records(rng, 5, {0, 4})}
    buf = io.BytesIO()
    w = DownMetaWriter(buf, 5, TOP_K)                   # layer 1 and layer 4 absent
    for layer in sorted(layers):
        w.write_layer(layer, layers[layer])
    w.finish()
    ours = buf.getvalue()
    want = [_as_larql(layers[i]) if i in layers else None for i in range(5)]
    assert ours == larql_write(want, TOP_K)
    assert larql_read(ours) == want


def test_a_larql_written_file_reads_here_with_larqls_meaning(tmp_path):
    """Short top-k lists (LARQL pads with zeros) and empty features read as LARQL does."""
    layers = [[(11, 0.5, [(11, 3.0), (12, 2.5)]), None, (40, 0.25, [(40, 1.0), (41, 0.5),
                                                                     (42, 0.25), (43, 0.125)])],
              None,
              [(7, 1.0, [(7, 9.0)])]]
    path = tmp_path / "down_meta.bin"
    path.write_bytes(larql_write(layers, TOP_K))
    dm = DownMeta(path, expected_layers=3)
    assert [dm.num_features(i) for i in range(3)] == [3, 0, 1]
    for li, feats in enumerate(layers):
        for fi, meta in enumerate(feats or []):
            got = dm.record(li, fi)
            if meta is None:
                assert got is None
            else:
                top_id, c_score, top = meta
                assert got == {"top_token_id": top_id, "c_score": c_score, "top": top}
    assert larql_read(path.read_bytes()) == layers
