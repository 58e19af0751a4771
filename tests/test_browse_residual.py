"""DESCRIBE ... VIA RESIDUAL: gate scores on the entity's real FFN input, checked
against transformers' forward pass (a hook on the MLP input) of the tiny Llama."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import tiny_model_dir  # noqa: E402
from vindex_fixtures import tiny_vindex  # noqa: E402

from lql.errors import LevelError  # noqa: E402
from lql.session import Session  # noqa: E402


def test_via_residual_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = tiny_vindex("llama", "inference", "f32")
    s = Session()
    s.query(f'USE "{path}"')
    r = s.query('DESCRIBE "France" ALL LAYERS RAW VIA RESIDUAL')
    assert r.meta["via"] == "RESIDUAL"
    assert r.rows, r.message

    src = tiny_model_dir("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(src)
    ids = tok("France", return_tensors="pt").input_ids
    bos = model.config.bos_token_id            # DESCRIBE puts the model's BOS first
    if bos is not None and int(ids[0, 0]) != bos:
        ids = torch.cat([torch.tensor([[bos]]), ids], dim=1)
    assert ids.shape[1] >= 2
    seen = {}
    hooks = [layer.mlp.register_forward_hook(
        lambda mod, args, out, i=i: seen.__setitem__(i, args[0][0, -1].detach().numpy()))
        for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    for row in r.rows:
        if row["source"] == "inserted":
            continue
        w = model.model.layers[row["layer"]].mlp.gate_proj.weight.detach().numpy()
        want = float(w[row["feature"]] @ seen[row["layer"]])
        assert row["gate"] == pytest.approx(want, rel=1e-3, abs=1e-4)
        best = float(np.max(w @ seen[row["layer"]]))
        assert row["gate"] <= best + 1e-4


def test_via_residual_needs_inference_level():
    path = tiny_vindex("llama", "browse", "f32")
    s = Session()
    s.query(f'USE "{path}"')
    with pytest.raises(LevelError, match="WITH INFERENCE"):
        s.query('DESCRIBE "France" VIA RESIDUAL')
