"""SAEs: the loaders (sae_lens folder, plain TopK safetensors / .npz), encode / decode against
sae_lens's own implementation and against the card formula, the errors, and the
registry on the session."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lql.errors import ExecutionError, LqlError
from lql.sae import Sae, SaeError, layer_of_hook, load_sae
from lql.session import Session

D_IN, D_SAE, K = 16, 64, 6
TOL = 1e-5


def _random(rng, arch: str = "topk", d_in: int = D_IN, d_sae: int = D_SAE):
    w = {"W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32) / np.sqrt(d_in),
         "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32) / np.sqrt(d_sae),
         "b_enc": rng.normal(size=d_sae).astype(np.float32) * 0.1,
         "b_dec": rng.normal(size=d_in).astype(np.float32) * 0.1}
    if arch == "jumprelu":
        w["threshold"] = np.abs(rng.normal(size=d_sae)).astype(np.float32) * 0.2
    return w


def card_encode(w, x, k):
    """The model card's formula, written out: relu(topk((x − b_dec) @ W_enc + b_enc, k))."""
    pre = (x.astype(np.float64) - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    out = np.zeros_like(pre)
    for i, row in enumerate(pre):
        top = np.argsort(-row)[:k]
        out[i, top] = np.maximum(row[top], 0.0)
    return out


def card_decode(w, f):
    return f.astype(np.float64) @ w["W_dec"] + w["b_dec"]


# --------------------------------------------------------------------------- card formula, plain files

@pytest.mark.parametrize("fmt", ["safetensors", "npz", "safetensors-meta-k", "safetensors-linear"])
def test_plain_topk_checkpoint_matches_the_card_formula(tmp_path, fmt):
    rng = np.random.default_rng(1)
    w = _random(rng)
    stored = dict(w)
    if fmt == "npz":
        path = tmp_path / "sae.npz"
        np.savez(path, **stored, k=np.array(K))
    else:
        from safetensors.numpy import save_file
        path = tmp_path / "sae.safetensors"
        meta = None
        if fmt == "safetensors-meta-k":
            meta = {"k": str(K)}
        else:
            stored["k"] = np.array([K], dtype=np.int64)
        if fmt == "safetensors-linear":            # W_enc stored as nn.Linear's [d_sae, d_in]
            stored["W_enc"] = np.ascontiguousarray(w["W_enc"].T)
        save_file(stored, str(path), metadata=meta)
    sae = load_sae(path, layer=2)
    assert (sae.architecture, sae.k, sae.d_in, sae.d_sae, sae.layer) == ("topk", K, D_IN, D_SAE, 2)
    x = rng.normal(size=(40, D_IN)).astype(np.float32)
    f = sae.encode(x)
    want = card_encode(w, x, K)
    np.testing.assert_allclose(f, want, atol=TOL, rtol=0)
    assert (np.count_nonzero(f, axis=1) <= K).all() and np.count_nonzero(f) > 0
    np.testing.assert_allclose(sae.decode(f), card_decode(w, f), atol=TOL, rtol=0)
    np.testing.assert_allclose(sae.reconstruct(x), card_decode(w, want), atol=TOL, rtol=0)


def test_plain_file_without_k_is_a_relu_sae_and_with_threshold_a_jumprelu(tmp_path):
    rng = np.random.default_rng(2)
    w = _random(rng, "jumprelu")
    relu = {k: v for k, v in w.items() if k != "threshold"}
    np.savez(tmp_path / "relu.npz", **relu)
    np.savez(tmp_path / "jump.npz", **w)
    x = rng.normal(size=(10, D_IN)).astype(np.float32)
    pre = (x.astype(np.float64) - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    s = load_sae(tmp_path / "relu.npz", layer=0)
    assert s.architecture == "standard"
    np.testing.assert_allclose(s.encode(x), np.maximum(pre, 0), atol=TOL)
    j = load_sae(tmp_path / "jump.npz", layer=0)
    assert j.architecture == "jumprelu"
    np.testing.assert_allclose(j.encode(x), np.where(pre > w["threshold"], np.maximum(pre, 0), 0),
                               atol=TOL)


# --------------------------------------------------------------------------- sae_lens's own implementation

def _sae_lens_sae(arch: str, rng, **cfg_kw):
    torch = pytest.importorskip("torch")
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata
    meta = SAEMetadata(hook_name="blocks.3.hook_resid_post")
    if arch == "topk":
        model = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, metadata=meta,
                                                        **cfg_kw))
    elif arch == "jumprelu":
        model = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE,
                                                                metadata=meta, **cfg_kw))
    else:
        model = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE,
                                                                metadata=meta, **cfg_kw))
    w = _random(rng, arch)
    with torch.no_grad():
        for name, value in w.items():
            getattr(model, name).copy_(torch.from_numpy(value))
    return model, w


@pytest.mark.parametrize("arch,cfg", [
    ("topk", {}), ("topk", {"apply_b_dec_to_input": False}),
    ("topk", {"rescale_acts_by_decoder_norm": True}),
    ("standard", {}), ("standard", {"apply_b_dec_to_input": False}),
    ("jumprelu", {}),
])
def test_sae_lens_folder_equals_sae_lens_encode_decode(tmp_path, arch, cfg):
    """A folder written by sae_lens's own save_model, read by lql, encodes and decodes as
    sae_lens's SAE does (to 1e-5); the layer comes from the hook name."""
    import torch
    rng = np.random.default_rng(3)
    model, w = _sae_lens_sae(arch, rng, **cfg)
    folder = tmp_path / "sae"
    model.save_model(str(folder))
    assert (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()
    sae = load_sae(folder)
    assert sae.architecture == arch and sae.layer == 3
    assert sae.hook_name == "blocks.3.hook_resid_post"
    x = rng.normal(size=(50, D_IN)).astype(np.float32) * 2
    with torch.no_grad():
        ref_f = model.encode(torch.from_numpy(x)).numpy()
        ref_out = model.decode(torch.from_numpy(ref_f)).numpy()
    f = sae.encode(x)
    assert np.count_nonzero(ref_f) > 0
    np.testing.assert_allclose(f, ref_f, atol=TOL, rtol=0)
    np.testing.assert_allclose(sae.decode(ref_f), ref_out, atol=TOL, rtol=0)
    if arch == "topk" and not cfg:            # and both equal the card's formula
        np.testing.assert_allclose(f, card_encode(w, x, K), atol=TOL, rtol=0)


def test_sae_lens_pre_6_topk_config(tmp_path):
    """Configs older than sae_lens 6: hook_name at the top, TopK as activation_fn_str."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(4)
    w = _random(rng)
    folder = tmp_path / "old"
    folder.mkdir()
    save_file(w, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "hook_name":
        "blocks.5.hook_resid_pre", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K},
        "apply_b_dec_to_input": True}))
    (folder / "labels.json").write_text(json.dumps([{"index": "3", "description": "cats"},
                                                    {"index": 9, "description": "French"}]))
    sae = load_sae(folder)
    assert (sae.architecture, sae.k, sae.layer) == ("topk", K, 4)     # resid_pre 5 = after layer 4
    assert sae.labels == {3: "cats", 9: "French"}
    x = rng.normal(size=(8, D_IN)).astype(np.float32)
    np.testing.assert_allclose(sae.encode(x), card_encode(w, x, K), atol=TOL)


# --------------------------------------------------------------------------- hook names, errors

@pytest.mark.parametrize("hook,layer", [
    ("blocks.21.hook_resid_post", 21), ("blocks.22.hook_resid_pre", 21), ("blocks.0.hook_resid_post", 0),
    ("model.layers.7", 7), ("layers.3", 3), ("model.layers.4.output", 4),
])
def test_hook_names_map_to_the_residual_after_a_layer(hook, layer):
    assert layer_of_hook(hook) == layer


@pytest.mark.parametrize("hook", ["blocks.3.hook_resid_mid", "blocks.3.hook_mlp_out",
                                  "blocks.3.attn.hook_z", "blocks.0.hook_resid_pre", "embed"])
def test_other_hook_points_are_refused(hook):
    with pytest.raises(SaeError, match="hook"):
        layer_of_hook(hook)


def test_torch_checkpoint_is_refused_with_the_conversion(tmp_path):
    p = tmp_path / "sae.pt"
    p.write_bytes(b"\x80\x02")
    with pytest.raises(SaeError) as info:
        load_sae(p)
    msg = str(info.value)
    assert "no torch" in msg and "torch.load" in msg and "save_file" in msg and "\n" not in msg


def test_shape_and_config_errors_are_clear(tmp_path):
    rng = np.random.default_rng(5)
    w = _random(rng)
    bad = dict(w, b_dec=np.zeros(D_IN + 1, dtype=np.float32))
    np.savez(tmp_path / "bad.npz", **bad, k=np.array(K))
    with pytest.raises(SaeError, match=r"b_dec has shape \(17,\), expected \(16,\)"):
        load_sae(tmp_path / "bad.npz", layer=0)
    np.savez(tmp_path / "partial.npz", W_enc=w["W_enc"], W_dec=w["W_dec"])
    with pytest.raises(SaeError, match="has no b_enc, b_dec"):
        load_sae(tmp_path / "partial.npz")
    with pytest.raises(SaeError, match="does not exist"):
        load_sae(tmp_path / "missing.safetensors")
    folder = tmp_path / "norm"
    folder.mkdir()
    from safetensors.numpy import save_file
    save_file(w, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"architecture": "topk", "k": K,
                                                 "normalize_activations": "layer_norm"}))
    with pytest.raises(SaeError, match="normalize_activations"):
        load_sae(folder)
    sae = Sae(**w, architecture="topk", k=K, layer=5)
    with pytest.raises(SaeError, match="d_in = 16, but the model's hidden size is 64"):
        sae.check_model(64, 8)
    with pytest.raises(SaeError, match="reads layer 5, but the model has layers 0-3"):
        sae.check_model(16, 4)
    with pytest.raises(SaeError, match="layer is unknown"):
        Sae(**w, architecture="topk", k=K).check_model(16, 4)
    with pytest.raises(SaeError, match="feature 64 out of range"):
        sae.feature_index(64)
    with pytest.raises(SaeError, match="needs 1 ≤ k ≤ d_sae = 64, got 65"):
        Sae(**w, architecture="topk", k=65)
    full = Sae(**w, architecture="topk", k=D_SAE)          # k = d_sae: plain ReLU
    x = rng.normal(size=(3, D_IN)).astype(np.float32)
    np.testing.assert_allclose(full.encode(x), Sae(**w).encode(x), atol=TOL)
    assert isinstance(SaeError("x"), LqlError)


def test_session_registry():
    rng = np.random.default_rng(6)
    s = Session()
    with pytest.raises(ExecutionError, match="no SAE in use"):
        s.sae()
    a = Sae(**_random(rng), architecture="topk", k=K, layer=1)
    b = Sae(**_random(rng), architecture="standard", layer=2)
    s.use_sae("Res1", a)
    s.use_sae("res2", b)
    assert s.sae() is b and s.sae("RES1") is a and s.sae_name == "res2"
    assert set(s.saes) == {"res1", "res2"}
    with pytest.raises(ExecutionError, match=r"no SAE named 'nope' \(loaded: res1, res2\)"):
        s.sae("nope")
