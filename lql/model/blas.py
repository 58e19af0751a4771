"""The BLAS library's own threads: one, while our two threads multiply stored blocks.

A product over stored words (:mod:`lql.model.stored`) runs its blocks in two Python
threads, each calling BLAS on a block at a time.  OpenBLAS would split each of those
calls over its own two threads as well: four threads on two cores, handing work back and
forth on every block.  :func:`one_thread` sets OpenBLAS to one thread for the length of
such a product (measured, 2 cores: a 5-token prompt over 4 streamed 7B-shaped layers
0.96 → 0.57 s; a whole decode step, whose blocks are matrix-vector products, was no
faster, so those keep OpenBLAS's count).  The thread count can change a product's last
bits: a gemv's rows are split between threads at a point that groups the rows near it
otherwise, and a matrix product's sums are taken in other chunks for some inner sizes
(e.g. 1040, 2000, 4400; not 576, 2048, 4096 or 11008 — measured), while a stored product
must equal the cached one bit for bit.  So :func:`agrees` tries a caller's product both
ways once per shape, and :func:`one_thread` is used only where they agree.

numpy's OpenBLAS is found among the libraries this process has loaded and driven through
its ``openblas_set_num_threads``/``openblas_get_num_threads`` (the names carry a prefix
and suffix in the ``scipy-openblas`` builds that numpy's wheels ship).  Where there is
no OpenBLAS (another BLAS, another OS) :func:`one_thread` does nothing.  (threadpoolctl
does this for any BLAS, but looks the libraries up again on every call; a prompt over a
32-layer model makes hundreds of these calls.)
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_NAMES = ("scipy_openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads",
          "openblas_{}_num_threads64_", "openblas_{}_num_threads")

_lock = threading.Lock()
_depth = 0
_saved = 0
_api: tuple[Callable[[int], None], Callable[[], int]] | None = None
_looked = False
_agree: dict[Hashable, bool] = {}


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux: /proc/self/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    seen: list[str] = []
    for line in maps.read_text().splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if "openblas" in Path(path).name.lower() and path not in seen:
            seen.append(path)
    return seen


def _find() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _NAMES:
            setter = getattr(lib, name.format("set"), None)
            getter = getattr(lib, name.format("get"), None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


def api() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    """``(set_num_threads, get_num_threads)`` of numpy's OpenBLAS, or ``None``."""
    global _api, _looked
    if not _looked:
        with _lock:
            if not _looked:
                _api = _find()
                _looked = True
    return _api


@contextmanager
def one_thread() -> Iterator[None]:
    """OpenBLAS runs each call in the calling thread while any caller is inside (a
    process-wide count: the count it had before comes back when the last one leaves)."""
    global _depth, _saved
    calls = api()
    if calls is None:
        yield
        return
    setter, getter = calls
    with _lock:
        if _depth == 0:
            _saved = getter()
            setter(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                setter(_saved)


def agrees(key: Hashable, product: Callable[[], np.ndarray]) -> bool:
    """Whether ``product()`` (a probe standing for the products ``key`` names) gives the same
    bits under :func:`one_thread` as with OpenBLAS's own threads; tried once per ``key``.
    ``True`` where OpenBLAS is not found (:func:`one_thread` does nothing); ``False``, not
    remembered, while some caller is inside :func:`one_thread` (no clean comparison)."""
    got = _agree.get(key)
    if got is not None:
        return got
    if api() is None:
        return True
    with _lock:                 # no caller can set one thread while the reference runs
        if _depth:
            return False
        want = product()
    with one_thread():
        single = product()
    got = _agree[key] = bool(np.array_equal(want, single))
    return got
