"""SHA-256 of vindex files, streamed in blocks (never a whole file in memory)."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 8 << 20


def sha256_file(path: Path, block: int = BLOCK) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(block)
        view = memoryview(buf)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()
