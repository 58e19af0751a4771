"""Extracted SmolLM2 vindexes for the test suite, built once and cached.

    from vindex_fixtures import smollm2_vindex
    path = smollm2_vindex()                       # browse, f16, from the GGUF
    path = smollm2_vindex("inference", "f32", source="hf")

Cached under ``model_fixtures.cache_root()``, keyed by the source (GGUF size and
mtime, or the HF folder's cache key) and a hash of the extraction code
(``lql/vindex``, ``lql/sources``, ``lql/families``), so the whole suite extracts
each variant once; a code change re-extracts.  Extraction is atomic, so
concurrent test processes never see half a vindex.  Treat the result as
read-only (copy it before corrupting or editing it).
"""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import REPO, cache_root, smollm2_gguf, smollm2_hf_dir  # noqa: E402

LEVELS = ("browse", "inference", "all")
DTYPES = ("f16", "f32")
SOURCES = ("gguf", "hf")


@functools.cache
def code_version() -> str:
    """Hash of the code that decides what an extracted vindex contains (computed once
    per process, so one test session uses one key even while the code is edited)."""
    h = hashlib.sha256()
    for pkg in ("vindex", "sources", "families"):
        for p in sorted((REPO / "lql" / pkg).rglob("*.py")):
            h.update(p.relative_to(REPO).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _source_key(source: str) -> tuple[Path, str]:
    if source == "gguf":
        path = smollm2_gguf()
        st = path.stat()
        return path, f"{st.st_size}-{int(st.st_mtime)}"
    if source == "hf":
        path = smollm2_hf_dir()
        return path, path.name
    raise ValueError(f"source must be one of {SOURCES}, not {source!r}")


def _drop_stale(target: Path, max_age_s: float = 3600.0) -> None:
    """Remove cached builds of the same variant made by older code (after an hour)."""
    import shutil
    import time
    prefix = target.name.rsplit("-", 1)[0] + "-"
    for p in target.parent.glob(prefix + "*"):
        if p != target and p.name.rsplit("-", 1)[0] + "-" == prefix and \
                time.time() - p.stat().st_mtime > max_age_s:
            shutil.rmtree(p, ignore_errors=True)


def _extract_once(src, target: Path, level: str, dtype: str) -> Path:
    """Extract ``src`` into the cache path ``target`` unless a finished copy is there."""
    if (target / "index.json").is_file():
        return target
    from lql.vindex import extract
    from lql.vindex.atomic import TargetExistsError
    try:
        extract(src, target, level=level, dtype=dtype, progress=False)
    except TargetExistsError:
        if not (target / "index.json").is_file():     # a broken leftover, not a racing build
            raise
    _drop_stale(target)
    return target


def smollm2_vindex(level: str = "browse", dtype: str = "f16", source: str = "gguf") -> Path:
    """Path of a cached SmolLM2-135M vindex extracted at ``level`` / ``dtype`` from ``source``."""
    if level not in LEVELS or dtype not in DTYPES:
        raise ValueError(f"level in {LEVELS}, dtype in {DTYPES}")
    src, skey = _source_key(source)
    key = hashlib.sha256(f"{skey}|{code_version()}".encode()).hexdigest()[:12]
    target = cache_root() / f"vindex-smollm2-{source}-{level}-{dtype}-{key}"
    return _extract_once(src, target, level, dtype)


def tiny_vindex(family: str, level: str = "all", dtype: str = "f32") -> Path:
    """A cached vindex of ``model_fixtures.tiny_model_dir(family)``."""
    from model_fixtures import tiny_model_dir
    src = tiny_model_dir(family)
    key = hashlib.sha256(f"{src.name}|{code_version()}".encode()).hexdigest()[:12]
    target = cache_root() / f"vindex-tiny-{family}-{level}-{dtype}-{key}"
    return _extract_once(src, target, level, dtype)


__all__ = ["smollm2_vindex", "tiny_vindex", "code_version"]

