"""Opening and reading HDF5 files shardio did not write, two checkouts compared (issue 18).

Discovery (which datasets become fields) runs every time a process opens such a file,
so its cost and the read path's are measured for two shardio source trees, in
alternating fresh processes so that both see the same load:

- open: ``DatasetReader(path)`` on a file of 1,000 small datasets in 20 groups;
- read: ``read_many`` of 50 sorted random batches of 256 rows, 64 KB and 4 KB rows.

    python benchmarks/bench_hdf5_foreign.py OLD_ROOT NEW_ROOT --rounds 4

Each root is a directory holding a ``shardio`` package (``git archive BASE shardio``
unpacked somewhere, and this checkout). Prints medians and new/old ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import h5py
import numpy as np

_PROBE = """
import sys, time, warnings
import numpy as np
warnings.simplefilter("ignore")
from shardio.storage.reader import DatasetReader
kind, path = sys.argv[1], sys.argv[2]
best = float("inf")
if kind == "open":
    for _ in range(5):
        start = time.perf_counter()
        DatasetReader(path).close()
        best = min(best, time.perf_counter() - start)
    print(best * 1000)
else:
    reader = DatasetReader(path)
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(len(reader), 256, replace=False)) for _ in range(50)]
    for batch in batches[:5]:
        reader.read_many(batch)
    for _ in range(5):
        start = time.perf_counter()
        for batch in batches:
            reader.read_many(batch)
        best = min(best, time.perf_counter() - start)
    print(50 * 256 / best)
"""


def write_files(directory: str) -> dict[str, str]:
    rng = np.random.default_rng(1)
    paths = {k: os.path.join(directory, f"{k}.h5") for k in ("many", "rows64k", "rows4k")}
    with h5py.File(paths["many"], "w") as file:
        for group in range(20):
            for dataset in range(50):
                file[f"g{group}/d{dataset}"] = np.arange(100)
    for name, rows, size, chunk in (("rows64k", 2000, 64 * 1024, 1), ("rows4k", 20000, 4096, 16)):
        with h5py.File(paths[name], "w") as file:
            data = rng.integers(0, 255, (rows, size), dtype=np.uint8)
            file.create_dataset("x", data=data, chunks=(chunk, size))
            file["y"] = np.arange(rows)
    return paths


def probe(root: str, kind: str, path: str) -> float:
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, kind, path],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="source root of the baseline shardio")
    parser.add_argument("new", help="source root of the shardio to compare")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    cases = (("open", "many", "ms"), ("read", "rows64k", "rows/s"), ("read", "rows4k", "rows/s"))
    figures: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        paths = write_files(directory)
        for _ in range(args.rounds):
            for root, label in ((args.old, "old"), (args.new, "new")):
                for kind, name, _unit in cases:
                    figures.setdefault((label, name), []).append(probe(root, kind, paths[name]))
    print("| case | old (median) | new (median) | new / old |")
    print("|---|---|---|---|")
    for kind, name, unit in cases:
        old = statistics.median(figures[("old", name)])
        new = statistics.median(figures[("new", name)])
        print(f"| {kind} {name} | {old:,.0f} {unit} | {new:,.0f} {unit} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
