"""One derived object per vindex object, built on first use and dropped with the vindex."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from ..runtime.view import VindexView

T = TypeVar("T")


class PerVindex(Generic[T]):
    """``memo(view)`` returns ``build(view)``, built once per (weak-referenceable) view."""

    def __init__(self, build: Callable[[VindexView], T]):
        self._build = build
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, view: VindexView) -> T:
        try:
            value = self._cache.get(view)
            if value is None:
                value = self._cache[view] = self._build(view)
            return value
        except TypeError:                     # not weak-referenceable: no memo
            return self._build(view)
