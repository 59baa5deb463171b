"""A shardio dataset feeding a training step on the device, end to end.

Writes ``--samples`` image-like samples (uint8 3 x 64 x 64 and an int64 label) into
mmap shards with ``ShardWriter``, then in one process measures:

- ``compute only``: the same training step on one batch already on the device, the
  ceiling no loader can beat;
- each loader path in ``LOADERS``: ``ShardedDataset`` -> ``ShardSampler`` -> a
  ``DataLoader`` with ``--workers`` processes -> ``Prefetcher(device)`` -> the step.

For each it reports samples/s, samples/s against compute only, and the fraction of step
time spent waiting for data (the time blocked in ``next()``).  The step ends with a
device synchronisation, as a loop that logs its loss every step does.  Example::

    python benchmarks/bench_gpu_feed.py --device cuda --json feed.json
    python benchmarks/bench_gpu_feed.py --device cpu --samples 512 --steps 8 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from shardio import Prefetcher, ShardedDataset, ShardSampler, ShardWriter

IMAGE_SHAPE = (3, 64, 64)
CLASSES = 10


@dataclass
class Row:
    path: str
    samples_per_s: float
    vs_compute: float  # samples/s against compute only
    wait_fraction: float  # of the timed steps' wall time, blocked waiting for a batch
    steps: int


def write_dataset(path: str, samples: int, shards: int) -> None:
    """``samples`` random images and labels in ``shards`` mmap shards."""
    rng = np.random.default_rng(0)
    per_shard = -(-samples // shards)
    with ShardWriter(path, format="mmap", shard_size=per_shard * int(np.prod(IMAGE_SHAPE))) as w:
        for first in range(0, samples, 1024):
            count = min(1024, samples - first)
            w.write_batch(
                {
                    "image": rng.integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8),
                    "label": rng.integers(0, CLASSES, count, dtype=np.int64),
                }
            )


def make_step(device: torch.device) -> Callable[[dict[str, torch.Tensor]], None]:
    """A small convolutional classifier's training step (forward, backward, SGD)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, CLASSES),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(batch: dict[str, torch.Tensor]) -> None:
        images = batch["image"].float().div_(255)
        loss = nn.functional.cross_entropy(model(images), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


# --- loader paths: each returns an iterable of host batches {"image", "label"} ---------


class ColumnBatches(Dataset[dict[str, np.ndarray]]):
    """Index = a list of sample indices; item = that batch as columns (one read_batch)."""

    def __init__(self, dataset: ShardedDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> dict[str, np.ndarray]:
        return self.dataset.read_batch(np.asarray(indices))


def dataloader_samples(dataset: ShardedDataset, args: argparse.Namespace) -> Iterable[Any]:
    """The usual DataLoader: batched reads through ``__getitems__``, default collate."""
    sampler = ShardSampler(dataset, seed=0)
    return DataLoader(
        dataset,
        batch_size=args.batch,
        sampler=sampler,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )


def dataloader_columns(dataset: ShardedDataset, args: argparse.Namespace) -> Iterable[Any]:
    """Whole batches as columns: a BatchSampler hands each worker a batch of indices and
    the worker reads it with one ``read_batch`` (no per-sample dicts, no restacking)."""
    batches = BatchSampler(ShardSampler(dataset, seed=0), args.batch, drop_last=True)
    return DataLoader(
        ColumnBatches(dataset),
        batch_size=None,
        sampler=batches,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )


LOADERS: dict[str, Callable[[ShardedDataset, argparse.Namespace], Iterable[Any]]] = {
    "dataloader-samples": dataloader_samples,
    "dataloader-columns": dataloader_columns,
    # >>> ADD shardio.Loader HERE when it lands (another branch): an entry such as
    # "shardio-loader": lambda dataset, args: shardio.Loader(dataset, batch_size=args.batch,
    # workers=args.workers, ...), returning host batches {"image", "label"}. gpu_check.sh
    # runs every entry of this dict, so nothing else needs to change.
}


def endless(loader: Iterable[Any], device: torch.device, depth: int) -> Iterator[Any]:
    """Batches on ``device`` through the Prefetcher, epoch after epoch."""
    while True:
        empty = True
        for batch in Prefetcher(loader, device=device, depth=depth):
            empty = False
            yield batch
        if empty:
            raise SystemExit("the loader yields no batch: use more --samples or a smaller --batch")


def timed_run(
    batches: Iterator[dict[str, torch.Tensor]],
    step: Callable[[dict[str, torch.Tensor]], None],
    args: argparse.Namespace,
) -> tuple[float, float]:
    """(samples/s, wait fraction) over ``args.steps`` steps after ``args.warmup``."""
    for _ in range(args.warmup):  # workers start, caches fill, kernels compile
        step(next(batches))
    waited = 0.0
    start = time.perf_counter()
    for _ in range(args.steps):
        before = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - before
        step(batch)
    seconds = time.perf_counter() - start
    return args.steps * args.batch / seconds, waited / seconds


def compute_only(dataset: ShardedDataset, step: Any, args: argparse.Namespace) -> float:
    device = torch.device(args.device)
    columns = dataset.read_batch(np.arange(args.batch))
    resident = {k: torch.from_numpy(v).to(device) for k, v in columns.items()}

    def same_batch() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield resident

    return timed_run(same_batch(), step, args)[0]


def measure(path: str, args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    step = make_step(device)
    rows = []
    with ShardedDataset(path) as dataset:
        ceiling = compute_only(dataset, step, args)
        rows.append(Row("compute only (batch on the device)", ceiling, 1.0, 0.0, args.steps))
        for name in args.loaders.split(","):
            loader = LOADERS[name](dataset, args)
            batches = endless(loader, device, args.depth)
            try:
                rate, wait = timed_run(batches, step, args)
            finally:
                batches.close()  # type: ignore[attr-defined]
            rows.append(Row(name, rate, rate / ceiling, wait, args.steps))
            print(report(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def report(rows: list[Row]) -> str:
    lines = [
        "| path | samples/s | vs compute only | waiting for data |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.path} | {row.samples_per_s:,.0f} | {row.vs_compute:.2f}x | "
            f"{row.wait_fraction:.1%} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=20000, help="samples written")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--depth", type=int, default=2, help="Prefetcher depth")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--loaders", default=",".join(LOADERS), help="paths to measure")
    parser.add_argument("--dir", help="write the dataset here (default: a temporary dir)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    unknown = set(args.loaders.split(",")) - set(LOADERS)
    if unknown:
        parser.error(f"--loaders: unknown {sorted(unknown)}; known: {', '.join(LOADERS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} needs a CUDA GPU; torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"# bench_gpu_feed on {where}, torch {torch.__version__}: {args.samples} samples "
        f"uint8 {IMAGE_SHAPE} in {args.shards} mmap shards, batch {args.batch}, "
        f"{args.workers} workers, {args.steps} timed steps after {args.warmup}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-gpu-feed-", dir=args.dir) as tmp:
        path = os.path.join(tmp, "images.shardio")
        start = time.perf_counter()
        write_dataset(path, args.samples, args.shards)
        print(f"# wrote the dataset in {time.perf_counter() - start:.1f} s", flush=True)
        rows = measure(path, args)
    print(report(rows))
    if args.json:
        with open(args.json, "w") as file:
            json.dump([asdict(r) for r in rows], file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
