"""What every architecture family description provides.

A :class:`Family` is pure description: no I/O. It is the one place that knows a
family: it turns a Hugging Face ``config.json`` dict (or GGUF metadata) into the
normalised ``model_config`` (docs/ARCHITECTURE.md, "model_config keys"),
including the computation flags ``lql.model`` runs on (:meth:`Family.model_flags`);
lists the tensors of a model of that family by their normalised keys (Hugging
Face names without the ``model.`` / ``transformer.`` prefix), with the GGUF names
and fix-ups behind them; says which tensors each extract level needs, which
vindex file they belong in, which the forward pass reads and which source
tensors are deliberately ignored; gives per-layer geometry; and maps back to
Hugging Face names and ``config.json`` for COMPILE INTO MODEL.

The interface a new family implements is listed in docs/FAMILIES.md,
"How to add a family".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedArchitectureError
from .bands import derive_bands, larql_bands

#: extract levels, lowest first
LEVELS = ("browse", "inference", "all")

#: roles a tensor can play; ``file`` below is where a vindex stores each
ROLES = ("embed", "pos_embed", "gate", "up", "down", "ffn_bias", "attn", "norm", "lm_head", "ple",
         "experts")

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
    "ple": "per_layer_embeddings.bin",     # per-layer embeddings (Gemma 4): table, projections, norms
    "experts": "expert_weights.bin",       # mixture-of-experts router and expert tensors
}

#: vindex files whose tensors a reader hands out in their storage dtype, memory-mapped
#: (never converted whole to float32; the per-layer embedding table is gathered per token)
RAW_FILES = ("per_layer_embeddings.bin",)


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


@dataclass(frozen=True)
class LayerGeometry:
    """The shapes of one layer: attention heads and FFN width."""

    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int


#: ``model_config["per_layer"]`` may hold a list (one value per layer) for these keys
PER_LAYER_KEYS = ("num_q_heads", "num_kv_heads", "head_dim", "intermediate_size")


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
    #: the family string LARQL writes for this family (``arch.family()``), for its band
    #: table; empty: the same as :attr:`name`
    larql_family: str = ""
    #: the normalised key of the token embedding / final norm
    embed_key: str = "embed_tokens.weight"
    lm_head_key: str = "lm_head.weight"
    #: GGUF ``general.architecture`` values read as this family
    gguf_architectures: tuple[str, ...] = ()
    #: GGUF metadata suffix (after ``<arch>.``) → Hugging Face config key
    gguf_config_keys: dict[str, str] = {}

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

    def model_flags(self, model_config: dict) -> dict:
        """The ``model_config`` keys that select ``lql.model``'s computation, with the
        values this family implies (``qkv_layout``, ``norm_type``, ``norm_offset``,
        ``activation``, ``position_embedding``, ``embed_scale``, ...).

        :meth:`model_config` writes them; :meth:`complete` fills them into a
        ``model_config`` written before a flag existed (old vindexes)."""
        return {}

    def complete(self, model_config: dict) -> dict:
        """A copy of ``model_config`` with every flag of :meth:`model_flags` it lacks
        (absent or ``None``) filled in.  Values already there win."""
        out = dict(model_config)
        for key, value in self.model_flags(out).items():
            if out.get(key) is None:
                out[key] = value
        return out

    # ------------------------------------------------------------ geometry
    def layer_geometry(self, model_config: dict, layer: int) -> LayerGeometry:
        """Heads, head size and FFN width of ``layer``: the model-wide values, or the
        layer's entry in ``model_config["per_layer"][key]`` (a list, one per layer)."""
        mc = model_config
        per_layer = mc.get("per_layer") or {}
        n_q = int(mc["num_q_heads"])
        values = {"num_q_heads": n_q, "num_kv_heads": int(mc.get("num_kv_heads") or n_q),
                  "head_dim": int(mc.get("head_dim") or int(mc["hidden_size"]) // n_q),
                  "intermediate_size": int(mc["intermediate_size"])}
        for key in PER_LAYER_KEYS:
            if per_layer.get(key) is not None:
                values[key] = int(per_layer[key][layer])
        return LayerGeometry(**values)

    # ------------------------------------------------------------ tensors
    def layer_tensors(self, model_config: dict, layer: int) -> list[TensorSpec]:
        raise NotImplementedError

    def global_tensors(self, model_config: dict) -> list[TensorSpec]:
        raise NotImplementedError

    def extra_tensors(self, model_config: dict) -> list[TensorSpec]:
        """Tensors outside the per-role vindex files (e.g. per-layer embeddings), each
        with its own ``file``; the extractor writes them, like every spec, to that file
        and the weight manifest.  None for the families here."""
        return []

    def tensors(self, model_config: dict, level: str = "all") -> list[TensorSpec]:
        """Every tensor a model of this config has that ``level`` needs
        (global tensors first, then layer by layer, then :meth:`extra_tensors`)."""
        upto = level_index(level)
        specs = list(self.global_tensors(model_config))
        for layer in range(model_config["num_layers"]):
            specs.extend(self.layer_tensors(model_config, layer))
        specs.extend(self.extra_tensors(model_config))
        return [s for s in specs if level_index(s.level) <= upto]

    def keys(self, model_config: dict, level: str = "all") -> list[str]:
        return [s.key for s in self.tensors(model_config, level)]

    def forward_keys(self, model_config: dict) -> list[str]:
        """The tensors the forward pass reads (``lql.model``'s layout for this
        config's flags reads exactly these; tests/test_families.py checks it)."""
        return self.keys(model_config, "inference")

    def ignores(self, key: str) -> bool:
        """True for a source tensor (normalised or checkpoint name) this family
        deliberately does not read: buffers, vision towers."""
        return any(key.startswith(p) for p in self.ignored_prefixes) or \
            any(key.endswith(s) for s in self.ignored_suffixes)

    def ignores_for(self, model_config: dict, key: str) -> bool:
        """:meth:`ignores`, plus rules that depend on the config (Gemma 4: the k/v
        tensors a checkpoint may ship on layers that reuse another layer's keys)."""
        return self.ignores(key)

    def unclaimed(self, model_config: dict, keys) -> list[str]:
        """Source keys that are neither a tensor of :meth:`tensors` nor ignored by an
        explicit rule (the extractor refuses these instead of dropping them silently).
        ``lm_head.weight`` of a tied model is claimed: it is the embedding."""
        claimed = set(self.keys(model_config, "all")) | {self.lm_head_key}
        return sorted(k for k in keys if k not in claimed and not self.ignores_for(model_config, k))

    # the FFN keys: Hugging Face's gated-MLP names by default (a family that names its FFN
    # otherwise, GPT-2, overrides them)
    def gate_key(self, layer: int) -> str:
        return f"layers.{layer}.mlp.gate_proj.weight"

    def up_key(self, layer: int) -> str | None:
        return f"layers.{layer}.mlp.up_proj.weight"

    def down_key(self, layer: int) -> str:
        return f"layers.{layer}.mlp.down_proj.weight"

    def expert_keys(self, model_config: dict, layer: int) -> tuple[str, str] | None:
        """The layer's stacked expert tensors ``(gate_up [E, 2I, hidden], down [E, hidden, I])``
        when it has a mixture-of-experts branch, else ``None`` (no family but Gemma 4 has one)."""
        return None

    def gate_key_pattern(self) -> str:
        """:meth:`gate_key` with ``{layer}`` for the layer number (index.json ``weight_keys``)."""
        return self.gate_key(987654).replace("987654", "{layer}")

    def gate_is_transposed(self) -> bool:
        """True when :meth:`gate_rows` transposes the stored weight (GPT-2's Conv1D)."""
        probe = np.zeros((2, 3), np.float32)
        return self.gate_rows(probe).shape != probe.shape

    def num_features(self, model_config: dict, layer: int) -> int:
        per_layer = (model_config.get("per_layer") or {}).get("intermediate_size")
        return int(per_layer[layer] if per_layer is not None else model_config["intermediate_size"])

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
        if self.ignores(hf_key):
            return None
        for prefix in self.extra_prefixes + (self.hf_prefix,):
            if prefix and hf_key.startswith(prefix):
                key = hf_key[len(prefix):]
                break
        else:
            key = hf_key
        if self.ignores(key):
            return None
        return key

    def hf_key(self, key: str) -> str:
        """Normalised key → the name ``transformers`` gives it in ``model.safetensors``."""
        if key == self.lm_head_key:
            return key
        return self.hf_prefix + key

    # ------------------------------------------------------------ GGUF
    def gguf_config(self, arch: str, meta: dict, tensor_names: set[str], cfg: dict) -> None:
        """Family-specific ``config.json`` keys from GGUF metadata, added to ``cfg``
        (which already holds :attr:`gguf_config_keys`, vocabulary, tying and token ids)."""

    #: GGUF tensors whose values :meth:`gguf_config` reads (passed in ``meta`` as
    #: ``"tensor:<name>"``); e.g. Gemma 4's ``rope_freqs.weight``
    gguf_config_tensors: tuple[str, ...] = ()

    def gguf_check(self, arch: str, meta: dict, tensor_names: set[str]) -> None:
        """Refuse GGUF content this family does not read (default: MoE layers and
        ``rope_freqs`` tensors, which no Llama-style family here implements)."""
        if meta.get(f"{arch}.expert_count"):
            raise gguf_refusal(arch, "mixture-of-experts layers")
        if "rope_freqs.weight" in tensor_names:
            raise gguf_refusal(arch, "rope_freqs (llama3-style RoPE scaling stored as a tensor)")

    def gguf_tensor_name(self, key: str, name_map) -> str | None:
        """The GGUF tensor name of a normalised key, via gguf's ``TensorNameMap``
        (``None``: no GGUF name)."""
        base, suffix = self.hf_key(key).rsplit(".", 1)
        gguf_base = name_map.get_name(base)
        return None if gguf_base is None else f"{gguf_base}.{suffix}"

    def gguf_ignores(self, gguf_name: str) -> bool:
        """True for a GGUF tensor deliberately not read (derived data llama.cpp adds)."""
        return False

    def gguf_permute_heads(self, gguf_name: str, cfg: dict) -> int | None:
        """Heads to undo llama.cpp's Q/K row permutation by, or ``None``."""
        return None

    def gguf_norm_shift(self, gguf_name: str) -> float:
        """What llama.cpp's converter added to this tensor (subtracted when read)."""
        return 0.0

    def gguf_transposed(self, gguf_name: str) -> bool:
        """True when llama.cpp stored this tensor transposed relative to Hugging Face."""
        return False

    # ------------------------------------------------------------ bands
    def layer_bands(self, num_layers: int) -> dict[str, list[int]]:
        """Inclusive ``[lo, hi]`` layer ranges of the syntax / knowledge / output bands:
        this family's own table, else LARQL's table (:data:`lql.families.bands.LARQL_BANDS`),
        else derived from the layer count by LARQL's fallback rule."""
        known = self.known_bands.get(num_layers) or larql_bands(self.larql_family or self.name,
                                                                num_layers)
        return {k: list(v) for k, v in known.items()} if known else derive_bands(num_layers)

    def bands_are_known(self, num_layers: int) -> bool:
        return num_layers in self.known_bands or \
            larql_bands(self.larql_family or self.name, num_layers) is not None

    def __repr__(self) -> str:
        return f"<family {self.name}>"


def spec(key: str, role: str, level: str, layer: int | None, file: str | None = None) -> TensorSpec:
    return TensorSpec(key, role, level, layer, file or ROLE_FILES[role])


def gguf_refusal(arch: str, detail: str = "") -> UnsupportedArchitectureError:
    """The error for a GGUF detail no family here implements."""
    from . import gguf_architectures  # the registry; imported late (it imports the families)
    name = f"{arch} GGUF" + (f" with {detail}" if detail else "")
    return UnsupportedArchitectureError(name, gguf_architectures())


def sqrt_hidden(hidden: int) -> float:
    """Gemma's embedding scale.  ``transformers`` multiplies by the scale cast to the
    weight dtype; in float32 that is ``float32(sqrt(hidden))``."""
    return float(np.float32(math.sqrt(hidden)))
