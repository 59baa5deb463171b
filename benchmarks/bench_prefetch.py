"""Does the Prefetcher hide loading and copying behind the training step?

CPU (``--device cpu``): a loader that sleeps L per batch and a step that computes for C.
Without prefetching a step costs about C + L; the target with the Prefetcher is
<= 1.1 x max(C, L).

CUDA (``--device cuda``): pageable host batches whose host-to-device copy takes about H
and a matmul step of about C.  The baseline is what a user writes without it,
``batch.to("cuda")`` then the step: about C + H.  The target is <= 1.1 x max(C, H).

Both variants run the baseline and the Prefetcher in the same process, alternate them
over ``--repeats`` rounds and report medians, so the ratios are comparable on a busy
machine.  Example::

    python benchmarks/bench_prefetch.py --device cpu --pairs 20:20,10:20,20:10,5:20
    python benchmarks/bench_prefetch.py --device cuda --copy-ms 4,16 --ratios 0.5,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from shardio import Prefetcher

TARGET = 1.1


@dataclass
class Row:
    """One configuration's medians, in milliseconds per step."""

    compute_ms: float
    feed_ms: float  # L (loader sleep) on the CPU, H (measured copy) on CUDA
    baseline_ms: float
    prefetch_ms: float

    @property
    def ideal_ms(self) -> float:
        return max(self.compute_ms, self.feed_ms)

    @property
    def vs_ideal(self) -> float:
        return self.prefetch_ms / self.ideal_ms

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.prefetch_ms


# --- CPU -------------------------------------------------------------------------


class SleepyLoader:
    """``steps`` batches of an image-like uint8 array and labels, each after sleeping L."""

    def __init__(self, steps: int, latency_s: float, batch_size: int = 64) -> None:
        rng = np.random.default_rng(0)
        self.steps = steps
        self.latency_s = latency_s
        self.images = rng.integers(0, 255, (batch_size, 3, 32, 32), dtype=np.uint8)
        self.labels = rng.integers(0, 10, batch_size, dtype=np.int64)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for _ in range(self.steps):
            time.sleep(self.latency_s)  # I/O latency: a read from disk or object store
            yield {"image": self.images.copy(), "label": self.labels.copy()}


def cpu_step(compute_s: float, kind: str) -> Callable[[Any], None]:
    """A step of ``compute_s``: torch matmuls until the time is up, or a plain sleep."""
    a = torch.randn(256, 256) / 16

    def step(batch: Any) -> None:
        assert isinstance(batch["image"], torch.Tensor)
        if kind == "sleep":
            time.sleep(compute_s)
            return
        end = time.perf_counter() + compute_s
        x = batch["image"].reshape(len(batch["image"]), -1)[:, :256].float()
        while time.perf_counter() < end:
            x = torch.tanh(x @ a)

    return step


def run_cpu(args: argparse.Namespace) -> list[Row]:
    torch.set_num_threads(args.threads)
    rows = []
    for pair in args.pairs.split(","):
        compute_ms, latency_ms = (float(v) for v in pair.split(":"))
        loader = SleepyLoader(args.steps, latency_ms / 1000)
        step = cpu_step(compute_ms / 1000, args.step)
        # C and L as the baseline actually measured them: on a busy machine a 20 ms sleep
        # or compute loop overruns, and the target is against what really happened.
        loading: list[float] = []
        stepping: list[float] = []

        def baseline(
            loader: SleepyLoader = loader,
            step: Callable[[Any], None] = step,
            loading: list[float] = loading,
            stepping: list[float] = stepping,
        ) -> None:
            load_s = step_s = 0.0
            iterator = iter(loader)
            while True:
                started = time.perf_counter()
                batch = next(iterator, None)
                if batch is None:
                    break
                tensors = {key: torch.from_numpy(value) for key, value in batch.items()}
                loaded = time.perf_counter()
                step(tensors)
                load_s += loaded - started
                step_s += time.perf_counter() - loaded
            loading.append(load_s)
            stepping.append(step_s)

        def prefetched(loader: SleepyLoader = loader, step: Callable[[Any], None] = step) -> None:
            for batch in Prefetcher(loader, device="cpu", depth=args.depth):
                step(batch)

        base, pre = alternate(baseline, prefetched, args.repeats)
        per_step = 1000 / args.steps
        rows.append(
            Row(
                statistics.median(stepping) * per_step,
                statistics.median(loading) * per_step,
                base / args.steps,
                pre / args.steps,
            )
        )
    return rows


# --- CUDA --------------------------------------------------------------------------


def measure_copy_s(host: np.ndarray, device: torch.device, repeats: int = 5) -> float:
    """Median seconds of the baseline's copy: a pageable ``.to(device)``."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.from_numpy(host).to(device)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cuda_step(compute_s: float, device: torch.device) -> Callable[[torch.Tensor], None]:
    """A step of about ``compute_s`` on the GPU: a calibrated number of matmuls."""
    a = torch.randn(2048, 2048, device=device)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(20):
        a = torch.tanh(a @ a) / 2048
    torch.cuda.synchronize(device)
    per_matmul = (time.perf_counter() - start) / 20
    count = max(1, round(compute_s / per_matmul))

    def step(batch: torch.Tensor) -> None:
        y = a
        for _ in range(count):
            y = torch.tanh(y @ a) / 2048
        y.add_(batch[:1].float().mean())  # the step reads the batch

    return step


def run_cuda(args: argparse.Namespace) -> list[Row]:
    if not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA GPU, and torch.cuda.is_available() is False here")
    device = torch.device("cuda", torch.cuda.current_device())
    probe = np.ones(64 * 2**20, dtype=np.uint8)
    bandwidth = probe.nbytes / measure_copy_s(probe, device)  # bytes/s, pageable
    rows = []
    for copy_ms in (float(v) for v in args.copy_ms.split(",")):
        nbytes = int(bandwidth * copy_ms / 1000)
        rng = np.random.default_rng(0)
        # A few distinct host batches, reused: the copy cost does not depend on content.
        hosts = [rng.random(nbytes // 4, dtype=np.float32) for _ in range(4)]
        batches = [hosts[i % len(hosts)] for i in range(args.steps)]
        copy_s = measure_copy_s(hosts[0], device)
        for ratio in (float(v) for v in args.ratios.split(",")):
            step = cuda_step(ratio * copy_s, device)

            def baseline(batches: list[np.ndarray] = batches, step: Any = step) -> None:
                for host in batches:
                    step(torch.from_numpy(host).to(device))
                torch.cuda.synchronize(device)

            def prefetched(batches: list[np.ndarray] = batches, step: Any = step) -> None:
                for batch in Prefetcher(batches, device=device, depth=args.depth):
                    step(batch)
                torch.cuda.synchronize(device)

            compute_s = time_compute(step, device, hosts[0])
            base, pre = alternate(baseline, prefetched, args.repeats)
            rows.append(Row(compute_s * 1000, copy_s * 1000, base / args.steps, pre / args.steps))
    return rows


def time_compute(step: Callable[[torch.Tensor], None], device: torch.device, host: Any) -> float:
    """Median seconds of the step alone, on a batch already on the device."""
    batch = torch.from_numpy(host).to(device)
    times = []
    for _ in range(5):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(batch)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- shared --------------------------------------------------------------------------


def alternate(
    baseline: Callable[[], None], prefetched: Callable[[], None], repeats: int
) -> tuple[float, float]:
    """Median wall seconds of each, run alternately so both see the same machine load."""
    base, pre = [], []
    for _ in range(repeats):
        base.append(timed(baseline))
        pre.append(timed(prefetched))
    return statistics.median(base), statistics.median(pre)


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def report(rows: Iterable[Row], feed: str) -> str:
    lines = [
        f"| C ms | {feed} ms | no prefetch ms/step | Prefetcher ms/step | "
        f"Prefetcher / max(C, {feed}) | speedup | target <= {TARGET} |",
        "|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        verdict = "met" if row.vs_ideal <= TARGET else "MISSED"
        lines.append(
            f"| {row.compute_ms:.1f} | {row.feed_ms:.1f} | {row.baseline_ms:.1f} | "
            f"{row.prefetch_ms:.1f} | {row.vs_ideal:.3f} | {row.speedup:.2f}x | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=100, help="batches per epoch")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument("--depth", type=int, default=2, help="Prefetcher depth")
    parser.add_argument(
        "--pairs", default="20:20,10:20,20:10,5:20", help="CPU: C:L pairs in milliseconds"
    )
    parser.add_argument(
        "--step", choices=["compute", "sleep"], default="compute", help="CPU: kind of step"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU: torch intra-op threads for the step"
    )
    parser.add_argument("--copy-ms", default="4,16", help="CUDA: target copy times H in ms")
    parser.add_argument("--ratios", default="0.5,1,2", help="CUDA: C/H ratios")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)

    rows = run_cuda(args) if args.device == "cuda" else run_cpu(args)
    if args.device == "cuda":
        where = torch.cuda.get_device_name()
    else:
        where = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    print(f"# bench_prefetch --device {args.device} on {where}, torch {torch.__version__}")
    print(f"# {args.steps} steps per epoch, median of {args.repeats}, depth {args.depth}")
    print(report(rows, "L" if args.device == "cpu" else "H"))
    if args.json:
        with open(args.json, "w") as file:
            json.dump([{**asdict(r), "vs_ideal": r.vs_ideal} for r in rows], file, indent=2)


if __name__ == "__main__":
    main()
