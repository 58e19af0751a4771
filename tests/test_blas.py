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


def _one_thread_differs(cols: int) -> bool:
    """Whether OpenBLAS sums a (5 × cols) · (cols × 1024) product otherwise at one thread
    on this machine (it depends on the CPU's kernels: on SkylakeX 2000 columns differ and
    4096 do not; on an AMD EPYC both differ)."""
    w = np.random.default_rng(cols).standard_normal((1024, cols), dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((5, cols), dtype=np.float32)
    with blas.one_thread():
        single = x @ w.T
    return not np.array_equal(x @ w.T, single)


@pytest.mark.parametrize("cols", [2000, 4096])
def test_agrees_compares_the_product_both_ways_and_remembers(cols):
    """The probe reports what comparing the product at both thread counts shows, runs the
    product once as it is and once at one thread, and remembers its answer."""
    _set, get = blas.api()  # type: ignore[misc]
    calls = []

    def probe(cols: int):
        w = np.random.default_rng(cols).standard_normal((1024, cols), dtype=np.float32)
        x = np.random.default_rng(1).standard_normal((5, cols), dtype=np.float32)

        def run() -> np.ndarray:
            calls.append(get())
            return x @ w.T
        return run

    expected = not _one_thread_differs(cols)
    key = ("test", cols)
    blas._agree.pop(key, None)
    try:
        assert blas.agrees(key, probe(cols)) is expected
        assert calls[-2:] == [get(), 1]                 # once as it is, once at one thread
        n = len(calls)
        assert blas.agrees(key, probe(cols)) is expected
        assert len(calls) == n                           # remembered
    finally:
        blas._agree.pop(key, None)


def test_agrees_does_not_decide_while_a_caller_is_at_one_thread():
    blas._agree.pop(("test", "busy"), None)
    with blas.one_thread():
        assert blas.agrees(("test", "busy"), lambda: np.zeros(1)) is False
    assert ("test", "busy") not in blas._agree
