"""Bytes kept for backward and step time: exact vs 8-bit saved activations.

The reference transformer (4 layers, d_model 128, 4 heads) at sequence lengths 128, 512
and 1024, one batch size, in one process.  For each length it measures the bytes autograd
keeps for backward (``saved_tensors_hooks``) and the median time of a full training step
(forward, backward, AdamW), alternating the variants step by step so a busy machine slows
all of them alike.  Variants: ``exact`` (matmul-softmax-matmul, what a plain PyTorch
model keeps), ``exact-sdpa`` (torch's fused ``scaled_dot_product_attention``, which keeps
no N x N matrix) and ``8-bit`` (every saved activation head-wise quantized).

On CUDA it also reports ``torch.cuda.max_memory_allocated`` per step and the largest batch
whose step fits in ``--memory-limit``.  Targets (issue 8): 8-bit keeps <= 0.35x the exact
bytes at a step time <= 1.5x on the CPU.  Example::

    python benchmarks/bench_reference.py --write
    python benchmarks/bench_reference.py --device cuda --batch 32 --memory-limit 16GB --write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _common import command_line, machine_line, markdown_table, replace_section
from torch import Tensor

from shardio import format_size, parse_size
from shardio.tools.reference import ModelConfig, ReferenceTransformer, saved_activation_bytes

HEADING = "Reference model: 8-bit saved activations (issue 8)"
BYTES_TARGET = 0.35
TIME_TARGET = 1.5
VARIANTS = ("exact", "exact-sdpa", "8-bit")


@dataclass
class Row:
    length: int
    saved: dict[str, int]
    step_s: dict[str, float]
    peak: dict[str, int]
    largest_batch: dict[str, int]


def build(variant: str, length: int, device: torch.device) -> ReferenceTransformer:
    cfg = ModelConfig(
        vocab_size=16,
        num_classes=16,
        max_len=length,
        exact_attention="sdpa" if variant == "exact-sdpa" else "matmul",
    )
    torch.manual_seed(0)
    return ReferenceTransformer(cfg, quantize=variant == "8-bit").to(device)


def make_batch(size: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(size * 7919 + length)
    tokens = torch.randint(0, 16, (size, length), generator=gen)
    labels = torch.randint(0, 16, (size,), generator=gen)
    return tokens.to(device), labels.to(device)


def step_fn(model: ReferenceTransformer, batch: tuple[Tensor, Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens, labels = batch

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(tokens), labels).backward()
        optimizer.step()

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_peak(step: Callable[[], None], device: torch.device) -> int:
    """Peak allocated bytes during one step, above what was allocated before it."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def largest_batch(variant: str, length: int, limit: int, device: torch.device) -> int:
    """The largest batch (doubling, then bisection) whose step peaks within ``limit``."""

    def fits(size: int) -> bool:
        try:
            model = build(variant, length, device)
            return cuda_peak(step_fn(model, make_batch(size, length, device)), device) <= limit
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    low, high = 0, 1
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def measure(length: int, args: argparse.Namespace, device: torch.device) -> Row:
    batch = make_batch(args.batch, length, device)
    models = {v: build(v, length, device) for v in VARIANTS}
    tokens, labels = batch
    saved = {
        v: saved_activation_bytes(lambda m=m: F.cross_entropy(m(tokens), labels))
        for v, m in models.items()
    }
    steps = {v: step_fn(m, batch) for v, m in models.items()}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_index in range(args.warmup + args.steps):
        for variant, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if round_index >= args.warmup:
                times[variant].append(time.perf_counter() - start)
    row = Row(length, saved, {v: statistics.median(t) for v, t in times.items()}, {}, {})
    if device.type == "cuda":
        row.peak = {v: cuda_peak(steps[v], device) for v in VARIANTS}
        del models, steps
        limit = parse_size(args.memory_limit, "--memory-limit")
        row.largest_batch = {v: largest_batch(v, length, limit, device) for v in VARIANTS}
    return row


def report(rows: list[Row], args: argparse.Namespace, device: torch.device) -> str:
    table = []
    for row in rows:
        exact_bytes, exact_time = row.saved["exact"], row.step_s["exact"]
        cells = [str(row.length)]
        for v in VARIANTS:
            cells.append(f"{format_size(row.saved[v])} ({row.saved[v] / exact_bytes:.2f}x)")
        for v in VARIANTS:
            cells.append(f"{row.step_s[v] * 1e3:.0f} ms ({row.step_s[v] / exact_time:.2f}x)")
        table.append(cells)
    header = ["seq len", *(f"kept: {v}" for v in VARIANTS), *(f"step: {v}" for v in VARIANTS)]
    machine = machine_line() if device.type == "cpu" else torch.cuda.get_device_name(device)
    lines = [
        f"Command: `{command_line()}`",
        f"Machine: {machine}",
        f"Model: 4 layers, d_model 128, 4 heads, MLP 512, batch {args.batch}; step = forward, "
        f"backward, AdamW; median of {args.steps} alternated steps after {args.warmup} warm-up.",
        "",
        markdown_table(header, table),
        "",
        f"Targets: 8-bit kept bytes <= {BYTES_TARGET}x exact; step <= {TIME_TARGET}x exact.",
    ]
    if device.type == "cuda":
        peaks = [
            [str(r.length)]
            + [format_size(r.peak[v]) for v in VARIANTS]
            + [str(r.largest_batch[v]) for v in VARIANTS]
            for r in rows
        ]
        head = [
            "seq len",
            *(f"peak: {v}" for v in VARIANTS),
            *(f"batch in {args.memory_limit}: {v}" for v in VARIANTS),
        ]
        lines += ["", markdown_table(head, peaks)]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lengths", default="128,512,1024", help="sequence lengths")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-limit", default="8GB", help="CUDA only: for largest batch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        rows.append(measure(length, args, device))
        print(report(rows[-1:], args, device).split("\n\n")[1], flush=True)
    text = report(rows, args, device)
    print(text)
    if args.write:
        replace_section(HEADING + ("" if device.type == "cpu" else " on CUDA"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
