"""Shard-window vs random order, from a cold page cache, on a dataset larger than max_rss.

Writes a raw-mmap dataset (once), then for each repeat and each order drops the
shard files from the page cache and reads through a DataLoader in a fresh process,
so every order starts cold and its peak RSS is its own. The baseline is what a user
would otherwise write: ``torch.utils.data.RandomSampler``.

    python benchmarks/bench_sampling.py --size 2GB --max-rss 256MB

Prints samples/s, MB/s and peak RSS per order, and shard-window / random ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from shardio.core.config import format_size, parse_size

#: shard-window with its block readahead (the default), without it, and the baseline.
ORDERS = ("shard-window", "shard-window-no-readahead", "random")
_ROWS_PER_WRITE = 4096


def write_dataset(
    path: Path, n_samples: int, sample_bytes: int, shard_size: int, fmt: str = "mmap"
) -> None:
    """A dataset of ``n_samples`` rows of ``sample_bytes`` bytes each, in format ``fmt``."""
    from shardio import ShardWriter

    with ShardWriter(path, format=fmt, shard_size=shard_size) as writer:
        for start in range(0, n_samples, _ROWS_PER_WRITE):
            rows = min(_ROWS_PER_WRITE, n_samples - start)
            x = (np.arange(rows * sample_bytes, dtype=np.int64) + start) % 251
            writer.write_batch({"x": x.astype(np.uint8).reshape(rows, sample_bytes)})


def drop_page_cache(path: Path) -> int:
    """Evict every file under ``path`` from the page cache; returns how many files."""
    count = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        count += 1
    return count


def _rss_bytes() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


class _RssWatcher(threading.Thread):
    """Samples this process's RSS every few milliseconds and keeps the peaks."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak: dict[str, int] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for key, value in _rss_bytes().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            time.sleep(self.interval)

    def stop(self) -> dict[str, int]:
        self._done.set()
        self.join()
        return self.peak


class _PageCacheLimit:
    """Emulates a machine whose RAM holds only ``limit`` bytes of the dataset.

    After each batch, once ``limit`` bytes have been read since the last time, drops
    every shard file from the page cache. Cruder than the kernel's LRU, and harder
    on shard-window (it loses its live window too) than on random order.
    """

    def __init__(self, dataset: Any, limit: int, path: Path) -> None:
        self.dataset, self.limit, self.path = dataset, limit, path
        self.mark = 0
        self.drops = 0

    def after_batch(self) -> None:
        read = self.dataset.reader.bytes_read
        if read - self.mark >= self.limit:
            drop_page_cache(self.path)
            self.mark = read
            self.drops += 1


def read_once(args: argparse.Namespace, order: str) -> dict[str, Any]:
    """One cold read in this process; meant to run in a child (see ``main``)."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler, Sampler

    from shardio import ShardedDataset, ShardSampler

    path = Path(args.path)
    dataset = ShardedDataset(path, max_rss=args.max_rss)
    sampler: Sampler[int]
    if order == "random":
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(args.seed))
    else:
        sampler = ShardSampler(
            dataset,
            order="shard-window",
            window=args.window,
            seed=args.seed,
            readahead=order == "shard-window",
        )
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers
    )
    drop_page_cache(path)
    limit = None
    if args.page_cache_limit:
        limit = _PageCacheLimit(dataset, parse_size(args.page_cache_limit), path)
    before = _rss_bytes()
    watcher = _RssWatcher()
    watcher.start()
    samples, checksum = 0, 0
    start = time.perf_counter()
    for batch in loader:
        x = batch["x"]
        samples += len(x)
        checksum += int(x[:, 0].sum())  # touch the data so nothing is skipped
        if limit is not None:
            limit.after_batch()
        if time.perf_counter() - start > args.seconds:
            break
    elapsed = time.perf_counter() - start
    peak = watcher.stop()
    stats = dataset.memory_stats()
    return {
        "order": order,
        "samples": samples,
        "epoch_fraction": samples / len(dataset),
        "seconds": elapsed,
        "samples_per_s": samples / elapsed,
        "mb_per_s": samples * args.sample_bytes / elapsed / 1e6,
        "rss_before": before.get("VmRSS", 0),
        "peak_rss": peak.get("VmRSS", 0),
        "peak_rss_file": peak.get("RssFile", 0),
        "peak_growth": stats.get("peak_growth", 0),
        "releases": stats.get("releases", 0),
        "readahead_bytes": stats.get("readahead_bytes", 0),
        "page_cache_drops": None if limit is None else limit.drops,
        "max_rss_kernel": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "checksum": checksum,
        "memory_stats": stats,
    }


def _child(args: argparse.Namespace, order: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", order, *_forwarded(args)]
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _forwarded(args: argparse.Namespace) -> list[str]:
    return [
        f"--path={args.path}",
        f"--max-rss={args.max_rss}",
        f"--window={args.window}",
        f"--seconds={args.seconds}",
        f"--batch-size={args.batch_size}",
        f"--workers={args.workers}",
        f"--sample-bytes={args.sample_bytes}",
        f"--seed={args.seed}",
        *([f"--page-cache-limit={args.page_cache_limit}"] if args.page_cache_limit else []),
    ]


def _ratio(results: list[dict[str, Any]], repeat: int, order: str) -> float:
    def rate(name: str) -> float:
        found = next(r for r in results if r["repeat"] == repeat and r["order"] == name)
        return float(found["samples_per_s"])

    return rate(order) / rate("random")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--path", help="dataset directory (written if missing)")
    parser.add_argument("--size", default="2GB", help="dataset bytes")
    parser.add_argument("--sample-bytes", type=int, default=4096)
    parser.add_argument("--shard-size", default="64MB")
    parser.add_argument(
        "--format", default="mmap", help="backend of the dataset written (mmap, lmdb, hdf5, zarr)"
    )
    parser.add_argument("--max-rss", default="256MB", help="ShardedDataset memory budget")
    parser.add_argument("--window", default=None, help="shard-window bytes (max_rss / 2)")
    parser.add_argument("--seconds", type=float, default=60.0, help="cap per read")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--page-cache-limit",
        default=None,
        help="emulate RAM that holds only this much of the dataset (e.g. 512MB): drop "
        "the shards from the page cache each time this many bytes have been read",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", choices=ORDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.window is None:
        args.window = parse_size(args.max_rss, "max_rss") // 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.child:
        print(json.dumps(read_once(args, args.child)))
        return

    size, budget = parse_size(args.size, "size"), parse_size(args.max_rss, "max_rss")
    if size <= budget:
        raise SystemExit(f"--size should be larger than --max-rss, but got {args.size}")
    if args.path is None:
        args.path = str(Path(tempfile.gettempdir()) / f"shardio-bench-sampling-{size}")
    path = Path(args.path)
    if not path.exists():
        n_samples = size // args.sample_bytes
        print(
            f"writing {n_samples} samples of {args.sample_bytes} B ({args.format}) to {path}",
            flush=True,
        )
        write_dataset(path, n_samples, args.sample_bytes, parse_size(args.shard_size), args.format)

    print(
        f"dataset {format_size(size)} at {path}, max_rss={args.max_rss}, "
        f"page cache limit {args.page_cache_limit or 'none (all RAM)'}, "
        f"window={format_size(parse_size(args.window))}, cap {args.seconds:.0f} s per read, "
        f"{args.workers} DataLoader workers, "
        f"{os.cpu_count()} CPUs"
    )
    results: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for order in ORDERS:  # alternate, so drift on a shared machine hits both
            result = _child(args, order)
            result["repeat"] = repeat
            results.append(result)
            print(
                f"  {order:>26}: {result['samples_per_s']:>10.0f} samples/s "
                f"{result['mb_per_s']:>8.1f} MB/s  peak RSS {format_size(result['peak_rss'])} "
                f"(file-backed {format_size(result['peak_rss_file'])}, "
                f"{format_size(result['rss_before'])} before reading)  "
                f"{result['epoch_fraction']:.0%} of an epoch in {result['seconds']:.1f} s, "
                f"{result['releases']} budget releases, "
                f"{result['page_cache_drops']} page-cache drops",
                flush=True,
            )
    for order in ORDERS[:-1]:
        ratios = [_ratio(results, repeat, order) for repeat in range(args.repeats)]
        print(
            f"{order} / random throughput: median {statistics.median(ratios):.1f}x "
            f"(per repeat: {', '.join(f'{r:.1f}x' for r in ratios)}; target >= 3x)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
