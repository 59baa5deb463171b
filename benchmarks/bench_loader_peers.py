"""shardio's batch paths beside peer loaders on the same samples, in one run (issue 13).

Peers (installed in a separate virtualenv, see docs/bench.md; they are not shardio
dependencies): SPDL (``spdl-core``) and ``torchdata.nodes``, both with 4 threads over
a per-sample ``np.memmap`` read of the same raw shards (their documented idiom: map a
per-sample function, batch, collate); Grain over its own ArrayRecord copy of the samples
(``grain``, ``array-record``; 4 threads); Lance (``pylance``) ``take`` of each batch
from its own copy. Against them, in alternation with the same harness as
``bench_loader.py`` (fresh process per run, warm cache, random order, batch 256): the
RAM gather, ``read_batch``, the README's DataLoader line and ``shardio.Loader``.

    PYTHONPATH=. .venv-peers/bin/python benchmarks/bench_loader_peers.py --write
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common
import bench_loader as bl

from shardio import ShardedDataset, format_size, parse_size
from shardio.bench import raw_reader
from shardio.bench.synthetic import write_synthetic

HEADING = "Batches end to end: shardio beside SPDL, torchdata.nodes, Grain, Lance (issue 13)"
THREADS = 4
SHARDIO = (
    "RAM gather (ceiling)",
    "read_batch",
    "DataLoader line, 0 workers",
    "Loader, 2 threads",
    "Loader, 4 threads",
    "hand-written Dataset + DataLoader, 2 workers",
)
PEERS = (
    "SPDL pipeline, 4 threads, per-sample np.memmap",
    "torchdata.nodes, 4 threads, per-sample np.memmap",
    "Grain over ArrayRecord, 4 threads",
    "Lance take",
)


def write_array_record(path: str, ram: dict[str, np.ndarray]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, "group_size:1")
    for row, label in zip(ram["data"], ram["label"].tolist(), strict=True):
        writer.write(row.tobytes() + np.int64(label).tobytes())
    writer.close()


def write_lance(path: str, ram: dict[str, np.ndarray]) -> None:
    import lance
    import pyarrow as pa

    count, width = ram["data"].shape
    data = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), count, [None, pa.py_buffer(np.ascontiguousarray(ram["data"]))]
    )
    lance.write_dataset(pa.table({"data": data, "label": pa.array(ram["label"])}), path)


def _write_copies(path: str, num_samples: int, sample_bytes: int) -> None:
    ram = bl.in_ram(num_samples, sample_bytes)
    write_array_record(path + ".arrayrecord", ram)
    write_lance(path + ".lance", ram)


class _Decode:
    """An ArrayRecord record back into a sample."""

    def __init__(self, width: int) -> None:
        self.width = width

    def __call__(self, record: bytes) -> dict[str, Any]:
        return {
            "data": np.frombuffer(record, np.uint8, count=self.width),
            "label": np.frombuffer(record, np.int64, count=1, offset=self.width)[0],
        }


def _peer_loader(config: str, path: str, ds: ShardedDataset, width: int) -> Iterable[Any]:
    order = bl.random_sampler(ds)
    if config.startswith("SPDL"):
        from spdl.pipeline import PipelineBuilder

        raw = raw_reader(ds)
        pipeline = (
            PipelineBuilder()
            .add_source(iter(order))
            .pipe(raw.read, concurrency=THREADS, output_order="input")
            .aggregate(bl.BATCH)
            .pipe(default_collate)
            .add_sink(4)
            .build(num_threads=THREADS)
        )
        pipeline.start()
        return pipeline.get_iterator()
    if config.startswith("torchdata"):
        import torchdata.nodes as tn

        raw = raw_reader(ds)
        node: Any = tn.SamplerWrapper(order)
        node = tn.ParallelMapper(node, map_fn=raw.read, num_workers=THREADS, method="thread")
        node = tn.Batcher(node, batch_size=bl.BATCH)
        node = tn.Mapper(node, default_collate)
        return tn.Loader(node)
    if config.startswith("Grain"):
        import grain

        source = grain.sources.ArrayRecordDataSource([path + ".arrayrecord"])
        dataset = (
            grain.MapDataset.source(source)
            .shuffle(seed=0)
            .repeat(50)
            .map(_Decode(width))
            .batch(bl.BATCH)
        )
        options = grain.ReadOptions(num_threads=THREADS, prefetch_buffer_size=4 * bl.BATCH)
        return dataset.to_iter_dataset(options)
    if config.startswith("Lance"):
        import lance

        table = lance.dataset(path + ".lance")

        def take(indices: np.ndarray) -> dict[str, Any]:
            got = table.take(indices.tolist(), columns=["data", "label"])
            data = got.column("data").combine_chunks()
            values = np.frombuffer(data.buffers()[1], np.uint8)
            start = data.offset * width
            return {
                "data": values[start : start + len(data) * width].reshape(-1, width),
                "label": got.column("label").to_numpy(),
            }

        return bl.gathers(take, len(ds))
    raise ValueError(config)


def _run(config: str, path: str, ram: dict[str, np.ndarray], seconds: float) -> dict[str, float]:
    if config in SHARDIO:
        return bl._run(config, path, ram, seconds)
    torch.set_num_threads(1)
    ds = ShardedDataset(path)
    loader = _peer_loader(config, path, ds, ram["data"].shape[1])
    return bl.timed(loader, len(ds) // bl.BATCH, seconds, bl.labels)


def run_case(
    root: str, sample_bytes: int, size: int, seconds: float, rounds: int
) -> dict[str, list[dict[str, Any]]]:
    num_samples = size // sample_bytes
    path = os.path.join(root, f"mmap-{sample_bytes}")
    write_synthetic(path, "mmap", num_samples, sample_bytes, shard_size="128MB")
    ram = bl.in_ram(num_samples, sample_bytes)
    # NOTE: written in a spawned process: Lance's runtime is not fork-safe, and every
    # measurement below is a fork of this process.
    spawn = multiprocessing.get_context("spawn")
    writer = spawn.Process(target=_write_copies, args=(path, num_samples, sample_bytes))
    writer.start()
    writer.join()
    if writer.exitcode != 0:
        raise RuntimeError(f"writing the peers' copies failed (exit code {writer.exitcode})")
    for copy in (path, path + ".arrayrecord", path + ".lance"):
        if os.path.isdir(copy):
            bl.warm(copy)
        else:
            with open(copy, "rb") as handle:
                while handle.read(1 << 24):
                    pass
    configs = [*SHARDIO, *PEERS]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(rounds):
        for config in configs:
            runs[config].append(bl.measure(config, path, ram, seconds, _run))
    for config, results in runs.items():
        print(
            f"{format_size(sample_bytes):>7s} {config:50s} "
            + " ".join(f"{r.get('rate', 0):9,.0f}" for r in results)
            + "".join(f"  {r['error']}" for r in results[:1] if "error" in r),
            flush=True,
        )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256MB", help="bytes of each dataset")
    parser.add_argument("--sample-bytes", default="16384,4096")
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    size = parse_size(args.size, "--size")
    root = tempfile.mkdtemp(prefix="bench-loader-peers-")
    rows: list[list[str]] = []
    try:
        for sample_bytes in (int(s) for s in args.sample_bytes.split(",")):
            runs = run_case(root, sample_bytes, size, args.seconds, args.rounds)
            rows += bl.table("mmap", sample_bytes, runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    body = _common.markdown_table(["data", "sample", "loader", *bl.RESULT_COLUMNS], rows)
    print(body)
    if args.write:
        versions = []
        for name in ("spdl-core", "torchdata", "grain", "array-record", "pylance"):
            try:
                from importlib.metadata import version

                versions.append(f"{name} {version(name)}")
            except Exception:
                versions.append(f"{name} (not installed)")
        text = (
            f"Command: `{_common.command_line()}`\n"
            f"Machine: {_common.machine_line()}; {', '.join(versions)}. The 2 cores were "
            "shared with other engineers' test runs, so compare within a run.\n"
            f"Each dataset {format_size(size)} (peers read their own copy: ArrayRecord, "
            f"Lance), warm page cache, random order, batch {bl.BATCH}; rates and CPU are "
            f"medians of {args.rounds} alternated runs of about {args.seconds:g} s, each in "
            "a fresh process, ratios the medians of the ratios within a round.\n\n"
            f"{body}\n"
        )
        _common.replace_section(HEADING, text)


if __name__ == "__main__":
    main()
