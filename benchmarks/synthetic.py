"""Synthetic checkpoints for the scale benchmarks (bench_scale.py, bench_gemma4_e2b.py):
random bfloat16 weights written as Hugging Face sharded safetensors, a few MB of RAM at a
time, whatever the model size."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

ROWS_PER_CHUNK = 2048


def nbytes(shape) -> int:
    return 2 * math.prod(shape)


def bf16_chunks(shape, init: str, rng: np.random.Generator, rows_per_chunk: int = ROWS_PER_CHUNK):
    """A tensor's bf16 bytes (truncated float32), ``rows_per_chunk`` rows at a time:
    ``normal`` draws N(0, 1/fan_in); ``ones`` is 1.0; any other init is 0.7."""
    if init != "normal":
        value = 1.0 if init == "ones" else 0.7
        yield (np.full(shape, value, np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        return
    rows, cols = shape[0], math.prod(shape[1:])
    std = np.float32(1.0 / math.sqrt(cols))
    for lo in range(0, rows, rows_per_chunk):
        block = rng.standard_normal((min(rows_per_chunk, rows - lo), cols), dtype=np.float32)
        block *= std
        yield (block.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def write_bf16_shards(folder: Path, specs: list[tuple[str, tuple[int, ...], str]], *,
                      shard_bytes: int, seed: int = 0,
                      rows_per_chunk: int = ROWS_PER_CHUNK) -> dict:
    """``specs`` ((name, shape, init), in order) as ``model-0000k-of-0000n.safetensors``
    shards of at most ``shard_bytes`` plus ``model.safetensors.index.json``."""
    shards: list[list] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + nbytes(s[1]) > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += nbytes(s[1])
    rng = np.random.default_rng(seed)
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, shape, _ in shard:
            header[name] = {"dtype": "BF16", "shape": list(shape),
                            "data_offsets": [off, off + nbytes(shape)]}
            off += nbytes(shape)
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / fname, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)) + raw)
            for _, shape, init in shard:
                for chunk in bf16_chunks(shape, init, rng, rows_per_chunk):
                    fh.write(chunk)
    total = sum(nbytes(s[1]) for s in specs)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return {"tensors": len(specs), "bytes": total, "shards": len(shards)}
