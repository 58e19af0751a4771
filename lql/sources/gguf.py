"""A ``.gguf`` file (llama.cpp), read with the ``gguf`` package: memory-mapped,
one tensor dequantised at a time, renamed to the normalised Hugging Face keys
with llama.cpp's layout changes undone (see :mod:`lql.sources.gguf_arch`)."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelSource, SourceError
from .gguf_arch import family_of_gguf, hf_config_from_gguf, reverse_permute, unsupported

_QUANT_SUFFIX = re.compile(r"[.\-_](I?Q\d\w*|F16|F32|BF16|FP16|FP32)$", re.IGNORECASE)
_BIG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
               "tokenizer.ggml.scores")


def _reader_class(gguf: Any) -> Any:
    """``gguf.GGUFReader``, sped up where its internals are the ones we know.

    The reader slices its ``np.memmap`` once per metadata value; each slice is a new
    ``memmap`` object, whose bookkeeping makes opening SmolLM2 (a 49k-entry
    vocabulary, ~250k slices) take ~4 s.  Slicing a plain ``ndarray`` view of the same
    mapping gives the same bytes in ~1 s.  Only ``_get`` is overridden, and only when
    the installed reader has the ``_get``/``data``/``byte_order`` members it relies on
    (gguf 0.10 - 0.19); otherwise the reader is used unchanged."""
    base: Any = gguf.GGUFReader
    if not all(hasattr(base, name) for name in ("_get", "_build_fields")):
        return base

    class FastReader(base):  # a subclass of whatever GGUFReader the installed gguf has
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain_data")
            if plain is None:
                plain = self._plain_data = self.data.view(np.ndarray)
            count = int(count)
            arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            order = self.byte_order if override_order is None else override_order
            return arr.view(arr.dtype.newbyteorder(order))

    return FastReader


class GgufSource(ModelSource):
    format = "gguf"

    def __init__(self, path):
        import gguf

        path = Path(path)
        self.path = path
        try:
            self._reader = _reader_class(gguf)(str(path), "r")
        except (ValueError, OSError, IndexError, KeyError) as exc:
            raise SourceError(f"{path} is not a readable GGUF file ({exc})", path) from None
        self._gguf = gguf
        meta = {}
        for key, field in self._reader.fields.items():
            if key in _BIG_ARRAYS:
                continue
            try:
                meta[key] = field.contents()
            except Exception:  # an exotic field type we do not need
                continue
        self.meta = meta
        if int(meta.get("split.count", 1) or 1) > 1:
            raise SourceError(f"{path} is one part of a split GGUF; merge the parts first "
                              "(llama.cpp's gguf-split --merge)", path)
        arch = str(meta.get("general.architecture"))
        self.arch = arch
        self.family_spec = family_of_gguf(str(arch))

        self._tensors = {t.name: t for t in self._reader.tensors}
        embed = self._tensors.get("token_embd.weight")
        if embed is None:
            raise SourceError(f"{path} has no token_embd.weight tensor", path)
        for name in self.family_spec.gguf_config_tensors:  # tensors the config is read from
            if name in self._tensors:
                meta[f"tensor:{name}"] = self._dequantise(self._tensors[name])
        self.hf_config = hf_config_from_gguf(arch, meta, set(self._tensors),
                                             tuple(int(d) for d in reversed(embed.shape)))
        self.model_config = self.family_spec.model_config(self.hf_config)
        self.name = self._model_name()
        self._names = self._map_names()

    # ---------------------------------------------------------------- naming
    def _model_name(self) -> str:
        stem = _QUANT_SUFFIX.sub("", self.path.stem)
        org = self.meta.get("general.organization")
        return f"{org}/{stem}" if org else stem

    def _map_names(self) -> dict[str, str]:
        """normalised key → GGUF tensor name, for every tensor of the file."""
        gguf, fam, mc = self._gguf, self.family_spec, self.model_config
        arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == self.arch)
        name_map = gguf.get_tensor_name_map(arch_enum, mc["num_layers"])
        by_gguf: dict[str, str] = {}
        wanted = fam.keys(mc, "all")
        if fam.lm_head_key not in wanted:
            wanted.append(fam.lm_head_key)  # an untied head in a file says tied=False anyway
        for key in wanted:
            name = fam.gguf_tensor_name(key, name_map)
            if name is not None:
                by_gguf[name] = key
        unknown = sorted(n for n in set(self._tensors) - set(by_gguf) if not fam.gguf_ignores(n))
        if unknown:
            shown = ", ".join(unknown[:6]) + (" …" if len(unknown) > 6 else "")
            raise unsupported(self.arch, f"tensors this reader does not map: {shown}")
        return {key: name for name, key in by_gguf.items() if name in self._tensors}

    # ---------------------------------------------------------------- tensors
    def _keys(self) -> list[str]:
        return list(self._names)

    def gguf_name(self, key: str) -> str:
        """The GGUF tensor name behind a normalised key."""
        return self._names[self._resolve(key)]

    def _shape(self, key: str):
        name = self._names[key]
        shape = tuple(int(d) for d in reversed(self._tensors[name].shape))
        return shape[::-1] if self.family_spec.gguf_transposed(name) else shape

    def _dequantise(self, t) -> np.ndarray:
        shape = tuple(int(d) for d in reversed(t.shape))
        try:
            w = self._gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise SourceError(f"{self.path}: tensor {t.name} uses quantisation "
                              f"{t.tensor_type.name}, which the gguf package cannot dequantise",
                              self.path) from None
        return np.array(w, dtype=np.float32, copy=True).reshape(shape)

    def _read(self, key: str) -> np.ndarray:
        name = self._names[key]
        w = self._dequantise(self._tensors[name])
        fam = self.family_spec
        heads = fam.gguf_permute_heads(name, self.hf_config)
        if heads is not None:
            w = np.ascontiguousarray(reverse_permute(w, heads))
        shift = fam.gguf_norm_shift(name)
        if shift:
            w -= np.float32(shift)
        if fam.gguf_transposed(name):
            w = np.ascontiguousarray(w.T)
        return w

    # ---------------------------------------------------------------- tokenizer
    def _array(self, key: str):
        field = self._reader.fields.get(key)
        return None if field is None else field.contents()

    @cached_property
    def _tokenizer_parts(self) -> tuple[str, dict]:
        from .gguf_tokenizer import build_tokenizer
        meta = dict(self.meta)
        for key in _BIG_ARRAYS:
            meta[key] = self._array(key)
        return build_tokenizer(meta, str(self.path))

    @property
    def tokenizer_json(self) -> str:
        """A Hugging Face ``tokenizer.json`` rebuilt from the GGUF vocabulary (built on
        first use; raises :class:`SourceError` for a vocabulary type it cannot rebuild)."""
        return self._tokenizer_parts[0]

    @property
    def tokenizer_config(self) -> dict:
        return dict(self._tokenizer_parts[1])

    @property
    def chat_template(self) -> str | None:
        return self.meta.get("tokenizer.chat_template")

    @property
    def provenance(self) -> dict:
        return {**super().provenance, "gguf_file_type": self.meta.get("general.file_type"),
                "general_name": self.meta.get("general.name")}

    def close(self) -> None:
        self._tensors = {}
        self._reader = None
