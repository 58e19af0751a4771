"""MODE MEMIT: the stored low-rank update equals an independent closed-form computation.

The keys (the down projection's input at the last position) and the covariance of the text
sample are recomputed here with transformers' own forward pass (hooks on ``down_proj``) on
the tiny random Llama; the update ``R·Kᵀ·(K·Kᵀ + λ·n·Ĉ)⁻¹`` is solved here with torch in
float64.  Also: the overlay's down weights are base + U·Vᵀ, and REMOVE PATCH reverts
exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_memit_update_matches_closed_form(tmp_path):
    from model_fixtures import tiny_model_dir
    from transformers import AutoModelForCausalLM
    from vindex_fixtures import tiny_vindex

    from lql.edit.memit import CHUNK, LAMBDA, PRESERVE, SAMPLE
    from lql.edit.patch import memit_factors
    from lql.runtime import predict
    from lql.session import Session
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny_vindex("llama", "all", "f32")}"')
    s.query("SET CHAT OFF")
    L = 1
    base_down = np.array(s.vindex.weights[f"layers.{L}.mlp.down_proj.weight"]) \
        if f"layers.{L}.mlp.down_proj.weight" in s.vindex.weights else None
    p0 = predict(s.vindex, "The capital of France is").probs.copy()
    s.query('BEGIN PATCH "m.vlp"')
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", '
                f'"Poseidon") AT LAYER {L} MODE MEMIT')
    op = s.overlay.recording.operations[-1]
    assert op.op == "memit"
    U, V = memit_factors(op)
    tok = s.vindex.tokenizer
    ids = tok.encode(" Poseidon", add_special_tokens=False).ids
    assert U.shape[1] == len(ids) * (1 + PRESERVE)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.float32)
    model.config._attn_implementation = "eager"
    grabbed = []
    h = model.model.layers[L].mlp.down_proj.register_forward_hook(
        lambda m, inp, out: grabbed.append(inp[0][0].double()))

    def keys(seq):
        grabbed.clear()
        with torch.no_grad():
            model(torch.tensor([seq]))
        return grabbed[0]

    from lql.edit.insert import REFERENCE_ENTITIES
    cols = []
    prompt_ids = tok.encode("The capital of Atlantis is").ids
    refs = [e for e in REFERENCE_ENTITIES if e != "Atlantis"][:PRESERVE]
    for i in range(len(ids)):
        cols.append(keys(prompt_ids + ids[:i])[-1])
        for ref in refs:
            cols.append(keys(tok.encode(f"The capital of {ref} is").ids + ids[:i])[-1])
    K = torch.stack(cols, 1)
    sample = tok.encode(SAMPLE.read_text(encoding="utf-8"), add_special_tokens=False).ids
    acc, n = 0, 0
    for lo in range(0, len(sample), CHUNK):
        chunk = sample[lo:lo + CHUNK]
        if len(chunk) < 8:
            continue
        k = keys(chunk)
        acc = acc + k.T @ k
        n += k.shape[0]
    h.remove()
    C = acc / n
    m = K.shape[1]
    kk = K @ K.T
    Chat = C * (torch.trace(kk) / m) / torch.trace(C)
    A = kk + LAMBDA * m * Chat
    A = A + 1e-8 * torch.trace(A) / A.shape[0] * torch.eye(A.shape[0], dtype=A.dtype)
    R = torch.tensor(U, dtype=torch.float64) / float(r.meta["scale"])   # the op's targets
    want = (R @ K.T @ torch.linalg.inv(A)).numpy()
    got = (U @ V.T) / float(r.meta["scale"])
    assert np.allclose(got, want, rtol=1e-3, atol=1e-4 * float(np.abs(want).max()))

    # the overlay adds U·Vᵀ to the down weights; REMOVE PATCH reverts exactly
    from lql.edit.overlay import ffn_layout
    lay = ffn_layout(s.vindex)
    key = lay.down_key(L)
    edited = lay.columns(np.asarray(s.vindex.weights[key], np.float32))
    base = lay.columns(np.asarray(s.vindex.base.weights[key], np.float32))
    assert np.allclose(edited - base, U @ V.T, atol=1e-5)
    p_edit = predict(s.vindex, "The capital of France is").probs.copy()
    s.query('SAVE PATCH "m.vlp"')
    s.query('REMOVE PATCH "m.vlp"')
    p1 = predict(s.vindex, "The capital of France is").probs
    assert np.array_equal(p0, p1)
    s.query('APPLY PATCH "m.vlp"')                     # the .vlp round trip keeps the update
    assert np.array_equal(predict(s.vindex, "The capital of France is").probs, p_edit)
    del base_down


def test_memit_spread_reads_each_layer_after_the_lower_ones(tmp_path):
    """memit_spread: one ``memit`` op per layer of the band, each with an equal share of the
    push, the upper layer's keys read with the lower layer's update in place (MEMIT's
    order): its op equals memit_op computed on a view holding only the lower op, and
    differs from one computed on the unedited view; REMOVE of the patch reverts exactly."""
    from vindex_fixtures import tiny_vindex

    from lql.edit.memit import MemitFact, memit_op, memit_spread, spread_layers
    from lql.edit.overlay import Overlay, OverlayVindex
    from lql.edit.patch import memit_factors
    from lql.runtime import predict
    from lql.vindex import open_vindex
    assert spread_layers(1, 3) == [0, 1] and spread_layers(5, 2) == [4, 5]
    base = open_vindex(tiny_vindex("llama", "all", "f32"))
    facts = [MemitFact("Atlantis", "capital", "Poseidon")]
    ov = Overlay(base)
    view = OverlayVindex(base, ov)
    p0 = predict(view, "The capital of Atlantis is").probs.copy()
    ops, checks = memit_spread(ov, view, facts, layers=[0, 1], alpha=0.2)
    assert [o.get("layer") for o in ops] == [0, 1] and all(o.get("spread") == [0, 1] for o in ops)
    assert checks and all(float(o.get("alpha")) == pytest.approx(0.1) for o in ops)
    patch = ov.recording

    # the upper op, recomputed on a view that holds the lower op only
    ov2 = Overlay(base)
    view2 = OverlayVindex(base, ov2)
    ov2.record(ops[0].copy())
    again, _ = memit_op(view2, facts, layer=1, alpha=0.1)
    U1, V1 = memit_factors(ops[1])
    U2, V2 = memit_factors(again)
    assert np.allclose(U1 @ V1.T, U2 @ V2.T, rtol=1e-4, atol=1e-6)
    fresh, _ = memit_op(OverlayVindex(base, Overlay(base)), facts, layer=1, alpha=0.1)
    U3, V3 = memit_factors(fresh)
    assert not np.allclose(U1 @ V1.T, U3 @ V3.T, rtol=1e-4, atol=1e-6)

    assert not np.array_equal(predict(view, "The capital of Atlantis is").probs, p0)
    ov.remove(patch)
    assert np.array_equal(predict(view, "The capital of Atlantis is").probs, p0)
