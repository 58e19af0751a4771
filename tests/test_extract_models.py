"""EXTRACT from real sources: SmolLM2 (GGUF and the transformers-made HF folder) and a
tiny random model of every family.  Expected values come from the source files read
directly with ``safetensors`` / numpy, never from lql itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import FAMILIES, REPO, smollm2_hf_dir, tiny_model_dir  # noqa: E402
from vindex_fixtures import smollm2_vindex, tiny_vindex  # noqa: E402

from lql.errors import MissingTensorError, UnsupportedArchitectureError  # noqa: E402
from lql.vindex import extract, open_vindex, verify  # noqa: E402


def _hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a HF folder, keys without ``model.`` / ``transformer.`` (f32)."""
    from safetensors.numpy import load_file
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        for k, v in load_file(f).items():
            for prefix in ("model.", "transformer."):
                if k.startswith(prefix):
                    k = k[len(prefix):]
                    break
            out[k] = v.astype(np.float32)
    return out


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


# ------------------------------------------------------------------ SmolLM2

@pytest.fixture(scope="module")
def smol_hf_tensors():
    return _hf_tensors(smollm2_hf_dir())


@pytest.mark.slow
def test_smollm2_gate_and_embeddings_equal_source(smol_hf_tensors):
    v = open_vindex(smollm2_vindex("browse", "f16", source="hf"))
    t = smol_hf_tensors
    assert (v.num_layers, v.hidden_size, v.vocab_size, v.family) == (30, 576, 49152, "llama")
    assert v.intermediate_size == 1536 and v.level == "browse" and v.dtype == "f16"
    for layer in (0, 13, 29):
        np.testing.assert_array_equal(v.gate(layer), _f16(t[f"layers.{layer}.mlp.gate_proj.weight"]))
    np.testing.assert_array_equal(np.asarray(v.embeddings, dtype=np.float32),
                                  _f16(t["embed_tokens.weight"]))
    assert v.token_text(v.tokenizer.token_to_id("ĠParis")) == " Paris"
    assert v.chat_template and "im_start" in v.chat_template
    assert verify(v.path).ok


def _assert_top_k_agree(ids_a, scores_a, ids_b, scores_b, tol):
    """Top-k lists agree up to near-ties: same scores (within tol); ids may differ only
    where neighbouring scores are within tol of each other."""
    np.testing.assert_allclose(scores_a, scores_b, atol=tol, rtol=0)
    differ = ids_a != ids_b
    if differ.any():
        # every differing slot must sit in a run of near-equal scores
        s = scores_b
        gap_prev = np.abs(np.diff(s, axis=1, prepend=np.inf))
        gap_next = np.abs(np.diff(s, axis=1, append=-np.inf))
        near_tie = (gap_prev <= 2 * tol) | (gap_next <= 2 * tol)
        assert near_tie[differ].all(), "top-k ids differ where scores are not near-tied"
    return differ.mean()


@pytest.mark.slow
def test_smollm2_down_meta_matches_numpy(smol_hf_tensors):
    v = open_vindex(smollm2_vindex("browse", "f16", source="hf"))
    emb = smol_hf_tensors["embed_tokens.weight"]
    rng = np.random.default_rng(0)
    for layer in (0, 11, 29):
        feats = np.sort(rng.choice(1536, 24, replace=False))
        w = smol_hf_tensors[f"layers.{layer}.mlp.down_proj.weight"][:, feats]   # (hidden, n)
        scores = (emb.astype(np.float64) @ w.astype(np.float64)).T              # (n, vocab)
        ref_ids = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        ref_scores = np.take_along_axis(scores, ref_ids, 1)
        ids = v.down_meta.top_ids(layer)[feats]
        got = v.down_meta.top_scores(layer)[feats]
        frac = _assert_top_k_agree(ids, got, ref_ids, ref_scores, tol=1e-4)
        assert frac < 0.02
        np.testing.assert_array_equal(v.down_meta.c_scores(layer)[feats], got[:, 0])
        rec = v.down_meta.record(layer, int(feats[0]))
        assert rec["top_token_id"] == ids[0, 0] and [i for i, _ in rec["top"]] == ids[0].tolist()


@pytest.mark.slow
def test_smollm2_gguf_and_hf_agree():
    a = open_vindex(smollm2_vindex("browse", "f16", source="gguf"))
    b = open_vindex(smollm2_vindex("browse", "f16", source="hf"))
    assert (a.num_layers, a.hidden_size, a.vocab_size, a.intermediate_size) == \
        (b.num_layers, b.hidden_size, b.vocab_size, b.intermediate_size)
    assert a.layer_bands == b.layer_bands and a.embed_scale == b.embed_scale
    for key in ("head_dim", "num_q_heads", "num_kv_heads", "rope_base", "tie_word_embeddings"):
        assert a.model_config.get(key) == b.model_config.get(key), key
    ea, eb = np.asarray(a.embeddings, np.float32), np.asarray(b.embeddings, np.float32)
    np.testing.assert_allclose(ea, eb, rtol=2 ** -10, atol=1e-6)
    differing = 0
    for layer in range(a.num_layers):
        np.testing.assert_allclose(a.gate(layer), b.gate(layer), rtol=2 ** -10, atol=1e-6)
        differing += _assert_top_k_agree(a.down_meta.top_ids(layer), a.down_meta.top_scores(layer),
                                         b.down_meta.top_ids(layer), b.down_meta.top_scores(layer),
                                         tol=2e-3)
    assert differing / a.num_layers < 0.01
    ta, tb = a.tokenizer, b.tokenizer
    text = "The capital of France is Paris."
    assert ta.encode(text).ids == tb.encode(text).ids


# ------------------------------------------------------------------ tiny families

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("level", ["browse", "inference", "all"])
def test_tiny_family_round_trip(family, level):
    src = tiny_model_dir(family)
    v = open_vindex(tiny_vindex(family, level, "f32"))
    tensors = _hf_tensors(src)
    from lql.families import get_family
    fam = get_family(v.family)
    mc = v.model_config
    specs = fam.tensors(mc, level)
    if level == "browse":     # down_meta is derived from the down weights; they are not stored
        specs = [s for s in specs if s.file in ("gate_vectors.bin", "embeddings.bin")]
    keys = [s.key for s in specs]
    assert len(keys) == 1 + v.num_layers or level != "browse"
    assert set(v.weights) == set(keys), set(v.weights) ^ set(keys)
    for key in keys:
        np.testing.assert_array_equal(v.weights[key], tensors[key], err_msg=f"{family} {key}")
    for layer in range(v.num_layers):
        assert v.num_features(layer) == v.gate(layer).shape[0]
    # gate rows are the FFN input projection, one row per feature
    g = v.gate(0)
    assert g.shape == (v.num_features(0), v.hidden_size)
    emb = tensors[fam.embed_key]
    down = fam.down_columns(tensors[fam.down_key(1)])
    scores = emb @ down[:, :8]
    top = np.argsort(-scores, axis=0, kind="stable")[0]
    np.testing.assert_array_equal(v.down_meta.top_ids(1)[:8, 0], top)
    assert v.level == level and verify(v.path).ok
    if level == "browse":
        assert not (v.path / "weight_manifest.json").exists()


@pytest.mark.parametrize("family", ["gemma", "gpt2"])
def test_tiny_family_f16_and_embed_scale(family, tmp_path):
    src = tiny_model_dir(family)
    out = extract(src, tmp_path / "v", level="inference", dtype="f16", progress=False)
    v = open_vindex(out)
    tensors = _hf_tensors(src)
    hidden = v.hidden_size
    if family == "gemma":
        assert v.embed_scale == pytest.approx(hidden ** 0.5, rel=1e-6)
    else:
        assert v.embed_scale == 1.0
        # GPT-2's Conv1D c_fc is (hidden, features): gate rows are its transpose
        np.testing.assert_array_equal(v.gate(0), _f16(tensors["h.0.mlp.c_fc.weight"].T))
        np.testing.assert_array_equal(v.weights["h.0.mlp.c_fc.weight"],
                                      _f16(tensors["h.0.mlp.c_fc.weight"]))


def test_subset_layers_real(tmp_path):
    src = tiny_model_dir("llama")
    v = open_vindex(extract(src, tmp_path / "v", layers=[1], level="inference", progress=False))
    assert v.layers == [1] and v.num_layers == 3
    assert v.down_meta.num_features(0) == 0 and v.down_meta.num_features(1) == v.num_features(1)
    assert "layers.0.mlp.up_proj.weight" not in v.weights
    assert "layers.1.mlp.up_proj.weight" in v.weights


# ------------------------------------------------------------------ bad sources

def test_unknown_architecture(tmp_path):
    src = tmp_path / "mamba"
    shutil.copytree(tiny_model_dir("llama"), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "mamba"
    cfg["architectures"] = ["MambaForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="mamba") as err:
        extract(src, tmp_path / "v", progress=False)
    assert "llama" in str(err.value)
    assert not (tmp_path / "v").exists()


def test_missing_tensor_in_source(tmp_path):
    from safetensors.numpy import load_file, save_file
    src = tmp_path / "broken"
    shutil.copytree(tiny_model_dir("llama"), src)
    st = next(src.glob("*.safetensors"))
    tensors = load_file(st)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, st, metadata={"format": "pt"})
    with pytest.raises(MissingTensorError, match=r"layers\.1\.mlp\.down_proj\.weight"):
        extract(src, tmp_path / "v", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


# ------------------------------------------------------------------ surfaces

def test_extract_statement_through_session(tmp_path):
    from lql.session import Session
    s = Session(cwd=tmp_path)
    src = tiny_model_dir("qwen2")
    r = s.query(f'EXTRACT MODEL "{src}" INTO "out.vindex" WITH INFERENCE DTYPE F32;')
    assert r.rows[0]["level"] == "inference" and r.rows[0]["dtype"] == "f32"
    assert open_vindex(tmp_path / "out.vindex").level == "inference"
    from lql.errors import LqlError
    with pytest.raises(LqlError, match="already exists"):
        s.query(f'EXTRACT MODEL "{src}" INTO "out.vindex";')


def test_cli_extract_and_verify(tmp_path):
    src = tiny_model_dir("mistral")
    out = tmp_path / "m.vindex"
    run = lambda *a: subprocess.run([sys.executable, "-m", "lql", *a], cwd=REPO,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    r = run("extract", str(src), "-o", str(out), "--level", "inference", "--layers", "0-1")
    assert r.returncode == 0, r.stderr
    assert "extracted" in r.stdout and open_vindex(out).layers == [0, 1]
    r = run("extract", str(src), "-o", str(out))
    assert r.returncode != 0 and "already exists" in r.stderr
    r = run("verify", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "down_meta.bin" in r.stdout
    p = out / "norms.bin"
    data = bytearray(p.read_bytes())
    data[0] ^= 1
    p.write_bytes(bytes(data))
    r = run("verify", str(out))
    assert r.returncode != 0 and "mismatch" in r.stdout



def test_extract_chat_template_file(tmp_path):
    """``--chat-template FILE`` stores that template in place of the source's (here:
    Gemma's turn format, shipped for Gemma GGUFs built without one); a file that is
    missing or does not render a user turn is refused before anything is written."""
    src = tiny_model_dir("mistral")
    gemma = REPO / "examples" / "chat_templates" / "gemma.jinja"
    out = tmp_path / "c.vindex"
    run = lambda *a: subprocess.run([sys.executable, "-m", "lql", *a], cwd=REPO,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    r = run("extract", str(src), "-o", str(out), "--layers", "0-0", "--chat-template", str(gemma))
    assert r.returncode == 0, r.stderr
    v = open_vindex(out)
    assert v.chat_template == gemma.read_text(encoding="utf-8") and verify(out).ok
    from lql.model.chat import render_chat, special_tokens
    text = render_chat(v.chat_template, [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hi"}],
                       special_tokens(v.tokenizer_config), add_generation_prompt=True)
    bos = v.tokenizer_config["bos_token"]
    bos = bos["content"] if isinstance(bos, dict) else bos
    assert text == bos + "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    for bad, why in ((tmp_path / "none.jinja", "not found"),
                     (tmp_path / "broken.jinja", "does not render"),
                     (tmp_path / "silent.jinja", "does not render the user")):
        if bad.name == "broken.jinja":
            bad.write_text("{% for m in messages %}{{ m.content }", encoding="utf-8")
        elif bad.name == "silent.jinja":
            bad.write_text("<start>", encoding="utf-8")
        r = run("extract", str(src), "-o", str(tmp_path / bad.stem), "--layers", "0-0",
                "--chat-template", str(bad))
        assert r.returncode != 0 and why in r.stderr, r.stderr
        assert not (tmp_path / bad.stem).exists()

@pytest.mark.parametrize("family", FAMILIES)
def test_forward_pass_from_vindex_equals_source(family):
    """The inference-level vindex holds everything the forward pass needs, bit for bit."""
    from lql.model.model import build_model
    from lql.sources import open_source
    v = open_vindex(tiny_vindex(family, "inference", "f32"))
    src = open_source(tiny_model_dir(family))
    ids = v.tokenizer.encode("The capital of France is").ids
    a = build_model(v.model_config, v.weights).forward(ids).logits
    b = build_model(src.model_config, src.weights).forward(ids).logits
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_smollm2_inference_vindex_predicts_paris():
    """An INFERENCE vindex from the GGUF carries a working model (fixtures.md: top-1 " Paris")."""
    from lql.model.model import build_model
    v = open_vindex(smollm2_vindex("inference", "f16", source="gguf"))
    assert v.level == "inference" and v.has_model_weights and verify(v.path).ok
    ids = v.tokenizer.encode("The capital of France is").ids
    logits = build_model(v.model_config, v.weights).forward(ids).logits
    assert v.token_text(int(np.argmax(logits))) == " Paris"
