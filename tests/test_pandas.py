"""``Result.to_pandas()`` / ``.to_polars()``: every statement's result converts, with the
result contract's column names (``result.columns`` first, in order), one frame row per
result row, the dtypes the values call for, and the values back unchanged.

The statements run on the SmolLM2 fixtures (the inference vindex, the HF folder, the
GGUF); COMPILE / DIFF / MERGE / REBALANCE run on the tiny Llama (the same code, seconds).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import smollm2_gguf, smollm2_hf_dir  # noqa: E402
from vindex_fixtures import smollm2_vindex, tiny_vindex  # noqa: E402

pd = pytest.importorskip("pandas")

from lql import ast  # noqa: E402
from lql.parser import parse_one  # noqa: E402
from lql.result import Result  # noqa: E402
from lql.session import Session  # noqa: E402

PROMPT = "The capital of France is"
FACT = '("Atlantis", "capital", "Poseidon")'


def _smollm2_script(tmp: Path) -> list[str]:
    v = smollm2_vindex("inference", "f32", source="hf")
    return [
        f'EXTRACT MODEL "{smollm2_hf_dir()}" INTO "{tmp / "small.vindex"}" LAYERS 0-1',
        f'USE "{v}"', "STATS", "SHOW LAYERS", "SHOW FEATURES 20 LIMIT 3", "SHOW RELATIONS",
        "SHOW ENTITIES LIMIT 3", f'WALK "{PROMPT}" TOP 3 LAYERS 24-29',
        f'EXPLAIN WALK "{PROMPT}" TOP 2 LAYERS 25-27', 'DESCRIBE "France"',
        'DESCRIBE "France" VIA RESIDUAL VERBOSE', "SELECT * FROM EDGES LIMIT 4",
        "SELECT layer, feature, gate FROM FEATURES WHERE layer = 20 LIMIT 3",
        'SELECT * FROM ENTITIES LIMIT 3',
        f'INFER "{PROMPT}" TOP 5 RAW', f'INFER "{PROMPT}" GENERATE 3 RAW',
        f'EXPLAIN INFER "{PROMPT}" LAYERS 26-29 TOP 2 WITH ATTENTION RAW',
        f'TRACE "{PROMPT}" RAW', f'TRACE "{PROMPT}" FOR " Paris" DECOMPOSE LAYERS 25-29 RAW',
        f'TRACE "{PROMPT}" FOR " Paris" POSITIONS ALL LAYERS 27-29 RAW',
        "SET CHAT OFF", 'BEGIN PATCH "p.vlp"',
        f"INSERT INTO EDGES (entity, relation, target) VALUES {FACT}",
        'INFER "The capital of Atlantis is" TOP 3 COMPARE',
        "SHOW PATCHES", "SAVE PATCH", 'REMOVE PATCH "p.vlp"', 'APPLY PATCH "p.vlp"',
        'UPDATE EDGES SET confidence = 0.5 WHERE entity = "Atlantis"',
        'DELETE FROM EDGES WHERE entity = "Atlantis"',
        "STATS |> SHOW LAYERS 0-2", "SHOW MODELS", "HELP", "HELP TRACE",
        f'USE MODEL "{smollm2_gguf()}"', f'INFER "{PROMPT}" TOP 2 RAW',
    ]


def _tiny_script(tmp: Path) -> list[str]:
    t = tiny_vindex("llama", level="inference")
    return [
        f'USE "{t}"', f"INSERT INTO EDGES (entity, relation, target) VALUES {FACT} MODE COMPOSE",
        "REBALANCE MAX 1", "SHOW COMPACT STATUS", "COMPACT MINOR", "COMPACT MAJOR",
        f'COMPILE CURRENT INTO VINDEX "{tmp / "out.vindex"}"',
        f'DIFF "{t}" CURRENT INTO PATCH "{tmp / "d.vlp"}"',
        f'USE "{t}"', f'MERGE "{tmp / "d.vlp"}"',
        # interpretability: an SAE (random TopK weights, see _sae_files), CAPTURE, SAVE STEER
        'USE SAE "sae.npz" AT LAYER 1 AS s', "SELECT feature, norm FROM SAE FEATURES LIMIT 3",
        'DESCRIBE SAE FEATURE 2 FROM FILE "prompts.txt" TOP 2', 'EVALUATE SAE FROM FILE "prompts.txt"',
        'CAPTURE FROM FILE "prompts.txt" AT LAYER 1 INTO "acts.npz"',
        'SAVE STEER CONTRAST FROM FILE "prompts.txt" VS "other.txt" AT LAYER 1 INTO "v.npy"',
        'USE REMOTE "http://127.0.0.1:9"',            # nothing listens: an error result
    ]


def _sae_files(tmp: Path) -> None:
    import numpy as np

    from lql.vindex import open_vindex
    hidden = open_vindex(tiny_vindex("llama", level="inference")).hidden_size
    rng = np.random.default_rng(0)
    np.savez(tmp / "sae.npz", W_enc=rng.standard_normal((hidden, 16)).astype(np.float32),
             W_dec=rng.standard_normal((16, hidden)).astype(np.float32),
             b_enc=np.zeros(16, np.float32), b_dec=np.zeros(hidden, np.float32), k=np.array(4))
    (tmp / "prompts.txt").write_text("The capital of France is\nParis is a city\n")
    (tmp / "other.txt").write_text("I like green apples\nThe sky is blue\n")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[tuple[ast.Statement, Result]]:
    tmp = tmp_path_factory.mktemp("frames")
    _sae_files(tmp)
    out = []
    for script in (_smollm2_script(tmp), _tiny_script(tmp)):
        s = Session(cwd=tmp)
        for text in script:
            stmt = parse_one(text)
            rs = s.execute(text, continue_on_error=True)
            assert len(rs) == (2 if isinstance(stmt, ast.Pipe) else 1), (text, rs)
            out.extend((stmt, r) for r in rs)
    return out


def test_every_statement_kind_is_covered(results):
    ran = {type(stmt) for stmt, _ in results}
    assert ran == set(ast.STATEMENT_TYPES)
    errors = [(s.to_lql(), r.message) for s, r in results if r.kind == "error"]
    assert [e[0] for e in errors] == ['USE REMOTE "http://127.0.0.1:9"'], errors


def _same(want, got) -> bool:
    if want is None:
        return got is None or got is pd.NA or (isinstance(got, float) and math.isnan(got))
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, (list, tuple)):
        return list(got) == list(want)
    return got == want and (type(got) is type(want) or isinstance(want, (int, float)))


def _expected_dtype(values: list) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "object"
    if all(type(v) is bool for v in present):
        return "bool" if len(present) == len(values) else "boolean"
    if all(type(v) is int for v in present):
        return "int64" if len(present) == len(values) else "Int64"
    if all(type(v) in (int, float) for v in present):
        return "float64"
    if all(type(v) is str for v in present):
        return "string"
    return "object"


def test_to_pandas_round_trip(results):
    for stmt, r in results:
        df = r.to_pandas()
        assert df.attrs["statement"] == r.statement and df.attrs["kind"] == r.kind
        assert df.attrs["meta"] == r.meta
        if r.kind != "table":
            assert list(df.columns) == ["message"] and len(df) == 1, stmt
            assert df["message"].iloc[0] == r.message
            continue
        extra = [k for row in r.rows for k in row if k not in r.columns]
        assert list(df.columns) == list(r.columns) + list(dict.fromkeys(extra)), stmt
        assert len(df) == len(r.rows), stmt
        for c in df.columns:
            values = [row.get(c) for row in r.rows]
            if r.rows:
                assert str(df[c].dtype) == _expected_dtype(values), (stmt.to_lql(), c, df[c].dtype)
            for i, (want, got) in enumerate(zip(values, df[c].tolist())):
                assert _same(want, got), (stmt.to_lql(), c, i, want, got)


def _frame(results, keyword: str, n: int = 0):
    found = [r for s, r in results if s.keyword == keyword and r.kind != "error"]
    return found[n].to_pandas(), found[n]


def test_dtypes_of_the_main_results(results):
    df, _ = _frame(results, "INFER")
    assert {c: str(t) for c, t in df.dtypes.items()} == \
        {"rank": "int64", "token": "string", "token_id": "int64", "probability": "float64"}
    assert df["token"].iloc[0] == " Paris"                    # token text keeps its space
    df, r = _frame(results, "TRACE", 1)
    assert str(df["layer"].dtype) == "int64" and str(df["top_token"].dtype) == "string"
    for c in ("top_probability", "probability", "logit", "attn_logit", "ffn_logit", "attn_norm"):
        assert str(df[c].dtype) == "float64", c
    assert str(df["rank"].dtype) == "int64" and df["layer"].tolist() == list(range(25, 30))
    df, r = _frame(results, "WALK")
    assert df["down_tokens"].dtype == object
    assert isinstance(df["down_tokens"].iloc[0], list) and df["down_tokens"].iloc[0] == r.rows[0]["down_tokens"]
    df, r = _frame(results, "EXPLAIN INFER")
    # ffn rows have no head, attention rows no feature: integer columns with gaps
    assert str(df["head"].dtype) == "Int64" and str(df["feature"].dtype) == "Int64"
    assert df["head"].isna().sum() == sum(1 for row in r.rows if row.get("head") is None)
    df, r = _frame(results, "STATS")
    assert len(df) == 1 and isinstance(df["file_sizes_mb"].iloc[0], dict)


def test_to_polars_round_trip(results):
    pl = pytest.importorskip("polars")
    for stmt, r in results:
        df = r.to_polars()
        if r.kind != "table":
            assert df.columns == ["message"] and df["message"][0] == r.message
            continue
        assert df.columns[:len(r.columns)] == list(r.columns), stmt
        assert df.height == len(r.rows)
    df = _frame(results, "INFER")[1].to_polars()
    assert df.schema == pl.Schema({"rank": pl.Int64, "token": pl.String, "token_id": pl.Int64,
                                   "probability": pl.Float64})
    walk = _frame(results, "WALK")[1]
    df = walk.to_polars()
    assert df.schema["down_tokens"] == pl.List(pl.String)
    assert df["down_tokens"].to_list() == [row["down_tokens"] for row in walk.rows]


def test_missing_pandas_is_a_clear_error(monkeypatch):
    import builtins

    from lql.errors import LqlError
    real = builtins.__import__

    def fake(name, *a, **k):
        if name in ("pandas", "polars", "matplotlib") or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    r = Result.table("INFER", ["rank"], [{"rank": 1}])
    with pytest.raises(LqlError, match=r"pip install 'lql\[notebook\]'"):
        r.to_pandas()
    with pytest.raises(LqlError, match="pip install polars"):
        r.to_polars()
    with pytest.raises(LqlError, match=r"pip install 'lql\[plot\]'"):
        Result.table("TRACE", ["layer"], [{"layer": 0, "top_token": "a", "top_probability": 1.0}]).plot()
