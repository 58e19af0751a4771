"""Atomic output: build a vindex in a temporary sibling directory, rename it in at the end.

``AtomicDir(target, force)`` is a context manager.  Inside, write into
``.tmp``; on a clean exit every file and the directory are fsynced and the
directory is renamed to ``target`` (with ``force``, an existing target is first
renamed aside, then deleted after the new one is in place).  On any exception —
KeyboardInterrupt included — the temporary directory is removed and nothing
appears under ``target``.

``BinWriter`` appends arrays to one binary file, cast to the storage dtype,
tracking byte offsets and the SHA-256 as it goes (no second read to checksum).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ExecutionError


class TargetExistsError(ExecutionError):
    """The output path exists and ``force`` was not given."""


def check_target(target: Path, force: bool) -> None:
    if target.exists() or target.is_symlink():
        if not force:
            raise TargetExistsError(f"{target} already exists — choose another path or "
                                    f"re-run with force (lql extract --force)")
        if not target.is_dir():
            raise TargetExistsError(f"{target} exists and is not a directory; refusing to "
                                    f"replace it")


def _fsync_dir(path: Path) -> None:
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


class AtomicDir:
    def __init__(self, target, force: bool = False):
        self.target = Path(target).expanduser().absolute()
        self.force = force
        self.tmp: Path | None = None

    def __enter__(self) -> "AtomicDir":
        check_target(self.target, self.force)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-",
                                         dir=self.target.parent))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._commit()
        finally:
            if self.tmp is not None and self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def _commit(self) -> None:
        assert self.tmp is not None
        for p in self.tmp.iterdir():
            if p.is_file():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(self.tmp)
        check_target(self.target, self.force)       # may have appeared meanwhile
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-",
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
        _fsync_dir(self.target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


class BinWriter:
    """Append-only writer of one headerless binary file in ``dtype``."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.fh = open(self.path, "wb")
        self.offset = 0
        self._sha = hashlib.sha256()

    def write(self, array: np.ndarray, name: str = "") -> tuple[int, int]:
        """Append ``array`` cast to the file dtype; returns (offset, length) in bytes.

        Refuses values that f16 cannot hold (|x| > 65504 would become inf)."""
        with np.errstate(over="ignore"):
            cast = np.ascontiguousarray(array, dtype=self.dtype)
        if self.dtype.itemsize == 2 and cast.size and not np.isfinite(cast).all() \
                and np.isfinite(array).all():
            big = float(np.abs(np.asarray(array, dtype=np.float32)).max())
            raise ExecutionError(f"{name or self.path.name}: value {big:g} does not fit in f16 "
                                 f"(max 65504) — extract with DTYPE F32")
        return self.write_bytes(cast.tobytes())

    def write_bytes(self, data: bytes) -> tuple[int, int]:
        self.fh.write(data)
        self._sha.update(data)
        start = self.offset
        self.offset += len(data)
        return start, len(data)

    def close(self) -> str:
        """Flush, fsync, close; returns the SHA-256 hex digest of what was written."""
        if not self.fh.closed:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
        return self._sha.hexdigest()

    def abort(self) -> None:
        if not self.fh.closed:
            self.fh.close()
