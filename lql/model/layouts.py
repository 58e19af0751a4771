"""Weight layouts: which normalised tensor names hold what, chosen by ``model_config["qkv_layout"]``.

* ``"split"`` — :class:`HFLayout`: ``layers.N.self_attn.{q,k,v,o}_proj.weight``
  ``[out, in]``, gated FFN ``mlp.{gate,up,down}_proj`` (the Llama-style decoder).
* ``"fused_conv1d"`` — :class:`GPT2Layout`: ``h.N.attn.c_attn.weight`` (Conv1D,
  ``[in, out]``, fused QKV), dense FFN ``mlp.c_fc`` / ``mlp.c_proj``, learned positions.

A new computation comes as a new layout class registered in :data:`LAYOUTS` under
its flag value (the families write the flag; ``lql.model`` never sees a family name).

A layout first lists every key the forward pass will read (so a missing tensor is
reported up front, all names at once), then builds the layer objects.  Every
tensor is cast once into a float32 array (q/k/v and gate/up fused into one array,
written in place from the source's storage words — no intermediate copies), kept in
the source's ``[out, in]`` order and used transposed (BLAS reads either order); the
source mapping is not kept by the block.  A mapping that has ``raw(key)`` (the stored
words, bf16 as ``uint16``) and ``release(key)`` (drop the pages read) is read that way,
so a layer built from a memory-mapped vindex leaves no mapped pages behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lql.errors import LqlError
from lql.model.block import Attention, Block
from lql.model.config import ArchSpec
from lql.model.ffn import DenseFFN, GatedFFN
from lql.model.norms import LayerNorm, RMSNorm
from lql.model.rope import Rope
from lql.model.stored import StoredMatrix, cast_bf16_into

Norm = RMSNorm | LayerNorm

F32 = np.float32


_BF16 = np.dtype("<u2")


class Tensors:
    """Reads keys from the source mapping as float32, checking shapes."""

    def __init__(self, weights: Mapping[str, Any]):
        self.weights = weights
        self._raw = getattr(weights, "raw", None)
        self._release = getattr(weights, "release", None)

    def shape(self, key: str) -> tuple[int, ...]:
        getter = getattr(self.weights, "shape", None)
        if callable(getter):
            return tuple(int(d) for d in getter(key))
        return tuple(np.shape(self.weights[key]))

    def into(self, key: str, shape: tuple[int, ...], dst: np.ndarray) -> None:
        """Cast tensor ``key`` (checked to be ``shape``) into the float32 array ``dst``
        (zero-filled: bfloat16 words are copied into the high halves of its elements)."""
        src = self._raw(key) if self._raw is not None else np.asarray(self.weights[key])
        if tuple(src.shape) != tuple(shape):
            raise LqlError(f"tensor {key} has shape {tuple(src.shape)}, expected {tuple(shape)}")
        if self._raw is not None and src.dtype == _BF16:      # bfloat16 words: the top half of an f32
            cast_bf16_into(src, dst)
        else:
            np.copyto(dst, src, casting="unsafe")
        if self._release is not None:
            self._release(key)

    def stack(self, parts: list[tuple[str, tuple[int, int]]]) -> np.ndarray:
        """The 2-D tensors ``parts`` (``(key, shape)``, equal widths) stacked by rows into one
        new float32 array ``[sum of rows, width]``."""
        width = parts[0][1][1]
        # zero-filled (fresh pages from the OS: no pass of ours) for the bf16 copy in ``into``
        out = np.zeros((sum(s[0] for _, s in parts), width), dtype=F32)
        row = 0
        for key, shape in parts:
            self.into(key, shape, out[row:row + shape[0]])
            row += shape[0]
        return out

    def words(self, parts: list[tuple[str, tuple[int, int]]]) -> StoredMatrix | None:
        """The 2-D tensors ``parts`` (``(key, shape)``, equal widths) stacked by rows, left
        in their stored words: a :class:`StoredMatrix` multiplied block by block (a layer
        the weight cache does not hold, run over one row: a decode step).  ``None`` when a
        tensor is not memory-mapped words (decoded blocks of a quantised vindex, arrays in
        memory): there a float32 copy is made anyway, and the weight cache governs it."""
        from lql.model.layerstore import owned_bytes
        arrays = []
        for key, shape in parts:
            src = self._raw(key) if self._raw is not None else np.asarray(self.weights[key])
            if tuple(src.shape) != tuple(shape):
                raise LqlError(f"tensor {key} has shape {tuple(src.shape)}, expected {tuple(shape)}")
            if owned_bytes(src):
                return None
            arrays.append(src)
        return StoredMatrix(arrays, [k for k, _ in parts], self._release)

    @property
    def mapped(self) -> bool:
        """Whether the source gives its stored words (``raw``): memory-mapped, so a layer can
        be multiplied where it is stored."""
        return self._raw is not None

    def release(self, key: str) -> None:
        """Drop the source's mapped pages of ``key`` from this process (after a cast copy)."""
        if self._release is not None:
            self._release(key)

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        arr = np.asarray(self.weights[key], dtype=F32)
        if shape is not None and tuple(arr.shape) != tuple(shape):
            raise LqlError(f"tensor {key} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        return arr


class HFLayout:
    #: :meth:`stored_block` can leave the matrices in their stored words
    streams = True
    embed = "embed_tokens.weight"
    final_norm = "norm.weight"
    head = "lm_head.weight"

    @staticmethod
    def layer_prefix(i: int) -> str:
        return f"layers.{i}."

    def required(self, spec: ArchSpec, tied: bool) -> list[str]:
        keys = [self.embed, self.final_norm] + ([] if tied else [self.head])
        for i in range(spec.num_layers):
            p = self.layer_prefix(i)
            keys += [p + f"self_attn.{n}_proj.weight" for n in "qkvo"]
            keys += [p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
            keys += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
            if spec.sandwich_norms:
                keys += [p + "pre_feedforward_layernorm.weight", p + "post_feedforward_layernorm.weight"]
            if spec.qk_norm:
                keys += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
            if spec.attention_bias:
                keys += [p + f"self_attn.{n}_proj.bias" for n in "qkv"]
            if spec.attention_out_bias:
                keys.append(p + "self_attn.o_proj.bias")
            if spec.mlp_bias:
                keys += [p + f"mlp.{n}_proj.bias" for n in ("gate", "up", "down")]
        return keys

    def _norm(self, spec: ArchSpec, t: Tensors, key: str, dim: int) -> Norm:
        return RMSNorm(t.get(key, (dim,)), spec.norm_eps, spec.norm_offset)

    def final(self, spec: ArchSpec, t: Tensors) -> Norm:
        return self._norm(spec, t, self.final_norm, spec.hidden_size)

    def block(self, spec: ArchSpec, t: Tensors, i: int, present: set[str], rope: Rope | None) -> Block:
        """Layer ``i``, its matrices cast to float32 (q/k/v and gate/up fused)."""
        return self._block(spec, t, i, rope, lambda parts: t.stack(parts).T)   # used as [in, out]

    def stored_block(self, spec: ArchSpec, t: Tensors, i: int, present: set[str],
                     rope: Rope | None) -> Block | None:
        """Layer ``i`` with its matrices left in their stored words (:class:`StoredMatrix`,
        for a decode step's one row); ``None`` when they are not memory-mapped words."""
        missing: list[str] = []

        def words(parts: list[tuple[str, tuple[int, int]]]) -> np.ndarray | StoredMatrix:
            m = t.words(parts)
            if m is None:
                missing.append(parts[0][0])
                return np.zeros((parts[0][1][1], 0), dtype=F32)     # never run: refused below
            return m

        block = self._block(spec, t, i, rope, words)
        return None if missing else block

    def _block(self, spec: ArchSpec, t: Tensors, i: int, rope: Rope | None,
               matrix: Callable[[list[tuple[str, tuple[int, int]]]], np.ndarray | StoredMatrix]) -> Block:
        heads = spec.heads(i)
        p, h, d = self.layer_prefix(i), spec.hidden_size, heads.head_dim
        nq, nkv = heads.num_q_heads * d, heads.num_kv_heads * d
        qkv = matrix([(p + "self_attn.q_proj.weight", (nq, h)), (p + "self_attn.k_proj.weight", (nkv, h)),
                       (p + "self_attn.v_proj.weight", (nkv, h))])
        qkv_bias = None
        if spec.attention_bias:
            qkv_bias = np.concatenate([t.get(p + "self_attn.q_proj.bias", (nq,)),
                                       t.get(p + "self_attn.k_proj.bias", (nkv,)),
                                       t.get(p + "self_attn.v_proj.bias", (nkv,))])
        # Qwen2 has q/k/v biases but none on o_proj; Llama's attention_bias has all four
        o_bias = t.get(p + "self_attn.o_proj.bias", (h,)) if spec.attention_out_bias else None
        q_norm = k_norm = None
        if spec.qk_norm:
            q_norm = self._norm(spec, t, p + "self_attn.q_norm.weight", d)
            k_norm = self._norm(spec, t, p + "self_attn.k_norm.weight", d)
        attention = Attention(
            qkv_t=qkv, qkv_bias=qkv_bias,
            o_t=matrix([(p + "self_attn.o_proj.weight", (h, nq))]), o_bias=o_bias,
            n_q=heads.num_q_heads, n_kv=heads.num_kv_heads, head_dim=d, scale=heads.attn_scale,
            softcap=spec.attn_softcap, window=spec.sliding[i], q_norm=q_norm, k_norm=k_norm, rope=rope)
        gate_shape = t.shape(p + "mlp.gate_proj.weight")
        ff = gate_shape[0]
        if len(gate_shape) != 2 or gate_shape != (ff, h):
            raise LqlError(f"tensor {p}mlp.gate_proj.weight has shape {gate_shape}, expected (*, {h})")
        biases = {}
        if spec.mlp_bias:
            biases = dict(gate_bias=t.get(p + "mlp.gate_proj.bias", (ff,)),
                          up_bias=t.get(p + "mlp.up_proj.bias", (ff,)),
                          down_bias=t.get(p + "mlp.down_proj.bias", (h,)))
        ffn = GatedFFN.fused(matrix([(p + "mlp.gate_proj.weight", (ff, h)), (p + "mlp.up_proj.weight", (ff, h))]),
                             matrix([(p + "mlp.down_proj.weight", (h, ff))]), spec.activation, **biases)
        def norm(name: str) -> Norm:
            return self._norm(spec, t, p + name, h)

        if spec.sandwich_norms:
            return Block(i, attn_norm=norm("input_layernorm.weight"), attention=attention,
                         post_attn_norm=norm("post_attention_layernorm.weight"),
                         ffn_norm=norm("pre_feedforward_layernorm.weight"), ffn=ffn,
                         post_ffn_norm=norm("post_feedforward_layernorm.weight"))
        return Block(i, attn_norm=norm("input_layernorm.weight"), attention=attention,
                     ffn_norm=norm("post_attention_layernorm.weight"), ffn=ffn)

    def positions(self, t: Tensors) -> np.ndarray | None:
        return None


class GPT2Layout(HFLayout):
    streams = False           # Conv1D weights are stored [in, out]: always cast
    embed = "wte.weight"
    final_norm = "ln_f.weight"
    position_table = "wpe.weight"

    @staticmethod
    def layer_prefix(i: int) -> str:
        return f"h.{i}."

    def required(self, spec: ArchSpec, tied: bool) -> list[str]:
        keys = [self.embed, self.position_table, "ln_f.weight", "ln_f.bias"] + ([] if tied else [self.head])
        for i in range(spec.num_layers):
            p = self.layer_prefix(i)
            for name in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                keys += [p + name + ".weight", p + name + ".bias"]
        return keys

    def _ln(self, spec: ArchSpec, t: Tensors, name: str, dim: int) -> Norm:
        return LayerNorm(t.get(name + ".weight", (dim,)), t.get(name + ".bias", (dim,)), spec.norm_eps)

    def final(self, spec: ArchSpec, t: Tensors) -> Norm:
        return self._ln(spec, t, "ln_f", spec.hidden_size)

    def block(self, spec: ArchSpec, t: Tensors, i: int, present: set[str], rope: Rope | None) -> Block:
        p, h, heads = self.layer_prefix(i), spec.hidden_size, spec.heads(i)
        attention = Attention(
            qkv_t=t.get(p + "attn.c_attn.weight", (h, 3 * h)), qkv_bias=t.get(p + "attn.c_attn.bias", (3 * h,)),
            o_t=t.get(p + "attn.c_proj.weight", (h, h)), o_bias=t.get(p + "attn.c_proj.bias", (h,)),
            n_q=heads.num_q_heads, n_kv=heads.num_kv_heads, head_dim=heads.head_dim,
            scale=heads.attn_scale, softcap=spec.attn_softcap, window=spec.sliding[i], rope=rope)
        fc = t.get(p + "mlp.c_fc.weight")
        if fc.ndim != 2 or fc.shape[0] != h:
            raise LqlError(f"tensor {p}mlp.c_fc.weight has shape {fc.shape}, expected ({h}, *)")
        ff = fc.shape[1]
        ffn = DenseFFN(fc, t.get(p + "mlp.c_fc.bias", (ff,)), t.get(p + "mlp.c_proj.weight", (ff, h)),
                       t.get(p + "mlp.c_proj.bias", (h,)), spec.activation)
        return Block(i, attn_norm=self._ln(spec, t, p + "ln_1", h), attention=attention,
                     ffn_norm=self._ln(spec, t, p + "ln_2", h), ffn=ffn)

    def positions(self, t: Tensors) -> np.ndarray | None:
        return np.ascontiguousarray(t.get(self.position_table))


#: ``model_config["qkv_layout"]`` → the layout that reads its tensors
LAYOUTS: dict[str, type[HFLayout]] = {"split": HFLayout, "fused_conv1d": GPT2Layout}


def layout_for(model_config: Mapping[str, Any]) -> HFLayout:
    """The layout of a (completed) ``model_config``, by its ``qkv_layout`` flag."""
    name = model_config.get("qkv_layout") or "split"
    if not isinstance(name, str) or name not in LAYOUTS:
        from lql.errors import UnsupportedArchitectureError
        raise UnsupportedArchitectureError(f"qkv_layout {name!r}", tuple(LAYOUTS))
    return LAYOUTS[name]()
