"""Where LMDB's disk overhead goes: bytes on disk against bytes of samples, by page kind.

Writes random (incompressible) uint8 images of a few sizes with `ShardWriter` and
reads LMDB's own page counts (`Environment.stat()`): leaf and branch pages hold keys
and small values, overflow pages hold values over LMDB's inline limit (about half a
page), each rounded up to whole pages. The lead's report measured 313 MiB for 234.5
MiB of samples (1.33x); this says which part is page rounding and which is free or
map space.

    PYTHONPATH=. python benchmarks/bench_lmdb_size.py            # 20,000 samples each
    PYTHONPATH=. python benchmarks/bench_lmdb_size.py --quick    # 2,000 samples each
"""

from __future__ import annotations

import argparse
import os
import tempfile

import lmdb
import numpy as np

from shardio import ShardWriter

# (name, per-sample image shape): under the inline limit, just over it (a 32x32 RGB
# image: 3,072 B, the case the report measured), over one page, several pages.
SIZES = (
    ("1.5 KiB", (512, 3)),
    ("3 KiB (32x32x3)", (32, 32, 3)),
    ("6 KiB", (2048, 3)),
    ("48 KiB (128x128x3)", (128, 128, 3)),
)


def measure(directory: str, shape: tuple[int, ...], count: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    path = os.path.join(directory, "out.shardio")
    images = rng.integers(0, 255, size=(count, *shape), dtype=np.uint8)
    labels = np.arange(count, dtype=np.int64)
    with ShardWriter(path, format="lmdb", shard_size="4GB") as writer:
        writer.write_batch({"image": images, "label": labels})
    shard = next(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".lmdb"))
    data = os.path.getsize(os.path.join(shard, "data.mdb"))
    env = lmdb.open(shard, subdir=True, readonly=True, lock=False)
    try:
        stat, info = env.stat(), env.info()
    finally:
        env.close()
    page = stat["psize"]
    used = (stat["leaf_pages"] + stat["branch_pages"] + stat["overflow_pages"]) * page
    samples = images.nbytes + labels.nbytes
    value = images[0].nbytes + labels[0].nbytes
    overflowed = stat["overflow_pages"] > 0
    return {
        "samples": samples,
        "file": data,
        "used": used,
        "overflow": stat["overflow_pages"] * page,
        "tree": (stat["leaf_pages"] + stat["branch_pages"]) * page,
        "rounding": stat["overflow_pages"] * page - (value * count if overflowed else 0),
        "unused": data - used,
        "map": info["map_size"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 samples per size")
    args = parser.parse_args()
    count = 2_000 if args.quick else args.samples
    mib = 1024 * 1024
    print(f"LMDB size overhead, {count:,} samples per size (load {os.getloadavg()[0]:.2f})")
    for name, shape in SIZES:
        with tempfile.TemporaryDirectory() as directory:
            m = measure(directory, shape, count)
        print(
            f"{name:>20}: data.mdb {m['file'] / mib:8.1f} MiB for {m['samples'] / mib:8.1f} "
            f"MiB of samples ({m['file'] / m['samples']:.2f}x): tree pages "
            f"{m['tree'] / mib:.1f}, overflow pages {m['overflow'] / mib:.1f} (of which "
            f"rounding to pages {m['rounding'] / mib:.1f}), free or unused "
            f"{m['unused'] / mib:.1f}; map size {m['map'] / mib:.0f} MiB (address space, "
            "not disk)"
        )


if __name__ == "__main__":
    main()
