"""Atomic writes — the one implementation every writer uses.

A file is written to a temporary sibling, fsynced and renamed over the
target; a folder is built in a temporary sibling folder and renamed into
place.  A crash or an exception (KeyboardInterrupt included) at any point
leaves either the old file/folder intact or the new one complete — never a
half-written one under the target name.  Nothing here knows about LQL.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

from .errors import ExecutionError

__all__ = ["fsync_dir", "atomic_writer", "atomic_write_bytes", "atomic_write_text",
           "AtomicDir", "TargetExistsError", "check_target"]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_writer(p) as fh: fh.write(...)`` — ``p`` appears only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())        # mkstemp makes 0600; honour the umask
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class TargetExistsError(ExecutionError):
    """The output path exists and ``force`` was not given."""


def check_target(target: Path, force: bool, *, hint: str = "force") -> None:
    if target.exists() or target.is_symlink():
        if not force:
            raise TargetExistsError(f"{target} already exists — choose another path or "
                                    f"re-run with {hint}")
        if not target.is_dir():
            raise TargetExistsError(f"{target} exists and is not a directory; refusing to "
                                    f"replace it")


_UMASK: int | None = None


def current_umask() -> int:
    """The process umask (read once: ``os.umask`` can only be read by setting it)."""
    global _UMASK
    if _UMASK is None:
        old = os.umask(0o022)
        os.umask(old)
        _UMASK = old
    return _UMASK


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings of ``target`` left by a
    process that is no longer running (killed mid-write); says so in one line each."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)-")
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.match(p.name)
        if m is None or _pid_alive(int(m.group(1))) or int(m.group(1)) == os.getpid():
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
        sys.stderr.write(f"removed stale temporary folder {p} (left by process "
                         f"{m.group(1)}, no longer running)\n")
    return removed


class _Terminated(SystemExit):
    """SIGTERM while a folder is being built: unwinds so the temporary folder is removed."""


def _on_sigterm(signum, frame):
    raise _Terminated(128 + signal.SIGTERM)


class AtomicDir:
    """Build a folder in a temporary sibling (``.tmp``), rename it to ``target`` on success.

    With ``force`` an existing target is renamed aside, the new folder renamed in,
    then the old one deleted (put back if the rename fails).  On any exception the
    temporary folder is removed and nothing appears under ``target``."""

    def __init__(self, target, force: bool = False, *, hint: str = "force"):
        self.target = Path(target).expanduser().absolute()
        self.force = force
        self.hint = hint
        self.tmp: Path | None = None
        self._prev_handler: Any = None

    def __enter__(self) -> AtomicDir:
        check_target(self.target, self.force, hint=self.hint)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.target)
        self._prev_handler = None
        if threading.current_thread() is threading.main_thread():
            try:
                prev = signal.getsignal(signal.SIGTERM)
                if prev in (signal.SIG_DFL, None):
                    signal.signal(signal.SIGTERM, _on_sigterm)
                    self._prev_handler = prev if prev is not None else signal.SIG_DFL
            except (ValueError, OSError):
                pass
        # the pid in the name lets a later run remove a folder a killed process left
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-{os.getpid()}-",
                                         dir=self.target.parent))
        os.chmod(self.tmp, 0o777 & ~current_umask())     # mkdtemp makes 0700
        return self

    @property
    def folder(self) -> Path:
        """The temporary folder being built (inside the ``with`` block)."""
        if self.tmp is None:
            raise RuntimeError("AtomicDir.folder used outside its with block")
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        try:
            if exc_type is None:
                self._commit()
        finally:
            if self.tmp is not None and self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)
            if self._prev_handler is not None:
                try:
                    signal.signal(signal.SIGTERM, self._prev_handler)
                except (ValueError, OSError):
                    pass
                self._prev_handler = None
        return False

    def _commit(self) -> None:
        assert self.tmp is not None
        for p in self.tmp.iterdir():
            if p.is_file() and not p.is_symlink():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(self.tmp)
        check_target(self.target, self.force, hint=self.hint)   # may have appeared meanwhile
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-{os.getpid()}-",
                                        dir=self.target.parent))
            os.rmdir(old)
            os.rename(self.target, old)
        try:
            os.rename(self.tmp, self.target)
        except BaseException:
            if old is not None:
                os.rename(old, self.target)      # put the previous one back
            raise
        self.tmp = None
        fsync_dir(self.target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
