"""Feed-forward networks and their activations.

* :class:`GatedFFN` (Llama, Mistral, Qwen, Gemma): ``down(act(gate·x) * (up·x))`` — gate and
  up are fused into one matmul.
* :class:`DenseFFN` (GPT-2): ``proj(act(fc·x + b) ) + b``.

Both return ``(output, hidden)`` where ``hidden`` is the activation vector the down
projection reads (``act(gate·x) * (up·x)``, or ``act(fc·x)``) — the "FFN features".
"""

from __future__ import annotations

import math

import numpy as np

from lql.model.stored import StoredMatrix

F32 = np.float32
_TANH_C = F32(math.sqrt(2.0 / math.pi))


def silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        result: np.ndarray = x / (F32(1.0) + np.exp(-x))
        return result


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (``gelu_pytorch_tanh`` / ``gelu_new``)."""
    result: np.ndarray = F32(0.5) * x * (F32(1.0) + np.tanh(_TANH_C * (x + F32(0.044715) * x * x * x)))
    return result


ACTIVATIONS = {"silu": silu, "gelu_pytorch_tanh": gelu_tanh, "gelu_tanh": gelu_tanh,
               "gelu_new": gelu_tanh}


def matmul(x: np.ndarray, w: np.ndarray | StoredMatrix) -> np.ndarray:
    """``x @ w`` for ``x`` ``[T, in]``; a :class:`~lql.model.stored.StoredMatrix` (a layer
    the weight cache does not hold) multiplies from its stored words.  (One row is a
    matrix-vector product either way, bit for bit; 2-16 rows as one sgemm beat one gemv per
    row: 4096 x 22016, 5 rows: 0.042 s vs 0.058 s, 16 rows: 0.057 s vs 0.186 s, measured.)"""
    if isinstance(w, StoredMatrix):
        return w.product(x)
    result: np.ndarray = x @ w
    return result


def _linear(x: np.ndarray, w_t: np.ndarray | StoredMatrix, b: np.ndarray | None) -> np.ndarray:
    out: np.ndarray = matmul(x, w_t)
    return out if b is None else out + b


class GatedFFN:
    __slots__ = ("gate_up", "gate_up_bias", "down", "down_bias", "act", "width")

    def __init__(self, gate: np.ndarray, up: np.ndarray, down: np.ndarray, act: str,
                 gate_bias: np.ndarray | None = None, up_bias: np.ndarray | None = None,
                 down_bias: np.ndarray | None = None) -> None:
        self.width = gate.shape[0]
        self.gate_up: np.ndarray | StoredMatrix = np.ascontiguousarray(np.concatenate([gate, up], axis=0).T, dtype=F32)
        self.gate_up_bias = None if gate_bias is None else np.concatenate([gate_bias, up_bias]).astype(F32)
        self.down: np.ndarray | StoredMatrix = np.ascontiguousarray(down.T, dtype=F32)
        self.down_bias = None if down_bias is None else np.asarray(down_bias, dtype=F32)
        self.act = ACTIVATIONS[act]

    @classmethod
    def fused(cls, gate_up_t: np.ndarray | StoredMatrix, down_t: np.ndarray | StoredMatrix, act: str,
              gate_bias: np.ndarray | None = None, up_bias: np.ndarray | None = None,
              down_bias: np.ndarray | None = None) -> GatedFFN:
        """From ``gate_up_t`` ``[hidden, 2·ffn]`` (gate columns, then up) and ``down_t``
        ``[ffn, hidden]``: float32 transposed views of the checkpoint's ``[out, in]`` arrays
        (used without a copy), or :class:`StoredMatrix` standing for them."""
        self = cls.__new__(cls)
        self.width = gate_up_t.shape[1] // 2
        self.gate_up = gate_up_t if isinstance(gate_up_t, StoredMatrix) else np.asarray(gate_up_t, dtype=F32)
        self.gate_up_bias = None if gate_bias is None else np.concatenate([gate_bias, up_bias]).astype(F32)
        self.down = down_t if isinstance(down_t, StoredMatrix) else np.asarray(down_t, dtype=F32)
        self.down_bias = None if down_bias is None else np.asarray(down_bias, dtype=F32)
        self.act = ACTIVATIONS[act]
        return self

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gu = _linear(x, self.gate_up, self.gate_up_bias)
        hidden = self.act(gu[:, :self.width]) * gu[:, self.width:]
        return _linear(hidden, self.down, self.down_bias), hidden


class DenseFFN:
    __slots__ = ("fc", "fc_bias", "proj", "proj_bias", "act", "width")

    def __init__(self, fc_t: np.ndarray, fc_bias: np.ndarray | None, proj_t: np.ndarray,
                 proj_bias: np.ndarray | None, act: str) -> None:
        """Weights already ``[in, out]`` (GPT-2's Conv1D layout)."""
        self.fc = np.ascontiguousarray(fc_t, dtype=F32)
        self.fc_bias = None if fc_bias is None else np.asarray(fc_bias, dtype=F32)
        self.proj = np.ascontiguousarray(proj_t, dtype=F32)
        self.proj_bias = None if proj_bias is None else np.asarray(proj_bias, dtype=F32)
        self.act = ACTIVATIONS[act]
        self.width = self.fc.shape[1]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden = self.act(_linear(x, self.fc, self.fc_bias))
        return _linear(hidden, self.proj, self.proj_bias), hidden
