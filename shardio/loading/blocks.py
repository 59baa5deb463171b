"""Reused, pre-faulted blocks that batches in the main process are read or copied into.

NOTE: a fresh batch array faults its pages on the first write whenever the allocator
gave them back to the kernel (2.8 ms for 4 MB against 0.17 ms into memory already
touched). glibc does so often in reading threads' arenas: measured with 16 KiB samples,
batches of 256, the thread `Loader` faulted 665 pages per batch (35 at 4 KiB) and the
0-worker DataLoader 126; reads into these blocks fault none.

A batch's arrays are views of an ``owner`` array (``np.frombuffer`` of a block: numpy
views of it keep it, not the block, as their base); the tensors keep those views
alive, so the block returns to the pool only when the last tensor (or view of one) of
that batch is freed. A batch the loop keeps keeps its block; nothing is ever overwritten
while something refers to it.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from shardio.core.schema import Schema

from .dtypes import TORCH_KINDS, torch_dtype_of

__all__ = [
    "BLOCKS",
    "BlockPool",
    "block_columns",
    "fixed_layout",
    "pooled_columns",
    "reading_pinned",
]

_ALIGN = 64
_PAGE = 4096

Layout = dict[str, tuple[int, np.dtype[Any], tuple[int, ...]]]
"""field -> (byte offset in the block, native dtype, shape of the batch's column)."""


def _round_up(value: int, to: int) -> int:
    return -(-value // to) * to


class BlockPool:
    """Pre-faulted blocks, handed out as ``owner`` arrays and taken back when the last
    view of an owner is freed; at most `KEEP` free blocks of each size are kept."""

    KEEP = 8

    def __init__(self) -> None:
        self._free: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()  # NOTE: held for a dict/list step, never a copy

    def take(self, nbytes: int) -> np.ndarray:
        """A writable uint8 array of at least ``nbytes`` (a page multiple) whose block
        comes back to the pool when the array and every view of it are gone."""
        size = _round_up(max(nbytes, 1), _PAGE)
        with self._lock:
            free = self._free.setdefault(size, [])
            block = free.pop() if free else None
        if block is None:
            block = np.empty(size, dtype=np.uint8)
            block.fill(0)  # fault the pages in once, here
        owner = np.frombuffer(block.data, dtype=np.uint8)
        done = weakref.finalize(owner, self._give, free, block)
        done.atexit = False  # nothing to give back at exit
        return owner

    def _give(self, free: list[np.ndarray], block: np.ndarray) -> None:
        with self._lock:
            if len(free) < self.KEEP:
                free.append(block)

    @property
    def free_bytes(self) -> int:
        """Bytes held in free blocks."""
        with self._lock:
            return sum(size * len(blocks) for size, blocks in self._free.items())


BLOCKS = BlockPool()
"""The process's pool: Loader threads, ``num_workers=0`` reads and received slots."""


def fixed_layout(schema: Schema, count: int) -> tuple[Layout, int]:
    """Where the fixed fields (torch dtypes, native byte order) of ``count`` samples lie
    in one block, each aligned to 64 bytes, and the block's bytes."""
    key = (id(schema), count)
    known = _LAYOUTS.get(key)
    if known is not None and known[0] is schema:
        return known[1], known[2]
    layout: Layout = {}
    offset = 0
    for fld in schema:
        nbytes = count * fld.sample_nbytes
        if fld.variable or fld.dtype.kind not in TORCH_KINDS or nbytes == 0:
            continue
        layout[fld.name] = (offset, fld.dtype.newbyteorder("="), (count, *fld.shape))
        offset += _round_up(nbytes, _ALIGN)
    if len(_LAYOUTS) >= 64:  # a few schemas and batch sizes in practice
        _LAYOUTS.clear()
    _LAYOUTS[key] = (schema, layout, offset)
    return layout, offset


# (id(schema), count) -> (schema, layout, bytes): per batch a lookup, not a walk over
# the fields (the schema is kept, so its id is not reused while it is here).
_LAYOUTS: dict[tuple[int, int], tuple[Schema, Layout, int]] = {}


def pooled_columns(schema: Schema, count: int, pool: BlockPool = BLOCKS) -> dict[str, np.ndarray]:
    """Arrays for the fixed fields of ``count`` samples in one pooled block, to read into
    (``out=``); the block is reused once they and every tensor over them are freed."""
    layout, nbytes = fixed_layout(schema, count)
    if not layout:
        return {}
    return views(pool.take(nbytes), layout)


def views(owner: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """The arrays of ``layout`` over ``owner``'s bytes."""
    # NOTE: one constructor call per field; each array's base is ``owner`` itself.
    return {
        name: np.ndarray(shape, dtype=dtype, buffer=owner, offset=at)
        for name, (at, dtype, shape) in layout.items()
    }


def _count(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


_reading = threading.local()


@contextlib.contextmanager
def reading_pinned() -> Iterator[None]:
    """Batches `block_columns` makes in this thread meanwhile go to pinned memory (a
    `Loader` thread under the CUDA `Prefetcher`): read once, sent to the GPU from there."""
    before = getattr(_reading, "pinned", False)
    _reading.pinned = True
    try:
        yield
    finally:
        _reading.pinned = before


def block_columns(
    schema: Schema, count: int
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor] | None]:
    """Arrays to read the fixed fields of ``count`` samples into, and the tensors that
    must stand for them (``None``: make them with ``torch.from_numpy``).

    Usually a pooled block (`pooled_columns`). In `reading_pinned`, one pinned buffer
    from torch's caching host allocator, with the tensors as views of it: a
    ``non_blocking`` copy from them records its stream there, so the memory is not
    reused before the copy has read it (which a pool of our own could not know)."""
    if not getattr(_reading, "pinned", False):
        return pooled_columns(schema, count), None
    layout, nbytes = fixed_layout(schema, count)
    if not layout:
        return {}, None
    whole = _pinned_bytes(max(nbytes, 1))
    tensors = {}
    for name, (at, dtype, shape) in layout.items():
        part = whole[at : at + dtype.itemsize * _count(shape)]
        tensors[name] = part.view(torch_dtype_of(dtype)).view(shape)
    return {name: tensor.numpy() for name, tensor in tensors.items()}, tensors


def _pinned_bytes(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
