"""The interactive LQL shell (prompt_toolkit + rich).

Input rules (the choices, as in psql / sqlite3):

* **Enter submits only when the input ends with ``;``** (outside strings and
  comments). Otherwise Enter starts a continuation line (prompt ``  ...> ``).
  Esc-Enter (Alt-Enter) submits whatever is there, with or without ``;``.
* The bare words ``exit``, ``quit``, ``\\q`` and ``help`` work without ``;``.
* Ctrl-C discards the current input; during a running statement it cancels
  the statement (reported as "cancelled") and the shell goes on.
* Ctrl-D on an empty line exits. With unsaved edits (``session.has_unsaved_edits()``)
  the first Ctrl-D only warns; a second one exits.
* History is kept in ``~/.lql_history`` (or ``$LQL_HISTORY``).
* Tab completes keywords for the position in the statement (from the grammar:
  ``lql.lang.expected_at``), field names, file paths inside quotes after
  path-taking keywords (USE, INTO, PATCH, ...), and entity names inside quotes
  elsewhere when the session offers ``vocabulary_words(prefix)``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from prompt_toolkit.completion import Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.lexers import Lexer

from .lang.grammar import FIELDS, KEYWORDS
from .lang.text import (
    ends_in_comment,
    highlight,
    is_complete,
    last_word,
    open_string_at_end,
    statement_tail,
)
from .session import Session

PROMPT = "lql> "
CONTINUATION = "  ...> "
REPL_COMMANDS = {"exit", "quit", "\\q", "help"}

#: keywords after which a quoted value is a file-system path
PATH_KEYWORDS = {"USE", "INTO", "PATCH", "SAVE", "STATS", "MERGE", "DIFF", "VINDEX", "MODEL",
                 "COMPILE", "EXTRACT", "RUN", "SOURCE"}
#: keywords after which a quoted value is an entity / prompt (vocabulary completion)
ENTITY_KEYWORDS = {"DESCRIBE", "WALK", "INFER", "TRACE", "TO", "FOR", "VALUES", "ENTITY", "=",
                   ",", "(", "TARGET", "LIKE"}

def keywords() -> set[str]:
    """Every LQL keyword (from the grammar)."""
    return set(KEYWORDS)


# --------------------------------------------------------------------------- lexer

STYLE_RULES = {
    "lql.keyword": "bold ansiblue",
    "lql.field": "ansicyan",
    "lql.string": "ansigreen",
    "lql.number": "ansimagenta",
    "lql.comment": "italic ansibrightblack",
    "lql.operator": "ansiyellow",
}


def lex(text: str, kws: set[str]) -> list[tuple[str, str]]:
    """(style, text) fragments of LQL source (cut by lql.lang's token patterns)."""
    return [(f"class:lql.{cls}" if cls else "", piece)
            for cls, piece in highlight(text, kws, FIELDS)]


class LqlLexer(Lexer):
    """Keywords, strings, numbers, comments, operators (multi-line aware)."""

    def __init__(self, kws: set[str] | None = None):
        self._kws = kws

    @property
    def kws(self) -> set[str]:
        if self._kws is None:
            self._kws = keywords()
        return self._kws

    def lex_document(self, document: Document):
        lines: list[list[tuple[str, str]]] = [[]]
        for style, s in lex(document.text, self.kws):
            parts = s.split("\n")
            for i, part in enumerate(parts):
                if i:
                    lines.append([])
                if part:
                    lines[-1].append((style, part))

        def get_line(n: int):
            return lines[n] if n < len(lines) else []
        return get_line


# --------------------------------------------------------------------------- completion

def _is_keyword_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z_0-9]*( [A-Z][A-Z_0-9]*)*", name))


class LqlCompleter(Completer):
    """Context-aware completion: see the module docstring."""

    def __init__(self, session: Session | None = None):
        self.session = session
        self._paths = PathCompleter(expanduser=True, get_paths=self._roots)
        self._kws: set[str] | None = None

    def _roots(self) -> list[str]:
        return [str(self.session.cwd)] if self.session is not None else ["."]

    @property
    def kws(self) -> set[str]:
        if self._kws is None:
            self._kws = keywords()
        return self._kws

    def expected(self, text: str) -> set[str] | None:
        from .lang.api import expected_at
        try:
            return set(expected_at(text))
        except Exception:
            return None

    def get_completions(self, document: Document, complete_event) -> Iterable[Completion]:
        stmt = statement_tail(document.text_before_cursor)
        if ends_in_comment(stmt):
            return
        quote = open_string_at_end(stmt)
        if quote is not None:
            pos, _q = quote
            content = stmt[pos + 1:]
            before = last_word(stmt[:pos])
            if before in PATH_KEYWORDS:
                sub = Document(content, len(content))
                yield from self._paths.get_completions(sub, complete_event)
            else:
                yield from self._vocabulary(content)
            return
        m = re.search(r"[A-Za-z_][A-Za-z_0-9]*$", stmt)
        prefix = m.group(0) if m else ""
        head = stmt[: len(stmt) - len(prefix)]
        if prefix and head and not head[-1].isspace() and head[-1] not in "(,=<>!|":
            return                       # in the middle of something else (a number, ...)
        expected = self.expected(head)
        words: dict[str, str] = {}
        if expected is None:
            for k in self.kws:
                words[k] = "keyword"
            for f in FIELDS:
                words[f] = "field"
        else:
            for item in expected:
                s = str(item)
                if s.lower() in FIELDS:
                    words[s.lower()] = "field"
                elif "field" in s.lower():            # the grammar's "a field name"
                    for f in FIELDS:
                        words[f] = "field"
                elif _is_keyword_name(s) and (s in self.kws or " " in s):
                    words[s] = "keyword"
        lower = prefix.islower()
        for w in sorted(words):
            if w.lower().startswith(prefix.lower()):
                text = w.lower() if (lower and words[w] == "keyword") else w
                yield Completion(text, start_position=-len(prefix), display_meta=words[w])

    def _vocabulary(self, content: str) -> Iterable[Completion]:
        if self.session is None:
            return
        try:
            words = self.session.vocabulary_words(content)
            n = 0
            for w in words:
                w = str(w)
                if w.startswith(content) and w != content:
                    yield Completion(w, start_position=-len(content), display_meta="entity")
                    n += 1
                    if n >= 200:
                        break
        except Exception:
            return


# --------------------------------------------------------------------------- the loop

def history_path() -> Path:
    env = os.environ.get("LQL_HISTORY")
    return Path(os.path.expanduser(env)) if env else Path.home() / ".lql_history"


def _key_bindings():
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.key_binding import KeyBindings

    kb = KeyBindings()

    def ready(buf) -> bool:
        text = buf.document.text
        if not text.strip():
            return True
        if text.strip().rstrip(";").strip().lower() in REPL_COMMANDS:
            return True
        return is_complete(text)

    @kb.add("enter", filter=Condition(lambda: True))
    def _(event):
        buf = event.current_buffer
        if buf.complete_state is not None and buf.complete_state.current_completion:
            buf.apply_completion(buf.complete_state.current_completion)
            return
        if ready(buf):
            buf.validate_and_handle()
        else:
            buf.insert_text("\n")

    return kb


def _prompt_session(session: Session):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory
    from prompt_toolkit.styles import Style

    try:
        hp = history_path()
        hp.parent.mkdir(parents=True, exist_ok=True)
        hp.touch(exist_ok=True)
        history: History = FileHistory(str(hp))
    except OSError:
        history = InMemoryHistory()
    return PromptSession(
        message=PROMPT,
        multiline=True,
        prompt_continuation=lambda width, line_number, is_soft_wrap: CONTINUATION,
        history=history,
        auto_suggest=AutoSuggestFromHistory(),
        lexer=LqlLexer(),
        completer=LqlCompleter(session),
        complete_while_typing=False,
        key_bindings=_key_bindings(),
        style=Style.from_dict(STYLE_RULES),
        enable_history_search=False,
    )


def run_statements(session: Session, text: str, console) -> bool:
    """Run ``text`` and render each result as it arrives; False if something failed."""
    from .errors import LqlError, LqlSyntaxError
    from .render.table import format_error, render

    def stream(piece: str) -> None:        # GENERATE prints its tokens as they come
        console.file.write(piece)
        console.file.flush()

    session.on_token = stream
    try:
        for r in session.execute_iter(text):
            render(r, console)
        return True
    except KeyboardInterrupt:
        console.print("cancelled", style="yellow")
    except LqlSyntaxError as exc:
        console.print(format_error(exc.pretty()))
    except LqlError as exc:
        console.print(format_error(str(exc)))
    except Exception as exc:               # a bug: one line, traceback only on request
        if os.environ.get("LQL_DEBUG", "") not in ("", "0"):
            console.print_exception()
        console.print(format_error(f"internal error: {type(exc).__name__}: {exc} "
                                   "(set LQL_DEBUG=1 for the traceback)"))
    finally:
        session.on_token = None
    return False


def _unsaved(session: Session) -> bool:
    try:
        return bool(session.has_unsaved_edits())
    except Exception:
        return False


def run_repl(*, no_color: bool = False, session: Session | None = None) -> int:
    from . import __version__
    from .render.table import make_console

    session = session or Session()
    console = make_console(sys.stdout, color=False if no_color else None,
                           width=None)
    ps = _prompt_session(session)
    console.print(f"lql {__version__} — statements end with ';'. "
                  "HELP; for help, Ctrl-D to exit.", style="dim")
    warned = False
    while True:
        try:
            text = ps.prompt()
        except KeyboardInterrupt:          # Ctrl-C: discard the input
            continue
        except EOFError:                   # Ctrl-D
            if _unsaved(session) and not warned:
                warned = True
                console.print("you have unsaved edits — SAVE PATCH \"file.vlp\"; keeps them. "
                              "Press Ctrl-D again to quit without saving.", style="yellow")
                continue
            break
        word = text.strip().rstrip(";").strip().lower()
        if not word:
            continue
        if word in ("exit", "quit", "\\q"):
            if _unsaved(session) and not warned:
                warned = True
                console.print("you have unsaved edits — SAVE PATCH \"file.vlp\"; keeps them. "
                              "Type exit again to quit without saving.", style="yellow")
                continue
            break
        if word == "help":
            text = "HELP;"
        run_statements(session, text, console)
    return 0
