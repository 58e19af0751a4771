"""Normalisations, computed in float32 exactly as transformers does.

* RMSNorm: ``x * rsqrt(mean(x²) + eps) * (offset + w)`` — offset 0 for Llama-style
  and Gemma 4, 1 for Gemma 1–3's ``(1 + w)`` (transformers casts to float32 first and
  multiplies by the weight in float32 before casting back, so in float32 both agree).
  ``weight=None`` is the weightless RMSNorm (Gemma 4's ``v_norm`` and router norm).
* LayerNorm (GPT-2): ``(x - mean) / sqrt(var + eps) * w + b`` (biased variance).
"""

from __future__ import annotations

import numpy as np


class RMSNorm:
    __slots__ = ("scale", "eps")

    def __init__(self, weight: np.ndarray | None, eps: float, offset: float = 0.0):
        self.scale = None if weight is None else \
            np.ascontiguousarray(weight, dtype=np.float32) + np.float32(offset)
        self.eps = np.float32(eps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        var = np.mean(np.square(x), axis=-1, keepdims=True)
        normed = x / np.sqrt(var + self.eps)
        result: np.ndarray = normed if self.scale is None else normed * self.scale
        return result


class LayerNorm:
    __slots__ = ("weight", "bias", "eps")

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, eps: float):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.eps = np.float32(eps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        centred = x - np.mean(x, axis=-1, keepdims=True)
        var = np.mean(np.square(centred), axis=-1, keepdims=True)
        out = centred / np.sqrt(var + self.eps) * self.weight
        result: np.ndarray = out if self.bias is None else out + self.bias
        return result
