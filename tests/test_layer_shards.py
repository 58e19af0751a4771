"""Layer-range shards (docs/SCALING.md): ``Model.forward_layers`` over consecutive ranges
gives the residual and logits of one whole ``Model.forward`` — on a tiny Llama, on a tiny
Gemma 4 (per-layer embeddings, KV-shared layers) and through an overlay's edit hooks."""

from __future__ import annotations

import numpy as np
import pytest
from model_fixtures import gemma4_fixtures, tiny_model_dir

from lql.errors import ExecutionError
from lql.infer.engine import target_for
from lql.session import Session

IDS = [1, 17, 402, 88, 9, 203]


def _model(folder, tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE MODEL "{folder}"')
    return target_for(s).model


def _chained(model, ranges):
    h = None
    for first, last in ranges:
        h = model.forward_layers(IDS, h, first, last)
    return h


def _check_equal(model, ranges):
    whole = model.forward(IDS)
    h = _chained(model, ranges)
    assert h.shape == (len(IDS), model.hidden_size)
    np.testing.assert_array_equal(h[-1], whole.hidden)
    np.testing.assert_array_equal(model.logits_from_hidden(h[-1]), whole.logits)


def test_llama_shards_chain_to_the_whole_forward(tmp_path):
    model = _model(tiny_model_dir("llama"), tmp_path)
    n = model.num_layers
    _check_equal(model, [(0, n)])
    _check_equal(model, [(0, 1), (1, n)])
    _check_equal(model, [(i, i + 1) for i in range(n)])


def test_gemma4_shards_keep_ple_and_kv_sharing(tmp_path):
    path = gemma4_fixtures() / "tiny-gemma4"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{path} is missing")
    model = _model(path, tmp_path)
    n = model.num_layers
    src = model.kv_sources
    assert src is not None and any(s is not None for s in src)     # the fixture shares KV
    # a boundary that splits no (layer, source) pair
    cut = next(b for b in range(1, n)
               if all(s is None or (s < b) == (i < b) for i, s in enumerate(src)))
    _check_equal(model, [(0, cut), (cut, n)])
    # a boundary between a KV-sharing layer and its source is refused, naming both
    bad = next(i for i, s in enumerate(src) if s is not None)
    with pytest.raises(ExecutionError, match=rf"layer {bad} reads layer {src[bad]}'s KV cache"):
        model.forward_layers(IDS, np.zeros((len(IDS), model.hidden_size), np.float32), bad, n)


def test_shards_run_an_overlays_edits(tmp_path):
    """The edited view's model (rebuilt layers, hooks) runs the same in shards."""
    from lql.session import Session
    folder = tiny_model_dir("llama")
    s = Session(cwd=tmp_path)
    s.query(f'EXTRACT MODEL "{folder}" INTO "{tmp_path / "v"}" WITH INFERENCE')
    s.query(f'USE "{tmp_path / "v"}"')
    s.query('UPDATE EDGES SET target = " Paris" WHERE layer = 1 AND feature = 3')
    model = target_for(s).model
    base = target_for(s).base().model
    assert not np.array_equal(model.forward(IDS).logits, base.forward(IDS).logits)
    _check_equal(model, [(0, 1), (1, model.num_layers)])


def test_bad_ranges_and_residuals_are_refused(tmp_path):
    model = _model(tiny_model_dir("llama"), tmp_path)
    n = model.num_layers
    with pytest.raises(ExecutionError, match="not within"):
        model.forward_layers(IDS, None, 0, n + 1)
    with pytest.raises(ExecutionError, match="needs the residual before"):
        model.forward_layers(IDS, None, 1, n)
    with pytest.raises(ExecutionError, match="does not match"):
        model.forward_layers(IDS, np.zeros((2, model.hidden_size), np.float32), 1, n)
