"""Batches end to end (issue 13): every way to the training loop, as ratios in one run.

For 4 KB and 16 KB samples in raw mmap, LMDB, HDF5 and Zarr datasets (``--size``
each, warm page cache, random order, batch 256), measures samples/s of

- a numpy fancy-index gather from the same samples held in RAM (the ceiling);
- ``ds.read_batch(indices)``;
- the README's line ``DataLoader(ds, batch_size=256, shuffle=True, num_workers=N)``,
  N = 0 and 2;
- ``shardio.Loader(ds, 256, shuffle=True, threads=T)``, T = 1, 2 and 4;
- the torch DataLoader over a hand-written Dataset (per-sample ``np.memmap[i]``,
  ``txn.get``, ``h5ds[i]``, ``zarr_array[i]``; :mod:`shardio.bench.raw`), N = 0 and 2.

Every measurement runs in a fresh forked process that reads for about ``--seconds``;
the configurations of a case run in alternation, ``--rounds`` times, and the table
shows the median rate. CPU is user + sys seconds of that process and its DataLoader
workers (psutil) per 1,000 samples; peak RSS and PSS are sampled every 20 ms and
summed over the same processes.

    python benchmarks/bench_loader.py --write
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common

from shardio import Loader, ShardedDataset, format_size, parse_size
from shardio.bench import raw_reader
from shardio.bench.synthetic import synthetic_batches, write_synthetic

HEADING = "Batches end to end: DataLoader, workers and threads (issue 13)"
BATCH = 256
FORMATS = ("mmap", "lmdb", "hdf5", "zarr")
CONFIGS = (
    "RAM gather (ceiling)",
    "read_batch",
    "DataLoader line, 0 workers",
    "DataLoader line, 2 workers",
    "Loader, 1 thread",
    "Loader, 2 threads",
    "Loader, 4 threads",
    "hand-written Dataset + DataLoader, 0 workers",
    "hand-written Dataset + DataLoader, 2 workers",
)


class HandWritten(Dataset[Any]):
    """The Dataset a user writes without shardio: one backend call per ``ds[i]``."""

    def __init__(self, ds: ShardedDataset) -> None:
        self.raw = raw_reader(ds)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> Any:
        return self.raw.read(index)


# --------------------------------------------------------------- measurement
def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def _pss(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of ``pid`` in bytes from smaps_rollup (0, 0 once it is gone)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


class TreeMonitor:
    """Peak RSS and PSS summed over this process and its children, and their CPU."""

    def __init__(self) -> None:
        self.root = psutil.Process()
        self.peak_rss = self.peak_pss = 0
        self._cpu: dict[int, float] = {}  # last CPU seconds seen per process
        self._start: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = pss = 0
        for proc in _tree(self.root):
            r, p = _pss(proc.pid)
            rss, pss = rss + r, pss + p
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            self._cpu[proc.pid] = times.user + times.system
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def start(self) -> TreeMonitor:
        self._sample()
        self._start = {pid: cpu for pid, cpu in self._cpu.items()}  # already running
        self._thread.start()
        return self

    def stop(self) -> float:
        """CPU seconds used since :meth:`start` by every process seen."""
        self._sample()
        self._stop.set()
        self._thread.join()
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._cpu.items())


def _run(config: str, path: str, ram: dict[str, np.ndarray], seconds: float) -> dict[str, float]:
    """One measurement, in this (forked) process."""
    torch.set_num_threads(1)
    ds = ShardedDataset(path)
    order = np.random.default_rng(0).permutation(len(ds))
    batches = [order[i : i + BATCH] for i in range(0, len(order) - BATCH + 1, BATCH)] * 50
    # NOTE: one long random pass (many permutations in a row, as shuffle=True draws one),
    # so DataLoader workers start once, before the clock, as in a long epoch.
    sampler = RandomSampler(
        ds, num_samples=50 * len(ds), generator=torch.Generator().manual_seed(0)
    )
    workers = 2 if "2 workers" in config else 0
    loader: Iterable[Any] | None = None
    if config.startswith("DataLoader line"):
        loader = DataLoader(ds, batch_size=BATCH, sampler=sampler, num_workers=workers)
    elif config.startswith("Loader"):
        threads = int(config.split(", ")[1].split()[0])
        loader = Loader(ds, BATCH, sampler=sampler, threads=threads)
    elif config.startswith("hand-written"):
        loader = DataLoader(HandWritten(ds), batch_size=BATCH, sampler=sampler, num_workers=workers)
    # NOTE: one untimed pass first: each process faults in its own page-table entries
    # of the mapped files (page cache already warm), once, as early in a long epoch.
    warm_batches = len(ds) // BATCH
    read: Callable[[], int]
    if config in ("RAM gather (ceiling)", "read_batch"):

        def gather(b: np.ndarray) -> Any:
            return (ram["data"][b], ram["label"][b])

        step = gather if config.startswith("RAM") else ds.read_batch
        for b in batches[:warm_batches]:
            step(b)

        def read() -> int:
            return _common.timed_rate(step, batches[warm_batches:], seconds)[1]
    else:
        assert loader is not None
        iterator = iter(loader)
        for _ in range(warm_batches):
            next(iterator)  # workers and threads started, pages mapped: not timed

        def read() -> int:
            count = 0
            for batch in iterator:
                count += len(batch["label"])
                if time.perf_counter() - began >= seconds:
                    break
            return count

    monitor = TreeMonitor().start()
    began = time.perf_counter()
    count = read()
    elapsed = time.perf_counter() - began
    cpu = monitor.stop()
    return {
        "rate": count / elapsed,
        "cpu_per_1k": 1000 * cpu / count,
        "peak_rss": monitor.peak_rss,
        "peak_pss": monitor.peak_pss,
    }


def _child(config: str, path: str, ram: dict[str, np.ndarray], seconds: float, queue: Any) -> None:
    try:
        queue.put(_run(config, path, ram, seconds))
    except BaseException as exc:
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(config: str, path: str, ram: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    proc = context.Process(target=_child, args=(config, path, ram, seconds, queue))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    return result  # type: ignore[no-any-return]


def warm(path: str) -> None:
    """Read every file of ``path`` once, so the page cache holds it."""
    for directory, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(directory, name), "rb") as handle:
                while handle.read(1 << 24):
                    pass


def in_ram(num_samples: int, sample_bytes: int) -> dict[str, np.ndarray]:
    parts = list(synthetic_batches(num_samples, sample_bytes))
    return {
        "data": np.concatenate([np.ascontiguousarray(p["data"]) for p in parts]),
        "label": np.concatenate([p["label"] for p in parts]),
    }


# ------------------------------------------------------------------- report
def run_case(
    root: str,
    fmt: str,
    sample_bytes: int,
    size: int,
    seconds: float,
    rounds: int,
    configs: list[str],
) -> dict[str, dict[str, Any]]:
    num_samples = size // sample_bytes
    path = os.path.join(root, f"{fmt}-{sample_bytes}")
    write_synthetic(path, fmt, num_samples, sample_bytes, shard_size="128MB")
    warm(path)
    ram = in_ram(num_samples, sample_bytes)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(rounds):
        for config in configs:
            runs[config].append(measure(config, path, ram, seconds))
    shutil.rmtree(path)
    summary: dict[str, dict[str, Any]] = {}
    for config, results in runs.items():
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            summary[config] = {"error": errors[0]}
            continue
        best = sorted(results, key=lambda r: r["rate"])[len(results) // 2]
        summary[config] = {
            **best,
            "rates": [r["rate"] for r in results],
        }
        print(
            f"{fmt:5s} {format_size(sample_bytes):>7s} {config:46s} "
            + " ".join(f"{r['rate']:9,.0f}" for r in results),
            flush=True,
        )
    return summary


def table(fmt: str, sample_bytes: int, summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    ceiling = summary.get("RAM gather (ceiling)", {}).get("rate")
    read_batch = summary.get("read_batch", {}).get("rate")
    baseline = summary.get("hand-written Dataset + DataLoader, 2 workers", {})
    rows = []
    for config, result in summary.items():
        if "error" in result:
            rows.append(
                [fmt, format_size(sample_bytes), config, result["error"][:80], "", "", "", "", ""]
            )
            continue
        rate = result["rate"]
        cpu = result["cpu_per_1k"]
        rows.append(
            [
                fmt,
                format_size(sample_bytes),
                config,
                f"{rate:,.0f}",
                f"{rate / ceiling:.2f}x" if ceiling else "-",
                f"{rate / read_batch:.2f}x" if read_batch else "-",
                f"{cpu * 1000:.0f} ms",
                f"{cpu / baseline['cpu_per_1k']:.2f}x" if baseline.get("cpu_per_1k") else "-",
                f"{format_size(result['peak_rss'])} / {format_size(result['peak_pss'])}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256MB", help="bytes of each dataset")
    parser.add_argument("--sample-bytes", default="4096,16384")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default="all", help="comma-separated indices into CONFIGS")
    parser.add_argument("--root", default=None, help="where the datasets are written")
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    configs = (
        list(CONFIGS)
        if args.configs == "all"
        else [CONFIGS[int(i)] for i in args.configs.split(",")]
    )
    size = parse_size(args.size, "--size")
    root = tempfile.mkdtemp(prefix="bench-loader-", dir=args.root)
    rows: list[list[str]] = []
    try:
        for sample_bytes in (int(s) for s in args.sample_bytes.split(",")):
            for fmt in args.formats.split(","):
                summary = run_case(
                    root, fmt, sample_bytes, size, args.seconds, args.rounds, configs
                )
                rows += table(fmt, sample_bytes, summary)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    header = [
        "backend",
        "sample",
        "path",
        "samples/s",
        "of RAM gather",
        "of read_batch",
        "CPU / 1k samples",
        "CPU vs hand-written, 2 workers",
        "peak RSS / PSS",
    ]
    body = _common.markdown_table(header, rows)
    print(body)
    if args.write:
        text = (
            f"Command: `{_common.command_line()}`\n"
            f"Machine: {_common.machine_line()}; the 2 cores were shared with other "
            "engineers' test runs, so compare within a run.\n"
            f"Each dataset {format_size(size)}, warm page cache, random order, batch {BATCH}; "
            f"each figure the median of {args.rounds} alternated runs of about "
            f"{args.seconds:g} s in a fresh process.\n\n{body}\n"
        )
        _common.replace_section(HEADING, text)


if __name__ == "__main__":
    main()
