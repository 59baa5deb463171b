"""Inside Lightning: one epoch from a cold page cache with ShardSampler's order vs
``shuffle=True``, and the time to resume mid-epoch from Lightning's loader state at 10M
samples.

Epoch: a Lightning ``Trainer`` (1 CPU device, a model that does nothing but take the
batch) trains one epoch over a dataset written once (``--size``, mmap shards), each
case in a fresh process after the dataset's pages are evicted from the page cache.
The baseline, measured in the same run, is the plain ``DataLoader(ds, shuffle=True)``
(Lightning's own ``RandomSampler``): random reads. The cases alternate, ``--repeats``
times, so drift on a shared machine hits both.

Resume: torchdata's ``StatefulDataLoader`` over ``ShardSampler`` (what Lightning saves
and restores), stopped half-way through an epoch of ``--resume-samples``; the time from
``load_state_dict`` to the first batch of the resumed loader, against the first batch
of a fresh epoch (the order is built in both). No data is read (an index dataset).

    python benchmarks/bench_frameworks.py --write       # 5-10 minutes, 4 GB on disk
    python benchmarks/bench_frameworks.py --quick       # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, machine_line, markdown_table, replace_section

from shardio.core.config import format_size, parse_size

CASES = ("shard-window", "shuffle=True")
BATCH = 64


def write_dataset(path: Path, n: int, sample_bytes: int, shard_size: int) -> None:
    from shardio import ShardWriter

    with ShardWriter(path, format="mmap", shard_size=shard_size) as writer:
        for start in range(0, n, 4096):
            rows = min(4096, n - start)
            x = np.full((rows, sample_bytes), start % 251, dtype=np.uint8)
            writer.write_batch({"x": x, "label": np.arange(start, start + rows)})


def drop_page_cache(path: Path) -> None:
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def epoch_in_lightning(path: str, case: str, workers: int, window: str) -> dict[str, Any]:
    """One cold epoch inside a Lightning Trainer (run in a child process)."""
    torch.set_num_threads(1)
    import lightning as L
    from torch.utils.data import DataLoader

    from shardio import ShardedDataset, ShardSampler

    ds = ShardedDataset(path, fields=["x", "label"])
    options: dict[str, Any] = {"batch_size": BATCH, "num_workers": workers}
    if case == "shuffle=True":
        loader = DataLoader(ds, shuffle=True, **options)
    else:
        loader = DataLoader(ds, sampler=ShardSampler(ds, seed=0, window=window), **options)

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.samples = 0

        def training_step(self, batch: dict[str, Any], index: int) -> torch.Tensor:
            self.samples += len(batch["label"])
            return self.w.sum() * 0.0

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = Model()
    drop_page_cache(Path(path))
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    return {"case": case, "samples": model.samples, "seconds": seconds}


def resume_time(n: int, shards: int) -> dict[str, float]:
    """Fresh first batch vs resumed first batch of a StatefulDataLoader at ``n`` samples."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from shardio import ShardSampler

    class Indices(torch.utils.data.Dataset[int]):
        def __len__(self) -> int:
            return n

        def __getitem__(self, index: int) -> int:
            return index

    base, extra = divmod(n, shards)
    lengths = [base + (s < extra) for s in range(shards)]
    nbytes = [m * 1024 for m in lengths]

    def loader() -> Any:
        sampler = ShardSampler(shard_lengths=lengths, shard_nbytes=nbytes)
        return StatefulDataLoader(Indices(), batch_size=BATCH, sampler=sampler)

    start = time.perf_counter()
    first = loader()
    it = iter(first)
    next(it)
    fresh = time.perf_counter() - start
    for _ in range(min(1000, n // BATCH // 2)):
        next(it)
    state = first.state_dict()
    size = len(json.dumps(state, default=str))
    start = time.perf_counter()
    second = loader()
    second.load_state_dict(state)
    resumed_first = next(iter(second))
    resumed = time.perf_counter() - start
    assert len(resumed_first) == BATCH
    return {"fresh_s": fresh, "resumed_s": resumed, "state_bytes": size}


def _count(text: str) -> int:
    """``"10M"`` -> 10_000_000 (k and M are powers of 1000)."""
    scale = {"k": 10**3, "M": 10**6}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _child(args: argparse.Namespace, case: str) -> dict[str, Any]:
    argv = [sys.executable, os.path.abspath(__file__), "--child", case, "--path", args.path]
    argv += ["--workers", str(args.workers), "--window", args.window]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{case} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="4GB", help="dataset size on disk")
    parser.add_argument("--sample-bytes", type=int, default=4096)
    parser.add_argument("--shard-size", default="256MB")
    parser.add_argument("--window", default="1GB", help="ShardSampler window")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--resume-samples", default="10M")
    parser.add_argument("--path", default=None, help="where the dataset is (written once)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.sample_bytes, args.shard_size = "8MB", 1024, "1MB"
        args.window, args.workers, args.repeats = "2MB", 0, 1
        args.resume_samples = "100k"
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.child:
        print(json.dumps(epoch_in_lightning(args.path, args.child, args.workers, args.window)))
        return
    size = parse_size(args.size, "size")
    if args.path is None:
        args.path = str(Path(tempfile.gettempdir()) / f"shardio-bench-frameworks-{size}")
    path = Path(args.path)
    n = size // args.sample_bytes
    if not path.exists():
        print(f"writing {n} samples of {args.sample_bytes} B to {path}", flush=True)
        write_dataset(path, n, args.sample_bytes, parse_size(args.shard_size, "shard_size"))
    load = os.getloadavg()
    print(f"{machine_line()}\nload average {load[0]:.2f}; dataset {format_size(size)}, {n} samples")

    results: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for case in CASES:
            result = _child(args, case)
            result["repeat"] = repeat
            assert result["samples"] == n, result  # one whole epoch, each sample once
            results.append(result)
            rate, seconds = n / result["seconds"], result["seconds"]
            print(f"  {case:>14}: {rate:>10.0f} samples/s ({seconds:.1f} s)")
    ratios = []
    for repeat in range(args.repeats):
        by = {r["case"]: r["seconds"] for r in results if r["repeat"] == repeat}
        ratios.append(by["shuffle=True"] / by["shard-window"])
    ratio = statistics.median(ratios)
    print(f"ShardSampler / shuffle=True epoch throughput inside Lightning: {ratio:.2f}x")

    resume_n = _count(args.resume_samples)
    timing = resume_time(resume_n, shards=1000)
    print(
        f"resume at {resume_n} samples: first batch {timing['resumed_s']:.2f} s resumed vs "
        f"{timing['fresh_s']:.2f} s fresh; loader state {timing['state_bytes']} B"
    )
    if args.write and not args.quick:
        rows = [
            [c, f"{statistics.median(n / r['seconds'] for r in results if r['case'] == c):.0f}"]
            for c in CASES
        ]
        body = "\n\n".join(
            [
                f"`{command_line()}`; {machine_line()}; load average {load[0]:.2f}.",
                f"One cold epoch of {format_size(size)} ({n} samples) in a Lightning Trainer, "
                f"{args.workers} workers, batch {BATCH}:",
                markdown_table(["order", "samples/s (median)"], rows),
                f"ShardSampler / shuffle=True: {ratio:.2f}x. Resume at {resume_n} samples "
                f"(StatefulDataLoader state, as Lightning saves it): first batch "
                f"{timing['resumed_s']:.2f} s vs {timing['fresh_s']:.2f} s for a fresh epoch; "
                f"state {timing['state_bytes']} B.",
            ]
        )
        replace_section("Frameworks: an epoch and a resume inside Lightning", body)


if __name__ == "__main__":
    main()
