"""The ``lql`` command: formats, exit codes, errors (run as a real subprocess)."""

from __future__ import annotations

import json
import subprocess

import pytest

from lql.cli import main


def run(cmd, args, env, cwd, stdin=None):
    p = subprocess.run(cmd + args, env=env, cwd=cwd, capture_output=True, text=True,
                       input=stdin, timeout=60)
    return p.returncode, p.stdout, p.stderr


def make_vindex(path):
    path.mkdir()
    (path / "index.json").write_text(json.dumps({
        "model": "org/M", "family": "llama", "dtype": "f16", "num_layers": 4,
        "extract_level": "browse"}))


def test_json_output_is_exactly_one_array(lql_cmd, lql_env, tmp_path):
    make_vindex(tmp_path / "m.vindex")
    rc, out, err = run(lql_cmd, ["--format", "json", "-e", "SET CHAT OFF; SHOW MODELS |> HELP SHOW"],
                       lql_env, tmp_path)
    assert rc == 0, err
    data = json.loads(out)                      # the whole of stdout is one JSON document
    assert isinstance(data, list)
    assert [d["statement"] for d in data] == ["SET CHAT", "SHOW MODELS", "HELP"]
    assert data[1]["rows"][0]["name"] == "m.vindex" and data[1]["rows"][0]["layers"] == 4
    assert all(isinstance(d["meta"]["elapsed_ms"], float) for d in data)
    assert set(data[0]) == {"statement", "kind", "columns", "rows", "message", "meta"}


def test_json_with_error_is_still_one_array_and_fails(lql_cmd, lql_env, tmp_path):
    rc, out, err = run(lql_cmd, ["-f", "json", "-e", "SET CHAT ON;\nSHOW MODLES"], lql_env, tmp_path)
    assert rc == 1
    data = json.loads(out)
    assert [d["kind"] for d in data] == ["error"] and data[0]["statement"] == "SYNTAX ERROR"
    assert "Traceback" not in err and "^" in err


def test_csv_output(lql_cmd, lql_env, tmp_path):
    make_vindex(tmp_path / "m.vindex")
    rc, out, err = run(lql_cmd, ["--format", "csv", "-e", "SET CHAT OFF; SHOW MODELS"],
                       lql_env, tmp_path)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "name,path,model,family,layers,level,dtype,size_mb,note"
    assert lines[1].startswith("m.vindex,m.vindex,org/M,llama,4,browse,f16,0.0,")
    assert "chat mode set to OFF" in err          # non-table results go to stderr


def test_syntax_error_caret_on_stderr(lql_cmd, lql_env, tmp_path):
    rc, out, err = run(lql_cmd, ["-e", "SET CHAT OF"], lql_env, tmp_path)
    assert rc == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("error: syntax error at line 1, column 10")
    assert "did you mean OFF" in lines[0]
    assert lines[1] == "  SET CHAT OF" and lines[2] == "           ^"
    assert "Traceback" not in err


def test_script_file_stops_at_first_error(lql_cmd, lql_env, tmp_path):
    script = tmp_path / "s.lql"
    script.write_text('SET CHAT OFF;\n\nINFER "x";\nSET CHAT ON;\n')
    for args in (["s.lql"], ["run", "s.lql"]):
        rc, out, err = run(lql_cmd, args, lql_env, tmp_path)
        assert rc == 1
        assert "chat mode set to OFF" in out and "chat mode set to ON" not in out
        assert err.strip() == "error: s.lql, line 3: INFER is not built yet (inference engine)" \
            or ("s.lql, line 3: " in err and err.count("\n") == 1)


def test_continue_on_error(lql_cmd, lql_env, tmp_path):
    script = tmp_path / "s.lql"
    script.write_text('SET CHAT OFF;\nSHOW MODLES;\nINFER "x";\nSET CHAT ON;\n')
    rc, out, err = run(lql_cmd, ["--continue-on-error", "--format", "json", str(script)],
                       lql_env, tmp_path)
    assert rc == 1
    data = json.loads(out)
    assert [(d["statement"], d["kind"]) for d in data] == [
        ("SET CHAT", "message"), ("SYNTAX ERROR", "error"), ("INFER", "error"),
        ("SET CHAT", "message")]
    assert data[2]["meta"]["line"] == 3
    assert err.count("error:") == 2


def test_table_output_plain_when_piped(lql_cmd, lql_env, tmp_path):
    make_vindex(tmp_path / "m.vindex")
    rc, out, err = run(lql_cmd, ["-e", "SHOW MODELS"], lql_env, tmp_path)
    assert rc == 0 and "\x1b[" not in out
    assert "m.vindex" in out and "org/M" in out and "1 row" in out


def test_stdin_script_and_usage_errors(lql_cmd, lql_env, tmp_path):
    rc, out, err = run(lql_cmd, [], lql_env, tmp_path, stdin="SET CHAT ON;")
    assert rc == 0 and "chat mode set to ON" in out
    rc, out, err = run(lql_cmd, ["--format", "xml", "-e", "HELP"], lql_env, tmp_path)
    assert rc == 2 and "invalid choice" in err
    rc, out, err = run(lql_cmd, ["missing.lql"], lql_env, tmp_path)
    assert rc == 1 and err.startswith("error: cannot read script 'missing.lql'")


def test_subcommand_failure_is_one_clear_line(lql_cmd, lql_env, tmp_path):
    rc, out, err = run(lql_cmd, ["extract", str(tmp_path / "nope"), "-o", str(tmp_path / "o")],
                       lql_env, tmp_path)
    assert rc != 0 and err.startswith("error:") and "Traceback" not in err


# --------------------------------------------------------------------------- in process

def test_main_in_process(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LQL_PATH", raising=False)
    assert main(["-f", "json", "-e", "SET CHAT OFF", "-e", "HELP USE"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["statement"] for d in data] == ["SET CHAT", "HELP"]
    assert main(["--help"]) == 0
    assert main(["verify"]) == 2


def test_internal_errors_have_no_traceback(capsys, tmp_path, monkeypatch):
    import lql.exec as registry
    from lql import ast
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_HANDLERS", dict(registry._HANDLERS))
    registry.handler(ast.Stats)(lambda s, stmt: 1 / 0)
    monkeypatch.delenv("LQL_DEBUG", raising=False)
    assert main(["-e", "STATS"]) == 1
    err = capsys.readouterr().err
    assert err == ("error: internal error: ZeroDivisionError: division by zero "
                   "(set LQL_DEBUG=1 for the traceback)\n")
    monkeypatch.setenv("LQL_DEBUG", "1")
    assert main(["-e", "STATS"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_examples_basics_runs(fmt, capsys, monkeypatch):
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    assert main(["--format", fmt, "examples/basics.lql"]) == 0
