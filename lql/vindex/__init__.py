"""The vindex storage engine: open (:func:`open_vindex`), extract, verify.

Knows nothing of LQL.  See ``docs/VINDEX.md``.
"""

from __future__ import annotations

import argparse

from .down_meta import DownMeta
from .extractor import extract
from .reader import Vindex, open_vindex
from .verifier import VerifyReport, verify

__all__ = ["open_vindex", "Vindex", "extract", "verify", "VerifyReport", "DownMeta",
           "cli_extract", "cli_verify"]


def cli_extract(args: argparse.Namespace) -> int:
    from .cli import cli_extract as run
    return run(args)


def cli_verify(args: argparse.Namespace) -> int:
    from .cli import cli_verify as run
    return run(args)
