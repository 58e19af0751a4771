"""Rotary position embeddings, with the scaling types transformers' ``ROPE_INIT_FUNCTIONS``
implements for our families: ``default``, ``linear``, ``llama3``, ``yarn``, ``dynamic``,
``proportional`` (Gemma 4 full-attention layers, see :func:`proportional_inv_freq`).

Inverse frequencies are computed in float32 the way transformers computes them
(``1 / base ** (arange(0, dim, 2) / dim)``), angles as ``float32(position) * inv_freq``,
and the rotation is the "rotate half" (non-interleaved) Hugging Face layout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lql.errors import LqlError
from lql.model.config import RopeSpec

F32 = np.float32


def _default_inv_freq(base: float, dim: int) -> np.ndarray:
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(F32) / F32(dim)
    return (F32(1.0) / (F32(base) ** exponents)).astype(F32)


def _need(params: dict[str, Any], *keys: str) -> list[Any]:
    missing = [k for k in keys if params.get(k) is None]
    if missing:
        raise LqlError(f"rope_scaling {params.get('rope_type')!r} needs {', '.join(missing)}")
    return [params[k] for k in keys]


def _llama3(base: float, dim: int, p: dict[str, Any]) -> np.ndarray:
    factor, low, high, old_ctx = _need(p, "factor", "low_freq_factor", "high_freq_factor",
                                       "original_max_position_embeddings")
    inv = _default_inv_freq(base, dim)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = F32(2 * math.pi) / inv
    scaled = np.where(wavelen > low_wavelen, inv / F32(factor), inv).astype(F32)
    smooth = ((F32(old_ctx) / wavelen - F32(low)) / F32(high - low)).astype(F32)
    smoothed = (F32(1) - smooth) * scaled / F32(factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(F32)


def _yarn(base: float, dim: int, p: dict[str, Any], max_pos: int | None) -> tuple[np.ndarray, float]:
    (orig,) = _need(p, "original_max_position_embeddings")
    factor = p.get("factor")
    if factor is None:
        if not max_pos:
            raise LqlError("rope_scaling 'yarn' needs factor or max_position_embeddings")
        factor = max_pos / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention = float(mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"]))
        else:
            attention = mscale(factor)
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    pos_freqs = F32(base) ** (np.arange(0, dim, 2).astype(F32) / F32(dim))
    extrapolation = F32(1.0) / pos_freqs
    interpolation = F32(1.0) / (F32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=F32) - F32(low)) / F32(high - low), 0, 1).astype(F32)
    keep = F32(1) - ramp
    inv = interpolation * (F32(1) - keep) + extrapolation * keep
    return inv.astype(F32), float(attention)


def proportional_inv_freq(base: float, head_dim: int, partial_rotary_factor: float = 1.0,
                          factor: float = 1.0) -> np.ndarray:
    """transformers' ``proportional`` RoPE (``_compute_proportional_rope_parameters``).

    Unlike Llama-style partial rotary, the tables keep the full ``head_dim``: the first
    ``ra = int(partial_rotary_factor * head_dim // 2)`` inverse frequencies are
    ``1 / base ** (arange(0, 2·ra, 2) / head_dim)`` (divided by the *whole* head size),
    the remaining ``head_dim // 2 - ra`` are zero (angle 0: cos 1, sin 0, no rotation),
    all under the usual rotate-half pairing (dimension ``j`` with ``j + head_dim/2``)."""
    angles = int(partial_rotary_factor * head_dim // 2)
    exponents = np.arange(0, 2 * angles, 2, dtype=np.int64).astype(F32) / F32(head_dim)
    rotated = (F32(1.0) / (F32(base) ** exponents)).astype(F32)
    inv = np.concatenate([rotated, np.zeros(head_dim // 2 - angles, dtype=F32)])
    return (inv / F32(factor)).astype(F32)


class Rope:
    """cos/sin tables for one :class:`RopeSpec`; ``dynamic`` recomputes per sequence length."""

    def __init__(self, spec: RopeSpec):
        self.spec = spec
        params = spec.scaling_dict or {}
        self.kind = params.get("rope_type", "default")
        self.params = params
        self.attention_factor = 1.0
        if self.kind == "default":
            self.inv_freq = _default_inv_freq(spec.base, spec.dim)
        elif self.kind == "linear":
            (factor,) = _need(params, "factor")
            self.inv_freq = (_default_inv_freq(spec.base, spec.dim) / F32(factor)).astype(F32)
        elif self.kind == "llama3":
            self.inv_freq = _llama3(spec.base, spec.dim, params)
        elif self.kind == "yarn":
            self.inv_freq, self.attention_factor = _yarn(spec.base, spec.dim, params,
                                                         spec.max_position_embeddings)
        elif self.kind == "dynamic":
            _need(params, "factor")
            if not spec.max_position_embeddings:
                raise LqlError("rope_scaling 'dynamic' needs max_position_embeddings")
            self.inv_freq = _default_inv_freq(spec.base, spec.dim)
        elif self.kind == "proportional":
            self.inv_freq = proportional_inv_freq(spec.base, spec.dim,
                                                  float(params.get("partial_rotary_factor") or 1.0),
                                                  float(params.get("factor") or 1.0))
        else:  # config.py already refused anything else
            raise LqlError(f"rope type {self.kind!r} is not implemented")

    def _inv_freq_for(self, seq_len: int) -> np.ndarray:
        if self.kind != "dynamic":
            return self.inv_freq
        max_pos = self.spec.max_position_embeddings
        if max_pos is None or seq_len <= max_pos:
            return self.inv_freq
        factor, dim = self.params["factor"], self.spec.dim
        base = self.spec.base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return _default_inv_freq(base, dim)

    def tables(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin), each ``[len(positions), dim]`` float32."""
        inv = self._inv_freq_for(int(positions.max()) + 1)
        freqs = positions.astype(F32)[:, None] * inv[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos, sin = np.cos(emb), np.sin(emb)
        if self.attention_factor != 1.0:
            cos, sin = cos * F32(self.attention_factor), sin * F32(self.attention_factor)
        return cos.astype(F32), sin.astype(F32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate ``x`` (``[heads, T, head_dim]``) by the tables (``[T, head_dim]``)."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    result: np.ndarray = x * cos + rotated * sin
    return result
