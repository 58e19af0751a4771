"""Gemma 4 through a vindex: EXTRACT (HF folders single/sharded, bf16/f16/f32; GGUF),
completeness refusals, and INFER / GENERATE / chat wrapping against transformers.

Fixtures: /work/shared/fixtures/gemma4 (dense+PLE+KV sharing, MoE+k_eq_v, their GGUFs) and
the variants tests/test_gemma4_model.py builds with transformers (Hub-format config,
``Gemma4ForConditionalGeneration`` with a vision tower), plus, here: a sharded bf16 / f16
copy, a 4-layer PLE model relabelled as Gemma 3, and a chat variant whose tokenizer has
Gemma 4's turn tokens.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import _build_once, _code_key

from lql.errors import MissingTensorError, UnclaimedTensorError
from lql.session import Session
from lql.sources import open_source
from lql.vindex import open_vindex
from lql.vindex.extractor import extract

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Gemma4ForCausalLM"):
    pytest.skip("transformers has no Gemma 4", allow_module_level=True)
from test_gemma4_model import FIXTURES, _perturb, _text_kwargs, folder  # noqa: E402

torch.set_num_threads(2)
_KEY = _code_key(hashlib.sha256(Path(__file__).read_bytes()).hexdigest())
PROMPT = "the cat sat on the mat and"


def _reference(path: Path):
    cfg = json.loads((path / "config.json").read_text())
    cls = transformers.Gemma4ForConditionalGeneration if cfg.get("model_type") == "gemma4" \
        else transformers.Gemma4ForCausalLM
    return cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@functools.lru_cache(maxsize=2)
def reference(path: Path):
    return _reference(path)


def vindex(name: str, source: Path, *, level: str = "all", dtype: str = "f32") -> Path:
    return _build_once(f"gemma4-vx-{name}-{level}-{dtype}-{_KEY}",
                       lambda out: extract(source, out / "v", level=level, dtype=dtype,
                                           progress=False)) / "v"


# ------------------------------------------------------------------ variants built here

def _build_sharded(out: Path, dtype) -> None:
    model = _reference(FIXTURES / "tiny-gemma4").to(dtype)
    model.save_pretrained(out, max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "tiny-gemma4" / name, out / name)
    assert (out / "model.safetensors.index.json").is_file()


def sharded(dtype: str) -> Path:
    return _build_once(f"gemma4-sharded-{dtype}-{_KEY}",
                       lambda out: _build_sharded(out, getattr(torch, dtype)))


def _build_relabelled(out: Path) -> None:
    """A 4-layer Gemma 4 with PLE, no KV sharing and one head size, its config.json
    rewritten as Gemma 3's: every tensor Gemma 3 needs is there, 19 more are not Gemma 3's."""
    cfg = transformers.Gemma4TextConfig(**_text_kwargs(
        num_hidden_layers=4, layer_types=["sliding_attention"] * 3 + ["full_attention"],
        global_head_dim=8, num_kv_shared_layers=0))
    torch.manual_seed(3)
    model = transformers.Gemma4ForCausalLM(cfg).eval()
    model.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    gemma3 = {k: saved[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                    "num_attention_heads", "num_key_value_heads", "head_dim",
                                    "vocab_size", "sliding_window", "rms_norm_eps", "layer_types",
                                    "max_position_embeddings")}
    gemma3.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], query_pre_attn_scalar=8)
    (out / "config.json").write_text(json.dumps(gemma3, indent=2))
    shutil.copy(FIXTURES / "tiny-gemma4" / "tokenizer.json", out / "tokenizer.json")


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<|turn>{{ role }}\n{{ message['content'] | trim }}<turn|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}")
TURN_TOKENS = ("<|turn>", "<turn|>", "<|tool_response>")
CHAT_PROMPT = "the cat sat on"


def _chat_ids(path: Path) -> list[int]:
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    ids = tok.apply_chat_template([{"role": "user", "content": CHAT_PROMPT}], add_generation_prompt=True,
                                  tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _build_chat(out: Path) -> None:
    """tiny-gemma4's shape with room for the turn tokens (ids 512..514), Gemma 4's chat format,
    an untied head whose rows of <turn|> and of the token greedy decoding emits 4th are
    swapped, so that generation ends on <turn|> there."""
    from tokenizers import AddedToken, Tokenizer
    raw = json.loads((FIXTURES / "tiny-gemma4" / "config.json").read_text())
    cfg = transformers.Gemma4TextConfig(**{**raw, "vocab_size": 516, "vocab_size_per_layer_input": 516,
                                           "eos_token_id": [1, 513, 514], "tie_word_embeddings": False})
    tok = Tokenizer.from_file(str(FIXTURES / "tiny-gemma4" / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in TURN_TOKENS])
    assert [tok.token_to_id(t) for t in TURN_TOKENS] == [512, 513, 514]
    tok.save(str(out / "tokenizer.json"))
    tc = json.loads((FIXTURES / "tiny-gemma4" / "tokenizer_config.json").read_text())
    tc["chat_template"] = CHAT_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=1))
    for seed in range(5, 60):  # a random model whose greedy output has a new token at step 4
        torch.manual_seed(seed)
        model = transformers.Gemma4ForCausalLM(cfg).eval()
        _perturb(model)
        model.save_pretrained(out)
        ids = _chat_ids(out)
        with torch.no_grad():
            got = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, eos_token_id=[1],
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long), pad_token_id=0)
        fourth = int(got[0, -1])
        if got.shape[1] == len(ids) + 4 and fourth not in ids and fourth < 512 \
                and fourth not in got[0, len(ids):-1].tolist():
            break
    else:
        raise AssertionError("no seed gives a new 4th token")
    with torch.no_grad():  # the head only: the prompt (which holds <turn|>) reads the same
        head = model.lm_head.weight
        head[[fourth, 513]] = head[[513, fourth]].clone()
    model.save_pretrained(out)


def chat_folder() -> Path:
    return _build_once(f"gemma4-chat-{_KEY}", _build_chat)


# ------------------------------------------------------------------ completeness

def test_a_gemma3_labelled_ple_model_is_refused_naming_the_dropped_tensors(tmp_path):
    src = _build_once(f"gemma4-as-gemma3-{_KEY}", _build_relabelled)
    with pytest.raises(UnclaimedTensorError) as err:
        extract(src, tmp_path / "v", level="all", dtype="f32", progress=False)
    dropped = ["embed_tokens_per_layer.weight", "per_layer_model_projection.weight",
               "per_layer_projection_norm.weight"]
    for i in range(4):
        dropped += [f"layers.{i}.layer_scalar", f"layers.{i}.per_layer_input_gate.weight",
                    f"layers.{i}.per_layer_projection.weight", f"layers.{i}.post_per_layer_input_norm.weight"]
    assert len(dropped) == 19
    assert str(err.value) == (
        f"source {src.name} has 19 tensors the gemma3 family does not read: {', '.join(sorted(dropped))} "
        "— refusing to extract them away (is config.json's model_type right?)")
    assert not (tmp_path / "v").exists()


def test_the_conditional_checkpoint_ignores_its_vision_tower_by_rule():
    src = open_source(folder("conditional"))
    from safetensors import safe_open
    names = []
    for f in src.path.glob("*.safetensors"):
        with safe_open(str(f), "np") as fh:
            names += list(fh.keys())
    vision = [n for n in names if "vision" in n]
    assert vision and all(src.family_spec.normalise_key(n) is None for n in vision)
    assert src.family_spec.unclaimed(src.model_config, src.keys()) == []


def test_forward_keys_are_what_the_mixed_builder_reads():
    from lql.model.mixed import _Plan, mixed_spec
    for name in ("tiny-gemma4", "tiny-gemma4-moe", "hub-format", "conditional"):
        src = open_source(folder(name))
        mc = src.family_spec.complete(src.model_config)
        spec = mixed_spec(mc, mc["num_layers"], mc["hidden_size"])
        required = _Plan(mc, spec).required(spec, mc["tie_word_embeddings"])
        assert sorted(required) == sorted(src.family_spec.forward_keys(mc)), name
        assert sorted(src.family_spec.keys(mc, "all")) == sorted(src.keys()), name


def test_a_vindex_without_its_ple_entries_refuses_infer(tmp_path):
    good = vindex("tiny-gemma4", FIXTURES / "tiny-gemma4")
    bad = tmp_path / "v"
    shutil.copytree(good, bad)
    manifest = json.loads((bad / "weight_manifest.json").read_text())
    ple = sorted(e["key"] for e in manifest if e["file"] == "per_layer_embeddings.bin")
    assert len(ple) == 3 + 3 * 6
    (bad / "weight_manifest.json").write_text(json.dumps([e for e in manifest if e["key"] not in ple]))
    s = Session()
    s.query(f'USE "{bad}"')
    with pytest.raises(MissingTensorError) as err:
        s.query(f'INFER "{PROMPT}" TOP 3')
    src = FIXTURES / "tiny-gemma4"
    want = [k for k in _forward_order(good) if k in ple]
    shown = ", ".join(want[:8]) + " …"
    assert str(err.value) == (f'missing tensors {shown} in vindex {bad}; re-run EXTRACT MODEL "{src}" '
                              f'INTO "{bad}" WITH ALL FORCE')
    assert set(err.value.keys) == set(ple)


def _forward_order(v: Path) -> list[str]:
    from lql.families import get_family
    mc = json.loads((v / "index.json").read_text())["model_config"]
    fam = get_family("gemma4")
    from lql.model.mixed import _Plan, mixed_spec
    mc = fam.complete(mc)
    spec = mixed_spec(mc, mc["num_layers"], mc["hidden_size"])
    return _Plan(mc, spec).required(spec, True)


# ------------------------------------------------------------------ extraction

def _content(path: Path) -> dict:
    """What a vindex holds, format-independent: config, layers, every tensor (f32 bytes)."""
    v = open_vindex(path)
    index = json.loads((path / "index.json").read_text())
    tensors = {k: np.asarray(v.weights[k], dtype=np.float32) for k in v.weights}
    return {"model_config": index["model_config"], "layers": index["layers"], "family": index["family"],
            "tensors": tensors, "files": sorted(e["file"] for e in v.manifest),
            "down_meta": (path / "down_meta.bin").read_bytes(), "tokenizer": v.tokenizer}


@pytest.mark.parametrize("name", ["tiny-gemma4", "tiny-gemma4-moe"])
def test_gguf_extracts_to_the_same_vindex_as_its_hf_folder(name):
    hf = _content(vindex(name, FIXTURES / name))
    gg = _content(vindex(name + "-gguf", FIXTURES / f"{name}.gguf"))
    assert gg["model_config"] == hf["model_config"] and gg["layers"] == hf["layers"]
    assert gg["family"] == hf["family"] == "gemma4" and gg["files"] == hf["files"]
    assert sorted(gg["tensors"]) == sorted(hf["tensors"])
    for key, value in hf["tensors"].items():
        np.testing.assert_array_equal(gg["tensors"][key], value, err_msg=key)
    assert gg["down_meta"] == hf["down_meta"]
    for text in (PROMPT, "  Ünïcode 😀\n<bos> x"):
        assert gg["tokenizer"].encode(text).ids == hf["tokenizer"].encode(text).ids


def test_per_layer_geometry_ple_file_and_experts_in_the_manifest():
    v = open_vindex(vindex("tiny-gemma4", FIXTURES / "tiny-gemma4"))
    assert [v.num_features(i) for i in range(6)] == [128, 128, 128, 256, 256, 256]
    assert v.model_config["per_layer"]["head_dim"] == [16, 16, 32, 16, 16, 32]
    files = {e["key"]: e["file"] for e in v.manifest}
    assert files["embed_tokens_per_layer.weight"] == "per_layer_embeddings.bin"
    assert files["layers.3.per_layer_input_gate.weight"] == "per_layer_embeddings.bin"
    assert "layers.3.self_attn.k_proj.weight" not in files  # KV-shared layer
    moe = open_vindex(vindex("tiny-gemma4-moe", FIXTURES / "tiny-gemma4-moe"))
    entries = {e["key"]: e for e in moe.manifest}
    assert entries["layers.2.experts.gate_up_proj"]["shape"] == [4, 64, 64]
    assert entries["layers.2.experts.down_proj"]["file"] == "expert_weights.bin"
    assert "layers.5.self_attn.v_proj.weight" not in entries  # k_eq_v full layer


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sharded_half_precision_sources_extract(dtype):
    src = sharded(dtype)
    v = open_vindex(vindex(f"sharded-{dtype}", src, dtype="f32"))
    from safetensors.numpy import load_file
    ref = load_file(str(FIXTURES / "tiny-gemma4" / "model.safetensors"))
    fam = open_source(src).family_spec
    for hf_name, value in ref.items():
        key = fam.normalise_key(hf_name)
        want = torch.from_numpy(value).to(getattr(torch, dtype)).float().numpy()
        np.testing.assert_array_equal(np.asarray(v.weights[key]), want, err_msg=key)


def test_f16_vindex_keeps_the_ple_table_memory_mapped_in_f16():
    v = open_vindex(vindex("tiny-gemma4", FIXTURES / "tiny-gemma4", dtype="f16"))
    table = v.weights["embed_tokens_per_layer.weight"]
    assert table.dtype == np.float16 and isinstance(table.base, np.ndarray | np.memmap)
    from lql.model import build_model
    model = build_model(v.model_config, v.weights)
    assert model.per_layer_embed.table.dtype == np.float16
    assert np.shares_memory(model.per_layer_embed.table, v._map("per_layer_embeddings.bin"))


# ------------------------------------------------------------------ INFER / GENERATE parity

def _probs(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max())
    return e / e.sum()


def _build_with_tokenizer(out: Path, src: Path) -> None:
    """A copy of ``src`` (a variant without tokenizer files, vocabulary 300) with the tiny
    tokenizer cut to its vocabulary: tokens 0..299 and the merges among them."""
    for f in src.iterdir():
        shutil.copy(f, out / f.name)
    n = json.loads((src / "config.json").read_text()).get("text_config", {}).get("vocab_size") or \
        json.loads((src / "config.json").read_text())["vocab_size"]
    tok = json.loads((FIXTURES / "tiny-gemma4" / "tokenizer.json").read_text())
    vocab = {t: i for t, i in tok["model"]["vocab"].items() if i < n}
    tok["model"]["vocab"] = vocab
    tok["model"]["merges"] = [m for m in tok["model"]["merges"] if m[0] in vocab and m[1] in vocab
                              and m[0] + m[1] in vocab]
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    shutil.copy(FIXTURES / "tiny-gemma4" / "tokenizer_config.json", out / "tokenizer_config.json")


def _sources():
    return {"tiny-gemma4": FIXTURES / "tiny-gemma4", "tiny-gemma4-moe": FIXTURES / "tiny-gemma4-moe",
            **{name: _build_once(f"gemma4-{name}-tok-{_KEY}",
                                 lambda out, n=name: _build_with_tokenizer(out, folder(n)))
               for name in ("hub-format", "conditional")}}


@pytest.mark.parity
@pytest.mark.parametrize("name", ["tiny-gemma4", "tiny-gemma4-moe", "hub-format", "conditional",
                                  "tiny-gemma4-gguf"])
def test_infer_and_generate_through_a_vindex_match_transformers(name):
    hf = _sources()[name.removesuffix("-gguf")]
    src = FIXTURES / "tiny-gemma4.gguf" if name.endswith("-gguf") else hf
    s = Session()
    s.query(f'USE "{vindex(name, src)}"')
    r = s.query(f'INFER "{PROMPT}" TOP 10 RAW VERBOSE')
    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    ids = tok(PROMPT)["input_ids"]
    assert r.meta["token_ids"] == ids
    model = reference(hf)
    with torch.no_grad():
        p = _probs(model(torch.tensor([ids])).logits[0, -1].numpy())
    assert [row["token_id"] for row in r.rows] == np.argsort(-p, kind="stable")[:10].tolist()
    assert max(abs(row["probability"] - p[row["token_id"]]) for row in r.rows) <= 1e-4
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long), pad_token_id=0)
    g = s.query(f'INFER "{PROMPT}" RAW GENERATE 20')
    assert g.meta["token_ids"] == out[0, len(ids):].tolist()
    reference.cache_clear()
    gc.collect()


@pytest.mark.parity
def test_gemma4_chat_wrapping_and_stop_on_end_of_turn():
    path = chat_folder()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    msgs = [{"role": "user", "content": CHAT_PROMPT}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == f"<bos><|turn>user\n{CHAT_PROMPT}<turn|>\n<|turn>model\n"
    ids = _chat_ids(path)
    from lql.infer.engine import target_for
    s = Session()
    s.query(f'USE "{vindex("chat", path, level="inference")}"')
    from lql.infer.prompt import prepare
    prepared = prepare(target_for(s), CHAT_PROMPT, wrap="CHAT")
    assert prepared.text.encode() == text.encode() and prepared.ids == ids
    model = reference(path)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long), pad_token_id=0)
    want = out[0, len(ids):].tolist()
    assert want[-1] == 513 and len(want) == 4  # transformers stops on <turn|> (generation_config)
    g = s.query(f'INFER "{CHAT_PROMPT}" CHAT GENERATE 20')
    assert g.meta["token_ids"] == want


def test_a_model_config_with_the_first_geometry_keys_builds_the_same_model():
    """model_configs written with layer_head_dims / layer_kv_heads / layer_intermediate_sizes
    (before per_layer was the one per-layer geometry) are migrated by the family."""
    from lql.families import complete_model_config
    from lql.model import build_model
    src = open_source(FIXTURES / "tiny-gemma4")
    mc = dict(src.model_config)
    per_layer = mc.pop("per_layer")
    legacy = dict(mc, layer_head_dims=per_layer["head_dim"], layer_kv_heads=per_layer["num_kv_heads"],
                  layer_intermediate_sizes=per_layer["intermediate_size"])
    assert complete_model_config(legacy)["per_layer"] == per_layer
    assert "layer_head_dims" not in complete_model_config(legacy)
    ids = [2, 40, 41, 300, 7, 9]
    np.testing.assert_array_equal(build_model(legacy, src.weights).forward(ids).logits,
                                  build_model(src.model_config, src.weights).forward(ids).logits)
