"""``open_source`` on Hugging Face folders: every tiny family, sharding, bf16/f16,
tied heads, tokenizer files, and the errors for broken input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import FAMILIES, tiny_model_dir
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from lql.errors import LqlError, MissingTensorError, UnsupportedArchitectureError
from lql.sources import SourceError, open_source

PREFIXES = ("model.", "transformer.")


def strip(name: str) -> str:
    for p in PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ every tiny family

@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_config_matches_config_json(family):
    folder = tiny_model_dir(family)
    raw = json.loads((folder / "config.json").read_text())
    src = open_source(folder)
    mc = src.model_config
    expected_family = {"gemma3_text": "gemma3"}.get(family, family)
    assert src.family == expected_family and src.format == "safetensors"
    assert src.hf_config == raw
    if family == "gpt2":
        pairs = {"hidden_size": raw["n_embd"], "num_layers": raw["n_layer"],
                 "num_q_heads": raw["n_head"], "num_kv_heads": raw["n_head"],
                 "norm_eps": raw["layer_norm_epsilon"], "max_position_embeddings": raw["n_positions"],
                 "intermediate_size": 4 * raw["n_embd"], "activation": raw["activation_function"]}
        assert mc["norm_type"] == "layer" and mc["position_embedding"] == "learned"
    else:
        rope = raw["rope_parameters"]
        full = rope.get("full_attention", rope)
        pairs = {"hidden_size": raw["hidden_size"], "num_layers": raw["num_hidden_layers"],
                 "intermediate_size": raw["intermediate_size"],
                 "num_q_heads": raw["num_attention_heads"],
                 "num_kv_heads": raw["num_key_value_heads"], "rms_norm_eps": raw["rms_norm_eps"],
                 "head_dim": raw.get("head_dim", raw["hidden_size"] // raw["num_attention_heads"]),
                 "rope_base": full["rope_theta"],
                 "max_position_embeddings": raw["max_position_embeddings"],
                 "activation": raw.get("hidden_activation") or raw["hidden_act"]}
        assert mc["norm_type"] == "rms" and mc["position_embedding"] == "rope"
        if "sliding_attention" in rope:
            pairs["rope_local_base"] = rope["sliding_attention"]["rope_theta"]
        if raw.get("layer_types"):
            pairs["layer_types"] = raw["layer_types"]
        for key in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
            if key in raw:
                pairs[key] = raw[key]
    pairs.update(vocab_size=raw["vocab_size"], tie_word_embeddings=raw["tie_word_embeddings"],
                 bos_token_id=raw["bos_token_id"])
    for key, value in pairs.items():
        assert mc[key] == value, key
    assert raw["eos_token_id"] in mc["eos_token_id"]
    gemma = family.startswith("gemma")
    assert mc["norm_offset"] == (1.0 if gemma else 0.0)
    assert mc["embed_scale"] == pytest.approx(raw["hidden_size"] ** 0.5 if gemma else 1.0)
    assert mc["attention_bias"] == (family in ("qwen2", "gpt2"))
    assert mc["qk_norm"] == (family in ("qwen3", "gemma3_text"))
    assert mc["sandwich_norms"] == (family in ("gemma2", "gemma3_text"))


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_tensors_equal_safetensors(family):
    folder = tiny_model_dir(family)
    ref = load_file(folder / "model.safetensors")
    src = open_source(folder)
    assert set(src.keys()) == {strip(k) for k in ref}
    for name, value in ref.items():
        got = src.tensor(strip(name))
        assert got.dtype == np.float32 and got.shape == value.shape
        assert src.shape(strip(name)) == value.shape
        assert np.array_equal(got, value), name
    assert src.missing_keys("all") == []
    src.require("all")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tied_and_untied_head(family):
    src = open_source(tiny_model_dir(family))
    embed = src.tensor("embed_tokens.weight")
    head = src.tensor("lm_head.weight")
    if src.model_config["tie_word_embeddings"]:
        assert "lm_head.weight" not in src.keys() and np.array_equal(head, embed)
        assert "lm_head.weight" in src.weights
    else:
        assert "lm_head.weight" in src.keys() and not np.array_equal(head, embed)


def test_tokenizer_files_and_chat_template():
    folder = tiny_model_dir("llama")
    src = open_source(folder)
    assert src.tokenizer_json == (folder / "tokenizer.json").read_text()
    assert src.tokenizer_config == json.loads((folder / "tokenizer_config.json").read_text())
    assert src.chat_template == (folder / "chat_template.jinja").read_text()
    tok = src.tokenizer()
    assert tok.encode("Hello world").ids == tok.encode("Hello world").ids and tok.get_vocab_size()


def test_chat_template_from_tokenizer_config(tmp_path):
    folder = copy_model(tiny_model_dir("llama"), tmp_path / "m")
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc["chat_template"] = [{"name": "tool_use", "template": "x"},
                           {"name": "default", "template": template}]
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    assert open_source(folder).chat_template == template


def test_weights_mapping_caches_and_reports_missing():
    src = open_source(tiny_model_dir("qwen3"))
    w = src.weights
    a = w["layers.0.self_attn.q_norm.weight"]
    assert a is w["layers.0.self_attn.q_norm.weight"] and not a.flags.writeable
    assert len(w) == len(src.keys()) and set(w) == set(src.keys())
    assert "layers.9.mlp.up_proj.weight" not in w and w.get("nope") is None
    with pytest.raises(MissingTensorError) as err:
        w["layers.9.mlp.up_proj.weight"]
    assert "layers.9.mlp.up_proj.weight" in str(err.value)


# ------------------------------------------------------------------ sharding

def shard(folder: Path, parts: int = 2) -> dict:
    """Rewrite folder/model.safetensors as ``parts`` shards plus an index."""
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i in range(parts):
        fname = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {n: tensors[n] for n in names[i::parts]}
        save_file(chunk, folder / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in chunk})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


def test_sharded_folder_reads_like_single(tmp_path):
    folder = copy_model(tiny_model_dir("mistral"), tmp_path / "m")
    tensors = shard(folder, 3)
    src = open_source(folder)
    assert set(src.keys()) == {strip(k) for k in tensors}
    for name, value in tensors.items():
        assert np.array_equal(src.tensor(strip(name)), value)


def test_missing_shard_is_named(tmp_path):
    folder = copy_model(tiny_model_dir("llama"), tmp_path / "m")
    shard(folder, 2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SourceError) as err:
        open_source(folder)
    assert "model-00002-of-00002.safetensors" in str(err.value)
    assert err.value.path.endswith("model-00002-of-00002.safetensors")


def test_index_naming_a_tensor_its_shard_lacks(tmp_path):
    folder = copy_model(tiny_model_dir("llama"), tmp_path / "m")
    shard(folder, 2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.mlp.extra.weight"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SourceError, match="model.layers.0.mlp.extra.weight"):
        open_source(folder)


# ------------------------------------------------------------------ missing / broken input

def test_missing_tensor_is_named(tmp_path):
    folder = copy_model(tiny_model_dir("llama"), tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    src = open_source(folder)
    assert src.missing_keys("inference") == ["layers.1.mlp.up_proj.weight"]
    src.require("browse")  # the browse level does not need up_proj
    with pytest.raises(MissingTensorError) as err:
        src.require("inference")
    assert err.value.keys == ("layers.1.mlp.up_proj.weight",)
    with pytest.raises(MissingTensorError, match="layers.1.mlp.up_proj.weight"):
        src.tensor("layers.1.mlp.up_proj.weight")


def test_truncated_safetensors_is_refused(tmp_path):
    folder = copy_model(tiny_model_dir("llama"), tmp_path / "m")
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(SourceError, match="truncated") as err:
        open_source(folder)
    assert err.value.path.endswith("model.safetensors")


def test_no_weights_no_config_and_not_a_model(tmp_path):
    folder = copy_model(tiny_model_dir("llama"), tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(SourceError, match="model.safetensors"):
        open_source(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="config.json"):
        open_source(empty)
    other = tmp_path / "notes.txt"
    other.write_text("hi")
    with pytest.raises(SourceError, match="neither"):
        open_source(other)
    with pytest.raises(SourceError, match="no such model"):
        open_source(tmp_path / "absent")


def test_hub_id_says_what_to_pass_instead():
    with pytest.raises(SourceError) as err:
        open_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    text = str(err.value)
    assert "hub id" in text and "local" in text and isinstance(err.value, LqlError)


def test_unsupported_architecture(tmp_path):
    folder = copy_model(tiny_model_dir("llama"), tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "mamba"
    cfg["architectures"] = ["MambaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError) as err:
        open_source(folder)
    assert err.value.architecture == "mamba" and "llama" in err.value.supported
    assert "mamba" in str(err.value) and "gemma2" in str(err.value)


def test_corrupt_config_json(tmp_path):
    folder = copy_model(tiny_model_dir("llama"), tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(SourceError, match="config.json"):
        open_source(folder)


# ------------------------------------------------------------------ half precision

def _half_copy(tmp_path: Path, family: str, dtype_name: str) -> tuple[Path, dict]:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as tload
    from safetensors.torch import save_file as tsave

    folder = copy_model(tiny_model_dir(family), tmp_path / f"{family}-{dtype_name}")
    dtype = getattr(torch, dtype_name)
    tensors = {k: v.to(dtype) for k, v in tload(folder / "model.safetensors").items()}
    tsave(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    # the values a reader must return: the half values, widened exactly by torch
    return folder, {k: v.to(torch.float32).numpy() for k, v in tensors.items()}


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_bf16_reads_back_exactly(tmp_path, family):
    folder, expected = _half_copy(tmp_path, family, "bfloat16")
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        assert f.get_slice(next(iter(f.keys()))).get_dtype() == "BF16"
    src = open_source(folder)
    for name, value in expected.items():
        got = src.tensor(strip(name))
        assert got.dtype == np.float32 and np.array_equal(got, value), name


def test_f16_reads_back_exactly(tmp_path):
    folder, expected = _half_copy(tmp_path, "qwen2", "float16")
    src = open_source(folder)
    for name, value in expected.items():
        assert np.array_equal(src.tensor(strip(name)), value), name


def test_context_manager_and_properties():
    with open_source(tiny_model_dir("gemma2")) as src:
        assert src.num_layers == 4 and src.hidden_size == 64 and src.vocab_size == 49152
        assert src.intermediate_size == 128 and src.embed_scale == pytest.approx(8.0)
        assert src.layer_bands == src.family_spec.layer_bands(4)
        assert src.provenance["format"] == "safetensors"
