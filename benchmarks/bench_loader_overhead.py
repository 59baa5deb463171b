"""The last hop's own cost per batch (issue 24): CPU beside the read, path by path.

`bench_loader.py` gives end-to-end rates; this script says where the CPU of each path
goes, per batch of 256, for 16 KiB samples in a raw mmap dataset and 4 KiB samples in
LMDB (warm page cache, random order):

- **main process**: CPU per batch of the process the loop runs in (all its threads:
  torch's queue feeder threads and the Loader's readers included) and of its main
  thread alone, for ``read_batch`` in a loop, the README line with 0 and 2 workers
  (persistent) and ``Loader`` with 1 and 2 threads; with 2 workers also the workers'
  CPU per batch;
- **beside the read**: each path's Python per batch with the reader's ``read_many``
  replaced by a step that returns the arrays it was given, in one process, so only the
  last hop's own work is left (the worker hand-over measured as a worker builds, pickles
  and the main process unpickles and frees one batch; torch's sampler included where
  the path has one).

Each configuration runs in a fresh forked process; figures are medians of ``--rounds``.
Judge them on a quiet machine only (the load average is printed beside them):

    python benchmarks/bench_loader_overhead.py          # about 4 minutes
    python benchmarks/bench_loader_overhead.py --quick  # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
import torch
import torch.utils.data
from torch.utils.data import DataLoader, RandomSampler, default_collate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common

from shardio import Loader, ShardedDataset
from shardio.tools.bench.synthetic import write_synthetic

BATCH = 256
CASES = (("mmap", 16384), ("lmdb", 4096))
MAIN_CONFIGS = (
    "read_batch",
    "DataLoader line, 0 workers",
    "DataLoader line, 2 workers",
    "Loader, 1 thread",
    "Loader, 2 threads",
)
STUB_CONFIGS = (
    "worker hand-over (build, pickle, unpickle, free)",
    "DataLoader line, 0 workers",
    "Loader, 1 thread",
    "Loader, 2 threads",
)


def _sampler(ds: ShardedDataset) -> RandomSampler:
    return RandomSampler(ds, num_samples=1000 * len(ds), generator=torch.Generator().manual_seed(0))


def _batches(ds: ShardedDataset, config: str) -> Iterator[Any]:
    if config == "read_batch":
        order = np.random.default_rng(0).permutation(len(ds))
        starts = range(0, len(ds) - BATCH + 1, BATCH)
        return (ds.read_batch(order[s : s + BATCH]) for _ in iter(int, 1) for s in starts)
    if config.startswith("DataLoader"):
        workers = 2 if "2 workers" in config else 0
        return iter(
            DataLoader(
                ds,
                BATCH,
                sampler=_sampler(ds),
                num_workers=workers,
                persistent_workers=workers > 0,
            )
        )
    threads = 2 if "2 threads" in config else 1
    return iter(Loader(ds, BATCH, sampler=_sampler(ds), threads=threads))


def _cpu(usage: Any) -> float:
    return float(usage.ru_utime + usage.ru_stime)


def _main(config: str, path: str, batches: int) -> dict[str, float]:
    """CPU per batch of this process, its main thread and its children (workers)."""
    torch.set_num_threads(1)
    ds = ShardedDataset(path)
    it = _batches(ds, config)
    for _ in range(20):  # workers started, pages mapped, rings and blocks made
        next(it)
    me = psutil.Process()
    children = sum(c.cpu_times().user + c.cpu_times().system for c in me.children())
    process, thread = _cpu(resource.getrusage(resource.RUSAGE_SELF)), time.thread_time()
    began = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - began
    process = _cpu(resource.getrusage(resource.RUSAGE_SELF)) - process
    thread = time.thread_time() - thread
    children = sum(c.cpu_times().user + c.cpu_times().system for c in me.children()) - children
    return {
        "rate": batches * BATCH / elapsed,
        "process": 1e6 * process / batches,
        "thread": 1e6 * thread / batches,
        "workers": 1e6 * children / batches,
    }


class _Worker:
    """Stands in for torch's worker info, so ``__getitems__`` takes the slot path."""

    id, num_workers, seed = 0, 1, 0


def _stubbed(config: str, path: str, batches: int) -> dict[str, float]:
    """Microseconds of the path's own Python per batch, the read replaced."""
    from multiprocessing.reduction import ForkingPickler

    torch.set_num_threads(1)
    ds = ShardedDataset(path)
    ds.reader.read_many = lambda indices, out=None: dict(out or {})  # type: ignore[method-assign]
    step: Callable[[], Any]
    if config.startswith("worker hand-over"):
        order = np.random.default_rng(0).permutation(len(ds))
        lists = [order[s : s + BATCH].tolist() for s in range(0, len(ds) - BATCH + 1, BATCH)]
        state = {"i": 0}
        worker = torch.utils.data._utils.worker

        def step() -> None:
            state["i"] += 1
            worker._worker_info = _Worker()  # type: ignore[assignment]
            items: Any = ds.__getitems__(lists[state["i"] % len(lists)])
            batch = default_collate(items)
            message = ForkingPickler.dumps(batch)
            del batch
            worker._worker_info = None
            received = ForkingPickler.loads(message)
            del received

    else:
        it = _batches(ds, config)

        def step() -> None:
            next(it)

    for _ in range(20):
        step()
    began = time.perf_counter()
    for _ in range(batches):
        step()
    return {"us": 1e6 * (time.perf_counter() - began) / batches}


def _child(run: Callable[..., dict[str, float]], args: tuple[Any, ...], queue: Any) -> None:
    try:
        queue.put(run(*args))
    except BaseException as exc:
        queue.put({"error": repr(exc)})


def _in_fork(run: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(run, args, queue))
    process.start()
    result = queue.get(timeout=600)
    process.join()
    if "error" in result:
        raise RuntimeError(f"{run.__name__}{args[:1]}: {result['error']}")
    return result


def _median(results: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256MB", help="bytes of each dataset")
    parser.add_argument("--batches", type=int, default=400, help="timed batches per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", default=None, help="where the datasets are written")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small, short")
    args = parser.parse_args()
    if args.quick:
        args.size, args.batches, args.rounds = "16MB", 40, 1
    print(f"# {_common.machine_line()}")
    print(f"# load average before: {_common.load_line()}")
    with tempfile.TemporaryDirectory(dir=args.root) as root:
        for fmt, sample_bytes in CASES:
            path = os.path.join(root, f"{fmt}-{sample_bytes}")
            write_synthetic(path, fmt, total_size=args.size, sample_bytes=sample_bytes)
            for name in os.listdir(path):  # warm the page cache
                full = os.path.join(path, name)
                if os.path.isfile(full):
                    with open(full, "rb") as f:
                        while f.read(1 << 24):
                            pass
            print(f"\n## {fmt}, {sample_bytes // 1024} KiB samples, batches of {BATCH}")
            print("\nCPU per batch (us): main process / its main thread / workers; rate")
            for config in MAIN_CONFIGS:
                runs = [_in_fork(_main, config, path, args.batches) for _ in range(args.rounds)]
                workers = _median(runs, "workers")
                print(
                    f"  {config:32s} {_median(runs, 'process'):8.0f} / "
                    f"{_median(runs, 'thread'):6.0f} / "
                    f"{workers if workers else float('nan'):6.0f}   "
                    f"{_median(runs, 'rate'):10,.0f} samples/s"
                )
            print("\nBeside the read (us per batch, read replaced):")
            for config in STUB_CONFIGS:
                runs = [
                    _in_fork(_stubbed, config, path, 5 * args.batches) for _ in range(args.rounds)
                ]
                print(f"  {config:50s} {_median(runs, 'us'):8.1f}")
    print(f"\n# load average after: {_common.load_line()}")


if __name__ == "__main__":
    main()
