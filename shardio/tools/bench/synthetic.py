"""Synthetic datasets for benchmarks: the same samples written to any backend.

A sample is ``{"data": uint8[sample_bytes - 8], "label": int64}``; ``label`` is the
sample's index and ``data`` a window of a fixed random pool chosen by the index, so
every backend holds identical, incompressible-looking bytes and a reader's output
can be checked cheaply (`expected_label`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from shardio.core.config import parse_size
from shardio.core.errors import InvalidOptionError
from shardio.storage.writer import ShardWriter

__all__ = ["synthetic_batches", "write_synthetic"]

_POOL = 1 << 22  # 4 MiB of random bytes, windows of which make the samples
_STRIDE = 7919  # prime: consecutive samples start far apart in the pool


def synthetic_batches(
    num_samples: int, sample_bytes: int, batch: int = 4096, seed: int = 0
) -> Iterator[dict[str, Any]]:
    """Column batches of the synthetic samples, in index order."""
    if sample_bytes <= 8:
        raise InvalidOptionError(f"sample_bytes should be > 8, but got {sample_bytes}")
    width = sample_bytes - 8
    pool = np.random.default_rng(seed).integers(0, 256, size=_POOL + width, dtype=np.uint8)
    windows = np.lib.stride_tricks.sliding_window_view(pool, width)
    for start in range(0, num_samples, batch):
        index = np.arange(start, min(start + batch, num_samples), dtype=np.int64)
        yield {"data": windows[(index * _STRIDE) % _POOL], "label": index}


def write_synthetic(
    path: str | os.PathLike[str],
    format: str,
    num_samples: int | None = None,
    sample_bytes: int = 4096,
    *,
    total_size: int | str | None = None,
    shard_size: int | str = "256MB",
    overwrite: bool = True,
    seed: int = 0,
    **options: Any,
) -> str:
    """Write the synthetic dataset (``num_samples``, or as many as fill ``total_size``)."""
    if num_samples is None:
        if total_size is None:
            raise InvalidOptionError("give num_samples or total_size")
        num_samples = max(1, parse_size(total_size, "total_size") // sample_bytes)
    with ShardWriter(
        path, format=format, shard_size=shard_size, overwrite=overwrite, checksum=False, **options
    ) as writer:
        for batch in synthetic_batches(num_samples, sample_bytes, seed=seed):
            writer.write_batch(batch)
    return os.fspath(path)
