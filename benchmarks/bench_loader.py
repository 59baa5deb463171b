"""Batches end to end (issue 13): every way to the training loop, as ratios in one run.

For 4 KB and 16 KB samples in raw mmap, LMDB, HDF5 and Zarr datasets (``--size``
each, warm page cache, random order, batch 256), measures samples/s of

- a numpy fancy-index gather from the same samples held in RAM (the ceiling);
- ``ds.read_batch(indices)``;
- the README's line ``DataLoader(ds, batch_size=256, shuffle=True, num_workers=N)``,
  N = 0 and 2 (and with 2 workers whose batches the main process copies out of their
  slots instead of taking views, ``shardio.loading.handover.COPY_OUT``);
- ``shardio.Loader(ds, 256, shuffle=True, threads=T)``, T = 1, 2 and 4;
- the torch DataLoader over a hand-written Dataset (per-sample ``np.memmap[i]``,
  ``txn.get``, ``h5ds[i]``, ``zarr_array[i]``; :mod:`shardio.tools.bench.raw`), N = 0 and 2.

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
import statistics
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
from shardio.loading import handover
from shardio.tools.bench import raw_reader
from shardio.tools.bench.synthetic import synthetic_batches, write_synthetic

HEADING = "Batches end to end: DataLoader, workers and threads (issue 13)"
TARGETS_HEADING = "The last hop: workers and threads against read_batch (issue 24)"
BATCH = 256
FORMATS = ("mmap", "lmdb", "hdf5", "zarr")
#: The columns of a result row after what was read and how (see ``table``).
RESULT_COLUMNS = [
    "samples/s",
    "of RAM gather",
    "of read_batch",
    "CPU / 1k samples",
    "CPU vs hand-written, 2 workers",
    "peak RSS / PSS",
]
CONFIGS = (
    "RAM gather (ceiling)",
    "read_batch",
    "DataLoader line, 0 workers",
    "DataLoader line, 1 worker",
    "DataLoader line, 2 workers",
    "DataLoader line, 2 workers, first epoch",
    "DataLoader line, 2 workers, pin_memory",
    "DataLoader line, 2 workers, slots copied out",
    "Loader, 1 thread",
    "Loader, 2 threads",
    "Loader, 4 threads",
    'Loader, "auto" threads',
    "hand-written Dataset + DataLoader, 0 workers",
    "hand-written Dataset + DataLoader, 2 workers",
)
#: The configurations whose ratios to read_batch the issue's targets judge (``--quick``
#: and ``--targets`` run these only).
TARGETS = (
    "read_batch",
    "DataLoader line, 0 workers",
    "DataLoader line, 2 workers",
    "DataLoader line, 2 workers, slots copied out",
    "Loader, 1 thread",
    "Loader, 2 threads",
    'Loader, "auto" threads',
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
        self._start = dict(self._cpu)  # CPU the processes running now had used so far
        self._thread.start()
        return self

    def stop(self) -> float:
        """CPU seconds used since :meth:`start` by every process seen."""
        self._sample()
        self._stop.set()
        self._thread.join()
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._cpu.items())


def random_sampler(ds: Any) -> RandomSampler:
    """One long random pass (many permutations in a row, as ``shuffle=True`` draws one),
    so DataLoader workers start once, before the clock, as in a long epoch."""
    generator = torch.Generator().manual_seed(0)
    return RandomSampler(ds, num_samples=50 * len(ds), generator=generator)


def epochs(loader: Iterable[Any]) -> Iterable[Any]:
    """``loader``'s batches, epoch after epoch (a new ``iter()`` each, as a training
    loop does: persistent workers carry over, the rest starts again)."""
    while True:
        yield from loader


def first_epoch(ds: ShardedDataset, workers: int) -> dict[str, float]:
    """The README line's first epoch, from ``iter()`` (worker start included) to its
    last batch."""
    monitor = TreeMonitor().start()
    began = time.perf_counter()
    count = sum(labels(b) for b in DataLoader(ds, BATCH, shuffle=True, num_workers=workers))
    elapsed = time.perf_counter() - began
    cpu = monitor.stop()
    return {
        "rate": count / elapsed,
        "cpu_per_1k": 1000 * cpu / count,
        "peak_rss": monitor.peak_rss,
        "peak_pss": monitor.peak_pss,
    }


def gathers(step: Callable[[np.ndarray], Any], count: int) -> Iterable[Any]:
    """``step`` over random batches of indices below ``count``, without end."""
    order = np.random.default_rng(0).permutation(count)
    batches = [order[i : i + BATCH] for i in range(0, count - BATCH + 1, BATCH)]
    while True:
        for batch in batches:
            yield step(batch)


def labels(batch: Any) -> int:
    return len(batch["label"])


def _run(config: str, path: str, ram: dict[str, np.ndarray], seconds: float) -> dict[str, float]:
    """One measurement of a shardio configuration, in this (forked) process."""
    torch.set_num_threads(1)
    ds = ShardedDataset(path)
    workers = 2 if "2 workers" in config else 1 if "1 worker" in config else 0
    loader: Iterable[Any]
    if config == "RAM gather (ceiling)":
        loader = gathers(lambda b: {"data": ram["data"][b], "label": ram["label"][b]}, len(ds))
    elif config == "read_batch":
        loader = gathers(ds.read_batch, len(ds))
    elif config.endswith("first epoch"):
        return first_epoch(ds, workers)
    elif config.startswith("DataLoader line"):
        # "slots copied out": the main process copies each batch out of its worker's slot
        # (the other choice of shardio.loading.handover) instead of handing the loop views.
        handover.COPY_OUT = "copied out" in config
        # The README's line, epoch after epoch with persistent workers; the first
        # epoch is untimed (see first_epoch for it).
        line = DataLoader(
            ds,
            batch_size=BATCH,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory="pin_memory" in config,
        )
        loader = epochs(line)
    elif config.startswith("Loader"):
        word = config.split(", ")[1].split()[0]
        threads: Any = word.strip('"') if word.startswith('"') else int(word)
        loader = Loader(ds, BATCH, sampler=random_sampler(ds), threads=threads)
    else:
        loader = DataLoader(
            HandWritten(ds), batch_size=BATCH, sampler=random_sampler(ds), num_workers=workers
        )
    # NOTE: one untimed pass first: each process maps its own page-table entries of the
    # files (the page cache is already warm) once, as early in a long epoch.
    return timed(loader, len(ds) // BATCH, seconds, labels)


Runner = Callable[[str, str, dict[str, np.ndarray], float], dict[str, float]]


def _child(
    run: Runner, config: str, path: str, ram: dict[str, np.ndarray], seconds: float, queue: Any
) -> None:
    try:
        queue.put(run(config, path, ram, seconds))
    except BaseException as exc:
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(
    config: str, path: str, ram: dict[str, np.ndarray], seconds: float, run: Runner = _run
) -> dict[str, Any]:
    """``run(config, ...)`` in a fresh forked process."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    proc = context.Process(target=_child, args=(run, config, path, ram, seconds, queue))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    return result  # type: ignore[no-any-return]


def timed(
    loader: Iterable[Any], warm_batches: int, seconds: float, count_of: Callable[[Any], int]
) -> dict[str, float]:
    """Rate, CPU and peak memory of ``loader`` after ``warm_batches`` untimed batches
    (or ``2 * seconds`` of them, for loaders too slow to finish a pass in that time)."""
    iterator = iter(loader)
    warm_until = time.perf_counter() + 2 * seconds
    for _ in range(warm_batches):
        next(iterator)
        if time.perf_counter() > warm_until:
            break
    monitor = TreeMonitor().start()
    began = time.perf_counter()
    count = 0
    for batch in iterator:
        count += count_of(batch)
        if time.perf_counter() - began >= seconds:
            break
    elapsed = time.perf_counter() - began
    cpu = monitor.stop()
    return {
        "rate": count / elapsed,
        "cpu_per_1k": 1000 * cpu / count,
        "peak_rss": monitor.peak_rss,
        "peak_pss": monitor.peak_pss,
    }


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
    run: Runner = _run,
) -> dict[str, list[dict[str, Any]]]:
    """Every configuration on one dataset, in alternation, ``rounds`` times."""
    num_samples = size // sample_bytes
    path = os.path.join(root, f"{fmt}-{sample_bytes}")
    write_synthetic(path, fmt, num_samples, sample_bytes, shard_size="128MB")
    warm(path)
    ram = in_ram(num_samples, sample_bytes)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(rounds):
        for config in configs:
            runs[config].append(measure(config, path, ram, seconds, run))
    shutil.rmtree(path)
    for config, results in runs.items():
        print(
            f"{fmt:5s} {format_size(sample_bytes):>7s} {config:46s} "
            + " ".join(f"{r.get('rate', 0):9,.0f}" for r in results),
            flush=True,
        )
    return runs


def _median_ratio(results: list[dict[str, Any]], reference: list[dict[str, Any]], key: str) -> str:
    """Median over rounds of this run's ``key`` over the reference's in the same round."""
    ratios = [
        r[key] / ref[key]
        for r, ref in zip(results, reference, strict=True)
        if key in r and ref.get(key)
    ]
    return f"{statistics.median(ratios):.2f}x" if ratios else "-"


def table(
    fmt: str,
    sample_bytes: int,
    runs: dict[str, list[dict[str, Any]]],
    ceiling: str = "RAM gather (ceiling)",
    baseline: str = "hand-written Dataset + DataLoader, 2 workers",
) -> list[list[str]]:
    """Rows: median rate and CPU, ratios as medians of per-round ratios, peak memory."""
    rows = []
    none: list[dict[str, Any]] = [{} for _ in next(iter(runs.values()))]
    for config, results in runs.items():
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            rows.append([fmt, format_size(sample_bytes), config, errors[0][:80], *[""] * 5])
            continue
        rows.append(
            [
                fmt,
                format_size(sample_bytes),
                config,
                f"{statistics.median(r['rate'] for r in results):,.0f}",
                _median_ratio(results, runs.get(ceiling, none), "rate"),
                _median_ratio(results, runs.get("read_batch", none), "rate"),
                f"{statistics.median(r['cpu_per_1k'] for r in results) * 1000:.0f} ms",
                _median_ratio(results, runs.get(baseline, none), "cpu_per_1k"),
                f"{format_size(max(r['peak_rss'] for r in results))} / "
                f"{format_size(max(r['peak_pss'] for r in results))}",
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
    parser.add_argument(
        "--targets",
        action="store_true",
        help="only the configurations the issue's targets judge, mmap and lmdb",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small, short")
    args = parser.parse_args()
    if args.root is not None and not os.path.isdir(args.root):
        parser.error(f"--root {args.root}: no such directory (give one that exists)")
    if args.quick:
        args.size, args.seconds, args.rounds = "32MB", 0.5, 1
        args.sample_bytes, args.formats = "16384", "mmap,lmdb"
    if args.targets:
        args.formats = "mmap,lmdb"
    configs = (
        list(TARGETS)
        if args.targets or (args.quick and args.configs == "all")
        else list(CONFIGS)
        if args.configs == "all"
        else [CONFIGS[int(i)] for i in args.configs.split(",")]
    )
    print(f"load average before: {_common.load_line()}", flush=True)
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
    body = _common.markdown_table(["backend", "sample", "path", *RESULT_COLUMNS], rows)
    print(body)
    print(f"load average after: {_common.load_line()}", flush=True)
    if args.write:
        text = (
            f"Command: `{_common.command_line()}`\n"
            f"Machine: {_common.machine_line()}; load average {_common.load_line()} "
            "at the end (judge targets only below 1.5).\n"
            f"Each dataset {format_size(size)}, warm page cache, random order, batch {BATCH}; "
            f"rates and CPU are medians of {args.rounds} alternated runs of about "
            f"{args.seconds:g} s, each in a fresh process, ratios the medians of the "
            f"ratios within a round; peak memory the highest of the runs.\n\n{body}\n"
        )
        # --targets figures judge issue 24's targets: their own section, so the full
        # table of issue 13 stays as measured.
        _common.replace_section(TARGETS_HEADING if args.targets else HEADING, text)


if __name__ == "__main__":
    main()
