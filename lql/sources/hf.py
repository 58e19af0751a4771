"""A Hugging Face model folder: ``config.json`` + safetensors (single or sharded)
+ tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..families import family_for_config
from .base import ModelSource, SourceError
from .safetensors_io import SafetensorsReader, safetensors_files


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}", path) from None
    except ValueError as exc:
        raise SourceError(f"{path} is not valid JSON: {exc}", path) from None
    if not isinstance(data, dict):
        raise SourceError(f"{path} does not hold a JSON object", path)
    return data


def read_chat_template(folder: Path, tokenizer_config: dict) -> str | None:
    """``chat_template.jinja``, else ``chat_template.json``, else the template in
    ``tokenizer_config.json`` (a string, or the one named "default" in a list)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = folder / "chat_template.json"
    if as_json.is_file():
        value = _read_json(as_json).get("chat_template")
        if isinstance(value, str):
            return value
    value = tokenizer_config.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default") or next(iter(named.values()), None)
    return value if isinstance(value, str) else None


class HfSource(ModelSource):
    format = "safetensors"

    def __init__(self, folder):
        folder = Path(folder)
        self.path = folder
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise SourceError(f"{folder} has no config.json (not a Hugging Face model folder)",
                              config_path)
        self.hf_config = _read_json(config_path)
        self.family_spec = family_for_config(self.hf_config)
        config = dict(self.hf_config)
        generation = folder / "generation_config.json"
        if generation.is_file():
            config["eos_token_id"] = _merge_eos(config.get("eos_token_id"),
                                                _read_json(generation).get("eos_token_id"))
        self.model_config = self.family_spec.model_config(config)
        self.name = folder.resolve().name

        files, weight_map = safetensors_files(folder)
        self._reader = SafetensorsReader(files, weight_map)
        self._names: dict[str, str] = {}
        for hf_name in self._reader.names():
            key = self.family_spec.normalise_key(hf_name)
            if key is None:
                continue
            if key in self._names:
                raise SourceError(f"{self._names[key]} and {hf_name} both map to {key}", folder)
            self._names[key] = hf_name

        tok = folder / "tokenizer.json"
        self._tokenizer_json = tok.read_text(encoding="utf-8") if tok.is_file() else None
        tc = folder / "tokenizer_config.json"
        self._tokenizer_config = _read_json(tc) if tc.is_file() else {}
        self._chat_template = read_chat_template(folder, self._tokenizer_config)

    def _keys(self) -> list[str]:
        return list(self._names)

    def _shape(self, key: str):
        return self._reader.shape(self._names[key])

    def _read(self, key: str) -> np.ndarray:
        return self._reader.read(self._names[key])

    def tensor_rows(self, key: str, lo: int, hi: int) -> np.ndarray:
        return self._reader.read_rows(self._names[self._resolve(key)], lo, hi)

    def hf_name(self, key: str) -> str:
        """The checkpoint's own name for a normalised key."""
        return self._names[self._resolve(key)]

    def tokenizer(self):
        if self.tokenizer_json is None:
            raise SourceError(f"{self.path} has no tokenizer.json", self.path / "tokenizer.json")
        return super().tokenizer()

    @property
    def provenance(self) -> dict:
        repo = self.hf_config.get("_name_or_path")
        looks_like_hub_id = isinstance(repo, str) and repo.count("/") == 1 \
            and not Path(repo).exists() and " " not in repo
        out = {**super().provenance, "huggingface_repo": repo if looks_like_hub_id else None}
        dtype = self.hf_config.get("torch_dtype") or self.hf_config.get("dtype")
        if isinstance(dtype, str):
            out["source_dtype"] = dtype        # what COMPILE INTO MODEL writes back
        return out


def _merge_eos(config_eos, generation_eos):
    """config.json's eos ids followed by generation_config.json's (chat models often
    list their end-of-turn token only in the latter)."""
    out: list[int] = []
    for value in (config_eos, generation_eos):
        for v in (value if isinstance(value, list) else [value]):
            if v is not None and int(v) not in out:
                out.append(int(v))
    return out or None
