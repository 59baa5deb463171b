"""Integrity on read: what ``verify="first-read"`` and ``verify="open"`` cost.

Whole epochs of random batches of 256 from a warm page cache, one process, with each
mode in turn (alternating, repeated), over raw mmap and LMDB datasets of 4 KB and
16 KB samples. Epoch 1 checks every block once; later epochs check nothing new.
Figures are ratios to ``verify="off"`` measured in the same run.

    python benchmarks/bench_integrity.py --size 512MB --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, machine_line, markdown_table, replace_section

from shardio import ShardedDataset, ShardWriter, parse_size

MODES = ("off", "first-read", "open")


def write(path: str, format: str, sample_bytes: int, total: int) -> None:
    count = total // sample_bytes
    rng = np.random.default_rng(0)
    with ShardWriter(path, format=format, shard_size="64MB") as writer:
        for start in range(0, count, 4096):
            rows = min(4096, count - start)
            writer.write_batch(
                {
                    "x": rng.integers(0, 255, size=(rows, sample_bytes - 8), dtype=np.uint8),
                    "label": np.arange(start, start + rows, dtype=np.int64),
                }
            )


def epoch_seconds(path: str, mode: str, epochs: int, seed: int) -> list[float]:
    """Seconds per epoch for a fresh dataset object (so epoch 1 checks every block)."""
    ds = ShardedDataset(path, verify=mode)
    order = np.random.default_rng(seed).permutation(len(ds))
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for first in range(0, len(order), 256):
            ds.read_batch(order[first : first + 256])
        times.append(time.perf_counter() - start)
    ds.close()
    return times


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="512MB", help="bytes per dataset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", default="mmap,lmdb")
    parser.add_argument("--samples", default="4096,16384", help="sample sizes in bytes")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit RESULTS.md")
    args = parser.parse_args()
    total = parse_size(args.size)
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("SHARDIO_BENCH_DIR")) as root:
        for format in args.formats.split(","):
            for sample_bytes in map(int, args.samples.split(",")):
                path = os.path.join(root, f"{format}-{sample_bytes}")
                write(path, format, sample_bytes, total)
                epoch_seconds(path, "off", 1, 99)  # warm the page cache
                runs: dict[str, list[list[float]]] = {m: [] for m in MODES}
                for repeat in range(args.repeats):
                    for mode in MODES:  # alternating: drift hits every mode alike
                        runs[mode].append(epoch_seconds(path, mode, 2, repeat))
                off = runs["off"]
                for mode in MODES[1:]:
                    first = [m[0] / o[0] for m, o in zip(runs[mode], off, strict=True)]
                    second = [m[1] / o[1] for m, o in zip(runs[mode], off, strict=True)]
                    rows.append(
                        [
                            format,
                            f"{sample_bytes // 1024} KB",
                            mode,
                            _ratio(first),
                            _ratio(second),
                            f"{len(off) and statistics.median(o[0] for o in off):.2f} s",
                        ]
                    )
                print(rows[-2], rows[-1], flush=True)
    table = markdown_table(
        ["format", "sample", "verify=", "epoch 1 / off", "epoch 2 / off", "off epoch"], rows
    )
    body = (
        f"`{command_line()}`\n\nMachine: {machine_line()}.\n\n"
        "Seconds per epoch of random batches of 256 (warm cache, one process) relative to "
        '`verify="off"` in the same run, median (range) of the repeats; each repeat runs '
        "the modes in turn on a fresh dataset object.\n\n" + table
    )
    print(body)
    if not args.no_write:
        replace_section("Integrity on read (verify=)", body)


if __name__ == "__main__":
    main()
