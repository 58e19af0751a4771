"""Where ``USE MODEL … AUTO_EXTRACT`` keeps the vindexes it extracts.

One folder per source, named by a digest of what the extraction depends on: the
source's resolved path, the name/size/mtime of its files, a merged adapter's
files, the level, the dtype and the vindex format version.  Changing the
source (new weights, a re-saved adapter) therefore gives a new folder; the old
one stays until the user deletes it.  The folder is written by
:func:`lql.vindex.extract` (atomic: temp + rename), so a crash leaves nothing
half-written under the final name.

Base folder: ``$LQL_VINDEX_CACHE`` or ``$XDG_CACHE_HOME/lql/vindexes``
(``~/.cache/lql/vindexes``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from .format import FORMAT_VERSION


def cache_root() -> Path:
    env = os.environ.get("LQL_VINDEX_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lql" / "vindexes"


def _stamp(path: Path, h: Any) -> None:
    """Feed ``path`` (a file, or a folder's plain files) into the digest ``h``."""
    path = path.resolve()
    h.update(str(path).encode())
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"\0{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())


def cached_path(source: Any, *, level: str, dtype: str) -> Path:
    """The cache folder for ``source`` (a ``ModelSource``) at ``level``/``dtype``."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}\0{level}\0{dtype}".encode())
    path = getattr(source, "path", None)
    if path is None:
        raise ValueError("AUTO_EXTRACT needs a source read from a local file or folder")
    _stamp(Path(path), h)
    adapter = getattr(source, "adapter_path", None)
    if adapter is not None:
        h.update(b"\0adapter")
        _stamp(Path(adapter), h)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(getattr(source, "name", None) or Path(path).stem))
    return cache_root() / f"{name.strip('-')[:60] or 'model'}-{level}-{h.hexdigest()[:16]}.vindex"
