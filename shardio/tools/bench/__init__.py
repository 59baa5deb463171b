"""Measurement over shardio's public API: loader throughput, RSS over time, ceilings.

``shardio bench`` (see `shardio.tools.cli._bench`) and ``benchmarks/`` are thin
drivers over this package:

- `.rss`: an RSS sampler thread for every process, workers included;
- `.cache`: cold page cache by ``posix_fadvise`` and residency by ``mincore``;
- `.ceiling`: memory-copy and cold sequential-read bandwidth;
- `.raw`: the hand-written per-sample loops of each backend's own library;
- `.runner`: configurations and the measuring loop;
- `.report`: table, JSON and PNG plot.

Importing this package imports no torch; running a benchmark does.
"""

from __future__ import annotations

from .cache import CacheState, cache_state, dataset_files, drop_cache
from .ceiling import Ceiling, measure_ceiling, memcpy_bandwidth, sequential_read_bandwidth
from .raw import RAW_LOOPS, RawReader, raw_reader
from .report import format_table, require_matplotlib, write_json, write_plot
from .rss import RssSampler, RssSeries, WorkerRssInit, collect_samples, read_rss
from .runner import (
    BenchConfig,
    BenchReport,
    EpochResult,
    RunResult,
    machine_info,
    open_dataset,
    run_bench,
)

__all__ = [
    "RAW_LOOPS",
    "BenchConfig",
    "BenchReport",
    "CacheState",
    "Ceiling",
    "EpochResult",
    "RawReader",
    "RssSampler",
    "RssSeries",
    "RunResult",
    "WorkerRssInit",
    "cache_state",
    "collect_samples",
    "dataset_files",
    "drop_cache",
    "format_table",
    "machine_info",
    "measure_ceiling",
    "memcpy_bandwidth",
    "open_dataset",
    "raw_reader",
    "read_rss",
    "require_matplotlib",
    "run_bench",
    "sequential_read_bandwidth",
    "write_json",
    "write_plot",
]
