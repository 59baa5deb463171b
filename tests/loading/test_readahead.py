"""Readahead hints: file ranges per backend, page-cache effect, and the sampler's schedule."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import lmdb
import numpy as np
import pytest
from torch.utils.data import DataLoader, Dataset

from shardio import ShardedDataset, ShardSampler, ShardWriter
from shardio.loading.sampling.orders import epoch_plan
from shardio.memory import hint_ranges, readahead_supported
from shardio.memory.pagecache import READAHEAD_PIECE
from shardio.storage.adapters.base import coalesce_ranges
from shardio.tools.bench.cache import drop_cache, resident_bytes

needs_fadvise = pytest.mark.skipif(not readahead_supported(), reason="needs posix_fadvise")


def rows(count: int, width: int, start: int = 0) -> np.ndarray:
    values = (np.arange(count * width, dtype=np.int64) + start * width) % 251
    return values.astype(np.uint8).reshape(count, width)


def write(path: Path, fmt: str, count: int, width: int, shard_size: str = "1GB") -> np.ndarray:
    data = rows(count, width)
    with ShardWriter(path, format=fmt, shard_size=shard_size) as writer:
        writer.write_batch({"x": data})
    return data


def read_range(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def wait_resident(path: str, at_least: int, timeout: float = 10.0) -> int:
    """Residency of ``path`` once it reaches ``at_least`` bytes (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        resident = resident_bytes(path) or 0
        if resident >= at_least or time.monotonic() > deadline:
            return resident
        time.sleep(0.02)


def cold(paths: Sequence[str]) -> None:
    """Drop ``paths`` from the page cache, or skip where this file system keeps them."""
    state = drop_cache(paths)
    if state.resident_fraction is None or state.resident_fraction > 0.05:
        pytest.skip(f"this file system keeps files cached after DONTNEED ({state})")


# ------------------------------------------------------------------ ranges
def test_coalesce_ranges_merges_touching_and_near_ranges() -> None:
    offsets = np.array([100, 0, 50, 400, 10_000, 7])
    lengths = np.array([50, 50, 60, 10, 5, 0])  # the last is empty: dropped
    assert coalesce_ranges("f", offsets, lengths) == [
        ("f", 0, 150),
        ("f", 400, 10),
        ("f", 10_000, 5),
    ]
    assert coalesce_ranges("f", offsets, lengths, gap=250) == [("f", 0, 410), ("f", 10_000, 5)]
    assert coalesce_ranges("f", np.zeros(0), np.zeros(0)) == []


def test_mmap_ranges_hold_exactly_the_rows(tmp_path: Path) -> None:
    data = write(tmp_path / "ds", "mmap", 300, 40, shard_size="4KB")
    ds = ShardedDataset(tmp_path / "ds")
    reader = ds.reader
    assert len(ds.shard_lengths) > 2
    shard = reader.shard(1)
    first = int(reader.index.starts[1])
    ((path, offset, length),) = shard.byte_ranges(3, 20)
    assert read_range(path, offset, length) == data[first + 3 : first + 20].tobytes()
    assert shard.byte_ranges(5, 5) == []


def test_mmap_variable_field_ranges_hold_exactly_the_values(tmp_path: Path) -> None:
    values = [bytes([i % 256]) * (i % 7 + 1) for i in range(50)]
    with ShardWriter(tmp_path / "ds", format="mmap") as writer:
        for value in values:
            writer.write({"blob": value})
    shard = ShardedDataset(tmp_path / "ds").reader.shard(0)
    # The offsets file is left to the kernel: it is mapped, and faults read around.
    ((path, offset, length),) = shard.byte_ranges(10, 20)
    assert path.endswith(".data")
    assert read_range(path, offset, length) == b"".join(values[10:20])


def test_lmdb_ranges_cover_every_value(tmp_path: Path) -> None:
    data = write(tmp_path / "ds", "lmdb", 200, 5000)
    shard = ShardedDataset(tmp_path / "ds").reader.shard(0)
    ranges = shard.byte_ranges(50, 90)
    assert ranges and all(r[0].endswith("data.mdb") for r in ranges)
    hinted = b"".join(read_range(*r) for r in ranges)
    for row in data[50:90]:
        assert row.tobytes() in hinted
    assert data[10].tobytes() not in hinted
    assert sum(r[2] for r in ranges) < 2 * 40 * 5000  # the range, not the whole file


def test_foreign_lmdb_gets_no_ranges(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path / "foreign.lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(10):
            txn.put(f"{i:04d}".encode(), bytes([i]) * 8)
    env.close()
    ds = ShardedDataset(
        tmp_path / "foreign.lmdb", decode=lambda v: {"x": np.frombuffer(v, np.uint8)}
    )
    assert ds.reader.shard(0).byte_ranges(0, 10) == []
    assert ds.readahead(0, 10) == 0


@pytest.mark.parametrize("chunks", [None, (16, 32)], ids=["contiguous", "chunked"])
def test_hdf5_ranges_hold_exactly_the_rows(tmp_path: Path, chunks: tuple[int, int] | None) -> None:
    data = rows(100, 32)
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=data, chunks=chunks)
    shard = ShardedDataset(path).reader.shard(0)
    ranges = shard.byte_ranges(5, 70)
    assert ranges
    assert b"".join(read_range(*r) for r in ranges) == data[5:70].tobytes()


@pytest.mark.parametrize("dtype", ["uint8", "S4"])
def test_compressed_hdf5_ranges_are_the_stored_chunks(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / "gzip.h5"
    data = (
        rows(100, 32).astype(dtype)
        if dtype != "S4"
        else np.array([b"ab%02d" % i for i in range(100)])
    )
    chunks = (10, 16) if dtype == "uint8" else (10,)
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=data, chunks=chunks, compression="gzip")
    with h5py.File(path, "r") as file:
        expected = set()
        for row in range(10, 50, 10):  # rows 15..45 lie in row chunks 1..4
            for col in range(0, 32, 16) if dtype == "uint8" else [None]:
                coord = (row, col) if col is not None else (row,)
                info = file["x"].id.get_chunk_info_by_coord(coord)
                expected.add((info.byte_offset, info.size))
    ranges = ShardedDataset(path).reader.shard(0).byte_ranges(15, 45)
    covered = [(o, n) for _, o, n in ranges]
    for offset, size in expected:
        assert any(o <= offset and offset + size <= o + n for o, n in covered), (offset, size)
    assert sum(n for _, n in covered) < path.stat().st_size  # not the whole file


def test_zarr_ranges_are_the_chunk_files_of_the_rows(tmp_path: Path) -> None:
    import zarr

    path = tmp_path / "plain.zarr"
    array = zarr.create_array(str(path), shape=(100, 8), chunks=(10, 4), dtype="uint8")
    array[:] = rows(100, 8)
    shard = ShardedDataset(path).reader.shard(0)
    ranges = shard.byte_ranges(15, 42)  # rows in chunks 1..4, two chunk files per row chunk
    assert len(ranges) == 8
    for file, offset, length in ranges:
        assert offset == 0 and length == os.path.getsize(file) > 0
    assert {Path(f).relative_to(path).parts[-2] for f, _, _ in ranges} == {"1", "2", "3", "4"}


def test_zarr_variable_and_empty_fields(tmp_path: Path) -> None:
    values = [bytes([i]) * (i % 5 + 1) for i in range(60)]
    with ShardWriter(tmp_path / "ds", format="zarr") as writer:
        for i, value in enumerate(values):
            writer.write({"blob": value, "empty": np.zeros(0, np.float32), "y": np.int64(i)})
    ds = ShardedDataset(tmp_path / "ds")
    ranges = ds.reader.shard(0).byte_ranges(10, 50)
    names = {Path(f).relative_to(tmp_path / "ds").parts[1] for f, _, _ in ranges}
    assert {"blob.data", "blob.offsets", "y"} <= names
    assert "empty" not in names  # a zero-width field stores nothing to hint
    assert ds.readahead(0, 60) > 0
    assert ds[42]["blob"] == values[42]


def test_readahead_clamps_and_counts(tmp_path: Path) -> None:
    write(tmp_path / "ds", "mmap", 300, 40, shard_size="4KB")
    ds = ShardedDataset(tmp_path / "ds")
    expected = 0 if not readahead_supported() else 300 * 40
    assert ds.readahead(-10, 10_000) == expected
    assert ds.readahead(20, 20) == 0
    assert ds.memory_stats()["readahead_bytes"] == expected


# -------------------------------------------------------------- page cache
@needs_fadvise
def test_hint_reads_a_long_range_into_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    size = 24 * 1024 * 1024  # longer than one readahead window, which Linux caps a call to
    path.write_bytes(os.urandom(size))
    cold([str(path)])
    offset, length = 4 * 1024 * 1024, 16 * 1024 * 1024
    assert hint_ranges([(str(path), offset, length)]) == length
    resident = wait_resident(str(path), length)
    assert length <= resident < size
    assert length > READAHEAD_PIECE


@needs_fadvise
def test_dataset_readahead_fills_the_page_cache_across_shards(tmp_path: Path) -> None:
    write(tmp_path / "ds", "mmap", 4096, 4096, shard_size="4MB")  # 16 MiB in 5 shards
    ds = ShardedDataset(tmp_path / "ds", max_rss="64MB")
    reader = ds.reader
    files = [reader.shard(n).byte_ranges(0, 1)[0][0] for n in range(len(ds.shard_lengths))]
    cold(files)
    start, stop = 512, 2560  # from the middle of shard 0 into shard 2
    assert ds.readahead(start, stop) == (stop - start) * 4096
    for number, file in enumerate(files):
        first, last = (int(x) for x in reader.index.starts[number : number + 2])
        expected = max(0, min(stop, last) - max(start, first)) * 4096
        resident = wait_resident(file, expected) if expected else resident_bytes(file)
        assert resident is not None and expected <= resident <= expected + 4096, number


def test_hint_skips_missing_files(tmp_path: Path) -> None:
    assert hint_ranges([(str(tmp_path / "gone.bin"), 0, 100)]) == 0


def test_readahead_leaves_no_shard_open_in_a_process_that_only_hints(tmp_path: Path) -> None:
    write(tmp_path / "ds", "mmap", 300, 40, shard_size="4KB")
    ds = ShardedDataset(tmp_path / "ds", max_rss="64MB")
    ds.readahead(0, 300)
    assert ds.reader.open_readers == []
    ds.read_batch([5, 200])  # a reader opened for reading stays open through hints
    opened = len(ds.reader.open_readers)
    ds.readahead(0, 300)
    assert len(ds.reader.open_readers) == opened > 0


# ------------------------------------------------------------------ sampler
class RecordingSource(Dataset[int]):
    """A sharded layout that records the readahead hints a sampler gives."""

    def __init__(self, shard_lengths: Sequence[int], bytes_per_sample: int = 100) -> None:
        self.shard_lengths = tuple(shard_lengths)
        self.shard_nbytes = tuple(n * bytes_per_sample for n in shard_lengths)
        self.hints: list[tuple[int, int, int]] = []  # (start, stop, indices yielded so far)
        self.yielded = 0

    def __len__(self) -> int:
        return sum(self.shard_lengths)

    def __getitem__(self, index: int) -> int:
        return index

    def readahead(self, start: int, stop: int) -> int:
        self.hints.append((start, stop, self.yielded))
        return stop - start


def consume(sampler: ShardSampler, source: RecordingSource) -> list[int]:
    out = []
    for index in sampler:
        source.yielded += 1
        out.append(index)
    return out


def check_schedule(source: RecordingSource, yielded: list[int], lookahead_slack: int) -> None:
    hinted_at = {}
    for start, stop, at in source.hints:
        for index in range(start, stop):
            assert index not in hinted_at, f"index {index} hinted twice"
            hinted_at[index] = at
    for position, index in enumerate(yielded):
        assert index in hinted_at, f"index {index} read without a hint"
        assert hinted_at[index] <= position  # hinted before it was read
    for start, stop, at in source.hints:
        first = min(p for p, i in enumerate(yielded) if start <= i < stop)
        assert first - at <= lookahead_slack  # hinted shortly before, not epochs ahead


def test_shard_window_hints_each_block_once_before_its_first_sample() -> None:
    source = RecordingSource([700, 500, 0, 800])
    sampler = ShardSampler(source, window=20_000, seed=3)
    yielded = consume(sampler, source)
    assert sorted(yielded) == list(range(2000))
    plan = epoch_plan("shard-window", sampler.layout, 20_000, 3, 0)
    assert plan.block_starts is not None
    assert [h[0] for h in sorted(source.hints)] == plan.block_starts.tolist()
    assert sorted(h[1] for h in source.hints)[-1] == 2000
    check_schedule(source, yielded, lookahead_slack=sampler._lookahead())


def test_readahead_never_changes_the_order() -> None:
    with_hints = ShardSampler(RecordingSource([300] * 5), window=10_000, seed=1)
    without = ShardSampler(RecordingSource([300] * 5), window=10_000, seed=1, readahead=False)
    assert list(with_hints) == list(without)
    assert without._hint is None


def test_a_failing_hint_warns_once_and_never_stops_the_epoch() -> None:
    class Failing(RecordingSource):
        def readahead(self, start: int, stop: int) -> int:
            super().readahead(start, stop)
            raise OSError("too many open files")

    source = Failing([300] * 5)
    sampler = ShardSampler(source, window=10_000, seed=4)
    with pytest.warns(RuntimeWarning, match="readahead hint .* failed"):
        yielded = list(sampler)
    assert sorted(yielded) == list(range(1500))
    assert len(source.hints) == 1  # off for the rest of the pass after the failure


@pytest.mark.parametrize("options", [{"order": "random"}, {"shuffle": False}, {"readahead": False}])
def test_no_hints_outside_shard_window(options: dict[str, Any]) -> None:
    source = RecordingSource([300] * 5)
    consume(ShardSampler(source, window=10_000, **options), source)
    assert source.hints == []


def test_resumed_pass_hints_only_what_is_left() -> None:
    source = RecordingSource([400] * 5)
    sampler = ShardSampler(source, window=10_000, seed=2)
    whole = list(sampler)
    sampler.load_state_dict(sampler.state_dict(consumed=1200))
    source.hints.clear()
    rest = consume(sampler, source)
    assert rest == whole[1200:]
    check_schedule(source, rest, lookahead_slack=sampler._lookahead())


@pytest.mark.parametrize("partition", ["contiguous", "strided"])
def test_each_rank_hints_the_blocks_it_reads(partition: str) -> None:
    for rank in range(3):
        source = RecordingSource([500] * 4)
        sampler = ShardSampler(
            source,
            window=10_000,
            rank=rank,
            world_size=3,
            partition=partition,  # type: ignore[arg-type]
        )
        yielded = consume(sampler, source)
        check_schedule(source, yielded, lookahead_slack=sampler._lookahead() + 1)


@pytest.mark.parametrize("fmt", ["mmap", "lmdb", "hdf5", "zarr"])
def test_dataloader_workers_read_correct_data_behind_hints(tmp_path: Path, fmt: str) -> None:
    """The main process opens shards to hint them; forked workers of later epochs
    inherit those handles and must still open and read their own."""
    data = write(tmp_path / "ds", fmt, 2000, 256, shard_size="64KB")
    ds = ShardedDataset(tmp_path / "ds", max_rss="256MB")
    sampler = ShardSampler(ds, window="96KB", seed=0)
    loader = DataLoader(
        ds, batch_size=50, sampler=sampler, num_workers=2, multiprocessing_context="fork"
    )
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen.extend(batch["x"].numpy() for batch in loader)
    expected = np.concatenate([data[sampler.indices(e)] for e in range(2)])
    assert np.array_equal(np.concatenate(seen), expected)
    if readahead_supported() and fmt != "zarr":  # zarr: hinted bytes are whole chunk files
        assert ds.memory_stats()["readahead_bytes"] >= 2 * data.nbytes
