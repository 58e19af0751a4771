"""GGUF → Hugging Face ``config.json`` dict, and llama.cpp's per-tensor changes undone.

Family knowledge lives in the family modules (``lql/families``): which GGUF
``general.architecture`` a family reads (``Family.gguf_architectures``), its
metadata → config.json keys (``gguf_config_keys``, ``gguf_config``), and the
fix-ups llama.cpp's ``convert_hf_to_gguf.py`` applied that must be undone:
Q/K row permutation (Llama: ``gguf_permute_heads``, undone by
:func:`reverse_permute` as ``transformers``' ``LlamaTensorProcessor`` does),
``+1`` folded into norm weights (Gemmas: ``gguf_norm_shift``), and transposed
``Conv1D`` weights (GPT-2: ``gguf_transposed``).  This module holds only what is
the same for every architecture.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedArchitectureError
from ..families import Family, family_for_gguf, gguf_architectures

#: metadata that changes the computation in ways no family here implements
_REFUSED_KEYS = ("attention.scale", "logit_scale", "embedding_scale", "residual_scale",
                 "attention.clamp_kqv", "attention.max_alibi_bias", "use_parallel_residual",
                 "attention.temperature_scale")


def unsupported(arch: str, detail: str = "") -> UnsupportedArchitectureError:
    name = f"{arch} GGUF" + (f" with {detail}" if detail else "")
    return UnsupportedArchitectureError(name, gguf_architectures())


def family_of_gguf(arch: str) -> Family:
    """The family that reads GGUFs of ``general.architecture`` ``arch``."""
    return family_for_gguf(arch)


def hf_config_from_gguf(arch: str, meta: dict, tensor_names: set[str],
                        embed_shape: tuple[int, ...]) -> dict:
    """A Hugging Face ``config.json`` dict for a GGUF (the way ``transformers``
    builds one when loading a GGUF), refusing what we cannot map."""
    fam = family_for_gguf(arch)
    fam.gguf_check(arch, meta, tensor_names)
    for suffix in _REFUSED_KEYS:
        if meta.get(f"{arch}.{suffix}") not in (None, 0, False):
            raise unsupported(arch, f"{arch}.{suffix}={meta[f'{arch}.{suffix}']!r}")
    cfg: dict = {"model_type": fam.model_types[0]}
    for suffix, key in fam.gguf_config_keys.items():
        value = meta.get(f"{arch}.{suffix}")
        if value is None:
            continue
        if isinstance(value, list):  # per-layer values (e.g. head_count_kv)
            if len(set(value)) != 1:
                raise unsupported(arch, f"per-layer {suffix} {sorted(set(value))}")
            value = value[0]
        cfg[key] = value
    cfg["vocab_size"] = int(embed_shape[0])
    cfg["tie_word_embeddings"] = "output.weight" not in tensor_names
    for gguf_key, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                          ("padding_token_id", "pad_token_id")):
        value = meta.get(f"tokenizer.ggml.{gguf_key}")
        if value is not None:
            cfg[key] = int(value)
    eot = meta.get("tokenizer.ggml.eot_token_id")
    if eot is not None and cfg.get("eos_token_id") is not None and int(eot) != cfg["eos_token_id"]:
        cfg["eos_token_id"] = [cfg["eos_token_id"], int(eot)]
    fam.gguf_config(arch, meta, tensor_names, cfg)
    return cfg


def reverse_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's ``permute(w, n_head, n_head_kv)`` on Q (``n_head``) or K
    (``n_head_kv``) projection rows (weights or biases)."""
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)
