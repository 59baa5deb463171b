"""Split a source's samples into shard tasks.

The plan depends only on the source (its schema, length and, for variable-length
fields, the sizes of a fixed set of rows) and the options, so an interrupted
conversion rerun with ``resume`` computes the same shard boundaries. The settings
that must not change between the runs are summarised by `Plan.settings`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from shardio.core.schema import Schema
from shardio.storage.adapters.base import Columns

from .source import Source

__all__ = ["ShardTask", "Plan", "make_plan", "estimate_sample_nbytes", "columns_nbytes"]

#: Rows whose sizes estimate the mean size of a sample with variable-length fields.
SIZE_SAMPLE_ROWS = 512


@dataclass(frozen=True)
class ShardTask:
    """Shard ``number`` holds source samples ``start`` to ``stop`` (exclusive)."""

    number: int
    start: int
    stop: int

    @property
    def num_samples(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Plan:
    format: str
    shard_size: int
    num_samples: int
    sample_nbytes: float
    tasks: tuple[ShardTask, ...]

    @property
    def nbytes(self) -> int:
        """Estimated bytes of every sample (exact without variable-length fields)."""
        return int(self.sample_nbytes * self.num_samples)

    def settings(
        self, schema: Schema, options: dict[str, Any], source_signature: str | None
    ) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one, as JSON."""
        bounds = xxhash.xxh3_64()
        for task in self.tasks:
            bounds.update(f"{task.start}:{task.stop};".encode())
        return {
            "format": self.format,
            "shard_size": self.shard_size,
            "num_samples": self.num_samples,
            "num_shards": len(self.tasks),
            "shard_bounds": bounds.hexdigest(),
            "schema": schema.to_json(),
            "writer_options": json.loads(json.dumps(options, sort_keys=True, default=repr)),
            "source_signature": source_signature,
        }


def columns_nbytes(columns: Columns, schema: Schema, count: int) -> np.ndarray:
    """Bytes of each of ``count`` samples (fixed fields plus variable values)."""
    sizes = np.full(count, schema.fixed_sample_nbytes, dtype=np.int64)
    for fld in schema:
        if fld.variable:
            sizes += np.fromiter(
                (len(v) if isinstance(v, bytes) else v.nbytes for v in columns[fld.name]),
                dtype=np.int64,
                count=count,
            )
    return sizes


def estimate_sample_nbytes(source: Source, rows: int = SIZE_SAMPLE_ROWS) -> float:
    """Mean bytes of a sample: exact for fixed-size schemas, otherwise the mean over
    ``rows`` evenly spaced samples (the same rows every run, so plans repeat)."""
    schema = source.schema
    if not schema.has_variable or source.num_samples == 0:
        return float(schema.fixed_sample_nbytes)
    count = min(rows, source.num_samples)
    indices = np.unique(np.linspace(0, source.num_samples - 1, count).astype(np.int64))
    sizes = columns_nbytes(source.read_many(indices), schema, len(indices))
    return float(sizes.mean())


def make_plan(
    num_samples: int,
    sample_nbytes: float,
    shard_size: int,
    format: str,
    align: int | None = None,
) -> Plan:
    """Shards of ``shard_size`` bytes of samples (at least one sample each).

    With ``align`` (the source's rows per storage chunk), a shard holding more than
    one chunk ends on a chunk boundary, so no chunk is decompressed by two tasks.
    """
    per_shard = max(1, int(shard_size // max(sample_nbytes, 1.0)))
    if align is not None and align > 1 and per_shard >= align:
        per_shard -= per_shard % align
    tasks = tuple(
        ShardTask(number, start, min(num_samples, start + per_shard))
        for number, start in enumerate(range(0, num_samples, per_shard))
    )
    return Plan(format, shard_size, num_samples, float(sample_nbytes), tasks)
