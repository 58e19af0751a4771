"""What every architecture family description provides.

A :class:`Family` is pure description: no I/O. It turns a Hugging Face
``config.json`` dict into the normalised ``model_config`` (docs/ARCHITECTURE.md,
"model_config keys"), lists the tensors of a model of that family by their
normalised keys (Hugging Face names without the ``model.`` / ``transformer.``
prefix), says which tensors each extract level needs and which vindex file
they belong in, and maps back to Hugging Face names and ``config.json`` for
COMPILE INTO MODEL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .bands import derive_bands

#: extract levels, lowest first
LEVELS = ("browse", "inference", "all")

#: roles a tensor can play; ``file`` below is where a vindex stores each
ROLES = ("embed", "pos_embed", "gate", "up", "down", "ffn_bias", "attn", "norm", "lm_head")

#: the vindex file a tensor of each role belongs in (see docs/FAMILIES.md)
ROLE_FILES = {
    "embed": "embeddings.bin",
    "gate": "gate_vectors.bin",
    "up": "up_weights.bin",
    "down": "down_weights.bin",
    "attn": "attn_weights.bin",
    "pos_embed": "attn_weights.bin",
    "norm": "norms.bin",
    "lm_head": "lm_head.bin",
}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model: its normalised key, its role, the lowest extract
    level that needs it, the layer it belongs to (``None`` for global tensors)
    and the vindex file it is stored in."""

    key: str
    role: str
    level: str
    layer: int | None
    file: str


def level_index(level: str) -> int:
    try:
        return LEVELS.index(level.lower())
    except (ValueError, AttributeError):
        raise ValueError(f"unknown extract level {level!r}; levels: {', '.join(LEVELS)}") from None


class Family:
    """Base class of the family descriptions (one subclass per family)."""

    #: the family's name, as written in index.json ``family``
    name: str = ""
    #: Hugging Face ``model_type`` values this description covers
    model_types: tuple[str, ...] = ()
    #: Hugging Face ``architectures`` entries this description covers
    architectures: tuple[str, ...] = ()
    #: the prefix Hugging Face checkpoints put before the normalised keys
    hf_prefix: str = "model."
    #: other prefixes seen in the wild, stripped when reading (longest first)
    extra_prefixes: tuple[str, ...] = ()
    #: checkpoint keys that are not weights (buffers) or not ours (vision tower)
    ignored_prefixes: tuple[str, ...] = ()
    ignored_suffixes: tuple[str, ...] = ()
    #: layer bands known for a given layer count: {num_layers: {band: [lo, hi]}}
    known_bands: dict[int, dict[str, list[int]]] = {}
    #: the normalised key of the token embedding / final norm
    embed_key: str = "embed_tokens.weight"
    lm_head_key: str = "lm_head.weight"

    # ------------------------------------------------------------ config
    def model_config(self, hf_config: dict) -> dict:
        """The normalised ``model_config`` for a Hugging Face ``config.json`` dict.

        Raises :class:`~lql.errors.UnsupportedArchitectureError` for a config
        detail this family does not implement."""
        raise NotImplementedError

    def hf_config(self, model_config: dict) -> dict:
        """A ``config.json`` dict that ``transformers`` loads as this model."""
        raise NotImplementedError

    def embed_scale(self, model_config: dict) -> float:
        return float(model_config.get("embed_scale", 1.0))

    # ------------------------------------------------------------ tensors
    def layer_tensors(self, model_config: dict, layer: int) -> list[TensorSpec]:
        raise NotImplementedError

    def global_tensors(self, model_config: dict) -> list[TensorSpec]:
        raise NotImplementedError

    def tensors(self, model_config: dict, level: str = "all") -> list[TensorSpec]:
        """Every tensor a model of this config has that ``level`` needs
        (global tensors first, then layer by layer)."""
        upto = level_index(level)
        specs = list(self.global_tensors(model_config))
        for layer in range(model_config["num_layers"]):
            specs.extend(self.layer_tensors(model_config, layer))
        return [s for s in specs if level_index(s.level) <= upto]

    def keys(self, model_config: dict, level: str = "all") -> list[str]:
        return [s.key for s in self.tensors(model_config, level)]

    def gate_key(self, layer: int) -> str:
        raise NotImplementedError

    def up_key(self, layer: int) -> str | None:
        raise NotImplementedError

    def down_key(self, layer: int) -> str:
        raise NotImplementedError

    def num_features(self, model_config: dict, layer: int) -> int:
        return int(model_config["intermediate_size"])

    def gate_rows(self, weight: np.ndarray) -> np.ndarray:
        """Gate (FFN input) weight as stored → ``(num_features, hidden)`` rows."""
        return weight

    def gate_weight(self, rows: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`gate_rows`: rows → the weight as the checkpoint stores it."""
        return rows

    def down_columns(self, weight: np.ndarray) -> np.ndarray:
        """Down weight as stored → ``(hidden, num_features)``: column f is feature f's output."""
        return weight

    def down_weight(self, columns: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`down_columns`."""
        return columns

    # ------------------------------------------------------------ naming
    def normalise_key(self, hf_key: str) -> str | None:
        """A checkpoint key → normalised key, or ``None`` when it is not a weight
        of the language model (a buffer, a vision-tower tensor)."""
        if any(hf_key.startswith(p) for p in self.ignored_prefixes) or \
                any(hf_key.endswith(s) for s in self.ignored_suffixes):
            return None
        for prefix in self.extra_prefixes + (self.hf_prefix,):
            if prefix and hf_key.startswith(prefix):
                key = hf_key[len(prefix):]
                break
        else:
            key = hf_key
        if any(key.startswith(p) for p in self.ignored_prefixes) or \
                any(key.endswith(s) for s in self.ignored_suffixes):
            return None
        return key

    def hf_key(self, key: str) -> str:
        """Normalised key → the name ``transformers`` gives it in ``model.safetensors``."""
        if key == self.lm_head_key:
            return key
        return self.hf_prefix + key

    # ------------------------------------------------------------ bands
    def layer_bands(self, num_layers: int) -> dict[str, list[int]]:
        """Inclusive ``[lo, hi]`` layer ranges of the syntax / knowledge / output bands."""
        known = self.known_bands.get(num_layers)
        return {k: list(v) for k, v in known.items()} if known else derive_bands(num_layers)

    def bands_are_known(self, num_layers: int) -> bool:
        return num_layers in self.known_bands

    def __repr__(self) -> str:
        return f"<family {self.name}>"


def spec(key: str, role: str, level: str, layer: int | None, file: str | None = None) -> TensorSpec:
    return TensorSpec(key, role, level, layer, file or ROLE_FILES[role])


def sqrt_hidden(hidden: int) -> float:
    """Gemma's embedding scale.  ``transformers`` multiplies by the scale cast to the
    weight dtype; in float32 that is ``float32(sqrt(hidden))``."""
    return float(np.float32(math.sqrt(hidden)))
