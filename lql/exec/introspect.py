"""Introspection and session statements: SHOW *, STATS, SET CHAT, HELP.

This module must stay light to import (no numpy at module level): SHOW MODELS
and HELP are what a cold ``lql -e`` start runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import ast
from ..errors import ExecutionError
from ..result import Result
from . import handler

# --------------------------------------------------------------------------- SET CHAT

_CHAT_EXPLAIN = {
    ast.ChatMode.AUTO: "prompts are wrapped in the model's chat template when it has one",
    ast.ChatMode.ON: "prompts are always wrapped in the model's chat template",
    ast.ChatMode.OFF: "prompts are sent raw, never wrapped",
}


@handler(ast.SetChat)
def set_chat(session, stmt) -> Result:
    mode = stmt.mode
    session.chat_mode = mode
    name = mode.name
    return Result.msg("SET CHAT", f"chat mode set to {name}: {_CHAT_EXPLAIN[mode]}",
                      chat_mode=name)


# --------------------------------------------------------------------------- SHOW MODELS

SHOW_MODELS_COLUMNS = ["name", "path", "model", "family", "layers", "level", "dtype",
                       "size_mb", "note"]


def _search_roots(session) -> list[Path]:
    roots = [session.cwd]
    for entry in os.environ.get("LQL_PATH", "").split(os.pathsep):
        if entry.strip():
            roots.append(session.resolve_path(entry.strip()))
    return roots


def _candidates(roots: list[Path]):
    """Each root itself, then its (non-hidden) sub-directories, sorted by name."""
    for root in roots:
        yield root
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    yield Path(e.path)
            except OSError:
                continue


def _dir_size_mb(path: Path) -> float:
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    if e.is_file():
                        total += e.stat().st_size
                except OSError:
                    pass
    except OSError:
        pass
    return round(total / (1024 * 1024), 1)


def _display_path(path: Path, cwd: Path) -> str:
    try:
        rel = path.relative_to(cwd)
        return "." if str(rel) == "." else str(rel)
    except ValueError:
        return str(path)


def model_row(path: Path, cwd: Path) -> dict | None:
    """A SHOW MODELS row for ``path`` if it is a vindex folder, else ``None``."""
    index = path / "index.json"
    if not index.is_file():
        return None
    row = {"name": path.name or str(path), "path": _display_path(path, cwd), "model": None,
           "family": None, "layers": None, "level": None, "dtype": None,
           "size_mb": _dir_size_mb(path), "note": None}
    try:
        with open(index, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        row["note"] = f"index.json unreadable: {exc}"
        return row
    except json.JSONDecodeError as exc:
        row["note"] = f"index.json is corrupt: {exc.msg} at line {exc.lineno}"
        return row
    if not isinstance(data, dict) or "num_layers" not in data:
        return None                                  # some other tool's index.json
    row.update(model=data.get("model"), family=data.get("family"),
               layers=data.get("num_layers"), level=data.get("extract_level"),
               dtype=data.get("dtype"))
    return row


@handler(ast.ShowModels)
def show_models(session, stmt) -> Result:
    roots = _search_roots(session)
    rows, seen = [], set()
    for cand in _candidates(roots):
        try:
            key = cand.resolve()
        except OSError:
            key = cand
        if key in seen:
            continue
        seen.add(key)
        row = model_row(cand, session.cwd)
        if row is not None:
            rows.append(row)
    message = None if rows else ("no vindexes found in " + ", ".join(
        _display_path(r, session.cwd) if r != session.cwd else str(r) for r in roots)
        + ' (EXTRACT MODEL "<source>" INTO "<name>.vindex" makes one)')
    return Result.table("SHOW MODELS", SHOW_MODELS_COLUMNS, rows, message=message,
                        searched=[str(r) for r in roots])


# --------------------------------------------------------------------------- HELP

_HELP_DIR = Path(__file__).resolve().parent.parent / "help"

#: multi-word and alias topics -> help file stem
_ALIASES = {
    "EXPLAIN": "explain-walk", "EXPLAIN WALK": "explain-walk", "EXPLAIN INFER": "explain-infer",
    "USE": "use", "USE MODEL": "use", "USE REMOTE": "use",
    "SHOW": "show", "SHOW RELATIONS": "show", "SHOW LAYERS": "show", "SHOW FEATURES": "show",
    "SHOW ENTITIES": "show", "SHOW MODELS": "show", "SHOW PATCHES": "patches",
    "PATCH": "patches", "PATCHES": "patches", "BEGIN PATCH": "patches", "BEGIN": "patches",
    "SAVE PATCH": "patches", "SAVE": "patches", "SAVE STEER": "infer", "STEER": "infer",
    "INJECT": "infer", "APPLY PATCH": "patches", "APPLY": "patches",
    "REMOVE PATCH": "patches", "REMOVE": "patches",
    "SET": "set-chat", "SET CHAT": "set-chat", "CHAT": "set-chat",
    "INSERT INTO EDGES": "insert", "DELETE FROM EDGES": "delete", "UPDATE EDGES": "update",
    "PIPE": "syntax", "|>": "syntax", "COMMENTS": "syntax", "LEXICAL": "syntax",
    "ERROR": "errors", "RESULT": "results", "RESULTS": "results", "JSON": "results",
}


_ALIASES.update({"COMPACT": "compact", "COMPACT MINOR": "compact", "COMPACT MAJOR": "compact",
                 "SHOW COMPACT STATUS": "compact", "SHOW COMPACT": "compact",
                 "MEMIT": "insert"})


def help_topics() -> list[str]:
    try:
        return sorted(p.stem for p in _HELP_DIR.glob("*.md") if p.stem != "index")
    except OSError:
        return []


def _topic_name(topic) -> str:
    if topic is None:
        return ""
    if isinstance(topic, (list, tuple)):
        topic = " ".join(str(t) for t in topic)
    return " ".join(str(topic).replace("_", " ").replace("-", " ").split()).upper()


@handler(ast.Help)
def help_(session, stmt) -> Result:
    name = _topic_name(getattr(stmt, "topic", None))
    stem = "index" if not name else _ALIASES.get(name, name.lower().replace(" ", "-"))
    # a topic is one of the help files' names, never a path built from arbitrary text
    # (a 300-character topic would be "File name too long"; "../x" would leave the folder)
    if stem != "index" and stem not in help_topics():
        raise ExecutionError(f"no help for {name[:60]!r}; topics: " + ", ".join(
            t.upper().replace("-", " ") for t in help_topics()))
    path = _HELP_DIR / f"{stem}.md"
    if not path.is_file():
        raise ExecutionError(f"no help for {name!r}; topics: " + ", ".join(
            t.upper().replace("-", " ") for t in help_topics()))
    text = path.read_text(encoding="utf-8")
    return Result.text("HELP", text, topic=stem, format="markdown")
