"""Renderers: rich tables (formatting only), JSON and CSV."""

from __future__ import annotations

import io
import json

from rich.console import Console

from lql.render.data import csv_value, to_csv, to_json, write_csv, write_json
from lql.render.table import format_elapsed, render
from lql.result import Result


def show(result: Result, **kw) -> str:
    buf = io.StringIO()
    render(result, Console(file=buf, width=120, no_color=True, color_system=None), **kw)
    return buf.getvalue()


def test_message_text_error_and_timing():
    out = show(Result.msg("SET CHAT", "chat mode set to OFF", elapsed_ms=1.25))
    assert "chat mode set to OFF" in out and "1.2 ms" in out
    assert "error: boom" in show(Result.error("INFER", "boom"))
    assert show(Result.text("INFER", "Once upon a time", elapsed_ms=1500.0)).splitlines() == [
        "Once upon a time", "1.50 s"]
    assert "no timing" not in show(Result.msg("X", "m"), timing=False)
    assert format_elapsed(41.23) == "41.2 ms"


def test_markdown_text():
    out = show(Result.text("HELP", "# Title\n\nSome `code`.", format="markdown"))
    assert "Title" in out and "code" in out and "#" not in out


def test_infer_table_has_bars_and_rows():
    r = Result.table("INFER", ["rank", "token", "token_id", "probability"], [
        {"rank": 1, "token": " Paris", "token_id": 7042, "probability": 0.7725},
        {"rank": 2, "token": "\n", "token_id": 198, "probability": 0.05}],
        chat_wrapped=False, elapsed_ms=41.2)
    out = show(r)
    assert " Paris" in out and "77.25%" in out and "█" in out and "5.00%" in out
    assert "\\n" in out                                 # control characters made visible
    assert "2 rows" in out and "raw prompt (no chat wrapping)" in out and "41.2 ms" in out


def test_all_none_columns_hidden_in_table_only():
    r = Result.table("SHOW MODELS", ["name", "note"], [{"name": "a", "note": None}])
    assert "note" not in show(r)
    assert "note" in to_csv(r).splitlines()[0]


def test_describe_grouped_by_band_with_ranges():
    rows = [
        {"band": "syntax", "relation": None, "target": " the", "gate": 3.5, "layer_min": 2,
         "layer_max": 4, "count": 2, "also": [], "source": None},
        {"band": "knowledge", "relation": "capital", "target": " Paris", "gate": 12.25,
         "layer_min": 14, "layer_max": 18, "count": 3, "also": [" Lyon"], "source": None},
        {"band": "knowledge", "relation": None, "target": " Atlantis", "gate": -2.0,
         "layer_min": 20, "layer_max": 20, "count": 1, "also": [], "source": "inserted"},
    ]
    r = Result.table("DESCRIBE", ["band", "relation", "target", "gate", "layer_min", "layer_max",
                                  "count", "also", "source"], rows, entity="France",
                     bands={"syntax": [0, 9], "knowledge": [10, 23]}, verbosity="verbose")
    out = show(r)
    lines = out.splitlines()
    assert lines[0].strip() == "France"
    syntax = next(i for i, l in enumerate(lines) if l.startswith("Syntax"))
    edges = next(i for i, l in enumerate(lines) if l.startswith("Edges"))
    assert syntax < edges and "L0–9" in lines[syntax] and "L10–23" in lines[edges]
    assert "L14–18" in out and "L20" in out and "capital" in out and "inserted" in out
    assert " Lyon" in out
    brief = show(Result.table("DESCRIBE", r.columns, rows, verbosity="brief"))
    assert "L14–18" not in brief and " Paris" in brief


def test_describe_empty_message():
    out = show(Result.table("DESCRIBE", ["band", "target"], [], message="(no edges found)"))
    assert "(no edges found)" in out and "0 rows" in out


def test_walk_grouped_by_layer():
    rows = [{"layer": 3, "feature": f, "gate": g, "top_token": " x", "down_tokens": [" a", " b"],
             "relation": None} for f, g in [(1, 5.0), (2, -4.0)]]
    rows.append({"layer": 4, "feature": 9, "gate": 1.0, "top_token": " y", "down_tokens": [],
                 "relation": "capital"})
    out = show(Result.table("WALK", list(rows[0]), rows))
    body = [l.split() for l in out.splitlines() if " x" in l or " y" in l]
    assert [b[:2] for b in body] == [["3", "1"], ["2", "-4.00"], ["4", "9"]]   # layer shown once
    assert "" in [l.strip() for l in out.splitlines()[2:-1]]                    # section break
    assert " a,  b" in out or " a, b" in out


def test_json_is_one_array_and_handles_nan():
    rs = [Result.msg("SET CHAT", "ok"), Result.table("X", ["v"], [{"v": float("nan")}])]
    buf = io.StringIO()
    write_json(rs, buf)
    data = json.loads(buf.getvalue())
    assert isinstance(data, list) and len(data) == 2 and data[1]["rows"][0]["v"] is None
    assert json.loads(to_json(rs[:1]))[0]["statement"] == "SET CHAT"


def test_csv():
    r = Result.table("WALK", ["layer", "down_tokens", "relation", "ok"], [
        {"layer": 1, "down_tokens": [" a", "b,c"], "relation": None, "ok": True}])
    assert to_csv(r) == 'layer,down_tokens,relation,ok\n1," a|b,c",,true\n'
    assert to_csv(Result.msg("X", "m")) == ""
    assert csv_value({"a": 1}) == '{"a": 1}'
    out, err = io.StringIO(), io.StringIO()
    write_csv([r, Result.msg("SET CHAT", "hello"), r, Result.error("X", "bad")], out, err)
    assert out.getvalue().count("layer,down_tokens") == 2 and "\n\nlayer" in out.getvalue()
    assert err.getvalue() == "hello\nerror: bad\n"


def test_wide_single_row_renders_as_fields():
    row = {f"field_{i}": i for i in range(12)}
    row["sizes"] = {"a.bin": 1.5, "b.bin": 2}
    out = show(Result.table("STATS", list(row), [row]))
    lines = out.splitlines()
    assert lines[0].split() == ["field_0", "0"] and "a.bin: 1.50" in out and "b.bin: 2" in out


def test_whitespace_only_tokens_are_visible():
    r = Result.table("TRACE", ["layer", "top_token", "top_probability"], [
        {"layer": 20, "top_token": " ", "top_probability": 0.92},
        {"layer": 21, "top_token": "", "top_probability": 0.5}])
    lines = show(r).splitlines()
    assert "␣" in lines[2] and "∅" in lines[3]
    assert show(Result.table("TRACE", ["top_token"], [{"top_token": " "}])).count("␣") == 1
