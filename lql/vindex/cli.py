"""``lql extract`` and ``lql verify`` (called by ``lql.cli`` with an argparse Namespace)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ExecutionError

if TYPE_CHECKING:
    import argparse


def parse_layers(text: object) -> Sequence[int] | None:
    """``"3"``, ``"0-9"``, ``"0-3,7"`` → sorted layer list (``None`` stays ``None``)."""
    if text is None or isinstance(text, (list, tuple, range)):
        return text
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ExecutionError(f"bad layer range {text!r} (expected e.g. 0-9 or 3,5,7)") from None
    return sorted(out)


def cli_extract(args: argparse.Namespace) -> int:
    from .extractor import extract
    from .format import load_index
    t0 = time.perf_counter()
    out = extract(args.source, args.output, level=getattr(args, "level", None) or "browse",
                  dtype=getattr(args, "dtype", None) or "f16",
                  layers=parse_layers(getattr(args, "layers", None)),
                  force=bool(getattr(args, "force", False)), progress="plain",
                  chat_template=getattr(args, "chat_template", None))
    index = load_index(out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    sys.stdout.write(f"extracted {index.get('model')} ({index.get('family')}, "
                     f"{len(index['layers'])}/{index['num_layers']} layers, "
                     f"{index.get('extract_level')}, {index['dtype']}) into {out} — "
                     f"{size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s\n")
    return 0


def cli_verify(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .verifier import verify
    report = verify(args.path)
    console = Console(highlight=False, soft_wrap=True)
    table = Table(title=f"verify {report.path}")
    for col in ("file", "size", "status"):
        table.add_column(col, justify="right" if col == "size" else "left")
    colours = {"ok": "green", "unchecked": "yellow", "mismatch": "red", "missing": "red",
               "bad-name": "red"}
    for f in report.files:
        table.add_row(f.file, "" if f.size is None else f"{f.size:,}",
                      f"[{colours[f.status]}]{f.status}[/]")
    console.print(table)
    if report.error:
        console.print(f"[red]error:[/] {report.error}")
    bad = sum(1 for f in report.files if not f.ok) + (1 if report.error else 0)
    if bad:
        console.print(f"[red]{bad} problem(s)[/]")
        return 1
    unchecked = report.unchecked()
    if unchecked:
        console.print(f"[yellow]not verified: {len(unchecked)} file(s) have no checksum "
                      f"({', '.join(unchecked[:6])}{' …' if len(unchecked) > 6 else ''})[/]")
        return 1
    console.print("[green]vindex ok[/]")
    return 0
