"""OpenBLAS at one thread while stored blocks are multiplied (lql.model.blas)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lql.model import blas

pytestmark = pytest.mark.skipif(blas.api() is None, reason="numpy's BLAS is not OpenBLAS")


def test_one_thread_sets_one_and_restores_the_count_after_the_last_caller():
    _set, get = blas.api()  # type: ignore[misc]
    before = get()
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        with blas.one_thread():
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=other)
    with blas.one_thread():
        assert get() == 1
        t.start()
        assert inside.wait(5)
    assert get() == 1              # the other caller is still inside
    leave.set()
    t.join(5)
    assert get() == before


def test_agrees_compares_the_product_both_ways_and_remembers():
    """A width whose matrix products OpenBLAS sums otherwise at one thread is told apart from
    one it does not (2000 and 4096 on the SkylakeX kernels; where the machine's BLAS runs
    one thread anyway both agree, and that is what the probe must report)."""
    _set, get = blas.api()  # type: ignore[misc]
    calls = []

    def probe(cols: int):
        w = np.random.default_rng(cols).standard_normal((1024, cols), dtype=np.float32)
        x = np.random.default_rng(1).standard_normal((5, cols), dtype=np.float32)

        def run() -> np.ndarray:
            calls.append(get())
            return x @ w.T
        return run

    blas._agree.pop(("test", 4096), None)
    assert blas.agrees(("test", 4096), probe(4096)) is True
    assert calls[-2:] == [get(), 1]                 # once as it is, once at one thread
    n = len(calls)
    assert blas.agrees(("test", 4096), probe(4096)) is True
    assert len(calls) == n                           # remembered
    w = np.random.default_rng(2000).standard_normal((1024, 2000), dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((5, 2000), dtype=np.float32)
    with blas.one_thread():
        single = x @ w.T
    differs = not np.array_equal(x @ w.T, single)
    blas._agree.pop(("test", 2000), None)
    assert blas.agrees(("test", 2000), probe(2000)) is (not differs)
    blas._agree.pop(("test", 2000), None)
    blas._agree.pop(("test", 4096), None)


def test_agrees_does_not_decide_while_a_caller_is_at_one_thread():
    blas._agree.pop(("test", "busy"), None)
    with blas.one_thread():
        assert blas.agrees(("test", "busy"), lambda: np.zeros(1)) is False
    assert ("test", "busy") not in blas._agree
