"""Shared pytest fixtures (keep this minimal; append your own below)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def lql_env(tmp_path):
    """Environment for running ``lql`` as a subprocess: this checkout first on
    the path, no colour, a private history file, no $LQL_PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["LQL_HISTORY"] = str(tmp_path / "history")
    env["NO_COLOR"] = "1"
    env.pop("LQL_PATH", None)
    env.pop("LQL_DEBUG", None)
    return env


@pytest.fixture
def lql_cmd():
    """argv prefix that runs the CLI of this checkout."""
    return [sys.executable, "-m", "lql"]
