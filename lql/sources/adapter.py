"""A PEFT LoRA adapter merged into a source model at load: ``AdapterSource(base, dir)``.

``USE MODEL "<source>" WITH ADAPTER "<peft dir>"`` and ``EXTRACT ... WITH ADAPTER`` both
wrap the opened :class:`~lql.sources.base.ModelSource` in one: every tensor an adapter
module targets is read as ``W + scaling · B · A`` (float32), the rest pass through.

* ``adapter_config.json``: ``peft_type`` LORA, ``r``, ``lora_alpha``; ``scaling`` is
  ``lora_alpha / r``, or ``lora_alpha / √r`` with ``use_rslora``; ``target_modules`` a list
  (a module matches when its name equals an entry or ends with ``.<entry>``) or a string (a
  full-match regular expression on the module name) — peft's rules.
* ``adapter_model.safetensors``: ``base_model.model.<module>.lora_A.weight`` ``[r, in]`` and
  ``.lora_B.weight`` ``[out, r]``; ``<module>.weight`` is mapped to our key by the family
  (``normalise_key``, which strips ``model.`` / ``model.language_model.``).
* Refused with a clear error: an adapter module the model does not have, a module the
  config's ``target_modules`` does not name, a model module the targets name with no
  weights in the file, shape mismatches, and options this merge does not implement
  (DoRA, ``bias`` other than ``"none"``, ``modules_to_save``, ``fan_in_fan_out``,
  ``rank_pattern`` / ``alpha_pattern``, ``layers_to_transform``, embedding LoRA, a
  ``.bin`` checkpoint — that needs torch).
* ``nla_meta.yaml`` beside the adapter (an activation-verbaliser's metadata) is read as
  simple ``key: value`` lines into ``adapter_meta`` (no YAML library: nested YAML is not
  parsed); INJECT reads its ``injection_scale``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelSource, SourceError
from .safetensors_io import SafetensorsReader

__all__ = ["AdapterSource", "AdapterError", "with_adapter", "read_simple_yaml", "target_matches"]

_PREFIX = "base_model.model."


class AdapterError(SourceError):
    """A LoRA adapter that cannot be merged into the model in use."""


def target_matches(targets: str | list[str], module: str) -> bool:
    """peft's rule: a string is a full-match regex; a list matches exact names or suffixes."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def read_simple_yaml(path: Path) -> dict[str, Any]:
    """``key: value`` lines (comments and blank lines skipped; numbers, booleans and quoted
    strings converted; anything indented or nested ignored)."""
    out: dict[str, Any] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#") or line[:1].isspace() or ":" not in line:
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if not value:
            continue
        out[key.strip()] = _scalar(value)
    return out


def _scalar(value: str) -> Any:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~"):
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise AdapterError(f"{folder} has no adapter_config.json (not a PEFT adapter folder)", path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"cannot read {path}: {exc}", path) from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{path} does not hold a JSON object", path)
    return cfg


def _check_options(cfg: dict[str, Any], path: Path) -> None:
    kind = str(cfg.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise AdapterError(f"adapter type {kind} is not supported (only LoRA adapters merge)", path)
    refused = []
    if cfg.get("use_dora"):
        refused.append("use_dora (DoRA)")
    if str(cfg.get("bias", "none")).lower() != "none":
        refused.append(f"bias = {cfg.get('bias')!r} (only \"none\")")
    if cfg.get("modules_to_save"):
        refused.append(f"modules_to_save {cfg.get('modules_to_save')!r}")
    if cfg.get("fan_in_fan_out"):
        refused.append("fan_in_fan_out")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        refused.append("rank_pattern / alpha_pattern (per-module ranks)")
    if cfg.get("layers_to_transform") is not None:
        refused.append("layers_to_transform")
    if refused:
        raise AdapterError(f"{path}: unsupported PEFT option(s): {'; '.join(refused)}", path)


class AdapterSource(ModelSource):
    """``base`` with the LoRA adapter in ``folder`` merged (see the module docstring)."""

    def __init__(self, base: ModelSource, folder: str | Path):
        folder = Path(folder)
        if not folder.is_dir():
            raise AdapterError(f"no such adapter folder: {folder}", folder)
        self.base = base
        self.adapter_path = folder
        cfg = _read_config(folder)
        cfg_path = folder / "adapter_config.json"
        _check_options(cfg, cfg_path)
        self.adapter_config = cfg
        try:
            r = int(cfg["r"])
            alpha = float(cfg.get("lora_alpha", r))
        except (KeyError, TypeError, ValueError):
            raise AdapterError(f"{cfg_path}: needs an integer r and a number lora_alpha", cfg_path) from None
        if r <= 0:
            raise AdapterError(f"{cfg_path}: r must be positive, not {r}", cfg_path)
        self.rank = r
        self.scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        targets = cfg.get("target_modules")
        if not isinstance(targets, (str, list)) or not targets:
            raise AdapterError(f"{cfg_path}: target_modules must be a list of names or a regex string",
                               cfg_path)
        self.target_modules = targets

        # base attributes, seen through this wrapper
        self.path = base.path
        self.name = base.name
        self.format = base.format
        self.family_spec = base.family_spec
        self.hf_config = base.hf_config
        self.model_config = base.model_config
        meta = folder / "nla_meta.yaml"
        self.adapter_meta: dict[str, Any] = read_simple_yaml(meta) if meta.is_file() else {}
        self._pairs = self._read_pairs(folder)

    # ---- reading the adapter
    def _read_pairs(self, folder: Path) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
        st = folder / "adapter_model.safetensors"
        if not st.is_file():
            if (folder / "adapter_model.bin").is_file():
                raise AdapterError(f"{folder}/adapter_model.bin is a torch pickle; convert it where "
                                   "torch is installed: python -c \"import torch; from safetensors.torch "
                                   "import save_file; save_file(torch.load('adapter_model.bin'), "
                                   "'adapter_model.safetensors')\"", folder)
            raise AdapterError(f"{folder} has no adapter_model.safetensors", folder)
        reader = SafetensorsReader([st], None)
        parts: dict[str, dict[str, str]] = {}
        for name in reader.names():
            body = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
            m = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[A-Za-z0-9_]+)?\.weight", body)
            if m is None:
                if ".lora_embedding_" in body or ".lora_magnitude_vector" in body:
                    raise AdapterError(f"{st}: {name} — embedding LoRA / DoRA weights are not supported", st)
                raise AdapterError(f"{st}: unexpected tensor {name} (expected "
                                   f"{_PREFIX}<module>.lora_A.weight / .lora_B.weight)", st)
            parts.setdefault(m.group(1), {})[m.group(2)] = name
        keys = set(self.base.keys())
        fam = self.family_spec
        pairs: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
        for module, ab in sorted(parts.items()):
            if set(ab) != {"lora_A", "lora_B"}:
                raise AdapterError(f"adapter module {module}: has {sorted(ab)} but needs both lora_A "
                                   "and lora_B", st)
            if not target_matches(self.target_modules, module):
                raise AdapterError(f"adapter module {module} is not named by target_modules "
                                   f"{self.target_modules!r}", st)
            key = fam.normalise_key(module + ".weight")
            if key is None or key not in keys:
                raise AdapterError(f"adapter module {module} is not in the model "
                                   f"({self.base.name}, {self.family}): no tensor {module}.weight", st)
            a = reader.read(ab["lora_A"])
            b = reader.read(ab["lora_B"])
            shape = tuple(self.base.shape(key))
            if len(shape) != 2 or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] \
                    or (b.shape[0], a.shape[1]) != shape:
                raise AdapterError(f"adapter module {module}: lora_B {tuple(b.shape)} · lora_A "
                                   f"{tuple(a.shape)} does not fit the model's weight {shape}", st)
            if key in pairs:
                raise AdapterError(f"adapter modules {pairs[key][0]} and {module} both map to {key}", st)
            pairs[key] = (module, a.astype(np.float32), b.astype(np.float32))
        if not pairs:
            raise AdapterError(f"{st} holds no LoRA weights", st)
        # every linear module the targets name must have weights (peft would start it at zero
        # from a random A; a file without it was made for another model)
        covered = {p[0] for p in pairs.values()}
        for key in self.base.keys():
            if not key.endswith(".weight") or key in pairs:
                continue
            module = self._module_name(key)
            if module in covered or not target_matches(self.target_modules, module):
                continue
            if len(self.base.shape(key)) == 2 and not _is_embedding(key, fam):
                raise AdapterError(f"target_modules names {module}, but the adapter has no weights "
                                   "for it (an adapter for another model?)", st)
        return pairs

    def _module_name(self, key: str) -> str:
        hf_name = getattr(self.base, "hf_name", None)
        name = hf_name(key) if callable(hf_name) else self.family_spec.hf_key(key)
        return name[:-len(".weight")]

    # ---- the ModelSource interface
    @property
    def tokenizer_json(self) -> str | None:
        return self.base.tokenizer_json

    @property
    def tokenizer_config(self) -> dict:
        return self.base.tokenizer_config

    @property
    def chat_template(self) -> str | None:
        return self.base.chat_template

    def tokenizer(self):
        return self.base.tokenizer()

    def _keys(self) -> list[str]:
        return self.base.keys()

    def _shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape(key)

    def _read(self, key: str) -> np.ndarray:
        w = self.base.tensor(key)
        pair = self._pairs.get(key)
        if pair is None:
            return w
        _, a, b = pair
        merged = (w.astype(np.float32) + np.float32(self.scaling) * (b @ a)).astype(np.float32)
        return merged

    def tensor_rows(self, key: str, lo: int, hi: int) -> np.ndarray:
        key = self._resolve(key)
        if key in self._pairs:
            return self._read(key)[lo:hi]
        return self.base.tensor_rows(key, lo, hi)

    @property
    def merged_modules(self) -> list[str]:
        return sorted(p[0] for p in self._pairs.values())

    @property
    def provenance(self) -> dict:
        return {**self.base.provenance,
                "adapter": {"path": str(self.adapter_path), "r": self.rank, "scaling": self.scaling,
                            "use_rslora": bool(self.adapter_config.get("use_rslora")),
                            "modules": len(self._pairs)}}

    def close(self) -> None:
        self.base.close()

    def __repr__(self) -> str:
        return f"<AdapterSource {self.name!r} + {self.adapter_path.name} ({len(self._pairs)} modules)>"


def _is_embedding(key: str, fam: Any) -> bool:
    return key in (fam.embed_key, fam.lm_head_key)


def with_adapter(source: ModelSource, folder: str | Path | None) -> ModelSource:
    """``source`` with the adapter in ``folder`` merged (``source`` itself when ``None``)."""
    return source if folder is None else AdapterSource(source, folder)
