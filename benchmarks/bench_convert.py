"""Conversion throughput (issue 4): HDF5 -> each output format, against plain reads.

Writes a synthetic HDF5 file (an ``image`` dataset of ``--row-bytes`` uint8 per sample,
chunked like h5py users chunk, plus an int64 ``label``), warms the page cache with
one full read, then in one run measures, in MB/s of sample bytes:

- **h5py read**: the plain read of the same bytes, block by block as the conversion
  reads them (``ds[start:stop]`` in 16 MiB blocks): the ceiling for a conversion
  that must read everything once;
- **shardio.convert** to each format (``--formats``, default lmdb, raw, zarr, hdf5),
  for each ``--workers`` count, shards of ``--shard-size``; output files are
  fsynced by the writers and hashed for the manifest, as in real use;
- for Zarr, the **dask route** ``dask.array.from_array(h5ds).to_zarr(...)`` (the
  threaded scheduler on all cores, dask's default chunks), with the same compressor.

Each figure is the best of ``--repeats`` interleaved runs; ratios are against the
h5py read (LMDB, raw, HDF5; target >= 0.8x) or the dask route (Zarr; target >= 1.0x).

    python benchmarks/bench_convert.py                      # 256 MB, quick
    python benchmarks/bench_convert.py --size 2GB --write   # the issue's figure
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common

import shardio
from shardio import parse_size

BLOCK_BYTES = 16 * 1024 * 1024
TARGETS = {"lmdb": 0.8, "mmap": 0.8, "zarr": 1.0}  # the issue sets none for HDF5 output


def write_source(path: str, size: int, row_bytes: int, chunk_bytes: int) -> int:
    """A synthetic HDF5 file of about ``size`` bytes of samples; returns the sample count."""
    count = max(1, size // (row_bytes + 8))
    rows_per_chunk = max(1, chunk_bytes // row_bytes)
    rng = np.random.default_rng(0)
    # Low-entropy bytes (6 bits of 8), so compressors have something to do.
    block_rows = max(1, (64 * 1024 * 1024) // row_bytes)
    pattern = rng.integers(0, 64, size=(block_rows, row_bytes), dtype=np.uint8)
    with h5py.File(path, "w") as file:
        image = file.create_dataset(
            "image", shape=(count, row_bytes), dtype=np.uint8, chunks=(rows_per_chunk, row_bytes)
        )
        for start in range(0, count, block_rows):
            stop = min(count, start + block_rows)
            block = pattern[: stop - start].copy()
            block[:, 0] = np.arange(start, stop) % 251  # rows differ from block to block
            image[start:stop] = block
        file.create_dataset("label", data=np.arange(count, dtype=np.int64) % 1000)
    return count


def warm(path: str) -> None:
    with open(path, "rb") as handle:
        while handle.read(64 * 1024 * 1024):
            pass


def h5py_read(path: str) -> int:
    """Read every dataset block by block, as the conversion does; returns bytes read."""
    total = 0
    with h5py.File(path, "r") as file:
        for name in ("image", "label"):
            dataset = file[name]
            row = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64))
            rows = max(1, BLOCK_BYTES // row)
            for start in range(0, dataset.shape[0], rows):
                total += dataset[start : start + rows].nbytes
    return total


def cold_h5py_read(path: str) -> int:
    """The plain read from disk: the file's pages are first dropped from the page cache
    (posix_fadvise DONTNEED on this file only; other processes' cache is untouched)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)
    return h5py_read(path)


def durable_write(directory: str, nbytes: int) -> None:
    """What the disk can absorb: ``nbytes`` written in 16 MiB blocks, then fsync."""
    block = np.random.default_rng(1).integers(0, 64, BLOCK_BYTES, dtype=np.uint8).tobytes()
    path = os.path.join(directory, "durable-write.bin")
    with open(path, "wb") as handle:
        for start in range(0, nbytes, BLOCK_BYTES):
            handle.write(block[: min(BLOCK_BYTES, nbytes - start)])
        handle.flush()
        os.fsync(handle.fileno())
    os.remove(path)


def dask_to_zarr(path: str, out: str, compressor: str | None) -> None:
    import dask.array as da
    import zarr.codecs

    codecs = [zarr.codecs.ZstdCodec(level=3)] if compressor == "zstd" else None
    with h5py.File(path, "r") as file:
        for name in ("image", "label"):
            da.to_zarr(da.from_array(file[name]), os.path.join(out, name), compressors=codecs)


def timed(run: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256MB", help="bytes of samples (default 256MB)")
    parser.add_argument("--row-bytes", type=int, default=16384, help="bytes per image row")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20, help="HDF5 chunk size")
    parser.add_argument("--shard-size", default="256MB")
    parser.add_argument("--formats", default="lmdb,mmap,zarr,hdf5")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--zarr-compressor", default="zstd", help="zstd or none")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", help="working directory (default: a temporary one)")
    parser.add_argument(
        "--out-dir", help="where outputs are written (default: --dir; e.g. /dev/shm for RAM)"
    )
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    args = parser.parse_args()

    size = parse_size(args.size, "--size")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    worker_counts = [int(w) for w in args.workers.split(",")]
    compressor = None if args.zarr_compressor == "none" else args.zarr_compressor
    root = args.dir or tempfile.mkdtemp(prefix="bench-convert-")
    os.makedirs(root, exist_ok=True)
    out_root = tempfile.mkdtemp(prefix="bench-convert-out-", dir=args.out_dir or root)
    source = os.path.join(root, "source.h5")
    started = time.perf_counter()
    count = write_source(source, size, args.row_bytes, args.chunk_bytes)
    nbytes = count * (args.row_bytes + 8)
    print(f"source: {count} samples, {nbytes / 1e6:.0f} MB, written in "
          f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    warm(source)

    best: dict[str, float] = {}

    def record(key: str, seconds: float) -> None:
        rate = nbytes / seconds / 1e6
        best[key] = max(best.get(key, 0.0), rate)
        print(f"  {key}: {seconds:.2f} s, {rate:.0f} MB/s", flush=True)

    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
        record("h5py read", timed(lambda: h5py_read(source)))
        record("h5py read, cold cache", timed(lambda: cold_h5py_read(source)))
        warm(source)
        record("write + fsync", timed(lambda: durable_write(out_root, nbytes)))
        for fmt in formats:
            for workers in worker_counts:
                out = os.path.join(out_root, f"out-{fmt}")
                shutil.rmtree(out, ignore_errors=True)
                record(
                    f"{fmt} workers={workers}",
                    timed(
                        lambda fmt=fmt, workers=workers, out=out: shardio.convert(
                            source,
                            out,
                            format=fmt,
                            shard_size=args.shard_size,
                            workers=workers,
                            compressor=compressor if fmt == "zarr" else None,
                        )
                    ),
                )
                shutil.rmtree(out, ignore_errors=True)
        if "zarr" in formats:
            out = os.path.join(out_root, "out-dask")
            shutil.rmtree(out, ignore_errors=True)
            record("dask to_zarr", timed(lambda out=out: dask_to_zarr(source, out, compressor)))
            shutil.rmtree(out, ignore_errors=True)

    rows = []
    plain = best["h5py read"]
    ceiling = best["write + fsync"]
    rows.append(["h5py read (baseline)", "-", f"{plain:,.0f}", "1.00x", "-", "-", "-", "-"])
    for fmt in formats:
        baseline_name = "dask to_zarr" if fmt == "zarr" else "h5py read"
        baseline = best[baseline_name]
        for workers in worker_counts:
            rate = best[f"{fmt} workers={workers}"]
            ratio = rate / baseline
            rows.append(
                [
                    f"convert -> {fmt}",
                    str(workers),
                    f"{rate:,.0f}",
                    f"{rate / plain:.2f}x",
                    f"{rate / ceiling:.2f}x",
                    f"{ratio:.2f}x vs {baseline_name}",
                    f">= {TARGETS[fmt]:.1f}x" if fmt in TARGETS else "-",
                    "-" if fmt not in TARGETS else ("yes" if ratio >= TARGETS[fmt] else "**no**"),
                ]
            )
    if "zarr" in formats:
        dask_rate = best["dask to_zarr"]
        rows.append(["dask from_array().to_zarr()", "threads", f"{dask_rate:,.0f}",
                     f"{dask_rate / plain:.2f}x", f"{dask_rate / ceiling:.2f}x", "-", "-",
                     "-"])  # fmt: skip
    for key, label in (
        ("h5py read, cold cache", "h5py read, cold cache (context)"),
        ("write + fsync", "write + fsync of the same bytes (disk ceiling, context)"),
    ):
        rows.append(
            [label, "-", f"{best[key]:,.0f}", f"{best[key] / plain:.2f}x",
             f"{best[key] / ceiling:.2f}x", "-", "-", "-"]
        )  # fmt: skip
    table = _common.markdown_table(
        ["route", "workers", "MB/s", "vs h5py read", "vs write+fsync", "vs baseline", "target",
         "met"],
        rows,
    )  # fmt: skip
    print(table)
    if args.write:
        body = (
            f"Command: `{_common.command_line()}`\n\n"
            f"Machine: {_common.machine_line()}.\n\n"
            f"Source: one HDF5 file, {count:,} samples of {args.row_bytes:,} B (uint8 `image`, "
            f"chunks of {args.chunk_bytes // 2**10} KiB, uncompressed) plus an int64 `label`: "
            f"{nbytes / 1e9:.2f} GB of samples, read from a warm page cache. Shards of "
            f"{args.shard_size}; Zarr output and the dask route both use compressor "
            f"{compressor or 'none'}. MB/s are bytes of samples per second, best of "
            f"{args.repeats} interleaved runs; every conversion includes fsyncing the shards "
            "and hashing them for the manifest.\n\n" + table
        )
        _common.replace_section("Conversion (issue 4)", body)
    shutil.rmtree(out_root, ignore_errors=True)
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
