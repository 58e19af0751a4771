"""The SAE statements on a tiny extracted model: USE SAE, EXPLAIN INFER / TRACE WITH SAE,
DESCRIBE SAE FEATURE, SELECT … FROM SAE FEATURES, EVALUATE SAE — run through the session,
checked against the formulas applied to transformers' hidden states (parity) and against
an SAE whose reconstruction is exact."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import tiny_model_dir  # noqa: E402
from vindex_fixtures import tiny_vindex  # noqa: E402

from lql.errors import ExecutionError, LqlError  # noqa: E402
from lql.session import Session  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time there was", "Hello world, this is"]
LAYER, K, D_SAE = 1, 8, 96


@functools.cache
def _vindex() -> Path:
    return tiny_vindex("llama", level="inference")


def _weights(hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": (rng.normal(size=(hidden, D_SAE)) / np.sqrt(hidden)).astype(np.float32),
            "W_dec": (rng.normal(size=(D_SAE, hidden)) / np.sqrt(D_SAE)).astype(np.float32),
            "b_enc": (rng.normal(size=D_SAE) * 0.05).astype(np.float32),
            "b_dec": (rng.normal(size=hidden) * 0.05).astype(np.float32)}


def _card(w, x):
    pre = (np.asarray(x, np.float64) - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    out = np.zeros_like(pre)
    for i, row in enumerate(pre):
        top = np.argsort(-row)[:K]
        out[i, top] = np.maximum(row[top], 0)
    return out


@pytest.fixture
def setup(tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE "{_vindex()}"')
    hidden = s.vindex.hidden_size
    w = _weights(hidden)
    np.savez(tmp_path / "topk.npz", **w, k=np.array(K))
    (tmp_path / "topk.labels.json").write_text(json.dumps({"0": "feature zero", "5": "five"}))
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    return s, w, tmp_path


def test_use_sae_registers_and_checks(setup):
    s, w, tmp = setup
    r = s.query(f'USE SAE "topk.npz" AT LAYER {LAYER} AS Res1')
    assert r.statement == "USE SAE" and r.rows[0]["name"] == "res1"
    assert r.rows[0]["architecture"] == "topk" and r.rows[0]["k"] == K
    assert r.rows[0]["labels"] == 2 and "checked against" in r.message
    assert s.sae_name == "res1" and s.sae("res1").d_sae == D_SAE
    assert s.query('USE SAE "topk.npz" AT LAYER 0').rows[0]["name"] == "topk"
    assert s.sae_name == "topk"
    with pytest.raises(LqlError, match="the model has layers 0-"):
        s.query('USE SAE "topk.npz" AT LAYER 99')
    with pytest.raises(LqlError, match="layer is unknown"):
        s.query('USE SAE "topk.npz"')
    np.savez(tmp / "wide.npz", **_weights(s.vindex.hidden_size + 1), k=np.array(K))
    with pytest.raises(LqlError, match="hidden size is"):
        s.query('USE SAE "wide.npz" AT LAYER 1')
    with pytest.raises(LqlError, match="torch pickle"):
        s.query('USE SAE "sae.pt"')
    with pytest.raises(ExecutionError, match="no SAE named 'nope'"):
        s.query('EXPLAIN INFER "x" WITH SAE nope')


def test_every_statement_runs(setup):
    s, w, tmp = setup
    with pytest.raises(ExecutionError, match="no SAE in use"):
        s.query('DESCRIBE SAE FEATURE 1')
    s.query(f'USE SAE "topk.npz" AT LAYER {LAYER} AS res1')
    e = s.query('EXPLAIN INFER "The capital of France is" TOP 3 WITH SAE RAW')
    sae_rows = [r for r in e.rows if r["kind"] == "sae"]
    assert sae_rows and {"position", "sae_tokens"} <= set(e.columns)
    assert {r["position"] for r in sae_rows} == set(range(e.meta["num_tokens"]))
    t = s.query('TRACE "The capital of France is" WITH SAE res1 RAW')
    t_sae = [r for r in t.rows if r["kind"] == "sae"]
    assert {r["position"] for r in t_sae} == {t.meta["num_tokens"] - 1}
    assert all(r["kind"] == "lens" for r in t.rows if r not in t_sae)
    d = s.query('DESCRIBE SAE FEATURE 5 FROM FILE "prompts.txt" TOP 4')
    assert d.meta["label"] == "five" and d.meta["prompts"] == 3
    lens = [r for r in d.rows if r["kind"] == "lens"]
    assert len(lens) == 4 and lens[0]["lens_logit"] >= lens[-1]["lens_logit"]
    assert d.statement == "DESCRIBE SAE FEATURE"
    sel = s.query('SELECT feature, norm, label FROM SAE FEATURES ORDER BY norm DESC LIMIT 5')
    norms = np.linalg.norm(w["W_dec"], axis=1)
    assert [r["feature"] for r in sel.rows] == np.argsort(-norms, kind="stable")[:5].tolist()
    sel = s.query('SELECT * FROM SAE res1 FEATURES WHERE label LIKE "%zero%"')
    assert [r["feature"] for r in sel.rows] == [0] and sel.rows[0]["token"]
    sel = s.query('SELECT feature FROM SAE FEATURES WHERE feature IN (3, 4) AND norm > 0')
    assert [r["feature"] for r in sel.rows] == [3, 4]
    with pytest.raises(ExecutionError, match="SAE FEATURES has no field 'entity'"):
        s.query('SELECT entity FROM SAE FEATURES')
    ev = s.query('EVALUATE SAE res1 FROM FILE "prompts.txt"')
    assert ev.statement == "EVALUATE SAE" and ev.rows[0]["prompts"] == 3
    with pytest.raises(ExecutionError, match="cannot read prompt file"):
        s.query('EVALUATE SAE FROM FILE "missing.txt"')
    with pytest.raises(ExecutionError, match="out of range"):
        s.query('DESCRIBE SAE FEATURE 96')


def test_evaluate_an_exact_sae(setup):
    """W_enc = [I, −I], W_dec = [I; −I], no biases, ReLU: relu(x) − relu(−x) = x, so the
    reconstruction is exact: variance explained 1, MSE 0, and L0 = hidden size (one of each
    pair of features is active per coordinate)."""
    s, _, tmp = setup
    H = s.vindex.hidden_size
    eye = np.eye(H, dtype=np.float32)
    np.savez(tmp / "exact.npz", W_enc=np.concatenate([eye, -eye], axis=1),
             W_dec=np.concatenate([eye, -eye], axis=0), b_enc=np.zeros(2 * H, np.float32),
             b_dec=np.zeros(H, np.float32))
    s.query('USE SAE "exact.npz" AT LAYER 1')
    r = s.query('EVALUATE SAE FROM FILE "prompts.txt"').rows[0]
    assert r["variance_explained"] == pytest.approx(1.0, abs=1e-9)
    assert r["mse"] == pytest.approx(0.0, abs=1e-10) and r["l0"] == H
    assert r["cosine"] == pytest.approx(1.0, abs=1e-6) and r["d_sae"] == 2 * H


# --------------------------------------------------------------------------- against transformers

@pytest.mark.parity
def test_features_and_metrics_match_transformers_hidden_states(setup):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    s, w, tmp = setup
    s.query(f'USE SAE "topk.npz" AT LAYER {LAYER} AS res1')
    folder = str(tiny_model_dir("llama"))
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager").eval()

    def hidden(text):
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        return ids, hs[LAYER + 1][0].numpy()         # the residual after layer LAYER

    # EXPLAIN INFER WITH SAE: each row's activation is the card formula on hidden_states
    ids, x = hidden(PROMPTS[0])
    f = _card(w, x)
    e = s.query(f'EXPLAIN INFER "{PROMPTS[0]}" TOP 3 WITH SAE RAW')
    rows = [r for r in e.rows if r["kind"] == "sae"]
    for p in range(len(ids)):
        want = [int(i) for i in np.argsort(-f[p], kind="stable")[:3] if f[p, i] > 0]
        got = [r for r in rows if r["position"] == p]
        assert [r["feature"] for r in got] == want, p
        for r in got:
            assert abs(r["activation"] - f[p, r["feature"]]) <= 1e-4

    # EVALUATE SAE: the metrics' definitions applied to hidden_states (BOS position left out)
    xs, every = [], []
    for text in PROMPTS:
        ids, x = hidden(text)
        every.append(x)
        xs.append(x[1:] if ids[0] == tok.bos_token_id and len(ids) > 1 else x)
    X = np.concatenate(xs).astype(np.float64)
    F = _card(w, X)
    Xh = F @ w["W_dec"] + w["b_dec"]
    want = {"vectors": X.shape[0], "mse": float(np.mean((X - Xh) ** 2)),
            "variance_explained": float(1 - np.sum((X - Xh) ** 2) / np.sum((X - X.mean(0)) ** 2)),
            "l0": float(np.mean(np.count_nonzero(F > 0, axis=1))),
            "dead_fraction": float(np.mean(~(F > 0).any(axis=0)))}
    got = s.query('EVALUATE SAE FROM FILE "prompts.txt"').rows[0]
    assert got["vectors"] == want["vectors"]
    for key in ("mse", "variance_explained", "l0", "dead_fraction"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key

    # DESCRIBE SAE FEATURE: the top-activating contexts over the file (every position)
    F_all = _card(w, np.concatenate(every))
    feat = int(np.argmax(F_all.max(axis=0)))
    d = s.query(f'DESCRIBE SAE FEATURE {feat} FROM FILE "prompts.txt" TOP 2')
    ctx = [r for r in d.rows if r["kind"] == "context"]
    top2 = np.sort(F_all[:, feat])[::-1][:2]
    assert len(ctx) == 2
    assert all(abs(r["activation"] - float(v)) <= 1e-4 for r, v in zip(ctx, top2))


def test_steer_by_a_loaded_sae_feature_equals_steering_by_its_unit_decoder_row(setup):
    """STEER SAE FEATURE n reads the SAE that USE SAE loaded (the current one, or by name)."""
    s, w, tmp = setup
    s.query(f'USE SAE "topk.npz" AT LAYER {LAYER} AS first')
    s.query(f'USE SAE "topk.npz" AT LAYER {LAYER} AS second')      # current: second
    row = np.asarray(w["W_dec"][5], dtype=np.float32)
    np.save(tmp / "dir.npy", row / np.linalg.norm(row))
    by_file = s.query(f'INFER "{PROMPTS[0]}" TOP 5 STEER "dir.npy" AT LAYER {LAYER} SCALE 3')
    by_sae = s.query(f'INFER "{PROMPTS[0]}" TOP 5 STEER SAE FEATURE 5 AT LAYER {LAYER} SCALE 3')
    named = s.query(f'INFER "{PROMPTS[0]}" TOP 5 STEER SAE first FEATURE 5 AT LAYER {LAYER} SCALE 3')
    plain = s.query(f'INFER "{PROMPTS[0]}" TOP 5')
    probs = [[r["probability"] for r in x.rows] for x in (by_file, by_sae, named, plain)]
    assert probs[0] == pytest.approx(probs[1], abs=1e-6) == probs[2]
    assert probs[0] != pytest.approx(probs[3], abs=1e-6)            # the steer did something
