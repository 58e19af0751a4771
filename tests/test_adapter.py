"""lql.sources.adapter without peft: the merge formula, target_modules matching, and every
refusal naming what is wrong."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lql.sources import open_source  # noqa: E402
from lql.sources.adapter import AdapterError, AdapterSource, read_simple_yaml, target_matches  # noqa: E402

Q = "layers.0.self_attn.q_proj.weight"
V = "layers.1.self_attn.v_proj.weight"


@pytest.fixture(scope="module")
def base():
    from model_fixtures import tiny_model_dir
    return open_source(tiny_model_dir("llama"))


def _write(folder: Path, base, modules, config=None, *, r=2, seed=0, extra=None):
    from safetensors.numpy import save_file
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for key in modules:
        out, inp = base.shape(key)
        mod = "model." + key[:-len(".weight")]
        tensors[f"base_model.model.{mod}.lora_A.weight"] = rng.standard_normal((r, inp)).astype(np.float32)
        tensors[f"base_model.model.{mod}.lora_B.weight"] = rng.standard_normal((out, r)).astype(np.float32)
    tensors.update(extra or {})
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 3, "target_modules": ["q_proj", "v_proj"],
           "bias": "none", **(config or {})}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return tensors


def test_merge_formula_and_rslora(base, tmp_path):
    t = _write(tmp_path / "a", base, [Q])
    # list targets must cover every matching module: name only layer 0's q_proj
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 3, "target_modules": ["layers.0.self_attn.q_proj"]}))
    src = AdapterSource(base, tmp_path / "a")
    a = t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert np.allclose(src.tensor(Q), base.tensor(Q) + 1.5 * b @ a, atol=1e-5)
    assert np.array_equal(src.tensor(V), base.tensor(V))
    assert np.allclose(src.tensor_rows(Q, 2, 5), src.tensor(Q)[2:5])
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": True}))
    rs = AdapterSource(base, tmp_path / "a")
    assert rs.scaling == pytest.approx(3 / np.sqrt(2))
    assert np.allclose(rs.tensor(Q), base.tensor(Q) + (3 / np.sqrt(2)) * b @ a, atol=1e-5)
    assert rs.provenance["adapter"]["use_rslora"] is True


def test_target_modules_semantics():
    assert target_matches(["q_proj"], "model.layers.0.self_attn.q_proj")
    assert not target_matches(["proj"], "model.layers.0.self_attn.q_proj")   # suffix after a dot
    assert target_matches(r".*\.(q|v)_proj", "model.layers.3.self_attn.v_proj")
    assert not target_matches(r"q_proj", "model.layers.3.self_attn.q_proj")   # full match


@pytest.mark.parametrize("config,match", [
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "bias"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out"),
    ({"peft_type": "IA3"}, "IA3"),
    ({"target_modules": None}, "target_modules"),
])
def test_unsupported_options_are_refused(base, tmp_path, config, match):
    _write(tmp_path / "a", base, [Q], config)
    with pytest.raises(AdapterError, match=match):
        AdapterSource(base, tmp_path / "a")


def test_mismatches_name_the_module(base, tmp_path):
    # a module the model lacks
    _write(tmp_path / "a", base, [Q], {"target_modules": r".*q_proj"},
           extra={"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight": np.zeros((2, 64), np.float32),
                  "base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight": np.zeros((64, 2), np.float32)})
    with pytest.raises(AdapterError, match=r"layers\.9\.self_attn\.q_proj is not in the model"):
        AdapterSource(base, tmp_path / "a")
    # a shape mismatch
    _write(tmp_path / "b", base, [], {"target_modules": ["layers.0.self_attn.q_proj"]},
           extra={"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, 63), np.float32),
                  "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((64, 2), np.float32)})
    with pytest.raises(AdapterError, match=r"layers\.0\.self_attn\.q_proj: lora_B"):
        AdapterSource(base, tmp_path / "b")
    # targets name modules the file has no weights for
    _write(tmp_path / "c", base, [Q], {"target_modules": ["q_proj"]})
    with pytest.raises(AdapterError, match=r"names model\.layers\.1\.self_attn\.q_proj"):
        AdapterSource(base, tmp_path / "c")
    # a module outside target_modules
    _write(tmp_path / "d", base, [Q, V], {"target_modules": ["layers.0.self_attn.q_proj"]})
    with pytest.raises(AdapterError, match=r"v_proj is not named by target_modules"):
        AdapterSource(base, tmp_path / "d")
    with pytest.raises(AdapterError, match="adapter_config.json"):
        AdapterSource(base, tmp_path)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "adapter_config.json").write_text(json.dumps({"r": 2, "target_modules": ["q_proj"]}))
    (tmp_path / "e" / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(AdapterError, match="torch"):
        AdapterSource(base, tmp_path / "e")


def test_simple_yaml(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("a: 1\nb: 2.5  # note\nc: 'x y'\nd: true\n# skip\nlist:\n  - 1\ne: plain text\n")
    assert read_simple_yaml(p) == {"a": 1, "b": 2.5, "c": "x y", "d": True, "e": "plain text"}
