"""Issue 14 edits: whole targets under GENERATE, honest statements, COMPILE dtype, Gemma post-norm.

* INSERT (KNN and COMPOSE) on SmolLM2 makes GENERATE write every token of a multi-token target;
* stop-word targets are refused; INSERT reports P(whole target) and sibling collateral;
* COMPILE INTO MODEL of a bf16-origin tiny Gemma 3 writes bfloat16: transformers loads it with
  its defaults (bf16), the logits are finite, and (cast to float32) equal the session's;
* the post-norm down vector (Gemma): the feature's normed output points where
  ``post_norm_down`` says, checked with the block's own norm.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lql.errors import ExecutionError  # noqa: E402
from lql.session import Session  # noqa: E402


def _session(path, cwd):
    s = Session(cwd=cwd)
    s.query(f'USE "{path}"')
    s.query("SET CHAT OFF")
    return s


def _generated(s, prompt, n):
    r = s.query(f'INFER "{prompt}" GENERATE {n}')
    return r.meta.get("text") or "".join(str(row.get("token", "")) for row in r.rows)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["KNN", "COMPOSE"])
def test_whole_target_generation_after_insert_smollm2(mode, tmp_path):
    from vindex_fixtures import smollm2_vindex
    s = _session(smollm2_vindex(level="inference", dtype="f32", source="hf"), tmp_path)
    ids = s.vindex.tokenizer.encode(" Birnin Zana", add_special_tokens=False).ids
    assert len(ids) >= 3                       # a real multi-token target
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Wakanda", "capital", '
                f'"Birnin Zana") MODE {mode}')
    assert r.meta["tokens"] == len(ids)
    assert r.meta["generates_target"] and r.meta["reached"], r.message
    assert 0 < r.meta["p_target"] <= 1
    assert "P(whole target" in r.message
    from lql.runtime import model_for, prompt_ids
    from lql.runtime.forward import KnnPicker, greedy, knn_layers, knn_record
    view = s.vindex
    layers = knn_layers(view)
    prompt = prompt_ids(view, "The capital of Wakanda is")
    got = list(greedy(model_for(view), prompt, len(ids), stop_ids=(),
                      pick=KnnPicker(view, layers, prompt).pick if layers else None,
                      record=knn_record(layers)))
    assert got == ids, view.tokenizer.decode(got)
    # and the edit did not leak into a sibling
    assert not r.meta["collateral"], r.meta["collateral"]


def test_knn_fact_answers_a_wording_it_was_not_keyed_on_smollm2(tmp_path):
    """The scoped entry: a KNN fact answers the relation asked in a wording INSERT never
    keyed it on (one of benchmarks/data/counterfact_edits.json's held-out paraphrases),
    whole target under GENERATE; it stays silent on another relation asked about the same
    entity, on an off-topic sentence about it, and on a sibling entity."""
    from vindex_fixtures import smollm2_vindex

    from lql.edit.prompts import PARAPHRASES, TEMPLATES
    from lql.runtime import predict
    s = _session(smollm2_vindex(level="inference", dtype="f32", source="hf"), tmp_path)
    held_out = "The capital city of France is"
    assert held_out.replace("France", "{entity}") not in (TEMPLATES["capital"], *PARAPHRASES["capital"])
    others = ["The official language of France is", "France is famous for its",
              "The capital of Poland is"]
    before = [predict(s.vindex, p).top1 for p in others]
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("France", "capital", '
                '"Madrid") MODE KNN')
    assert r.meta["scoped"] and "scoped key" in r.message
    ids = s.vindex.tokenizer.encode(" Madrid", add_special_tokens=False).ids
    from lql.runtime import greedy_ids, prompt_ids
    got = greedy_ids(s.vindex, prompt_ids(s.vindex, held_out), len(ids), to_end_of_turn=False)
    assert got == ids, s.vindex.tokenizer.decode(got)
    p = predict(s.vindex, held_out)
    assert p.knn is not None and p.knn["target"] == "Madrid"
    assert [predict(s.vindex, q).top1 for q in others] == before


def test_chat_plain_knn_key_is_silent_where_its_fact_is_not_asked():
    """A plain KNN key of the chat form (scoped to its entity by name only) stays silent
    where the fact's scoped entry finds another relation asked about the entity: on a
    model whose reply position barely depends on the question (a tiny random Llama here;
    Gemma 3 270M's chat replies, where Greece's language fact answered "The capital of
    Greece is"), its cosine there is above its threshold.  The fact's own question still
    fires it; raw-form keys are left as they were (docs/EDITING.md).  The tiny Llama's
    layer 1 has a rival prompt above the plain key's threshold and nearer the rival keys
    than the fact's by more than the margin (found by scanning the tiny models' layers)."""
    from vindex_fixtures import tiny_vindex

    from lql.edit import insert as ins
    from lql.edit.overlay import SIBLING_MARGIN, Overlay, OverlayVindex
    from lql.edit.prompts import TEMPLATES
    from lql.model import Record
    from lql.runtime import model_for, predict
    from lql.vindex import open_vindex
    base = open_vindex(tiny_vindex("llama", "inference", "f32"))
    assert base.chat_template
    ov = Overlay(base)
    view = OverlayVindex(base, ov)
    ids = ins.reply_tokens(view, "Madrid")
    for plan in ins.knn_plans(view, "France", "capital", "Madrid", ids, layer=1, chat=True):
        ov.record(plan.op)
    first = next(e for e in ov.knn if e.scope is None and not e.prefix_ids)
    assert first.prompt_form == "chat" and first.sibling is not None
    assert first.sibling.scope is not None and first.sibling.prompt_form == "chat"
    got = predict(view, ins.chat_prompt_ids(view, "The capital of France is")).knn
    assert got is not None and got["target"] == "Madrid"
    rivals = ins.rival_templates("capital", [TEMPLATES["capital"]], wordings=False)
    assert "The official language of {entity} is" in rivals and TEMPLATES["capital"] not in rivals
    silenced = 0
    for t in rivals:
        chat = ins.chat_prompt_ids(view, t.replace("{entity}", "France"))
        out = model_for(base).forward(chat, record=Record(residuals="last", layers=frozenset([1])))
        r = np.asarray(out.residuals[1], np.float32).reshape(-1, first.key.shape[0])[-1]
        if first.cosine(r) > first.threshold and not first.sibling.asks_own(r, SIBLING_MARGIN):
            silenced += 1            # above its threshold, but a rival is nearer: silent
            got = predict(view, chat).knn
            assert got is None or got["entity"] != "France", (t, got)
    assert silenced, "no rival prompt reached the plain key's threshold: the test checks nothing"
    # the link survives a round trip through the op (prefix ids kept)
    from lql.edit.overlay import knn_entry_op
    later = [e for e in ov.knn if e.prefix_ids]
    assert all(knn_entry_op(e).get("prefix_ids") == list(e.prefix_ids) for e in later)


def test_stop_word_target_refused(tmp_path):
    from vindex_fixtures import tiny_vindex
    s = _session(tiny_vindex("llama", "all", "f32"), tmp_path)
    for target in ("the", " a", "..."):
        with pytest.raises(ExecutionError, match="stop word"):
            s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Spain", "capital", '
                    f'"{target}")')


def test_model_dtype_rules():
    from types import SimpleNamespace

    from lql.edit.compile import model_dtype
    from lql.vindex.weights import f32_to_bf16 as to_bf16_bits

    def v(family, dtype, src=None):
        return SimpleNamespace(family=family, dtype=dtype, model_config={},
                               source={} if src is None else {"source_dtype": src})
    assert model_dtype(v("gemma3", "f16")) == "bfloat16"      # f16 overflows in Gemma
    assert model_dtype(v("gemma2", "f32", "bfloat16")) == "bfloat16"
    assert model_dtype(v("gemma3", "f32")) == "bfloat16"
    assert model_dtype(v("gemma3", "f32", "float32")) == "float32"
    assert model_dtype(v("gemma3", "f16", "float16")) == "bfloat16"
    assert model_dtype(v("llama", "f16")) == "float32"          # fp16 NaNs SmolLM2 too
    assert model_dtype(v("llama", "f16", "float16")) == "float16"
    assert model_dtype(v("llama", "f32", "bfloat16")) == "bfloat16"
    # round to nearest even, independently: 1 + 2^-8 is halfway between bf16 1.0 and 1+2^-7
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, np.inf], np.float32)
    bits = to_bf16_bits(x)
    back = (bits.astype(np.uint32) << 16).view(np.float32)
    assert back.tolist() == [1.0, 1.0, 1 + 2 ** -6, -2.5, np.inf]


@pytest.fixture(scope="module")
def bf16_gemma(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from model_fixtures import tiny_model_dir
    from transformers import AutoModelForCausalLM

    from lql.vindex import extract
    src = tiny_model_dir("gemma3_text")
    root = tmp_path_factory.mktemp("bf16gemma")
    hf = root / "hf"
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    model.save_pretrained(hf)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (src / name).exists():
            (hf / name).write_bytes((src / name).read_bytes())
    cfg = json.loads((hf / "config.json").read_text())
    assert (cfg.get("dtype") or cfg.get("torch_dtype")) == "bfloat16"
    out = root / "v"
    extract(hf, out, level="all", dtype="f32", progress=False)
    return out


def test_compiled_bf16_gemma_loads_with_transformers_defaults(bf16_gemma, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from lql.runtime import run
    s = _session(bf16_gemma, tmp_path)
    s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", '
            '"Poseidon") MODE COMPOSE')
    r = s.query('COMPILE CURRENT INTO MODEL "out"')
    assert r.meta.get("dtype", "bfloat16") == "bfloat16"
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")   # transformers' defaults
    assert next(model.parameters()).dtype == torch.bfloat16
    ids = s.vindex.tokenizer.encode("The capital of Atlantis is").ids
    with torch.no_grad():
        logits_bf16 = model(torch.tensor([ids])).logits[0, -1].float().numpy()
        assert np.isfinite(logits_bf16).all()
        model = model.float()
        model.config._attn_implementation = "eager"
        logits = model(torch.tensor([ids])).logits[0, -1].numpy()
    # the session's logits (its f32 weights are bf16 values; the compiled edit is rounded
    # to bf16): the same argmax and close logits
    ours = run(s.vindex, ids).logits
    assert int(np.argmax(logits)) == int(np.argmax(ours))
    assert np.max(np.abs(logits - ours)) < 0.05 * max(1.0, float(np.max(np.abs(ours))))


def test_post_norm_down_reaches_the_norms_best_direction(bf16_gemma, tmp_path):
    """On a post-norm family the feature's written vector is ∝ s⊙direction, so the normed
    FFN output moves towards s²⊙direction (the norm's best direction for the target)."""
    from lql.edit.insert import post_norm_down, raw_ffn_output, unembed_direction
    from lql.runtime import model_for
    s = _session(bf16_gemma, tmp_path)
    view = s.vindex
    tid = view.tokenizer.encode(" Poseidon", add_special_tokens=False).ids[0]
    d = unembed_direction(view, tid)
    layer = 2
    norm = model_for(view).blocks[layer].post_ffn_norm
    assert norm is not None
    sc = norm(np.ones((1, d.shape[0]), np.float32))[0].astype(np.float64)
    down = post_norm_down(view, "The capital of Atlantis is", layer, d, 0.1, 1.0)
    cos = float(down @ (sc * d)) / (np.linalg.norm(down) * np.linalg.norm(sc * d))
    assert cos > 0.999
    o = raw_ffn_output(view, "The capital of Atlantis is", layer)
    before = norm(o[None].astype(np.float32))[0] @ d
    after = norm((o + 8 * down)[None].astype(np.float32))[0] @ d
    best = np.sqrt(d.shape[0]) * np.linalg.norm(sc * d)       # the norm's cap along d
    assert after > before and after <= best * (1 + 1e-4)
