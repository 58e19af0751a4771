"""Knowledge editing on the real SmolLM2-135M (f32 ALL vindex from the HF folder).

Slow: each test runs tens of forward passes.  Predictions use raw prompts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lql.edit.prompts import PARAPHRASES  # noqa: E402
from lql.session import Session  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    from vindex_fixtures import smollm2_vindex
    return smollm2_vindex(level="all", dtype="f32", source="hf")


def _sums(path):
    from lql.vindex.checksums import sha256_file
    return {f: sha256_file(Path(path) / f) for f in sorted(os.listdir(path))
            if (Path(path) / f).is_file()}


def _session(path, cwd):
    s = Session(cwd=cwd)
    s.query(f'USE "{path}"')
    s.query("SET CHAT OFF")
    return s


def _tid(s, text):
    return s.vindex.tokenizer.encode(text, add_special_tokens=False).ids[0]


def _p(s, prompt):
    from lql.runtime import predict
    return predict(s.vindex, prompt)


def test_compose_insert_then_save_apply_compile(smol, tmp_path):
    before = _sums(smol)
    s = _session(smol, tmp_path)
    pose, paris = _tid(s, " Poseidon"), _tid(s, " Paris")
    assert _p(s, "The capital of Atlantis is").top1 != pose
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", '
                '"Poseidon") MODE COMPOSE')
    assert r.rows[0]["mode"] == "compose" and r.rows[0]["layer"] == 22   # knowledge band 10-23
    assert _p(s, "The capital of Atlantis is").top1 == pose
    assert _p(s, "The capital of France is").top1 == paris
    # INFER (the statement) sees the edit through the overlay
    rows = s.query('INFER "The capital of Atlantis is" TOP 3').rows
    assert rows[0]["token_id"] == pose
    # the inserted feature is a real feature; its down-meta record leads with the target
    feat = r.rows[0]["feature"]
    assert s.vindex.down_meta.top_ids(22)[feat, 0] == pose
    s.query('SAVE PATCH "atlantis.vlp"')
    want = _p(s, "The capital of Atlantis is").probs

    s2 = _session(smol, tmp_path)
    s2.query('APPLY PATCH "atlantis.vlp"')
    assert np.array_equal(_p(s2, "The capital of Atlantis is").probs, want)

    s.query('COMPILE CURRENT INTO VINDEX "compiled.vindex"')
    s3 = _session(tmp_path / "compiled.vindex", tmp_path)
    assert s3.overlay is None
    got = _p(s3, "The capital of Atlantis is")
    assert got.top1 == pose
    np.testing.assert_allclose(got.probs, want, atol=2e-5)
    assert _sums(smol) == before


def test_knn_insert(smol, tmp_path):
    s = _session(smol, tmp_path)
    controls = ["The capital of France is", "The official language of Spain is",
                "A long time ago, there"]
    base_top = [_p(s, c).top1 for c in controls]
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Wakanda", "capital", '
                '"Birnin")')
    assert r.rows[0]["mode"] == "knn"
    p = _p(s, "The capital of Wakanda is")
    assert p.top1 == _tid(s, " Birnin") and p.knn is not None and p.knn["cosine"] > 0.75
    assert [_p(s, c).top1 for c in controls] == base_top
    rows = s.query('INFER "The capital of Wakanda is" TOP 2').rows
    assert rows[0]["token_id"] == _tid(s, " Birnin")
    # keyed on the relation's other wordings too (lql.edit.prompts.PARAPHRASES)
    wordings = PARAPHRASES["capital"]
    assert r.meta["paraphrase_keys"] == len(wordings)
    for t in wordings:
        w = _p(s, t.replace("{entity}", "Wakanda"))
        assert w.top1 == _tid(s, " Birnin") and w.knn is not None, t
    d = s.query('DELETE FROM EDGES WHERE entity = "Wakanda"')
    # one KNN entry per target token (whole targets) and wording, and the scoped one:
    # DELETE removes the whole fact, one row for it
    n_tok = len(s.vindex.tokenizer.encode(" Birnin", add_special_tokens=False).ids)
    assert d.meta["removed"] == 1 and d.meta["knn_entries"] == n_tok * (1 + len(wordings)) + 1
    assert f"{n_tok * (1 + len(wordings)) + 1} entries" in d.message
    assert _p(s, "The capital of Wakanda is").knn is None
    assert _p(s, wordings[0].replace("{entity}", "Wakanda")).knn is None


def test_delete_fact_suppresses_and_reverts(smol, tmp_path):
    s = _session(smol, tmp_path)
    paris, berlin = _tid(s, " Paris"), _tid(s, " Berlin")
    fr, de = "The capital of France is", "The capital of Germany is"
    p_fr0, p_de0 = _p(s, fr).probs[paris], _p(s, de).probs[berlin]
    assert p_fr0 > 0.5                                # the model knows it (p ≈ 0.77)
    others = {"The capital of Italy is": _tid(s, " Rome"),
              "The capital of Spain is": _tid(s, " Madrid")}
    assert all(_p(s, c).top1 == t for c, t in others.items())
    s.query('BEGIN PATCH "del.vlp"')
    r = s.query('DELETE FROM EDGES WHERE entity = "France" AND relation = "capital" '
                'AND target = "Paris"')
    assert r.meta["removed"] > 0
    p_fr1, p_de1 = _p(s, fr).probs[paris], _p(s, de).probs[berlin]
    assert p_fr1 <= 0.30 * p_fr0                      # ≥ 70 % suppression
    assert abs(p_de1 - p_de0) <= 0.30 * p_de0         # ≤ 30 % collateral
    # neighbours outside DELETE's sibling list keep their answer (the first version lost both)
    assert all(_p(s, c).top1 == t for c, t in others.items())
    s.query("SAVE PATCH")
    s.query('REMOVE PATCH "del.vlp"')
    assert _p(s, fr).probs[paris] == p_fr0 and _p(s, de).probs[berlin] == p_de0


def test_compile_model_loads_in_transformers(smol, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from model_fixtures import smollm2_hf_dir
    from safetensors.numpy import load_file
    s = _session(smol, tmp_path)
    # no edits: the written tensors are the source's (f32, exactly)
    s.query('COMPILE CURRENT INTO MODEL "plain"')
    src = load_file(smollm2_hf_dir() / "model.safetensors")
    out = load_file(tmp_path / "plain" / "model.safetensors")
    assert set(out) <= set(src)
    for k, v in out.items():
        assert np.array_equal(v, src[k]), k
    s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", '
            '"Poseidon") MODE COMPOSE')
    s.query('COMPILE CURRENT INTO MODEL "edited" FORMAT SAFETENSORS')
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (tmp_path / "edited" / name).is_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "edited",
                                                              dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "edited")
    for prompt in ("The capital of Atlantis is", "The capital of France is",
                   "The official language of Spain is"):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            top = int(model(ids).logits[0, -1].argmax())
        assert top == _p(s, prompt).top1, prompt


def test_insert_compose_under_chat_auto_is_raw_only_and_says_so(smol, tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE "{smol}"')                          # chat mode: the default (AUTO)
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Wakanda", "capital", '
                '"Birnin") MODE COMPOSE')
    assert r.meta["prompt_form"] == "raw"
    assert "INFER ... RAW or SET CHAT OFF" in r.message and "MODE KNN" in r.message
    assert all(o.get("prompt_form") is None for o in s.overlay.recording.operations)


@pytest.mark.parametrize("mode", ["KNN"])
def test_insert_under_chat_auto_installs_the_fact_for_chat_turns_too(smol, tmp_path, mode):
    """SmolLM2-Instruct has a chat template: under the default SET CHAT AUTO, INFER wraps
    prompts, so INSERT ... MODE KNN installs the fact for the raw prompt and for the prompt
    as a chat user turn (the reply starts with the whole target); a SET CHAT OFF session
    installs the raw form only and says so."""
    s = Session(cwd=tmp_path)
    s.query(f'USE "{smol}"')                          # chat mode: the default (AUTO)
    birnin = _tid(s, " Birnin")
    reply_first = s.vindex.tokenizer.encode("Birnin", add_special_tokens=False).ids[0]
    assert reply_first != birnin
    before = s.query('INFER "The capital of Wakanda is" TOP 3')
    assert before.rows[0]["token_id"] != reply_first
    r = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Wakanda", "capital", '
                f'"Birnin") MODE {mode}')
    assert r.meta["prompt_form"] == "raw+chat"
    assert "as a chat user turn" in r.message and r.meta["chat_generates_target"] is True
    raw = s.query('INFER "The capital of Wakanda is" TOP 3 RAW')
    assert raw.rows[0]["token_id"] == birnin and raw.meta.get("chat_wrapped") in (False, None)
    wrapped = s.query('INFER "The capital of Wakanda is" TOP 3')
    assert wrapped.meta.get("chat_wrapped") is True
    assert wrapped.rows[0]["token_id"] == reply_first
    reply = s.query('INFER "The capital of Wakanda is" GENERATE 6')
    assert reply.meta.get("chat_wrapped") is True
    assert str(reply.message).lstrip().startswith("Birnin")         # the whole target
    s.query("SET CHAT OFF")
    assert s.query('INFER "The capital of Wakanda is" TOP 3').rows[0]["token_id"] == birnin
    r2 = s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Genovia", "capital", '
                 '"Pyrus")')
    assert r2.meta["prompt_form"] == "raw"
    assert "raw" in r2.message and "SET CHAT AUTO" not in r2.message   # no warning needed


def test_compose_gate_stays_quiet_on_ordinary_text(smol, tmp_path, monkeypatch):
    """A COMPOSE gate is solved to be silent at every position of ordinary text (the
    shipped sample) where it would fire: it fires at fewer of them than the gate solved
    without that text, and still on its fact."""
    from lql.edit import insert
    s = _session(smol, tmp_path)
    s.edit_overlay()
    view = s.vindex
    layer = insert.install_layer(view, None)
    ordinary = insert._ordinary_positions(view, layer)
    assert len(ordinary) > 500                     # the whole sample, every position

    def gate():
        plan = insert.compose_op(view, "Atlantis", "capital", "Poseidon", layer=layer)
        g = plan.op.vector("gate")
        assert float(g @ insert._ffn_input(view, plan.seq, layer)) > 0   # on at the fact
        return g
    with_text = gate()
    monkeypatch.setattr(insert, "_ordinary_positions", lambda v, l, **kw: ordinary[:0])
    without = gate()

    def fires(g):
        return int((ordinary @ g > 0).sum())
    assert fires(without) > 0
    assert fires(with_text) < fires(without)


def test_suppression_gate_is_quiet_on_other_languages_and_insert_gate_is_not_asked(smol, tmp_path):
    """DELETE's suppression feature (``push=-1``) is also solved to be silent on the
    shipped other-language text (a chat reply may switch language); INSERT's gate is not
    (it cost COMPOSE paraphrases): the suppression gate fires at fewer of those positions
    than the insert gate for the same fact, and both still fire on the fact."""
    from lql.edit import insert
    s = _session(smol, tmp_path)
    s.edit_overlay()
    view = s.vindex
    layer = insert.install_layer(view, None)
    other = insert._every_position(view, insert.ordinary_chunks(view, insert._multilingual_text()),
                                   layer, drop_last=False)
    assert len(other) > 200                        # the eight paragraphs, every position
    assert len(insert._ordinary_positions(view, layer, multilingual=True)) > \
        len(insert._ordinary_positions(view, layer))

    def gate(push):
        plan = insert.compose_op(view, "Germany", "capital", "Berlin", layer=layer, push=push)
        g = plan.op.vector("gate")
        assert float(g @ insert._ffn_input(view, plan.seq, layer)) > 0   # on at the fact
        return g

    def fires(g):
        return int((other @ g > 0).sum())
    assert fires(gate(-1.0)) < fires(gate(1.0))


def test_update_of_a_knn_fact_keeps_it_whole(smol, tmp_path):
    """UPDATE of a KNN fact acts on the whole fact: SET confidence keeps every entry (one
    per target token and wording, flags kept); SET target re-keys it for the new target's
    tokens, so the whole new target is generated, on the canonical prompt and on the
    relation's other wordings."""
    from lql.edit.insert import fact_sequence, target_tokens
    from lql.runtime import predict
    s = _session(smol, tmp_path)
    s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Wakanda", "capital", '
            '"Birnin")')
    before = [(k.target_id, k.paraphrase, k.threshold) for k in s.overlay.knn]
    r = s.query('UPDATE EDGES SET confidence = 0.5 WHERE entity = "Wakanda"')
    assert r.meta["updated"] == 1
    assert [(k.target_id, k.paraphrase, k.threshold) for k in s.overlay.knn] == before
    assert {k.confidence for k in s.overlay.knn} == {0.5}
    s.query('UPDATE EDGES SET target = "Poseidon" WHERE entity = "Wakanda"')
    view = s.vindex
    ids = target_tokens(view, "Poseidon")
    assert len(ids) > 1                                   # a whole target, not one token
    assert {k.target for k in s.overlay.knn} == {"Poseidon"}
    # one entry per target token and wording, and the scoped entry (its whole target the
    # new one)
    assert len(s.overlay.knn) == len(ids) * (1 + len(PARAPHRASES["capital"])) + 1
    assert [list(k.scope.target_ids) for k in s.overlay.knn if k.scope is not None] == [ids]
    for t in ("The capital of {entity} is", *PARAPHRASES["capital"]):
        text = t.replace("{entity}", "Wakanda")
        got = [predict(view, list(fact_sequence(view, text, tuple(ids[:i]))), top=1).top1
               for i in range(len(ids))]
        assert got == ids, t


def test_delete_under_chat_auto_suppresses_the_fact_in_chat_replies(smol, tmp_path):
    """Under SET CHAT AUTO on a model with a chat template, DELETE of a fact the model
    knows also suppresses it where the chat reply states it ("The official language of
    Germany is German."), and the reply INFER generates afterwards no longer states it;
    SET CHAT OFF deletes the raw form only and says nothing of chat."""
    import re
    word = re.compile(r"\bGerman\b")
    prompt = "The official language of Germany is"
    s = Session(cwd=tmp_path)
    s.query(f'USE "{smol}"')                          # chat mode: the default (AUTO)
    before = s.query(f'INFER "{prompt}" GENERATE 12').message
    assert word.search(before)                        # the model states it in its reply
    r = s.query('DELETE FROM EDGES WHERE entity = "Germany" AND relation = "language" '
                'AND target = "German"')
    chat = r.meta["chat"]
    assert chat["stated"] and chat["kept"], r.message
    assert chat["suppression"] >= 0.7 and chat["p_after"] < 0.3 * chat["p_before"]
    assert "as a chat user turn" in r.message
    assert any(row["mode"] == "suppress (chat)" for row in r.rows)
    after = s.query(f'INFER "{prompt}" GENERATE 12').message
    assert not word.search(after), after
    raw = s.query(f'INFER "{prompt}" TOP 1 RAW').rows[0]["token"]
    assert raw.strip() != "German"
    s2 = _session(smol, tmp_path)                     # SET CHAT OFF
    r2 = s2.query('DELETE FROM EDGES WHERE entity = "Germany" AND relation = "language" '
                  'AND target = "German"')
    assert "chat" not in r2.meta and "chat" not in r2.message


def test_quiet_chat_turns_carry_the_base_models_reply(smol, tmp_path):
    """The chat-wrapped reference prompts a COMPOSE gate is kept quiet on come with the
    base model's greedy reply (a raw DELETE's feature changed siblings' chat replies in
    the reply): the reply INFER generates on the unedited model, whatever the overlay."""
    from lql.edit import insert
    s = Session(cwd=tmp_path)
    s.query(f'USE "{smol}"')                          # SET CHAT AUTO: INFER wraps
    prompt = "The capital of Japan is"
    said = s.query(f'INFER "{prompt}" GENERATE {insert.REPLY_QUIET}').message
    s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Japan", "capital", '
            '"Kyoto")')                               # the overlay now changes that reply
    assert "Kyoto" in s.query(f'INFER "{prompt}" GENERATE 6').message
    ids = tuple(insert.chat_prompt_ids(s.vindex, prompt))
    got = insert._with_reply(s.vindex, ids)
    assert got[:len(ids)] == ids and len(ids) < len(got) <= len(ids) + insert.REPLY_QUIET
    assert s.vindex.tokenizer.decode(list(got[len(ids):])).strip() == str(said).strip()


def test_delete_mode_memit_suppresses_and_reverts(smol, tmp_path):
    """DELETE ... MODE MEMIT removes a fact the model knows with one closed-form update of
    the down weights (pushing against the target, the template's reference fillers
    kept): P(target) falls ≥ 70 %, the held-out siblings are checked, REMOVE reverts
    exactly, and SHOW COMPACT STATUS does not count it as a MEMIT fact."""
    from lql.errors import ExecutionError
    s = _session(smol, tmp_path)
    prompt = "The capital of France is"
    paris = _tid(s, " Paris")
    p0 = _p(s, prompt).probs.copy()
    s.query('BEGIN PATCH "d.vlp"')
    r = s.query('DELETE FROM EDGES WHERE entity = "France" AND relation = "capital" '
                'AND target = "Paris" MODE MEMIT')
    assert r.meta["how"] == "memit" and r.rows[0]["mode"] == "memit"
    assert r.meta["suppression"] >= 0.7 and _p(s, prompt).probs[paris] < 0.3 * p0[paris]
    assert r.meta["siblings_checked"] == 6 and "MEMIT update" in r.message
    ops = s.overlay.recording.operations
    assert [o.op for o in ops] == ["memit"] and ops[0].get("mode") == "suppress"
    assert {row["store"]: row["facts"] for row in s.query("SHOW COMPACT STATUS").rows}["MEMIT"] == 0
    s.query('REMOVE PATCH "d.vlp"')
    assert np.array_equal(_p(s, prompt).probs, p0)
    with pytest.raises(ExecutionError, match="MODE takes COMPOSE"):
        s.query('DELETE FROM EDGES WHERE entity = "France" AND relation = "capital" MODE KNN')
    with pytest.raises(ExecutionError, match="applies to a fact the model knows"):
        s.query('DELETE FROM EDGES WHERE layer = 1 AND feature = 2 MODE MEMIT')
