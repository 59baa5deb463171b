"""Disk bytes of a small Zarr conversion: the old defaults (no compressor, 256 KiB chunks
whatever the shard's length) against the new ones (zstd, chunks of at most a shard's rows).

    PYTHONPATH=. python benchmarks/bench_zarr_size.py --rows 100,1000
"""

from __future__ import annotations

import argparse
import os
import tempfile

import h5py
import numpy as np

import shardio


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def measure(rows: int, directory: str) -> tuple[int, int, int]:
    """(source, old defaults, new defaults) bytes on disk for ``rows`` 28x28 images."""
    rng = np.random.default_rng(0)
    source = os.path.join(directory, f"small-{rows}.h5")
    with h5py.File(source, "w") as file:  # 16 grey levels: compressible, like real images
        file["image"] = (rng.integers(0, 16, (rows, 28, 28)) * 16).astype(np.uint8)
        file["label"] = np.arange(rows, dtype=np.int64) % 10
    old, new = (os.path.join(directory, f"{name}-{rows}.shardio") for name in ("old", "new"))
    shardio.convert(
        source, old, format="zarr", compressor="none", writer_options={"max_chunk_rows": 10**9}
    )
    shardio.convert(source, new, format="zarr")
    return os.path.getsize(source), disk_bytes(old), disk_bytes(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100,1000", help="source lengths, comma separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        for rows in (int(r) for r in args.rows.split(",")):
            source, old, new = measure(rows, directory)
            print(
                f"{rows:>6} rows: source {source:>9,} B; old defaults {old:>9,} B "
                f"({old / source:.2f}x); new defaults {new:>9,} B ({new / source:.2f}x)"
            )


if __name__ == "__main__":
    main()
