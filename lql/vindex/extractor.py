"""EXTRACT: a source model (Hugging Face folder or GGUF file) → a vindex directory.

Streaming: the f32 embedding matrix stays in memory (down-meta needs it);
everything else is read, written and dropped one layer at a time, so peak
memory ≈ embeddings + one layer's tensors + one block of logits
(``block × vocab`` floats).  Output goes to a temporary sibling directory
that is renamed into place at the end (:class:`~lql.vindex.atomic.AtomicDir`).

What each level writes, per the family description (``lql.families``):
``browse`` — tokenizer files, gate_vectors.bin, embeddings.bin, down_meta.bin;
``inference`` — + every tensor the forward pass needs in attn_weights.bin,
norms.bin, up_weights.bin, down_weights.bin (and lm_head.bin when the
unembedding is not tied) with weight_manifest.json; ``all`` — + whatever else
the family lists for rebuilding a complete checkpoint.

A ``layers`` subset writes only those layers: ``index.json`` ``layers`` lists
just them, ``num_layers`` stays the model's, and down_meta.bin has
``num_features = 0`` for every other layer (the format's "layer absent").
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ExecutionError, MissingTensorError, UnclaimedTensorError
from . import format as fmt
from .atomic import AtomicDir, BinWriter, check_target
from .down_meta import DownMetaWriter, layer_records
from .progress import progress_display

if TYPE_CHECKING:
    from ..families.base import Family, TensorSpec
    from ..sources.base import ModelSource

FORCE_HINT = "FORCE (lql extract --force)"
#: a global tensor whose float32 copy is larger than this is read and written in row blocks
STREAM_BYTES = 256 << 20


def _family_of(source: ModelSource) -> Family:
    fam = getattr(source, "family_spec", None) or source.family
    if isinstance(fam, str):
        from ..families import get_family
        fam = get_family(fam)
    return fam


def _columns(cols: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """The column-block reader ``layer_records`` takes: ``(lo, hi) -> cols[:, lo:hi]``."""
    def block(lo: int, hi: int) -> np.ndarray:
        return cols[:, lo:hi]
    return block


def _normalise_layers(layers: Iterable[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    out = sorted({int(x) for x in layers})
    bad = [x for x in out if not 0 <= x < num_layers]
    if bad:
        raise ExecutionError(f"layer {bad[0]} out of range 0..{num_layers - 1} "
                             f"(the model has {num_layers} layers)")
    if not out:
        raise ExecutionError("LAYERS selects no layer")
    return out


def _text_bytes(obj: Any) -> bytes:
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if isinstance(obj, str):
        return obj.encode("utf-8")
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")


def read_chat_template_file(path: str | os.PathLike[str], tokenizer_config: dict[str, Any] | None) -> str:
    """The text of a chat-template file given to :func:`extract`, checked: readable UTF-8,
    and it renders one user turn with the model's special tokens (a template that cannot
    is refused here, not at the first chat prompt)."""
    from ..model.chat import ChatTemplateError, render_chat, special_tokens, user_prompt
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExecutionError(f"chat template file {str(file)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExecutionError(f"chat template file {str(file)!r} cannot be read: {exc}") from None
    if not text.strip():
        raise ExecutionError(f"chat template file {str(file)!r} is empty")
    try:
        out = render_chat(text, user_prompt("Hello"), special_tokens(tokenizer_config or {}),
                          add_generation_prompt=True)
    except ChatTemplateError as exc:
        raise ExecutionError(f"chat template file {str(file)!r} does not render a user turn: "
                             f"{exc}") from None
    if "Hello" not in out:
        raise ExecutionError(f"chat template file {str(file)!r} does not render the user's "
                             f"message (got {out[:80]!r})")
    return text


def extract(source: str | Path | ModelSource, output: str | os.PathLike[str], *, level: str = "browse", dtype: str = "f16",
            layers: Iterable[int] | None = None, force: bool = False,
            top_k: int = fmt.DEFAULT_TOP_K, progress: bool | str | None = None,
            block: int | None = None,
            check_cancelled: Callable[[], object] | None = None,
            chat_template: str | os.PathLike[str] | None = None) -> Path:
    """Extract ``source`` (a path or an opened ``ModelSource``) into the vindex ``output``.

    Returns the vindex path.  Refuses an existing ``output`` unless ``force``
    (then replaces it atomically).  ``progress=None`` shows bars only on a terminal.
    ``check_cancelled()`` is called before each layer; whatever it raises aborts
    the extract (and removes the temporary directory).  ``chat_template``: a Jinja
    chat-template file written as the vindex's ``chat_template.jinja`` in place of the
    source's (for a GGUF built without one, as llama.cpp's ``--chat-template-file``);
    it must render a user turn with the source's special tokens.
    """
    level = str(getattr(level, "value", level)).lower()
    dtype = str(getattr(dtype, "value", dtype)).lower()
    if level not in fmt.EXTRACT_LEVELS:
        raise ExecutionError(f"unknown extract level {level!r} (BROWSE, INFERENCE or ALL)")
    np_dtype = fmt.np_dtype(dtype, "DTYPE")
    output = Path(output).expanduser().absolute()
    check_target(output, force, hint=FORCE_HINT)   # fail before the expensive part
    if isinstance(source, (str, Path)):
        from ..sources import open_source
        source = open_source(source)
    if not source.tokenizer_json:
        raise ExecutionError(f"source {source.name} has no tokenizer.json (a vindex needs "
                             f"the model's tokenizer: put tokenizer.json next to its weights)")
    family = _family_of(source)
    template = source.chat_template if chat_template is None else \
        read_chat_template_file(chat_template, source.tokenizer_config)
    mc = dict(source.model_config)
    num_layers = int(mc["num_layers"])
    hidden = int(mc["hidden_size"])
    chosen = _normalise_layers(layers, num_layers)
    chosen_set = set(chosen)

    specs = [s for s in family.tensors(mc, level) if s.layer is None or s.layer in chosen_set]
    gate_keys = {layer: family.gate_key(layer) for layer in chosen}
    down_keys = {layer: family.down_key(layer) for layer in chosen}
    needed = {s.key for s in specs} | set(gate_keys.values()) | set(down_keys.values()) \
        | {family.embed_key}
    have = set(source.keys())
    missing = sorted(needed - have)
    if missing:
        raise MissingTensorError(missing, where=f"source {source.name}")
    # every source tensor is claimed by the family or ignored by an explicit rule of it;
    # anything else would be dropped silently (e.g. a model labelled with the wrong family)
    unclaimed = family.unclaimed(mc, have)
    if unclaimed:
        raise UnclaimedTensorError(unclaimed, family.name, str(source.name))

    by_layer: dict[int | None, list[TensorSpec]] = {}
    for s in specs:
        by_layer.setdefault(s.layer, []).append(s)
    primary = {family.embed_key, *gate_keys.values()}

    with progress_display(progress) as bars, AtomicDir(output, force, hint=FORCE_HINT) as out:
        tmp = out.folder
        checksums: dict[str, str] = {}
        weight_files: dict[str, BinWriter] = {}
        manifest: list[dict[str, Any]] = []

        def store(key: str, array: np.ndarray, file: str) -> None:
            w = weight_files.get(file)
            if w is None:
                w = weight_files[file] = BinWriter(tmp / file, np_dtype)
            off, length = w.write(array, key)
            manifest.append({"key": key, "kind": "tensor" if array.ndim >= 2 else "vector",
                             "shape": list(array.shape), "offset": off, "length": length,
                             "file": file})

        def store_rows(key: str, shape: tuple[int, int], file: str) -> None:
            """``store`` for a large 2-D tensor, streamed in blocks of rows (its float32
            copy is never held whole)."""
            w = weight_files.get(file)
            if w is None:
                w = weight_files[file] = BinWriter(tmp / file, np_dtype)
            step = max(1, STREAM_BYTES // (4 * max(1, shape[1])))
            start, total = w.offset, 0
            for lo in range(0, shape[0], step):
                _, length = w.write(source.tensor_rows(key, lo, lo + step), key)
                total += length
            manifest.append({"key": key, "kind": "tensor", "shape": list(shape),
                             "offset": start, "length": total, "file": file})

        def write_text(name: str, data: Any) -> None:
            raw = _text_bytes(data)
            (tmp / name).write_bytes(raw)
            import hashlib
            checksums[name] = hashlib.sha256(raw).hexdigest()

        # ---- tokenizer files
        write_text(fmt.TOKENIZER, source.tokenizer_json)
        if source.tokenizer_config:
            write_text(fmt.TOKENIZER_CONFIG, source.tokenizer_config)
        if template:
            write_text(fmt.CHAT_TEMPLATE, template)

        # ---- embeddings (kept in f32 for down-meta)
        with bars.stage("embeddings", 1) as st:
            emb = np.ascontiguousarray(source.tensor(family.embed_key), dtype=np.float32)
            vocab = emb.shape[0]
            if emb.shape[1] != hidden:
                raise ExecutionError(f"{family.embed_key} has shape {emb.shape}, expected "
                                     f"(vocab, {hidden})")
            ew = BinWriter(tmp / fmt.EMBEDDINGS, np_dtype)
            ew.write(emb, family.embed_key)
            checksums[fmt.EMBEDDINGS] = ew.close()
            st.advance()

        # ---- global tensors other than the embedding (norm, lm_head, positions ...)
        if level != "browse":
            for s in by_layer.get(None, ()):
                if s.key in primary:
                    continue
                shape = tuple(int(d) for d in source.shape(s.key))
                if len(shape) == 2 and shape[0] * shape[1] * 4 > STREAM_BYTES:
                    store_rows(s.key, shape, s.file)   # e.g. Gemma 4's per-layer embedding table
                else:
                    store(s.key, np.asarray(source.tensor(s.key), dtype=np.float32), s.file)

        # ---- layers
        gw = BinWriter(tmp / fmt.GATE, np_dtype)
        dm_fh = open(tmp / fmt.DOWN_META, "wb")
        dm = DownMetaWriter(dm_fh, num_layers, top_k)
        layer_entries = []
        gate_transposed = False
        try:
            with bars.stage(f"layers ({len(chosen)})", len(chosen)) as st:
                for layer in chosen:
                    if check_cancelled is not None:
                        check_cancelled()
                    g_src = np.asarray(source.tensor(gate_keys[layer]), dtype=np.float32)
                    rows = family.gate_rows(g_src)
                    gate_transposed = rows.shape != g_src.shape or (
                        np.shares_memory(rows, g_src) and rows.strides != g_src.strides)
                    n_feat, h = rows.shape
                    if n_feat != family.num_features(mc, layer):
                        raise ExecutionError(f"{gate_keys[layer]} has {n_feat} features; the "
                                             f"model_config says {family.num_features(mc, layer)} "
                                             f"for layer {layer}")
                    if h != hidden:
                        raise ExecutionError(f"{gate_keys[layer]} gives gate rows of shape "
                                             f"{rows.shape}, expected (features, {hidden})")
                    off, length = gw.write(rows, gate_keys[layer])
                    layer_entries.append({"layer": layer, "num_features": int(n_feat),
                                          "offset": off, "length": length})
                    del rows, g_src
                    down = np.asarray(source.tensor(down_keys[layer]), dtype=np.float32)
                    cols = family.down_columns(down)
                    if cols.shape != (hidden, n_feat):
                        raise ExecutionError(f"{down_keys[layer]} gives down columns of shape "
                                             f"{cols.shape}, expected ({hidden}, {n_feat})")
                    dm.write_layer(layer, layer_records(
                        emb, _columns(cols), n_feat, top_k, block))
                    if level != "browse":
                        for s in by_layer.get(layer, ()):
                            if s.key in primary:
                                continue
                            arr = down if s.key == down_keys[layer] else \
                                np.asarray(source.tensor(s.key), dtype=np.float32)
                            store(s.key, arr, s.file)
                    del down, cols
                    st.advance()
            dm.finish()
            checksums[fmt.GATE] = gw.close()
        finally:
            gw.abort()
            dm_fh.close()
            for w in weight_files.values():
                w.abort()
        from .checksums import sha256_file
        checksums[fmt.DOWN_META] = sha256_file(tmp / fmt.DOWN_META)
        for name, w in weight_files.items():
            checksums[name] = w.close()
        del emb

        # ---- manifest + index.json
        if level != "browse":
            write_text(fmt.MANIFEST, manifest)
        index = _index_json(source, family, mc, level, dtype, vocab, top_k, layer_entries,
                            checksums, gate_transposed)
        from .checksums import seal_index
        fmt.write_json_atomic(tmp / fmt.INDEX, seal_index(index))
    return output


def _index_json(source: ModelSource, family: Family, mc: dict[str, Any], level: str, dtype: str,
                vocab: int, top_k: int, layer_entries: list[dict[str, Any]],
                checksums: dict[str, str], gate_transposed: bool) -> dict[str, Any]:
    from .. import __version__
    num_layers = int(mc["num_layers"])
    src_path = getattr(source, "path", None)
    provenance = {
        "huggingface_repo": None,
        "huggingface_revision": None,
        "safetensors_sha256": None,
        "extracted_at": _now(),
        "larql_version": f"lql {__version__}",
        "path": str(src_path) if src_path is not None else None,
        "format": getattr(source, "format", None),
    }
    extra = getattr(source, "provenance", None)
    if callable(extra):
        extra = extra()
    if isinstance(extra, dict):
        provenance.update({k: v for k, v in extra.items() if k not in ("extracted_at",
                                                                       "larql_version")})
    from .larql import for_larql
    model_config = for_larql(dict(mc))      # what LARQL's VindexModelConfig accepts
    inter = mc.get("intermediate_size") or max((e["num_features"] for e in layer_entries),
                                               default=0)
    return {
        "version": fmt.FORMAT_VERSION,
        "model": source.name,
        "family": family.name,
        "dtype": dtype,
        "source": provenance,
        "checksums": dict(sorted(checksums.items())),
        "num_layers": num_layers,
        "hidden_size": int(mc["hidden_size"]),
        "intermediate_size": int(inter),
        "vocab_size": int(vocab),
        "embed_scale": float(family.embed_scale(mc)),
        "extract_level": level,
        "has_model_weights": level != "browse",
        "down_top_k": int(top_k),
        "layer_bands": family.layer_bands(num_layers),
        "layers": layer_entries,
        "model_config": model_config,
        "weight_keys": {"embed": family.embed_key,
                        "gate": family.gate_key(987654).replace("987654", "{layer}"),
                        "gate_transposed": bool(gate_transposed)},
    }
