"""The model: embeddings → blocks → final norm → unembedding, with recording, hooks,
a KV cache and greedy generation.  Built by :func:`build_model`.

Memory: the embedding, final norm and head are held as float32 (a tied head shares the
embedding array); the layers are a :class:`~lql.model.layerstore.LayerStore`: each is built
(cast to float32, QKV and gate/up fused) when it first runs and kept while the process-wide
budget ``LQL_WEIGHT_CACHE_MB`` allows, else built again (read ahead in the background) on
every pass.  A model whose layers fit is built whole at :func:`build_model` (about
``4 × parameter count`` bytes: SmolLM2-135M ~540 MB) plus the KV cache.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lql.errors import ExecutionError, LqlError, MissingTensorError, NonFiniteError
from lql.model.cache import KVCache
from lql.model.config import ArchSpec, arch_spec
from lql.model.layerstore import LayerStore
from lql.model.layouts import Tensors, layout_for
from lql.model.records import ForwardOutput, Hooks, Record
from lql.model.rope import Rope

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from lql.model.block import Block, Norm
    from lql.model.config import RopeSpec
    from lql.model.ple import PerLayerEmbeddings

    #: ``(weights, layer, rope) -> Block``: how :meth:`Model.rebuild_block` builds a layer
    BlockFactory = Callable[[Mapping[str, np.ndarray], int, Rope | None], Block]

F32 = np.float32
_NO_RECORD = Record()


def _count_layers(keys: Iterable[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


class Model:
    def __init__(self, spec: ArchSpec, *, embed: np.ndarray, position_table: np.ndarray | None,
                 blocks: list[Block] | LayerStore, final_norm: Norm, head: np.ndarray, model_config: dict[str, Any],
                 per_layer_embed: PerLayerEmbeddings | None = None,
                 kv_sources: list[int | None] | None = None,
                 block_factory: BlockFactory | None = None) -> None:
        self.spec = spec
        self.block_factory = block_factory    # (weights, layer, rope) -> Block, for rebuild_block
        self.per_layer_embed = per_layer_embed  # lql.model.ple.PerLayerEmbeddings (Gemma 4 PLE) or None
        self.kv_sources = kv_sources            # per layer: the layer whose KV cache it shares, or None
        self.model_config = model_config
        self.embed_matrix = embed            # [vocab, hidden], unscaled
        self.position_table = position_table  # GPT-2's learned positions, or None
        self.blocks = blocks
        self.final_norm = final_norm
        self.head = head                      # [vocab, hidden] (the embedding itself when tied)
        self.ropes: list[Rope | None] | None = None  # per layer (a rebuilt layer's RoPE), when known
        self.hooks: Hooks | None = None       # default hooks for every call (edits/overlays)
        self.num_layers = spec.num_layers
        self.vocab_size = head.shape[0]
        self.hidden_size = spec.hidden_size

    # ------------------------------------------------------------------ pieces
    def embed(self, ids: np.ndarray, positions: np.ndarray,
              hook: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Token embeddings (scaled) → ``hook(ids, positions, h)`` (see :class:`Hooks`) →
        plus learned positions (GPT-2)."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.embed_matrix.shape[0]):
            raise ExecutionError(f"token id out of range 0..{self.embed_matrix.shape[0] - 1}")
        h: np.ndarray = self.embed_matrix[ids]
        if self.spec.embed_scale != 1.0:
            h = h * F32(self.spec.embed_scale)
        if hook is not None:
            h = np.asarray(hook(ids, positions, h), dtype=F32)
        if self.position_table is not None:
            if positions[-1] >= self.position_table.shape[0]:
                raise ExecutionError(f"sequence longer than the model's {self.position_table.shape[0]} positions")
            h = h + self.position_table[positions]
        return h

    def logits_from_hidden(self, x: np.ndarray) -> np.ndarray:
        """Final norm + unembedding (+ final soft-capping) of residual vector(s) — the logit lens."""
        return self.unembed(self.final_norm(np.asarray(x, dtype=F32)))

    def unembed(self, x: np.ndarray) -> np.ndarray:
        """Unembedding of already-normed vector(s) ``[..., hidden]`` → ``[..., vocab]``."""
        logits: np.ndarray = np.matmul(x, self.head.T) if x.ndim > 1 else self.head @ x
        cap = self.spec.final_softcap
        if cap:
            logits = np.tanh(logits / F32(cap)) * F32(cap)
        return logits.astype(F32, copy=False)

    def rebuild_block(self, weights: Mapping[str, np.ndarray], layer: int) -> Block:
        """Layer ``layer``'s block built afresh from ``weights`` (an edited view's), with this
        model's spec and RoPE tables — how an overlay swaps in the layers it edits."""
        rope = self.ropes[layer] if self.ropes is not None else getattr(self.blocks[layer].attention, "rope", None)
        if self.block_factory is not None:
            return self.block_factory(weights, layer, rope)
        return layout_for(self.model_config).block(self.spec, Tensors(weights), layer, set(weights.keys()), rope)

    def new_cache(self) -> KVCache:
        return KVCache(self.num_layers, self.kv_sources)

    # ------------------------------------------------------------------ forward
    def forward(self, ids: ArrayLike, *, cache: KVCache | None = None, record: Record | None = None,
                hooks: Hooks | None = None) -> ForwardOutput:
        """Run ``ids`` (1-D) after whatever ``cache`` already holds; logits of the last position."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ExecutionError("forward needs at least one token")
        record = record or _NO_RECORD
        hooks = hooks if hooks is not None else self.hooks
        if cache is None and self.kv_sources is not None:
            cache = self.new_cache()  # KV-sharing layers read their source's keys from a cache
        start = cache.length if cache is not None else 0
        positions = np.arange(start, start + ids.size)

        def pick(x: np.ndarray, where: object) -> np.ndarray:
            return x[-1].copy() if where == "last" else x.copy()

        n = self.num_layers
        residuals: list[Any] | None = [None] * n if record.residuals else None
        attn_d: list[Any] | None = [None] * n if record.deltas else None
        ffn_d: list[Any] | None = [None] * n if record.deltas else None
        acts: list[Any] | None = [None] * n if record.ffn_activations else None
        attn_p: list[Any] | None = [None] * n if record.attention else None
        ple_d: list[Any] | None = [None] * n if record.deltas and self.per_layer_embed is not None else None
        routes: list[Any] | None = [None] * n if record.experts else None
        ffn_in: list[Any] | None = [None] * n if record.ffn_inputs else None

        h0 = self.embed(ids, positions, hooks.embed if hooks is not None else None)
        _check_finite(h0, -1, self, "the embedding")
        embedding = pick(h0, record.residuals) if record.residuals else None
        per_layer = self.per_layer_embed(ids, h0) if self.per_layer_embed is not None else None
        h = h0
        for i, h, trace in self._run_blocks(h0, positions, cache, hooks, per_layer, 0, n):
            if not record.wants(i):
                continue
            if residuals is not None:
                residuals[i] = pick(h, record.residuals)
            if attn_d is not None and ffn_d is not None:
                attn_d[i] = pick(trace.attn_delta, record.deltas)
                ffn_d[i] = pick(trace.ffn_delta, record.deltas)
            if ple_d is not None and trace.ple_delta is not None:
                ple_d[i] = pick(trace.ple_delta, record.deltas)
            if routes is not None and trace.routing is not None:
                weights, idx = trace.routing
                routes[i] = (idx[-1].copy(), weights[-1].copy())
            if acts is not None:
                acts[i] = trace.ffn_hidden[-1].copy()
            if ffn_in is not None and trace.ffn_input is not None:
                ffn_in[i] = np.array(trace.ffn_input[-1], dtype=np.float32, copy=True)
            if attn_p is not None:
                attn_p[i] = trace.probs[:, -1].copy() if record.attention == "last" else trace.probs.copy()
        if cache is not None:
            cache.length = start + ids.size
        last = h[-1]
        logits = self.logits_from_hidden(last)
        _check_finite(logits, n, self, "the logits")
        return ForwardOutput(logits=logits, hidden=last.copy(), positions=positions,
                             embedding=embedding, residuals=residuals, attn_deltas=attn_d, ffn_deltas=ffn_d,
                             ffn_activations=acts, attention=attn_p, ple_deltas=ple_d, experts=routes,
                             ffn_inputs=ffn_in)

    def forward_many(self, seqs: Sequence[Sequence[int]], *, layers: Iterable[int] = (),
                     logits: bool = True, every_position: bool = False) -> Packed:
        """Several sequences, each run alone from position 0 (no cache, no call hooks): the
        logits after each one's last token (``logits``) and, at ``layers``, its FFN input and
        residual at that token.  The sequences are packed into one pass — one read of the
        weights for all, each row attending only to its own sequence — which for short
        prompts costs little more than one of them (10 prompts of 6 tokens on SmolLM2:
        ~5× faster than one pass each); with no logits wanted it stops after the last of
        ``layers``.  ``every_position``: also the FFN input at every position of each
        sequence (``Packed.ffn_inputs_all[layer][j]``: ``[len, hidden]``).  Equal to
        :meth:`forward` of each sequence within float32 rounding (the products have
        other shapes).  A model with KV sharing (Gemma 4) or default hooks
        runs one pass per sequence."""
        arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
        if any(a.size == 0 for a in arrays):
            raise ExecutionError("forward_many needs at least one token per sequence")
        want = sorted(set(int(l) for l in layers))
        if want and not 0 <= want[0] <= want[-1] < self.num_layers:
            raise ExecutionError(f"layers {want} are not within 0..{self.num_layers - 1}")
        out = Packed(None, {l: np.zeros((len(arrays), self.hidden_size), F32) for l in want},
                     {l: np.zeros((len(arrays), self.hidden_size), F32) for l in want},
                     {l: [] for l in want} if every_position else None)
        if not arrays:
            out.logits = np.zeros((0, self.vocab_size), dtype=F32) if logits else None
            return out
        if len(arrays) > 1 and sum(a.size for a in arrays) > PACK_TOKENS:
            return self._forward_groups(arrays, want, logits, every_position)
        if self.kv_sources is not None or self.hooks is not None:
            rec = Record(residuals="last", ffn_inputs=True, layers=frozenset(want)) if want else None
            runs = []
            for a in arrays:
                hooks, grabbed = self._grabbing_ffn_inputs(want) if every_position else (None, {})
                runs.append(self.forward(a, record=rec, hooks=hooks))
                if out.ffn_inputs_all is not None:
                    for l in want:
                        out.ffn_inputs_all[l].append(grabbed[l])
            out.logits = np.stack([r.logits for r in runs]) if logits else None
            for l in want:
                for j, r in enumerate(runs):
                    assert r.residuals is not None and r.ffn_inputs is not None
                    out.residuals[l][j] = r.residuals[l]
                    out.ffn_inputs[l][j] = r.ffn_inputs[l]
            return out
        lengths = [a.size for a in arrays]
        ends = np.cumsum(lengths) - 1
        ids = np.concatenate(arrays)
        positions = np.concatenate([np.arange(n) for n in lengths])
        segments = np.repeat(np.arange(len(arrays)), lengths)
        h = self.embed(ids, positions)
        _check_finite(h, -1, self, "the embedding")
        per_layer = self.per_layer_embed(ids, h) if self.per_layer_embed is not None else None
        last = self.num_layers if logits or not want else want[-1] + 1
        for i, after, trace in self._run_blocks(h, positions, None, None, per_layer, 0, last, segments):
            h = after
            if i in out.residuals:
                out.residuals[i][:] = after[ends]
                out.ffn_inputs[i][:] = trace.ffn_input[ends]
                if out.ffn_inputs_all is not None:
                    out.ffn_inputs_all[i] = np.split(np.array(trace.ffn_input), ends[:-1] + 1)
        if logits:
            out.logits = self.logits_from_hidden(h[ends])
            _check_finite(out.logits, self.num_layers, self, "the logits")
        return out

    def _forward_groups(self, arrays: Sequence[Any], want: list[int], logits: bool,
                        every_position: bool) -> Packed:
        """:meth:`forward_many` in packs of at most :data:`PACK_TOKENS` tokens (a sequence
        longer than that alone), merged: one pack's attention is quadratic in its length,
        and 108 chat-wrapped prompts in one pack (3,800 tokens) spent 70 % of a SmolLM2
        INSERT in the attention scores."""
        groups: list[list[Any]] = [[]]
        size = 0
        for a in arrays:
            if groups[-1] and size + a.size > PACK_TOKENS:
                groups.append([])
                size = 0
            groups[-1].append(a)
            size += a.size
        parts = [self.forward_many(g, layers=want, logits=logits, every_position=every_position)
                 for g in groups]
        return Packed(np.concatenate([p.logits for p in parts if p.logits is not None])
                      if logits else None,
                      {l: np.concatenate([p.ffn_inputs[l] for p in parts]) for l in want},
                      {l: np.concatenate([p.residuals[l] for p in parts]) for l in want},
                      {l: [x for p in parts for x in (p.ffn_inputs_all or {})[l]] for l in want}
                      if every_position else None)

    def _grabbing_ffn_inputs(self, layers: Sequence[int]) -> tuple[Hooks, dict[int, np.ndarray]]:
        """This model's default hooks, plus a copy of the FFN input at ``layers``."""
        grabbed: dict[int, np.ndarray] = {}
        base = self.hooks
        inner = base.ffn if base is not None else None

        def ffn(l: int, x: np.ndarray, o: np.ndarray) -> np.ndarray:
            if l in layers:
                grabbed[l] = np.array(x, dtype=F32)
            return inner(l, x, o) if inner is not None else o
        hooks = replace(base, ffn=ffn) if base is not None else Hooks(ffn=ffn)
        return hooks, grabbed

    # ------------------------------------------------------------------ layer shards
    def forward_layers(self, ids: ArrayLike, h: np.ndarray | None, first: int, last: int, *,
                       hooks: Hooks | None = None) -> np.ndarray:
        """The residual ``[seq, hidden]`` after layers ``first .. last-1`` of the whole
        sequence ``ids``, given ``h``, its residual before layer ``first`` (``None`` with
        ``first == 0``: the embedding is computed here).  One layer-range shard's step
        (docs/SCALING.md): shards chained over ``0..n`` give the residual :meth:`forward`
        computes, and :meth:`logits_from_hidden` of its last row gives its logits.  No KV
        cache: every call runs the whole sequence.  A layer that reads another layer's KV
        cache (Gemma 4 KV sharing) must lie in the same range as that layer."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = self.num_layers
        if ids.size == 0:
            raise ExecutionError("forward_layers needs at least one token")
        if not 0 <= first < last <= n:
            raise ExecutionError(f"layer range {first}..{last - 1} is not within 0..{n - 1}")
        hooks = hooks if hooks is not None else self.hooks
        if self.kv_sources is not None:
            outside = [(i, src) for i in range(first, last)
                       if (src := self.kv_sources[i]) is not None and not first <= src < last]
            if outside:
                i, src = outside[0]
                raise ExecutionError(f"layer {i} reads layer {src}'s KV cache, "
                                     f"which lies outside the range {first}..{last - 1}; "
                                     f"choose shard boundaries that keep them together")
        positions = np.arange(ids.size)
        embedded = None
        if h is None or self.per_layer_embed is not None:
            embedded = self.embed(ids, positions, hooks.embed if hooks is not None else None)
        if h is None:
            if first != 0:
                raise ExecutionError(f"a shard starting at layer {first} needs the residual "
                                     f"before that layer")
            h = embedded
        h = np.asarray(h, dtype=F32)
        if h.shape != (ids.size, self.hidden_size):
            raise ExecutionError(f"residual shape {h.shape} does not match "
                                 f"({ids.size}, {self.hidden_size}) for {ids.size} tokens")
        per_layer = (self.per_layer_embed(ids, embedded)
                     if self.per_layer_embed is not None and embedded is not None else None)
        cache = self.new_cache() if self.kv_sources is not None else None
        out = h
        for _i, after, _trace in self._run_blocks(h, positions, cache, hooks, per_layer, first, last):
            out = after
        return out

    def _run_blocks(self, h: np.ndarray, positions: np.ndarray, cache: KVCache | None,
                    hooks: Hooks | None, per_layer: np.ndarray | None, first: int,
                    last: int, segments: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray, Any]]:
        """Layers ``first .. last-1`` over ``h``: yields ``(layer, residual after it, its
        trace)``, each residual checked finite; the next layer is read ahead while one runs.
        The one layer loop of :meth:`forward`, :meth:`forward_layers` and
        :meth:`forward_many` (``segments``: its packed sequences' ids, one per row)."""
        tables_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def tables(rope: Rope) -> tuple[np.ndarray, np.ndarray]:
            key = id(rope)
            if key not in tables_cache:
                tables_cache[key] = rope.tables(positions)
            return tables_cache[key]

        for_rows = getattr(self.blocks, "for_rows", None)
        rows = int(h.shape[0])
        for i in range(first, last):
            # a LayerStore reads the next layer ahead while this one runs, or runs a layer it
            # does not hold over its stored words when the call is one row (decode)
            block = for_rows(i, rows, i + 1 < last) if for_rows is not None else self.blocks[i]
            layer_cache = cache.layers[i] if cache is not None else None
            if per_layer is None and segments is None:
                h, trace = block(h, positions, tables, layer_cache, hooks)
            else:
                h, trace = block(h, positions, tables, layer_cache, hooks,
                                 per_layer_input=None if per_layer is None else per_layer[:, i],
                                 segments=segments)
            _check_finite(h, i, block, f"the residual after layer {i}")
            yield i, h, trace


#: most tokens :meth:`Model.forward_many` packs into one pass (attention is quadratic in it)
PACK_TOKENS = 512


@dataclass
class Packed:
    """What :meth:`Model.forward_many` computed, one row per sequence (its last token)."""
    logits: np.ndarray | None                # [n, vocab], or None when not asked for
    ffn_inputs: dict[int, np.ndarray]        # layer -> [n, hidden]: the FFN's normed input
    residuals: dict[int, np.ndarray]         # layer -> [n, hidden]: the residual after the layer
    #: layer -> one [len, hidden] array per sequence: the FFN input at every position
    ffn_inputs_all: dict[int, list[np.ndarray]] | None = None


def _non_finite_weight(obj: object, path: str = "", depth: int = 0,
                       seen: set[int] | None = None) -> str | None:
    """The attribute path of the first weight array under ``obj`` holding NaN/Inf (a block,
    the embedding or the head), or ``None``: where a forward pass's NaN came from."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 4:
        return None
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f" and obj.size and not np.isfinite(obj).all():
            return path or "weight"
        return None
    if isinstance(obj, (list, tuple)):
        items: Iterable[tuple[str, object]] = ((f"{path}[{k}]", v) for k, v in enumerate(obj))
    else:
        attrs = getattr(obj, "__dict__", None)
        if attrs is None and hasattr(obj, "__slots__"):
            attrs = {k: getattr(obj, k) for k in obj.__slots__ if hasattr(obj, k)}
        if not isinstance(attrs, dict):
            return None
        items = ((f"{path}.{k}" if path else k, v) for k, v in attrs.items() if not k.startswith("__"))
    for name, value in items:
        found = _non_finite_weight(value, name, depth + 1, seen)
        if found is not None:
            return found
    return None


def _check_finite(x: np.ndarray, layer: int, owner: object, what: str) -> None:
    """Raise :class:`NonFiniteError` when ``x`` (``what``: the embedding, the residual after
    ``layer``, the logits) holds NaN/Inf, naming the weight under ``owner`` that does, if any."""
    if np.isfinite(x).all():
        return
    tensor = _non_finite_weight(owner)
    cause = (f": weight {tensor} holds NaN/Inf (the vindex's weights are corrupt; "
             f"`lql verify` checks the files)" if tensor is not None
             else " (the weights it read are finite: an overflow in the computation, "
                  "e.g. an extreme setting or edit)")
    raise NonFiniteError(f"non-finite values (NaN/Inf) in {what}{cause}", layer, tensor)


def build_model(model_config: dict[str, Any], weights: Mapping[str, np.ndarray]) -> Model:
    """Check ``model_config`` and that ``weights`` has every tensor needed, then build the model.

    Raises :class:`MissingTensorError` naming every absent key, and
    :class:`UnsupportedArchitectureError` / :class:`LqlError` for configs we do not implement."""
    if not isinstance(model_config, Mapping):
        raise LqlError("model_config must be a dict")
    # the one seam to the families: a model_config written before a flag existed gets it
    # (and an unknown model_type is refused) there, never by a table here
    from lql.families import complete_model_config
    model_config = complete_model_config(dict(model_config))
    from lql.model.mixed import build_mixed_model, is_mixed
    if is_mixed(model_config):  # per-layer shapes, KV sharing, PLE, MoE (docs/FAMILIES.md, Gemma 4)
        return build_mixed_model(model_config, weights)
    layout = layout_for(model_config)
    present = set(weights.keys())
    if layout.embed not in present:
        raise MissingTensorError([layout.embed])
    tensors = Tensors(weights)
    embed = np.ascontiguousarray(tensors.get(layout.embed))
    if embed.ndim != 2:
        raise LqlError(f"tensor {layout.embed} has shape {embed.shape}, expected (vocab, hidden)")
    hidden = int(model_config.get("hidden_size") or embed.shape[1])
    if embed.shape[1] != hidden:
        raise LqlError(f"tensor {layout.embed} has width {embed.shape[1]}, model_config says hidden {hidden}")
    num_layers = int(model_config.get("num_layers") or model_config.get("num_hidden_layers")
                     or _count_layers(present, layout.layer_prefix(0)[:-2]))
    if num_layers <= 0:
        raise MissingTensorError([layout.layer_prefix(0) + "*"])
    spec = arch_spec(model_config, num_layers=num_layers, hidden_size=hidden)

    tied = spec.tie_word_embeddings
    if tied is None:
        tied = layout.head not in present
    missing = [k for k in layout.required(spec, tied) if k not in present]
    if missing:  # a weights mapping may say where it comes from and how to complete it
        raise MissingTensorError(missing, where=str(getattr(weights, "where", "") or ""))

    ropes: dict[RopeSpec, Rope] = {}
    factories: list[Callable[[], Block]] = []
    layer_ropes: list[Rope | None] = []
    for i in range(num_layers):
        rope = None
        rope_spec = spec.rope[i]
        if rope_spec is not None:
            rope = ropes.setdefault(rope_spec, Rope(rope_spec))
        layer_ropes.append(rope)
        factories.append(functools.partial(layout.block, spec, tensors, i, present, rope))
    stored = None
    if layout.streams and tensors.mapped:     # decode steps multiply uncached layers where stored
        stored = [functools.partial(layout.stored_block, spec, tensors, i, present, layer_ropes[i])
                  for i in range(num_layers)]
    blocks = LayerStore(factories, stored)
    blocks.warm()
    head = embed if tied else np.ascontiguousarray(tensors.get(layout.head, embed.shape))
    if embed.base is None or embed.flags.owndata:      # a cast copy: the mapped words are not needed
        tensors.release(layout.embed)
    if not tied and (head.base is None or head.flags.owndata):
        tensors.release(layout.head)
    model = Model(spec, embed=embed, position_table=layout.positions(tensors), blocks=blocks,
                  final_norm=layout.final(spec, tensors), head=head, model_config=model_config)
    model.ropes = layer_ropes
    return model
