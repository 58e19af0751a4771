"""Session: dispatch, state, scripts, errors, pipes, cancellation, SHOW MODELS, HELP."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import ClassVar

import pytest

import lql.exec as registry
from lql import ast
from lql.errors import ExecutionError, LqlError, LqlSyntaxError, NotBuiltError
from lql.result import Result
from lql.session import Cancelled, Session, is_complete, split_statements


@dataclass(frozen=True)
class Frob(ast.Statement):
    """A statement nobody handles."""
    keyword: ClassVar[str] = "FROB"

    def to_lql(self) -> str:
        return "FROB"


@pytest.fixture
def handlers(monkeypatch):
    """Register test handlers without leaking them into other tests."""
    monkeypatch.setattr(registry, "_HANDLERS", dict(registry._HANDLERS))
    monkeypatch.setattr(registry, "ALL_GROUPS", ())
    return registry.handler


@pytest.fixture
def session(tmp_path, monkeypatch):
    monkeypatch.delenv("LQL_PATH", raising=False)
    return Session(cwd=tmp_path)


# --------------------------------------------------------------------------- dispatch

def test_state_defaults(session, tmp_path):
    assert session.vindex is None and session.model_source is None and session.overlay is None
    assert session.chat_mode == ast.ChatMode.AUTO
    assert session.cwd == tmp_path.resolve()
    assert session.last_result is None


def test_dispatch_to_registered_handler_fills_elapsed(session, handlers):
    seen = []

    @handlers(Frob)
    def frob(s, stmt):
        seen.append((s, stmt))
        return Result.msg("FROB", "frobbed")

    r = session.execute(Frob())
    assert isinstance(r, Result) and r.message == "frobbed"
    assert seen == [(session, Frob())]
    assert isinstance(r.meta["elapsed_ms"], float)
    assert session.last_result is r


def test_unhandled_statement_is_not_built(session, handlers):
    with pytest.raises(NotBuiltError, match=r"FROB is not built yet"):
        session.execute(Frob())


def test_not_built_names_the_capability(session, monkeypatch):
    monkeypatch.setattr(registry, "_HANDLERS", {})
    monkeypatch.setattr(registry, "_imported", set(registry.ALL_GROUPS))   # pretend: no modules
    with pytest.raises(NotBuiltError, match=r"^INFER is not built yet \(inference engine\)$"):
        session.query('INFER "The capital of France is"')


def test_handler_must_return_result(session, handlers):
    handlers(Frob)(lambda s, stmt: "nope")
    with pytest.raises(TypeError, match="not Result"):
        session.execute(Frob())


def test_execute_text_returns_list_and_query_one(session):
    rs = session.execute("SET CHAT OFF; SHOW MODELS")
    assert [r.statement for r in rs] == ["SET CHAT", "SHOW MODELS"]
    r = session.query("SET CHAT ON;")
    assert r.statement == "SET CHAT"
    with pytest.raises(ExecutionError, match="exactly one statement"):
        session.query("SET CHAT ON; SET CHAT OFF")


# --------------------------------------------------------------------------- SET CHAT

@pytest.mark.parametrize("mode", ["AUTO", "ON", "OFF"])
def test_set_chat_records_mode(session, mode):
    r = session.query(f"set chat {mode.lower()}")
    assert r.kind == "message" and r.statement == "SET CHAT"
    assert mode in r.message and r.meta["chat_mode"] == mode
    assert session.chat_mode == ast.ChatMode[mode]


# --------------------------------------------------------------------------- scripts

@pytest.fixture
def failing_stats(handlers):
    @handlers(ast.Stats)
    def stats(s, stmt):
        raise ExecutionError(f"no such vindex {stmt.path!r}")
    return stats


SCRIPT = 'SET CHAT OFF;\n-- a comment\nSHOW MODELS;\n\nSTATS "nowhere";\nSET CHAT ON;\n'


def test_script_stops_at_first_error_with_line(session, failing_stats):
    with pytest.raises(ExecutionError) as ei:
        session.execute(SCRIPT)
    err = ei.value
    assert str(err) == "line 5: no such vindex 'nowhere'"
    assert err.lql_line == 5 and err.lql_statement == "STATS"
    assert [r.statement for r in err.results] == ["SET CHAT", "SHOW MODELS"]
    assert session.chat_mode == ast.ChatMode.OFF          # the last SET CHAT never ran


def test_single_statement_error_has_no_line_prefix(session, failing_stats):
    with pytest.raises(ExecutionError, match=r"^no such vindex"):
        session.execute('STATS "x"')


def test_run_file_reports_file_and_line(session, failing_stats, tmp_path):
    (tmp_path / "s.lql").write_text(SCRIPT)
    with pytest.raises(ExecutionError, match=r"^s\.lql, line 5: no such vindex"):
        session.run_file("s.lql")
    with pytest.raises(ExecutionError, match="cannot read script"):
        session.run_file("missing.lql")


def test_syntax_error_stops_before_anything_runs(session):
    with pytest.raises(LqlSyntaxError) as ei:
        session.execute("SET CHAT OFF;\nSHOW MODLES;")
    assert ei.value.line == 2
    assert "^" in ei.value.pretty()
    assert session.chat_mode == ast.ChatMode.AUTO


def test_continue_on_error(session, failing_stats, tmp_path):
    text = 'SET CHAT OFF;\nSTATS "a";\nSHOW MODLES;\n  SET CHAT ON; STATS "b"\n'
    rs = session.execute(text, continue_on_error=True)
    assert [(r.statement, r.kind) for r in rs] == [
        ("SET CHAT", "message"), ("STATS", "error"), ("SYNTAX ERROR", "error"),
        ("SET CHAT", "message"), ("STATS", "error")]
    assert rs[1].message == "line 2: no such vindex 'a'" and rs[1].meta["line"] == 2
    assert rs[2].meta["line"] == 3 and "line 3" in rs[2].message
    assert rs[4].meta["line"] == 4
    assert session.chat_mode == ast.ChatMode.ON
    (tmp_path / "c.lql").write_text(text)
    assert len(session.run_file(tmp_path / "c.lql", continue_on_error=True)) == 5


def test_internal_error_in_continue_mode_becomes_error_result(session, handlers):
    @handlers(ast.Stats)
    def boom(s, stmt):
        return {}["x"]
    rs = session.execute("STATS; SET CHAT OFF", continue_on_error=True)
    assert rs[0].kind == "error" and "internal error: KeyError" in rs[0].message
    assert rs[1].kind == "message"


# --------------------------------------------------------------------------- pipes

def test_pipe_runs_both_and_passes_left_result(session, handlers):
    seen = {}

    @handlers(ast.Stats)
    def stats(s, stmt):
        seen["ctx"] = s.last_result
        return Result.table("STATS", ["model"], [{"model": "m"}])

    rs = session.execute("SET CHAT OFF |> STATS; SET CHAT ON")
    assert [r.statement for r in rs] == ["SET CHAT", "STATS", "SET CHAT"]
    assert seen["ctx"] is rs[0]
    r = session.execute(session.parse("SET CHAT OFF |> STATS")[0])
    assert r.statement == "STATS"


# --------------------------------------------------------------------------- cancellation

def test_cancel_flag(session, handlers):
    @handlers(Frob)
    def frob(s, stmt):
        s.cancel()
        s.check_cancelled()
        return Result.msg("FROB", "unreachable")

    with pytest.raises(Cancelled) as ei:
        session.execute(Frob())
    assert isinstance(ei.value, KeyboardInterrupt) and str(ei.value) == "cancelled"
    session.cancel()                    # a stale request does not hit the next statement
    handlers(Frob)(lambda s, stmt: (s.check_cancelled(), Result.msg("FROB", "ok"))[1])
    assert session.execute(Frob()).message == "ok"


def test_keyboard_interrupt_in_script_becomes_cancelled(session, handlers):
    @handlers(ast.Stats)
    def stats(s, stmt):
        raise KeyboardInterrupt
    with pytest.raises(Cancelled) as ei:
        session.execute("SET CHAT OFF;\nSTATS")
    assert ei.value.lql_line == 2


# --------------------------------------------------------------------------- splitting

def test_split_statements_respects_strings_and_comments():
    text = 'A "x;y"; -- c;\nB \'p;\' /* ; */;\n-- only a comment;\n  C'
    parts = [text[a:b].strip() for a, b in split_statements(text)]
    assert parts == ['A "x;y";', "-- c;\nB 'p;' /* ; */;", "-- only a comment;\n  C"]
    assert split_statements("-- nothing; here\n/* ; */ ;") == []


@pytest.mark.parametrize("text,done", [
    ("", True), ("  -- hi", True), ("SHOW MODELS;", True), ("SHOW MODELS; -- x", True),
    ("SHOW MODELS", False), ('DESCRIBE "a;', False), ('DESCRIBE "a\\";', False),
    ('DESCRIBE "a;";', True), ("SET CHAT /* ; ", False), ("A; B", False), ("A;\n", True),
])
def test_is_complete(text, done):
    assert is_complete(text) is done


# --------------------------------------------------------------------------- SHOW MODELS

def _vindex(path, **over):
    path.mkdir(parents=True, exist_ok=True)
    index = {"version": 2, "model": "org/Model-1", "family": "llama", "dtype": "f16",
             "num_layers": 30, "extract_level": "browse"}
    index.update(over)
    (path / "index.json").write_text(json.dumps(index))
    (path / "gate_vectors.bin").write_bytes(b"\0" * (1024 * 1024))
    return path


def test_show_models(session, tmp_path, monkeypatch):
    _vindex(tmp_path / "b.vindex", num_layers=12, dtype="f32", extract_level="all")
    _vindex(tmp_path / "a.vindex")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "index.json").write_text("{not json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.json").write_text('{"pages": []}')   # not a vindex
    _vindex(tmp_path / ".hidden")
    (tmp_path / "file.txt").write_text("x")
    extra = tmp_path / "elsewhere"
    _vindex(extra / "far.vindex", model="org/Far")
    monkeypatch.setenv("LQL_PATH", str(extra) + os.pathsep + str(tmp_path / "nope"))

    r = session.query("SHOW MODELS")
    assert r.statement == "SHOW MODELS" and r.kind == "table"
    assert r.columns == ["name", "path", "model", "family", "layers", "level", "dtype",
                         "size_mb", "note"]
    by = {row["name"]: row for row in r.rows}
    assert list(by) == ["a.vindex", "b.vindex", "broken", "far.vindex"]
    assert by["a.vindex"] == {"name": "a.vindex", "path": "a.vindex", "model": "org/Model-1",
                              "family": "llama", "layers": 30, "level": "browse",
                              "dtype": "f16", "size_mb": 1.0, "note": None}
    assert by["b.vindex"]["layers"] == 12 and by["b.vindex"]["level"] == "all"
    assert "corrupt" in by["broken"]["note"] and by["broken"]["layers"] is None
    assert by["far.vindex"]["path"] == "elsewhere/far.vindex"   # under cwd: relative


def test_show_models_cwd_itself_and_empty(tmp_path, monkeypatch):
    monkeypatch.delenv("LQL_PATH", raising=False)
    v = _vindex(tmp_path / "v")
    r = Session(cwd=v).query("SHOW MODELS")
    assert [row["path"] for row in r.rows] == ["."]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = Session(cwd=empty).query("SHOW MODELS")
    assert r.rows == [] and "no vindexes found" in r.message


# --------------------------------------------------------------------------- HELP

def test_help_overview_and_topics(session):
    r = session.query("HELP")
    assert r.statement == "HELP" and r.kind == "text" and "DESCRIBE" in r.message
    assert "DESCRIBE <entity>" in session.query("HELP DESCRIBE;").message
    assert "WITH ATTENTION" in session.query("help explain infer").message
    assert "SET CHAT {AUTO | ON | OFF}" in session.query("HELP SET CHAT").message


def test_every_statement_has_help(session):
    for cls in ast.STATEMENT_TYPES if hasattr(ast, "STATEMENT_TYPES") else ():
        if cls.__name__ == "Pipe":
            continue
        r = session.execute(ast.Help(cls.keyword))
        assert r.kind == "text" and len(r.message) > 50, cls.keyword


def test_unknown_help_topic_lists_topics(session):
    with pytest.raises(LqlError, match=r"no help for 'FROBNICATE'; topics: .*DESCRIBE"):
        session.execute(ast.Help("FROBNICATE"))
