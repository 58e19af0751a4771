"""STEER / INJECT / SAVE STEER / WITH ADAPTER: syntax, round trips, the computation on a
tiny model against hand-computed values, and the errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lql import ast as A  # noqa: E402
from lql.errors import LqlError  # noqa: E402
from lql.model import Hooks, Record  # noqa: E402
from lql.parser import parse  # noqa: E402
from lql.session import Session  # noqa: E402

FORMS = [
    ('INFER "x" STEER "v.npy" AT LAYER 3 SCALE 4',
     A.Infer("x", steer=(A.Steer(A.SteerFile("v.npy"), 3, 4.0),))),
    ('INFER "x" GENERATE 5 STEER SAE FEATURE 12 AT LAYER 2 SCALE -1.5 '
     'STEER SAE res FEATURE 3 AT LAYER 1 SCALE 10 %',
     A.Infer("x", generate=5, steer=(A.Steer(A.SaeFeature(12), 2, -1.5),
                                     A.Steer(A.SaeFeature(3, "res"), 1, 10.0, percent=True)))),
    ('INFER "x" STEER CONTRAST FROM FILE "a.txt" VS "b.txt" AT LAYER 7 SCALE 8 TOP 3',
     A.Infer("x", top=3, steer=(A.Steer(A.Contrast("a.txt", "b.txt"), 7, 8.0),))),
    ('INFER "x <p>" INJECT "h.npy" AT TOKEN "<p>" INJECT "g.npy" AT TOKEN "<q>" SCALE 2.5',
     A.Infer("x <p>", inject=(A.Inject("h.npy", "<p>"), A.Inject("g.npy", "<q>", 2.5)))),
    ('SAVE STEER CONTRAST FROM FILE "a.txt" VS "b.txt" AT LAYER 15 INTO "v.npy"',
     A.SaveSteer(A.Contrast("a.txt", "b.txt"), 15, "v.npy")),
    ('SAVE STEER SAE FEATURE 9 AT LAYER 4 INTO "f.npy"', A.SaveSteer(A.SaeFeature(9), 4, "f.npy")),
    ('USE MODEL "m" WITH ADAPTER "lora"', A.UseModel("m", adapter="lora")),
    ('EXTRACT "m" INTO "o.vindex" WITH INFERENCE WITH ADAPTER "lora"',
     A.Extract("m", "o.vindex", level=A.Level.INFERENCE, adapter="lora")),
]


@pytest.mark.parametrize("text,expected", FORMS, ids=[f[0][:50] for f in FORMS])
def test_forms_parse_and_round_trip(text, expected):
    assert parse(text) == [expected]
    assert parse(expected.to_lql()) == [expected]


def test_syntax_errors():
    for bad in ('INFER "x" STEER "v.npy" SCALE 4',            # AT LAYER is required
                'INFER "x" STEER "v.npy" AT LAYER 2',          # SCALE is required
                'INFER "x" INJECT "v.npy" AT LAYER 2',
                'USE MODEL "m" WITH ADAPTER', 'SAVE STEER "v.npy" AT LAYER 1'):
        with pytest.raises(LqlError):
            parse(bad)


# --------------------------------------------------------------------------- on a tiny model

@pytest.fixture(scope="module")
def tiny():
    from model_fixtures import tiny_model_dir
    try:
        return tiny_model_dir("llama")
    except pytest.skip.Exception:
        raise
    except Exception as exc:  # pragma: no cover - no transformers to build it
        pytest.skip(f"no tiny model: {exc}")


@pytest.fixture
def session(tiny, tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE MODEL "{tiny}"')
    return s


def _model(s):
    from lql.runtime import model_for_source
    return model_for_source(s.model_source)


def _ids(s, text):
    return s.model_source.tokenizer().encode(text).ids


def _softmax(z):
    e = np.exp(np.asarray(z, dtype=np.float64) - np.max(z))
    return e / e.sum()


def test_steer_adds_to_the_residual_at_every_position(session, tmp_path):
    m = _model(session)
    v = np.random.default_rng(0).standard_normal(m.hidden_size).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    r = session.query('INFER "The cat sat" RAW TOP 5 VERBOSE STEER "v.npy" AT LAYER 1 SCALE 2')
    ids = r.meta["token_ids"]
    out = m.forward(ids, hooks=Hooks(residual=lambda i, h: h + 2 * v if i == 1 else h))
    p = _softmax(out.logits)
    assert [row["token_id"] for row in r.rows] == list(np.argsort(-p, kind="stable")[:5])
    assert r.rows[0]["probability"] == pytest.approx(p[r.rows[0]["token_id"]], abs=1e-6)
    plain = _softmax(m.forward(ids).logits)
    assert np.abs(plain - p).max() > 1e-4


def test_contrast_is_the_unit_mean_difference_at_the_last_position(session, tmp_path):
    (tmp_path / "a.txt").write_text("I love it\n\nGreat day\n")
    (tmp_path / "b.txt").write_text("I hate it\nAwful day\n")
    r = session.query('SAVE STEER CONTRAST FROM FILE "a.txt" VS "b.txt" AT LAYER 1 INTO "v.npy"')
    assert r.meta["prompts_a"] == 2 and r.meta["prompts_b"] == 2
    m = _model(session)
    rec = Record(residuals="last", layers=frozenset([1]))

    def mean(texts):
        return np.mean([m.forward(_ids(session, t), record=rec).residuals[1] for t in texts], axis=0)
    d = mean(["I love it", "Great day"]) - mean(["I hate it", "Awful day"])
    v = np.load(tmp_path / "v.npy")
    assert np.allclose(v, d / np.linalg.norm(d), atol=1e-5)
    # steering with the contrast on the fly == steering with the saved file
    a = session.query('INFER "x y" RAW TOP 5 STEER CONTRAST FROM FILE "a.txt" VS "b.txt" AT LAYER 1 SCALE 3')
    b = session.query('INFER "x y" RAW TOP 5 STEER "v.npy" AT LAYER 1 SCALE 3')
    assert a.rows == b.rows


def test_sae_feature_uses_the_unit_decoder_row(session, tmp_path):
    m = _model(session)
    with pytest.raises(LqlError, match="no SAE loaded"):
        session.query('INFER "x" STEER SAE FEATURE 1 AT LAYER 1 SCALE 2')
    w = np.random.default_rng(1).standard_normal((8, m.hidden_size)).astype(np.float32)
    session.saes = {"fake": SimpleNamespace(W_dec=w, layer=1)}
    np.save(tmp_path / "f.npy", w[3] / np.linalg.norm(w[3]))
    a = session.query('INFER "x" RAW TOP 5 STEER SAE FEATURE 3 AT LAYER 1 SCALE 2')
    b = session.query('INFER "x" RAW TOP 5 STEER "f.npy" AT LAYER 1 SCALE 2')
    assert a.rows == b.rows and a.meta["steer"][0]["sae_layer"] == 1
    assert session.query('INFER "x" RAW TOP 5 STEER SAE fake FEATURE 3 AT LAYER 1 SCALE 2').rows == a.rows
    with pytest.raises(LqlError, match="out of range"):
        session.query('INFER "x" STEER SAE FEATURE 8 AT LAYER 1 SCALE 2')
    with pytest.raises(LqlError, match="no SAE named"):
        session.query('INFER "x" STEER SAE other FEATURE 1 AT LAYER 1 SCALE 2')
    session.saes["two"] = SimpleNamespace(W_dec=w, layer=2)
    with pytest.raises(LqlError, match="name one"):
        session.query('INFER "x" STEER SAE FEATURE 1 AT LAYER 1 SCALE 2')


def test_vector_file_formats_and_shape_errors(session, tmp_path):
    m = _model(session)
    v = np.arange(m.hidden_size, dtype=np.float32) / m.hidden_size
    np.save(tmp_path / "v.npy", v)
    np.savez(tmp_path / "v.npz", only=v)
    np.savez(tmp_path / "two.npz", a=v, b=v)
    from safetensors.numpy import save_file
    save_file({"v": v[None]}, str(tmp_path / "v.safetensors"))
    rows = {f: session.query(f'INFER "x" RAW TOP 3 STEER "{f}" AT LAYER 0 SCALE 1').rows
            for f in ("v.npy", "v.npz", "v.safetensors")}
    assert rows["v.npy"] == rows["v.npz"] == rows["v.safetensors"]
    np.save(tmp_path / "short.npy", v[:-1])
    with pytest.raises(LqlError, match="hidden size"):
        session.query('INFER "x" STEER "short.npy" AT LAYER 0 SCALE 1')
    with pytest.raises(LqlError, match="exactly one"):
        session.query('INFER "x" STEER "two.npz" AT LAYER 0 SCALE 1')
    with pytest.raises(LqlError, match="not found"):
        session.query('INFER "x" STEER "nope.npy" AT LAYER 0 SCALE 1')
    with pytest.raises(LqlError, match="out of range"):
        session.query('INFER "x" STEER "v.npy" AT LAYER 99 SCALE 1')
    with pytest.raises(LqlError, match=r"\.npy"):
        session.query('SAVE STEER "v.npy" AT LAYER 0 INTO "v.txt"')


def test_inject_errors_and_adapter_scale(session, tiny, tmp_path):
    m = _model(session)
    np.save(tmp_path / "x.npy", np.ones(m.hidden_size, dtype=np.float32))
    with pytest.raises(LqlError, match="not in the prompt"):
        session.query('INFER "no placeholder" RAW INJECT "x.npy" AT TOKEN "<|im_start|>"')
    with pytest.raises(LqlError, match="single token"):
        session.query('INFER "a b" RAW INJECT "x.npy" AT TOKEN "not one token at all"')
    np.save(tmp_path / "bad.npy", np.ones((2, m.hidden_size), dtype=np.float32))
    with pytest.raises(LqlError, match="shape"):
        session.query('INFER "a <|im_start|>" RAW INJECT "bad.npy" AT TOKEN "<|im_start|>"')
    r = session.query('INFER "a <|im_start|> b" RAW INJECT "x.npy" AT TOKEN "<|im_start|>"')
    assert r.meta["inject"][0]["scale"] == pytest.approx(m.hidden_size ** 0.5)
    # WITH ADAPTER: nla_meta.yaml's injection_scale becomes the default
    from safetensors.numpy import save_file
    ad = tmp_path / "lora"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["layers.0.self_attn.q_proj"]}))
    shape = session.model_source.shape("layers.0.self_attn.q_proj.weight")
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, shape[1]), np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((shape[0], 2), np.float32)},
              str(ad / "adapter_model.safetensors"))
    (ad / "nla_meta.yaml").write_text("# verbaliser\ninjection_scale: 12.5\nlayer: 23\nnested:\n  a: 1\n")
    session.query(f'USE MODEL "{tiny}" WITH ADAPTER "lora"')
    assert session.model_source.adapter_meta == {"injection_scale": 12.5, "layer": 23}
    r = session.query('INFER "a <|im_start|> b" RAW INJECT "x.npy" AT TOKEN "<|im_start|>"')
    assert r.meta["inject"][0]["scale"] == 12.5
    assert r.meta["inject"][0]["scale_from"].startswith("nla_meta")
    r = session.query('INFER "a <|im_start|> b" RAW INJECT "x.npy" AT TOKEN "<|im_start|>" SCALE 3')
    assert r.meta["inject"][0]["scale"] == 3.0


def test_a_served_vindex_refuses_steering_and_injection():
    from lql.remote.policy import route, server_refusal
    for text in ('INFER "x" STEER "v.npy" AT LAYER 1 SCALE 2',
                 'INFER "x <p>" INJECT "h.npy" AT TOKEN "<p>"',
                 'SAVE STEER "v.npy" AT LAYER 1 INTO "w.npy"'):
        stmt = parse(text)[0]
        assert route(stmt) == "refuse" and server_refusal(stmt)
    assert route(parse('INFER "x"')[0]) == "remote"


def test_steering_composes_with_overlay_edits_and_the_kv_cache(tmp_path):
    """Through an overlay (a COMPOSE insert edits the weights) INFER ... STEER is the
    edited model's forward pass with the hook, and GENERATE ... STEER (KV cache) equals
    greedy decoding that recomputes the whole sequence with the hook at every step."""
    from vindex_fixtures import tiny_vindex

    from lql.runtime import model_for
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny_vindex("llama", level="inference")}"')
    s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("France", "capital", "Paris") '
            'MODE COMPOSE')
    m = model_for(s.vindex)
    from lql.runtime.view import base_of
    assert m is not model_for(base_of(s.vindex))           # the overlay rebuilt edited layers
    v = np.random.default_rng(5).standard_normal(m.hidden_size).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    hooks = Hooks(residual=lambda i, h: h + np.float32(1.5) * v if i == 1 else h)
    prompt = "The capital of France is"
    r = s.query(f'INFER "{prompt}" RAW TOP 5 VERBOSE STEER "v.npy" AT LAYER 1 SCALE 1.5')
    ids = r.meta["token_ids"]
    p = _softmax(m.forward(ids, hooks=hooks).logits)
    assert [row["token_id"] for row in r.rows] == list(np.argsort(-p, kind="stable")[:5])
    assert all(abs(row["probability"] - p[row["token_id"]]) <= 1e-6 for row in r.rows)
    g = s.query(f'INFER "{prompt}" RAW GENERATE 6 STEER "v.npy" AT LAYER 1 SCALE 1.5')
    seq, want = list(ids), []
    for _ in range(len(g.meta["token_ids"])):
        t = int(np.argmax(m.forward(seq, hooks=hooks).logits))
        want.append(t)
        seq.append(t)
    assert g.meta["token_ids"] == want
    plain = s.query(f'INFER "{prompt}" RAW GENERATE 6')
    assert plain.meta["token_ids"] != want or r.rows != s.query(f'INFER "{prompt}" RAW TOP 5').rows
