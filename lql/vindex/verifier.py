"""``verify``: recompute every checksum in index.json and report each file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NoVindexError
from . import format as fmt
from .checksums import sha256_file


@dataclass
class FileCheck:
    file: str
    status: str              # "ok" | "mismatch" | "missing" | "unchecked"
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

    def first_problem(self) -> str:
        if self.error:
            return self.error
        for f in self.files:
            if not f.ok:
                if f.status == "missing":
                    return f"{self.path / f.file}: file is missing"
                return (f"{self.path / f.file}: checksum mismatch (index.json has "
                        f"{f.expected[:12]}…, file has {f.actual[:12]}…)")
        return "ok"

    def rows(self) -> list[dict]:
        return [{"file": f.file, "status": f.status, "size": f.size,
                 "expected": f.expected, "actual": f.actual} for f in self.files]


def verify(path) -> VerifyReport:
    """Check every file listed in index.json's checksums (ok / mismatch / missing).

    Files the level requires but that have no checksum are reported as missing
    when absent and "unchecked" when present.  Structural problems (sizes,
    headers) found by opening the vindex go in ``report.error``.
    """
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise NoVindexError(f"{root}: no such vindex — create one with "
                            f"EXTRACT MODEL <source> INTO \"{path}\"")
    if not (root / fmt.INDEX).is_file():
        raise NoVindexError(f"{root} is not a vindex (no {fmt.INDEX}) — create one with "
                            f"EXTRACT MODEL <source> INTO \"{path}\"")
    index = fmt.load_index(root)
    report = VerifyReport(root)
    sums: dict[str, str] = dict(index.get("checksums") or {})
    level = index.get("extract_level", "browse")
    names = list(sums)
    for name in fmt.REQUIRED_FILES.get(level, ()):
        if name not in sums:
            names.append(name)
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
    if all(f.status != "missing" for f in report.files):
        from ..errors import LqlError
        from .reader import Vindex
        try:
            Vindex(root)
        except LqlError as exc:
            report.error = str(exc)
    return report
