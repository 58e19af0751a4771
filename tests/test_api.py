"""The Python browse API returns the same results as the statements."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vindex_fixtures import smollm2_vindex  # noqa: E402

import lql  # noqa: E402
from lql.session import Session  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vpath():
    return smollm2_vindex(source="hf")


def test_api_matches_statements(vpath):
    v = lql.open_vindex(vpath)
    s = Session()
    s.query(f'USE "{vpath}"')
    a = v.walk("The capital of France is", top=4, layers="20-22")
    b = s.query('WALK "The capital of France is" TOP 4 LAYERS 20-22')
    assert a.rows == b.rows and a.columns == b.columns
    a = v.describe("France", verbosity="verbose")
    b = s.query('DESCRIBE "France" VERBOSE')
    assert a.rows == b.rows and a.message == b.message
    a = v.feature(20, 100)
    b = s.query("SELECT * FROM FEATURES WHERE layer = 20 AND feature = 100")
    assert a.rows == b.rows and len(a.rows) == 1
    assert v.select("SELECT * FROM EDGES WHERE layer = 20 AND feature = 100").rows[0]["target"] \
        == a.rows[0]["target"]


def test_api_vectors_and_knn(vpath):
    v = lql.open_vindex(vpath)
    ids = v.tokenizer.encode(" France", add_special_tokens=False).ids
    q = v.embed("France")
    np.testing.assert_allclose(q, v.vindex.embed(ids).mean(axis=0) * v.embed_scale, rtol=1e-6)
    knn = v.gate_knn(20, q, top=6)
    s = v.gate(20) @ q
    assert [r["feature"] for r in knn.rows] == np.argsort(-np.abs(s), kind="stable")[:6].tolist()
    assert v.gate_knn(20, "France", top=6).rows == knn.rows
    pos = v.gate_knn(20, q, top=6, signed=True)
    assert all(r["gate"] > 0 for r in pos.rows)
    assert v.num_layers == 30                        # the Vindex's attributes pass through


def test_example_embed_script(vpath):
    p = subprocess.run([sys.executable, str(REPO / "examples" / "embed.py"), str(vpath), "France"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "France" in p.stdout and "nearest features" in p.stdout


def test_api_clause_names_are_checked(vpath):
    """The Python API takes a clause by name (any case, ``_`` for a space) or as the enum;
    an unknown name is one clear error listing the choices."""
    from lql import ast
    from lql.errors import ExecutionError
    v = lql.open_vindex(vpath)
    assert v.describe("France", band="all_layers").rows == \
        v.describe("France", band=ast.Band.ALL_LAYERS).rows
    for kw, choices in [(dict(verbosity="sideways"), "BRIEF, VERBOSE, RAW"),
                        (dict(band="nowhere"), "ALL LAYERS, SYNTAX, KNOWLEDGE, OUTPUT"),
                        (dict(via="telepathy"), "EMBEDDING, RESIDUAL")]:
        with pytest.raises(ExecutionError, match=f"one of: {choices}"):
            v.describe("France", **kw)
    with pytest.raises(ExecutionError, match="one of: HYBRID, PURE, DENSE"):
        v.walk("Paris", mode="sideways")
