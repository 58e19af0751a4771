"""``ModelSource``: a source model (Hugging Face folder or GGUF file) seen through
normalised keys, one tensor at a time, as float32."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import LqlError, MissingTensorError
from ..families import Family


class SourceError(LqlError):
    """A source model that cannot be read: a missing, truncated or corrupt file
    (``.path`` names it), or content the reader does not understand."""

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        super().__init__(message)


class ModelSource:
    """Base of :class:`~lql.sources.hf.HfSource` and :class:`~lql.sources.gguf.GgufSource`.

    Attributes: ``path``, ``name`` (model name for index.json), ``format``
    (``"safetensors"`` | ``"gguf"``), ``family`` (family name), ``family_spec``
    (the :class:`~lql.families.Family`), ``hf_config`` (config.json dict; for a
    GGUF the one built from its metadata), ``model_config`` (normalised),
    ``tokenizer_json`` (str), ``tokenizer_config`` (dict), ``chat_template``
    (str | None).

    ``keys()`` lists normalised keys (Hugging Face names without the leading
    ``model.`` / ``transformer.``).  ``tensor(key)`` reads one tensor as a new
    float32 array.  With tied embeddings ``lm_head.weight`` is not listed, but
    ``tensor("lm_head.weight")`` resolves to the embedding.
    """

    path: Path
    name: str
    format: str
    family_spec: Family
    hf_config: dict
    model_config: dict
    _tokenizer_json: str | None = None
    _tokenizer_config: dict | None = None
    _chat_template: str | None = None

    # ---- tokenizer files (a subclass sets the private values, or overrides the property)
    @property
    def tokenizer_json(self) -> str | None:
        """The Hugging Face ``tokenizer.json`` text (``None``: the source has none)."""
        return self._tokenizer_json

    @property
    def tokenizer_config(self) -> dict:
        return dict(self._tokenizer_config or {})

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    # ---- implemented by subclasses
    def _keys(self) -> list[str]:
        raise NotImplementedError

    def _read(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def _shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    # ---- public
    @property
    def family(self) -> str:
        return self.family_spec.name

    def keys(self) -> list[str]:
        return list(self._keys())

    def __contains__(self, key) -> bool:
        return key in self._key_set

    @cached_property
    def _key_set(self) -> frozenset:
        return frozenset(self._keys())

    def _resolve(self, key: str) -> str:
        if key in self._key_set:
            return key
        fam = self.family_spec
        if key == fam.lm_head_key and self.model_config.get("tie_word_embeddings") \
                and fam.embed_key in self._key_set:
            return fam.embed_key
        raise MissingTensorError([key], str(self.path))

    def tensor(self, key: str) -> np.ndarray:
        """One tensor by normalised key, as float32 (a fresh array)."""
        return self._read(self._resolve(key))

    def tensor_rows(self, key: str, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of a tensor as float32 (a folder source reads just those rows;
        this default reads the tensor whole)."""
        return self.tensor(key)[lo:hi]

    def shape(self, key: str) -> tuple[int, ...]:
        """A tensor's shape without reading it."""
        return tuple(self._shape(self._resolve(key)))

    def missing_keys(self, level: str = "inference") -> list[str]:
        """Keys the family needs at ``level`` that this source lacks."""
        return [k for k in self.family_spec.keys(self.model_config, level) if k not in self._key_set]

    def require(self, level: str = "inference") -> None:
        """Raise :class:`MissingTensorError` naming every tensor ``level`` needs that is absent."""
        missing = self.missing_keys(level)
        if missing:
            raise MissingTensorError(missing, str(self.path))

    @cached_property
    def weights(self) -> SourceWeights:
        """A read-only mapping key → float32 tensor that keeps what it has read."""
        return SourceWeights(self)

    def tokenizer(self):
        """The tokenizer as a ``tokenizers.Tokenizer``."""
        from tokenizers import Tokenizer
        text = self.tokenizer_json
        if text is None:
            raise SourceError(f"{self.path} has no tokenizer", self.path)
        return Tokenizer.from_str(text)

    # ---- shortcuts
    @property
    def num_layers(self) -> int:
        return self.model_config["num_layers"]

    @property
    def hidden_size(self) -> int:
        return self.model_config["hidden_size"]

    @property
    def intermediate_size(self) -> int:
        return self.model_config["intermediate_size"]

    @property
    def vocab_size(self) -> int:
        return self.model_config["vocab_size"]

    @property
    def embed_scale(self) -> float:
        return self.model_config["embed_scale"]

    @property
    def layer_bands(self) -> dict[str, list[int]]:
        return self.family_spec.layer_bands(self.num_layers)

    @property
    def provenance(self) -> dict:
        """What index.json's ``source`` can record about where this came from."""
        return {"path": str(self.path), "format": self.format}

    def close(self) -> None:
        """Drop cached tensors and file handles (the source is unusable afterwards)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.family}) at {self.path}>"


class SourceWeights(Mapping):
    """``source.weights``: key → float32 tensor, read once and kept."""

    def __init__(self, source: ModelSource):
        self._source = source
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        arr = self._cache.get(key)
        if arr is None:
            arr = self._source.tensor(key)
            arr.setflags(write=False)
            self._cache[key] = arr
        return arr

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __contains__(self, key) -> bool:
        try:
            self._source._resolve(key)
        except MissingTensorError:
            return False
        return True

    def __iter__(self):
        return iter(self._source.keys())

    def __len__(self) -> int:
        return len(self._source.keys())

    def clear(self) -> None:
        self._cache.clear()
