"""USE MODEL: INFER / EXPLAIN INFER / TRACE straight from a Hugging Face folder or a
GGUF give what the extracted vindex gives; plus the JSON CLI."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import smollm2_gguf, smollm2_hf_dir, tiny_model_dir  # noqa: E402
from vindex_fixtures import smollm2_vindex, tiny_vindex  # noqa: E402

from lql.session import Session  # noqa: E402

PROMPT = "The capital of France is"
REPO = Path(__file__).resolve().parents[1]


def _infer(use: str, stmt: str = f'INFER "{PROMPT}" TOP 5 RAW'):
    s = Session()
    s.query(use)
    r = s.query(stmt)
    del s
    gc.collect()
    return r


def test_tiny_use_model_equals_vindex():
    folder, vpath = tiny_model_dir("qwen3"), tiny_vindex("qwen3", level="inference")
    for stmt in (f'INFER "{PROMPT}" TOP 5 RAW', f'INFER "{PROMPT}" TOP 3 CHAT',
                 f'TRACE "{PROMPT}" FOR " Paris" RAW'):
        a = _infer(f'USE MODEL "{folder}"', stmt)
        b = _infer(f'USE "{vpath}"', stmt)
        assert a.meta["prompt"] == b.meta["prompt"]
        assert len(a.rows) == len(b.rows) > 0
        for x, y in zip(a.rows, b.rows):
            assert set(x) == set(y)
            for k in x:
                if isinstance(x[k], float):
                    assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), k
                else:
                    assert x[k] == y[k], k


def test_tiny_use_model_explain_infer_down_tokens():
    """Live weights have no down_meta: down tokens come from the down columns projected
    on the embeddings — the same top token the vindex's down_meta stores."""
    folder, vpath = tiny_model_dir("llama"), tiny_vindex("llama", level="inference")
    stmt = f'EXPLAIN INFER "{PROMPT}" TOP 3 RAW'
    a = _infer(f'USE MODEL "{folder}"', stmt)
    b = _infer(f'USE "{vpath}"', stmt)
    assert [(r["layer"], r["feature"]) for r in a.rows] == [(r["layer"], r["feature"]) for r in b.rows]
    for x, y in zip(a.rows, b.rows):
        assert x["activation"] == pytest.approx(y["activation"], rel=1e-5, abs=1e-6)
        assert x["top_token"] == y["top_token"]


@pytest.mark.slow
def test_smollm2_use_model_hf_equals_f32_vindex():
    a = _infer(f'USE MODEL "{smollm2_hf_dir()}"')
    b = _infer(f'USE "{smollm2_vindex("inference", "f32", source="hf")}"')
    assert a.rows[0]["token"] == " Paris"
    assert [r["token_id"] for r in a.rows] == [r["token_id"] for r in b.rows]
    for x, y in zip(a.rows, b.rows):
        assert x["probability"] == pytest.approx(y["probability"], abs=1e-6)


@pytest.mark.slow
def test_smollm2_use_model_gguf_equals_vindex():
    a = _infer(f'USE MODEL "{smollm2_gguf()}"')
    b = _infer(f'USE "{smollm2_vindex("inference")}"')      # f16 vindex from the same GGUF
    assert a.rows[0]["token"] == " Paris"
    assert [r["token_id"] for r in a.rows] == [r["token_id"] for r in b.rows]
    for x, y in zip(a.rows, b.rows):
        assert x["probability"] == pytest.approx(y["probability"], abs=2e-3)   # f16 storage


@pytest.mark.slow
def test_json_cli_infer(lql_env, lql_cmd):
    vpath = smollm2_vindex("inference")
    proc = subprocess.run(lql_cmd + ["--format", "json", "-e",
                                     f'USE "{vpath}"; INFER "{PROMPT}" TOP 5 RAW;'],
                          capture_output=True, text=True, env=lql_env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [o["statement"] for o in out] == ["USE", "INFER"]
    infer = out[1]
    assert infer["kind"] == "table"
    assert infer["columns"] == ["rank", "token", "token_id", "probability"]
    assert infer["rows"][0]["token"] == " Paris" and infer["rows"][0]["rank"] == 1
    assert abs(infer["rows"][0]["probability"] - 0.7725387) <= 2e-3
    assert infer["meta"]["chat_wrapped"] is False and infer["meta"]["prompt"] == PROMPT
    assert isinstance(infer["meta"]["elapsed_ms"], float)
