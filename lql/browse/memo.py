"""One derived object per vindex object, built on first use and dropped with the vindex.

The memo is a :class:`weakref.WeakKeyDictionary`; a value that referenced its
key strongly would keep the key alive for ever (the entry could never die), so
the builder receives a :func:`weakref.proxy` of the view, never the view
itself.  Dropping the last reference to a vindex therefore frees it, its
memory maps and everything memoised for it (``USE`` after ``USE``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from ..runtime.view import VindexView

T = TypeVar("T")


class PerVindex(Generic[T]):
    """``memo(view)`` returns ``build(proxy(view))``, built once per (weak-referenceable) view."""

    def __init__(self, build: Callable[[VindexView], T]):
        self._build = build
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, view: VindexView) -> T:
        if isinstance(view, weakref.ProxyTypes):      # already a proxy (a memoised object's view)
            return self._build(view)
        try:
            value = self._cache.get(view)
        except TypeError:                     # not weak-referenceable: no memo
            return self._build(view)
        if value is None:
            try:
                proxy = weakref.proxy(view)
            except TypeError:
                return self._build(view)
            value = self._cache[view] = self._build(proxy)
        return value

    def __len__(self) -> int:
        return len(self._cache)
