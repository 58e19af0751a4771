"""The REPL: completion and highlighting units, and real sessions in a pseudo-terminal."""

from __future__ import annotations

import re
import sys
import time

import pytest
from prompt_toolkit.document import Document

from lql.repl import LqlCompleter, LqlLexer, lex
from lql.session import Session

pexpect = pytest.importorskip("pexpect")

PROMPT = r"lql>"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def complete(text: str, session=None) -> list[str]:
    comp = LqlCompleter(session or Session())
    return [c.text for c in comp.get_completions(Document(text, len(text)), None)]


# --------------------------------------------------------------------------- units

def test_completes_statement_keywords():
    words = complete("DES")
    assert words == ["DESCRIBE"]
    assert "SHOW" in complete("") and "SELECT" in complete("")
    assert complete("des") == ["describe"]                    # follows the user's case


def test_completes_clauses_after_describe_entity():
    words = complete('DESCRIBE "France" ')
    for w in ("ALL", "AT", "BRIEF", "VERBOSE", "RAW", "SYNTAX", "KNOWLEDGE", "OUTPUT"):
        assert w in words
    assert "SELECT" not in words
    assert complete('DESCRIBE "France" VER') == ["VERBOSE"]


def test_completes_after_previous_statement_and_fields():
    assert complete("SET CHAT ON; SHOW MOD") == ["MODELS"]
    assert set(complete("SELECT ")) >= {"entity", "relation", "target", "layer", "gate"}
    assert complete("SELECT ent") == ["entity"]


def test_completes_paths_inside_quotes(tmp_path):
    (tmp_path / "smollm2.vindex").mkdir()
    (tmp_path / "notes.txt").write_text("")
    words = complete('USE "smo', Session(cwd=tmp_path))
    assert words and all(w.startswith("llm2.vindex") for w in words)
    assert complete('USE "smollm2.vindex"; -- "smo', Session(cwd=tmp_path)) == []


def test_vocabulary_hook_inside_entity_quotes():
    class S(Session):
        def vocabulary_words(self, prefix=""):
            return ["France", "Frankfurt", "Germany"]
    assert complete('DESCRIBE "Fra', S()) == ["France", "Frankfurt"]
    assert complete('DESCRIBE "Fra', Session()) == []        # no hook: nothing


def test_lexer_styles():
    frags = lex('DESCRIBE "x" AT LAYER 27; -- hi\nSELECT entity', {"DESCRIBE", "AT", "LAYER", "SELECT"})
    styles = {text: style for style, text in frags}
    assert styles["DESCRIBE"] == "class:lql.keyword"
    assert styles['"x"'] == "class:lql.string"
    assert styles["27"] == "class:lql.number"
    assert styles["-- hi"] == "class:lql.comment"
    assert styles["entity"] == "class:lql.field"
    get_line = LqlLexer({"SELECT"}).lex_document(Document('/* a\nb */ SELECT "s\nt"'))
    assert get_line(0) == [("class:lql.comment", "/* a")]
    assert ("class:lql.keyword", "SELECT") in get_line(1)


# --------------------------------------------------------------------------- pseudo-terminal

@pytest.fixture
def spawn(lql_env, tmp_path):
    children = []

    def start(args=("-m", "lql")):
        env = dict(lql_env, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
        child = pexpect.spawn(sys.executable, list(args), env=env, cwd=str(tmp_path),
                              encoding="utf-8", timeout=20, dimensions=(40, 120))
        children.append(child)
        child.expect(PROMPT)
        return child

    yield start
    for c in children:
        if c.isalive():
            c.terminate(force=True)


def _until_prompt(child) -> str:
    """Output between the end of input and the next prompt: prompt_toolkit switches
    bracketed paste off when it hands the input over (ESC[?2004l) and on again when
    the next prompt starts (ESC[?2004h)."""
    child.expect_exact("\x1b[?2004l")
    child.expect_exact("\x1b[?2004h")
    return ANSI.sub("", child.before)


def test_repl_session(spawn, lql_env, tmp_path):
    child = spawn()
    # a multi-line statement: Enter without ';' continues
    child.send("SET CHAT\r")
    child.expect(r"\.\.\.>")
    child.send(" OFF;\r")
    out = _until_prompt(child)
    assert "chat mode set to OFF" in out and " ms" in out
    # Ctrl-C on a partial line discards it; the shell goes on
    child.send("SHOW MOD")
    time.sleep(0.2)
    child.send("\x03")
    _until_prompt(child)
    child.send("SHOW MODELS;\r")
    out = _until_prompt(child)
    assert "no vindexes found" in out
    # HELP, with and without ';'
    child.send("HELP DESCRIBE;\r")
    assert "DESCRIBE <entity>" in _until_prompt(child)
    child.send("help\r")
    assert "LQL help" in _until_prompt(child)
    # a syntax error with a caret, and the shell goes on
    child.send("SET CHAT OF;\r")
    out = _until_prompt(child)
    assert "did you mean OFF" in out and "  SET CHAT OF;" in out and "           ^" in out
    child.send("INFER 'x';\r")                       # no vindex in use / not built: an error
    out = _until_prompt(child)
    assert "error:" in out and "Traceback" not in out
    # Ctrl-D exits cleanly
    child.send("\x04")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = (tmp_path / "history").read_text()
    assert "+SET CHAT\n+ OFF;" in history and "+SHOW MODELS;" in history


SLOW = """
import time
from lql import ast
from lql.exec import handler
from lql.result import Result

@handler(ast.Stats)
def slow(session, stmt):
    print("working", flush=True)
    for _ in range(600):
        time.sleep(0.05)
    return Result.msg("STATS", "finished")

class S(__import__("lql.session").session.Session):
    edits = True
    def has_unsaved_edits(self):
        return self.edits

from lql.repl import run_repl
raise SystemExit(run_repl(session=S()))
"""


def test_ctrl_c_cancels_running_statement_and_ctrl_d_warns(spawn):
    child = spawn(("-c", SLOW))
    child.send("STATS;\r")
    child.expect("working")
    time.sleep(0.3)
    child.send("\x03")
    child.expect_exact("\x1b[?2004h")                  # the next prompt
    out = ANSI.sub("", child.before)
    assert "cancelled" in out and "finished" not in out
    child.send("SET CHAT ON;\r")
    assert "chat mode set to ON" in _until_prompt(child)
    child.send("\x04")
    assert "unsaved edits" in _until_prompt(child)        # first Ctrl-D only warns
    child.send("\x04")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_entity_completion_from_the_vindex_vocabulary(tmp_path):
    """Inside DESCRIBE's quotes, Tab offers whole words of the vindex's own vocabulary."""
    from vindex_fixtures import tiny_vindex
    s = Session(cwd=tmp_path)
    assert s.vocabulary_words("Fra") == []                  # no vindex in use: nothing
    s.query(f'USE "{tiny_vindex("llama", "browse", "f32")}"')
    tok = s.vindex.tokenizer
    words = complete('DESCRIBE "Fra', s)
    assert "France" in words and all(w.startswith("Fra") for w in words)
    assert all(len(tok.encode(" " + w, add_special_tokens=False).ids) == 1 for w in words)
    assert "Paris" in s.vocabulary_words("pari")            # case-insensitive underneath
