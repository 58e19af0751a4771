"""Source models: a Hugging Face folder or a GGUF file, read as a :class:`ModelSource`.

>>> src = open_source("path/to/model")      # or "model.gguf"
>>> src.family, src.model_config["num_layers"]
>>> w = src.tensor("layers.0.mlp.gate_proj.weight")   # float32, one tensor
"""

from __future__ import annotations

from pathlib import Path

from .base import ModelSource, SourceError, SourceWeights


def open_source(path) -> ModelSource:
    """Open a local Hugging Face model folder or ``.gguf`` file.

    A bundled model name (``smollm2``, see :mod:`lql.sources.bundled`) is
    accepted when no local path of that name exists.

    Raises :class:`SourceError` for a path that is neither (a hub id included:
    nothing is downloaded), :class:`~lql.errors.UnsupportedArchitectureError`
    for an architecture no family describes."""
    p = Path(path).expanduser()
    if p.is_dir():
        from .hf import HfSource
        return HfSource(p)
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            from .gguf import GgufSource
            return GgufSource(p)
        if p.name == "config.json" or p.suffix == ".safetensors":
            from .hf import HfSource
            return HfSource(p.parent)
        raise SourceError(f"{p} is neither a Hugging Face model folder nor a .gguf file", p)
    text = str(path)
    from .bundled import bundled_path
    bundled = bundled_path(text)
    if bundled is not None:
        return open_source(bundled)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        raise SourceError(f"{text!r} is not a local path; it looks like a Hugging Face hub id, "
                          "but nothing is downloaded here. Download the model first (for example "
                          f"`huggingface-cli download {text} --local-dir ./{text.split('/')[1]}`) "
                          "and pass the local folder, or pass a local .gguf file", path)
    raise SourceError(f"no such model: {text} (pass a local Hugging Face folder or .gguf file)",
                      path)


__all__ = ["open_source", "ModelSource", "SourceError", "SourceWeights"]
