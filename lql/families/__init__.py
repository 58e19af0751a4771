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
from .base import LEVELS, ROLE_FILES, ROLES, Family, TensorSpec, level_index
from .gemma import Gemma, Gemma2, Gemma3
from .gpt2 import GPT2
from .hfconfig import SUPPORTED_ACTIVATIONS, SUPPORTED_ROPE_TYPES
from .llama import Llama, Mistral
from .qwen import Qwen2, Qwen3

#: every supported family, by name
FAMILIES: dict[str, Family] = {f.name: f for f in (Llama(), Mistral(), Qwen2(), Qwen3(), Gemma(),
                                                     Gemma2(), Gemma3(), GPT2())}

_BY_MODEL_TYPE = {mt: f for f in FAMILIES.values() for mt in f.model_types}
_BY_ARCHITECTURE = {a: f for f in FAMILIES.values() for a in f.architectures}


def supported() -> list[str]:
    """The Hugging Face ``model_type`` values that are supported."""
    return sorted(_BY_MODEL_TYPE)


def get_family(name: str) -> Family:
    """A family by its name or by any Hugging Face ``model_type`` it covers."""
    fam = FAMILIES.get(name) or _BY_MODEL_TYPE.get(name)
    if fam is None:
        raise UnsupportedArchitectureError(str(name), supported())
    return fam


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


def model_config_for(hf_config: dict) -> dict:
    """Shortcut: the normalised ``model_config`` of a ``config.json`` dict."""
    return family_for_config(hf_config).model_config(hf_config)


__all__ = ["FAMILIES", "Family", "TensorSpec", "LEVELS", "ROLES", "ROLE_FILES",
           "SUPPORTED_ROPE_TYPES", "SUPPORTED_ACTIVATIONS", "derive_bands", "family_for_config",
           "get_family", "level_index", "model_config_for", "supported"]
