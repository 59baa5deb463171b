"""The physical ceiling a loader is measured against, in the same run.

Two figures: memory-copy bandwidth (what a warm-cache loader could at best move,
since every read copies out of the page cache or a mapping at least once) and the
sequential read bandwidth of the dataset's own files from a cold page cache (what
a cold epoch could at best read from the device).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cache import drop_cache

__all__ = ["Ceiling", "measure_ceiling", "memcpy_bandwidth", "sequential_read_bandwidth"]

_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Ceiling:
    memcpy_bytes_per_s: float
    disk_bytes_per_s: float | None  # None when not measured
    disk_bytes: int = 0  # bytes read to measure it
    disk_cold: bool = False  # whether the files' cache was dropped before reading

    def fraction(self, bytes_per_s: float, cold: bool) -> float | None:
        """``bytes_per_s`` as a fraction of the ceiling that bounds it (disk when cold)."""
        ceiling = self.disk_bytes_per_s if cold else self.memcpy_bytes_per_s
        return bytes_per_s / ceiling if ceiling else None

    def to_json(self) -> dict[str, Any]:
        return {
            "memcpy_bytes_per_s": self.memcpy_bytes_per_s,
            "disk_read_bytes_per_s": self.disk_bytes_per_s,
            "disk_read_bytes": self.disk_bytes,
            "disk_read_cold": self.disk_cold,
        }


def memcpy_bandwidth(nbytes: int = 64 * 1024 * 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` bytes/s of one large ``np.copyto`` (read + write of ``nbytes``)."""
    source = np.ones(nbytes, dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)  # fault every page in before timing
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def sequential_read_bandwidth(
    paths: Sequence[str], limit: int | None = 1024**3, cold: bool = True
) -> tuple[float | None, int]:
    """(bytes/s, bytes read) reading ``paths`` in order with large ``readinto`` calls.

    With ``cold``, each file's page cache is dropped first (no process may map it
    then). At most ``limit`` bytes are read, so an 8 GB dataset costs seconds."""
    if not paths:
        return None, 0
    if cold:
        drop_cache(paths)
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    total = 0
    start = time.perf_counter()
    for path in paths:
        if limit is not None and total >= limit:
            break
        with open(path, "rb", buffering=0) as handle:
            while limit is None or total < limit:
                count = handle.readinto(view)
                if not count:
                    break
                total += count
    elapsed = time.perf_counter() - start
    if cold:
        drop_cache(paths)  # leave no warm pages behind from the measurement itself
    return (total / elapsed if elapsed > 0 and total else None), total


def measure_ceiling(
    paths: Sequence[str], disk_limit: int | None = 1024**3, disk: bool = True
) -> Ceiling:
    """Memory-copy bandwidth and, with ``disk``, the cold sequential read of ``paths``."""
    memcpy = memcpy_bandwidth()
    disk_rate, disk_bytes = (None, 0)
    if disk and paths and hasattr(os, "posix_fadvise"):
        disk_rate, disk_bytes = sequential_read_bandwidth(paths, disk_limit, cold=True)
    return Ceiling(memcpy, disk_rate, disk_bytes, disk_cold=disk)
