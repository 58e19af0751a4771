"""Reconstruction metrics of an SAE over a stream of residual vectors.

Fed batches ``x`` ``[n, d_in]`` (every position the caller chose), :class:`Metrics`
accumulates in float64 and reports, over all ``N`` vectors seen:

* ``mse``: ``Σ ‖x − x̂‖² / (N · d_in)`` (mean squared error per element, ``x̂ = decode(encode(x))``);
* ``variance_explained``: ``1 − Σ ‖x − x̂‖² / Σ ‖x − μ‖²`` with ``μ`` the mean vector of
  all ``N`` inputs (the fraction of the inputs' total variance the reconstruction keeps;
  1 is perfect, 0 is no better than predicting ``μ``, negative is worse);
* ``l0``: the mean number of features with activation ``> 0`` per vector;
* ``dead_fraction``: the fraction of the ``d_sae`` features that never had activation
  ``> 0`` on any of the ``N`` vectors (``alive`` counts the others) — it depends on
  how much text was seen: a short prompt file leaves many features "dead";
* ``cosine``: the mean cosine similarity between ``x`` and ``x̂``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .sae import Sae

__all__ = ["Metrics"]


@dataclass
class Metrics:
    sae: Sae
    n: int = 0
    sq_err: float = 0.0
    sum_x: np.ndarray | None = None
    sum_x2: float = 0.0
    l0_sum: float = 0.0
    cos_sum: float = 0.0
    fired: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        if self.fired.size != self.sae.d_sae:
            self.fired = np.zeros(self.sae.d_sae, dtype=bool)
        if self.sum_x is None:
            self.sum_x = np.zeros(self.sae.d_in, dtype=np.float64)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.sae.d_in)
        if x.shape[0] == 0:
            return
        f = self.sae.encode(x)
        xh = self.sae.decode(f).astype(np.float64)
        x64 = x.astype(np.float64)
        err = x64 - xh
        self.n += x.shape[0]
        self.sq_err += float(np.sum(err * err))
        assert self.sum_x is not None
        self.sum_x += x64.sum(axis=0)
        self.sum_x2 += float(np.sum(x64 * x64))
        active = f > 0
        self.l0_sum += float(active.sum())
        self.fired |= active.any(axis=0)
        nx, nh = np.linalg.norm(x64, axis=1), np.linalg.norm(xh, axis=1)
        denom = np.where(nx * nh > 0, nx * nh, 1.0)
        self.cos_sum += float(np.sum(np.sum(x64 * xh, axis=1) / denom))

    def result(self) -> dict[str, float | int]:
        if self.n == 0:
            return {"vectors": 0}
        assert self.sum_x is not None
        mu = self.sum_x / self.n
        total = self.sum_x2 - self.n * float(mu @ mu)
        alive = int(self.fired.sum())
        return {
            "vectors": self.n,
            "mse": self.sq_err / (self.n * self.sae.d_in),
            "variance_explained": (1.0 - self.sq_err / total) if total > 0 else float("nan"),
            "l0": self.l0_sum / self.n,
            "dead_fraction": 1.0 - alive / self.sae.d_sae,
            "alive": alive,
            "d_sae": self.sae.d_sae,
            "cosine": self.cos_sum / self.n,
        }
