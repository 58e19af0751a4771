"""Every example script runs cleanly through the CLI, as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from vindex_fixtures import smollm2_vindex

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "examples").glob("*.lql"))


def _run(script: Path, cwd: Path, env) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "lql", "--format", "json", str(script)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert all(r["kind"] != "error" for r in results), results
    return results


def test_there_are_examples():
    assert {p.name for p in SCRIPTS} >= {"basics.lql", "browse.lql", "quickstart.lql"}


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.name != "quickstart.lql"],
                         ids=lambda p: p.name)
def test_example_runs(script, tmp_path, lql_env):
    (tmp_path / "smollm2.vindex").symlink_to(smollm2_vindex(level="inference"))
    results = _run(script, tmp_path, lql_env)
    assert results, "the script ran no statement"


@pytest.mark.slow
def test_quickstart_is_the_main_job(tmp_path, lql_env):
    """The README's main job: extract the bundled model, browse, run, edit, revert."""
    results = _run(REPO / "examples" / "quickstart.lql", tmp_path, lql_env)
    by = {}
    for r in results:
        by.setdefault(r["statement"], []).append(r)
    assert (tmp_path / "smollm2.vindex" / "index.json").is_file()
    assert by["STATS"][0]["rows"][0]["num_layers"] == 30
    infers = by["INFER"]
    # raw completion prompt: " Paris" on top (transformers float32 gives p = 0.7725)
    assert infers[0]["rows"][0]["token"] == " Paris"
    assert abs(infers[0]["rows"][0]["probability"] - 0.7725) < 2e-3
    # after the COMPOSE insert the new fact wins and the control keeps its answer
    assert " Poseidon".startswith(infers[2]["rows"][0]["token"])
    assert infers[3]["rows"][0]["token"] == " Paris"
    # REMOVE PATCH gives the base prediction back exactly (COMPARE's dense column)
    dense = [(r["dense_token_id"], r["dense_probability"]) for r in infers[2]["rows"]]
    after = [(r["token_id"], r["probability"]) for r in infers[4]["rows"]]
    assert after == dense
    assert (tmp_path / "atlantis.vlp").is_file()
    # the base vindex was never written: verify still passes
    proc = subprocess.run([sys.executable, "-m", "lql", "verify", "smollm2.vindex"],
                          cwd=tmp_path, env=lql_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
