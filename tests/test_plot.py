"""Plots (lql/plot): each figure's shape, labels and values against the result it draws,
the PLOT clause (PNG / SVG / HTML, atomic, checked before running), ``lql --plot DIR``.

Figures are inspected as matplotlib objects: the heatmap's image array is the
result's probabilities cell by cell, the written tokens are the result's tokens,
bar heights are the rows' values.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vindex_fixtures import smollm2_vindex, tiny_vindex  # noqa: E402

from lql.errors import ExecutionError, LqlError  # noqa: E402
from lql.parser import parse_one  # noqa: E402
from lql.plot import plottable  # noqa: E402
from lql.plot.common import token_label  # noqa: E402
from lql.session import Session  # noqa: E402

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny():
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", level="inference")}"')
    return s


@pytest.fixture(scope="module")
def smol():
    s = Session()
    s.query(f'USE "{smollm2_vindex("inference", "f32", source="hf")}"')
    return s


def _axes(fig, label):
    found = [a for a in fig.axes if a.get_label() == label]
    assert len(found) == 1, [a.get_label() for a in fig.axes]
    return found[0]


def _cell_texts(ax):
    return [t for t in ax.texts if t.get_gid() == "cell"]


# --------------------------------------------------------------------------- TRACE

def _check_heatmap(r, fig, n_layers, n_pos):
    ax = _axes(fig, "heatmap")
    assert ax.get_xlabel() == "position" and ax.get_ylabel() == "layer"
    (im,) = ax.get_images()
    arr = np.asarray(im.get_array())
    assert arr.shape == (n_layers, n_pos)                     # one cell per layer × position
    layers = sorted({row["layer"] for row in r.rows})
    positions = sorted({row.get("position", 0) for row in r.rows})
    for row in r.rows:                                         # colour = the row's probability
        i, j = layers.index(row["layer"]), positions.index(row.get("position", 0))
        assert arr[i, j] == pytest.approx(row["top_probability"])
    texts = _cell_texts(ax)
    assert len(texts) == n_layers * n_pos
    by_xy = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in texts}
    for row in r.rows:                                         # text = the row's top token
        i, j = layers.index(row["layer"]), positions.index(row.get("position", 0))
        assert by_xy[(j, i)] == token_label(row["top_token"], 9)
    return ax


def test_trace_heatmap_positions_all(tiny):
    r = tiny.query(f'TRACE "{PROMPT}" FOR " Paris" POSITIONS ALL RAW')
    T = r.meta["num_tokens"]
    L = tiny.vindex.num_layers
    fig = r.plot()
    ax = _check_heatmap(r, fig, L, T)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) == T and labels[0].startswith("0:") and labels[-1].endswith("is")
    assert fig.axes[-1].get_label() != "heatmap"
    # FOR: probability / rank trajectory of the last position, and the attention / FFN split
    last = sorted((row for row in r.rows if row["position"] == T - 1), key=lambda x: x["layer"])
    traj = _axes(fig, "trajectory")
    (line,) = traj.get_lines()
    assert list(line.get_xdata()) == [row["layer"] for row in last]
    assert np.allclose(line.get_ydata(), [row["probability"] for row in last])
    assert traj.get_xlabel() == "layer" and traj.get_ylabel() == "probability"
    rank = _axes(fig, "rank")
    assert rank.get_yscale() == "log" and rank.yaxis_inverted()
    assert list(rank.get_lines()[0].get_ydata()) == [row["rank"] for row in last]
    dla = _axes(fig, "dla")
    heights = [p.get_height() for p in dla.patches]
    assert len(heights) == 2 * L
    assert np.allclose(heights[:L], [row["attn_logit"] for row in last])
    assert np.allclose(heights[L:], [row["ffn_logit"] for row in last])
    assert [t.get_text() for t in dla.get_legend().get_texts()] == ["attention", "FFN"]


def test_trace_last_position_has_no_trajectory_without_for(tiny):
    r = tiny.query(f'TRACE "{PROMPT}" RAW')
    fig = r.plot()
    _check_heatmap(r, fig, tiny.vindex.num_layers, 1)
    assert [a.get_label() for a in fig.axes if a.get_label() in ("trajectory", "dla")] == []


def test_trace_heatmap_smollm2(smol, tmp_path):
    out = tmp_path / "lens.png"
    r = smol.query(f'TRACE "{PROMPT}" FOR " Paris" POSITIONS ALL LAYERS 20-29 RAW PLOT "{out}"')
    assert r.meta["plot"] == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = r.plot()
    _check_heatmap(r, fig, 10, r.meta["num_tokens"])
    ax = _axes(fig, "heatmap")
    # the last layer at the last position is the model's prediction: " Paris" (INFER's top)
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text()
             for t in _cell_texts(ax)}
    assert texts[(r.meta["num_tokens"] - 1, 9)] == " Paris"
    assert [int(t.get_text()) for t in ax.get_yticklabels()][0] == 20


# --------------------------------------------------------------------------- EXPLAIN INFER

def test_attention_heatmaps(tiny):
    r = tiny.query(f'EXPLAIN INFER "{PROMPT}" TOP 2 WITH ATTENTION RAW')
    att = [row for row in r.rows if row["kind"] == "attention"]
    assert att
    fig = r.plot()
    heads_ax, pos_ax = _axes(fig, "heads"), _axes(fig, "positions")
    assert (heads_ax.get_xlabel(), heads_ax.get_ylabel()) == ("head", "layer")
    assert (pos_ax.get_xlabel(), pos_ax.get_ylabel()) == ("attended position", "layer")
    layers = sorted({row["layer"] for row in att})
    heads = sorted({row["head"] for row in att})
    grid = np.asarray(heads_ax.get_images()[0].get_array())
    assert grid.shape == (len(layers), len(heads))
    for row in att:
        assert grid[layers.index(row["layer"]), heads.index(row["head"])] >= row["attention"] - 1e-12
    filled = {(layers.index(row["layer"]), heads.index(row["head"])) for row in att}
    assert int(np.count_nonzero(~np.isnan(grid))) == len(filled)
    positions = sorted({row["position"] for row in att})
    assert np.asarray(pos_ax.get_images()[0].get_array()).shape == (len(layers), len(positions))


def test_explain_infer_without_attention_has_no_plot(tiny, tmp_path):
    r = tiny.query(f'EXPLAIN INFER "{PROMPT}" TOP 2 RAW')
    assert not plottable(r)
    with pytest.raises(ExecutionError, match="WITH ATTENTION"):
        r.plot()
    with pytest.raises(ExecutionError, match="WITH ATTENTION"):
        tiny.query(f'EXPLAIN INFER "{PROMPT}" RAW PLOT "{tmp_path / "x.png"}"')
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- WALK / DESCRIBE / INFER

def test_walk_bars_by_layer(tiny):
    r = tiny.query(f'WALK "{PROMPT}" TOP 3')
    fig = r.plot()
    ax = _axes(fig, "bars")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("layer", "gate")
    assert [p.get_height() for p in ax.patches] == pytest.approx([row["gate"] for row in r.rows])
    layers = list(dict.fromkeys(row["layer"] for row in r.rows))
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"L{x}" for x in layers]
    assert [t.get_text() for t in ax.texts] == [token_label(row["top_token"], 12) for row in r.rows]


def test_explain_walk_plots_too(tiny):
    r = tiny.query(f'EXPLAIN WALK "{PROMPT}" TOP 2')
    assert len(_axes(r.plot(), "bars").patches) == len(r.rows)


def test_describe_bars_by_band(tiny):
    r = tiny.query('DESCRIBE "France" ALL LAYERS')
    assert r.rows
    ax = _axes(r.plot(), "bars")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("band", "gate")
    assert [p.get_height() for p in ax.patches] == pytest.approx([row["gate"] for row in r.rows])
    bands = list(dict.fromkeys(row["band"] for row in r.rows))
    assert [t.get_text() for t in ax.get_xticklabels()] == \
        [{"syntax": "Syntax", "knowledge": "Edges", "output": "Output"}[b] for b in bands]


def test_infer_compare_paired_bars(tmp_path):
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", level="inference")}"')
    plain = s.query(f'INFER "{PROMPT}" TOP 4 RAW')
    ax = _axes(plain.plot(), "bars")
    assert [p.get_height() for p in ax.patches] == pytest.approx([row["probability"] for row in plain.rows])
    assert ax.get_legend() is None
    s.query('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", "Poseidon")')
    r = s.query('INFER "The capital of Atlantis is" TOP 4 RAW COMPARE')
    ax = _axes(r.plot(), "bars")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("rank", "probability")
    h = [p.get_height() for p in ax.patches]
    assert h[:4] == pytest.approx([row["probability"] for row in r.rows])
    assert h[4:] == pytest.approx([row["dense_probability"] for row in r.rows])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["edited", "base"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "4"]
    assert token_label(r.rows[0]["token"], 12) in [t.get_text() for t in ax.texts]


# --------------------------------------------------------------------------- PLOT clause

def test_plot_clause_round_trip():
    for text in ['TRACE "x" FOR " P" POSITIONS ALL RAW PLOT "a.png"', 'WALK "x" TOP 3 PLOT "w.svg"',
                 'DESCRIBE "France" PLOT "d.png"', 'INFER "x" TOP 3 COMPARE PLOT "c.html"',
                 'EXPLAIN INFER "x" WITH ATTENTION PLOT "a.png"']:
        stmt = parse_one(text)
        assert stmt.plot is not None
        assert parse_one(stmt.to_lql()) == stmt
    assert parse_one('walk "x" plot "p.png" top 2').plot == "p.png"
    with pytest.raises(LqlError, match="duplicate PLOT"):
        parse_one('WALK "x" PLOT "a.png" PLOT "b.png"')
    with pytest.raises(LqlError):
        parse_one('SHOW LAYERS PLOT "a.png"')


@pytest.mark.parametrize("ext, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"),
                                        (".html", b"<!DOCTYPE html>")])
def test_plot_clause_formats(tiny, tmp_path, ext, magic):
    out = tmp_path / f"walk{ext}"
    r = tiny.query(f'WALK "{PROMPT}" TOP 2 PLOT "{out.name}"'.replace(out.name, str(out)))
    assert r.meta["plot"] == str(out)
    data = out.read_bytes()
    assert data.startswith(magic)
    if ext == ".html":
        text = data.decode()
        assert "<svg" in text and "<table" in text and "<?xml" not in text
    assert [p.name for p in tmp_path.iterdir()] == [out.name]          # no temporary left


def test_plot_relative_to_session_folder(tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE "{tiny_vindex("llama", level="inference")}"')
    r = s.query(f'INFER "{PROMPT}" RAW PLOT "p.svg"')
    assert Path(r.meta["plot"]) == tmp_path / "p.svg" and (tmp_path / "p.svg").is_file()


def test_plot_clause_errors(tiny, tmp_path):
    with pytest.raises(ExecutionError, match=r"\.png, \.svg or \.html"):
        tiny.query(f'WALK "{PROMPT}" PLOT "{tmp_path / "w.jpg"}"')
    with pytest.raises(ExecutionError, match="does not exist"):
        tiny.query(f'WALK "{PROMPT}" PLOT "{tmp_path / "nope" / "w.png"}"')
    with pytest.raises(ExecutionError, match="GENERATE"):
        tiny.query(f'INFER "{PROMPT}" GENERATE 2 RAW PLOT "{tmp_path / "g.png"}"')
    assert list(tmp_path.iterdir()) == []


def test_non_plottable_results(tiny):
    for q in ("SHOW LAYERS", "STATS", 'SELECT * FROM EDGES LIMIT 2', "HELP"):
        r = tiny.query(q)
        assert not plottable(r)
        with pytest.raises(ExecutionError, match="plot"):
            r.plot()


def test_remote_refuses_plot():
    from lql.remote.policy import route, server_refusal
    stmt = parse_one('TRACE "x" PLOT "t.png"')
    assert route(stmt) == "refuse" and "PLOT" in server_refusal(stmt)
    assert route(parse_one('TRACE "x"')) == "remote"


# --------------------------------------------------------------------------- lql --plot DIR

def test_cli_plot_dir(lql_env, lql_cmd, tmp_path):
    v = tiny_vindex("llama", level="inference")
    out = tmp_path / "plots"
    out.mkdir()
    script = (f'USE "{v}"; SHOW LAYERS; WALK "{PROMPT}" TOP 2; TRACE "{PROMPT}" RAW; '
              f'INFER "{PROMPT}" RAW')
    p = subprocess.run(lql_cmd + ["-e", script, "--plot", str(out), "--format", "json"],
                       env=lql_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)) == 5
    assert sorted(x.name for x in out.iterdir()) == ["03-walk.png", "04-trace.png", "05-infer.png"]
    assert all(x.read_bytes()[:4] == b"\x89PNG" for x in out.iterdir())
    bad = subprocess.run(lql_cmd + ["-e", "SHOW MODELS", "--plot", str(tmp_path / "missing")],
                         env=lql_env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--plot" in bad.stderr
