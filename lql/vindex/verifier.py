"""``verify``: recompute every checksum in index.json and report each file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NoVindexError
from . import format as fmt
from .checksums import INDEX_CHECKSUM_KEY, index_digest, sha256_file
from .validate import safe_file_name


@dataclass
class FileCheck:
    file: str
    status: str              # "ok" | "mismatch" | "missing" | "unchecked" | "bad-name"
    expected: str | None = None
    actual: str | None = None
    size: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "unchecked")


@dataclass
class VerifyReport:
    path: Path
    files: list[FileCheck] = field(default_factory=list)
    error: str | None = None        # the vindex could not be opened/validated at all

    @property
    def ok(self) -> bool:
        return self.error is None and all(f.ok for f in self.files)

    @property
    def complete(self) -> bool:
        """Every file was checked against a checksum and matched (what "vindex ok" means)."""
        return self.ok and bool(self.files) and all(f.status == "ok" for f in self.files)

    def unchecked(self) -> list[str]:
        return [f.file for f in self.files if f.status == "unchecked"]

    def first_problem(self) -> str:
        if self.error:
            return self.error
        for f in self.files:
            if not f.ok:
                if f.status == "missing":
                    return f"{self.path / f.file}: file is missing"
                if f.status == "bad-name":
                    return (f"{self.path / fmt.INDEX}: checksum key {f.file!r} is not a file "
                            f"inside the vindex (not checked)")
                return (f"{self.path / f.file}: checksum mismatch (index.json has "
                        f"{(f.expected or '')[:12]}…, file has {(f.actual or '')[:12]}…)")
        return "ok"

    def rows(self) -> list[dict[str, Any]]:
        return [{"file": f.file, "status": f.status, "size": f.size,
                 "expected": f.expected, "actual": f.actual} for f in self.files]


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Check every file of the vindex: ok / mismatch / missing / unchecked.

    Files listed in index.json's ``checksums`` are re-hashed; index.json itself is
    checked against its ``index_checksum``; files the level requires, files the
    weight manifest names and any other file in the folder without a checksum are
    "unchecked".  A checksum key that is not a plain file name inside the vindex
    (``/etc/hostname``, ``../x``) is never opened: it is a problem.  Structural
    problems (types, sizes, headers, overlapping layers, corrupt down-meta records)
    found by opening the vindex go in ``report.error``.  ``report.complete`` is true
    only when every file was checked and matched.
    """
    from ..errors import LqlError
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise NoVindexError(f"{root}: no such vindex — create one with "
                            f"EXTRACT MODEL <source> INTO \"{path}\"")
    if not (root / fmt.INDEX).is_file():
        raise NoVindexError(f"{root} is not a vindex (no {fmt.INDEX}) — create one with "
                            f"EXTRACT MODEL <source> INTO \"{path}\"")
    report = VerifyReport(root)
    try:
        index = fmt.load_index(root)
    except LqlError as exc:
        report.error = str(exc)
        return report
    where = str(root / fmt.INDEX)
    raw_sums = index.get("checksums")
    if raw_sums is not None and not isinstance(raw_sums, dict):
        report.error = (f"{where}: field 'checksums' must be an object of file name -> sha256, "
                        f"got {type(raw_sums).__name__}")
        raw_sums = {}
    sums: dict[str, str] = {}
    for name, digest in (raw_sums or {}).items():
        if not safe_file_name(name):
            report.files.append(FileCheck(str(name), "bad-name", str(digest)))
            continue
        sums[name] = digest if isinstance(digest, str) else repr(digest)

    # index.json against its own checksum
    isz = (root / fmt.INDEX).stat().st_size
    want = index.get(INDEX_CHECKSUM_KEY)
    if isinstance(want, str):
        actual = index_digest(index)
        report.files.append(FileCheck(fmt.INDEX, "ok" if actual == want else "mismatch",
                                      want, actual, isz))
    else:
        report.files.append(FileCheck(fmt.INDEX, "unchecked", size=isz))

    level = index.get("extract_level", "browse")
    names = list(sums)
    required = fmt.REQUIRED_FILES.get(level, ()) if isinstance(level, str) else ()
    for name in required:
        if name not in names:
            names.append(name)
    try:
        manifest = fmt.read_json(root / fmt.MANIFEST) if (root / fmt.MANIFEST).is_file() else []
    except LqlError:
        manifest = []
    for e in manifest if isinstance(manifest, list) else ():
        f = e.get("file") if isinstance(e, dict) else None
        if isinstance(f, str) and safe_file_name(f) and f not in names:
            names.append(f)
    for p in sorted(root.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name != fmt.INDEX \
                and p.name not in names:
            names.append(p.name)
    for name in names:
        p = root / name
        if not p.is_file():
            report.files.append(FileCheck(name, "missing", sums.get(name)))
            continue
        size = p.stat().st_size
        if name not in sums:
            report.files.append(FileCheck(name, "unchecked", size=size))
            continue
        actual = sha256_file(p)
        status = "ok" if actual == sums[name] else "mismatch"
        report.files.append(FileCheck(name, status, sums[name], actual, size))
    if report.error is None and all(f.status != "missing" for f in report.files):
        from .reader import Vindex
        try:
            v = Vindex(root)
            for layer in range(v.num_layers):      # every record: ids < vocab, finite scores
                v.down_meta.check_layer(layer)
        except LqlError as exc:
            report.error = str(exc)
    return report
