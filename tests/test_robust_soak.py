"""Soak: 30 × USE/WALK/DESCRIBE in one Session keeps RSS and open files bounded (case 2).

A leaked vindex keeps its memory maps and files (and a leaked model its ~540 MB of float32
layers), so 30 rounds show a leak as plainly as 100 did, in a third of the suite's time.

The per-vindex memo (lql/browse/memo.py) used to hold values that referenced their weak
key, so every vindex a Session had walked stayed alive with its memory maps."""

from __future__ import annotations

import gc
import os
import sys
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robust_fixtures import base_vindex  # noqa: E402

from lql.session import Session  # noqa: E402

ROUNDS = 30


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_use_drops_the_previous_vindex():
    base = base_vindex()
    s = Session()
    s.execute(f'USE "{base}"; WALK "Paris" TOP 3; DESCRIBE "France"')
    first = weakref.ref(s.vindex)
    s.execute(f'USE "{base}"; WALK "Paris" TOP 3')
    gc.collect()
    assert first() is None, "the previous vindex is still referenced after USE"


def test_soak_use_walk_bounded():
    base = base_vindex()
    s = Session()
    for _ in range(5):
        s.execute(f'USE "{base}"; WALK "Paris" TOP 3; DESCRIBE "France"')
    gc.collect()
    rss0, fd0 = _rss_mb(), _fds()
    for _ in range(ROUNDS):
        s.execute(f'USE "{base}"; WALK "Paris" TOP 3; DESCRIBE "France"')
    gc.collect()
    print(f"soak USE/WALK/DESCRIBE x{ROUNDS}: RSS {rss0:.0f} -> {_rss_mb():.0f} MB, "
          f"open files {fd0} -> {_fds()}")
    assert _fds() - fd0 <= 5, f"open files grew {fd0} -> {_fds()}"
    assert _rss_mb() - rss0 < 150, f"RSS grew {rss0:.0f} -> {_rss_mb():.0f} MB"


def test_soak_use_walk_infer_bounded():
    """30 × USE/WALK/INFER: the model a USE replaced is freed with its vindex (the runtime's
    model cache holds weak references), so RSS and open files stay flat."""
    base = base_vindex()
    s = Session()
    stmt = f'USE "{base}"; WALK "Paris" TOP 3; INFER "The capital of France is" TOP 3 RAW'
    for _ in range(5):
        s.execute(stmt)
    gc.collect()
    first = weakref.ref(s.vindex)
    rss0, fd0 = _rss_mb(), _fds()
    for _ in range(ROUNDS):
        s.execute(stmt)
    gc.collect()
    rss1, fd1 = _rss_mb(), _fds()
    print(f"soak USE/WALK/INFER x{ROUNDS}: RSS {rss0:.0f} -> {rss1:.0f} MB, open files {fd0} -> {fd1}")
    assert first() is None, "a vindex replaced by USE is still alive (its model holds it?)"
    from lql.runtime import models
    assert len(models._CACHE._items) <= 1, "models of vindexes USE replaced are still cached"
    assert fd1 - fd0 <= 5, f"open files grew {fd0} -> {fd1}"
    assert rss1 - rss0 < 150, f"RSS grew {rss0:.0f} -> {rss1:.0f} MB"
