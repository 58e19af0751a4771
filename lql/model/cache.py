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

    def __init__(self) -> None:
        self.keys: np.ndarray | None = None
        self.values: np.ndarray | None = None
        self.length = 0

    def append(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add ``[Hkv, T, d]`` keys/values; return views of all cached ones."""
        t = k.shape[1]
        needed = self.length + t
        keys, values = self.keys, self.values
        if keys is None or values is None or needed > keys.shape[1]:
            capacity = max(needed, 2 * (0 if keys is None else keys.shape[1]), 64)
            grown = np.empty((k.shape[0], capacity, k.shape[2]), dtype=np.float32)
            grown_v = np.empty_like(grown)
            if keys is not None and values is not None:
                grown[:, :self.length] = keys[:, :self.length]
                grown_v[:, :self.length] = values[:, :self.length]
            self.keys, self.values = keys, values = grown, grown_v
        keys[:, self.length:needed] = k
        values[:, self.length:needed] = v
        self.length = needed
        return keys[:, :needed], values[:, :needed]

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        """Views of every cached key/value (for a layer that shares this cache)."""
        if self.keys is None or self.values is None:
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
        return sum(int(c.keys.nbytes) + int(c.values.nbytes) for c in unique
                   if c.keys is not None and c.values is not None)
