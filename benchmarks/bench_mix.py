"""Mixtures: throughput and memory of reading 10 sources vs one, and resume at 10M samples.

Three cold reads of the same total bytes, each in a child process of its own (so each
peak RSS is its own), through a DataLoader with workers:

- baseline: one dataset of ``--total`` bytes read with ``ShardSampler`` (shard-window);
- ``Mix`` of that one dataset (what the mixture machinery costs by itself);
- ``Mix`` of ``--sources`` datasets of ``--total / sources`` bytes each, equal weights.

Method: every file is written back (``os.sync``) before the first read, and each read
drops its files from the page cache the same way (``fsync`` then
``POSIX_FADV_DONTNEED``, `shardio.tools.bench.cache.drop_cache`) and measures with
``mincore`` how much stayed resident (printed; a read is only cold where that is near
0); it is timed from its first batch to its last (the workers' start left out).
``--repeats`` rounds, each reading the three in a rotated order; printed are the
medians of samples/s and of the ratios within a round (with their range).

Printed: samples/s and the ratio mixture / baseline (target >= 0.8), peak RSS (main +
workers) and its growth from 1 to ``--sources`` sources. Then resume: a state saved at
the middle of a ``--resume-samples`` epoch of ``--sources`` sources by rank 0 of
``--world`` ranks, loaded at the same and at another world size; time to the first
batch against a fresh epoch's first batch, and the state's size in bytes of JSON.

    python benchmarks/bench_mix.py            # about 3 minutes on a quiet machine
    python benchmarks/bench_mix.py --write    # also records benchmarks/RESULTS.md
    python benchmarks/bench_mix.py --quick    # smoke run: seconds
    python benchmarks/bench_mix.py --max-rss 256MB   # both reads under a budget per process
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, machine_line, markdown_table, replace_section

from shardio.core.config import format_size, parse_size

HEADING = "Mixtures (bench_mix.py)"


def count(text: str) -> int:
    """``"10M"`` -> 10_000_000 (k, M and G are powers of 1000)."""
    scale = {"k": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def write(path: Path, samples: int, sample_bytes: int, shard_size: int, seed: int) -> None:
    from shardio import ShardWriter

    rows_per_write = max(1, (8 << 20) // sample_bytes)
    with ShardWriter(path, format="mmap", shard_size=shard_size) as writer:
        for start in range(0, samples, rows_per_write):
            rows = min(rows_per_write, samples - start)
            x = (np.arange(rows * sample_bytes, dtype=np.int64) + start + seed) % 251
            writer.write_batch({"x": x.astype(np.uint8).reshape(rows, sample_bytes)})


def drop_page_cache(paths: list[Path]) -> float | None:
    """Drop every file of ``paths`` from the page cache (dirty pages written back
    first); the fraction of their bytes still resident after, None if unmeasurable."""
    from shardio.tools.bench.cache import drop_cache

    files = [str(f) for path in paths for f in sorted(path.rglob("*")) if f.is_file()]
    return drop_cache(files).resident_fraction


class _PeakRss(threading.Thread):
    """Peak RSS of this process and its children (DataLoader workers), summed."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._done.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker that just exited
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One cold read, in this (child) process."""
    import torch
    from torch.utils.data import DataLoader

    from shardio import Mix, MixSampler, ShardedDataset, ShardSampler

    torch.set_num_threads(1)
    paths = [Path(p) for p in args.paths]
    budget = None if args.max_rss in (None, "none") else args.max_rss
    dataset: Any
    if args.child == "one":
        dataset = ShardedDataset(paths[0], max_rss=budget)
        sampler: Any = ShardSampler(dataset, window=args.window, seed=0)
    else:
        datasets = [ShardedDataset(p) for p in paths]
        sources = {f"s{i}": d for i, d in enumerate(datasets)}
        dataset = Mix(sources, seed=0, max_rss=budget)  # one budget for all sources
        sampler = MixSampler(dataset, window=args.window)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers
    )
    resident = drop_page_cache(paths)  # nothing of them is open or mapped here yet
    watcher = _PeakRss()
    watcher.start()
    iterator = iter(loader)
    next(iterator)  # timed from the first batch on: the workers' start is not the read's
    start = time.perf_counter()
    samples = 0
    for batch in iterator:
        samples += len(batch["x"])
    elapsed = time.perf_counter() - start
    peak = watcher.stop()
    return {"samples": samples, "seconds": elapsed, "peak_rss": peak, "resident": resident}


def run_child(kind: str, paths: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        kind,
        "--window",
        args.window,
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--max-rss",
        str(args.max_rss),
        "--paths",
        *map(str, paths),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"bench_mix: the {kind} read failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class _Sizes:
    """A source as the sampler sees it: shard sizes only (no data for the resume test)."""

    shard_lengths: tuple[int, ...]
    shard_nbytes: tuple[int, ...]

    def __len__(self) -> int:
        return sum(self.shard_lengths)


@dataclass
class _Layouts:
    names: tuple[str, ...]
    sources: tuple[_Sizes, ...]
    weights: dict[str, float] | None = None
    seed: int = 0
    exhausted: str = "restart"


def resume(samples: int, sources: int, world: int, batch: int) -> dict[str, Any]:
    """Time to the first batch after loading a mid-epoch state, and the state's size."""
    from shardio import MixSampler

    per_source = samples // sources
    shards = max(1, per_source // 10_000)
    lengths = [per_source // shards] * shards
    lengths[-1] += per_source - sum(lengths)
    layout = _Sizes(tuple(lengths), tuple(n * 1024 for n in lengths))
    names = tuple(f"s{i}" for i in range(sources))
    weights = {n: float(i + 1) for i, n in enumerate(names)}
    mix = _Layouts(names, (layout,) * sources, weights)

    def first_batch(sampler: MixSampler) -> float:
        start = time.perf_counter()
        iterator = iter(sampler)
        for _ in range(batch):
            next(iterator)
        return time.perf_counter() - start

    fresh = MixSampler(mix, rank=0, world_size=world, window="1GB")
    baseline = first_batch(fresh)
    state = fresh.state_dict(consumed=0)
    state["position"] = (samples // 2 // world) * world  # every rank half-way through
    state["pass_stop"] = samples
    text = json.dumps(state)
    out: dict[str, Any] = {"state_bytes": len(text), "fresh_first_batch_s": baseline}
    for new_world in (world, max(1, world * 3 // 4)):
        start = time.perf_counter()
        resumed = MixSampler(mix, rank=new_world - 1, world_size=new_world, window="1GB")
        resumed.load_state_dict(json.loads(text))
        loaded = time.perf_counter() - start
        out[f"resume_{new_world}_s"] = loaded + first_batch(resumed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes")
    parser.add_argument("--sources", type=int, default=10)
    parser.add_argument("--total", default="2GB", help="bytes of all sources together")
    parser.add_argument("--sample-bytes", type=int, default=16384, help="16384: 4096 int32 tokens")
    parser.add_argument("--shard-size", default="64MB")
    parser.add_argument("--window", default="256MB")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three reads")
    parser.add_argument(
        "--max-rss", default="none", help="a budget per process for both reads, e.g. 256MB"
    )
    parser.add_argument("--resume-samples", default="10M")
    parser.add_argument("--world", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where to write the data (a temp dir)")
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    parser.add_argument("--child", choices=("one", "mix"), help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.total, args.shard_size, args.window = "8MB", "256KB", "2MB"
        args.resume_samples, args.world, args.workers = "200k", 8, 1
        args.repeats = 2

    total = parse_size(args.total, "--total")
    samples = total // args.sample_bytes
    per_source = samples // args.sources
    samples = per_source * args.sources
    shard_size = parse_size(args.shard_size, "--shard-size")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        one = root / "one"
        write(one, samples, args.sample_bytes, shard_size, 0)
        parts = [root / f"s{i}" for i in range(args.sources)]
        for i, path in enumerate(parts):
            write(path, per_source, args.sample_bytes, shard_size, i)
        os.sync()  # written back once: no read starts with dirty pages it cannot drop
        load_before = os.getloadavg()[0]
        kinds = {"one": [one], "mix1": [one], "mix": parts}
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        names = list(kinds)
        for round_ in range(args.repeats):
            # rotated, so no kind always reads first (or right after the same other)
            for kind in names[round_ % 3 :] + names[: round_ % 3]:
                child_kind = "one" if kind == "one" else "mix"
                runs[kind].append(run_child(child_kind, kinds[kind], args))
        load_after = os.getloadavg()[0]
    resumed = resume(count(args.resume_samples), args.sources, args.world, args.batch_size)

    def rate(result: dict[str, Any]) -> float:
        return result["samples"] / result["seconds"]

    def median(values: list[float]) -> float:
        return float(np.median(values))

    def ratios(kind: str) -> list[float]:  # within each round
        return [rate(m) / rate(b) for m, b in zip(runs[kind], runs["one"], strict=True)]

    def ratio_text(kind: str) -> str:
        values = ratios(kind)
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    baseline = {
        "rate": median([rate(r) for r in runs["one"]]),
        "peak_rss": max(r["peak_rss"] for r in runs["one"]),
    }
    mix_one = {
        "rate": median([rate(r) for r in runs["mix1"]]),
        "peak_rss": max(r["peak_rss"] for r in runs["mix1"]),
    }
    mix_many = {
        "rate": median([rate(r) for r in runs["mix"]]),
        "peak_rss": max(r["peak_rss"] for r in runs["mix"]),
    }
    resident = [r["resident"] for rs in runs.values() for r in rs]
    resident_text = (
        "not measurable here"
        if any(r is None for r in resident)
        else f"at most {max(resident):.1%} of the files' bytes"
    )
    mb = 1e6
    rows = [
        [
            "one dataset, ShardSampler (baseline)",
            f"{baseline['rate']:,.0f}",
            "1.00",
            f"{baseline['peak_rss'] / mb:,.0f}",
        ],
        [
            "Mix of 1 source",
            f"{mix_one['rate']:,.0f}",
            ratio_text("mix1"),
            f"{mix_one['peak_rss'] / mb:,.0f}",
        ],
        [
            f"Mix of {args.sources} sources",
            f"{mix_many['rate']:,.0f}",
            ratio_text("mix"),
            f"{mix_many['peak_rss'] / mb:,.0f}",
        ],
    ]
    table = markdown_table(
        ["read (cold cache)", "samples/s (median)", "x baseline (range)", "peak RSS MB"], rows
    )
    growth = (mix_many["peak_rss"] - mix_one["peak_rss"]) / mb
    new_world = max(1, args.world * 3 // 4)
    resume_rows = [
        ["fresh epoch, first batch (baseline)", f"{resumed['fresh_first_batch_s'] * 1e3:,.0f}"],
        [
            f"resume at {args.world} ranks, first batch",
            f"{resumed[f'resume_{args.world}_s'] * 1e3:,.0f}",
        ],
        [
            f"resume at {new_world} ranks, first batch",
            f"{resumed[f'resume_{new_world}_s'] * 1e3:,.0f}",
        ],
    ]
    body = "\n\n".join(
        [
            f"`{command_line()}`; {machine_line()}; load average {load_before:.1f} before, "
            f"{load_after:.1f} after the reads.",
            f"{format_size(per_source * args.sample_bytes * args.sources)} in "
            f"{args.sample_bytes}-byte samples, {args.workers} DataLoader workers, batch "
            f"{args.batch_size}, window {args.window}, shards of {args.shard_size}, "
            f"max_rss {args.max_rss} (one budget for the mixture), each read from a cold "
            f"page cache in a process of its own; {args.repeats} rounds in rotated order, "
            "medians of samples/s and of the ratios within a round (range in brackets); "
            f"resident after each drop: {resident_text}.",
            table,
            f"RSS growth from 1 to {args.sources} sources: {growth:+,.0f} MB "
            f"({mix_many['peak_rss'] / max(mix_one['peak_rss'], 1):.2f}x).",
            f"Resume: {count(args.resume_samples):,} samples in {args.sources} sources, state "
            f"of rank 0 of {args.world} saved half-way through the epoch: "
            f"{resumed['state_bytes']} bytes of JSON.",
            markdown_table(["resume", "ms"], resume_rows),
        ]
    )
    print(body)
    if args.write and not args.quick:
        replace_section(HEADING, body)


if __name__ == "__main__":
    main()
