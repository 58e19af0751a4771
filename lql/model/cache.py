"""Key/value cache for incremental decoding.

Keys are stored after RoPE (as transformers does), per layer ``[num_kv_heads, capacity, head_dim]``
float32, growing geometrically.  Positions are contiguous from 0, so the next
position is ``cache.length``.  Sliding-window layers keep every key (the mask
hides the old ones), so memory is ``2 · layers · kv_heads · head_dim · 4`` bytes per token.

KV sharing (Gemma 4): ``KVCache(n, sources=[None, …, 2, 2])`` makes layer ``i``'s entry
*the same* :class:`LayerCache` object as layer ``sources[i]``'s — the sharing layer reads
its source's keys and values (:meth:`LayerCache.view`) and never appends.
"""

from __future__ import annotations

import numpy as np


class LayerCache:
    __slots__ = ("keys", "values", "length")

    def __init__(self):
        self.keys = self.values = None
        self.length = 0

    def append(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add ``[Hkv, T, d]`` keys/values; return views of all cached ones."""
        t = k.shape[1]
        needed = self.length + t
        if self.keys is None or needed > self.keys.shape[1]:
            capacity = max(needed, 2 * (0 if self.keys is None else self.keys.shape[1]), 64)
            keys = np.empty((k.shape[0], capacity, k.shape[2]), dtype=np.float32)
            values = np.empty_like(keys)
            if self.keys is not None:
                keys[:, :self.length] = self.keys[:, :self.length]
                values[:, :self.length] = self.values[:, :self.length]
            self.keys, self.values = keys, values
        self.keys[:, self.length:needed] = k
        self.values[:, self.length:needed] = v
        self.length = needed
        return self.keys[:, :needed], self.values[:, :needed]

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        """Views of every cached key/value (for a layer that shares this cache)."""
        if self.keys is None:
            raise RuntimeError("a KV-sharing layer ran before the layer it shares keys with")
        return self.keys[:, :self.length], self.values[:, :self.length]


class KVCache:
    """One :class:`LayerCache` per layer; pass the same object to successive ``forward`` calls."""

    def __init__(self, num_layers: int, sources: list[int | None] | None = None):
        self.layers = [LayerCache() for _ in range(num_layers)]
        for i, src in enumerate(sources or ()):
            if src is not None:
                self.layers[i] = self.layers[src]  # an alias, not a copy
        self.length = 0  # tokens already processed (= next position)

    def nbytes(self) -> int:
        unique = {id(c): c for c in self.layers}.values()
        return sum(0 if c.keys is None else c.keys.nbytes + c.values.nbytes for c in unique)
