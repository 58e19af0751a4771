"""The session: state plus dispatch of parsed statements to their handlers.

One executor serves every surface (Python, CLI, REPL), so results never
diverge between them. The executor never prints.

    >>> from lql.session import Session
    >>> s = Session()
    >>> s.query("SET CHAT OFF").message
    'chat mode set to OFF ...'

Return types:

* ``execute(text)`` → ``list[Result]``, one per statement in order (a pipe
  ``a |> b`` contributes both results);
* ``execute(stmt)`` → ``Result`` (for a :class:`~lql.ast.Pipe`, the result of its
  right-hand side; use ``execute_iter`` / ``execute(text)`` to get both);
* ``query(text)`` → the one ``Result`` of exactly one statement;
* ``run_file(path)`` → ``list[Result]``.

Errors are raised as :class:`~lql.errors.LqlError` (the first error stops a
script). The raised error carries ``.lql_line`` (the statement's line in the
script), ``.lql_statement`` (its keyword) and ``.results`` (the results of the
statements that ran before it). With ``continue_on_error=True`` an error
becomes a ``Result.error(...)`` in the list and the script goes on.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import ast
from .errors import ExecutionError, LqlError, LqlSyntaxError, NotBuiltError, NoVindexError
from .lang.text import is_complete, split_statements
from .result import Result

if TYPE_CHECKING:
    from .edit.overlay import Overlay
    from .remote.client import RemoteVindex

__all__ = ["Session", "Cancelled", "split_statements", "is_complete"]

#: statements that change session state or the overlay: serialised per Session
_MUTATING: tuple[type, ...] = (
    ast.Use, ast.UseModel, ast.UseRemote, ast.Insert, ast.Delete, ast.Update, ast.Merge,
    ast.Rebalance, ast.BeginPatch, ast.SavePatch, ast.ApplyPatch, ast.RemovePatch, ast.SetChat,
    ast.UseSae,
)


class Cancelled(KeyboardInterrupt):
    """A statement stopped by :meth:`Session.cancel` (or Ctrl-C)."""

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)

    def __str__(self) -> str:          # KeyboardInterrupt's str() is empty by default
        return self.args[0] if self.args else "cancelled"


# --------------------------------------------------------------------------- text
# Statement splitting that respects strings and comments (lql.lang owns LQL text).
# Used for scripts run with continue_on_error: a syntax error in one statement
# must not hide the others. ``is_complete`` is re-exported for the REPL.


def _mask(prefix: str) -> str:
    """Blank out ``prefix`` while keeping its line/column geometry."""
    return re.sub(r"[^\n]", " ", prefix)


def _line_of(stmt: Any, default: int | None = None) -> int | None:
    line = getattr(stmt, "line", None)
    return line if isinstance(line, int) else default


def _keyword(stmt: Any) -> str:
    kw = getattr(stmt, "keyword", None)
    return kw if isinstance(kw, str) else type(stmt).__name__.upper()


# --------------------------------------------------------------------------- session

class Session:
    """State of one LQL session plus the statement dispatcher."""

    def __init__(self, cwd: str | os.PathLike | None = None):
        self.cwd: Path = Path(cwd if cwd is not None else os.getcwd()).resolve()
        # statements that change the session or its overlay run one at a time (threads
        # sharing a Session: readers run concurrently, writers are serialised)
        self._write_lock = threading.RLock()
        self.vindex: Any = None      # the Vindex in use, or its OverlayVindex once edited
        self.model_source: Any = None  # the ModelSource of USE MODEL
        self.chat_mode: ast.ChatMode = ast.ChatMode.AUTO
        self.overlay: Overlay | None = None   # set once a mutation or patch is applied
        self.base_vindex: Any = None  # the unpatched base while an overlay is active
        self.knn_store_note = ""      # what USE did with the vindex's knn_store.bin
        self.knn_store_facts = 0
        self.last_result: Result | None = None
        self.on_token: Callable[[str], None] | None = None   # GENERATE streaming (the REPL)
        self.remote: RemoteVindex | None = None   # while USE REMOTE is in effect
        # USE SAE: loaded SAEs by name (lql.sae.Sae), and the name of the current one
        self.saes: dict[str, Any] = {}
        self.sae_name: str | None = None
        self._cancel = threading.Event()

    # ------------------------------------------------------------ state changes
    # Handlers and editing code never assign these attributes: they call these methods.

    def use_vindex(self, vindex: Any) -> None:
        """``USE``: browse ``vindex``; edits start a fresh overlay over it.  The vindex's
        own KNN facts (``knn_store.bin``) are applied, as LARQL's USE loads them; what
        happened is in :attr:`knn_store_note` (``""`` without a store)."""
        self.vindex = vindex
        self.model_source = None
        self.overlay = None
        self.base_vindex = None
        self.knn_store_note, self.knn_store_facts = "", 0
        if vindex is not None and getattr(vindex, "path", None) is not None:
            self._load_knn_store(vindex)

    def _load_knn_store(self, vindex: Any) -> None:
        from .edit.knn_facts import store_patch
        from .errors import VindexError
        try:
            patch = store_patch(vindex)
        except VindexError as e:          # LARQL warns and goes on; we say it at USE
            self.knn_store_note = f"knn_store.bin not loaded: {e}"
            return
        if patch is None:
            return
        if patch.operations:
            overlay = self.edit_overlay()
            assert overlay is not None
            overlay.apply(patch)
        n = self.knn_store_facts = len(patch.operations)
        self.knn_store_note = f"{n} KNN fact{'s' if n != 1 else ''} from knn_store.bin"

    def use_source(self, source: Any) -> None:
        """``USE MODEL``: run inference on live weights (no vindex, no overlay)."""
        self.model_source = source
        self.vindex = None
        self.overlay = None
        self.base_vindex = None

    def use_remote(self, remote: RemoteVindex) -> None:
        """``USE REMOTE``: read-only statements go to ``remote``; nothing local stays in use."""
        self.use_vindex(None)
        self.remote = remote

    def use_sae(self, name: str, sae: Any) -> None:
        """``USE SAE``: register ``sae`` (a :class:`lql.sae.Sae`) under ``name`` (replacing an
        SAE of that name) and make it the current one. SAEs stay loaded across USE."""
        name = name.lower()                # names are case-insensitive, like keywords
        self.saes[name] = sae
        self.sae_name = name

    def sae(self, name: str | None = None) -> Any:
        """The SAE called ``name`` (``None``: the current one, from the last USE SAE)."""
        if name is None:
            if self.sae_name is None:
                raise ExecutionError('no SAE in use — run USE SAE "<path>" [AT LAYER n] first')
            return self.saes[self.sae_name]
        try:
            return self.saes[name.lower()]
        except KeyError:
            loaded = ", ".join(sorted(self.saes)) or "none"
            raise ExecutionError(f"no SAE named {name!r} (loaded: {loaded}); load it with "
                                 f'USE SAE "<path>" AS {name}') from None

    def edit_overlay(self, *, create: bool = True) -> Overlay | None:
        """The overlay edits record into. On first use (``create``) ``self.vindex`` becomes
        its patched view (:func:`lql.edit.overlay.overlay_view`) and ``self.base_vindex`` the
        unpatched base; with ``create=False`` and no overlay yet, ``None``."""
        if self.vindex is None:
            if self.model_source is not None:
                raise ExecutionError(
                    "edits need a vindex, not live model weights (USE MODEL); run "
                    'EXTRACT MODEL "<source>" INTO "model.vindex" WITH INFERENCE; '
                    'USE "model.vindex"; first')
            raise NoVindexError()
        from .edit.overlay import OverlayVindex, overlay_view
        if not create and not isinstance(self.vindex, OverlayVindex):
            return None
        view = overlay_view(self.vindex)
        if view is not self.vindex:
            self.base_vindex = self.vindex
            self.vindex = view
        self.overlay = view.overlay
        return view.overlay

    # ------------------------------------------------------------ cancellation
    def cancel(self) -> None:
        """Ask the running statement to stop (handlers poll :meth:`check_cancelled`)."""
        self._cancel.set()

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if :meth:`cancel` was called since the statement began."""
        if self._cancel.is_set():
            self._cancel.clear()
            raise Cancelled()

    def vocabulary_words(self, prefix: str = "") -> list[str]:
        """Entity-like words of the vindex vocabulary starting with ``prefix`` (REPL completion)."""
        if self.vindex is None or self.vindex.tokenizer is None:
            return []
        from .browse.tokens import tokens_of
        return tokens_of(self.vindex).words_with_prefix(prefix)

    def has_unsaved_edits(self) -> bool:
        """True when the overlay holds edits not yet written to a patch file."""
        return bool(self.overlay is not None and self.overlay.has_unsaved_edits())

    # ------------------------------------------------------------ paths
    def resolve_path(self, path: str | os.PathLike) -> Path:
        """A user-given path, relative to the session's working directory."""
        p = Path(os.path.expanduser(os.fspath(path)))
        return p if p.is_absolute() else self.cwd / p

    def resolve_source(self, given: str):
        """A model source as a user gave it: a path relative to the working directory
        when one exists there, else the text itself (a bundled model name such as
        ``smollm2``, or a hub id that :func:`lql.sources.open_source` explains)."""
        path = self.resolve_path(given)
        return path if path.exists() else given

    # ------------------------------------------------------------ execution
    def execute(self, what, *, continue_on_error: bool = False):
        """``execute(text) -> list[Result]``; ``execute(stmt) -> Result``."""
        if isinstance(what, str):
            from .result import Results  # a list that Jupyter shows as the sequence
            return Results(self.execute_iter(what, continue_on_error=continue_on_error))
        results = self._run(what, script=False)
        return results[-1]

    def query(self, text: str) -> Result:
        """Run exactly one statement and return its result."""
        stmts = self.parse(text)
        if len(stmts) != 1:
            raise ExecutionError(f"query() takes exactly one statement, got {len(stmts)}")
        return self._run(stmts[0], script=False)[-1]

    def run_file(self, path: str | os.PathLike, continue_on_error: bool = False) -> list[Result]:
        return list(self.run_file_iter(path, continue_on_error=continue_on_error))

    def run_file_iter(self, path, continue_on_error: bool = False) -> Iterator[Result]:
        p = self.resolve_path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ExecutionError(f"cannot read script {os.fspath(path)!r}: "
                                 f"{exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ExecutionError(f"cannot read script {os.fspath(path)!r}: not UTF-8 text "
                                 f"({exc.reason} at byte {exc.start})") from None
        yield from self.execute_iter(text, continue_on_error=continue_on_error,
                                     source=os.fspath(path), script=True)

    @staticmethod
    def parse(text: str) -> list:
        from .parser import parse
        return parse(text)

    def execute_iter(self, text: str, *, continue_on_error: bool = False,
                     source: str | None = None, script: bool | None = None) -> Iterator[Result]:
        """Yield each statement's result as soon as it is ready.

        Without ``continue_on_error`` the whole text is parsed first, so a syntax
        error anywhere stops the script before any statement runs. With it, each
        ``;``-separated statement is parsed on its own and a syntax error becomes
        an error result like any other.
        """
        if not continue_on_error:
            try:
                stmts = self.parse(text)
            except LqlError as exc:
                self._annotate(exc, None, None, source, [], prefix_line=False)
                raise
            multi = script if script is not None else len(stmts) > 1
            done: list[Result] = []
            for stmt in stmts:
                try:
                    for r in self._run(stmt, script=True):
                        done.append(r)
                        yield r
                except (LqlError, Cancelled) as exc:
                    self._annotate(exc, _line_of(stmt), _keyword(stmt), source, done,
                                   prefix_line=multi)
                    raise
                except KeyboardInterrupt:
                    cancelled = Cancelled()
                    self._annotate(cancelled, _line_of(stmt), _keyword(stmt), source, done,
                                   prefix_line=multi)
                    raise cancelled from None
                except Exception as exc:         # a bug: annotate, never rewrite
                    self._annotate(exc, _line_of(stmt), _keyword(stmt), source, done,
                                   prefix_line=multi, rewrite=False)
                    raise
            return

        for start, end in split_statements(text):
            line = text.count("\n", 0, start) + 1
            chunk = text[start:end]
            try:
                stmts = self.parse(_mask(text[:start]) + chunk)
            except LqlSyntaxError as exc:
                yield self._error_result("SYNTAX ERROR", exc, exc.line, source)
                continue
            except LqlError as exc:
                yield self._error_result("ERROR", exc, line, source)
                continue
            for stmt in stmts:
                kw, sline = _keyword(stmt), _line_of(stmt, line)
                try:
                    yield from self._run(stmt, script=True)
                except KeyboardInterrupt:
                    raise                   # Ctrl-C stops the script, even here
                except LqlError as exc:
                    yield self._error_result(kw, exc, sline, source)
                except Exception as exc:    # a bug in a handler: report, go on
                    yield self._error_result(kw, exc, sline, source, internal=True)

    # ------------------------------------------------------------ internals
    def _run(self, stmt, *, script: bool) -> list[Result]:
        """Run one statement (a pipe runs both sides); results in order."""
        from . import exec as registry
        if isinstance(stmt, ast.Pipe):
            left = self._run(stmt.left, script=script)
            self.last_result = left[-1] if left else None
            right = self._run(stmt.right, script=script)
            return left + right
        if self.remote is not None and self.remote.claims(stmt):
            remote = self.remote
            if remote.leaves(stmt):               # USE / USE MODEL: local again
                self.remote = None
                try:
                    return self._run(stmt, script=script)
                except BaseException:
                    self.remote = remote          # the USE failed: still remote
                    raise
            sent = remote.run(stmt, chat_mode=self.chat_mode)   # sent to the server, or refused
            if sent:
                self.last_result = sent[-1]
            return sent
        fn = registry.lookup(type(stmt))
        if fn is None:
            group = registry.GROUPS.get(type(stmt))
            why = registry.import_errors.get(group) if group else None
            msg = f"{_keyword(stmt)} is not built yet ({registry.capability(type(stmt))})"
            if why is not None:
                msg += f"; lql.exec.{group} failed to import: {type(why).__name__}: {why}"
            raise NotBuiltError(msg)
        self._cancel.clear()
        t0 = time.perf_counter()
        if isinstance(stmt, _MUTATING):
            with self._write_lock:
                out = fn(self, stmt)
        else:
            out = fn(self, stmt)
        elapsed = round((time.perf_counter() - t0) * 1000.0, 1)
        results = list(out) if isinstance(out, (list, tuple)) else [out]
        for r in results:
            if not isinstance(r, Result):
                raise TypeError(f"handler {fn.__module__}.{fn.__name__} returned "
                                f"{type(r).__name__}, not Result")
            r.meta.setdefault("elapsed_ms", elapsed)
        if results:
            self.last_result = results[-1]
        return results

    @staticmethod
    def _annotate(exc: BaseException, line, keyword, source, done, *, prefix_line: bool,
                  rewrite: bool = True) -> None:
        """Attach where the error happened; prefix ``line N`` to the message in scripts.

        Sets ``exc.lql_line``, ``exc.lql_statement``, ``exc.lql_source``, ``exc.results``
        and ``exc.lql_where`` ("FILE, line N" / "line N" in scripts, else ``None``).
        """
        # any exception type passes through here: the attributes go in its instance dict
        vars(exc).update(lql_line=line, lql_statement=keyword, lql_source=source,
                         results=list(done), lql_where=None)
        if isinstance(exc, LqlSyntaxError):
            where = f"{source}: " if source else ""
            if where and exc.args and not str(exc.args[0]).startswith(where):
                exc.args = (where + str(exc.args[0]),) + tuple(exc.args[1:])
            return
        if not prefix_line or line is None:
            return
        where = f"{source}, line {line}" if source else f"line {line}"
        vars(exc)["lql_where"] = where
        if not rewrite:
            return
        if exc.args:
            msg = str(exc.args[0]) if exc.args[0] is not None else ""
        else:
            msg = str(exc) or type(exc).__name__.lower()
        if not msg.startswith(where):
            exc.args = (f"{where}: {msg}",) + tuple(exc.args[1:])

    @staticmethod
    def _error_result(keyword: str, exc: BaseException, line, source, *,
                      internal: bool = False) -> Result:
        msg = str(exc) or type(exc).__name__
        if internal:
            msg = f"internal error: {type(exc).__name__}: {msg}"
        if line is not None and not isinstance(exc, LqlSyntaxError):
            msg = f"line {line}: {msg}"
        meta: dict[str, Any] = {"line": line, "error_type": type(exc).__name__}
        if source:
            meta["source"] = source
        return Result.error(keyword, msg, **meta)
