"""What the reliability bounds of issue 29 cost on the read path.

Random batches of 256 from a warm page cache, one process, over compressed Zarr
(zstd, gzip) and HDF5 (gzip) datasets: a fresh dataset object reads one epoch with
the bounds on (each Zarr chunk checked against its declared size before zarr decodes
it; each HDF5 deflate chunk inflated once more on first touch) and with them off
(the Zarr store unwrapped, the HDF5 check disabled), alternating, repeated. Also the
index check of `read_batch` alone, on a list and on an array. Figures are ratios to
"off" measured in the same run, with the load average.

    python benchmarks/bench_bounds.py              # about 2 minutes on a quiet machine
    python benchmarks/bench_bounds.py --quick      # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, machine_line, markdown_table

from shardio import ShardedDataset, ShardWriter

CASES = (("zarr", "zstd"), ("zarr", "gzip"), ("hdf5", "gzip"))


def write(path: str, fmt: str, compressor: str, samples: int) -> None:
    rng = np.random.default_rng(0)
    options = {"compressor": compressor} if fmt == "zarr" else {"compression": compressor}
    with ShardWriter(path, format=fmt, shard_size="64MB", **options) as writer:
        for start in range(0, samples, 4096):
            rows = min(4096, samples - start)
            # Half random, half zeros: compressible, as real images and labels are.
            x = rng.integers(0, 255, size=(rows, 1024), dtype=np.uint8)
            x[:, 512:] = 0
            writer.write_batch({"x": x, "label": np.arange(start, start + rows)})


@contextlib.contextmanager
def bounds_off() -> Iterator[None]:
    """The read path as it was before the bounds: plain Zarr store, no deflate check."""
    from shardio.storage.adapters.hdf5 import _adapter as _hdf5
    from shardio.storage.adapters.zarr import _adapter as _zarr

    store, deflate = _zarr._store, _hdf5.DeflateBound.of
    _zarr._store = lambda path, options: (  # type: ignore[assignment]
        path if "://" not in path else store(path, options)
    )
    _hdf5.DeflateBound.of = classmethod(lambda cls, *args: None)  # type: ignore[assignment]
    try:
        yield
    finally:
        _zarr._store = store  # type: ignore[assignment]
        _hdf5.DeflateBound.of = deflate  # type: ignore[method-assign]


def epoch(path: str, seed: int) -> float:
    ds = ShardedDataset(path)
    order = np.random.default_rng(seed).permutation(len(ds))
    start = time.perf_counter()
    for first in range(0, len(order), 256):
        ds.read_batch(order[first : first + 256])
    return time.perf_counter() - start


def index_check(path: str, repeats: int) -> tuple[float, float]:
    """Microseconds per `ShardIndex.check_many` of 256 indices: a list, an array."""
    index = ShardedDataset(path).reader.index
    order = np.random.default_rng(0).permutation(len(index))[:256]
    listed = order.tolist()
    result = []
    for given in (listed, order):
        start = time.perf_counter()
        for _ in range(repeats):
            index.check_many(given)
        result.append((time.perf_counter() - start) / repeats * 1e6)
    return result[0], result[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    args = parser.parse_args()
    samples, repeats = (4096, 1) if args.quick else (args.samples, args.repeats)
    print(command_line())
    print(machine_line())
    print(f"load average at start: {os.getloadavg()}")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for fmt, compressor in CASES:
            path = os.path.join(root, f"{fmt}-{compressor}")
            write(path, fmt, compressor, samples)
            on, off = [], []
            for repeat in range(repeats):
                with bounds_off():
                    off.append(epoch(path, repeat))
                on.append(epoch(path, repeat))
            ratio = statistics.median(on) / statistics.median(off)
            rows.append(
                [
                    f"{fmt} {compressor}",
                    f"{statistics.median(off):.2f}",
                    f"{statistics.median(on):.2f}",
                    f"{ratio:.2f}x",
                ]
            )
        listed, array = index_check(os.path.join(root, "zarr-zstd"), 200 if args.quick else 5000)
    print(markdown_table(["dataset", "epoch s, bounds off", "epoch s, on", "on / off"], rows))
    print(f"index check of 256 indices: {listed:.1f} us (list), {array:.1f} us (array)")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
