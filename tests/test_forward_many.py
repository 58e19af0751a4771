"""Packed sequences (Model.forward_many): several prompts in one pass, each attending only to
itself with positions from 0, give each prompt's own logits (within float32 rounding: the
products have other shapes); models that cannot pack (KV sharing, default hooks) run one
pass each.  DESCRIBE VIA PROMPTS' reference baseline runs this way."""

from __future__ import annotations

import numpy as np
import pytest
from model_fixtures import gemma4_fixtures
from vindex_fixtures import tiny_vindex

from lql.errors import ExecutionError
from lql.model import Record, build_model
from lql.runtime import rank, rank_many
from lql.vindex import extract, open_vindex

SEQS = [[1, 17, 230, 451, 99], [7, 12], [300, 301, 302, 303, 304, 305, 306, 307, 308], [42]]


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text", "qwen3", "gpt2"])
def test_packed_sequences_equal_one_pass_each(family):
    v = open_vindex(tiny_vindex(family, "inference", "f32"))
    m = build_model(v.model_config, v.weights)
    packed = m.forward_many(SEQS).logits
    assert packed.shape == (len(SEQS), m.vocab_size)
    alone = np.stack([m.forward(s).logits for s in SEQS])
    np.testing.assert_allclose(packed, alone, rtol=1e-4, atol=1e-4 * float(np.abs(alone).max()))
    assert (packed.argmax(1) == alone.argmax(1)).all()
    # a sequence does not see its neighbours: changing one leaves the others' logits alone
    other = m.forward_many([SEQS[0], [5, 6, 7], *SEQS[2:]]).logits
    np.testing.assert_array_equal(np.delete(other, 1, 0).argmax(1), np.delete(packed, 1, 0).argmax(1))
    np.testing.assert_allclose(np.delete(other, 1, 0), np.delete(packed, 1, 0), rtol=1e-4,
                               atol=1e-4 * float(np.abs(alone).max()))
    got = rank_many(m, SEQS, 5)
    for s, pred in zip(SEQS, got):
        ref = rank(m, s, 5)
        assert [t for t, _, _ in pred.top] == [t for t, _, _ in ref.top]
        np.testing.assert_allclose([p for _, p, _ in pred.top], [p for _, p, _ in ref.top], atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_packed_states_equal_recorded_ones(family):
    """FFN inputs and residuals at each sequence's last token, at the asked layers (the pass
    stops after the last of them when no logits are wanted)."""
    v = open_vindex(tiny_vindex(family, "inference", "f32"))
    m = build_model(v.model_config, v.weights)
    got = m.forward_many(SEQS, layers=[0, 1], logits=False)
    assert got.logits is None and set(got.residuals) == set(got.ffn_inputs) == {0, 1}
    for j, s in enumerate(SEQS):
        want = m.forward(s, record=Record(residuals="last", ffn_inputs=True))
        for layer in (0, 1):
            scale = float(np.abs(want.residuals[layer]).max())
            np.testing.assert_allclose(got.residuals[layer][j], want.residuals[layer], rtol=1e-4, atol=1e-5 * scale)
            np.testing.assert_allclose(got.ffn_inputs[layer][j], want.ffn_inputs[layer], rtol=1e-4, atol=1e-4)
    with pytest.raises(ExecutionError, match="not within"):
        m.forward_many(SEQS, layers=[99])


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
@pytest.mark.parametrize("with_hooks", [False, True])
def test_every_position_equals_the_ffn_input_a_hook_sees(family, with_hooks):
    """``every_position``: each sequence's FFN input at every position (what an FFN hook
    sees in a pass of that sequence alone), packed or — with default hooks, which are kept
    — one pass each."""
    from lql.model import Hooks
    v = open_vindex(tiny_vindex(family, "inference", "f32"))
    m = build_model(v.model_config, v.weights)
    calls = []
    if with_hooks:
        def keep(layer, x, out):
            calls.append(layer)
            return out
        m.hooks = Hooks(ffn=keep)
    got = m.forward_many(SEQS, layers=[1], logits=False, every_position=True)
    assert got.ffn_inputs_all is not None and len(got.ffn_inputs_all[1]) == len(SEQS)
    assert not with_hooks or calls                    # the default hooks still ran
    seen: dict[str, np.ndarray] = {}

    def grab(layer, x, out):
        if layer == 1:
            seen["x"] = np.array(x)
        return out
    for j, s in enumerate(SEQS):
        m.forward(s, hooks=Hooks(ffn=grab))
        assert got.ffn_inputs_all[1][j].shape == (len(s), m.hidden_size)
        np.testing.assert_allclose(got.ffn_inputs_all[1][j], seen["x"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got.ffn_inputs_all[1][j][-1], got.ffn_inputs[1][j], rtol=1e-6)
    assert m.forward_many(SEQS, layers=[1], logits=False).ffn_inputs_all is None


def test_packed_needs_tokens():
    v = open_vindex(tiny_vindex("llama", "inference", "f32"))
    m = build_model(v.model_config, v.weights)
    with pytest.raises(ExecutionError, match="at least one token"):
        m.forward_many([[1, 2], []])
    assert m.forward_many([]).logits.shape == (0, m.vocab_size)


GEMMA4 = gemma4_fixtures() / "tiny-gemma4"


@pytest.mark.skipif(not GEMMA4.is_dir(), reason="shared Gemma 4 fixture not present")
def test_kv_sharing_models_run_one_pass_each(tmp_path):
    v = open_vindex(extract(GEMMA4, tmp_path / "g4", level="inference", dtype="f32", progress=False))
    m = build_model(v.model_config, v.weights)
    assert m.kv_sources is not None
    np.testing.assert_array_equal(m.forward_many(SEQS[:2]).logits, np.stack([m.forward(s).logits for s in SEQS[:2]]))
    got = m.forward_many(SEQS[:2], layers=[1])
    want = m.forward(SEQS[1], record=Record(residuals="last", ffn_inputs=True))
    np.testing.assert_array_equal(got.residuals[1][1], want.residuals[1])
    np.testing.assert_array_equal(got.ffn_inputs[1][1], want.ffn_inputs[1])


def test_insert_negatives_memo_survives_a_full_cache():
    """INSERT's FFN-input memo: prompts already memoised come from it, the others run packed,
    and a memo past its size limit is cleared without losing the values being returned."""
    from lql.edit.insert import _ffn_inputs
    from lql.edit.overlay import Overlay, OverlayVindex
    from lql.runtime import ffn_inputs
    base = open_vindex(tiny_vindex("llama", "inference", "f32"))
    view = OverlayVindex(base, Overlay(base))
    first = _ffn_inputs(view, ["The capital of France is"], 1)[0]
    cache = view.overlay._ffn_input_cache
    for i in range(5000):                                # past the 4096 limit
        cache[(f"filler {i}", 1, ())] = first
    got = _ffn_inputs(view, ["The capital of France is", "Once upon a time"], 1)
    np.testing.assert_array_equal(got[0], first)          # from the memo
    want = ffn_inputs(view, "Once upon a time", [1])[1]   # one pass alone
    np.testing.assert_allclose(got[1], want, rtol=1e-5, atol=1e-5)
    assert len(cache) < 10                                # cleared, then refilled


def test_packs_over_the_token_budget_split_and_merge_in_order(monkeypatch):
    """More tokens than PACK_TOKENS run as several packs (attention is quadratic in a
    pack's length); the merged result is each sequence's, in the given order, the same as
    one pack: logits, last-position states and every-position FFN inputs."""
    from lql.model import model as model_mod
    v = open_vindex(tiny_vindex("llama", "inference", "f32"))
    m = build_model(v.model_config, v.weights)
    one = m.forward_many(SEQS, layers=[0, 1], every_position=True)
    calls = []
    real = model_mod.Model.forward_many

    def counting(self, seqs, **kw):
        calls.append(len(seqs))
        return real(self, seqs, **kw)
    monkeypatch.setattr(model_mod.Model, "forward_many", counting)
    monkeypatch.setattr(model_mod, "PACK_TOKENS", 8)
    split = m.forward_many(SEQS, layers=[0, 1], every_position=True)
    assert calls[0] == len(SEQS) and len(calls) > 2         # split into several packs
    np.testing.assert_allclose(split.logits, one.logits, rtol=1e-4,
                               atol=1e-4 * float(np.abs(one.logits).max()))
    for layer in (0, 1):
        np.testing.assert_allclose(split.ffn_inputs[layer], one.ffn_inputs[layer], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(split.residuals[layer], one.residuals[layer], rtol=1e-4,
                                   atol=1e-4 * float(np.abs(one.residuals[layer]).max()))
        assert [x.shape for x in split.ffn_inputs_all[layer]] == \
            [x.shape for x in one.ffn_inputs_all[layer]] == [(len(s), m.hidden_size) for s in SEQS]
        for a, b in zip(split.ffn_inputs_all[layer], one.ffn_inputs_all[layer]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
