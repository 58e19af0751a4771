"""Browse statements on the real SmolLM2-135M vindex, checked against independent
computations on the *source* weights (the HF folder's model.safetensors, read with
safetensors directly — no lql code involved in the expected values)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import smollm2_hf_dir  # noqa: E402
from vindex_fixtures import smollm2_vindex  # noqa: E402

from lql.errors import ExecutionError, LqlError, NoVindexError, VindexError  # noqa: E402
from lql.session import Session  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vpath() -> Path:
    return smollm2_vindex(source="hf")        # browse, f16, from the HF folder


@pytest.fixture(scope="module")
def source():
    """Independent view of the source weights: f32 tensors + the tokenizer."""
    from safetensors.numpy import safe_open
    from tokenizers import Tokenizer
    hf = smollm2_hf_dir()
    cfg = json.loads((hf / "config.json").read_text())
    out = {"cfg": cfg, "tok": Tokenizer.from_file(str(hf / "tokenizer.json"))}
    with safe_open(str(hf / "model.safetensors"), framework="numpy") as f:
        out["E"] = f.get_tensor("model.embed_tokens.weight").astype(np.float32)
        out["gate"] = {l: f.get_tensor(f"model.layers.{l}.mlp.gate_proj.weight").astype(np.float32)
                       for l in range(cfg["num_hidden_layers"])}
        out["down"] = {l: f.get_tensor(f"model.layers.{l}.mlp.down_proj.weight").astype(np.float32)
                       for l in range(cfg["num_hidden_layers"])}
    return out


@pytest.fixture
def session(vpath):
    s = Session()
    s.query(f'USE "{vpath}"')
    return s


def f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


# --------------------------------------------------------------------------- the CLI

def test_cli_json_script(vpath):
    script = (f'USE "{vpath}"; STATS; SHOW LAYERS; WALK "The capital of France is" TOP 5; '
              'DESCRIBE "France" VERBOSE; SELECT * FROM EDGES WHERE layer = 20 AND feature = 100;')
    p = subprocess.run([sys.executable, "-m", "lql", "--format", "json", "-e", script],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [r["statement"] for r in out] == ["USE", "STATS", "SHOW LAYERS", "WALK", "DESCRIBE",
                                             "SELECT"]
    stats = out[1]["rows"][0]
    assert (stats["num_layers"], stats["hidden_size"], stats["vocab_size"]) == (30, 576, 49152)
    assert stats["features"] == 30 * 1536 and stats["dtype"] == "f16"
    assert stats["extract_level"] == "browse"
    assert [r["layer"] for r in out[2]["rows"]] == list(range(30))
    assert all(r["num_features"] == 1536 for r in out[2]["rows"])
    walk = out[3]["rows"]
    assert len(walk) == 30 * 5
    for key in ("layer", "feature", "gate", "top_token", "down_tokens", "relation"):
        assert all(key in r for r in walk)
    desc = out[4]
    assert desc["meta"]["entity"] == "France"
    for key in ("band", "relation", "target", "gate", "layer_min", "layer_max", "count", "also",
                "source"):
        assert all(key in r for r in desc["rows"])
    sel = out[5]["rows"]
    assert len(sel) == 1 and sel[0]["layer"] == 20 and sel[0]["feature"] == 100


# --------------------------------------------------------------------------- WALK

def expected_walk(source, prompt: str, top: int, layers, rounding=f16):
    ids = source["tok"].encode(prompt, add_special_tokens=False).ids
    q = rounding(source["E"][ids[-1]])
    out = {}
    for l in layers:
        s = rounding(source["gate"][l]) @ q
        order = np.argsort(-np.abs(s), kind="stable")[:top]
        out[l] = [(int(f), float(s[f])) for f in order]
    return out


def test_walk_matches_numpy_on_source_weights(session, source):
    r = session.query('WALK "The capital of France is" TOP 5 LAYERS ALL')
    want = expected_walk(source, "The capital of France is", 5, range(30))
    got: dict[int, list] = {}
    for row in r.rows:
        got.setdefault(row["layer"], []).append((row["feature"], row["gate"]))
    assert sorted(got) == list(range(30))
    for l in range(30):
        assert [f for f, _ in got[l]] == [f for f, _ in want[l]], f"layer {l}"
        np.testing.assert_allclose([g for _, g in got[l]], [g for _, g in want[l]],
                                   rtol=1e-4, atol=1e-5)
    # against the exact f32 weights: same scores up to f16 storage rounding
    exact = expected_walk(source, "The capital of France is", 5, range(30), rounding=lambda a: a)
    for l in range(30):
        s32 = dict(exact[l])
        for f, g in got[l]:
            if f in s32:
                assert abs(g - s32[f]) < 0.02 * max(1.0, abs(s32[f]))


def test_walk_annotations_are_the_down_projection_top_tokens(session, source):
    r = session.query('WALK "I live in Paris" TOP 3 LAYERS 20-22')
    assert r.meta["token"] == " Paris"
    tok = source["tok"]
    for row in r.rows:
        logits = source["E"] @ source["down"][row["layer"]][:, row["feature"]]
        top = np.argsort(-logits)[:5]
        assert row["top_token"] == tok.decode([int(top[0])])
        assert row["down_tokens"] == [tok.decode([int(i)]) for i in top]
        assert row["c_score"] == pytest.approx(float(logits[top[0]]), rel=1e-4, abs=1e-4)


def test_walk_modes_and_ranges(session, source):
    pure = session.query('WALK "France" TOP 4 LAYERS 10-12 MODE PURE')
    assert pure.columns == ["layer", "feature", "gate", "top_token", "down_tokens", "relation"]
    assert {r["layer"] for r in pure.rows} == {10, 11, 12} and len(pure.rows) == 12
    hybrid = session.query('WALK "France" TOP 4 LAYERS 10-12')
    assert [(r["layer"], r["feature"]) for r in hybrid.rows] == \
        [(r["layer"], r["feature"]) for r in pure.rows]
    dense = session.query('WALK "France" TOP 4 LAYERS 11 MODE DENSE')
    ids = source["tok"].encode("France", add_special_tokens=False).ids
    s = f16(source["gate"][11]) @ f16(source["E"][ids[-1]])
    down = source["down"][11]
    c = np.concatenate([(source["E"] @ down[:, i:i + 256]).max(axis=0)
                        for i in range(0, down.shape[1], 256)])
    want = np.argsort(-np.abs(s * c), kind="stable")[:4]
    assert [r["feature"] for r in dense.rows] == want.tolist()
    for r in dense.rows:
        assert r["score"] == pytest.approx(r["gate"] * r["c_score"], rel=1e-4)
    cmp = session.query('WALK "France" TOP 2 LAYERS 3 COMPARE')
    assert "no overlay" in cmp.message and len(cmp.rows) == 2


def test_explain_walk(session):
    r = session.query('EXPLAIN WALK "The capital of France is" LAYERS 25-26 TOP 3 VERBOSE')
    assert r.statement == "EXPLAIN WALK"
    assert [(x["layer"], x["rank"]) for x in r.rows] == [(25, 1), (25, 2), (25, 3),
                                                        (26, 1), (26, 2), (26, 3)]
    assert all(len(x["down_tokens"]) == 10 and len(x["down_scores"]) == 10 for x in r.rows)
    assert all(x["down_scores"] == sorted(x["down_scores"], reverse=True) for x in r.rows)


# --------------------------------------------------------------------------- DESCRIBE

STOP = None


def hub_tokens(vpath, share=0.002, minimum=20):
    """Tokens among the stored top-k down tokens of more than max(minimum, share ×
    features) features, read from down_meta.bin with the documented layout (numpy only)."""
    import struct
    buf = (Path(vpath) / "down_meta.bin").read_bytes()
    _magic, _ver, n_layers, k = struct.unpack_from("<4I", buf, 0)
    rec = np.dtype([("top", "<u4"), ("c", "<f4"), ("pairs", [("id", "<u4"), ("s", "<f4")], (k,))])
    off, counts, total = 16, np.zeros(0, np.int64), 0
    for _ in range(n_layers):
        (n,) = struct.unpack_from("<I", buf, off)
        off += 4
        r = np.frombuffer(buf, rec, n, off)
        off += n * rec.itemsize
        ids, sc = r["pairs"]["id"], r["pairs"]["s"]
        c = np.bincount(ids[(ids != 0) | (sc != 0)].astype(np.int64))
        counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
        counts[:len(c)] += c
        total += n
    return set(np.nonzero(counts > max(minimum, share * total))[0].tolist())


def _top1_ids(vpath):
    """Per layer, each feature's top down-meta token id, read with the documented layout."""
    import struct
    buf = (Path(vpath) / "down_meta.bin").read_bytes()
    _magic, _ver, n_layers, k = struct.unpack_from("<4I", buf, 0)
    rec = np.dtype([("top", "<u4"), ("c", "<f4"), ("pairs", [("id", "<u4"), ("s", "<f4")], (k,))])
    off, out = 16, []
    for _ in range(n_layers):
        (n,) = struct.unpack_from("<I", buf, off)
        off += 4
        out.append(np.frombuffer(buf, rec, n, off)["pairs"]["id"][:, 0].astype(np.int64))
        off += n * rec.itemsize
    return out


_FAN_IN: dict[str, set[int]] = {}


def fan_in_hub_tokens(source, vpath, hubs, share=0.10, per_layer=20, floor=0.25):
    """(Once per vindex path.) Tokens that are DESCRIBE targets (every layer, noise and down-meta hubs dropped, one
    id per merged word: the best hit's) of more than ``share`` of the reference nouns."""
    from lql.browse.hubs import REFERENCE_WORDS  # the word list is data, not logic
    from lql.browse.tokens import STOP_WORDS
    tok = source["tok"]
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    top1 = _top1_ids(vpath)
    text = lambda i: tok.decode([int(i)])             # noqa: E731
    norm = lambda s: s.strip().casefold()             # noqa: E731
    noisy: dict[int, bool] = {}

    def noise(i):
        if i not in noisy:
            t = text(i)
            core = t.strip()
            noisy[i] = bool(i in special or not core or not re.search(r"[^\W_]", core)
                            or core.lower() in STOP_WORDS
                            or (not t[:1].isspace()
                                and len(tok.encode(" " + core, add_special_tokens=False).ids) != 1))
        return noisy[i]

    if str(vpath) in _FAN_IN:
        return _FAN_IN[str(vpath)]
    gates = [f16(source["gate"][l]) for l in sorted(source["gate"])]
    counts: dict[int, int] = {}
    for word in REFERENCE_WORDS:
        ids = tok.encode(" " + word, add_special_tokens=False).ids
        q = f16(source["E"][ids]).mean(axis=0)
        own = {norm(word)} | {norm(text(i)) for i in ids}
        best: dict[str, tuple[float, int]] = {}
        for l, g in enumerate(gates):
            sc = g @ q
            order = [int(f) for f in np.argsort(-sc, kind="stable")[:per_layer] if sc[f] > 0]
            for f in order:
                if sc[f] < floor * sc[order[0]]:
                    break
                t = int(top1[l][f])
                if t in ids or norm(text(t)) in own or noise(t) or t in hubs:
                    continue
                key = norm(text(t))
                if key not in best or sc[f] > best[key][0]:
                    best[key] = (float(sc[f]), t)
        for t in {t for _s, t in best.values()}:
            counts[t] = counts.get(t, 0) + 1
    _FAN_IN[str(vpath)] = {t for t, n in counts.items() if n > share * len(REFERENCE_WORDS)}
    return _FAN_IN[str(vpath)]


def independent_edges(source, entity: str, layers, per_layer=20, floor=0.25, hubs=()):
    """DESCRIBE's documented pipeline, reimplemented on the source weights."""
    from lql.browse.tokens import STOP_WORDS  # the word list is data, not logic
    tok = source["tok"]
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    ids = tok.encode(" " + entity, add_special_tokens=False).ids
    q = f16(source["E"][ids]).mean(axis=0)
    text = lambda i: tok.decode([int(i)])             # noqa: E731
    norm = lambda s: s.strip().casefold()             # noqa: E731
    own = {norm(entity)} | {norm(w) for w in entity.split()} | {norm(text(i)) for i in ids}

    def noise(i):
        t = text(i)
        core = t.strip()
        if i in special or not core or not re.search(r"[^\W_]", core):
            return True
        if core.lower() in STOP_WORDS:
            return True
        if not t[:1].isspace() and len(tok.encode(" " + core, add_special_tokens=False).ids) != 1:
            return True
        return False

    def excluded(i):
        return int(i) in ids or norm(text(i)) in own or noise(int(i)) or int(i) in hubs

    edges = {}
    for l in layers:
        s = f16(source["gate"][l]) @ q
        order = [int(f) for f in np.argsort(-s, kind="stable")[:per_layer] if s[f] > 0]
        if not order:
            continue
        best = s[order[0]]
        for f in order:
            if s[f] < floor * best:
                break
            logits = source["E"] @ source["down"][l][:, f]
            target = int(np.argmax(logits))
            if excluded(target):
                continue
            key = norm(text(target))
            e = edges.setdefault(key, {"gate": -1e9, "layers": [], "count": 0})
            e["gate"] = max(e["gate"], float(s[f]))
            e["layers"].append(l)
            e["count"] += 1
    return edges


def test_describe_matches_independent_pipeline(session, source, vpath):
    r = session.query('DESCRIBE "France" VERBOSE')
    assert r.meta["bands"]["knowledge"]
    lo, hi = r.meta["bands"]["knowledge"]
    hubs = hub_tokens(vpath)
    assert 20 < len(hubs) < 1000
    fan_in = fan_in_hub_tokens(source, vpath, hubs)
    assert fan_in and not fan_in & hubs
    want = independent_edges(source, "France", range(lo, hi + 1), hubs=hubs | fan_in)
    assert r.meta["total_edges"]["knowledge"] == len(want)
    got = {row["target"].strip().casefold(): row for row in r.rows}
    top = sorted(want, key=lambda k: -want[k]["gate"])[:len(r.rows)]
    assert set(got) == set(top)
    for k in top:
        row, w = got[k], want[k]
        assert row["band"] == "knowledge"
        assert row["gate"] == pytest.approx(w["gate"], rel=1e-4, abs=1e-5)
        assert (row["layer_min"], row["layer_max"], row["count"]) == \
            (min(w["layers"]), max(w["layers"]), w["count"])
    gates = [row["gate"] for row in r.rows]
    assert gates == sorted(gates, reverse=True)


def test_describe_bands_layer_and_not_found(session, source, vpath):
    full = session.query('DESCRIBE "Paris" ALL LAYERS BRIEF')
    bands = {r["band"] for r in full.rows}
    assert bands <= {"syntax", "knowledge", "output"} and len(bands) >= 2
    assert all(len([r for r in full.rows if r["band"] == b]) <= 10 for b in bands)
    at = session.query('DESCRIBE "Paris" AT LAYER 15 VERBOSE')
    assert all(r["layer_min"] == r["layer_max"] == 15 for r in at.rows)
    hubs = hub_tokens(vpath)
    want = independent_edges(source, "Paris", [15], hubs=hubs | fan_in_hub_tokens(source, vpath, hubs))
    assert {r["target"].strip().casefold() for r in at.rows} == set(want)
    raw = session.query('DESCRIBE "Paris" AT LAYER 15 RAW')
    assert all(r["relation"] is None for r in raw.rows)
    assert len(raw.rows) >= len(at.rows)          # RAW keeps what the noise filter drops
    assert session.query('DESCRIBE ""').message == "(not found)"
    assert session.query('DESCRIBE "   "').message == "(not found)"
    none = session.query('DESCRIBE "France" RELATIONS ONLY')    # this vindex has no labels
    assert none.rows == [] and none.message == "(no edges found)"


GENERIC = {"strugg", "dissemin", "enthus", "affili", "comprom", "miscon", "accred", "authent"}


def test_describe_drops_generic_hub_tokens(session, vpath):
    """The generic fragments that top nearly every down projection of SmolLM2 are hubs,
    and no DESCRIBE edge (default query) is one; RAW still shows the raw pipeline."""
    hubs = hub_tokens(vpath)
    tok = session.vindex.tokenizer
    for w in GENERIC:
        assert tok.encode(" " + w, add_special_tokens=False).ids[0] in hubs, w
    for entity in ("France", "Monday", "red"):
        r = session.query(f'DESCRIBE "{entity}" VERBOSE')
        assert r.rows
        assert not {row["target"].strip().casefold() for row in r.rows} & GENERIC, entity
        assert all(row["target_id"] not in hubs for row in r.rows)
    raw = session.query('DESCRIBE "France" RAW')
    assert {row["target"].strip().casefold() for row in raw.rows} & GENERIC


def test_describe_via_residual_depends_on_the_entity():
    """VIA RESIDUAL puts the model's BOS first: with the single-token entity at position 0
    (the attention sink) France, Monday and Python shared 29-30 of their 30 VERBOSE edges;
    after BOS they share 13-21 (measured), and no generic hub token shows up."""
    s = Session()
    s.query(f'USE "{smollm2_vindex(level="inference")}"')
    got = {}
    for entity in ("France", "Monday", "Python"):
        r = s.query(f'DESCRIBE "{entity}" VERBOSE VIA RESIDUAL')
        got[entity] = {row["target"].strip().casefold() for row in r.rows}
        assert got[entity] and not got[entity] & GENERIC, entity
    a, b, c = got.values()
    for x, y in ((a, b), (a, c), (b, c)):
        assert len(x & y) <= 24


# --------------------------------------------------------------------------- SELECT / SHOW

def test_select_filters(session, source):
    one = session.query("SELECT * FROM EDGES WHERE layer = 20 AND feature = 100")
    assert len(one.rows) == 1
    logits = source["E"] @ source["down"][20][:, 100]
    assert one.rows[0]["target"] == source["tok"].decode([int(np.argmax(logits))])
    assert one.rows[0]["confidence"] == pytest.approx(float(logits.max()), rel=1e-4)
    feats = session.query("SELECT layer, feature, target FROM FEATURES "
                          "WHERE layer = 5 AND feature IN (1, 2, 3)")
    assert feats.columns == ["layer", "feature", "target"]
    assert [r["feature"] for r in feats.rows] == [1, 2, 3]
    ranged = session.query("SELECT feature, confidence FROM FEATURES WHERE layer = 7 AND "
                           "confidence > 6 ORDER BY confidence DESC LIMIT 5")
    c7 = np.sort((source["E"] @ source["down"][7]).max(axis=0))[::-1]
    want_n = min(5, int((c7 > 6).sum()))
    assert len(ranged.rows) == want_n
    np.testing.assert_allclose([r["confidence"] for r in ranged.rows], c7[:want_n], rtol=1e-4)
    edges = session.query('SELECT * FROM EDGES WHERE entity = "France" ORDER BY gate DESC LIMIT 4')
    desc = session.query('DESCRIBE "France" VERBOSE')
    assert [r["target"] for r in edges.rows] == [r["target"] for r in desc.rows[:4]]
    assert all(r["entity"] == "France" for r in edges.rows)
    near = session.query('SELECT feature, distance FROM FEATURES NEAREST TO "Paris" AT LAYER 20 LIMIT 5')
    ids = source["tok"].encode(" Paris", add_special_tokens=False).ids
    g = f16(source["gate"][20])
    q = f16(source["E"][ids]).mean(axis=0)
    cos = g @ q / (np.linalg.norm(g, axis=1) * np.linalg.norm(q))
    assert [r["feature"] for r in near.rows] == np.argsort(-cos)[:5].tolist()
    like = session.query('SHOW FEATURES 12 WHERE target LIKE "%ing" LIMIT 500')
    assert like.rows and all(r["target"].strip().lower().endswith("ing") for r in like.rows)


def test_show_statements(session):
    ents = session.query("SHOW ENTITIES LIMIT 5")
    assert len(ents.rows) == 5
    counts = [r["count"] for r in ents.rows]
    assert counts == sorted(counts, reverse=True)
    rel = session.query("SHOW RELATIONS")
    assert rel.rows == [] and "no relation labels" in rel.message
    layers = session.query("SHOW LAYERS 10-12")
    assert [r["layer"] for r in layers.rows] == [10, 11, 12]


# --------------------------------------------------------------------------- errors

def test_errors(session, vpath, tmp_path):
    with pytest.raises(NoVindexError, match="USE"):
        Session().query('WALK "x"')
    with pytest.raises(ExecutionError, match="out of range"):
        session.query('WALK "x" LAYERS 40')
    with pytest.raises(ExecutionError, match="out of range"):
        session.query("SHOW FEATURES 30")
    with pytest.raises(ExecutionError, match="out of range"):
        session.query("SELECT * FROM EDGES WHERE layer = 3 AND feature = 99999")
    with pytest.raises(LqlError, match="unknown field"):
        session.query("SELECT bogus FROM EDGES")
    with pytest.raises(VindexError, match="EXTRACT"):
        session.query(f'USE "{tmp_path}"')
    with pytest.raises(VindexError, match="Hugging Face model folder.*EXTRACT"):
        session.query(f'USE "{smollm2_hf_dir()}"')
    with pytest.raises(ExecutionError, match="prompt is empty"):
        session.query('WALK ""')
    from lql import ast
    from lql.browse.select import select
    with pytest.raises(ExecutionError, match="unknown field 'bogus'; fields: entity"):
        select(session.vindex, ast.SelectSource.EDGES, fields=("bogus",))
