"""Architecture families: one explicit description per supported family.

>>> fam = family_for_config(json.load(open("config.json")))
>>> mc = fam.model_config(hf_config)          # normalised model_config
>>> fam.keys(mc, "browse")                     # tensors a BROWSE extract needs
>>> fam.gate_rows(source.tensor(fam.gate_key(3)))   # (num_features, hidden)

See docs/FAMILIES.md for what each family maps and its caveats.
"""

from __future__ import annotations

from ..errors import UnsupportedArchitectureError
from .bands import derive_bands
from .base import LEVELS, ROLE_FILES, ROLES, Family, LayerGeometry, TensorSpec, level_index
from .gemma import Gemma, Gemma2, Gemma3
from .gemma4 import Gemma4
from .gpt2 import GPT2
from .hfconfig import SUPPORTED_ACTIVATIONS, SUPPORTED_ROPE_TYPES
from .llama import Llama, Mistral
from .qwen import Qwen2, Qwen3

#: every supported family, by name
FAMILIES: dict[str, Family] = {f.name: f for f in (Llama(), Mistral(), Qwen2(), Qwen3(), Gemma(),
                                                     Gemma2(), Gemma3(), GPT2(), Gemma4())}  # Gemma4: temporary (g4s)

_BY_MODEL_TYPE = {mt: f for f in FAMILIES.values() for mt in f.model_types}
_BY_ARCHITECTURE = {a: f for f in FAMILIES.values() for a in f.architectures}
_BY_GGUF_ARCH = {a: f for f in FAMILIES.values() for a in f.gguf_architectures}
#: the family a name-less description (no family, no model_type) is read as
DEFAULT_FAMILY = "llama"


def supported() -> list[str]:
    """The Hugging Face ``model_type`` values that are supported."""
    return sorted(_BY_MODEL_TYPE)


def get_family(name: str) -> Family:
    """A family by its name or by any Hugging Face ``model_type`` it covers."""
    fam = FAMILIES.get(name) or _BY_MODEL_TYPE.get(name)
    if fam is None:
        raise UnsupportedArchitectureError(str(name), supported())
    return fam


def family_or_default(name: str | None) -> Family:
    """The family of ``name`` (a family name or ``model_type``); the default
    (Llama-style) family for a description that names none we know."""
    fam = FAMILIES.get(name or "") or _BY_MODEL_TYPE.get(name or "")
    return fam if fam is not None else FAMILIES[DEFAULT_FAMILY]


def family_for_config(hf_config: dict) -> Family:
    """The family of a Hugging Face ``config.json`` dict (by ``model_type``, else by
    ``architectures``)."""
    model_type = hf_config.get("model_type")
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    if not model_type:
        for arch in hf_config.get("architectures") or ():
            if arch in _BY_ARCHITECTURE:
                return _BY_ARCHITECTURE[arch]
    shown = model_type or ", ".join(hf_config.get("architectures") or ()) or "<no model_type>"
    raise UnsupportedArchitectureError(str(shown), supported())


def gguf_architectures() -> list[str]:
    """The GGUF ``general.architecture`` values that are supported."""
    return sorted(_BY_GGUF_ARCH)


def family_for_gguf(arch: str) -> Family:
    """The family of a GGUF ``general.architecture``."""
    fam = _BY_GGUF_ARCH.get(arch)
    if fam is None:
        raise UnsupportedArchitectureError(f"{arch} GGUF", gguf_architectures())
    return fam


def complete_model_config(model_config: dict) -> dict:
    """A ``model_config`` with every computation flag ``lql.model`` reads.

    The one place where a ``model_config`` written before a flag existed (an older
    vindex's index.json) gets it: from the family its ``model_type`` names (see
    :meth:`Family.model_flags`).  Raises :class:`UnsupportedArchitectureError` for a
    ``model_type`` no family covers."""
    model_type = model_config.get("model_type")
    fam = _BY_MODEL_TYPE.get(model_type)  # type: ignore[arg-type]
    if fam is None:
        raise UnsupportedArchitectureError(str(model_type), supported())
    return fam.complete(model_config)


def model_config_for(hf_config: dict) -> dict:
    """Shortcut: the normalised ``model_config`` of a ``config.json`` dict."""
    return family_for_config(hf_config).model_config(hf_config)


__all__ = ["DEFAULT_FAMILY", "FAMILIES", "Family", "LayerGeometry", "TensorSpec", "LEVELS",
           "ROLES", "ROLE_FILES", "SUPPORTED_ROPE_TYPES", "SUPPORTED_ACTIVATIONS",
           "complete_model_config", "derive_bands", "family_for_config", "family_for_gguf",
           "family_or_default", "get_family", "gguf_architectures", "level_index", "model_config_for", "supported"]
