"""shardio's batch paths beside peer loaders on the same samples, in one run (issue 24).

Each peer reads the same bytes through its own fastest documented random-access path
(no per-sample straw men): Lance ``take`` of each batch's ids, sorted (``pylance``);
ArrayRecord's batched ``__getitems__`` (``array-record``); a Grain ``MapDataset``
pipeline over that ArrayRecord copy with 2 threads (``grain``); MosaicML Streaming over
its local MDS copy through a DataLoader with 2 workers (``mosaicml-streaming``); and
hand-written ``Dataset``s whose ``__getitems__`` reads a whole batch, over an
``np.memmap`` of the raw shard and over an h5py copy, each with 2 DataLoader workers.
Peers are not shardio dependencies: install them in a separate virtualenv (see
docs/bench.md); a peer that is not installed is reported as such. Against them, in
alternation with the harness of ``bench_loader.py`` (fresh process per run, warm
cache, random order, batch 256): ``read_batch``, the README's DataLoader line with 2
workers and ``shardio.Loader`` with 2 and "auto" threads.

    PYTHONPATH=. .venv-peers/bin/python benchmarks/bench_loader_peers.py --write
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common
import bench_loader as bl

from shardio import ShardedDataset, format_size, parse_size
from shardio.tools.bench.synthetic import write_synthetic

HEADING = "Batches end to end: shardio beside Lance, ArrayRecord, Grain, Streaming (issue 24)"
SHARDIO = (
    "RAM gather (ceiling)",
    "read_batch",
    "DataLoader line, 2 workers",
    "Loader, 2 threads",
    'Loader, "auto" threads',
)
PEERS = {
    "Lance take, sorted ids": "lance",
    "ArrayRecord __getitems__, batched": "array_record",
    "Grain MapDataset over ArrayRecord, 2 threads": "grain",
    "Streaming (local MDS), DataLoader 2 workers": "streaming",
    "np.memmap Dataset (batched), DataLoader 2 workers": "numpy",
    "h5py Dataset (batched), DataLoader 2 workers": "h5py",
}
"""Each peer path and the module it needs."""


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


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


def write_mds(path: str, ram: dict[str, np.ndarray]) -> None:
    from streaming import MDSWriter

    with MDSWriter(out=path, columns={"data": "bytes", "label": "int"}) as writer:
        for row, label in zip(ram["data"], ram["label"].tolist(), strict=True):
            writer.write({"data": row.tobytes(), "label": label})


def write_h5(path: str, ram: dict[str, np.ndarray]) -> None:
    import h5py

    with h5py.File(path, "w") as file:
        file.create_dataset("data", data=ram["data"])
        file.create_dataset("label", data=ram["label"])


def _write_copies(path: str, num_samples: int, sample_bytes: int) -> None:
    ram = bl.in_ram(num_samples, sample_bytes)
    write_h5(path + ".h5", ram)
    if installed("array_record"):
        write_array_record(path + ".arrayrecord", ram)
    if installed("lance"):
        write_lance(path + ".lance", ram)
    if installed("streaming"):
        write_mds(path + ".mds", ram)


class _Decode:
    """An ArrayRecord record back into a sample."""

    def __init__(self, width: int) -> None:
        self.width = width

    def __call__(self, record: bytes) -> dict[str, Any]:
        return {
            "data": np.frombuffer(record, np.uint8, count=self.width),
            "label": np.frombuffer(record, np.int64, count=1, offset=self.width)[0],
        }


class MemmapBatches(Dataset[Any]):
    """A hand-written Dataset over the raw shard's files: one fancy-index gather from
    an ``np.memmap`` per batch (``__getitems__``)."""

    def __init__(self, path: str, width: int) -> None:
        self.path, self.width = path, width
        self.data: np.ndarray | None = None
        self.label: np.ndarray | None = None

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self.data is None or self.label is None:
            # The first shard's files, as its own description names them (the sampler
            # draws from that shard's samples only: its length is this Dataset's).
            names = sorted(os.listdir(self.path))
            shard = next(
                os.path.join(self.path, n)
                for n in names
                if os.path.isdir(os.path.join(self.path, n))
            )
            with open(os.path.join(shard, "shardio-mmap.json"), encoding="utf-8") as handle:
                files = json.load(handle)["files"]
            data = np.memmap(os.path.join(shard, files["data"]["data"]), np.uint8, "r")
            self.data = data.reshape(-1, self.width)
            self.label = np.memmap(os.path.join(shard, files["label"]["data"]), np.int64, "r")
        return self.data, self.label

    def __len__(self) -> int:
        return len(self._open()[1])

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        data, label = self._open()
        at = np.asarray(indices)
        return [{"data": torch.from_numpy(data[at]), "label": torch.from_numpy(label[at])}]


class H5Batches(Dataset[Any]):
    """A hand-written h5py Dataset: one sorted-selection read per batch."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file: Any = None

    def __len__(self) -> int:
        import h5py

        with h5py.File(self.path, "r") as file:
            return len(file["label"])

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        import h5py

        if self.file is None:
            self.file = h5py.File(self.path, "r")
        at = np.asarray(indices)
        order = np.argsort(at)
        unique = at[order]
        data = self.file["data"][unique]
        label = self.file["label"][unique]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return [{"data": torch.from_numpy(data[back]), "label": torch.from_numpy(label[back])}]


def _first(batch: list[Any]) -> Any:
    return batch[0]


def _peer_loader(config: str, path: str, ds: ShardedDataset, width: int) -> Iterable[Any]:
    if config.startswith("Lance"):
        import lance

        table = lance.dataset(path + ".lance")

        def take(indices: np.ndarray) -> dict[str, Any]:
            got = table.take(np.sort(indices).tolist(), columns=["data", "label"])
            data = got.column("data").combine_chunks()
            values = np.frombuffer(data.buffers()[1], np.uint8)
            start = data.offset * width
            return {
                "data": values[start : start + len(data) * width].reshape(-1, width),
                "label": got.column("label").to_numpy(),
            }

        return bl.gathers(take, len(ds))
    if config.startswith("ArrayRecord"):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        source = ArrayRecordDataSource([path + ".arrayrecord"])
        decode = _Decode(width)

        def read(indices: np.ndarray) -> dict[str, Any]:
            samples = [decode(r) for r in source.__getitems__(indices.tolist())]
            return {
                "data": np.stack([x["data"] for x in samples]),
                "label": np.array([x["label"] for x in samples]),
            }

        return bl.gathers(read, len(ds))
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
        options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4 * bl.BATCH)
        return dataset.to_iter_dataset(options)
    if config.startswith("Streaming"):
        from streaming import StreamingDataset

        stream = StreamingDataset(local=path + ".mds", shuffle=True, batch_size=bl.BATCH)
        return bl.epochs(
            DataLoader(stream, batch_size=bl.BATCH, num_workers=2, persistent_workers=True)
        )
    handwritten: Dataset[Any]
    if config.startswith("np.memmap"):
        handwritten = MemmapBatches(path, width)
    elif config.startswith("h5py"):
        handwritten = H5Batches(path + ".h5")
    else:
        raise ValueError(config)
    loader = DataLoader(
        handwritten,
        batch_size=bl.BATCH,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        collate_fn=_first,
    )
    return bl.epochs(loader)


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
    for copy in (path, path + ".arrayrecord", path + ".lance", path + ".mds", path + ".h5"):
        if not os.path.exists(copy):
            continue
        if os.path.isdir(copy):
            bl.warm(copy)
        else:
            with open(copy, "rb") as handle:
                while handle.read(1 << 24):
                    pass
    configs = [*SHARDIO, *(c for c, module in PEERS.items() if installed(module))]
    missing = [c for c, module in PEERS.items() if not installed(module)]
    if missing:
        print(f"not installed, skipped: {'; '.join(missing)}", flush=True)
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
    parser.add_argument("--quick", action="store_true", help="a smoke run: small, short")
    args = parser.parse_args()
    if args.quick:
        args.size, args.seconds, args.rounds, args.sample_bytes = "32MB", 0.5, 1, "16384"
    print(f"load average before: {_common.load_line()}", flush=True)
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
    print(f"load average after: {_common.load_line()}", flush=True)
    if args.write:
        versions = []
        for name in ("grain", "array-record", "pylance", "mosaicml-streaming", "h5py"):
            try:
                from importlib.metadata import version

                versions.append(f"{name} {version(name)}")
            except Exception:
                versions.append(f"{name} (not installed)")
        text = (
            f"Command: `{_common.command_line()}`\n"
            f"Machine: {_common.machine_line()}; {', '.join(versions)}; load average "
            f"{_common.load_line()} at the end.\n"
            f"Each dataset {format_size(size)} (peers read their own copy: ArrayRecord, "
            f"Lance, MDS, HDF5), warm page cache, random order, batch {bl.BATCH}; "
            f"rates and CPU are medians of {args.rounds} alternated runs of about "
            f"{args.seconds:g} s, each in "
            "a fresh process, ratios the medians of the ratios within a round.\n\n"
            f"{body}\n"
        )
        _common.replace_section(HEADING, text)


if __name__ == "__main__":
    main()
