"""The page cache of a dataset's files: drop it, and measure how much of it is resident.

Dropping uses ``posix_fadvise(POSIX_FADV_DONTNEED)`` on each file, which needs no
root. It only drops clean pages that no process maps: dirty pages are flushed first
(``fsync``), and the caller must close its own handles (LMDB and raw shards map
their files) before dropping. Residency is measured with ``mincore(2)`` on a fresh
read-only mapping, which reports page-cache residency without touching the pages, so
the report can say whether an epoch really started from a cold cache.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CacheState", "cache_state", "drop_cache", "resident_bytes", "dataset_files"]

#: Below this fraction of the files' bytes resident in the page cache, a cache is "cold".
COLD_FRACTION = 0.05


@dataclass(frozen=True)
class CacheState:
    """How much of a set of files the page cache holds."""

    files: int
    nbytes: int
    resident_bytes: int | None  # None where mincore is not available
    dropped: bool = False  # whether posix_fadvise(DONTNEED) was just applied

    @property
    def resident_fraction(self) -> float | None:
        if self.resident_bytes is None:
            return None
        return self.resident_bytes / self.nbytes if self.nbytes else 0.0

    @property
    def label(self) -> str:
        """``"cold"`` or ``"warm"`` (measured), or ``"dropped"`` where it cannot be measured."""
        fraction = self.resident_fraction
        if fraction is None:
            return "dropped" if self.dropped else "unknown"
        return "cold" if fraction < COLD_FRACTION else "warm"

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.label,
            "files": self.files,
            "nbytes": self.nbytes,
            "resident_bytes": self.resident_bytes,
            "resident_fraction": self.resident_fraction,
            "dropped": self.dropped,
        }


def dataset_files(dataset: Any) -> list[str]:
    """Every local file holding the data of ``dataset`` (a ShardedDataset or DatasetReader).

    Asks each shard's reader (``files()``), so a backend lists exactly what it reads."""
    reader = getattr(dataset, "reader", dataset)
    files: list[str] = []
    for number in range(len(reader.shard_lengths)):
        files.extend(reader.shard(number).files())
    return [f for f in dict.fromkeys(files) if os.path.isfile(f)]


def drop_cache(paths: Iterable[str]) -> CacheState:
    """Drop the page cache of each file with ``posix_fadvise(POSIX_FADV_DONTNEED)``.

    Returns the residency measured afterwards. Pages that a process still maps stay
    resident: close readers first."""
    paths = list(paths)
    if not hasattr(os, "posix_fadvise"):
        from shardio.core.errors import UnsupportedFeatureError

        raise UnsupportedFeatureError(
            "a cold cache needs os.posix_fadvise, which this platform lacks (Linux has it)"
        )
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped: write them back first
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    state = cache_state(paths)
    return CacheState(state.files, state.nbytes, state.resident_bytes, dropped=True)


def cache_state(paths: Sequence[str]) -> CacheState:
    """The page-cache residency of ``paths`` (``resident_bytes`` None where unmeasurable)."""
    total = 0
    resident: int | None = 0
    for path in paths:
        size = os.path.getsize(path)
        total += size
        if resident is not None:
            count = resident_bytes(path, size)
            resident = None if count is None else resident + count
    return CacheState(len(paths), total, resident)


_LIBC: Any = None


def _mincore() -> Any:
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        _LIBC = ctypes.CDLL(name, use_errno=True) if name else False
    if not _LIBC:
        return None
    function = getattr(_LIBC, "mincore", None)
    if function is not None:
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        function.restype = ctypes.c_int
    return function


def resident_bytes(path: str, size: int | None = None) -> int | None:
    """Bytes of ``path`` held in the page cache, by ``mincore(2)``; None if unavailable."""
    size = os.path.getsize(path) if size is None else size
    if size == 0:
        return 0
    mincore = _mincore()
    if mincore is None:
        return None
    page = mmap.PAGESIZE
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
    try:
        view = np.frombuffer(mapping, dtype=np.uint8)  # for the address only; never read
        pages = (size + page - 1) // page
        vector = np.zeros(pages, dtype=np.uint8)
        status = mincore(view.ctypes.data, size, vector.ctypes.data)
        del view
        if status != 0:
            return None
        resident = int(np.count_nonzero(vector & 1)) * page
        return min(resident, size)
    finally:
        mapping.close()
