"""Streaming reads from one or more ``.safetensors`` files.

Headers are read once (they are small JSON); each ``read(key)`` loads one tensor.
float32/float16/float64 go through ``safetensors``' numpy API; bfloat16 (which
numpy cannot represent) is read as raw 16-bit words from a read-only memmap and
widened to float32 by shifting into the high half of a 32-bit word — exact.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors import safe_open

from .base import SourceError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def bf16_to_f32(words: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32 values (exact)."""
    return (words.astype(np.uint32) << 16).view(np.float32)


class TensorInfo:
    __slots__ = ("file", "dtype", "shape", "start", "end")

    def __init__(self, file: Path, dtype: str, shape, start: int, end: int):
        self.file, self.dtype, self.shape, self.start, self.end = file, dtype, tuple(shape), start, end


def read_header(path: Path) -> tuple[dict, int]:
    """``(header dict, byte offset of the data section)``; checks sizes against the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SourceError(f"{path} is not a safetensors file (too short)", path)
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise SourceError(f"{path} is not a safetensors file (bad header length)", path)
            header = json.loads(f.read(n))
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}", path) from None
    except (ValueError, UnicodeDecodeError):
        raise SourceError(f"{path} is not a safetensors file (corrupt header)", path) from None
    data_start = 8 + n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        want = int(np.prod(info["shape"], dtype=np.int64)) * _ITEMSIZE.get(info["dtype"], 0)
        if end - begin != want and info["dtype"] in _ITEMSIZE:
            raise SourceError(f"{path}: tensor {key} has {end - begin} bytes, its shape "
                              f"{info['shape']} needs {want}", path)
        if data_start + end > size:
            raise SourceError(f"{path} is truncated: tensor {key} ends at byte {data_start + end}"
                              f" but the file has {size}", path)
    return header, data_start


def safetensors_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a Hugging Face folder and, when sharded, the index's weight map.

    A missing shard named by the index is an error naming it."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise SourceError(f"{index} is not a valid safetensors index (no weight_map)",
                              index) from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise SourceError(f"missing shard{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(missing)} (listed in {index})", folder / missing[0])
        return [folder / f for f in files], weight_map
    if (folder / SINGLE_NAME).is_file():
        return [folder / SINGLE_NAME], None
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise SourceError(f"no model.safetensors (or {INDEX_NAME}) in {folder}", folder)
    return found, None


class SafetensorsReader:
    """Tensor headers of every file; ``read(name)`` loads one tensor as float32."""

    def __init__(self, files: list[Path], weight_map: dict[str, str] | None = None):
        self.tensors: dict[str, TensorInfo] = {}
        self.offsets: dict[Path, int] = {}
        for path in files:
            header, data_start = read_header(path)
            self.offsets[path] = data_start
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if name in self.tensors:
                    raise SourceError(f"tensor {name} appears in both {self.tensors[name].file.name}"
                                      f" and {path.name}", path)
                self.tensors[name] = TensorInfo(path, info["dtype"], info["shape"],
                                                *info["data_offsets"])
        if weight_map:
            for name, fname in weight_map.items():
                info = self.tensors.get(name)
                if info is None or info.file.name != Path(fname).name:
                    raise SourceError(f"tensor {name} is listed in {INDEX_NAME} under {fname} "
                                      f"but that file does not hold it", files[0].parent / fname)

    def names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def dtype(self, name: str) -> str:
        return self.tensors[name].dtype

    def read_rows(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of a 2-D (or more) tensor as float32, read from a memory map of
        just those rows (a large table is streamed without reading it whole)."""
        info = self.tensors[name]
        raw = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}.get(info.dtype)
        if raw is None or len(info.shape) < 2:
            return self.read(name)[lo:hi]
        rows, row_len = int(info.shape[0]), int(np.prod(info.shape[1:]))
        lo, hi = max(0, lo), min(rows, hi)
        itemsize = np.dtype(raw).itemsize
        if hi <= lo or row_len == 0:
            return np.zeros((max(0, hi - lo), *info.shape[1:]), dtype=np.float32)
        mm = np.memmap(info.file, dtype=raw, mode="r", shape=((hi - lo) * row_len,),
                       offset=self.offsets[info.file] + info.start + lo * row_len * itemsize)
        block = np.asarray(mm)
        out = bf16_to_f32(block) if info.dtype == "BF16" else block.astype(np.float32)
        del mm
        return out.reshape((hi - lo, *info.shape[1:]))

    def read(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        if info.dtype not in FLOAT_DTYPES:
            raise SourceError(f"tensor {name} in {info.file} has dtype {info.dtype}; "
                              f"supported: {', '.join(FLOAT_DTYPES)}", info.file)
        if info.dtype == "BF16":
            count = (info.end - info.start) // 2
            if count == 0:
                return np.zeros(info.shape, dtype=np.float32)
            words = np.memmap(info.file, dtype="<u2", mode="r", shape=(count,),
                              offset=self.offsets[info.file] + info.start)
            out = bf16_to_f32(np.asarray(words)).reshape(info.shape)
            del words
            return out
        with safe_open(str(info.file), framework="numpy") as f:
            arr = f.get_tensor(name)
        return np.ascontiguousarray(arr, dtype=np.float32)
