"""A sparse autoencoder over one layer's residual stream: weights, encode, decode.

Conventions (those of sae_lens, which most published SAEs are saved with):

* ``W_enc`` is ``[d_in, d_sae]``, ``W_dec`` ``[d_sae, d_in]`` (row ``f`` is feature ``f``'s
  decoder direction), ``b_enc`` ``[d_sae]``, ``b_dec`` ``[d_in]``; everything float32.
* ``hidden_pre(x) = (x − b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc``
  (times ``‖W_dec[f]‖`` per feature when ``rescale_acts_by_decoder_norm``);
* ``encode(x)``: ``standard`` ``relu(hidden_pre)``; ``topk`` the ``k`` largest entries of
  ``hidden_pre`` kept and ReLU'd, every other entry 0 (the card formula
  ``relu(topk((x − b_dec) @ W_enc + b_enc, k))``); ``jumprelu``
  ``relu(hidden_pre) · [hidden_pre > threshold]``;
* ``decode(f) = f @ W_dec + b_dec`` (``f / ‖W_dec[f]‖`` first when
  ``rescale_acts_by_decoder_norm``).

``layer`` is this project's layer index: the SAE reads the residual stream *after*
layer ``layer`` — what :class:`lql.model.Hooks` ``residual(layer, h)`` sees, what
``ForwardOutput.residuals[layer]`` records, transformers' ``hidden_states[layer + 1]``
and sae_lens's ``blocks.{layer}.hook_resid_post``.

Nothing here knows about LQL statements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ExecutionError

__all__ = ["Sae", "SaeError", "ARCHITECTURES"]

#: the encoders :meth:`Sae.encode` implements
ARCHITECTURES = ("standard", "topk", "jumprelu")


class SaeError(ExecutionError):
    """An SAE file that cannot be used (unreadable, wrong shapes, unsupported layout); ``.path``."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


@dataclass(eq=False)
class Sae:
    """One sparse autoencoder (see the module doc for the formulas)."""
    W_enc: np.ndarray
    W_dec: np.ndarray
    b_enc: np.ndarray
    b_dec: np.ndarray
    architecture: str = "standard"
    k: int | None = None
    threshold: np.ndarray | None = None
    layer: int | None = None
    hook_name: str | None = None
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    labels: dict[int, str] = field(default_factory=dict)
    path: Path | None = None
    format: str = "sae_lens"          # "sae_lens" | "safetensors" | "npz"

    def __post_init__(self) -> None:
        self.W_enc, self.W_dec = _f32(self.W_enc), _f32(self.W_dec)
        self.b_enc, self.b_dec = _f32(self.b_enc), _f32(self.b_dec)
        if self.threshold is not None:
            self.threshold = _f32(self.threshold)
        where = f"SAE {self.path}" if self.path else "SAE"
        if self.architecture not in ARCHITECTURES:
            raise SaeError(f"{where}: architecture {self.architecture!r} is not supported "
                           f"(supported: {', '.join(ARCHITECTURES)})", self.path)
        if self.W_enc.ndim != 2 or self.W_dec.ndim != 2:
            raise SaeError(f"{where}: W_enc and W_dec must be 2-D, got shapes "
                           f"{self.W_enc.shape} and {self.W_dec.shape}", self.path)
        d_in, d_sae = self.W_enc.shape
        checks = {"W_dec": (self.W_dec.shape, (d_sae, d_in)), "b_enc": (self.b_enc.shape, (d_sae,)),
                  "b_dec": (self.b_dec.shape, (d_in,))}
        if self.threshold is not None:
            checks["threshold"] = (self.threshold.shape, (d_sae,))
        for name, (got, want) in checks.items():
            if tuple(got) != want:
                raise SaeError(f"{where}: {name} has shape {tuple(got)}, expected {want} "
                               f"(W_enc is {tuple(self.W_enc.shape)} = [d_in, d_sae])", self.path)
        if self.architecture == "topk":
            if self.k is None or not 1 <= int(self.k) <= d_sae:
                raise SaeError(f"{where}: a TopK SAE needs 1 ≤ k ≤ d_sae = {d_sae}, got {self.k}",
                               self.path)
            self.k = int(self.k)
        if self.architecture == "jumprelu" and self.threshold is None:
            raise SaeError(f"{where}: a JumpReLU SAE needs a threshold tensor", self.path)
        if self.layer is not None and int(self.layer) < 0:
            raise SaeError(f"{where}: layer must be ≥ 0, got {self.layer}", self.path)

    # ------------------------------------------------------------ shape
    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def check_model(self, hidden_size: int, num_layers: int) -> None:
        """Raise :class:`SaeError` unless this SAE fits a model of that geometry."""
        where = f"SAE {self.path}" if self.path else "SAE"
        if self.d_in != int(hidden_size):
            raise SaeError(f"{where} reads vectors of size d_in = {self.d_in}, but the model's "
                           f"hidden size is {hidden_size} — it was trained on another model",
                           self.path)
        if self.layer is None:
            raise SaeError(f"{where}: its layer is unknown — give it with AT LAYER n", self.path)
        if not 0 <= int(self.layer) < int(num_layers):
            raise SaeError(f"{where} reads layer {self.layer}, but the model has layers "
                           f"0-{int(num_layers) - 1}", self.path)

    def feature_index(self, feature: int) -> int:
        f = int(feature)
        if not 0 <= f < self.d_sae:
            raise SaeError(f"SAE feature {f} out of range: this SAE has features 0-{self.d_sae - 1}",
                           self.path)
        return f

    # ------------------------------------------------------------ formulas
    def hidden_pre(self, x: np.ndarray) -> np.ndarray:
        """Pre-activations ``[..., d_sae]`` (float32) of residual vectors ``x`` ``[..., d_in]``."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != self.d_in:
            raise SaeError(f"SAE input has size {x.shape[-1]}, expected d_in = {self.d_in}",
                           self.path)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.decoder_norms
        out: np.ndarray = pre.astype(np.float32, copy=False)
        return out

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Feature activations ``[..., d_sae]`` of residual vectors ``x`` ``[..., d_in]``."""
        pre = self.hidden_pre(x)
        if self.architecture == "standard":
            return np.maximum(pre, 0.0)
        if self.architecture == "jumprelu":
            assert self.threshold is not None
            return np.where(pre > self.threshold, np.maximum(pre, 0.0), 0.0).astype(np.float32)
        k = int(self.k or 0)
        flat = pre.reshape(-1, self.d_sae)
        out = np.zeros_like(flat)
        if k >= self.d_sae:
            idx = np.broadcast_to(np.arange(self.d_sae), flat.shape).copy()
        else:
            idx = np.argpartition(-flat, k - 1, axis=-1)[:, :k]
        vals = np.take_along_axis(flat, idx, axis=-1)
        np.put_along_axis(out, idx, np.maximum(vals, 0.0), axis=-1)
        return out.reshape(pre.shape)

    def decode(self, f: np.ndarray) -> np.ndarray:
        """Reconstruction ``[..., d_in]`` of feature activations ``f`` ``[..., d_sae]``."""
        f = np.asarray(f, dtype=np.float32)
        if f.shape[-1] != self.d_sae:
            raise SaeError(f"SAE features have size {f.shape[-1]}, expected d_sae = {self.d_sae}",
                           self.path)
        if self.rescale_acts_by_decoder_norm:
            f = f / self.decoder_norms
        out: np.ndarray = (f @ self.W_dec + self.b_dec).astype(np.float32, copy=False)
        return out

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        return self.decode(self.encode(x))

    @property
    def decoder_norms(self) -> np.ndarray:
        """``‖W_dec[f]‖`` for every feature ``[d_sae]`` float32."""
        norms = getattr(self, "_dec_norms", None)
        if norms is None:
            norms = np.linalg.norm(self.W_dec, axis=1).astype(np.float32)
            self._dec_norms = norms
        result: np.ndarray = norms
        return result

    def direction(self, feature: int) -> np.ndarray:
        """Feature ``feature``'s decoder row ``W_dec[feature]`` ``[d_in]`` (a view)."""
        row: np.ndarray = self.W_dec[self.feature_index(feature)]
        return row

    def describe(self) -> str:
        k = f", k {self.k}" if self.architecture == "topk" else ""
        return (f"{self.architecture} SAE, d_in {self.d_in}, d_sae {self.d_sae}{k}, "
                f"layer {self.layer}")
