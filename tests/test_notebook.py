"""Notebook support: the HTML display of results (lql/render/html.py), ``Results``,
the ``%lql`` / ``%%lql`` magics (lql/notebook/magics.py), the import lightness of the
base package, and examples/quickstart.ipynb executed with a real kernel (nbclient).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import smollm2_gguf  # noqa: E402
from vindex_fixtures import tiny_vindex  # noqa: E402

from lql.errors import ExecutionError, NoVindexError  # noqa: E402
from lql.render.html import to_html  # noqa: E402
from lql.result import Result, Results  # noqa: E402
from lql.session import Session  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"
HEAVY = ("pandas", "matplotlib", "IPython", "polars", "nbclient", "ipykernel")


@pytest.fixture(scope="module")
def tiny():
    s = Session()
    s.query(f'USE "{tiny_vindex("llama", level="inference")}"')
    return s


def _headers(html: str) -> list[str]:
    return re.findall(r"<th[^>]*>([^<]*)</th>", html)


# --------------------------------------------------------------------------- HTML

def test_table_html_has_the_terminal_columns_and_bars():
    r = Result.table("INFER", ["rank", "token", "token_id", "probability", "source"],
                     [{"rank": 1, "token": " Paris", "token_id": 7042, "probability": 0.7725,
                       "source": None},
                      {"rank": 2, "token": " ", "token_id": 216, "probability": 0.05, "source": None}],
                     elapsed_ms=12.5, chat_wrapped=False)
    h = r._repr_html_()
    assert _headers(h) == ["rank", "token", "token_id", "probability"]   # all-None column hidden
    assert '<span class="big">77.25%</span>' in h and 'style="width:77.2%"' in h
    assert "bar hi" in h and "bar lo" in h
    assert '<span class="tok"> Paris</span>' in h and '<span class="tok blank">␣</span>' in h
    assert "2 rows · raw prompt (no chat wrapping) · 12.5 ms" in h


def test_html_escapes_and_styles_messages_and_errors():
    r = Result.table("WALK", ["layer", "top_token", "gate"],
                     [{"layer": 0, "top_token": "<b>&", "gate": -2.0},
                      {"layer": 0, "top_token": "x", "gate": 0.1}])
    h = to_html(r)
    assert "&lt;b&gt;&amp;" in h and "<b>&" not in h
    assert '<span class="neg big">-2.00</span>' in h and '<span class="pos dim">0.1000</span>' in h
    e = to_html(Result.error("INFER", "no vindex <loaded>"))
    assert '<div class="err">error: no vindex &lt;loaded&gt;</div>' in e and "lql-error" in e
    m = to_html(Result.msg("USE", "Using x"))
    assert '<div class="msg">Using x</div>' in m
    t = to_html(Result.text("INFER", "a\nb"))
    assert "<pre>a\nb</pre>" in t


def test_html_groups_layers_like_the_terminal(tiny):
    r = tiny.query(f'EXPLAIN WALK "{PROMPT}" TOP 2')
    h = r._repr_html_()
    layers = list(dict.fromkeys(row["layer"] for row in r.rows))
    assert h.count("<tbody>") == len(layers)                 # one section per layer
    body_rows = re.findall(r"<tr>(.*?)</tr>", h.split("</thead>")[1])
    assert len(body_rows) == len(r.rows)
    firsts = [re.findall(r"<td[^>]*>(.*?)</td>", row)[0] for row in body_rows]
    assert firsts == [str(row["layer"]) if i == 0 or r.rows[i - 1]["layer"] != row["layer"] else ""
                      for i, row in enumerate(r.rows)]


def test_html_describe_bands_and_stats_record(tiny):
    r = tiny.query('DESCRIBE "France" ALL LAYERS')
    h = r._repr_html_()
    bands = list(dict.fromkeys(row["band"] for row in r.rows))
    assert h.count('<div class="band">') == len(bands) and '<div class="entity">France</div>' in h
    s = tiny.query("STATS")._repr_html_()
    assert "<thead>" not in s and "<th>hidden_size</th>" in s     # one wide row: field / value


def test_mimebundle_plain_text_is_the_terminal_table(tiny):
    r = tiny.query(f'INFER "{PROMPT}" TOP 2 RAW')
    b = r._repr_mimebundle_()
    assert set(b) == {"text/plain", "text/html"}
    lines = b["text/plain"].splitlines()
    assert lines[0].split() == ["rank", "token", "token_id", "probability"]
    assert "\x1b[" not in b["text/plain"] and lines[-1].startswith("2 rows")


def test_execute_returns_a_results_sequence(tiny):
    rs = tiny.execute(f'INFER "{PROMPT}" TOP 2 RAW; SHOW LAYERS')
    assert isinstance(rs, Results) and isinstance(rs, list) and len(rs) == 2
    h = rs._repr_html_()
    assert h.count('<div class="lql-result') == 2
    assert h.index('data-statement="INFER"') < h.index('data-statement="SHOW LAYERS"')
    assert h.count("<style>") == 1
    from IPython.lib.pretty import pretty
    text = pretty(rs)                                           # IPython's text/plain
    assert "Result(" not in text and "rank" in text and "num_features" in text


# --------------------------------------------------------------------------- magics

def test_interpolate():
    from lql.notebook.magics import interpolate

    class Obj:
        name = "France"
    ns = {"p": 'say "hi"', "n": 3, "o": Obj()}
    assert interpolate("INFER {p!q} TOP {n}", ns) == 'INFER "say \\"hi\\"" TOP 3'
    assert interpolate('DESCRIBE "{o.name}" {{x}}', ns) == 'DESCRIBE "France" {x}'
    with pytest.raises(ExecutionError, match="'missing' is not defined"):
        interpolate("WALK {missing}", ns)
    with pytest.raises(ExecutionError, match="no attribute 'nope'"):
        interpolate("WALK {o.nope}", ns)


@pytest.fixture
def ipy(monkeypatch):
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    import lql.notebook.magics as magics
    monkeypatch.setattr(magics, "SESSION", None)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "lql")
    yield ip
    ip.run_line_magic("unload_ext", "lql")


def test_magics_run_in_one_session(ipy, capsys):
    import lql.notebook.magics as magics
    v = tiny_vindex("llama", level="inference")
    ipy.user_ns["vpath"] = str(v)
    ipy.user_ns["prompt"] = PROMPT
    rs = ipy.run_cell_magic("lql", "", "USE {vpath!q};\nSHOW LAYERS")
    assert isinstance(rs, Results) and [r.statement for r in rs] == ["USE", "SHOW LAYERS"]
    r = ipy.run_line_magic("lql", "INFER {prompt!q} TOP 2 RAW")   # the same session: still USEd
    assert isinstance(r, Result) and r.statement == "INFER" and r.meta["prompt"] == PROMPT
    assert magics.session().vindex is not None and str(magics.session().vindex.path) == str(v)
    res = ipy.run_cell('x = %lql TRACE {prompt!q} RAW')
    assert res.success and ipy.user_ns["x"].statement == "TRACE"


def test_magic_errors_are_one_line_and_fail_the_cell(ipy, monkeypatch):
    shown = []                      # what the kernel would send as the error's traceback
    monkeypatch.setattr(ipy, "_showtraceback", lambda etype, value, stb: shown.append(stb))
    res = ipy.run_cell('%lql WALK "x"')
    assert not res.success and isinstance(res.error_in_exec, NoVindexError)
    (stb,) = shown
    assert len(stb) == 1 and "NoVindexError: " in stb[0] and str(res.error_in_exec) in stb[0]
    res = ipy.run_cell("1 / 0")                  # other exceptions keep IPython's traceback
    assert isinstance(res.error_in_exec, ZeroDivisionError) and len(shown[-1]) > 1


# --------------------------------------------------------------------------- import lightness

def test_base_import_and_statements_load_no_optional_library(tmp_path):
    v = tiny_vindex("llama", level="inference")
    code = f"""
import sys, lql
from lql.session import Session
s = Session()
rs = s.execute('SHOW MODELS; USE "{v}"; INFER "{PROMPT}" TOP 2 RAW; TRACE "{PROMPT}" RAW')
html = rs._repr_html_() + rs[-1]._repr_html_()
print(len(html) > 0, [m for m in {HEAVY!r} if m in sys.modules])
"""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True []"


def test_cli_start_imports_no_optional_library(lql_env, lql_cmd, tmp_path):
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "lql", "-e", "SHOW MODELS"],
                       env=lql_env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "lql" in imported and not imported & set(HEAVY), imported & set(HEAVY)


# --------------------------------------------------------------------------- the example notebook

@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    smollm2_gguf()                                 # skips without the bundled model
    nb_path = tmp_path / "quickstart.ipynb"
    shutil.copy(REPO / "examples" / "quickstart.ipynb", nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored clean
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("LQL_PATH", raising=False)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()                               # raises CellExecutionError when a cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    pngs = [o.data["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3 and all(p.startswith("iVBORw0KGgo") for p in pngs)   # base64 PNG
    assert any("<table>" in h and 'data-statement="STATS"' in h for h in html)
    assert any('data-statement="DESCRIBE"' in h for h in html)
    compare = [h for h in html if 'data-statement="INFER"' in h and "dense_token" in h]
    assert compare and "Pose" in compare[-1]       # the inserted fact, next to the base model
    assert not any("lql-error" in h for h in html)
    assert (tmp_path / "smollm2.vindex" / "index.json").is_file()
    json.dumps(nb)                                 # the executed notebook is still JSON
