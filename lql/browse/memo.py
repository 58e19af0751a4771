"""One derived object per vindex object, built on first use and dropped with the vindex."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerVindex(Generic[T]):
    """``memo(view)`` returns ``build(view)``, built once per (weak-referenceable) view."""

    def __init__(self, build: Callable[[object], T]):
        self._build = build
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, view) -> T:
        try:
            value = self._cache.get(view)
            if value is None:
                value = self._cache[view] = self._build(view)
            return value
        except TypeError:                     # not weak-referenceable: no memo
            return self._build(view)
