"""Knowledge editing on tiny random models of other families (gemma2, qwen3, gpt2):
INSERT MODE COMPOSE acts in the forward pass, COMPILE INTO MODEL loads in transformers
(float32, eager) with the session's numbers, and with no edits writes the source tensors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import tiny_model_dir  # noqa: E402
from vindex_fixtures import tiny_vindex  # noqa: E402

from lql.session import Session  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(2)

PROMPT = "The capital of Atlantis is"
OTHER = "Once upon a time there"
INSERT = ('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", '
          '"Poseidon") MODE COMPOSE')

# where each family keeps feature f of layer L in the Hugging Face checkpoint (independent of
# lql's layout code): (gate, up, down) as functions of the loaded tensors
HF_FFN = {
    "gpt2": lambda t, L, f: (t[f"transformer.h.{L}.mlp.c_fc.weight"][:, f], None,
                             t[f"transformer.h.{L}.mlp.c_proj.weight"][f, :]),
    "qwen3": lambda t, L, f: (t[f"model.layers.{L}.mlp.gate_proj.weight"][f],
                              t[f"model.layers.{L}.mlp.up_proj.weight"][f],
                              t[f"model.layers.{L}.mlp.down_proj.weight"][:, f]),
}
HF_FFN["gemma2"] = HF_FFN["qwen3"]


def _session(fam, cwd):
    s = Session(cwd=cwd)
    s.query(f'USE "{tiny_vindex(fam, "all", "f32")}"')
    s.query("SET CHAT OFF")
    return s


def _source_tensors(fam):
    from safetensors.numpy import load_file
    out = {}
    for f in sorted(tiny_model_dir(fam).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _hf_probs(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].double().softmax(-1).numpy()


@pytest.mark.parametrize("fam", ["gemma2", "qwen3", "gpt2"])
def test_compile_model_without_edits_writes_the_source(fam, tmp_path):
    from safetensors.numpy import load_file
    s = _session(fam, tmp_path)
    s.query('COMPILE CURRENT INTO MODEL "plain"')
    src = _source_tensors(fam)
    out = load_file(tmp_path / "plain" / "model.safetensors")
    # tied lm_head may be left out; nothing else may be missing or extra
    assert set(out) <= set(src) and set(src) - set(out) <= {"lm_head.weight"}
    for k, v in out.items():
        assert v.dtype == src[k].dtype and np.array_equal(v, src[k]), k


@pytest.mark.parametrize("fam", ["gemma2", "qwen3", "gpt2"])
def test_compose_insert_and_compile_model(fam, tmp_path):
    from safetensors.numpy import load_file

    from lql.model import Record
    from lql.model.ffn import ACTIVATIONS
    from lql.runtime import ffn_inputs, predict, run
    s = _session(fam, tmp_path)
    tok = s.vindex.tokenizer
    pose = tok.encode(" Poseidon", add_special_tokens=False).ids[0]
    logit0 = float(run(s.vindex, PROMPT).logits[pose])
    r = s.query(INSERT)
    row = r.rows[0]
    L, f = row["layer"], row["feature"]
    # INSERT installs one feature per target token; the row names the first token's
    op = next(o for o in s.overlay.recording.operations if o.get("feature") == f)
    gate, down = op.vector("gate"), op.vector("down")
    up = op.vector("up") if "up_vector_b64" in op.data else None
    assert (up is None) == (fam == "gpt2")               # GPT-2's FFN has no up projection

    # the forward pass uses the feature: its activation on the prompt is what the op's
    # vectors give on the FFN input (numpy, from the op), and it is switched on
    u = ffn_inputs(s.vindex, PROMPT, [L])[L]
    out = run(s.vindex, PROMPT, record=Record(ffn_activations=True))
    act_fn = ACTIVATIONS[str(s.vindex.model_config["activation"])]
    if fam == "gpt2":
        bias = float(np.asarray(s.vindex.weights[f"h.{L}.mlp.c_fc.bias"])[f])
        want = float(act_fn(np.array([gate @ u + bias], np.float32))[0])
    else:
        want = float(act_fn(np.array([gate @ u], np.float32))[0]) * float(up @ u)
    got = float(np.asarray(out.ffn_activations[L])[f])
    assert want > 0 and got == pytest.approx(want, rel=1e-3, abs=1e-4)
    logit1 = float(out.logits[pose])
    assert logit1 > logit0 + 1.0                         # the target's logit rises
    if fam in ("qwen3", "gpt2"):
        assert predict(s.vindex, PROMPT).top1 == pose    # these tiny models can be forced
    elif predict(s.vindex, PROMPT).top1 != pose:
        assert "GOAL NOT REACHED" in r.message           # gemma2: post-FFN norm caps the push

    s.query('COMPILE CURRENT INTO MODEL "edited"')
    t = load_file(tmp_path / "edited" / "model.safetensors")
    g_hf, up_hf, down_hf = HF_FFN[fam](t, L, f)
    np.testing.assert_array_equal(g_hf, gate)
    np.testing.assert_array_equal(down_hf, down)
    if up is not None:
        np.testing.assert_array_equal(up_hf, up)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "edited", dtype=torch.float32, attn_implementation="eager").eval()
    for prompt in (PROMPT, OTHER):
        ids = tok.encode(prompt).ids
        ref = _hf_probs(model, ids)
        mine = s.query(f'INFER "{prompt}" TOP 10 RAW')
        want_top = np.argsort(-ref, kind="stable")[:10].tolist()
        assert [x["token_id"] for x in mine.rows] == want_top, prompt
        for x in mine.rows:
            assert abs(x["probability"] - ref[x["token_id"]]) <= 1e-4


@pytest.mark.parametrize("fam", ["gemma2", "qwen3"])
def test_compose_gate_magnitude_comes_from_the_base_features_not_earlier_inserts(fam, tmp_path):
    """A new COMPOSE feature's gate reaches the base model's largest |gate·u| on its prompt,
    whatever features INSERT already put in the layer: measured against those, a batch of
    facts at one layer compounded until Gemma 3's FFN overflowed (issue 14)."""
    from lql.runtime import ffn_inputs
    s = _session(fam, tmp_path)
    row = s.query(INSERT).rows[0]
    L = row["layer"]
    first = next(o for o in s.overlay.recording.operations if o.get("feature") == row["feature"])
    first.set_vector("gate", first.vector("gate") * np.float32(1e4))   # an outsized insert
    s.overlay._changed()
    row2 = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Wakanda", "capital", '
                   f'"Birnin") AT LAYER {L} MODE COMPOSE').rows[0]
    op = next(o for o in s.overlay.recording.operations
              if o.get("feature") == row2["feature"] and o.get("entity") == "Wakanda")
    u = ffn_inputs(s.vindex, "The capital of Wakanda is", [L])[L]
    base_max = float(np.max(np.abs(np.asarray(s.vindex.base.gate(L), np.float32) @ u)))
    assert float(op.vector("gate") @ u) == pytest.approx(base_max, rel=1e-4)


def test_insert_quiets_an_earlier_feature_that_fires_on_the_new_prompt(tmp_path):
    """An earlier COMPOSE feature that fires on a new fact's prompt is made silent there
    (an update op), keeping its value on its own prompt: a new fact's gate is solved
    against the earlier facts' prompts, not the other way round (issue 14: SmolLM2's
    "capital of Germany" feature fired on "The official language of Germany is")."""
    from lql.edit.insert import NEGATIVE_MARGIN, _feature_sequence
    from lql.runtime import ffn_inputs
    s = _session("qwen3", tmp_path)
    row = s.query(INSERT).rows[0]
    L, f = row["layer"], row["feature"]
    e = s.overlay.features[(L, f)]
    u_a = ffn_inputs(s.vindex, list(_feature_sequence(s.vindex, e)), [L])[L]
    x_b = ffn_inputs(s.vindex, "The capital of Wakanda is", [L])[L]
    a = float(e.gate @ u_a)
    # make the Atlantis feature fire on the Wakanda prompt (keeping its own value)
    d = x_b - (x_b @ u_a) / (u_a @ u_a) * u_a
    op = next(o for o in s.overlay.recording.operations if o.get("feature") == f)
    op.set_vector("gate", e.gate + d * np.float32((2 * a - float(e.gate @ x_b)) / float(d @ x_b)))
    s.overlay._changed()
    assert float(s.overlay.features[(L, f)].gate @ x_b) > a
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Wakanda", "capital", '
                f'"Birnin") AT LAYER {L} MODE COMPOSE')
    assert r.meta["quieted"] >= 1 and "made silent on this prompt" in r.message
    g = s.overlay.features[(L, f)].gate
    assert float(g @ x_b) == pytest.approx(NEGATIVE_MARGIN * a, rel=1e-3)
    assert float(g @ u_a) == pytest.approx(a, rel=1e-3)
    assert any(o.op == "update" and o.get("feature") == f for o in s.overlay.recording.operations)
