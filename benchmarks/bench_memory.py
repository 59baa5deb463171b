"""Issue 3: RSS under a memory budget, per backend, DataLoader with workers.

For each backend: writes a synthetic dataset (``--size``, 64 KiB values), then reads
``--epochs`` epochs in random order through a DataLoader with ``--workers`` workers,
once without a budget and once with ``max_rss=--budget``, in the same run and from
the same (warm) page cache. A monitor thread samples RSS of the main process and of
every worker from /proc every 50 ms. Prints peak growth per process and the
throughput ratio capped / uncapped; writes JSON and a PNG of RSS over time.

    python benchmarks/bench_memory.py --size 4GB --out bench-out/memory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader

from shardio import ShardedDataset, ShardWriter, format_size, parse_size
from shardio.memory import read_rss

MiB = 2**20


@dataclass
class Trace:
    """RSS samples (seconds since start, bytes) of each process of one run."""

    start: float = field(default_factory=time.perf_counter)
    samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)

    def growth(self, pid: int) -> int:
        values = [rss for _, rss in self.samples[pid]]
        return max(values) - values[0]


class Monitor(threading.Thread):
    """Samples RSS of this process and its children every ``interval`` seconds."""

    def __init__(self, trace: Trace, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.trace, self.interval = trace, interval
        self.stopped = threading.Event()
        self.me = psutil.Process()

    def run(self) -> None:
        while not self.stopped.is_set():
            now = time.perf_counter() - self.trace.start
            pids = [self.me.pid] + [c.pid for c in self.me.children()]
            for pid in pids:
                info = read_rss(pid)
                if info is not None:
                    self.trace.samples.setdefault(pid, []).append((now, info.rss))
            time.sleep(self.interval)


def write_dataset(path: str, fmt: str, size: int, value: int) -> None:
    if os.path.exists(os.path.join(path, "manifest.json")):
        return
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(0)
    count = size // value
    with ShardWriter(path, format=fmt, shard_size="512MB") as writer:
        for start in range(0, count, 1024):
            n = min(1024, count - start)
            writer.write_batch({"x": rng.integers(0, 255, (n, value), dtype=np.uint8)})


def run(path: str, budget: int | None, epochs: int, workers: int, batch: int) -> dict[str, Any]:
    ds = ShardedDataset(path, max_rss=budget) if budget else ShardedDataset(path)
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    trace = Trace()
    monitor = Monitor(trace)
    monitor.start()
    time.sleep(0.2)  # the main process's baseline
    samples = 0
    started = time.perf_counter()
    epoch_times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for items in loader:
            samples += len(items["x"])
        epoch_times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    monitor.stopped.set()
    monitor.join()
    del loader
    ds.close()
    main = os.getpid()
    return {
        "budget": budget,
        "samples_per_s": samples / elapsed,
        "mb_per_s": samples * ds.schema["x"].sample_nbytes / elapsed / 1e6,
        "epoch_s": epoch_times,
        "peak_growth": {
            ("main" if pid == main else f"worker {pid}"): trace.growth(pid) for pid in trace.samples
        },
        "trace": {str(pid): s for pid, s in trace.samples.items()},
    }


def plot(results: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (fmt, runs) in zip(axes[0], results.items(), strict=True):
        for label, run_result in runs.items():
            for pid, samples in run_result["trace"].items():
                t = [s[0] for s in samples]
                rss = [(s[1] - samples[0][1]) / MiB for s in samples]
                ax.plot(
                    t, rss, label=f"{label} pid {pid}", linestyle="-" if label == "capped" else ":"
                )
        budget = next(r["budget"] for r in runs.values() if r["budget"])
        ax.axhline(budget / MiB, color="red", linewidth=0.8, label="budget")
        ax.set_title(fmt)
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS growth over start (MiB)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="512MB", help="dataset size per backend")
    parser.add_argument("--value", default="64KiB", help="bytes per sample")
    parser.add_argument("--budget", default="512MB", help="max_rss of the capped run")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--formats", default="lmdb,mmap,hdf5,zarr")
    parser.add_argument(
        "--data", default="bench-out/memory-data", help="where datasets are written"
    )
    parser.add_argument("--out", default="bench-out/memory", help="JSON and PNG prefix")
    args = parser.parse_args(argv)
    size, value, budget = (
        parse_size(args.size),
        parse_size(args.value),
        parse_size(args.budget, "budget"),
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    print(
        f"machine: {os.cpu_count()} cores, {format_size(psutil.virtual_memory().total)} RAM; "
        f"dataset {format_size(size)} per backend of {format_size(value)} values; "
        f"{args.epochs} epochs random order, {args.workers} workers, batch {args.batch_size}"
    )
    results: dict[str, dict[str, Any]] = {}
    for fmt in args.formats.split(","):
        path = os.path.join(args.data, f"{fmt}.shardio")
        t0 = time.perf_counter()
        write_dataset(path, fmt, size, value)
        print(f"{fmt}: dataset ready in {time.perf_counter() - t0:.0f} s", flush=True)
        uncapped = run(path, None, args.epochs, args.workers, args.batch_size)
        capped = run(path, budget, args.epochs, args.workers, args.batch_size)
        results[fmt] = {"uncapped": uncapped, "capped": capped}
        ratio = capped["samples_per_s"] / uncapped["samples_per_s"]
        print(
            f"| {fmt} | uncapped | {uncapped['mb_per_s']:.0f} MB/s | "
            + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in uncapped["peak_growth"].items())
            + " |"
        )
        print(
            f"| {fmt} | max_rss={args.budget} | {capped['mb_per_s']:.0f} MB/s ({ratio:.2f}x) | "
            + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in capped["peak_growth"].items())
            + " |",
            flush=True,
        )
    with open(f"{args.out}.json", "w") as handle:
        json.dump(results, handle)
    try:
        plot(results, f"{args.out}.png")
        print(f"plot: {args.out}.png")
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
