"""The model's layers, built when they run: a byte-bounded cache of their float32 copies.

A model's weights stay where they are (a vindex's memory-mapped files, in their storage
dtype); :class:`LayerStore` builds a layer's :class:`~lql.model.block.Block` (its tensors
cast to float32, fused where that makes the matmuls faster) the first time the forward
pass reaches it, and keeps it while the process-wide budget allows:

* ``LQL_WEIGHT_CACHE_MB`` (default :data:`DEFAULT_BUDGET_MB`) bounds the bytes of all
  models' cached float32 layers together.  A model whose layers fit stays fully built after
  its first pass (today's speed); a larger one keeps the layers that fitted first and
  builds the others afresh on every pass (a streaming cycle over the layers would make an
  LRU drop each layer just before it is needed again, so the cached set is not churned by
  its own model; layers of *other* models are evicted, least recently used first, to make
  room).  ``0`` caches nothing: every layer is built when it runs and dropped after.
* Decode and short prompts: a call over at most ``STREAM_MAX_ROWS`` rows (16: a decode
  step, a short prompt) runs a layer that is not cached over its stored words, cast block
  by block as each product needs it (:mod:`lql.model.stored`): memory is read once, at 2
  bytes a weight for 16-bit storage, instead of cast whole into float32 and read again.
* Read-ahead: while layer ``i`` runs, layer ``i + 1`` (when it is not cached) is built in a
  background thread — its pages are read from disk and cast while numpy computes (both
  release the GIL), so streaming overlaps compute.  At most two streamed layers are alive.

Built blocks are read-only by convention; an overlay's edited layers are pinned copies
(:meth:`LayerStore.copy` + item assignment), outside the budget.
"""

from __future__ import annotations

import functools
import os
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from lql.model.stored import STREAM_MAX_ROWS, LazyPool

if TYPE_CHECKING:
    from lql.model.block import Block

_FUNCTIONS = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, type)
#: the default ``LQL_WEIGHT_CACHE_MB``: room for a ~0.75B-parameter model's float32 layers
DEFAULT_BUDGET_MB = 3072


def budget_bytes() -> int:
    """The cache budget in bytes (``LQL_WEIGHT_CACHE_MB``; negative or ``inf``: unbounded)."""
    raw = os.environ.get("LQL_WEIGHT_CACHE_MB", "").strip()
    if not raw:
        return DEFAULT_BUDGET_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        from lql.errors import LqlError
        raise LqlError(f"LQL_WEIGHT_CACHE_MB={raw!r} is not a number of megabytes") from None
    if mb < 0 or mb == float("inf"):
        return 1 << 62
    return int(mb * (1 << 20))


def owned_bytes(obj: object, seen: set[int] | None = None, depth: int = 0) -> int:
    """Bytes of the memory the arrays under ``obj`` own (memory-mapped files count 0; a
    buffer shared by several views counts once)."""
    seen = set() if seen is None else seen
    if isinstance(obj, np.ndarray):
        root: Any = obj
        while isinstance(root, np.ndarray) and root.base is not None:
            root = root.base
        # a file mapping costs no heap (numpy's results of a memmap are memmaps without one)
        if not isinstance(root, np.ndarray) or getattr(root, "_mmap", None) is not None or id(root) in seen:
            return 0
        seen.add(id(root))
        return int(root.nbytes)
    if depth > 5 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        return sum(owned_bytes(v, seen, depth + 1) for v in obj)
    attrs = getattr(obj, "__dict__", None)
    values: list[object] = list(attrs.values()) if isinstance(attrs, dict) else []
    for name in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, name):
            values.append(getattr(obj, name))
    return sum(owned_bytes(v, seen, depth + 1) for v in values if not isinstance(v, _FUNCTIONS))


class _Slot:
    """One layer of one model: its factory and, when cached, its built block."""

    __slots__ = ("factory", "block", "nbytes", "future", "lock", "group", "stored", "cast_only",
                 "__weakref__")

    def __init__(self, factory: Callable[[], Block], group: int) -> None:
        self.factory = factory
        self.block: Block | None = None
        self.stored: Block | None = None     # the layer over its stored words (decode)
        self.cast_only = False               # its words are not memory-mapped: always cast
        self.nbytes = 0
        self.future: Future[Block] | None = None
        self.lock = threading.Lock()
        self.group = group


class _Budget:
    """The process-wide account of cached layers (weak references to their slots)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.used = 0
        self.items: OrderedDict[int, tuple[weakref.ref[_Slot], int]] = OrderedDict()

    def _forget(self, key: int) -> None:
        entry = self.items.pop(key, None)
        if entry is not None:
            self.used -= entry[1]

    def touch(self, slot: _Slot) -> None:
        with self.lock:
            if id(slot) in self.items:
                self.items.move_to_end(id(slot))

    def admit(self, slot: _Slot, block: Block) -> bool:
        """Keep ``block`` in ``slot`` if the budget allows (evicting other models' layers)."""
        size = owned_bytes(block)
        limit = budget_bytes()
        with self.lock:
            if size > limit:
                return False
            if self.used + size > limit:
                for key, (ref, _) in list(self.items.items()):
                    other = ref()
                    if other is not None and other.group == slot.group:
                        continue
                    if other is not None:
                        other.block = None
                    self._forget(key)
                    if self.used + size <= limit:
                        break
            if self.used + size > limit:
                return False
            key = id(slot)
            self.items[key] = (weakref.ref(slot, functools.partial(self._dropped, key)), size)
            self.used += size
            slot.block, slot.nbytes = block, size
            return True

    def _dropped(self, key: int, _ref: object) -> None:
        self._drop(key)

    def _drop(self, key: int) -> None:
        with self.lock:
            self._forget(key)

    def clear(self) -> None:
        with self.lock:
            for ref, _ in self.items.values():
                slot = ref()
                if slot is not None:
                    slot.block = None
            self.items.clear()
            self.used = 0


BUDGET = _Budget()
_pool = LazyPool("lql-readahead")


def cached_bytes() -> int:
    """Bytes of float32 layers cached now (all models)."""
    return BUDGET.used


def clear_weight_cache() -> None:
    """Drop every cached layer (they are rebuilt when they next run)."""
    BUDGET.clear()


class LayerStore(Sequence["Block"]):
    """A model's layers as a sequence: ``store[i]`` is layer ``i``'s built block."""

    def __init__(self, factories: Sequence[Callable[[], Block]],
                 stored: Sequence[Callable[[], Block | None]] | None = None) -> None:
        """``factories[i]()`` builds layer ``i`` cast to float32; ``stored[i]()``, when given,
        builds it over its stored words (:class:`~lql.model.stored.StoredMatrix`), which a
        decode step runs instead of casting a layer the cache does not hold (``None``: the
        layer's words are not memory-mapped, so it is always cast)."""
        group = id(self)
        self._slots = [_Slot(f, group) for f in factories]
        self._stored = list(stored) if stored is not None else None
        self._pinned: dict[int, Block] = {}

    @classmethod
    def of_blocks(cls, blocks: Sequence[Block]) -> LayerStore:
        """A store of already built blocks (all pinned)."""
        store = cls([_unbuildable] * len(blocks))
        store._pinned = dict(enumerate(blocks))
        return store

    def __len__(self) -> int:
        return len(self._slots)

    @overload
    def __getitem__(self, i: int) -> Block: ...

    @overload
    def __getitem__(self, i: slice) -> list[Block]: ...

    def __getitem__(self, i: int | slice) -> Block | list[Block]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self._slots)
        pinned = self._pinned.get(i)
        if pinned is not None:
            return pinned
        slot = self._slots[i]
        block = slot.block
        if block is not None:
            BUDGET.touch(slot)
            return block
        with slot.lock:
            future, slot.future = slot.future, None
        block = future.result() if future is not None else slot.factory()
        if slot.block is not None:         # built meanwhile by another caller
            return slot.block
        BUDGET.admit(slot, block)
        return block

    def __setitem__(self, i: int, block: Block) -> None:
        self._pinned[i] = block

    def __iter__(self) -> Iterator[Block]:
        for i in range(len(self)):
            yield self[i]

    def for_rows(self, i: int, rows: int, ahead: bool = True) -> Block:
        """Layer ``i`` for a forward call over ``rows`` rows.  A layer that is not built, run
        over at most :data:`~lql.model.stored.STREAM_MAX_ROWS` rows, is multiplied from its
        stored words (its stored-words block is built once and kept: it owns no weights);
        otherwise the layer is built (or taken from the cache) and, with ``ahead``, layer
        ``i + 1`` is read ahead in the background (for a short call too when this layer's
        words are not memory-mapped and it is always cast)."""
        few = self._stored is not None and rows <= STREAM_MAX_ROWS
        if few and not self.is_ready(i):
            slot = self._slots[i]
            if slot.stored is None and not slot.cast_only:
                assert self._stored is not None
                slot.stored = self._stored[i]()
                slot.cast_only = slot.stored is None
            if slot.stored is not None:
                return slot.stored
        block = self[i]
        if ahead and (not few or self._slots[i].cast_only):
            self.prefetch(i + 1)           # (a layer that is always cast: its next one is too)
        return block

    def warm(self) -> int:
        """Build layers from the first on while the budget keeps them (what a model whose
        layers fit does at once, so its shape errors come at build time); the number kept."""
        for i in range(len(self._slots)):
            if self.is_ready(i):
                continue
            slot = self._slots[i]
            if not BUDGET.admit(slot, slot.factory()):
                return i
        return len(self._slots)

    def is_ready(self, i: int) -> bool:
        """Whether layer ``i`` is built (cached or pinned) — running it reads no weights."""
        return i in self._pinned or self._slots[i].block is not None

    def prefetch(self, i: int) -> None:
        """Start building layer ``i`` in the background when it is not ready (read-ahead)."""
        if not 0 <= i < len(self._slots) or self.is_ready(i):
            return
        slot = self._slots[i]
        with slot.lock:
            if slot.future is None:
                slot.future = _pool().submit(slot.factory)

    def copy(self) -> LayerStore:
        """A store over the same layers (sharing their cache), with its own pinned layers."""
        other = LayerStore.__new__(LayerStore)
        other._slots = self._slots
        other._stored = self._stored
        other._pinned = dict(self._pinned)
        return other

    def cached_layers(self) -> list[int]:
        return [i for i in range(len(self)) if self.is_ready(i)]


def _unbuildable() -> Block:
    raise RuntimeError("this layer store holds built blocks only")
