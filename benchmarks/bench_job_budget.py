"""Issue 17: one memory budget for the whole job, against no budget, in one run.

Writes a synthetic LMDB dataset (``--size``, 64 KiB values), then reads ``--epochs``
epochs in random order through a DataLoader with ``--workers`` workers, once without a
budget, once with ``max_rss=--budget`` (``"total:1536MiB"`` by default, split like
``"auto"``; pass ``auto`` inside a job with a limit) and once with a per-process
``max_rss=--per-process`` near the share that gives (which isolates what the job
accounting costs), back to back from the same page cache. A monitor thread sums RSS
over the main process and its workers every 50 ms (as SLURM's RSS accounting does) and
PSS every second; prints the split chosen, the peak sums and each run's throughput
against the run without a budget.

    python benchmarks/bench_job_budget.py --size 4GB --out bench-out/job-budget.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from shardio import ShardedDataset, ShardWriter, format_size, parse_size
from shardio.memory import JobUsage

MiB = 2**20


class JobMonitor(threading.Thread):
    """Peak RSS sum (every ``interval`` s) and PSS sum (every second) of this job."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stopped = threading.Event()
        self.peak_rss = self.peak_pss = 0

    def run(self) -> None:
        next_pss = 0.0
        while not self.stopped.is_set():
            now = time.monotonic()
            usage = JobUsage.sample(os.getpid(), pss=now >= next_pss)
            self.peak_rss = max(self.peak_rss, usage.rss)
            if usage.pss is not None:
                self.peak_pss, next_pss = max(self.peak_pss, usage.pss), now + 1.0
            time.sleep(self.interval)


class Counted(torch.utils.data.Dataset):
    """A batch read through ``read_batch``; returns only its sample count."""

    def __init__(self, ds: ShardedDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]) -> list[int]:
        return [len(self.ds.read_batch(indices)["x"])]

    def __getitem__(self, index: int) -> int:
        return self.__getitems__([index])[0]


def first(batch: list[int]) -> int:
    return batch[0]


def write_dataset(path: str, size: int, value: int) -> None:
    if os.path.exists(os.path.join(path, "manifest.json")):
        return
    rng = np.random.default_rng(0)
    count = size // value
    with ShardWriter(path, format="lmdb", shard_size="1GB") as writer:
        for start in range(0, count, 512):
            n = min(512, count - start)
            writer.write_batch({"x": rng.integers(0, 255, (n, value), dtype=np.uint8)})


def run(path: str, budget: str | None, epochs: int, workers: int, batch: int) -> dict[str, Any]:
    ds = ShardedDataset(path, max_rss=budget)
    loader = DataLoader(
        Counted(ds),
        batch_size=batch,
        num_workers=workers,
        persistent_workers=True,
        collate_fn=first,
        sampler=torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0)),
    )
    monitor = JobMonitor()
    monitor.start()
    samples = 0
    started = time.perf_counter()
    for _ in range(epochs):
        samples += sum(loader)
    elapsed = time.perf_counter() - started
    monitor.stopped.set()
    monitor.join()
    del loader
    ds.close()
    return {
        "budget": budget,
        "mb_per_s": samples * ds.schema["x"].sample_nbytes / elapsed / 1e6,
        "peak_rss_sum": monitor.peak_rss,
        "peak_pss_sum": monitor.peak_pss,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1GB", help="dataset size")
    parser.add_argument("--budget", default="total:1536MiB", help="max_rss of the budget run")
    parser.add_argument(
        "--per-process",
        default="170MiB",
        help="max_rss of a third run: a per-process budget near the job budget's share",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of the three runs, interleaved"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", default="bench-out/job-budget-data.shardio")
    parser.add_argument("--out", default="bench-out/job-budget.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the split chosen
    size = parse_size(args.size)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    write_dataset(args.data, size, 64 * 1024)
    print(
        f"{format_size(size)} LMDB of 64 KiB values, {args.epochs} epochs random order, "
        f"{args.workers} workers, batch {args.batch_size}; {os.cpu_count()} cores",
        flush=True,
    )
    budgets = (None, args.budget, args.per_process)
    # Rounds interleave the runs, so that a change in the shared machine's load
    # falls on every run alike; each ratio is taken within its round.
    # The order rotates from round to round: a run that follows the one without a
    # budget pays for tearing down its mappings of the whole dataset.
    rounds = []
    for round_number in range(args.repeats):
        order = [(i + round_number) % len(budgets) for i in range(len(budgets))]
        done = {
            i: run(args.data, budgets[i], args.epochs, args.workers, args.batch_size) for i in order
        }
        results = [done[i] for i in range(len(budgets))]
        none = results[0]["mb_per_s"]
        for result in results:
            result["ratio"] = result["mb_per_s"] / none
            print(
                f"| {result['budget'] or 'none'} | {result['mb_per_s']:.0f} MB/s | "
                f"{result['ratio']:.2f}x | "
                f"RSS sum {result['peak_rss_sum'] / MiB:,.0f} MiB | "
                f"PSS sum {result['peak_pss_sum'] / MiB:,.0f} MiB |",
                flush=True,
            )
        rounds.append(results)
    for index, budget in enumerate(budgets):
        ratios = [r[index]["ratio"] for r in rounds]
        print(f"{budget or 'none'}: median ratio {float(np.median(ratios)):.2f}x of {ratios}")
    with open(args.out, "w") as handle:
        json.dump(rounds, handle, indent=1)
    worst = max(r[1]["peak_rss_sum"] for r in rounds)
    return 0 if worst < min(r[0]["peak_rss_sum"] for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
