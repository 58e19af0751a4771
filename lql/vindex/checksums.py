"""SHA-256 of vindex files, streamed in blocks (never a whole file in memory)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

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


#: index.json's own checksum: the key it is stored under (added in format version 2;
#: readers that do not know it ignore it)
INDEX_CHECKSUM_KEY = "index_checksum"


def index_digest(index: dict[str, Any]) -> str:
    """SHA-256 of index.json's content with ``index_checksum`` removed, serialised
    canonically (``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``,
    UTF-8): independent of indentation and key order, so a reformatted index.json
    still verifies and any changed value does not."""
    import json
    body = {k: v for k, v in index.items() if k != INDEX_CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def seal_index(index: dict[str, Any]) -> dict[str, Any]:
    """``index`` with a fresh ``index_checksum`` (in place; returned for chaining)."""
    index.pop(INDEX_CHECKSUM_KEY, None)
    index[INDEX_CHECKSUM_KEY] = index_digest(index)
    return index
