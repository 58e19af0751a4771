"""Weights multiplied where they are stored: a layer's matrices read from their memory-mapped
words and cast in small row blocks as a product needs them.

A decode step (one row of activations) reads each weight once, so for a layer that the
weight cache cannot keep (:mod:`lql.model.layerstore`) casting the whole layer to float32
first costs three passes over memory for one: read the 16-bit words, write the float32
copy, read it again for the product.  :class:`StoredMatrix` instead casts ``CHUNK_ELEMS``
elements at a time into a small buffer that stays in the core's cache and multiplies that
block at once, so memory is read once, at 2 bytes a weight for bf16/f16 storage; the rows
are split between two threads (numpy's copies and BLAS calls release the GIL).  Each
matrix works out its blocks once (:class:`_Step`: which parts' rows, how they are cast)
and each thread maps its half's pages in one ``madvise`` before its blocks and drops them
after, so no per-block Python bookkeeping or page fault is left in a decode step.

A bf16 word is the top half of a float32: it is copied into the odd 16-bit halves of a
float32 buffer whose even halves stay zero (one strided copy, no shift).  float16 words are
converted by numpy's cast; float32 words are multiplied as they are mapped.

Up to :data:`STREAM_MAX_ROWS` rows run so (a decode step, a short prompt: 16 rows cost
one sgemm per block on top of the same cast); a longer prompt casts the whole layer once.

The products are bit-identical to those of the cached float32 layer (tests/test_scale.py):
* one row: a matrix-vector product either way.  OpenBLAS's gemv sums a row the same way
  over the whole matrix and over blocks that start on a multiple of 16 rows, provided its
  own split of the whole matrix's rows between threads falls on a multiple of 4 rows (at
  two threads: ``ceil(rows / 2)``, so row counts ≡ 0 or 7 mod 8 — every real model's;
  others can differ in the last bit of a few rows near the split, measured);
* 2+ rows: one sgemm per block, each block at least :data:`GEMM_MIN_MACS` multiply-adds, so
  OpenBLAS takes its general kernel, whose sums do not depend on how many columns a call
  has.  These run with OpenBLAS at one thread (:mod:`lql.model.blas`; four threads on two
  cores otherwise) where a once-per-width probe shows that gives the same bits.
"""

from __future__ import annotations

import contextlib
import mmap
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from lql.model.blas import agrees, one_thread

F32 = np.float32
_BF16 = np.dtype("<u2")

#: elements cast per block (1 MiB of float32: a block and its product stay in L2)
CHUNK_ELEMS = 1 << 18
#: row alignment of the blocks (see :meth:`StoredMatrix._plan`)
ALIGN = 16
#: a forward call over at most this many rows (a decode step, a short prompt) multiplies a
#: layer the cache does not hold from its stored words, block by block; longer calls (a
#: prompt) cast the whole layer once, read ahead in the background, where the cast is
#: shared by every row and one sgemm over the whole matrix beats one per block (each block
#: product would pack the rows again)
STREAM_MAX_ROWS = 16
#: a block product over 2+ rows has at least this many multiply-adds (rows x block rows x
#: cols): OpenBLAS sums each element of a product as the whole matrix's product does only
#: in its general kernel, and it takes a "small matrix" kernel at or below 100^3 of them
#: (``sgemm_small_kernel_permit``, SkylakeX); above it a block's product is the whole
#: product's columns bit for bit (measured; tests/test_scale.py)
GEMM_MIN_MACS = 1 << 20

#: ``madvise`` advice that maps a range's pages in one call (``MADV_POPULATE_READ``; 0: off)
_POPULATE = getattr(mmap, "MADV_POPULATE_READ", 22) if sys.platform.startswith("linux") else 0
_DONTNEED = getattr(mmap, "MADV_DONTNEED", 0)

_LOCAL = threading.local()


class LazyPool:
    """A one-worker thread pool started on first use (a decode product's second half here;
    the layer store's read-ahead has its own, since a read-ahead cast submits here)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
            return self._pool


_pool = LazyPool("lql-stored")


def _buffers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's cast buffers: ``(bf16 buffer, other buffer)``, float32, at least
    ``size`` elements each (grown when a larger block asks; a block view made from a
    smaller buffer keeps that one alive).  The bf16 one is written only through its odd
    halves, so its even halves stay 0."""
    bufs: tuple[np.ndarray, np.ndarray] | None = getattr(_LOCAL, "bufs", None)
    if bufs is None or bufs[0].size < size:
        size = max(size, CHUNK_ELEMS)
        bufs = (np.zeros(size, dtype=F32), np.empty(size, dtype=F32))
        _LOCAL.bufs = bufs
        _LOCAL.views = {}
    return bufs


class StoredMatrix:
    """A matrix ``W`` ``[rows, cols]`` kept as its stored row blocks (``parts``: the words of
    several tensors stacked by rows, e.g. q, k and v), standing for the float32 ``W.T``
    ``[cols, rows]`` that a layer multiplies by: ``x @ W.T`` is :meth:`product`.

    ``np.asarray`` gives that float32 ``W.T`` (a full cast, for the rare reader of a whole
    weight); ``release`` (``key -> None``) drops a part's mapped pages after each product,
    so a pass over a large model does not keep its weights resident."""

    __slots__ = ("parts", "keys", "release", "rows", "cols", "_steps")

    def __init__(self, parts: Sequence[np.ndarray], keys: Sequence[str] = (),
                 release: Callable[[str], None] | None = None) -> None:
        if not parts:
            raise ValueError("a stored matrix needs at least one part")
        cols = int(parts[0].shape[1])
        for p in parts:
            if p.ndim != 2 or p.shape[1] != cols:
                raise ValueError(f"stored parts of shapes {[tuple(q.shape) for q in parts]} do not stack by rows")
        self.parts = list(parts)
        self.keys = list(keys)
        self.release = release
        self.rows = sum(int(p.shape[0]) for p in parts)
        self.cols = cols
        self._steps: dict[bool, list[tuple[list[_Step], list[tuple[mmap.mmap, int, int]]]]] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the float32 matrix it stands for, ``W.T``: ``(cols, rows)``."""
        return (self.cols, self.rows)

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(F32)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        full = np.zeros((self.rows, self.cols), dtype=F32)
        row = 0
        for part in self.parts:
            n = int(part.shape[0])
            if part.dtype == _BF16:
                cast_bf16_into(part, full[row:row + n])
            else:
                np.copyto(full[row:row + n], part, casting="unsafe")
            row += n
        self._release()
        out: np.ndarray = full.T
        return out if dtype is None else np.asarray(out, dtype=np.dtype(dtype))  # type: ignore[call-overload]

    def product(self, x: np.ndarray) -> np.ndarray:
        """``x @ W.T`` for ``x`` ``[T, cols]`` float32, bit-identical to the product with the
        whole float32 matrix.  Up to :data:`STREAM_MAX_ROWS` rows, block by block from the
        stored words: one row (a decode step) a matrix-vector product per 16-row-aligned
        block; 2+ rows one sgemm per block of at least :data:`GEMM_MIN_MACS` multiply-adds.
        More rows: one product with the whole matrix cast."""
        t = x.shape[0]
        if t > STREAM_MAX_ROWS:
            out_full: np.ndarray = x @ np.asarray(self)
            return out_full
        out = np.empty((t, self.rows), dtype=F32)
        groups = self._plan(t > 1)
        # our two threads, not four, where OpenBLAS gives the same bits so (lql.model.blas)
        with one_thread() if self._single(t > 1) else contextlib.nullcontext():
            if len(groups) == 2:
                side: Future[None] = _pool().submit(self._rows, x, out, *groups[1])
                try:
                    self._rows(x, out, *groups[0])
                finally:
                    side.result()
            else:
                self._rows(x, out, *groups[0])
        return out

    def _single(self, gemm: bool) -> bool:
        """Whether this matrix's block products may run with OpenBLAS at one thread: sgemm
        blocks (``gemm``, 2+ rows) where OpenBLAS gives the same bits so for this width (tried
        once per width on random matrices); matrix-vector blocks never (OpenBLAS splits a
        gemv's rows between its threads at a point that groups the rows near it otherwise
        than our 16-row blocks do, and one thread is no faster there, measured)."""
        if not gemm:
            return False
        cols = self.cols

        def probe() -> np.ndarray:
            rng = np.random.default_rng(cols)
            out = []
            for rows, t in ((512, 2), (512, STREAM_MAX_ROWS), (2048, 3)):
                w = rng.standard_normal((rows, cols), dtype=F32)
                out.append((rng.standard_normal((t, cols), dtype=F32) @ w.T).ravel())
            return np.concatenate(out)

        return agrees(("stored gemm block", cols), probe)

    def _plan(self, gemm: bool) -> list[tuple[list[_Step], list[tuple[mmap.mmap, int, int]]]]:
        """The blocks of :meth:`product` (for 2+ rows with ``gemm``), worked out once: each
        block's source rows, views of the parts, and how it becomes float32
        (:class:`_Step`), split into the two threads' halves, each with the page ranges it
        reads.  Blocks start on multiples of :data:`ALIGN` rows (gemv sums a row as over the
        whole matrix only so); a gemm block has at least ``GEMM_MIN_MACS / (2 · cols)`` rows,
        the last one too (a short remainder joins the block before it)."""
        if self._steps is None:
            self._steps = {}
        plan = self._steps.get(gemm)
        if plan is None:
            step = max(ALIGN, (CHUNK_ELEMS // self.cols) // ALIGN * ALIGN)
            least = 0
            if gemm:
                least = -(-GEMM_MIN_MACS // (2 * self.cols))
                step = max(step, -(-least // ALIGN) * ALIGN)
            starts = list(range(0, self.rows, step))
            if len(starts) > 1 and self.rows - starts[-1] < least:
                starts.pop()                          # the remainder joins the block before
            bounds = starts[1:] + [self.rows]
            steps = [_Step(self, r, end - r) for r, end in zip(starts, bounds)]
            half = len(steps) // 2
            split = [steps[:half], steps[half:]] if half >= 2 else [steps]
            plan = self._steps[gemm] = [(g, _spans([p for s in g for p, _ in s.pieces])) for g in split]
        return plan

    def _rows(self, x: np.ndarray, out: np.ndarray, steps: Sequence[_Step],
              spans: Sequence[tuple[mmap.mmap, int, int]]) -> None:
        """The blocks ``steps`` (consecutive) of ``x @ W.T`` into ``out``, in this thread:
        their pages (``spans``) mapped first, in one call each, and released after."""
        _advise(spans, _POPULATE)
        try:
            one = x.shape[0] == 1
            for s in steps:
                block = s.block()
                if one:
                    np.matmul(block, x[0], out=out[0, s.r:s.r + s.n])
                else:
                    out[:, s.r:s.r + s.n] = x @ block.T
        finally:
            if self.release is not None:
                _advise(spans, _DONTNEED)

    def _release(self) -> None:
        if self.release is not None:
            for key in self.keys:
                self.release(key)


class _Step:
    """One block of a :class:`StoredMatrix` product: rows ``r..r+n`` of ``W`` as the source
    rows they are read from (``pieces``: ``(rows of a part, row in the block)``; a block can
    cross from one part into the next) and :meth:`block`, those rows as float32."""

    __slots__ = ("r", "n", "cols", "pieces", "kind")

    DIRECT, BF16, CAST = 0, 1, 2

    def __init__(self, m: StoredMatrix, r: int, n: int) -> None:
        self.r, self.n, self.cols = r, n, m.cols
        self.pieces: list[tuple[np.ndarray, int]] = []
        base = 0
        for part in m.parts:
            size = int(part.shape[0])
            a, b = max(r, base), min(r + n, base + size)
            if a < b:
                self.pieces.append((part[a - base:b - base], a - r))
            base += size
        if len(self.pieces) == 1 and self.pieces[0][0].dtype == F32:
            self.kind = _Step.DIRECT
        elif all(p.dtype == _BF16 for p, _ in self.pieces):
            self.kind = _Step.BF16
        else:
            self.kind = _Step.CAST

    def block(self) -> np.ndarray:
        """Rows ``r..r+n`` of ``W`` as float32 ``[n, cols]``: float32 words as they are
        mapped, else cast into this thread's buffer (bf16 words into its odd halves)."""
        if self.kind == _Step.DIRECT:
            return self.pieces[0][0]
        block, halves = _views(self.kind == _Step.BF16, self.n, self.cols)
        for src, at in self.pieces:
            if self.kind == _Step.BF16:
                halves[at:at + src.shape[0]] = src
            else:
                np.copyto(block[at:at + src.shape[0]], src, casting="unsafe")
        return block


def _views(bf16: bool, n: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's cast buffer as ``(block [n, cols], its odd 16-bit halves [n, cols])``
    (made once per shape: a decode step asks for the same few shapes again and again)."""
    bf16_buf, other_buf = _buffers(n * cols)
    cache: dict[tuple[bool, int, int], tuple[np.ndarray, np.ndarray]] = _LOCAL.views
    got = cache.get((bf16, n, cols))
    if got is None:
        block = (bf16_buf if bf16 else other_buf)[:n * cols].reshape(n, cols)
        got = cache[(bf16, n, cols)] = (block, block.view(np.uint16).reshape(n, 2 * cols)[:, 1::2])
    return got


def _spans(arrays: Sequence[np.ndarray]) -> list[tuple[mmap.mmap, int, int]]:
    """The page-aligned ranges ``(mapping, start, length)`` of the memory-mapped ``arrays``
    (consecutive ranges of one mapping merged; arrays in memory have none)."""
    spans: list[tuple[mmap.mmap, int, int]] = []
    for a in arrays:
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        mm = getattr(root, "_mmap", None)
        if mm is None:
            continue
        offset = a.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        start = offset // mmap.PAGESIZE * mmap.PAGESIZE
        end = offset + a.nbytes
        if spans and spans[-1][0] is mm and spans[-1][1] + spans[-1][2] >= start:
            prev = spans[-1]
            spans[-1] = (mm, prev[1], max(prev[1] + prev[2], end) - prev[1])
        else:
            spans.append((mm, start, end - start))
    return spans


def _advise(spans: Sequence[tuple[mmap.mmap, int, int]], advice: int) -> None:
    """``madvise`` each span: ``MADV_POPULATE_READ`` maps its pages in one call rather than
    one fault at a time (after the last product's release they are out of this process's
    page tables: a decode step on a 7B-shaped model, 3.0 s against 3.3 s, measured);
    ``MADV_DONTNEED`` drops them from this process's resident set (they stay in the page
    cache), so a pass over a large model does not keep its weights resident."""
    global _POPULATE
    if not advice:
        return
    for mm, start, length in spans:
        try:
            mm.madvise(advice, start, length)
        except (OSError, ValueError):
            if advice == _POPULATE:        # an older kernel: fault the pages in as before
                _POPULATE = 0
            return


#: a bf16 cast of at least this many elements is split between two threads
_SPLIT_CAST = 1 << 22


def cast_bf16_into(src: np.ndarray, dst: np.ndarray) -> None:
    """bfloat16 words ``src`` (``uint16`` ``[rows, cols]``) into the *zero-filled* float32
    ``dst``: one strided copy of the words into the high halves of its elements (no shift
    pass), split between two threads for a large tensor — a whole layer cast for a prompt
    (4096 x 22016: 0.111 s as widen-then-shift in one thread, 0.055 s so, measured)."""
    halves = dst.view(np.uint16).reshape(*dst.shape[:-1], 2 * dst.shape[-1])[..., 1::2]
    if src.ndim != 2 or src.size < _SPLIT_CAST:
        halves[...] = src
        return
    mid = src.shape[0] // 2

    def upper() -> None:
        halves[mid:] = src[mid:]

    side = _pool().submit(upper)
    try:
        halves[:mid] = src[:mid]
    finally:
        side.result()
