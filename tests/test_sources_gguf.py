"""GGUF sources.

* SmolLM2 (the bundled Q4_1 GGUF) against the Hugging Face folder ``transformers``
  made from the same file: same keys, same tensors (Q/K un-permuted), same
  model_config, a tokenizer that encodes like the folder's, the same chat template.
* Tiny GGUFs written here from the tiny Hugging Face models with llama.cpp's own
  conversions (Q/K permutation, Gemma ``+1`` norms, GPT-2 transposes) re-implemented
  from ``convert_hf_to_gguf.py``, so the reader's inverse conversions are checked
  independently for every GGUF architecture it maps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_fixtures import smollm2_gguf, smollm2_hf_dir, tiny_model_dir
from safetensors.numpy import load_file

from lql.errors import UnsupportedArchitectureError
from lql.sources import SourceError, open_source

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smol_gguf():
    return open_source(smollm2_gguf())


@pytest.fixture(scope="module")
def smol_hf():
    return open_source(smollm2_hf_dir())


# ------------------------------------------------------------------ SmolLM2

def test_smollm2_identity(smol_gguf):
    assert smol_gguf.format == "gguf" and smol_gguf.family == "llama"
    assert smol_gguf.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    mc = smol_gguf.model_config
    # the facts of docs/fixtures.md, read from the GGUF metadata
    assert (mc["num_layers"], mc["hidden_size"], mc["intermediate_size"]) == (30, 576, 1536)
    assert (mc["num_q_heads"], mc["num_kv_heads"], mc["head_dim"]) == (9, 3, 64)
    assert mc["rope_base"] == 100000.0 and mc["vocab_size"] == 49152
    assert mc["tie_word_embeddings"] is True and mc["norm_type"] == "rms"


def test_smollm2_same_keys(smol_gguf, smol_hf):
    assert set(smol_gguf.keys()) == set(smol_hf.keys())
    assert "lm_head.weight" not in smol_gguf.keys()  # tied


def test_smollm2_same_model_config(smol_gguf, smol_hf):
    a, b = smol_gguf.model_config, smol_hf.model_config
    shared = set(a) & set(b)
    assert len(shared) >= 30
    assert {k: a[k] for k in shared} == {k: b[k] for k in shared}


def test_smollm2_every_tensor_equal(smol_gguf, smol_hf):
    # (speed is measured in benchmarks/bench_extract.py, never asserted here)
    tensors = {k: smol_gguf.tensor(k) for k in smol_gguf.keys()}
    for key, value in tensors.items():
        ref = smol_hf.tensor(key)
        assert value.dtype == np.float32 and value.shape == ref.shape == smol_gguf.shape(key), key
        assert np.allclose(value, ref, rtol=1e-6, atol=1e-6), key


@pytest.mark.parametrize("proj, heads", [("q", 9), ("k", 3)])
def test_smollm2_qk_unpermute(smol_gguf, smol_hf, proj, heads):
    """The raw dequantised rows are in llama.cpp's order; ours are in Hugging Face's."""
    reader = smol_gguf._reader
    t = next(t for t in reader.tensors if t.name == f"blk.5.attn_{proj}.weight")
    raw = gguf.quants.dequantize(t.data, t.tensor_type).reshape(heads * 64, 576)
    ref = smol_hf.tensor(f"layers.5.self_attn.{proj}_proj.weight")
    assert not np.allclose(raw, ref, atol=1e-3)          # the permutation matters
    ours = smol_gguf.tensor(f"layers.5.self_attn.{proj}_proj.weight")
    assert np.allclose(ours, ref, rtol=1e-6, atol=1e-6)
    # and it is a pure row permutation within each head
    assert np.array_equal(np.sort(raw, axis=0), np.sort(ours, axis=0))


TEXTS = [
    "Hello, world!",
    "The capital of France is",
    "  leading spaces and trailing   ",
    "naïve café — déjà vu, Zürich, Ελληνικά, русский, 中文, 日本語, 한국어",
    "emoji 🤖🚀 and symbols ∑∫√ ≠ ≤",
    "def f(x):\n    return x ** 2  # square\n\tif x: pass",
    "numbers 12345 3.14159 -42 1e-5 2024-11-22 x²",
    "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "<|endoftext|><repo_name>a/b<file_sep>",
    "URL https://example.com/path?q=1&r=2#frag",
    "line1\r\nline2\n\n\nline5",
    "'s 't 're 've 'm 'll 'd DON'T",
    "",
]


def test_smollm2_tokenizer_encodes_like_the_folder(smol_gguf, smol_hf):
    ours, theirs = smol_gguf.tokenizer(), smol_hf.tokenizer()
    assert ours.get_vocab_size(with_added_tokens=True) == theirs.get_vocab_size(with_added_tokens=True)
    for text in TEXTS:
        a, b = ours.encode(text), theirs.encode(text)
        assert a.ids == b.ids, text
        assert ours.decode(a.ids, skip_special_tokens=False) \
            == theirs.decode(b.ids, skip_special_tokens=False)
    assert ours.encode("<|im_start|>user").ids[0] == 1
    # the whole tokenizer.json agrees, not just on these strings
    assert json.loads(smol_gguf.tokenizer_json) == json.loads(smol_hf.tokenizer_json)


def test_smollm2_chat_template_and_special_tokens(smol_gguf, smol_hf):
    assert smol_gguf.chat_template == smol_hf.chat_template
    assert smol_gguf.chat_template and "<|im_start|>" in smol_gguf.chat_template
    tc, ref = smol_gguf.tokenizer_config, smol_hf.tokenizer_config
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert tc[key] == ref[key], key
    assert tc["add_bos_token"] is False and tc["chat_template"] == smol_gguf.chat_template


# ------------------------------------------------------------------ tiny GGUFs, llama.cpp-style

GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
             "gemma2": "gemma2", "gemma3_text": "gemma3", "gpt2": "gpt2"}


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py ``LlamaModel.permute``."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_tiny_gguf(family: str, path, *, extra_meta=None, extra_tensors=None):
    folder = tiny_model_dir(family)
    cfg = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    arch = GGUF_ARCH[family]
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny {family}")
    if family == "gpt2":
        w.add_block_count(cfg["n_layer"])
        w.add_context_length(cfg["n_positions"])
        w.add_embedding_length(cfg["n_embd"])
        w.add_feed_forward_length(4 * cfg["n_embd"])
        w.add_head_count(cfg["n_head"])
        w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
        n_layers = cfg["n_layer"]
    else:
        rope = cfg["rope_parameters"]
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(cfg["num_attention_heads"])
        w.add_head_count_kv(cfg["num_key_value_heads"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_rope_freq_base(rope.get("full_attention", rope)["rope_theta"])
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        if family == "llama":
            w.add_rope_dimension_count(head_dim)
        if "sliding_window" in cfg and cfg["sliding_window"]:
            w.add_sliding_window(cfg["sliding_window"])
        if family == "gemma2":
            w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        if family == "gemma3_text":
            w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
            w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
        n_layers = cfg["num_hidden_layers"]
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    for key, value in (extra_meta or {}).items():
        w.add_uint32(f"{arch}.{key}", value)
    names = gguf.get_tensor_name_map(arch_enum, n_layers)
    for hf_name, value in tensors.items():
        base, suffix = hf_name.rsplit(".", 1)
        name = f"{names.get_name(base)}.{suffix}"
        value = value.astype(np.float32)
        if family == "llama" and ".attn_q." in name:
            value = llama_cpp_permute(value, cfg["num_attention_heads"], cfg["num_attention_heads"])
        if family == "llama" and ".attn_k." in name:
            value = llama_cpp_permute(value, cfg["num_attention_heads"], cfg["num_key_value_heads"])
        if family.startswith("gemma") and name.endswith("norm.weight"):
            value = value + 1
        if family == "gpt2" and hf_name.endswith(("attn.c_attn.weight", "attn.c_proj.weight",
                                                  "mlp.c_fc.weight", "mlp.c_proj.weight")):
            value = value.T
        w.add_tensor(name, np.ascontiguousarray(value))
    for name, value in (extra_tensors or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return folder, tensors


@pytest.mark.parametrize("family", sorted(GGUF_ARCH))
def test_tiny_gguf_round_trip(tmp_path, family):
    path = tmp_path / f"tiny-{family}.F32.gguf"
    folder, tensors = write_tiny_gguf(family, path)
    src, ref = open_source(path), open_source(folder)
    assert src.family == ref.family and src.name == f"tiny-{family}"
    assert set(src.keys()) == set(ref.keys())
    for key in ref.keys():
        a, b = src.tensor(key), ref.tensor(key)
        assert a.shape == b.shape == src.shape(key), key
        assert np.allclose(a, b, rtol=0, atol=1e-6), key
    a, b = dict(src.model_config), dict(ref.model_config)
    if family == "gemma2":
        # GGUF has no query_pre_attn_scalar; llama.cpp scales by 1/sqrt(head_dim)
        assert a.pop("query_pre_attn_scalar") == a["head_dim"]
        b.pop("query_pre_attn_scalar")
    for key in ("pad_token_id",):
        a.pop(key), b.pop(key)
    for key in ("norm_eps", "rms_norm_eps"):  # GGUF stores them as float32
        x, y = a.pop(key), b.pop(key)
        assert x == y or x == pytest.approx(y, rel=1e-7)
    assert a == b


def test_gguf_without_tokenizer_fails_on_use(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf("qwen2", path)
    src = open_source(path)
    src.tensor("embed_tokens.weight")
    with pytest.raises(SourceError, match="tokenizer model None"):
        _ = src.tokenizer_json


def test_gguf_refusals(tmp_path):
    path = tmp_path / "moe.gguf"
    write_tiny_gguf("qwen2", path, extra_meta={"expert_count": 8})
    with pytest.raises(UnsupportedArchitectureError, match="mixture-of-experts"):
        open_source(path)
    path = tmp_path / "rope.gguf"
    write_tiny_gguf("llama", path, extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(UnsupportedArchitectureError, match="rope_freqs"):
        open_source(path)
    path = tmp_path / "stray.gguf"
    write_tiny_gguf("llama", path, extra_tensors={"blk.0.mystery.weight": np.ones(4, np.float32)})
    with pytest.raises(UnsupportedArchitectureError, match="blk.0.mystery.weight"):
        open_source(path)


def test_gguf_unknown_architecture_and_garbage(tmp_path):
    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedArchitectureError) as err:
        open_source(path)
    assert "mamba" in str(err.value) and "llama" in err.value.supported
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(SourceError, match="bad.gguf"):
        open_source(bad)


# ------------------------------------------------------------------ SentencePiece GGUF tokenizers

SP_PIECES = ["▁", "t", "h", "e", "a", "i", "n", "g", "▁t", "he", "▁the", "▁a", "in", "▁in", "ing",
             "▁th", "▁thing", "▁▁", "▁▁▁", "s", "▁s", "th"]
SP_TEXTS = ["the thing  in a\n<|user|>the\t", "  leading", "thing", "é ü 中 🤖", "",
            "<s>the</s>", "<bos>thing<eos>", "a   a"]


def write_sentencepiece_gguf(arch: str, path, head: list[str]):
    tokens = head + [f"<0x{i:02X}>" for i in range(256)] + SP_PIECES + ["<|user|>", "\t", "   "]
    scores = [0.0] * (len(head) + 256) + [-float(i) for i in range(1, len(SP_PIECES) + 1)] \
        + [0.0] * 3
    types = [3] * len(head) + [6] * 256 + [1] * len(SP_PIECES) + [4, 1, 1]
    types[head.index("<unk>")] = 2
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e4)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    bos = head.index("<s>") if "<s>" in head else head.index("<bos>")
    eos = head.index("</s>") if "</s>" in head else head.index("<eos>")
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_unk_token_id(head.index("<unk>"))
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch, head", [("llama", ["<unk>", "<s>", "</s>"]),
                                        ("gemma3", ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])])
def test_sentencepiece_tokenizer_matches_transformers(tmp_path, arch, head):
    """A SentencePiece GGUF vocabulary rebuilds to what transformers makes of the same file."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path / f"sp-{arch}.gguf"
    write_sentencepiece_gguf(arch, path, head)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ref.save_pretrained(tmp_path / "ref")
    src = open_source(path)
    assert json.loads(src.tokenizer_json) == json.loads((tmp_path / "ref" / "tokenizer.json").read_text())
    ours = src.tokenizer()
    for text in SP_TEXTS:
        assert ours.encode(text).ids == ref(text).input_ids, text
    assert src.tokenizer_config["add_bos_token"] is True
    assert src.tokenizer_config["bos_token"] == ref.bos_token


def test_fast_reader_reads_what_the_gguf_package_reads():
    """The sped-up reader (lql.sources.gguf._reader_class) sees exactly the library's bytes."""
    import gguf

    from lql.sources.gguf import _reader_class
    path = str(smollm2_gguf())
    ref, fast = gguf.GGUFReader(path, "r"), _reader_class(gguf)(path, "r")
    assert type(fast) is not gguf.GGUFReader                # the fast path is in use here
    assert list(ref.fields) == list(fast.fields)
    for name, field in ref.fields.items():
        other = fast.fields[name]
        assert field.types == other.types and field.data == other.data, name
        assert all(np.array_equal(a, b) and a.dtype == b.dtype
                   for a, b in zip(field.parts, other.parts)), name
    assert [t.name for t in ref.tensors] == [t.name for t in fast.tensors]
    for a, b in zip(ref.tensors[::17], fast.tensors[::17]):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data)
