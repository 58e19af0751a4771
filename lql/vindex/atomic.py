"""Atomic output of a vindex.

The folder itself is built with :class:`lql.atomic.AtomicDir` (a temporary
sibling renamed into place at the end; re-exported here with
``check_target``/``TargetExistsError``).

``BinWriter`` appends arrays to one binary file, cast to the storage dtype,
tracking byte offsets and the SHA-256 as it goes (no second read to checksum).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..atomic import AtomicDir as AtomicDir  # re-exported
from ..atomic import TargetExistsError as TargetExistsError
from ..atomic import check_target as check_target
from ..errors import ExecutionError


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
        if self.dtype == np.dtype("<u2"):      # bfloat16 words (f32's range: no overflow check)
            from .weights import f32_to_bf16
            return self.write_bytes(f32_to_bf16(array).tobytes())
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
