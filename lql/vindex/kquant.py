"""LARQL's ``quant: q4k`` vindexes: Q4_K / Q6_K blocks → f32.

LARQL (Divinci-AI/larql at 4f6dfb4) writes, for ``quant: q4k``
(crates/larql-vindex/src/format/weights/write.rs:529-1030):

* ``attn_weights_q4k.bin`` + ``attn_weights_q4k_manifest.json`` — Q, K, O as Q4_K, V as
  Q6_K, four entries per layer;
* ``interleaved_q4k.bin`` + ``interleaved_q4k_manifest.json`` — each layer's FFN gate and
  up as Q4_K, down as Q6_K (Q4_K with its ``down_q4k`` option);
* ``lm_head_q4.bin`` — the output projection as Q4_K, named in ``weight_manifest.json``
  with kind ``tensor_q4k``.

Each manifest entry is ``{key, shape, format: "Q4_K" | "Q6_K", offset, length}``; a
tensor is stored row-major, zero-padded to a multiple of 256 values (one super-block).

**Q4_K** is llama.cpp's ``block_q4_K`` (144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit
scales and mins packed as ``get_scale_min_k4``, 128 bytes of nibbles two sub-blocks per 32
bytes): LARQL's quantiser (larql-compute/src/cpu/ops/q4_common.rs:131-220) and
dequantiser (larql-models/src/quant/ggml.rs:476-530) both say so, so the ``gguf``
package's llama.cpp-exact dequantiser reads it.

**Q6_K** is *not* llama.cpp's bit arrangement, though the 210-byte block has the same
fields: LARQL packs the 6-bit values in order — byte ``i`` of the first 128 holds the low
nibbles of values ``2i`` (low) and ``2i+1`` (high); byte ``j`` of the next 64 holds the
top two bits of values ``4j..4j+3`` (two bits each, from bit 0); then 16 int8 scales
(one per 16 values) and the f16 super-block scale; value = ``d · scale · (q − 32)``
(q4_common.rs:222-298, ggml.rs:694-720).  It is decoded here with numpy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VindexError

QK = 256                                   # values per super-block
BLOCK_BYTES = {"Q4_K": 144, "Q6_K": 210}
#: manifest ``_dtype`` spelling of each block format (``lql.vindex.weights.entry_dtype``)
STORAGE = {"Q4_K": "q4_k", "Q6_K": "q6_k"}
FORMATS = {v: k for k, v in STORAGE.items()}
#: the two layout files: manifest → data file
LAYOUTS = {"attn_weights_q4k_manifest.json": "attn_weights_q4k.bin",
           "interleaved_q4k_manifest.json": "interleaved_q4k.bin"}
GATE_SOURCE = "interleaved_q4k.bin"


def padded_bytes(shape: Any, fmt: str) -> int:
    """Bytes a tensor of ``shape`` takes in ``fmt`` (padded to whole super-blocks)."""
    n = math.prod(int(x) for x in shape)
    return -(-n // QK) * BLOCK_BYTES[fmt]


def _q6_k(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, BLOCK_BYTES["Q6_K"])
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].view(np.int8).astype(np.float32)
    d = b[:, 208:210].copy().view("<f2").astype(np.float32)             # (blocks, 1)
    q = np.empty((b.shape[0], QK), dtype=np.uint8)
    q[:, 0::2] = ql & 0x0F
    q[:, 1::2] = ql >> 4
    hi = (qh[:, :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 0x03
    q |= hi.reshape(b.shape[0], QK) << 4
    vals = q.astype(np.float32) - 32.0
    vals *= np.repeat(scales, 16, axis=1)
    vals *= d
    return vals.reshape(-1)


def _q4_k(raw: np.ndarray) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    return np.asarray(dequantize(raw, GGMLQuantizationType.Q4_K), dtype=np.float32).reshape(-1)


def dequantize(raw: np.ndarray, fmt: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The f32 tensor of ``shape`` stored as ``fmt`` blocks in the bytes ``raw``."""
    fmt = FORMATS.get(fmt, fmt)
    if fmt not in BLOCK_BYTES:
        raise VindexError(f"{where}: block format {fmt!r} is not Q4_K or Q6_K", path=where)
    raw = np.ascontiguousarray(np.asarray(raw, dtype=np.uint8).reshape(-1))
    need = padded_bytes(shape, fmt)
    if raw.size != need:
        raise VindexError(f"{where}: {raw.size} bytes of {fmt}, shape {list(shape)} needs {need}",
                          path=where)
    vals = _q4_k(raw) if fmt == "Q4_K" else _q6_k(raw)
    n = math.prod(shape)
    out = vals[:n].reshape(shape)
    if not np.isfinite(out).all():
        raise VindexError(f"{where}: {fmt} blocks decode to non-finite values", path=where)
    return out


def layout_entries(folder: Path, file_sizes: dict[str, int | None]) -> list[dict[str, Any]]:
    """The entries of LARQL's two Q4_K layout manifests that exist in ``folder``, as
    weight-manifest entries (``file``, ``kind`` "q4k_layout", ``_dtype`` q4_k/q6_k),
    each checked: fields, format, length = the padded block bytes, within its file."""
    import json
    out: list[dict[str, Any]] = []
    for manifest, data in LAYOUTS.items():
        path = folder / manifest
        if not path.is_file():
            continue
        where = str(path)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VindexError(f"{where}: not valid JSON ({exc})", path=where) from None
        if not isinstance(entries, list):
            raise VindexError(f"{where}: expected a JSON array of tensor entries", path=where)
        size = file_sizes.get(data)
        if size is None:
            raise VindexError(f"{folder / data}: file is missing (named by {where})",
                              path=str(folder / data))
        for i, e in enumerate(entries):
            if not (isinstance(e, dict) and isinstance(e.get("key"), str)
                    and isinstance(e.get("shape"), list) and e["shape"]
                    and all(isinstance(x, int) and x >= 0 for x in e["shape"])
                    and e.get("format") in BLOCK_BYTES
                    and all(isinstance(e.get(k), int) and e[k] >= 0 for k in ("offset", "length"))):
                raise VindexError(f"{where}: entry {i} needs key, shape, format (Q4_K or Q6_K), "
                                  f"offset and length", path=where)
            need = padded_bytes(e["shape"], e["format"])
            if e["length"] != need:
                raise VindexError(f"{where}: {e['key']} has length {e['length']}, shape "
                                  f"{e['shape']} in {e['format']} needs {need} bytes", path=where)
            if e["offset"] + e["length"] > size:
                raise VindexError(f"{folder / data}: truncated ({size} bytes; {e['key']} needs "
                                  f"bytes {e['offset']}..{e['offset'] + e['length']})",
                                  path=str(folder / data))
            out.append({"key": e["key"], "shape": list(e["shape"]), "offset": e["offset"],
                        "length": e["length"], "file": data, "kind": "q4k_layout",
                        "_dtype": STORAGE[e["format"]]})
    return out
