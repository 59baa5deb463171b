"""Cost of one epoch's order: ShardSampler vs torch's samplers, no data read.

For each sampler, builds one rank's order of an ``n``-sample dataset and iterates it,
in a fresh process so the peak RSS is its own. This is the per-epoch overhead a
sampler adds on top of reading.

    python benchmarks/bench_sampling_orders.py --samples 10000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

SAMPLERS = ("torch-random", "torch-distributed", "random", "shard-window")


class _Layout:
    """A dataset as a sampler sees it: a length, and samples and bytes per shard."""

    def __init__(self, n: int, shards: int, sample_bytes: int) -> None:
        base, extra = divmod(n, shards)
        self.shard_lengths = tuple(base + (s < extra) for s in range(shards))
        self.shard_nbytes = tuple(length * sample_bytes for length in self.shard_lengths)

    def __len__(self) -> int:
        return sum(self.shard_lengths)


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DistributedSampler, RandomSampler, Sampler

    from shardio.loading.sampling import ShardSampler

    data = _Layout(args.samples, args.shards, args.sample_bytes)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    sampler: Sampler[int]
    if name == "torch-random":
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(0))
    elif name == "torch-distributed":
        sampler = DistributedSampler(data, num_replicas=args.world, rank=0)  # type: ignore[arg-type]
    else:
        sampler = ShardSampler(
            data,
            order=name,  # type: ignore[arg-type]
            window=args.window,
            rank=0,
            world_size=args.world,
        )
    iterator = iter(sampler)
    first = next(iterator)
    to_first = time.perf_counter() - start
    count = 1 + sum(1 for _ in iterator)
    total = time.perf_counter() - start
    return {
        "sampler": name,
        "indices": count,
        "first_index_s": to_first,
        "epoch_s": total,
        "peak_rss_growth": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before,
        "first": first,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="per-epoch cost of sampler orders")
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--sample-bytes", type=int, default=100_000)
    parser.add_argument("--window", default="1GB")
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=SAMPLERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return

    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--child"]
    print(
        f"{args.samples} samples in {args.shards} shards of {args.sample_bytes} B/sample, "
        f"window={args.window}, world_size={args.world}"
    )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in SAMPLERS}
    for _ in range(args.repeats):
        for name in SAMPLERS:
            out = subprocess.run(
                [sys.executable, __file__, *forwarded, "--child", name],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = min(r["epoch_s"] for r in results["torch-random"])
    for name in SAMPLERS:
        best = min(results[name], key=lambda r: r["epoch_s"])
        print(
            f"  {name:>17}: first index {best['first_index_s']:6.2f} s, whole epoch "
            f"{best['epoch_s']:6.2f} s ({best['epoch_s'] / base:4.2f}x torch-random), "
            f"peak RSS growth {best['peak_rss_growth'] / 2**20:7.0f} MiB"
        )


if __name__ == "__main__":
    main()
